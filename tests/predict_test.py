"""ntk_tf.predict against independent computations: gradient flow of linear models, GD loops."""

import numpy as np
import scipy.integrate
import scipy.linalg
from absl.testing import absltest
from absl.testing import parameterized

from tests import test_util  # pylint: disable=unused-import (quiet TensorFlow)
from ntk_tf import predict


def _linear_problem(n=12, m=5, d=7, outputs=None, seed=0):
  """A linear model f(x) = w^T x + f0(x): its NTK is X X^T, exactly."""
  rng = np.random.default_rng(seed)
  x, x_test = rng.standard_normal((n, d)), rng.standard_normal((m, d))
  shape = (n,) if outputs is None else (n, outputs)
  y = np.sign(rng.standard_normal(shape))
  f0 = 0.1 * rng.standard_normal(shape)
  f0_test = 0.1 * rng.standard_normal((m,) + shape[1:])
  return x, x_test, y, f0, f0_test


def _flow(x, x_test, y, f0, f0_test, eta, t, project=None):
  """Integrates dw/dt = -(eta / n) X^T (X w + f0 - y) (w of shape [d] or [d, K]) numerically.

  `project` [K, K] makes the model f = X w B^T (B = project), i.e. a full K x K output kernel.
  """
  n = y.size
  w0 = np.zeros((x.shape[1],) + y.shape[1:])

  def f(w):
    return x @ w if project is None else x @ w @ project.T

  def rhs(_, flat):
    w = flat.reshape(w0.shape)
    residual = f(w) + f0 - y
    grad = x.T @ residual if project is None else x.T @ residual @ project
    return (-(eta / n) * grad).ravel()

  sol = scipy.integrate.solve_ivp(rhs, (0.0, t), w0.ravel(), rtol=1e-12, atol=1e-14,
                                  method="DOP853")
  w = sol.y[:, -1].reshape(w0.shape)
  test = x_test @ w if project is None else x_test @ w @ project.T
  return f(w) + f0, test + f0_test


