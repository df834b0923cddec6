r"""Collects every experiment under a folder into report.md and report.html.

  bazel run //binaries:report -- --workdir=/tmp/ntk_tf

Experiment workdirs are found by their config.json (key `experiment`); see
ntk_tf/experiments/report.py.
"""

from binaries import engine_defaults  # pylint: disable=unused-import  # first: sets oneDNN

from absl import app
from absl import flags

from ntk_tf.experiments import report
from ntk_tf.experiments import workdir

_WORKDIR = flags.DEFINE_string("workdir", None, "Root folder to scan for experiment workdirs.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  root = workdir.resolve_workdir(_WORKDIR.value)
  if not root.is_dir():
    raise app.UsageError(f"--workdir must be an existing folder. Received: --workdir={root}")
  md_path, html_path = report.write(root)
  print(f"Report: {md_path} and {html_path}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
