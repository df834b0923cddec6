r"""One command per figure or table of the paper: plan, run resumably, write its CSV, PNG, page.

  bazel run //binaries:reproduce -- --figure=fig2 --models=mlp,lenet --scale=paper \
      --workdir=runs/paper
  bazel run //binaries:reproduce -- --figure=all --scale=smoke --workdir=runs/smoke \
      --out=runs/smoke_pages
  bazel run //binaries:reproduce -- --figure=fig5 --scale=paper --workdir=runs/paper --dry-run
  bazel run //binaries:reproduce -- --render        (docs/paper from its CSVs alone)
  bazel run //binaries:reproduce -- --adopt=runs/eig_paper_mlp   (a workdir run by hand)

A rerun continues where a kill stopped it; a task whose row is in the committed CSV
(docs/paper/<figure>_<model>.csv) with the same settings counts as done. The figures,
scales and what they run are in ntk_tf/reproduce/figures.py.
"""

from binaries import engine_defaults  # pylint: disable=unused-import  # first: sets oneDNN

import os
import sys

from absl import app
from absl import flags

from ntk_tf.reproduce import program

_FIGURE = flags.DEFINE_string("figure", None, "A figure (fig2 ... fig16, table1), a comma "
                              "list of them, or 'all'.")
_MODELS = flags.DEFINE_string("models", None, "Comma list of mlp, lenet, resnet18 (default: "
                              "mlp,lenet; ResNet18 needs a GPU at the paper's scale).")
_SCALE = flags.DEFINE_enum("scale", "paper", ["smoke", "quick", "paper"],
                           "smoke: seconds; quick: minutes on 2 CPU cores; paper: the paper's "
                           "settings.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Root of the runs (created; a rerun resumes).")
_JOBS = flags.DEFINE_integer("jobs", None, "Processes at once, one per core (default: the "
                             "cores).", lower_bound=1)
_DRY_RUN = flags.DEFINE_bool("dry-run", False, "Print the plan (tasks done / to do, estimated "
                             "times) and stop.")
_RENDER = flags.DEFINE_bool("render", False, "Rebuild the pages, PNGs and index of --out from "
                            "its CSVs alone.")
_ADOPT = flags.DEFINE_string(
    "adopt", None, "An experiment workdir to merge into the CSVs of the figures whose settings "
    "it matches. Each row keeps the machine it recorded; rows from before rows recorded one "
    "take the adopting machine and its oneDNN setting.")
_IMPORT_LEGACY = flags.DEFINE_string("import_legacy", None, "One-time: convert the CSVs of the "
                                     "former docs/paper_scale folder.")
_OUT = flags.DEFINE_string("out", program.DEFAULT_OUT, "Folder of the committed CSVs and pages.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Passed on as --config.data_dir.")
_DOWNLOAD = flags.DEFINE_bool("download", False, "Passed on: allow fetching the data.")
_START_OVER = flags.DEFINE_bool(
    "start_over", False, "Passed on: a part whose folder holds work made with other settings "
    "moves it to earlier.<n>/ in that folder and starts afresh (without it, the part stops).")


def _resume_command() -> str:
  """This command again, as it was typed (bazel run or python -m)."""
  start = ("bazel run //binaries:reproduce --" if "BUILD_WORKING_DIRECTORY" in os.environ
           else "python -m binaries.reproduce")
  return " ".join([start] + sys.argv[1:])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    return program.reproduce(
        figures=_FIGURE.value, models=_MODELS.value, scale=_SCALE.value,
        workdir=_WORKDIR.value, jobs=_JOBS.value, dry_run=_DRY_RUN.value,
        render=_RENDER.value, adopt=_ADOPT.value, import_legacy=_IMPORT_LEGACY.value,
        out=_OUT.value, data_dir=_DATA_DIR.value, download=_DOWNLOAD.value,
        start_over=_START_OVER.value,
        resume_command=_resume_command())
  except ValueError as err:  # A bad value: one line naming it, not the whole usage.
    sys.stderr.write(f"reproduce: error: {err}\n")
    return 2


if __name__ == "__main__":
  app.run(main)
