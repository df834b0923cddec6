"""Tests for ntk_tf.alignment (Lemma 1) and energy_concentration (Sec. 4.2)."""

import importlib
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tests import test_util  # pylint: disable=unused-import
from tests import ntk_reference
import ntk_tf
from ntk_tf import validation

# The module (the package attribute `ntk_tf.alignment` is the function).
alignment_lib = importlib.import_module("ntk_tf.alignment")

_SHAPE = (8, 8, 3)


class AlignmentTest(parameterized.TestCase):

  @parameterized.product(name=("mlp", "lenet"), route=("vjp", "jacobian"))
  def test_matches_brute_force_gram(self, name, route):
    kwargs = dict(input_shape=_SHAPE, activation="gelu", seed=2)
    model = ntk_tf.models.get(name, **kwargs)
    twin = ntk_reference.float64_twin(name, model, **kwargs)
    n = 11
    x = np.random.RandomState(0).randn(n, *_SHAPE).astype(np.float32)
    jac = ntk_reference.loop_jacobian(twin, x)  # [N, P]
    theta = jac @ jac.T  # [N, N] brute-force Gram
    labels = np.random.RandomState(1).randn(n, 3)  # [N, m]
    with self.subTest("y [N, m]"):
      alphas = ntk_tf.alignment(model, x, labels, batch_size=4, dtype="float64", route=route)
      expected = np.einsum("im,ij,jm->m", labels, theta, labels) / n**2  # y^T Theta y / N^2
      self.assertEqual(alphas.shape, (3,))
      np.testing.assert_allclose(alphas, expected, rtol=1e-10)
    with self.subTest("y [N]"):
      alpha = ntk_tf.alignment(model, x, labels[:, 0], batch_size=4, dtype="float64",
                               route=route)
      self.assertIsInstance(alpha, np.ndarray)
      self.assertEqual(alpha.shape, ())
      self.assertEqual(alpha.dtype, np.float64)
      self.assertAlmostEqual(float(alpha) / expected[0], 1.0, delta=1e-10)
    with self.subTest("eigenvectors: alpha(phi_j) = lambda_j / N^2"):
      eigvals, eigvecs = np.linalg.eigh(theta)  # unit eigenvectors (NumPy)
      alphas = ntk_tf.alignment(model, x, eigvecs[:, -3:], dtype="float64", route=route)
      np.testing.assert_allclose(alphas, eigvals[-3:] / n**2, rtol=1e-8)
    with self.subTest("float32"):
      alphas = ntk_tf.alignment(model, x, labels, route=route)
      np.testing.assert_allclose(alphas, expected, rtol=1e-4)

  @parameterized.parameters("mlp", "lenet")
  def test_chunked_columns_match_reference_gram_and_each_other(self, name):
    kwargs = dict(input_shape=_SHAPE, activation="gelu", seed=4)
    model = ntk_tf.models.get(name, **kwargs)
    twin = ntk_reference.float64_twin(name, model, **kwargs)
    n, m = 9, 5
    x = np.random.RandomState(2).randn(n, *_SHAPE).astype(np.float32)
    theta = ntk_reference.brute_force_gram(twin, x)  # [N, N], independent float64 Gram
    eigvals, eigvecs = np.linalg.eigh(theta)
    phi = np.concatenate([eigvecs[:, -2:], np.sign(np.random.RandomState(3).randn(n, m - 2))],
                         axis=1)  # [N, m]: two eigenvectors, three +-1 label vectors
    expected = np.einsum("im,ij,jm->m", phi, theta, phi) / n**2  # phi^T Theta phi / N^2
    num_params = validation.parameter_count(model)
    for dtype, rtol in (("float64", 1e-10), ("float32", 1e-4)):
      column_bytes = 4 * num_params * np.dtype(dtype).itemsize  # one column's 4 [1, P] arrays
      results = {}
      for columns in (1, 2, m):  # chunks of 1, 2 (2 + 2 + 1) and all m columns
        with mock.patch.object(alignment_lib, "_chunk_alignment",
                               wraps=alignment_lib._chunk_alignment) as spy:
          results[columns] = ntk_tf.alignment(model, x, phi, batch_size=4, dtype=dtype,
                                              memory_budget_bytes=columns * column_bytes + 7)
        widths = [call.args[2].shape[1] for call in spy.call_args_list]  # one pass per chunk
        self.assertEqual(widths, [columns] * (m // columns) + [m % columns] * (m % columns > 0))
        np.testing.assert_allclose(results[columns], expected, rtol=rtol, err_msg=dtype)
      with self.subTest(dtype=dtype):  # the same arithmetic per column: bit-identical
        np.testing.assert_array_equal(results[1], results[m])
        np.testing.assert_array_equal(results[2], results[m])
    np.testing.assert_allclose(expected[:2], eigvals[-2:] / n**2, rtol=1e-12)  # alpha(phi_j) = lambda_j / N^2

  @parameterized.parameters("vjp", "jacobian")
  def test_slabs_give_the_bits_of_one_pass_and_report_progress(self, route):
    model = ntk_tf.models.get("lenet", input_shape=_SHAPE, seed=1)
    n = 21  # 6 batches of 4 (the last padded), slabs of 1 batch: 6 calls
    x = np.random.RandomState(7).randn(n, *_SHAPE).astype(np.float32)
    labels = np.random.RandomState(8).randn(n, 3)  # [N, 3]
    with mock.patch.object(alignment_lib, "_SLAB_ROWS", 10 ** 9):
      whole = ntk_tf.alignment(model, x, labels, batch_size=4, route=route)
    with mock.patch.object(alignment_lib, "_SLAB_ROWS", 4), \
         mock.patch.object(alignment_lib, "_LOG_EVERY_S", 0.0), \
         mock.patch.object(alignment_lib.logging, "info") as info:
      slabs = ntk_tf.alignment(model, x, labels, batch_size=4, route=route)
    np.testing.assert_array_equal(slabs, whole)
    lines = [call.args[0] % call.args[1:] for call in info.call_args_list]
    self.assertLen(lines, 5)  # after each slab but the last
    self.assertTrue(lines[0].startswith("alignment: 4 of 21 samples"), lines[0])

  def test_auto_route_takes_the_jacobian_for_many_columns_that_fit(self):
    model = ntk_tf.models.get("mlp", input_shape=_SHAPE, seed=0)
    n, m = 6, alignment_lib.JACOBIAN_MIN_LABELS
    x = np.random.RandomState(5).randn(n, *_SHAPE).astype(np.float32)
    labels = np.random.RandomState(6).randn(n, m)  # [N, m]
    num_params = validation.parameter_count(model)
    for columns, budget, route in (
        (m, None, "jacobian"),  # m columns in one chunk, J_b well within 2 GiB
        (m - 1, None, "vjp"),  # fewer columns than JACOBIAN_MIN_LABELS
        (m, 4 * num_params * 4 * m, "vjp")):  # the chunk fits, J_b [2 m * 4, P] does not
      kwargs = {} if budget is None else {"memory_budget_bytes": budget,
                                          "batch_size": 2 * 4 * m}
      with mock.patch.object(alignment_lib, "label_gradients_fn",
                             wraps=alignment_lib.label_gradients_fn) as spy:
        got = ntk_tf.alignment(model, x, labels[:, :columns], **kwargs)
      self.assertEqual(spy.call_args.args[2], route, f"columns={columns}, budget={budget}")
      expected = ntk_tf.alignment(model, x, labels[:, :columns], route="vjp", **kwargs)
      np.testing.assert_allclose(got, expected, rtol=1e-4)
    with self.assertRaisesRegex(ValueError, r"route must be one of.*route='pfor'"):
      ntk_tf.alignment(model, x, labels, route="pfor")

  def test_label_chunks_fit_the_budget(self):
    for num_labels, num_params, dtype, budget in ((1000, 11_000_000, "float32", 2 * 1024**3),
                                                  (7, 10, "float64", 4 * 10 * 8 * 3 + 5),
                                                  (3, 10, "float32", 10**9)):
      chunks = alignment_lib.label_chunks(num_labels, num_params, dtype, budget)
      self.assertEqual([i for c in chunks for i in range(num_labels)[c]], list(range(num_labels)))
      widest = max(c.stop - c.start for c in chunks)
      self.assertLessEqual(4 * widest * num_params * np.dtype(dtype).itemsize, budget)
      self.assertTrue(widest == num_labels or
                      4 * (widest + 1) * num_params * np.dtype(dtype).itemsize > budget)
    self.assertLen(alignment_lib.label_chunks(1000, 11_000_000, "float32"), 84)
    with self.assertRaisesRegex(ValueError, "memory_budget_bytes=100"):
      alignment_lib.label_chunks(3, 10, "float32", 100)
    model = ntk_tf.models.get("mlp", input_shape=_SHAPE)
    with self.assertRaisesRegex(ValueError, "memory_budget_bytes=0"):
      ntk_tf.alignment(model, np.zeros((4, *_SHAPE), np.float32), np.ones(4), memory_budget_bytes=0)

  def test_bad_labels(self):
    model = ntk_tf.models.get("mlp", input_shape=_SHAPE)
    x = np.zeros((4, *_SHAPE), np.float32)
    with self.assertRaisesRegex(ValueError, r"y.shape=\(5,\)"):
      ntk_tf.alignment(model, x, np.ones(5))
    with self.assertRaisesRegex(ValueError, "batch_size=0"):
      ntk_tf.alignment(model, x, np.ones(4), batch_size=0)


class EnergyConcentrationTest(absltest.TestCase):

  def test_closed_form(self):
    basis, _ = np.linalg.qr(np.random.RandomState(0).randn(6, 6))
    # y = 3 phi_1 + 4 phi_3: E_1 = 9/25, E_2 = 9/25, E_3 = 1.
    y = 3 * basis[:, 0] + 4 * basis[:, 2]
    for k, want in ((1, 9 / 25), (2, 9 / 25), (3, 1.0)):
      energy = ntk_tf.energy_concentration(basis, y, k)
      self.assertIsInstance(energy, np.ndarray)
      self.assertEqual(energy.shape, ())
      self.assertAlmostEqual(float(energy), want)
    both = ntk_tf.energy_concentration(basis, np.stack([y, basis[:, 1]], 1), 2)
    self.assertEqual(both.shape, (2,))
    np.testing.assert_allclose(both, [9 / 25, 1.0])

  def test_k_out_of_range(self):
    with self.assertRaisesRegex(ValueError, "k=7"):
      ntk_tf.energy_concentration(np.eye(6), np.ones(6), 7)
    with self.assertRaisesRegex(ValueError, "k=0"):
      ntk_tf.energy_concentration(np.eye(6), np.ones(6), 0)
    with self.assertRaisesRegex(ValueError, "k=None"):
      ntk_tf.energy_concentration(np.eye(6), np.ones(6), None)


if __name__ == "__main__":
  absltest.main()
