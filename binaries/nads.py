r"""NADs: linear predictors along neural anisotropy directions (Sec. 3.2, Figs. 4, 10).

  bazel run //binaries:nads -- --config=configs/nads.py:smoke --workdir=/tmp/ntk_tf/nads

The config variants and the exact paper commands are in configs/nads.py.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ntk_tf.experiments import nads
from ntk_tf.experiments import workdir

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/nads.py:smoke", "Config file and variant (configs/nads.py:<variant>).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (created; a rerun resumes it).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  try:
    nads.validate_config(config)  # Clear errors before any work.
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  path = workdir.resolve_workdir(_WORKDIR.value)
  logging.info("Config:\n%s", config)
  nads.run(config, path)
  print(f"Results: {path / 'results.csv'}; figures: {path}/*.png")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
