"""Tests of ntk_tf.linearize against independent computations.

References: per-example GradientTape Jacobians (`_brute_force_jacobian`),
finite differences of the network, closed-form kernel dynamics and models that
are linear in their parameters.
"""

import os

from tests import test_util  # pylint: disable=unused-import  (quiet TF)
from tests import ntk_reference

from absl.testing import absltest
from absl.testing import parameterized
import keras
import numpy as np
import tensorflow as tf

import ntk_tf
from ntk_tf.linearize import Linearized


def _tiny(name: str, dtype: str = "float32", activation: str = "tanh", seed: int = 0) -> keras.Model:
  with ntk_reference.floatx(dtype):
    if name == "mlp":
      return ntk_tf.models.mlp((3, 3, 1), activation=activation, width=16, seed=seed)
    if name == "lenet":
      return ntk_tf.models.lenet((8, 8, 1), activation=activation, seed=seed)
    if name == "resnet18":
      return ntk_tf.models.resnet18((8, 8, 3), activation=activation, width=2, seed=seed)
  raise ValueError(name)


def _inputs(model: keras.Model, n: int, seed: int = 0) -> np.ndarray:
  shape = tuple(model.inputs[0].shape[1:])
  return np.random.default_rng(seed).normal(size=(n,) + shape).astype(model.compute_dtype)


def _params(model: keras.Model, lin: Linearized):
  """The network's variables that play the role of theta (same order as lin.theta)."""
  return [model.weights[i] for i in lin.parameter_indices]


def _brute_force_jacobian(model: keras.Model, params, x: np.ndarray) -> np.ndarray:
  """J[i, p] = d f(x_i) / d theta_p, one GradientTape per example, `[N, P]`."""
  rows = []
  for i in range(len(x)):
    with tf.GradientTape() as tape:
      f_i = model(x[i:i + 1], training=False)[0, 0]  # []
    grads = tape.gradient(f_i, params)
    rows.append(np.concatenate([g.numpy().ravel() for g in grads]))  # [P]
  return np.stack(rows)  # [N, P]


def _set(variables, values):
  for v, value in zip(variables, values):
    v.assign(value)


def _f(model, x):
  return model(x, training=False).numpy()[:, 0]  # [N]


class LinearizeShapeTest(parameterized.TestCase):

  @parameterized.parameters("mlp", "lenet")
  def test_output_shape_and_parameters(self, name):
    model = _tiny(name)
    lin = ntk_tf.linearize(model)
    x = _inputs(model, 5)
    self.assertEqual(lin(x).shape, (5, 1))
    self.assertEqual(lin.predict(x, verbose=0).shape, (5, 1))
    self.assertLen(lin.trainable_weights, len(model.trainable_weights))
    self.assertEqual([tuple(v.shape) for v in lin.trainable_weights],
                     [tuple(v.shape) for v in model.trainable_weights])


