"""Tests of ntk_tf.forward_mode against per-example Jacobians and the model itself.

Reference: f = model(x, training=False) and J dtheta with J from one
GradientTape per example (float64), for models whose layers take each path of
`primal_and_jvp`: the exact Dense/Conv2D rules (with and without an
activation inside the layer), linear parameter-free layers, layers under a
local ForwardAccumulator (max pooling, BatchNorm, a nested model), several
inputs reaching one Add, and a subclassed (non-functional) model.
"""

from tests import test_util  # pylint: disable=unused-import  (quiet TF)
from tests import ntk_reference

from absl.testing import absltest
from absl.testing import parameterized
import keras
import numpy as np
import tensorflow as tf

import ntk_tf
from ntk_tf import forward_mode


def _mixed() -> keras.Model:
  """Every path: Conv2D+tanh inside, max pool, BatchNorm, nested model, Add, Dense."""
  inputs = keras.Input((6, 6, 2))
  h = keras.layers.Conv2D(3, 3, padding="same", activation="tanh")(inputs)  # [N, 6, 6, 3]
  h = keras.layers.MaxPooling2D(2)(h)  # [N, 3, 3, 3]
  h = keras.layers.BatchNormalization(beta_initializer="random_normal",
                                      gamma_initializer="random_normal")(h)
  inner = keras.Sequential([keras.Input((3, 3, 3)), keras.layers.Conv2D(3, 1),
                            keras.layers.Activation("gelu")])
  h = keras.layers.Add()([h, inner(h)])  # [N, 3, 3, 3]
  h = keras.layers.Flatten()(h)
  h = keras.layers.Dense(5, activation="relu")(h)
  return keras.Model(inputs, keras.layers.Dense(1)(h))


class _Subclassed(keras.Model):

  def __init__(self):
    super().__init__()
    self.hidden = keras.layers.Dense(4, activation="tanh")
    self.out = keras.layers.Dense(1)

  def call(self, x):
    return self.out(self.hidden(keras.ops.reshape(x, (-1, 8))))


def _build(name: str) -> keras.Model:
  keras.utils.set_random_seed(0)
  with ntk_reference.floatx("float64"):
    if name == "mixed":
      model = _mixed()
    elif name == "subclassed":
      model = _Subclassed()
      model(np.zeros((1, 2, 4)))
    else:
      model = ntk_tf.models.get(name, input_shape=(8, 8, 3), **(
          {"width": 2} if name == "resnet18" else {}))
  # BatchNorm statistics other than 0 and 1, so inference BatchNorm is not the
  # identity, yet small means, so ReLUs stay alive.
  rng = np.random.default_rng(1)
  for v in model.non_trainable_weights:
    v.assign(rng.normal(scale=0.1, size=v.shape) if "mean" in v.path
             else rng.uniform(0.5, 1.5, size=v.shape))
  return model


def _jacobian(model: keras.Model, x: np.ndarray) -> np.ndarray:
  """J[i, p] = d f(x_i) / d theta_p, one GradientTape per example, `[N, P]`."""
  rows = []
  for i in range(len(x)):
    with tf.GradientTape() as tape:
      f_i = model(x[i:i + 1], training=False)[0, 0]
    grads = tape.gradient(f_i, model.trainable_weights,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    rows.append(np.concatenate([g.numpy().ravel() for g in grads]))
  return np.stack(rows)


class PrimalAndJvpTest(parameterized.TestCase):

  @parameterized.parameters("mlp", "lenet", "resnet18", "mixed", "subclassed")
  def test_equals_model_and_jacobian_times_tangent(self, name):
    model = _build(name)
    shape = (2, 4) if name == "subclassed" else tuple(model.inputs[0].shape[1:])
    x = np.random.default_rng(2).normal(size=(5,) + shape)
    rng = np.random.default_rng(3)
    dtheta = [rng.normal(size=v.shape) for v in model.trainable_weights]
    tangents = {id(v): tf.constant(d) for v, d in zip(model.trainable_weights, dtheta)}
    f, jvp = forward_mode.primal_and_jvp(model, tf.constant(x), tangents)
    np.testing.assert_allclose(f.numpy(), model(x, training=False).numpy(), rtol=1e-12, atol=1e-12)
    expected = _jacobian(model, x) @ np.concatenate([d.ravel() for d in dtheta])  # [N]
    np.testing.assert_allclose(jvp.numpy()[:, 0], expected, rtol=1e-10, atol=1e-12)

  def test_tangent_on_some_parameters_only(self):
    model = _build("lenet")
    x = np.random.default_rng(4).normal(size=(3, 8, 8, 3))
    last = model.trainable_weights[-2]  # the logit kernel, [84, 1]
    direction = np.random.default_rng(5).normal(size=last.shape)
    _, jvp = forward_mode.primal_and_jvp(model, tf.constant(x), {id(last): tf.constant(direction)})
    jac = _jacobian(model, x)  # [N, P]
    offset = sum(int(np.prod(v.shape)) for v in model.trainable_weights[:-2])
    expected = jac[:, offset:offset + direction.size] @ direction.ravel()
    np.testing.assert_allclose(jvp.numpy()[:, 0], expected, rtol=1e-10, atol=1e-12)

  def test_no_tangent_reaching_the_output_gives_none(self):
    model = _build("mlp")
    f, jvp = forward_mode.primal_and_jvp(model, tf.constant(np.ones((2, 8, 8, 3))), {})
    self.assertIsNone(jvp)
    self.assertEqual(f.shape, (2, 1))


if __name__ == "__main__":
  absltest.main()
