"""Tests for ntk_tf.eigen: every method against matrices with a known spectrum."""

import os
import subprocess
import sys
import textwrap
import types as pytypes

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from scipy.sparse import linalg as sparse_linalg

from tests import test_util  # pylint: disable=unused-import
import ntk_tf
from ntk_tf.eigen import apply_sign_convention

eigen_module = sys.modules["ntk_tf.eigen"]  # ntk_tf.eigen the attribute is the function.


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
                            ("randomized", 1e-8, 1e-6), ("block_lanczos", 1e-10, 1e-8),
                            ("auto", 1e-10, 1e-8))
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

  @parameterized.parameters((5, "lanczos", {1}, 1e-8), (100, "block_lanczos", {32}, 1e-6))
  def test_auto_above_dense_size_is_matrix_free(self, k, expected_method, widths, atol):
    # N = 5000 > 4096: "auto" picks lanczos for k <= 64, block_lanczos (blocks of 32) above;
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

  def test_products_read_upper_tiles(self):
    # Tiles of 64 x 64 over N = 203 (short last tiles): K V from the upper
    # triangle only, against a float64 GEMM of the whole matrix.
    rng = np.random.default_rng(6)
    half = rng.standard_normal((203, 203))
    matrix = (half + half.T).astype(np.float32)  # exactly symmetric
    path = self.create_tempfile("s.npy").full_path
    np.save(path, matrix)
    v = rng.standard_normal((203, 5))
    expected = matrix.astype(np.float64) @ v
    with absltest.mock.patch.object(eigen_module, "_TILE", 64):
      for source in (matrix, matrix.astype(np.float64), np.load(path, mmap_mode="r")):
        got = eigen_module._Operator(source).matmat(v)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * np.abs(expected).max())
      # Left of the diagonal tiles nothing is read: garbage there changes nothing.
      corrupted = matrix.copy()
      rows, cols = np.indices(corrupted.shape)
      corrupted[cols < rows // 64 * 64] = np.nan
      np.testing.assert_allclose(eigen_module._upper_tiles_product(corrupted, v), expected,
                                 rtol=0, atol=1e-12 * np.abs(expected).max())

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


class CheckedInputTest(parameterized.TestCase):

  @parameterized.parameters("dense", "block_lanczos", "randomized", "lanczos")
  def test_non_finite_named_by_count(self, method):
    matrix, _, _ = _psd(40)
    matrix[3, 5] = np.nan
    matrix[7, 7] = np.inf
    with self.assertRaisesRegex(ValueError, "2 of its 1600 entries.*non_finite=2"):
      ntk_tf.eigen(matrix, 5, method=method)

  def test_non_finite_memmap_across_tiles(self):
    self.enter_context(absltest.mock.patch.object(eigen_module, "_CHECK_TILE", 16))
    matrix, _, _ = _psd(50)
    matrix[45, 2] = np.nan  # A lower tile, read as the transpose of an upper one.
    path = self.create_tempfile("m.npy").full_path
    np.save(path, matrix.astype(np.float32))
    with self.assertRaisesRegex(ValueError, "non_finite=1"):
      ntk_tf.eigen(np.load(path, mmap_mode="r"), 3)

  def test_asymmetric_refused_with_value(self):
    matrix, _, _ = _psd(30)
    matrix[0, 1] += 1e-3 * np.max(np.abs(matrix))
    with self.assertRaisesRegex(ValueError, r"asymmetry=0\.001\b"):
      ntk_tf.eigen(matrix)
    with self.assertRaisesRegex(ValueError, r"asymmetry=(1e-05|9\.99e-06)"):
      ntk_tf.eigen(_psd(30)[0] + np.triu(np.full((30, 30), 1e-5 * _psd(30)[0].max()), 1))

  def test_float32_rounding_asymmetry_accepted_and_symmetrized(self):
    matrix, _, _ = _psd(60, seed=6)
    noisy = matrix.astype(np.float32)
    noisy[2, 9] = np.nextafter(noisy[2, 9], np.float32(np.inf))  # 1 ulp: below 8 eps.
    eigvals, eigvecs = ntk_tf.eigen(noisy)
    sym = noisy.astype(np.float64)
    ref_vals, ref_vecs = np.linalg.eigh(0.5 * (sym + sym.T))  # independent, out of place
    np.testing.assert_array_equal(eigvals, ref_vals[::-1])
    np.testing.assert_array_equal(eigvecs, _signed(ref_vecs[:, ::-1]))
    with self.assertRaisesRegex(ValueError, "symmetry_tol=1e-09"):
      ntk_tf.eigen(noisy, symmetry_tol=1e-9)

  def test_in_place_symmetrization_is_bit_identical(self):
    self.enter_context(absltest.mock.patch.object(eigen_module, "_CHECK_TILE", 7))
    matrix = np.random.default_rng(0).standard_normal((33, 33))
    expected = 0.5 * (matrix + matrix.T)
    eigen_module._symmetrize_in_place(matrix)  # pylint: disable=protected-access
    np.testing.assert_array_equal(matrix, expected)

  def test_dense_small_n_bit_identical_to_plain_eigh(self):
    # The smoke configs' spectra (N <= 64, dense): unchanged bits.
    matrix, _, _ = _psd(64, seed=7)
    matrix = matrix.astype(np.float32)
    eigvals, eigvecs = ntk_tf.eigen(matrix, 10)
    ref = matrix.astype(np.float64)
    ref_vals, ref_vecs = np.linalg.eigh(0.5 * (ref + ref.T))
    np.testing.assert_array_equal(eigvals, ref_vals[::-1][:10])
    np.testing.assert_array_equal(eigvecs, _signed(ref_vecs[:, ::-1][:, :10]))

  def test_dense_peak_memory(self):
    # VmHWM growth of dense eigen at N = 4000 in a fresh process, in units of N^2 float64.
    script = textwrap.dedent("""
        import re, sys
        import numpy as np
        import ntk_tf
        def hwm():
          return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read())[1]) * 1024
        n = 4000
        matrix = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
        matrix = matrix + matrix.T
        before = hwm()
        ntk_tf.eigen(matrix, 10, method="dense")
        print((hwm() - before) / (n * n * 8))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, check=True).stdout
    factor = float(out.strip().splitlines()[-1])
    print(f"dense eigen peak: {factor:.2f} x N^2 * 8 bytes at N = 4000")
    # The module docstring's figure; the old out-of-place path measured higher.
    self.assertLess(factor, eigen_module.DENSE_PEAK_FACTOR)
    self.assertGreater(factor, 2.0)  # at least the copy and the eigenvectors


class TasksTest(absltest.TestCase):

  def test_labels_and_overlap(self):
    phi = np.array([[0.5], [-0.5], [0.5], [-0.5]])
    labels, overlap = ntk_tf.eigenfunction_signs(np.concatenate([phi, -phi], 1), 1)
    np.testing.assert_array_equal(labels, [1, -1, 1, -1])
    self.assertEqual(labels.dtype, np.float32)
    self.assertAlmostEqual(overlap, 1.0)  # phi is already a scaled sign vector.

  def test_overlap_of_gaussian_vector(self):
    # For a random unit vector, E<sign(phi)/sqrt(N), phi> = sqrt(2/pi) ~ 0.798.
    phi = np.random.RandomState(0).randn(20_000, 2)
    phi /= np.linalg.norm(phi, axis=0)
    labels, overlap = ntk_tf.eigenfunction_signs(phi, 2)
    np.testing.assert_array_equal(labels, np.where(phi[:, 1] > 0, 1, -1).astype(np.float32))
    self.assertAlmostEqual(overlap, np.sqrt(2 / np.pi), delta=0.01)

  def test_j_out_of_range(self):
    for j in (0, 3):
      with self.assertRaisesRegex(ValueError, f"j={j}"):
        ntk_tf.eigenfunction_signs(np.eye(4)[:, :2], j)


if __name__ == "__main__":
  absltest.main()
