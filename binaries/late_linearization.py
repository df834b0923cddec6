r"""Late linearization (Sec. 4.3, Figs. 8, 9).

  bazel run //binaries:late_linearization -- \
      --config=configs/late_linearization.py:smoke --workdir=/tmp/ntk_tf/late_linearization

The config variants and the exact paper commands are in configs/late_linearization.py.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ntk_tf.experiments import late_linearization
from ntk_tf.experiments import workdir

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/late_linearization.py:smoke",
    "Config file and variant (configs/late_linearization.py:<variant>).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (created; a rerun resumes it).")
_DOWNLOAD = flags.DEFINE_bool("download", False, "Allow fetching data (npm registry / TFDS).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if _DOWNLOAD.value:
    config.allow_download = True
  try:
    late_linearization.validate_config(config)  # Clear errors before any work.
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  path = workdir.resolve_workdir(_WORKDIR.value)
  logging.info("Config:\n%s", config)
  late_linearization.run(config, path)
  print(f"Results: {path / 'results.csv'}; figures: {path}/*.png")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
