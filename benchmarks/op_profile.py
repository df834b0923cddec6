r"""Where the time goes: a model's Gram and training steps, timed per TensorFlow op.

    .venv/bin/python -m benchmarks.op_profile --model=resnet18 --n=128 \
        --data_dir=../shared/data

For the N-sample Gram (`ntk_gram`, `--implementation`), one training step of
the network and one of its linearization (as `ntk_tf.train` runs them, batch
`--batch_size`), prints the wall time of one profiled run, the CPU time of all
TensorFlow ops in it (summed over threads), the part of that in convolutions
(forward, filter and input gradients) and the largest op types. What is not
a TF op (NumPy BLAS in the Gram's host engines, Python, the executor) is wall
time the ops do not account for. Timings belong to the machine they were taken
on; `benchmarks/machine.py` prints its features above the table.
"""

import collections
import glob
import os
import re
import tempfile
import time
from typing import Callable, Dict, Tuple

from absl import app
from absl import flags
import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # pylint: disable=g-import-not-at-top
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top

from benchmarks import gram_paths  # pylint: disable=g-import-not-at-top
from benchmarks import machine  # pylint: disable=g-import-not-at-top
import ntk_tf  # pylint: disable=g-import-not-at-top
from ntk_tf import train_step  # pylint: disable=g-import-not-at-top
from ntk_tf import training  # pylint: disable=g-import-not-at-top

_MODEL = flags.DEFINE_enum("model", "resnet18", list(ntk_tf.models.MODEL_NAMES), "Architecture.")
_N = flags.DEFINE_integer("n", 128, "Samples of the Gram.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", ntk_tf.PAPER_SGD.batch_size,
                                   "Examples per training step.", lower_bound=1)
_IMPLEMENTATION = flags.DEFINE_string("implementation", "auto", "ntk_gram's implementation.")
_STEPS = flags.DEFINE_integer("steps", 1, "Training steps per profiled call.", lower_bound=1)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder with cifar10.npz (default: synthetic).")

# A TF op's event: "scope/name:OpType" (executor, function and Python events have
# spaces or "::" in their names).
_OP_EVENT = re.compile(r"^[^\s:]+:(\w+)$")

# Op types that run other ops (counted through those).
_CONTAINERS = ("While", "StatelessWhile", "If", "StatelessIf", "PartitionedCall",
               "StatefulPartitionedCall")

# TF op types that are convolutions (oneDNN's `_MklNative*` names included).
_CONV_WORDS = ("Conv2D", "Conv2DBackpropFilter", "Conv2DBackpropInput", "DepthwiseConv")


def profile_ops(fn: Callable[[], object]) -> Tuple[float, Dict[str, float]]:
  """Runs `fn()` once under the TF profiler: (wall seconds, {op type: CPU seconds}).

  Op types are the part after the ':' of each TF op event on the host (e.g.
  `_MklNativeConv2D`); executor, function, XLA-cluster and Python events are
  left out (an XLA-compiled function's ops are not TF ops).
  """
  folder = tempfile.mkdtemp()
  tf.profiler.experimental.start(folder)
  start = time.perf_counter()
  fn()
  wall = time.perf_counter() - start
  tf.profiler.experimental.stop()
  (path,) = glob.glob(os.path.join(folder, "**", "*.xplane.pb"), recursive=True)
  space = xplane_pb2.XSpace()
  with open(path, "rb") as f:
    space.ParseFromString(f.read())
  seconds = collections.Counter()
  for plane in space.planes:
    if "/host:CPU" not in plane.name:
      continue
    for line in plane.lines:
      if line.name == "python":
        continue
      for event in line.events:
        match = _OP_EVENT.match(plane.event_metadata[event.metadata_id].name)
        if match and match.group(1) not in _CONTAINERS and not match.group(1).startswith("__"):
          seconds[match.group(1)] += event.duration_ps * 1e-12
  return wall, dict(seconds)


def conv_seconds(op_seconds: Dict[str, float]) -> float:
  """CPU seconds in convolution ops (forward and gradients)."""
  return sum(s for op, s in op_seconds.items() if any(w in op for w in _CONV_WORDS))


def _format(label: str, wall: float, op_seconds: Dict[str, float], per: int = 1) -> str:
  total, conv = sum(op_seconds.values()), conv_seconds(op_seconds)
  top = ", ".join(f"{op} {s / per:.3g}" for op, s in
                  sorted(op_seconds.items(), key=lambda kv: -kv[1])[:5])
  return (f"{label:<22}{wall / per:>10.3f}{total / per:>14.3f}{conv / per:>14.3f}"
          f"{100 * conv / max(total, 1e-12):>10.0f}%   {top}")


def main(argv):
  del argv
  name, n, batch = _MODEL.value, _N.value, _BATCH_SIZE.value
  x = gram_paths.inputs((32, 32, 3), max(n, batch), _DATA_DIR.value)  # [max(N, B), 32, 32, 3]
  model = ntk_tf.models.get(name, input_shape=(32, 32, 3))
  rows = []
  gram = lambda m: ntk_tf.ntk_gram(model, x[:m], implementation=_IMPLEMENTATION.value,
                                  progress=False)
  gram(min(n, 8))  # warm-up: traces and engine choice
  wall, ops = profile_ops(lambda: gram(n))
  rows.append(_format(f"Gram N={n} {_IMPLEMENTATION.value}", wall, ops))
  steps = _STEPS.value
  xs = tf.constant(np.concatenate([x[:batch]] * steps))  # [steps * B, 32, 32, 3]
  ts = tf.constant(np.tile((np.arange(batch) % 2).astype(np.float32)[:, None], (steps, 1)))
  for label, trained in (("network step", model), ("linearized step", ntk_tf.linearize(model))):
    loop = train_step.make_train_loop(trained, training.make_optimizer(ntk_tf.PAPER_SGD, 100 * steps),
                                      batch)
    loop(xs, ts).numpy()  # warm-up: trace
    wall, ops = profile_ops(lambda loop=loop: loop(xs, ts).numpy())
    rows.append(_format(f"{label} B={batch}", wall, ops, per=steps))
  print(machine.format_features(machine.features()) + "\n")
  print(f"{name}: seconds per Gram or per step; TF op time summed over threads")
  print(f"{'':<22}{'wall s':>10}{'TF ops s':>14}{'conv ops s':>14}{'conv/ops':>11}   largest op types (s)")
  print("\n".join(rows))


if __name__ == "__main__":
  app.run(main)
