"""Tests for ntk_tf.eigen: dense and top-k eigenpairs against numpy.linalg.eigh."""

import types as pytypes

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from scipy.sparse import linalg as sparse_linalg

from tests import test_util  # pylint: disable=unused-import
import ntk_tf
from ntk_tf.eigen import apply_sign_convention


def _psd(n, seed=0, decay=1.0):
  """A PSD matrix with eigenvalues 1/j^decay (NTK-like decay) and a random basis."""
  rng = np.random.RandomState(seed)
  basis, _ = np.linalg.qr(rng.randn(n, n))
  eigvals = 1.0 / np.arange(1, n + 1)**decay
  return (basis * eigvals) @ basis.T, eigvals


def _align_signs(actual, expected):
  """Flips columns of `actual` to best match `expected` (for sign-agnostic comparison)."""
  return actual * np.sign(np.sum(actual * expected, axis=0))


class EigenTest(parameterized.TestCase):

  def test_dense_matches_numpy(self):
    matrix, _ = _psd(40)
    eigvals, eigvecs = ntk_tf.eigen(matrix)
    ref_vals, ref_vecs = np.linalg.eigh(matrix)
    np.testing.assert_allclose(eigvals, ref_vals[::-1], rtol=1e-10)
    np.testing.assert_allclose(_align_signs(eigvecs, ref_vecs[:, ::-1]), ref_vecs[:, ::-1],
                               atol=1e-8)
    self.assertEqual(eigvecs.dtype, np.float64)
    np.testing.assert_allclose(eigvecs.T @ eigvecs, np.eye(40), atol=1e-10)

  @parameterized.parameters("lanczos", "randomized")
  def test_top_k_matches_dense(self, method):
    matrix, _ = _psd(300, seed=1)
    k = 10
    eigvals, eigvecs = ntk_tf.eigen(matrix, k, method=method, seed=3)
    ref_vals, ref_vecs = np.linalg.eigh(matrix)
    ref_vals, ref_vecs = ref_vals[::-1][:k], ref_vecs[:, ::-1][:, :k]
    self.assertEqual(eigvecs.shape, (300, k))
    np.testing.assert_allclose(eigvals, ref_vals, rtol=1e-8)
    np.testing.assert_allclose(_align_signs(eigvecs, ref_vecs), ref_vecs, atol=1e-6)
    # The sign convention is deterministic, so methods agree column by column.
    np.testing.assert_allclose(eigvecs, apply_sign_convention(ref_vecs), atol=1e-6)

  def test_sign_convention(self):
    matrix, _ = _psd(30, seed=2)
    _, eigvecs = ntk_tf.eigen(matrix)
    _, flipped = ntk_tf.eigen(matrix, method="dense")
    np.testing.assert_array_equal(eigvecs, flipped)
    pivots = np.argmax(np.abs(eigvecs), axis=0)
    self.assertTrue(np.all(eigvecs[pivots, np.arange(30)] > 0))
    # Ties go to the first index.
    tied = apply_sign_convention(np.array([[-0.5], [0.5], [0.1]]))
    np.testing.assert_array_equal(tied[:, 0], [0.5, -0.5, -0.1])

  def test_linear_operator_and_memmap(self):
    matrix, _ = _psd(200, seed=4)
    path = self.create_tempfile("m.npy").full_path
    np.save(path, matrix.astype(np.float32))
    mapped = np.load(path, mmap_mode="r")
    operator = sparse_linalg.aslinearoperator(matrix)
    ref_vals = np.linalg.eigvalsh(matrix)[::-1][:5]
    for source in (mapped, operator):
      eigvals, _ = ntk_tf.eigen(source, 5, method="randomized")
      np.testing.assert_allclose(eigvals, ref_vals, rtol=1e-5)

  def test_matvec_only_object(self):
    matrix, _ = _psd(50, seed=5)
    operator = pytypes.SimpleNamespace(shape=matrix.shape, matvec=lambda v: matrix @ v)
    eigvals, _ = ntk_tf.eigen(operator, 3, method="lanczos")
    np.testing.assert_allclose(eigvals, np.linalg.eigvalsh(matrix)[::-1][:3], rtol=1e-8)


class BadInputTest(absltest.TestCase):

  def test_k_too_large(self):
    with self.assertRaisesRegex(ValueError, "k=11"):
      ntk_tf.eigen(np.eye(10), 11)

  def test_k_zero(self):
    with self.assertRaisesRegex(ValueError, "k=0"):
      ntk_tf.eigen(np.eye(10), 0)

  def test_dense_refused_for_large_n(self):
    big = pytypes.SimpleNamespace(shape=(32_767, 32_767), matvec=lambda v: v)
    with self.assertRaisesRegex(ValueError, "top-k.*Received: N=32767"):
      ntk_tf.eigen(big, 10, method="dense")
    with self.assertRaisesRegex(ValueError, "top-k.*Received: N=32767"):
      ntk_tf.eigen(big)

  def test_not_square(self):
    with self.assertRaisesRegex(ValueError, r"shape=\(3, 4\)"):
      ntk_tf.eigen(np.zeros((3, 4)))

  def test_unknown_method(self):
    with self.assertRaisesRegex(ValueError, "method='qr'"):
      ntk_tf.eigen(np.eye(3), method="qr")


class TasksTest(absltest.TestCase):

  def test_labels_and_overlap(self):
    phi = np.array([[0.5], [-0.5], [0.5], [-0.5]])
    labels, overlap = ntk_tf.eigenfunction_labels(np.concatenate([phi, -phi], 1), 1)
    np.testing.assert_array_equal(labels, [1, 0, 1, 0])
    self.assertEqual(labels.dtype, np.float32)
    self.assertAlmostEqual(overlap, 1.0)  # phi is already a scaled sign vector.

  def test_overlap_of_gaussian_vector(self):
    # For a random unit vector, E<sign(phi)/sqrt(N), phi> = sqrt(2/pi) ~ 0.798.
    phi = np.random.RandomState(0).randn(20_000, 2)
    phi /= np.linalg.norm(phi, axis=0)
    labels, overlap = ntk_tf.eigenfunction_labels(phi, 2)
    np.testing.assert_array_equal(labels, (phi[:, 1] > 0).astype(np.float32))
    self.assertAlmostEqual(overlap, np.sqrt(2 / np.pi), delta=0.01)

  def test_j_out_of_range(self):
    for j in (0, 3):
      with self.assertRaisesRegex(ValueError, f"j={j}"):
        ntk_tf.eigenfunction_labels(np.eye(4)[:, :2], j)


if __name__ == "__main__":
  absltest.main()
