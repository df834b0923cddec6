"""Independent reference computations for the NTK tests.

Nothing here uses ntk_tf's NTK code: the float64 twin of a model is built by
the model builder under Keras' global float64 dtype policy (not by
`ntk_tf.precision`), and Jacobians are a plain Python loop of per-example
GradientTape gradients.
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf

import ntk_tf


# The small test fixture shared by the NTK tests: 8x8x3 images (the narrow
# ResNet18 needs >= 8) and the three paper models, ResNet18 at width 4.
SHAPE = (8, 8, 3)
SMALL_MODELS = {"mlp": dict(), "lenet": dict(), "resnet18": dict(width=4)}


def inputs(n: int, seed: int = 0) -> np.ndarray:
  """`[n, *SHAPE]` float32 Gaussian inputs."""
  return np.random.RandomState(seed).randn(n, *SHAPE).astype(np.float32)


def model_and_twin(name: str, activation: str, seed: int):
  """The small model `name` (float32) and its independent float64 twin."""
  kwargs = dict(input_shape=SHAPE, activation=activation, seed=seed, **SMALL_MODELS[name])
  model = ntk_tf.models.get(name, **kwargs)
  return model, float64_twin(name, model, **kwargs)


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
    grads = tape.gradient(logit, model.trainable_variables,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    rows.append(np.concatenate([np.asarray(g).ravel() for g in grads]))  # [P]
  return np.stack(rows)  # [N, P]


def loop_output_jacobian(model: keras.Model, x: np.ndarray) -> np.ndarray:
  """Returns `[N, K, P]`: entry [i, a] is the GradientTape gradient of f_a(x_i) alone.

  One tape per example and per output (inference mode), for a model with K logits.
  """
  dtype = model.trainable_variables[0].dtype
  k = int(model(tf.constant(x[:1], dtype=dtype), training=False).shape[-1])
  rows = []
  for i in range(x.shape[0]):
    per_output = []
    for a in range(k):
      with tf.GradientTape() as tape:
        logit = model(tf.constant(x[i:i + 1], dtype=dtype), training=False)[0, a]
      grads = tape.gradient(logit, model.trainable_variables,
                            unconnected_gradients=tf.UnconnectedGradients.ZERO)
      per_output.append(np.concatenate([np.asarray(g).ravel() for g in grads]))  # [P]
    rows.append(np.stack(per_output))  # [K, P]
  return np.stack(rows)  # [N, K, P]


def finite_difference_jacobian(model: keras.Model, x: np.ndarray, step: float = 1e-6) -> np.ndarray:
  """Returns `[N, P]` by central differences of the logit, one parameter at a time.

  J[:, k] = (f(theta + h e_k) - f(theta - h e_k)) / (2 h), f in inference mode;
  no autodiff at all, so it checks the gradients TF computes. Meant for small
  float64 models (2 P forward passes); the weights are restored after.
  """
  # Traced once: the variables are read at each call, so the 2 P passes reuse one graph
  # (in eager, Keras builds a fresh XLA function for a grouped convolution on every call).
  forward = tf.function(lambda: model(x, training=False))
  columns = []
  for variable in model.trainable_variables:
    base = np.array(variable.numpy(), copy=True)
    flat = base.reshape(-1)
    for k in range(flat.size):
      logits = []
      for sign in (1.0, -1.0):
        moved = flat.copy()
        moved[k] += sign * step
        variable.assign(moved.reshape(base.shape))
        logits.append(np.asarray(forward())[:, 0])  # [N]
      columns.append((logits[0] - logits[1]) / (2.0 * step))
    variable.assign(base)
  return np.stack(columns, axis=1)  # [N, P]


def brute_force_gram(model: keras.Model, x1: np.ndarray, x2=None) -> np.ndarray:
  """Returns Theta(x1, x2) = J(x1) J(x2)^T [N1, N2]."""
  jac_x1 = loop_jacobian(model, x1)
  jac_x2 = jac_x1 if x2 is None else loop_jacobian(model, x2)
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
  """Builds models in `dtype` inside the block (floatx and dtype policy), restoring both after.

  Sets the dtype policy as well as floatx: once any code has set a policy
  explicitly, floatx alone no longer reaches new layers; and floatx alone
  sets the dtype of `keras.Input`.
  """
  previous_floatx, previous_policy = keras.config.floatx(), keras.config.dtype_policy()
  keras.config.set_floatx(dtype)
  keras.config.set_dtype_policy(dtype)
  try:
    yield
  finally:
    keras.config.set_floatx(previous_floatx)
    keras.config.set_dtype_policy(previous_policy)


def rel_error(actual: np.ndarray, expected: np.ndarray) -> float:
  """max |actual - expected| / max |expected|."""
  return float(np.max(np.abs(np.asarray(actual, np.float64) - expected)) /
               np.max(np.abs(expected)))
