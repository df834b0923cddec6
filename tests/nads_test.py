"""Tests for ntk_tf.nads and ntk_tf.mixed_derivative against closed forms, finite differences
and sample statistics."""

from absl.testing import absltest
from absl.testing import parameterized
import keras
import numpy as np
import tensorflow as tf

from tests import test_util  # pylint: disable=unused-import
import ntk_tf
from ntk_tf import validation
from ntk_tf.mixed_derivative import mixed_derivative
from ntk_tf.mixed_derivative import mixed_derivative_matvec
from ntk_tf.mixed_derivative import mixed_derivative_mtm
from ntk_tf.mixed_derivative import mixed_derivative_rmatvec
from ntk_tf.nads import NadMethod

METHODS = ("dense", "mtm", "lanczos")


class Float64Test(parameterized.TestCase):
  """Builds models in float64 so finite differences and closed forms are tight."""

  def setUp(self):
    super().setUp()
    self._floatx = keras.config.floatx()
    keras.config.set_floatx("float64")

  def tearDown(self):
    keras.config.set_floatx(self._floatx)
    super().tearDown()


def linear_feature_model(b, a, input_shape, train_b):
  """f(x) = a^T (B vec(x)) + c: Dense(no bias, kernel B^T) then Dense(1); B trainable or not."""
  inputs = keras.Input(shape=input_shape)
  h = keras.layers.Flatten()(inputs)  # [N, d]
  h = keras.layers.Dense(b.shape[0], use_bias=False, trainable=train_b,
                         kernel_initializer=keras.initializers.Constant(b.T))(h)  # [N, m]
  out = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(a[:, None]),
                           bias_initializer="ones")(h)  # [N, 1]
  return keras.Model(inputs, out)


def assert_same_directions(test, got, want, atol):
  """Rows of `got` and `want` ([k, d]) agree up to a sign per row."""
  got = got.reshape(len(got), -1)
  want = want.reshape(len(want), -1)
  signs = np.sign(np.sum(got * want, axis=1))
  np.testing.assert_allclose(got, signs[:, None] * want, atol=atol)


class ClosedFormTest(Float64Test):
  """f(x) = a^T B x: theta = a gives M = B; theta = (a, B) gives M^T M = B^T B + ||a||^2 I."""

  shape = (3, 3, 2)  # d = 18
  features = 7  # m < d: M has d - m zero singular values when B is frozen.

  def _problem(self):
    rng = np.random.default_rng(3)
    d = int(np.prod(self.shape))
    b = rng.standard_normal((self.features, d))  # [m, d]
    a = rng.standard_normal(self.features)  # [m]
    _, s_b, vh_b = np.linalg.svd(b)  # s_b [m], vh_b [d, d]
    return b, a, s_b, vh_b

  @parameterized.product(method=METHODS, sample=[False, True])
  def test_frozen_features(self, method, sample):
    b, a, s_b, vh_b = self._problem()
    model = linear_feature_model(b, a, self.shape, train_b=False)
    x = np.random.default_rng(1).standard_normal((4,) + self.shape) if sample else None
    k = self.features - 1
    values, directions = ntk_tf.nads(model, k=k, x=x, method=method)
    np.testing.assert_allclose(values, s_b[:k], rtol=1e-6)
    assert_same_directions(self, directions, vh_b[:k], atol=1e-6)
    np.testing.assert_allclose(ntk_tf.nad_alignment(model, directions, x=x), s_b[:k]**2,
                               rtol=1e-6)

  @parameterized.product(method=METHODS)
  def test_trainable_features(self, method):
    b, a, s_b, vh_b = self._problem()
    model = linear_feature_model(b, a, self.shape, train_b=True)
    k = self.features - 1
    values, directions = ntk_tf.nads(model, k=k, method=method)
    np.testing.assert_allclose(values, np.sqrt(s_b[:k]**2 + a @ a), rtol=1e-6)
    assert_same_directions(self, directions, vh_b[:k], atol=1e-5)

  def test_all_directions_include_null_space(self):
    b, a, s_b, _ = self._problem()
    model = linear_feature_model(b, a, self.shape, train_b=False)
    d = int(np.prod(self.shape))
    for method in ("dense", "mtm"):
      values, directions = ntk_tf.nads(model, method=method)
      self.assertEqual(values.shape, (d,))
      self.assertEqual(directions.shape, (d,) + self.shape)
      np.testing.assert_allclose(values[:self.features], s_b, rtol=1e-6)
      np.testing.assert_allclose(values[self.features:], 0.0, atol=1e-6)
      flat = directions.reshape(d, d)
      np.testing.assert_allclose(flat @ flat.T, np.eye(d), atol=1e-8)


