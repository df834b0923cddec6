r"""Per-example conv kernel gradients of the structured NTK: the engines, timed on real layers.

    .venv/bin/python -m benchmarks.structured_conv_engines --models=resnet18,lenet --n=32 \
        --data_dir=../shared/data

For every Conv2D kernel the structured plan puts in jacobian form (per-example
gradients g_i = sum_p X_i[p]^T D_i[p], [N, K*C]), records its inputs and
cotangents on N examples (one `FeatureExtractor` pass) and times each engine
on them, best of `--repeats` after one untimed call (tracing excluded):

  numpy       `geometry.host_conv_gradient`: host strided patches, batched BLAS
              (the NumPy path's engine before `conv_gradient`)
  tf_patches  TF: gathered patches [N, P, K] and one batched matmul
              (`ops.structured_blocks.positional_gradient`, the XLA path's)
  tf          `geometry.conv_gradient`: one `Conv2DBackpropFilter` per
              example; 1x1 kernels as tf_patches
  chosen      (total only) per layer, numpy or tf as `geometry.gradient_on_host`
              picks: the NumPy path's engines

Prints per layer milliseconds and each engine's max relative difference from
numpy, then totals and the ratio numpy / engine (> 1: faster than numpy), with
the machine's features (`benchmarks/machine.py`) above. Timings belong to the
machine they were taken on.
"""

import os
import time
from typing import Callable, Dict

from absl import app
from absl import flags
import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # pylint: disable=g-import-not-at-top

from benchmarks import gram_paths  # pylint: disable=g-import-not-at-top
from benchmarks import machine  # pylint: disable=g-import-not-at-top
import ntk_tf  # pylint: disable=g-import-not-at-top
from ntk_tf.ntk.structured import geometry  # pylint: disable=g-import-not-at-top
from ntk_tf.ntk.structured import ntk as structured_ntk  # pylint: disable=g-import-not-at-top
from ops import structured_blocks  # pylint: disable=g-import-not-at-top

_MODELS = flags.DEFINE_list("models", ["resnet18", "lenet"], "Architectures.")
_N = flags.DEFINE_integer("n", 32, "Examples per block.", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per engine (best is kept).",
                                lower_bound=1)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder with cifar10.npz (default: synthetic).")

Engine = Callable[[tf.Tensor, tf.Tensor], np.ndarray]


def _numpy_engine(plan) -> Engine:
  return lambda inputs, cot: geometry.host_conv_gradient(plan.layer, inputs.numpy(), cot.numpy())


def _tf_patches_engine(plan) -> Engine:
  @tf.function
  def gradient(inputs, cot):
    patches = geometry.conv_patches(plan.layer, inputs, *plan.patches)  # [N, P, K]
    return structured_blocks.positional_gradient(patches, cot)  # [N, K*C]
  return lambda inputs, cot: gradient(inputs, cot).numpy()


def _tf_engine(plan) -> Engine:
  gradient = tf.function(lambda inputs, cot: geometry.conv_gradient(plan.layer, inputs, cot,
                                                                    *plan.patches))
  return lambda inputs, cot: gradient(inputs, cot).numpy()


ENGINES = {"numpy": _numpy_engine, "tf_patches": _tf_patches_engine, "tf": _tf_engine}


def _best_seconds(fn: Callable[[], object], repeats: int):
  result = fn()  # untimed: tracing
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best, result


def time_model(name: str, n: int, repeats: int, data_dir) -> Dict[str, float]:
  """Prints per-layer times of every engine on `name`'s jacobian-form convs; returns totals."""
  model = ntk_tf.onednn.protect(ntk_tf.models.get(name, input_shape=(32, 32, 3)))
  ntk = structured_ntk.StructuredNtk(model)
  extractor = ntk.features
  plans = [p for p in extractor.plans
           if p.kind == "conv2d" and p.kernel and p.choice == "jacobian"]
  x = gram_paths.inputs((32, 32, 3), n, data_dir)  # [N, 32, 32, 3]
  records = _conv_records(extractor, plans, tf.constant(x))
  totals = dict.fromkeys(list(ENGINES) + ["chosen"], 0.0)
  print(f"\n{name}, N = {n}: ms per layer (max relative difference from numpy)")
  for plan, (inputs, cot) in zip(plans, records):
    cells, reference = [], None
    for label, make in ENGINES.items():
      engine = make(plan)
      seconds, grads = _best_seconds(lambda engine=engine: engine(inputs, cot), repeats)
      reference = grads if reference is None else reference
      diff = np.abs(grads - reference).max() / max(np.abs(reference).max(), 1e-30)
      totals[label] += seconds
      if label == ("numpy" if geometry.gradient_on_host(plan.layer, plan.positions) else "tf"):
        totals["chosen"] += seconds
      cells.append(f"{label} {1e3 * seconds:7.1f} ({diff:.0e})")
    print(f"  {plan.name:<22} P={plan.positions:<5d} K={plan.patch_len:<5d} "
          f"C={plan.channels:<4d} " + "  ".join(cells), flush=True)
  print("  total s: " + ", ".join(f"{k} {v:.3f}" for k, v in totals.items()))
  print("  numpy / engine: " + ", ".join(f"{k} {totals['numpy'] / v:.2f}"
                                          for k, v in totals.items()))
  return totals


def _conv_records(extractor, plans, x: tf.Tensor):
  """Returns [(inputs [N, H, W, C_in], cotangents [N, P, C])] of `plans` (one forward/backward)."""
  recorder = extractor._recorder  # pylint: disable=protected-access
  with tf.GradientTape() as tape:
    total = tf.reduce_sum(recorder.run(x))
  records = recorder.records
  cots = tape.gradient(total, [records[p.name][1] for p in plans])
  n = x.shape[0]
  return [(records[p.name][0], tf.reshape(c, [n, p.positions, p.channels]))
          for p, c in zip(plans, cots)]


def main(argv):
  del argv
  print(machine.format_features(machine.features()))
  print(f"load average {os.getloadavg()}")
  for name in _MODELS.value:
    time_model(name, _N.value, _REPEATS.value, _DATA_DIR.value)
  print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
  app.run(main)
