"""Tests for ntk_tf.eigen: every method against matrices with a known spectrum."""

import types as pytypes

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from scipy.sparse import linalg as sparse_linalg

from tests import test_util  # pylint: disable=unused-import
import ntk_tf
from ntk_tf.eigen import apply_sign_convention


def _psd(n, seed=0, decay=1.0):
  """A PSD matrix with eigenvalues 1/j^decay (NTK-like decay) and a random basis.

  Returns (matrix [N, N], eigvals [N] descending, eigvecs [N, N]): the spectrum is known by
  construction, so no eigensolver is needed for the reference.
  """
  rng = np.random.RandomState(seed)
  basis, _ = np.linalg.qr(rng.randn(n, n))  # [N, N] orthogonal, column j-1 is phi_j
  eigvals = 1.0 / np.arange(1, n + 1)**decay
  return (basis * eigvals) @ basis.T, eigvals, basis


def _signed(vectors):
  """Columns flipped so that each one's largest-|entry| (first on ties) is positive."""
  pivots = np.argmax(np.abs(vectors), axis=0)  # [k]
  return vectors * np.where(vectors[pivots, np.arange(vectors.shape[1])] < 0, -1.0, 1.0)


class _HouseholderGram:
  """Theta = H diag(lam) H with H = I - 2 u u^T: a matrix-free Gram with closed-form eigenpairs.

  H is symmetric and orthogonal, so phi_j = H e_j = e_j - 2 u u_j and lambda_j = lam_j.
  Records the width of every product, to tell which method `eigen` ran.
  """

  def __init__(self, n, seed=0, ratio=0.97):
    u = np.random.default_rng(seed).standard_normal(n)
    self.u = u / np.linalg.norm(u)  # [N]
    self.eigvals = ratio**np.arange(n)  # [N] distinct, descending
    self.shape = (n, n)
    self.widths = []

  def _reflect(self, v):  # H V, [N, m]
    return v - 2.0 * np.outer(self.u, self.u @ v)

  def matmat(self, v):
    self.widths.append(v.shape[1])
    return self._reflect(self.eigvals[:, None] * self._reflect(v))  # [N, m]

  def matvec(self, v):
    return self.matmat(np.reshape(v, (-1, 1)))[:, 0]

  def eigvecs(self, k):
    return np.eye(self.shape[0], k) - 2.0 * np.outer(self.u, self.u[:k])  # [N, k]


class EigenTest(parameterized.TestCase):

  @parameterized.parameters(("dense", 1e-10, 1e-8), ("lanczos", 1e-8, 1e-6),
                            ("randomized", 1e-8, 1e-6), ("auto", 1e-10, 1e-8))
  def test_matches_known_spectrum(self, method, rtol, atol):
    # N = 300 <= 4096: "auto" runs dense here.
    matrix, ref_vals, ref_vecs = _psd(300, seed=1)
    k = 10
    eigvals, eigvecs = ntk_tf.eigen(matrix, k, method=method, seed=3)
    self.assertEqual(eigvals.shape, (k,))
    self.assertEqual(eigvecs.shape, (300, k))
    self.assertEqual(eigvecs.dtype, np.float64)
    np.testing.assert_allclose(eigvals, ref_vals[:k], rtol=rtol)
    # The sign convention is deterministic, so every method gives the same columns.
    np.testing.assert_allclose(eigvecs, _signed(ref_vecs[:, :k]), atol=atol)
    np.testing.assert_allclose(eigvecs.T @ eigvecs, np.eye(k), atol=atol)

  def test_all_eigenpairs(self):
    matrix, ref_vals, ref_vecs = _psd(40)
    eigvals, eigvecs = ntk_tf.eigen(matrix)
    np.testing.assert_allclose(eigvals, ref_vals, rtol=1e-10)
    np.testing.assert_allclose(eigvecs, _signed(ref_vecs), atol=1e-8)

  @parameterized.parameters((5, "lanczos", {1}, 1e-8), (100, "randomized", {150}, 1e-6))
  def test_auto_above_dense_size_is_matrix_free(self, k, expected_method, widths, atol):
    # N = 5000 > 4096: "auto" picks lanczos for k <= 64, randomized (k + 50 columns) above;
    # dense would multiply by an [N, N] identity (width 5000).
    gram = _HouseholderGram(5000, seed=k)
    eigvals, eigvecs = ntk_tf.eigen(gram, k)
    self.assertEqual(set(gram.widths), widths, msg=f"auto did not run {expected_method}")
    np.testing.assert_allclose(eigvals, gram.eigvals[:k], rtol=1e-8)
    np.testing.assert_allclose(eigvecs, _signed(gram.eigvecs(k)), atol=atol)

  def test_sign_convention(self):
    matrix, _, ref_vecs = _psd(30, seed=2)
    _, eigvecs = ntk_tf.eigen(matrix)
    for flipped_input in (ref_vecs, -ref_vecs):  # The same columns whatever the solver's signs.
      np.testing.assert_allclose(apply_sign_convention(flipped_input), eigvecs, atol=1e-10)
    pivots = np.argmax(np.abs(eigvecs), axis=0)
    self.assertTrue(np.all(eigvecs[pivots, np.arange(30)] > 0))
    # Ties go to the first index.
    tied = apply_sign_convention(np.array([[-0.5], [0.5], [0.1]]))
    np.testing.assert_array_equal(tied[:, 0], [0.5, -0.5, -0.1])

  def test_linear_operator_and_memmap(self):
    matrix, _, _ = _psd(200, seed=4)
    path = self.create_tempfile("m.npy").full_path
    np.save(path, matrix.astype(np.float32))
    mapped = np.load(path, mmap_mode="r")
    operator = sparse_linalg.aslinearoperator(matrix)
    ref_vals = np.linalg.eigvalsh(matrix)[::-1][:5]
    for source in (mapped, operator):
      eigvals, _ = ntk_tf.eigen(source, 5, method="randomized")
      np.testing.assert_allclose(eigvals, ref_vals, rtol=1e-5)

  def test_matvec_only_object(self):
    matrix, _, _ = _psd(50, seed=5)
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
