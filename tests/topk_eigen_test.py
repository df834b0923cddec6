"""Tests for ntk_tf.topk_eigen.block_lanczos against matrices with a known spectrum.

Each matrix is Q diag(lambda) Q^T with a random orthogonal Q and chosen lambda
(NTK-like decay, tight clusters, rank deficiency), so the reference eigenpairs
are known by construction, not computed by another eigensolver.
"""

from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tests import test_util  # pylint: disable=unused-import
from ntk_tf import topk_eigen


def _known(n, eigvals, seed=0):
  """Returns (K [N, N], eigvals [N] descending, Q [N, N]) with K = Q diag(eigvals) Q^T."""
  basis, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))  # [N, N]
  return (basis * eigvals) @ basis.T, eigvals, basis


def _clustered(n, seed=0):
  """1/j^1.5 decay with clusters of three at j = 30, 60, 90 spaced 1e-7 * lambda_1 apart."""
  eigvals = 1.0 / np.arange(1, n + 1)**1.5
  for j in (30, 60, 90):
    eigvals[j:j + 3] = eigvals[j] + 1e-7 * np.array([2.0, 1.0, 0.0])
  return np.sort(eigvals)[::-1]


class BlockLanczosTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("default", {}),  # b = 32, one or more restarts.
      ("small_basis", dict(block_size=8, basis_size=136)),  # many thick restarts.
      ("wide_block", dict(block_size=64)))
  def test_clustered_spectrum(self, kwargs):
    n, k = 900, 100
    matrix, ref_vals, ref_vecs = _known(n, _clustered(n), seed=1)
    eigvals, eigvecs, info = topk_eigen.block_lanczos(lambda v: matrix @ v, n, k, seed=2,
                                                      **kwargs)
    self.assertEqual(eigvals.shape, (k,))
    self.assertEqual(eigvecs.shape, (n, k))
    # Eigenvalues to 1e-10 of lambda_1 (tol), descending.
    np.testing.assert_allclose(eigvals, ref_vals[:k], rtol=0, atol=1e-10 * ref_vals[0])
    np.testing.assert_array_less(np.diff(eigvals), 1e-12)
    np.testing.assert_allclose(eigvecs.T @ eigvecs, np.eye(k), atol=1e-12)
    # Each vector within 1e-3 of the reference (up to sign), clusters included: gap 1e-7
    # and vector_tol 1e-4 bound the angle by ~1e-4.
    cosines = np.abs(np.sum(eigvecs * ref_vecs[:, :k], axis=0))  # [k]
    np.testing.assert_array_less(1.0 - cosines, 1e-6)
    # The reported residual is the true one.
    true_residual = np.linalg.norm(matrix @ eigvecs - eigvecs * eigvals, axis=0).max()
    self.assertLessEqual(true_residual, 1e-10 * ref_vals[0])
    np.testing.assert_allclose(info.max_residual, true_residual / ref_vals[0], rtol=0.5,
                               atol=1e-14)
    if "basis_size" in kwargs:
      self.assertGreater(info.restarts, 1)

  def test_rank_deficient(self):
    # Rank 20 < Krylov size: the space becomes invariant and new directions are drawn.
    n, k = 300, 10
    eigvals = np.zeros(n)
    eigvals[:20] = 2.0**-np.arange(20)
    matrix, _, ref_vecs = _known(n, eigvals, seed=3)
    vals, vecs, _ = topk_eigen.block_lanczos(lambda v: matrix @ v, n, k, block_size=8)
    np.testing.assert_allclose(vals, eigvals[:k], atol=1e-12)
    np.testing.assert_allclose(np.abs(np.sum(vecs * ref_vecs[:, :k], 0)), 1.0, atol=1e-10)

  def test_progress_line(self):
    matrix, _, _ = _known(200, 0.9**np.arange(200), seed=4)
    with self.assertLogs("absl", level="INFO") as logs:
      topk_eigen.block_lanczos(lambda v: matrix @ v, 200, 5, block_size=4)
    self.assertRegex("\n".join(logs.output),
                     r"pass \d+, restart \d+, 5/5 converged, max residual .* of lambda_1")

  def test_progress_lines_within_a_basis_fill(self):
    # Every product may log (interval 0): the lines count the passes and the basis fill
    # before the first restart's Rayleigh-Ritz step, which alone logged before.
    matrix, _, _ = _known(200, 0.9**np.arange(200), seed=4)
    with mock.patch.object(topk_eigen, "_LOG_EVERY_S", 0.0):
      with self.assertLogs("absl", level="INFO") as logs:
        _, _, info = topk_eigen.block_lanczos(lambda v: matrix @ v, 200, 5, block_size=4)
    fills = [line for line in logs.output if "columns" in line]
    self.assertLen(fills, info.passes)
    self.assertRegex(fills[0], r"pass 1, restart 0, basis 4 of \d+ columns, \d+ s elapsed")

  def test_max_passes_warns(self):
    matrix, _, _ = _known(300, 0.999**np.arange(300), seed=5)  # gaps too small for 2 passes
    with self.assertLogs("absl", level="WARNING") as logs:
      _, _, info = topk_eigen.block_lanczos(lambda v: matrix @ v, 300, 20, block_size=4,
                                            max_passes=2)
    self.assertEqual(info.passes, 6)  # The fewest that span k + b = 24 columns.
    self.assertRegex("\n".join(logs.output), "not converged after max_passes=2")

  def test_non_finite_product(self):
    with self.assertRaisesRegex(ValueError, "non-finite"):
      topk_eigen.block_lanczos(lambda v: v * np.nan, 50, 3)

  def test_basis_too_small(self):
    with self.assertRaisesRegex(ValueError, "basis_size"):
      topk_eigen.block_lanczos(lambda v: v, 15, 10, block_size=8)


if __name__ == "__main__":
  absltest.main()
