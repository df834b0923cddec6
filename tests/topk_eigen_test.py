"""Tests for ntk_tf.topk_eigen.block_lanczos against matrices with a known spectrum.

Each matrix is Q diag(lambda) Q^T with a random orthogonal Q and chosen lambda
(NTK-like decay, tight clusters, rank deficiency), so the reference eigenpairs
are known by construction, not computed by another eigensolver.
"""

import os
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

  @parameterized.parameters(80, 60)
  def test_default_basis_as_large_as_n(self, rank):
    # N = 80, k = 4, b = 32: the default basis (k + 4 b) exceeds N. It is capped at N - b,
    # so the last product's residual block (and any random directions replacing its
    # dependent columns) fits beside it; a basis of N columns left no room for them.
    n, k = 80, 4
    eigvals = np.zeros(n)
    eigvals[:rank] = 1.0 / np.arange(1, rank + 1)**1.5
    matrix, _, ref_vecs = _known(n, eigvals, seed=7)
    vals, vecs, info = topk_eigen.block_lanczos(lambda v: matrix @ v, n, k, block_size=32,
                                                max_passes=50)
    np.testing.assert_allclose(vals, eigvals[:k], rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.abs(np.sum(vecs * ref_vecs[:, :k], 0)), 1.0, atol=1e-9)
    self.assertLess(info.passes, 50)

  def test_default_block_for_many_eigenpairs(self):
    # k = 400 of N = 1,500: the default block is 64 columns per product (k // 16 was 25,
    # raised to 32); every pair against the known spectrum, with fewer products.
    n, k = 1500, 400
    eigvals = 1.0 / np.arange(1, n + 1)**1.2
    matrix, _, ref_vecs = _known(n, eigvals, seed=8)
    widths = []
    vals, vecs, info = topk_eigen.block_lanczos(
        lambda v: widths.append(v.shape[1]) or matrix @ v, n, k)
    self.assertEqual(set(widths), {64})
    np.testing.assert_allclose(vals, eigvals[:k], rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.abs(np.sum(vecs * ref_vecs[:, :k], 0)), 1.0, atol=1e-6)
    self.assertEqual(info.passes, len(widths))

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
      topk_eigen.block_lanczos(lambda v: v * np.nan, 50, 3, block_size=8)

  def test_basis_too_small(self):
    with self.assertRaisesRegex(ValueError, "basis_size"):
      topk_eigen.block_lanczos(lambda v: v, 15, 10, block_size=8)



class _Stop(Exception):
  """Stands for a kill: raised by a product or a save."""


def _stopping(matrix, after):
  """matmat(V) = K V that raises _Stop on its call number after + 1; counts its calls."""
  calls = [0]

  def matmat(v):
    calls[0] += 1
    if calls[0] > after:
      raise _Stop()
    return matrix @ v
  return matmat, calls