class LinearizeValueTest(parameterized.TestCase):

  @parameterized.parameters("mlp", "lenet", "resnet18")
  def test_equals_model_at_origin(self, name):
    model = _tiny(name)
    lin = ntk_tf.linearize(model)
    x = _inputs(model, 4)
    np.testing.assert_allclose(lin(x).numpy(), model(x, training=False).numpy(), rtol=1e-6, atol=1e-6)

  def test_second_order_remainder_and_first_order_term(self):
    model = _tiny("mlp", "float64")
    lin = ntk_tf.linearize(model)
    x = _inputs(model, 6)
    params = _params(model, lin)
    theta0 = [v.numpy() for v in params]
    rng = np.random.default_rng(1)
    direction = [rng.normal(size=t.shape) for t in theta0]  # v
    f0 = _f(model, x)

    def f_at(eps):  # f(theta0 + eps v) by the network itself
      _set(params, [t + eps * d for t, d in zip(theta0, direction)])
      out = _f(model, x)
      _set(params, theta0)
      return out

    def f_lin_at(eps):
      _set(lin.theta, [t + eps * d for t, d in zip(theta0, direction)])
      return _f(lin, x)

    eps1, eps2 = 1e-2, 5e-3
    remainder1 = np.max(np.abs(f_lin_at(eps1) - f_at(eps1)))
    remainder2 = np.max(np.abs(f_lin_at(eps2) - f_at(eps2)))
    self.assertGreater(remainder1, 1e-9)
    # O(eps^2): halving eps divides the remainder by 4.
    self.assertBetween(remainder1 / remainder2, 3.6, 4.4)
    # First-order term (f_lin(theta0 + eps v) - f(theta0)) / eps = J v = central finite difference.
    h = 1e-5
    finite_difference = (f_at(h) - f_at(-h)) / (2 * h)  # [N]
    first_order = (f_lin_at(eps1) - f0) / eps1
    np.testing.assert_allclose(first_order, finite_difference, rtol=1e-7, atol=1e-9)

  def test_expansion_point_at_checkpoint(self):
    # theta_star = a different model's weights ("checkpoint"); theta_origin = model's.
    model = _tiny("mlp", "float64", seed=0)
    checkpoint = _tiny("mlp", "float64", seed=7)
    x = _inputs(model, 5)
    for offset in (True, False):
      lin = ntk_tf.linearize(model, expansion_point=checkpoint, offset=offset)
      expected = _f(checkpoint, x) if offset else np.zeros(5)
      np.testing.assert_allclose(_f(lin, x), expected, atol=1e-12)
    # The JVP uses J at theta_star: compare with a finite difference of the checkpoint.
    lin = ntk_tf.linearize(model, expansion_point=checkpoint.get_weights(), offset=False)
    params_star = _params(checkpoint, lin)
    theta_star = [v.numpy() for v in params_star]
    rng = np.random.default_rng(2)
    direction = [rng.normal(size=t.shape) for t in theta_star]
    _set(lin.theta, [o.numpy() + d for o, d in zip(lin.theta_origin, direction)])
    h = 1e-5
    _set(params_star, [t + h * d for t, d in zip(theta_star, direction)])
    f_plus = _f(checkpoint, x)
    _set(params_star, [t - h * d for t, d in zip(theta_star, direction)])
    f_minus = _f(checkpoint, x)
    np.testing.assert_allclose(_f(lin, x), (f_plus - f_minus) / (2 * h), rtol=1e-7, atol=1e-9)

  def test_linear_in_parameters_model_is_its_own_linearization(self):
    # f(x; w, b) = w . tanh(x) + b: linear in (w, b), J = [tanh(x), 1].
    with ntk_reference.floatx("float64"):
      inputs = keras.Input((4,))
      features = keras.layers.Activation("tanh")(inputs)  # fixed features, [N, 4]
      model = keras.Model(inputs, keras.layers.Dense(1)(features))
      other = keras.models.clone_model(model)
    x = np.random.default_rng(0).normal(size=(7, 4))
    rng = np.random.default_rng(3)
    theta = [rng.normal(size=v.shape) * 5 for v in model.weights]
    theta_star = [rng.normal(size=v.shape) for v in model.weights]
    theta_origin = [v.numpy() for v in model.weights]
    diff = [t - o for t, o in zip(theta, theta_origin)]

    lin = ntk_tf.linearize(model)
    _set(lin.theta, theta)
    _set(other.weights, theta)
    np.testing.assert_allclose(_f(lin, x), _f(other, x), rtol=1e-12, atol=1e-12)
    # Any expansion point: offset=False gives f(theta - theta_origin), offset=True
    # gives f(theta_star + theta - theta_origin).
    for offset in (False, True):
      lin = ntk_tf.linearize(model, expansion_point=theta_star, offset=offset)
      _set(lin.theta, theta)
      _set(other.weights, [d + s for d, s in zip(diff, theta_star)] if offset else diff)
      np.testing.assert_allclose(_f(lin, x), _f(other, x), rtol=1e-12, atol=1e-12)

  @parameterized.parameters("mlp", "lenet", "resnet18")  # resnet18: BatchNorm, Add, 1x1 stride 2
  def test_gradient_is_jacobian_transpose_times_loss_gradient(self, name):
    # The tape's gradient through the one-pass JVP (ntk_tf/forward_mode.py) equals
    # J^T dL/df from per-example GradientTape Jacobians of the network, float64.
    model = _tiny(name, "float64")
    lin = ntk_tf.linearize(model)
    x = _inputs(model, 6)
    y01 = np.array([0, 1, 1, 0, 1, 0], np.float64)
    params = _params(model, lin)
    jac = _brute_force_jacobian(model, params, x)  # [N, P] at theta_star = theta0
    rng = np.random.default_rng(4)
    dtheta = [0.3 * rng.normal(size=v.shape) for v in params]
    _set(lin.theta, [v.numpy() + d for v, d in zip(params, dtheta)])
    # Independent forward: f_lin = f(theta0) + J dtheta.
    f_lin = _f(model, x) + jac @ np.concatenate([d.ravel() for d in dtheta])  # [N]
    with tf.GradientTape() as tape:
      logits = lin(x)  # [N, 1]
      loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y01[:, None], logits=logits))
    grads = tape.gradient(loss, lin.theta)
    grad = np.concatenate([g.numpy().ravel() for g in grads])  # [P]
    np.testing.assert_allclose(logits.numpy()[:, 0], f_lin, rtol=1e-12, atol=1e-12)
    dloss_df = (1 / (1 + np.exp(-f_lin)) - y01) / len(x)  # [N]
    np.testing.assert_allclose(grad, jac.T @ dloss_df, rtol=1e-10, atol=1e-12)

  def test_gradient_descent_follows_kernel_dynamics(self):
    # Full-batch GD on (1/2N) sum (f - y)^2: f_{t+1} = f_t - (eta / N) Theta (f_t - y).
    model = _tiny("mlp", "float64")
    lin = ntk_tf.linearize(model)
    n = 8
    x = _inputs(model, n)
    y = np.random.default_rng(5).normal(size=n)
    jac = _brute_force_jacobian(model, _params(model, lin), x)  # [N, P]
    theta_gram = jac @ jac.T  # Theta, [N, N]
    eta = n / np.linalg.eigvalsh(theta_gram)[-1]  # eta * lambda_max / N = 1
    f_t = _f(model, x)
    f_start = f_t
    for _ in range(20):
      with tf.GradientTape() as tape:
        residual = lin(x)[:, 0] - y  # [N]
        loss = tf.reduce_sum(residual**2) / (2 * n)
      for v, g in zip(lin.theta, tape.gradient(loss, lin.theta)):
        v.assign_sub(eta * g)
      f_t = f_t - (eta / n) * theta_gram @ (f_t - y)
    f_lin = _f(lin, x)
    self.assertGreater(np.linalg.norm(f_t - f_start), 0.1 * np.linalg.norm(f_start - y))
    self.assertLessEqual(np.linalg.norm(f_lin - f_t) / np.linalg.norm(f_t), 1e-6)


