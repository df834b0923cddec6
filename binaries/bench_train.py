r"""Benchmark: one training step of a linearized model vs. its network.

Prints, per model on CIFAR-10 batches, the wall time of one `ntk_tf.train`
step (forward, backward, SGD update; `--steps` steps per call, as `train` runs
them) of the network, of its linearization (primal and JVP in one pass,
paper Eq. 1) and of the linearization reading its theta_star primals from a
`ntk_tf.primal_cache` (what `train` runs by default), measured in the same
run, and the ratios of the linearized steps to the network's.
Not a timed test; timings belong to the machine they were taken on.

  bazel run //binaries:bench_train -- --models=mlp,lenet
  .venv/bin/python -m binaries.bench_train --models=mlp,lenet --data_dir=../shared/data
"""

import json
import os
from typing import Dict

from absl import app
from absl import flags
from absl import logging
import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # pylint: disable=g-import-not-at-top

from benchmarks import machine  # pylint: disable=g-import-not-at-top
from benchmarks import step_timing  # pylint: disable=g-import-not-at-top
import ntk_tf  # pylint: disable=g-import-not-at-top
from ntk_tf import atomic  # pylint: disable=g-import-not-at-top
from ntk_tf import primal_cache as primal_cache_lib  # pylint: disable=g-import-not-at-top

_MODELS = flags.DEFINE_list("models", ["mlp", "lenet"], "Architectures to time.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder with cifar10.npz (default: search).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", ntk_tf.PAPER_SGD.batch_size,
                                   "Examples per step.", lower_bound=1)
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per measurement.", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Alternating measurements; the fastest is kept.",
                                lower_bound=1)
_OUT = flags.DEFINE_string("out", None, "Optional JSON file for the results.")

flags.register_validator("models", lambda names: names and set(names) <= set(ntk_tf.models.MODEL_NAMES),
                         message=f"--models must be a subset of {ntk_tf.models.MODEL_NAMES}.")


time_train_step = step_timing.time_train_step  # tests/bench_train_test.py uses it here


def compare_step_times(model: keras.Model, x: np.ndarray, y: np.ndarray, *, steps: int,
                       repeats: int) -> Dict[str, float]:
  """Step times of `model`, of its linearization without and with a primal cache, and ratios.

      ratio = t_step(linearize(model)) / t_step(model),
      cached_ratio = t_step(linearize(model), primal cache) / t_step(model),

  each t_step the fastest of `repeats` alternating measurements (the minimum is
  the least disturbed by other processes), on the same batch in the same process.
  """
  linearized = ntk_tf.linearize(model)
  cached = ntk_tf.linearize(model)
  cache = primal_cache_lib.build(cached, x)
  times = {"network": [], "linearized": [], "cached": []}
  for _ in range(repeats):
    times["network"].append(time_train_step(model, x, y, steps=steps))
    times["linearized"].append(time_train_step(linearized, x, y, steps=steps))
    times["cached"].append(time_train_step(cached, x, y, steps=steps, primal_cache=cache))
  ms = {name: 1e3 * min(seconds) for name, seconds in times.items()}
  return {"network_ms": ms["network"], "linearized_ms": ms["linearized"],
          "cached_ms": ms["cached"], "ratio": ms["linearized"] / ms["network"],
          "cached_ratio": ms["cached"] / ms["network"],
          "cache_bytes_per_example": cache.bytes_per_example}


def main(argv):
  del argv
  config = {"models": _MODELS.value, "batch_size": _BATCH_SIZE.value, "steps": _STEPS.value,
            "repeats": _REPEATS.value}
  logging.info("bench_train config: %s", config)
  data = ntk_tf.data.load("cifar2", data_dir=_DATA_DIR.value, train_size=_BATCH_SIZE.value,
                          test_size=10)
  rows = []
  for name in _MODELS.value:
    model = ntk_tf.models.get(name, input_shape=data.input_shape)
    times = compare_step_times(model, data.x_train, data.y_train, steps=_STEPS.value,
                               repeats=_REPEATS.value)
    rows.append({"model": name, **times})
  print(machine.format_features({**machine.features(),
                                  "load average": " ".join(f"{l:.2f}" for l in os.getloadavg())})
        + "\n")
  print(f"{'model':<10}{'network ms':>12}{'linearized ms':>15}{'ratio':>8}"
        f"{'cached ms':>12}{'ratio':>8}{'cache B/example':>17}")
  for row in rows:
    print(f"{row['model']:<10}{row['network_ms']:>12.2f}{row['linearized_ms']:>15.2f}"
          f"{row['ratio']:>8.2f}{row['cached_ms']:>12.2f}{row['cached_ratio']:>8.2f}"
          f"{row['cache_bytes_per_example']:>17d}")
  if _OUT.value:
    atomic.write_json(_OUT.value, {"config": config, "results": rows})


if __name__ == "__main__":
  app.run(main)
