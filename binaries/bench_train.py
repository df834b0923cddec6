r"""Benchmark: one training step of a linearized model vs. its network (issue 4).

Prints, per model on CIFAR-10 batches, the wall time of one `ntk_tf.train`
step (forward, backward, SGD update) of the network and of its linearization
(forward-mode JVP, paper Eq. 1), measured in the same run, and their ratio
(target <= 3x). Not a timed test.

  bazel run //binaries:bench_train -- --models=mlp,lenet
  .venv/bin/python -m binaries.bench_train --models=mlp,lenet --data_dir=../shared/data
"""

import json
import os

from absl import app
from absl import flags
from absl import logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ntk_tf  # pylint: disable=g-import-not-at-top
from ntk_tf import training  # pylint: disable=g-import-not-at-top

_MODELS = flags.DEFINE_list("models", ["mlp", "lenet"], "Architectures to time.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder with cifar10.npz (default: search).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", ntk_tf.PAPER_SGD.batch_size, "Batch size.",
                                   lower_bound=1)
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per measurement.", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Alternating measurements; the fastest is kept.",
                                lower_bound=1)
_OUT = flags.DEFINE_string("out", None, "Optional JSON file for the results.")

flags.register_validator("models", lambda names: names and set(names) <= set(ntk_tf.models.MODEL_NAMES),
                         message=f"--models must be a subset of {ntk_tf.models.MODEL_NAMES}.")


def main(argv):
  del argv
  config = {"models": _MODELS.value, "batch_size": _BATCH_SIZE.value, "steps": _STEPS.value,
            "repeats": _REPEATS.value}
  logging.info("bench_train config: %s", config)
  data = ntk_tf.data.load("cifar2", data_dir=_DATA_DIR.value, train_size=_BATCH_SIZE.value,
                          test_size=10)
  y01 = ntk_tf.data.to_01(data.y_train)
  rows = []
  for name in _MODELS.value:
    model = ntk_tf.models.get(name, input_shape=data.input_shape)
    times = training.compare_step_times(model, data.x_train, y01, steps=_STEPS.value,
                                        repeats=_REPEATS.value)
    rows.append({"model": name, **times})
  print(f"{'model':<10}{'network step ms':>18}{'linearized step ms':>21}{'ratio':>8}")
  for row in rows:
    print(f"{row['model']:<10}{row['network_ms']:>18.2f}{row['linearized_ms']:>21.2f}"
          f"{row['ratio']:>8.2f}")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"config": config, "results": rows}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
