r"""Kernel rotation (Sec. 4.2, Figs. 6, 7, 15, 16, Table 1).

  bazel run //binaries:kernel_rotation -- \
      --config=configs/kernel_rotation.py:smoke --workdir=/tmp/ntk_tf/kernel_rotation

The config variants and the exact paper commands are in configs/kernel_rotation.py.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ntk_tf.experiments import kernel_rotation
from ntk_tf.experiments import workdir

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/kernel_rotation.py:smoke",
    "Config file and variant (configs/kernel_rotation.py:<variant>).")
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Output folder (created; a rerun resumes it).")
_DOWNLOAD = flags.DEFINE_bool("download", False, "Allow fetching data (npm registry / TFDS).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if _DOWNLOAD.value:
    config.allow_download = True
  try:
    kernel_rotation.validate_config(config)  # Clear errors before any work.
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  path = workdir.resolve_workdir(_WORKDIR.value)
  logging.info("Config:\n%s", config)
  kernel_rotation.run(config, path)
  print(f"Results: {path / 'results.csv'}; figures: {path}/*.png")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
