"""Exports what the neural-tangents yardstick needs: weights, inputs and ntk_tf's Grams.

One `.npz` (written atomically) read by `benchmarks/neural_tangents_peer.py`,
which runs in a separate JAX virtualenv (never a dependency of ntk_tf):

  x_<model>        [N, 32, 32, 3] float32, the CIFAR-10 inputs ntk_tf feeds the model
  gram_<model>     [N, N] float32, `ntk_tf.ntk_gram(model, x, implementation="auto")`
  w_<model>_<i>    the i-th trainable weight, Keras layout (Dense kernel [in, out],
                   Conv2D kernel HWIO, biases [out]), in `model.trainable_weights` order
  xtrain_<model>   [B, 32, 32, 3] float32 and ytrain_<model> [B, 1] {0, 1}: one
                   training batch for the step timings

Models: MLP (2 x 100 ReLU, 1 logit) and LeNet ('same' conv, average pooling).
"""

import io
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from benchmarks import gram_paths
from ntk_tf import atomic
from ntk_tf import models
from ntk_tf.ntk import gram

CASES: Tuple[Tuple[str, int], ...] = (("mlp", 2000), ("lenet", 1000))


def export_arrays(cases: Sequence[Tuple[str, int]] = CASES, data_dir: Optional[str] = None,
                  batch_size: int = 128) -> Dict[str, np.ndarray]:
  """Returns the arrays of the module docstring for each (model name, N) of `cases`."""
  arrays = {}
  for name, n in cases:
    model = models.get(name, input_shape=(32, 32, 3))
    x = gram_paths.inputs((32, 32, 3), max(n, batch_size), data_dir)
    arrays[f"x_{name}"] = x[:n]
    arrays[f"gram_{name}"] = gram.ntk_gram(model, x[:n], implementation="auto", progress=False)
    for i, weight in enumerate(model.trainable_weights):
      arrays[f"w_{name}_{i}"] = np.asarray(weight.numpy(), np.float32)
    arrays[f"xtrain_{name}"] = x[:batch_size]
    arrays[f"ytrain_{name}"] = (np.arange(batch_size) % 2).astype(np.float32).reshape(-1, 1)
  return arrays


def export(path: str, cases: Sequence[Tuple[str, int]] = CASES,
           data_dir: Optional[str] = None) -> str:
  """Writes `export_arrays(cases, data_dir)` to `path` (.npz, atomically); returns path."""
  buffer = io.BytesIO()
  np.savez(buffer, **export_arrays(cases, data_dir))
  atomic.write_bytes(path, buffer.getvalue())
  return path