def per_example_grad(model, x):
  """grad_theta f(x) for one input `[H, W, C]`, flattened in trainable_variables order."""
  x = tf.constant(x[None])
  with tf.GradientTape() as tape:
    out = model(x, training=False)[0, 0]
  grads = tape.gradient(out, model.trainable_variables,
                        unconnected_gradients=tf.UnconnectedGradients.ZERO)
  return np.concatenate([g.numpy().ravel() for g in grads])


def finite_difference_m(model, xs, step=1e-4):
  """M `[P, d]` by central differences of per-example gradients, averaged over xs."""
  d = xs[0].size
  columns = []
  for i in range(d):
    e_i = np.zeros(d)
    e_i[i] = step
    e_i = e_i.reshape(xs[0].shape)
    col = [(per_example_grad(model, x + e_i) - per_example_grad(model, x - e_i)) / (2 * step)
           for x in xs]
    columns.append(np.mean(col, axis=0))
  return np.stack(columns, axis=1)  # [P, d]


def assert_close_rel(test, got, want, rtol):
  test.assertLessEqual(np.linalg.norm(got - want), rtol * np.linalg.norm(want),
                       msg=f"relative error {np.linalg.norm(got - want) / np.linalg.norm(want)}")


class FiniteDifferenceTest(Float64Test):

  @parameterized.named_parameters(
      ("mlp_origin", "mlp", (3, 3, 1), 0, None),
      ("mlp_sample", "mlp", (3, 3, 1), 5, 2),
      ("lenet_origin", "lenet", (4, 4, 1), 0, None),
      ("lenet_sample", "lenet", (4, 4, 1), 3, 2),
  )
  def test_products_and_nads_match_finite_differences(self, name, shape, n, batch_size):
    model = ntk_tf.models.get(name, input_shape=shape, activation="gelu", seed=1)
    self.assertEqual(model.trainable_variables[0].dtype, "float64")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n,) + shape) if n else None
    xs = x if n else np.zeros((1,) + shape)
    m_fd = finite_difference_m(model, xs)  # [P, d]
    p, d = m_fd.shape
    self.assertEqual(p, validation.parameter_count(model))
    v = rng.standard_normal(d)
    w = rng.standard_normal(p)
    assert_close_rel(self, mixed_derivative_matvec(model, v, x, batch_size=batch_size),
                     m_fd @ v, 1e-6)
    assert_close_rel(self, mixed_derivative_matvec(model, v.reshape(shape), x), m_fd @ v, 1e-6)
    assert_close_rel(self, mixed_derivative_rmatvec(model, w, x, batch_size=batch_size),
                     m_fd.T @ w, 1e-6)
    # One block size (not dividing d) for every blocked call: two traced block kernels.
    blocks = dict(directions_per_pass=5, batch_size=batch_size)
    assert_close_rel(self, mixed_derivative(model, x, **blocks), m_fd, 1e-6)
    assert_close_rel(self, mixed_derivative_mtm(model, x, **blocks), m_fd.T @ m_fd, 1e-6)
    _, s_fd, vh_fd = np.linalg.svd(m_fd, full_matrices=False)
    values, directions = ntk_tf.nads(model, k=3, x=x, **blocks)
    np.testing.assert_allclose(values, s_fd[:3], rtol=1e-5)
    assert_same_directions(self, directions, vh_fd[:3], atol=1e-4)
    alignment_fd = np.sum((m_fd @ directions.reshape(3, d).T)**2, axis=0)  # [3]
    np.testing.assert_allclose(ntk_tf.nad_alignment(model, directions, x, **blocks),
                               alignment_fd, rtol=1e-6)

  def test_resnet_matvec_matches_directional_difference(self):
    model = ntk_tf.models.resnet18((8, 8, 1), activation="gelu", width=1, seed=0)
    rng = np.random.default_rng(0)
    v = rng.standard_normal((8, 8, 1))
    step = 1e-4
    want = (per_example_grad(model, step * v) - per_example_grad(model, -step * v)) / (2 * step)
    assert_close_rel(self, mixed_derivative_matvec(model, v), want, 1e-6)


class ConventionTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # One model for the class, so the traced products are reused across tests.
    cls.model = ntk_tf.models.get("lenet", input_shape=(4, 4, 2), activation="gelu", seed=2)

  @parameterized.product(method=METHODS, k=[1, 4])
  def test_shapes_order_and_sign(self, method, k):
    values, directions = ntk_tf.nads(self.model, k=k, method=method)
    self.assertEqual(values.shape, (k,))
    self.assertEqual(directions.shape, (k, 4, 4, 2))
    self.assertTrue(np.all(np.diff(values) <= 0), msg=f"not descending: {values}")
    flat = directions.reshape(k, -1)
    np.testing.assert_allclose(flat @ flat.T, np.eye(k), atol=1e-6)
    peaks = flat[np.arange(k), np.argmax(np.abs(flat), axis=1)]
    self.assertTrue(np.all(peaks > 0), msg=f"largest entries not positive: {peaks}")

  def test_deterministic_and_methods_agree_with_signs(self):
    values, directions = ntk_tf.nads(self.model, k=4)
    values_again, directions_again = ntk_tf.nads(self.model, k=4)
    np.testing.assert_array_equal(values, values_again)
    np.testing.assert_array_equal(directions, directions_again)
    for method in ("dense", "lanczos"):
      other_values, other_directions = ntk_tf.nads(self.model, k=4, method=method)
      np.testing.assert_allclose(other_values, values, rtol=1e-4)
      np.testing.assert_allclose(other_directions, directions, atol=2e-3)

  def test_bad_input_names_the_value(self):
    d = 32
    with self.assertRaisesRegex(ValueError, "Received: k=33"):
      ntk_tf.nads(self.model, k=d + 1)
    with self.assertRaisesRegex(ValueError, "Received: k=0"):
      ntk_tf.nads(self.model, k=0)
    with self.assertRaisesRegex(ValueError, "Received: k=32"):
      ntk_tf.nads(self.model, k=d, method="lanczos")
    with self.assertRaisesRegex(ValueError, "Received: method='svd'"):
      ntk_tf.nads(self.model, k=2, method="svd")
    self.assertEqual([m.value for m in NadMethod], ["dense", "mtm", "lanczos"])
    with self.assertRaisesRegex(ValueError, "Received: method='gram'"):
      ntk_tf.nads(self.model, k=2, method="gram")  # the alias of MTM that was dropped
    with self.assertRaisesRegex(ValueError, r"Received: x.shape=\(3, 4, 4, 1\)"):
      ntk_tf.nads(self.model, k=2, x=np.zeros((3, 4, 4, 1)))
    with self.assertRaisesRegex(ValueError, "Received: directions_per_pass=0"):
      ntk_tf.nads(self.model, k=2, directions_per_pass=0)
    with self.assertRaisesRegex(ValueError, "Received: batch_size=0"):
      ntk_tf.nads(self.model, k=2, x=np.zeros((3, 4, 4, 2)), batch_size=0)
    with self.assertRaisesRegex(ValueError, r"Received: v.shape=\(31,\)"):
      mixed_derivative_matvec(self.model, np.zeros(31))
    with self.assertRaisesRegex(ValueError, r"Received: w.shape=\(5,\)"):
      mixed_derivative_rmatvec(self.model, np.zeros(5))
    with self.assertRaisesRegex(ValueError, r"Received: directions.shape=\(2, 4, 4, 1\)"):
      ntk_tf.nad_alignment(self.model, np.ones((2, 4, 4, 1)))
    with self.assertRaisesRegex(ValueError, "nonzero"):
      ntk_tf.nad_alignment(self.model, np.zeros((2, 4, 4, 2)))
    two_logits = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.Flatten(),
                                   keras.layers.Dense(2)])
    with self.assertRaisesRegex(ValueError, r"output shape \(None, 2\)"):
      ntk_tf.nads(two_logits, k=1)


