"""Independent NTK references for tests: per-example GradientTape loops.

    J[i] = d f(x_i) / d theta  (one tape per example),  Theta = J_1 J_2^T
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf


def per_example_jacobian(model: keras.Model, x: np.ndarray) -> np.ndarray:
  """Returns J [N, P] by a Python loop of single-example tapes (inference mode)."""
  rows = []
  for i in range(len(x)):
    with tf.GradientTape() as tape:
      logit = model(x[i:i + 1], training=False)[0, 0]
    grads = tape.gradient(logit, model.trainable_variables,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    rows.append(np.concatenate([np.asarray(g).ravel() for g in grads]))
  return np.stack(rows)  # [N, P]


def brute_force_gram(model: keras.Model, x1: np.ndarray, x2=None) -> np.ndarray:
  """Returns Theta(x1, x2) = J(x1) J(x2)^T [N1, N2]."""
  jac_x1 = per_example_jacobian(model, x1)
  jac_x2 = jac_x1 if x2 is None else per_example_jacobian(model, x2)
  return jac_x1 @ jac_x2.T


def gram_by_blocks(block_fn, x1: np.ndarray, x2=None, block_size: int = 4) -> np.ndarray:
  """Assembles a Gram from BlockFn calls (upper blocks + transpose when square)."""
  square = x2 is None
  x2 = x1 if square else x2
  out = np.zeros((len(x1), len(x2)))
  for i in range(0, len(x1), block_size):
    for j in range(i if square else 0, len(x2), block_size):
      xa, xb = x1[i:i + block_size], x2[j:j + block_size]
      block = block_fn(xa) if square and i == j else block_fn(xa, xb)
      out[i:i + len(xa), j:j + len(xb)] = block
      if square:
        out[j:j + len(xb), i:i + len(xa)] = block.T
  return out


def randomize_batch_norm(model: keras.Model, seed: int = 0) -> None:
  """Gives every BatchNormalization non-trivial moving statistics and affine weights."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      c = layer.moving_mean.shape
      layer.moving_mean.assign(rng.normal(0.0, 0.1, c))
      layer.moving_variance.assign(rng.uniform(0.5, 1.5, c))
      layer.gamma.assign(rng.uniform(0.5, 1.5, c))
      layer.beta.assign(rng.normal(0.0, 0.1, c))


@contextlib.contextmanager
def floatx(dtype: str):
  """Builds models in `dtype` inside the block, restoring Keras' floatx after."""
  previous = keras.config.floatx()
  keras.config.set_floatx(dtype)
  try:
    yield
  finally:
    keras.config.set_floatx(previous)


def rel_error(actual: np.ndarray, expected: np.ndarray) -> float:
  return float(np.abs(actual - expected).max() / np.abs(expected).max())
