"""Independent reference computations for the NTK tests.

Nothing here uses ntk_tf's NTK code: the float64 twin of a model is built by
the model builder under Keras' global float64 dtype policy (not by
`ntk_tf.precision`), and Jacobians are a plain Python loop of per-example
GradientTape gradients.
"""

import keras
import numpy as np
import tensorflow as tf

import ntk_tf


def float64_twin(name: str, model: keras.Model, **build_kwargs) -> keras.Model:
  """Rebuilds `name` with float64 layers and copies `model`'s weights into it."""
  old_policy = keras.config.dtype_policy()
  keras.config.set_dtype_policy("float64")
  try:
    twin = ntk_tf.models.get(name, **build_kwargs)
  finally:
    keras.config.set_dtype_policy(old_policy)
  twin.set_weights([np.asarray(w, dtype=np.float64) for w in model.get_weights()])
  assert all(v.dtype == "float64" for v in twin.weights)
  return twin


def loop_jacobian(model: keras.Model, x: np.ndarray) -> np.ndarray:
  """Returns `[N, P]`: row i is the GradientTape gradient of f(x_i) alone (inference mode)."""
  dtype = model.trainable_variables[0].dtype
  rows = []
  for i in range(x.shape[0]):
    with tf.GradientTape() as tape:
      logit = model(tf.constant(x[i:i + 1], dtype=dtype), training=False)[0, 0]
    grads = tape.gradient(logit, model.trainable_variables)
    rows.append(np.concatenate([np.asarray(g).ravel() for g in grads]))  # [P]
  return np.stack(rows)  # [N, P]


def rel_error(actual: np.ndarray, expected: np.ndarray) -> float:
  """max |actual - expected| / max |expected|."""
  return float(np.max(np.abs(np.asarray(actual, np.float64) - expected)) /
               np.max(np.abs(expected)))