class GradientDescentMseTest(parameterized.TestCase):

  @parameterized.parameters((None,), (3,))
  def test_matches_gradient_flow(self, outputs):
    x, x_test, y, f0, f0_test = _linear_problem(outputs=outputs)
    predict_fn = predict.gradient_descent_mse(x @ x.T, y, learning_rate=0.5)
    train, test = predict_fn(7.0, f0, f0_test, x_test @ x.T)
    want_train, want_test = _flow(x, x_test, y, f0, f0_test, eta=0.5, t=7.0)
    np.testing.assert_allclose(train, want_train, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(test, want_test, rtol=1e-8, atol=1e-9)

  def test_full_output_kernel_matches_gradient_flow(self):
    # f = X W B^T: Theta[i, j, a, b] = (x_i^T x_j) (B B^T)[a, b].
    x, x_test, y, f0, f0_test = _linear_problem(outputs=3, seed=1)
    b = np.random.default_rng(2).standard_normal((3, 3))
    theta = np.einsum("ij,ab->ijab", x @ x.T, b @ b.T)
    theta_test = np.einsum("ij,ab->ijab", x_test @ x.T, b @ b.T)
    train, test = predict.gradient_descent_mse(theta, y, learning_rate=0.3)(
        4.0, f0, f0_test, theta_test)
    want_train, want_test = _flow(x, x_test, y, f0, f0_test, eta=0.3, t=4.0, project=b)
    np.testing.assert_allclose(train, want_train, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(test, want_test, rtol=1e-8, atol=1e-9)

  def test_matches_neural_tangents_formula_with_eigh(self):
    # nt.predict.gradient_descent_mse's finite-t formula, evaluated with NumPy eigh.
    x, x_test, y, f0, f0_test = _linear_problem(outputs=2, seed=3)
    k, k_test = x @ x.T, x_test @ x.T
    reg = 0.1 * np.trace(k) / k.shape[0]
    lam, v = np.linalg.eigh(k + reg * np.eye(k.shape[0]))
    times = np.array([0.5, 3.0])
    expm1 = np.expm1(-np.maximum(lam, 0)[None] * times[:, None] / y.size)  # [T, N]
    want_train = f0 + np.einsum("ij,tj,kj,kc->tic", v, expm1, v, f0 - y)
    want_test = f0_test + np.einsum("mi,ij,tj,kj,kc->tmc", k_test, v, expm1 / np.abs(lam), v,
                                    f0 - y)
    train, test = predict.gradient_descent_mse(k, y, diag_reg=0.1)(times, f0, f0_test, k_test)
    self.assertEqual(train.shape, (2,) + y.shape)
    np.testing.assert_allclose(train, want_train, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(test, want_test, rtol=1e-10, atol=1e-12)

  def test_infinite_time_is_the_limit(self):
    x, x_test, y, f0, f0_test = _linear_problem(n=6, d=9)  # N < d: Theta is invertible.
    predict_fn = predict.gradient_descent_mse(x @ x.T, y)
    train_inf, test_inf = predict_fn(None, f0, f0_test, x_test @ x.T)
    train_far, test_far = predict_fn(1e7, f0, f0_test, x_test @ x.T)
    np.testing.assert_allclose(train_inf, y)
    np.testing.assert_allclose(train_far, y, atol=1e-8)
    np.testing.assert_allclose(test_far, test_inf, atol=1e-8)
    # The minimum-norm interpolant of the residual, by least squares.
    w = np.linalg.lstsq(x, y - f0, rcond=None)[0]
    np.testing.assert_allclose(test_inf, f0_test + x_test @ w, atol=1e-10)

  def test_relative_and_absolute_regularization_agree(self):
    x, x_test, y, f0, f0_test = _linear_problem(seed=4)
    k = x @ x.T
    absolute = 0.2 * np.trace(k) / k.shape[0]
    rel = predict.gradient_descent_mse(k, y, diag_reg=0.2)(None, f0, f0_test, x_test @ x.T)
    abs_ = predict.gradient_descent_mse(k, y, diag_reg=absolute, diag_reg_absolute_scale=True)(
        None, f0, f0_test, x_test @ x.T)
    np.testing.assert_allclose(rel[1], abs_[1], rtol=1e-12)
    # Ridge regression in closed form.
    want = f0_test + x_test @ x.T @ np.linalg.solve(k + absolute * np.eye(len(k)), y - f0)
    np.testing.assert_allclose(rel[1], want, rtol=1e-10)

  def test_train_or_test_only(self):
    x, x_test, y, f0, f0_test = _linear_problem()
    predict_fn = predict.gradient_descent_mse(x @ x.T, y)
    both = predict_fn(2.0, f0, f0_test, x_test @ x.T)
    np.testing.assert_allclose(predict_fn(2.0, f0), both[0])
    # fx_train_0=None: no train predictions, and the train outputs start at 0 (as in nt).
    np.testing.assert_allclose(predict_fn(2.0, None, f0_test, x_test @ x.T),
                               predict_fn(2.0, 0.0, f0_test, x_test @ x.T)[1])

  def test_float64_from_a_float32_gram(self):
    x, _, y, f0, _ = _linear_problem()
    out = predict.gradient_descent_mse((x @ x.T).astype(np.float32), y, dtype="float64")(1.0, f0)
    self.assertEqual(out.dtype, np.float64)
    out32 = predict.gradient_descent_mse((x @ x.T).astype(np.float32), y)(1.0, f0)
    self.assertEqual(out32.dtype, np.float32)

  @parameterized.named_parameters(
      ("y_shape", dict(y=np.zeros(5)), "y_train"),
      ("asymmetric", dict(k=np.triu(np.ones((12, 12)))), "symmetric"),
      ("non_finite", dict(k=np.full((12, 12), np.nan)), "finite"),
      ("full_without_outputs", dict(k=np.zeros((12, 12, 2, 2))), "full Gram"),
      ("negative_reg", dict(diag_reg=-1.0), "diag_reg"),
      ("learning_rate", dict(learning_rate=0.0), "learning_rate"))
  def test_bad_gram_or_labels(self, overrides, message):
    x, _, y, _, _ = _linear_problem()
    args = dict(k=x @ x.T, y=y, diag_reg=0.0, learning_rate=1.0)
    args.update(overrides)
    with self.assertRaisesRegex(ValueError, message):
      predict.gradient_descent_mse(args["k"], args["y"], learning_rate=args["learning_rate"],
                                   diag_reg=args["diag_reg"])

  def test_bad_call(self):
    x, x_test, y, f0, f0_test = _linear_problem()
    predict_fn = predict.gradient_descent_mse(x @ x.T, y)
    with self.assertRaisesRegex(ValueError, r"t must be >= 0.*t=-1"):
      predict_fn(-1.0, f0)
    with self.assertRaisesRegex(ValueError, "k_test_train is None"):
      predict_fn(1.0, f0, f0_test)
    with self.assertRaisesRegex(ValueError, r"k_test_train must be \[M, N\]"):
      predict_fn(1.0, f0, f0_test, x_test @ x_test.T)


class BlockedCholeskyTest(parameterized.TestCase):
  """`cholesky_upper` above its direct size: the blocked form, on small blocks."""

  def setUp(self):
    super().setUp()
    for name, value in (("DIRECT_CHOLESKY_BYTES", 0), ("_CHOLESKY_BLOCK", 3)):
      patcher = absltest.mock.patch.object(predict, name, value)
      patcher.start()
      self.addCleanup(patcher.stop)

  @parameterized.parameters(1, 3, 10, 11)
  def test_matches_numpy_cholesky(self, n):
    rng = np.random.default_rng(n)
    b = rng.normal(size=(n, n + 2))
    a = b @ b.T + 0.1 * np.eye(n)
    kept = a.copy()
    u = predict.cholesky_upper(a)
    np.testing.assert_array_equal(a, kept)  # A is not modified.
    np.testing.assert_array_equal(np.tril(u, -1), 0.0)
    np.testing.assert_allclose(u, np.linalg.cholesky(a).T, rtol=1e-10, atol=1e-12)

  def test_not_positive_definite_is_refused_for_t_none(self):
    a = np.diag([1.0, 2.0, 3.0, 4.0, -1.0])
    with self.assertRaises(np.linalg.LinAlgError):
      predict.cholesky_upper(a)
    predict_fn = predict.gradient_descent_mse(a, np.ones(5))
    with self.assertRaisesRegex(ValueError, "not positive definite"):
      predict_fn(None, 0.0, np.zeros(1), np.ones((1, 5)))

  def test_infinite_time_prediction_matches_a_dense_solve(self):
    x, x_test, y, f0, f0_test = _linear_problem(n=10, outputs=2)
    k, k_test = x @ x.T, x_test @ x.T
    fx_test = predict.gradient_descent_mse(k, y, diag_reg=1e-3)(None, f0, f0_test, k_test)[1]
    ridge = 1e-3 * np.trace(k) / len(k)
    expected = f0_test + k_test @ np.linalg.solve(k + ridge * np.eye(len(k)), y - f0)
    np.testing.assert_allclose(fx_test, expected, rtol=1e-9, atol=1e-12)


class GramStoreTest(absltest.TestCase):

  def test_a_store_stands_for_its_matrix(self):
    import ntk_tf  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(7)
    x = rng.standard_normal((20, 4, 4, 1)).astype(np.float32)
    y = np.sign(rng.standard_normal(20))
    model = ntk_tf.models.get("mlp", input_shape=(4, 4, 1), width=8, seed=0)
    store = ntk_tf.GramStore(self.create_tempdir().full_path, model, x, block_size=8)
    with self.assertRaisesRegex(ValueError, "not complete"):
      predict.gradient_descent_mse(store, y)
    store.compute()
    from_store = predict.gradient_descent_mse(store, y, diag_reg=1e-3)(None, 0.0, 0.0, store.matrix)
    from_array = predict.gradient_descent_mse(np.array(store.matrix), y, diag_reg=1e-3)(
        None, 0.0, 0.0, np.array(store.matrix))
    np.testing.assert_array_equal(from_store[1], from_array[1])
    # The regularized fit on the train set itself: ridge regression.
    k = np.array(store.matrix, dtype=np.float64)
    want = k @ np.linalg.solve(k + 1e-3 * np.trace(k) / 20 * np.eye(20), y)
    np.testing.assert_allclose(from_array[1], want, rtol=2e-3, atol=2e-3)


class DiscreteGradientDescentTest(absltest.TestCase):

  def test_matches_the_gradient_descent_loop(self):
    x, x_test, y, f0, f0_test = _linear_problem(outputs=2, seed=5)
    eta, n = 0.4, y.size
    w = np.zeros((x.shape[1], 2))
    train, test = [], []
    for _ in range(30):
      train.append(x @ w + f0)
      test.append(x_test @ w + f0_test)
      w = w - (eta / n) * x.T @ (x @ w + f0 - y)
    steps = np.array([0, 1, 7, 29])
    got_train, got_test = predict.gradient_descent_mse_discrete(x @ x.T, y, learning_rate=eta)(
        steps, f0, f0_test, x_test @ x.T)
    np.testing.assert_allclose(got_train, np.stack(train)[steps], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got_test, np.stack(test)[steps], rtol=1e-10, atol=1e-12)

  def test_small_steps_approach_the_flow(self):
    x, _, y, f0, _ = _linear_problem(seed=6)
    flow = predict.gradient_descent_mse(x @ x.T, y, learning_rate=1e-3)(20000, f0)
    steps = predict.gradient_descent_mse_discrete(x @ x.T, y, learning_rate=1e-3)(20000, f0)
    np.testing.assert_allclose(steps, flow, rtol=1e-3, atol=1e-4)

  def test_refuses_fractional_steps_and_divergent_limits(self):
    x, _, y, f0, _ = _linear_problem()
    predict_fn = predict.gradient_descent_mse_discrete(x @ x.T, y, learning_rate=1e3)
    with self.assertRaisesRegex(ValueError, "whole numbers"):
      predict_fn(1.5, f0)
    with self.assertRaisesRegex(ValueError, "diverges"):
      predict_fn(None, f0)


if __name__ == "__main__":
  absltest.main()