class CheckpointTest(parameterized.TestCase):
  """A killed solve resumed from its checkpoint gives the same bits as one never stopped."""

  # block_size=4, basis_size=24, k=8: a fill spans 4 passes, then a thick restart.
  _SETTINGS = dict(block_size=4, basis_size=24, seed=3)

  def setUp(self):
    super().setUp()
    self.n, self.k = 160, 8
    eigvals = 1.0 / np.arange(1, self.n + 1)**1.2
    self.matrix, _, _ = _known(self.n, eigvals, seed=6)
    self.reference = topk_eigen.block_lanczos(lambda v: self.matrix @ v, self.n, self.k,
                                              **self._SETTINGS)
    self.folder = os.path.join(self.create_tempdir().full_path, "partial")

  def _killed(self, after, every_s=0.0, **kwargs):
    """Runs a checkpointed solve whose product number after + 1 raises _Stop."""
    matmat, _ = _stopping(self.matrix, after=after)
    with self.assertRaises(_Stop):
      topk_eigen.block_lanczos(matmat, self.n, self.k, checkpoint=self.folder,
                               checkpoint_every_s=every_s, **dict(self._SETTINGS, **kwargs))

  def _resume(self, **kwargs):
    matmat, calls = _stopping(self.matrix, after=10**9)
    result = topk_eigen.block_lanczos(matmat, self.n, self.k, checkpoint=self.folder,
                                      **dict(self._SETTINGS, **kwargs))
    return result, calls[0]

  def _assert_same_as_reference(self, result):
    np.testing.assert_array_equal(result[0], self.reference[0])
    np.testing.assert_array_equal(result[1], self.reference[1])
    self.assertEqual(result[2].passes, self.reference[2].passes)
    self.assertEqual(result[2].restarts, self.reference[2].restarts)

  @parameterized.named_parameters(("within_the_first_fill", 3), ("after_two_restarts", 11))
  def test_resumes_bit_for_bit(self, stop_after):
    self.assertGreater(self.reference[2].restarts, 2)
    self._killed(stop_after)
    with self.assertLogs("absl", level="INFO") as logs:
      result, products = self._resume()
    self._assert_same_as_reference(result)
    # Saved after each block that joined the basis: of the stop_after products, those whose
    # block was kept are not repeated (the last of a fill is redone, its block not kept).
    self.assertRegex("\n".join(logs.output), r"resuming from .* at pass \d+")
    resumed_at = int(next(line for line in logs.output if "resuming" in line)
                     .split(" at pass ")[1].split(",")[0])
    self.assertGreaterEqual(resumed_at, stop_after - 1)
    self.assertEqual(products, self.reference[2].passes - resumed_at)
    self.assertLen([f for f in os.listdir(self.folder) if f.startswith("basis_")], 1)

  def test_random_directions_continue_the_saved_generator(self):
    # Rank 12 < the basis: pass 4 spans the range and its block gets 4 random directions,
    # drawn from the generator whose state the checkpoint (saved at pass 3) restores.
    eigvals = np.zeros(self.n)
    eigvals[:12] = 2.0**-np.arange(12)
    self.matrix, _, _ = _known(self.n, eigvals, seed=7)
    self.reference = topk_eigen.block_lanczos(lambda v: self.matrix @ v, self.n, self.k,
                                              **self._SETTINGS)
    self._killed(3)
    result, products = self._resume()
    self.assertEqual(products, self.reference[2].passes - 3)
    self._assert_same_as_reference(result)

  def test_kill_between_a_restart_and_its_state(self):
    # The restart's new basis file is written, the state naming it is not: the resumed
    # solve continues from the last state before the restart, with the old basis file.
    real_write = topk_eigen.atomic.write_numpy

    def write(path, save, **arrays):
      if int(arrays["restarts"]) == 2:
        raise _Stop()
      return real_write(path, save, **arrays)
    with mock.patch.object(topk_eigen.atomic, "write_numpy", side_effect=write):
      with self.assertRaises(_Stop):
        topk_eigen.block_lanczos(lambda v: self.matrix @ v, self.n, self.k,
                                 checkpoint=self.folder, checkpoint_every_s=0.0,
                                 **self._SETTINGS)
    self.assertLen([f for f in os.listdir(self.folder) if f.startswith("basis_")], 2)
    result, products = self._resume()
    self._assert_same_as_reference(result)
    self.assertLess(products, self.reference[2].passes)

  def test_a_state_with_other_settings_is_replaced(self):
    self._killed(3, seed=4)
    with self.assertLogs("absl", level="WARNING") as logs:
      result, products = self._resume()
    self.assertRegex("\n".join(logs.output), r"other settings .*\"seed\": 4")
    self._assert_same_as_reference(result)
    self.assertEqual(products, self.reference[2].passes)

  def test_no_save_between_intervals(self):
    # A long interval: only the restarts save, so a kill within the first fill loses it.
    self._killed(3, every_s=1e9)
    self.assertFalse(os.path.exists(os.path.join(self.folder, "state.npz")))


if __name__ == "__main__":
  absltest.main()