class SeparableDatasetTest(parameterized.TestCase):

  @parameterized.product(eps=[1.0, 3.0], sigma=[1.0, 0.25])
  def test_statistics(self, eps, sigma):
    rng = np.random.default_rng(5)
    u = rng.standard_normal((4, 4, 2)) * 3.0  # not unit: separable_dataset normalizes.
    unit = u.ravel() / np.linalg.norm(u)
    n = 100_000
    x, y = ntk_tf.separable_dataset(u, n, eps=eps, sigma=sigma, seed=1)
    self.assertEqual(x.shape, (n, 4, 4, 2))
    self.assertEqual(x.dtype, np.float32)
    self.assertEqual(y.shape, (n,))
    self.assertEqual(set(np.unique(y)), {-1, 1})
    self.assertLess(abs(y.mean()), 5 / np.sqrt(n))
    flat = x.reshape(n, -1).astype(np.float64)
    # Along u: exactly eps * y (w has no component along u).
    np.testing.assert_allclose(flat @ unit, eps * y, atol=1e-5 * (1 + eps))
    # Orthogonal to u: w = x - eps y u has mean 0 and covariance sigma (I - u u^T).
    w = flat - eps * y[:, None] * unit[None, :]
    self.assertLess(np.abs(w.mean(axis=0)).max(), 5 * np.sqrt(sigma / n))
    cov = w.T @ w / n
    want = sigma * (np.eye(unit.size) - np.outer(unit, unit))
    self.assertLess(np.abs(cov - want).max(), 6 * sigma * np.sqrt(2 / n))
    # E[y x] = eps u: the class means sit at +-eps u.
    np.testing.assert_allclose((y[:, None] * flat).mean(axis=0), eps * unit,
                               atol=6 * np.sqrt(sigma / n) + 1e-6)

  def test_seeded(self):
    u = np.ones((2, 2, 1))
    x1, y1 = ntk_tf.separable_dataset(u, 10, seed=4)
    x2, y2 = ntk_tf.separable_dataset(u, 10, seed=4)
    x3, _ = ntk_tf.separable_dataset(u, 10, seed=5)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    self.assertFalse(np.array_equal(x1, x3))

  def test_bad_input(self):
    with self.assertRaisesRegex(ValueError, r"Received: \|\|u\|\| = 0.0"):
      ntk_tf.separable_dataset(np.zeros((2, 2, 1)), 5)
    with self.assertRaisesRegex(ValueError, "Received: n=0"):
      ntk_tf.separable_dataset(np.ones((2, 2, 1)), 0)
    with self.assertRaisesRegex(ValueError, "Received: sigma=-1"):
      ntk_tf.separable_dataset(np.ones((2, 2, 1)), 5, sigma=-1.0)
    with self.assertRaisesRegex(ValueError, r"Received: u.shape=\(\)"):
      ntk_tf.separable_dataset(1.0, 5)


if __name__ == "__main__":
  absltest.main()