class LinearizeKerasTest(parameterized.TestCase):

  @parameterized.parameters(("lenet", "float32"), ("mlp", "float64"))
  def test_save_load_round_trip(self, name, dtype):
    model = _tiny(name, dtype)
    lin = ntk_tf.linearize(model, offset=False)
    rng = np.random.default_rng(0)
    _set(lin.theta, [v.numpy() + 0.05 * rng.normal(size=v.shape) for v in lin.theta])
    x = _inputs(model, 5)
    expected = lin.predict(x, verbose=0)
    self.assertGreater(np.abs(expected).max(), 1e-4)
    path = os.path.join(self.create_tempdir().full_path, "lin.keras")
    lin.save(path)
    loaded = keras.models.load_model(path)
    self.assertIsInstance(loaded, Linearized)
    self.assertFalse(loaded.offset)
    self.assertEqual(loaded.compute_dtype, dtype)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    # get_config / from_config gives the same architecture; weights then transfer.
    clone = Linearized.from_config(lin.get_config())
    clone.set_weights(lin.get_weights())
    np.testing.assert_array_equal(clone.predict(x, verbose=0), expected)

  def test_fit_trains_theta_only_and_batchnorm_stays_frozen(self):
    model = _tiny("resnet18", activation="relu")
    lin = ntk_tf.linearize(model)
    x = _inputs(model, 8)
    y = np.array([0, 1] * 4, np.float32)[:, None]
    # theta = conv kernels, the Dense kernel and bias and BatchNorm gamma/beta, counted by layer type.
    kinds = (keras.layers.Conv2D, keras.layers.Dense, keras.layers.BatchNormalization)
    expected_params = sum(len(layer.trainable_weights) for layer in model.layers
                          if isinstance(layer, kinds))
    self.assertLen(lin.theta, expected_params)
    self.assertGreater(sum(isinstance(layer, keras.layers.BatchNormalization)
                           for layer in model.layers), 0)
    # Inference-mode BatchNorm: equals the network with training=False, not training=True.
    np.testing.assert_allclose(lin(x).numpy(), model(x, training=False).numpy(), rtol=1e-5, atol=1e-6)
    self.assertGreater(np.abs(lin(x).numpy() - model(x, training=True).numpy()).max(), 1e-4)
    frozen = [v.numpy().copy() for v in lin.network.weights]
    origin = [v.numpy().copy() for v in lin.theta_origin]
    theta_before = [v.numpy().copy() for v in lin.theta]
    lin.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                loss=keras.losses.BinaryCrossentropy(from_logits=True))
    lin.fit(x, y, batch_size=4, epochs=2, verbose=0)
    lin.evaluate(x, y, verbose=0)
    for before, v in zip(frozen, lin.network.weights):
      np.testing.assert_array_equal(v.numpy(), before, err_msg=v.path)
    for before, v in zip(origin, lin.theta_origin):
      np.testing.assert_array_equal(v.numpy(), before)
    moved = max(np.abs(v.numpy() - b).max() for v, b in zip(lin.theta, theta_before))
    self.assertGreater(moved, 1e-4)

  def test_refuses_non_finite_weights_by_name(self):
    model = _tiny("mlp", "float64")
    checkpoint = _tiny("mlp", "float64", seed=3)
    bad = [w.copy() for w in checkpoint.get_weights()]
    bad[2][0, 0] = np.nan  # the second Dense kernel
    bad_path = checkpoint.weights[2].path
    with self.assertRaisesRegex(ValueError, f"expansion_point must be finite.*{bad_path}"):
      ntk_tf.linearize(model, expansion_point=bad)
    checkpoint.weights[2].assign(np.where(np.isnan(bad[2]), np.inf, bad[2]))
    with self.assertRaisesRegex(ValueError, f"expansion_point must be finite.*{bad_path}"):
      ntk_tf.linearize(model, expansion_point=checkpoint, offset=False)
    model.weights[0].assign(np.full(model.weights[0].shape, np.nan))
    with self.assertRaisesRegex(ValueError, f"non-finite weights.*{model.weights[0].path}"):
      ntk_tf.linearize(model)

  def test_bad_arguments(self):
    model = _tiny("mlp")
    with self.assertRaisesRegex(ValueError, "Received shapes"):
      ntk_tf.linearize(model, expansion_point=[np.zeros(3)])
    with self.assertRaisesRegex(ValueError, "offset=1"):
      ntk_tf.linearize(model, offset=1)
    with self.assertRaisesRegex(ValueError, "model="):
      ntk_tf.linearize("not a model")
    with self.assertRaisesRegex(ValueError, "batch_norm='frozen'"):
      ntk_tf.linearize(model, batch_norm="frozen")


if __name__ == "__main__":
  absltest.main()
