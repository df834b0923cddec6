"""Benchmarks the NTK Gram paths; prints the machine's features and one table.

See benchmarks/gram_paths.py (the paths and what is timed) and
benchmarks/machine.py (the features printed beside the table).

    bazel run //binaries:bench_gram -- --data_dir=../shared/data [--smoke]
    bazel run //binaries:bench_gram -- --data_dir=... --export_weights=/tmp/peer.npz
        (for the neural-tangents yardstick, benchmarks/neural_tangents_peer.py)
"""

import os

from absl import app
from absl import flags
from absl import logging

from benchmarks import gram_paths
from benchmarks import machine
from benchmarks import peer_export
from configs import bench_gram
from ntk_tf import atomic

_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny sizes (seconds) instead of the full config.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder with cifar10.npz (else Gaussian inputs).")
_MEMORY_BUDGET = flags.DEFINE_integer("memory_budget", None,
                                      "Bytes per Gram block (default: the config's).")
_NAIVE_MAX_N = flags.DEFINE_integer("naive_max_n", None,
                                    "Time the naive/reference paths on at most this many "
                                    "examples and extrapolate as N^2 (default: per model).")
_MODELS = flags.DEFINE_list("models", None, "Subset of the config's models (default: all).")
_OUT = flags.DEFINE_string("out", None, "Optional folder for config.json and table.txt.")
_EXPORT_WEIGHTS = flags.DEFINE_string(
    "export_weights", None, "Only write the .npz for benchmarks/neural_tangents_peer.py "
    "(weights, inputs, ntk_tf's Grams of MLP N=2000 and LeNet N=1000) to this path.")

flags.register_validator("memory_budget", lambda v: v is None or v > 0,
                         "--memory_budget must be a positive number of bytes")
flags.register_validator("naive_max_n", lambda v: v is None or v > 0,
                         "--naive_max_n must be positive")


def main(argv):
  del argv
  if _EXPORT_WEIGHTS.value:
    print(machine.format_features(machine.features()))
    print("wrote", peer_export.export(_EXPORT_WEIGHTS.value, data_dir=_DATA_DIR.value))
    return
  config = bench_gram.get_config(smoke=_SMOKE.value)
  config["data_dir"] = _DATA_DIR.value
  if _MEMORY_BUDGET.value:
    config["memory_budget"] = _MEMORY_BUDGET.value
  if _NAIVE_MAX_N.value:
    config["naive_max_n"] = {name: _NAIVE_MAX_N.value for name in config["naive_max_n"]}
  if _MODELS.value:
    config["cases"] = [case for case in config["cases"] if case[0] in _MODELS.value]
  logging.info("config: %s", config)
  table = (machine.format_features(machine.features()) + "\n\n"
           + gram_paths.format_table(gram_paths.run(config)))
  print(table)
  if _OUT.value:
    os.makedirs(_OUT.value, exist_ok=True)
    atomic.write_json(os.path.join(_OUT.value, "config.json"), config)
    atomic.write_text(os.path.join(_OUT.value, "table.txt"), table + "\n")


if __name__ == "__main__":
  app.run(main)
