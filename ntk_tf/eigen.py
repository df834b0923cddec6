"""Eigenpairs of an NTK Gram matrix, descending, with a fixed sign convention.

    Theta = sum_j lambda_j phi_j phi_j^T,   lambda_1 >= lambda_2 >= ...,  ||phi_j|| = 1

Shapes: Gram `[N, N]`; eigenvalues `[k]` (float64, descending); eigenvectors
`[N, k]` (float64, column j-1 is phi_j: a function on the N samples, stacked
like label columns `[N, m]`; see the rule for sets of vectors in
`ntk_tf/__init__.py`).

Sign convention: each phi_j is flipped so that its entry of largest absolute
value is positive (ties: the first such index). The same matrix therefore gives
the same eigenvectors, and the same binarized tasks sign(phi_j), on every machine.

Methods:
  dense       numpy.linalg.eigh in float64 (O(N^2) memory, O(N^3) time); refused
              for N >= 32,767 (use top-k).
  lanczos     scipy.sparse.linalg.eigsh (implicitly restarted Lanczos) on
              matrix-vector products; good for small k.
  randomized  block subspace iteration with Rayleigh-Ritz (Halko et al. 2011,
              Alg. 4.4/5.3) until the Ritz residuals are below tol, one pass
              over the matrix per iteration, reading a memory-mapped store in
              row blocks; needs tens of width-(k + p) passes on NTK spectra.
  block_lanczos  thick-restarted block Lanczos with full reorthogonalization
              (`ntk_tf/topk_eigen.py`, which says why it was chosen); the
              default for k > 64 above N = 4096, e.g. k = 1000 at N = 60,000.

Inputs are checked before any method runs (arrays and memory maps, in row
tiles): non-finite entries are refused, naming their count; a matrix whose
max|K - K^T| / max|K| exceeds `symmetry_tol` (default 8 eps of its dtype, at
least 1e-12: ~1e-6 for float32) is refused, naming that value; below it, the
dense path uses (K + K^T) / 2 and the top-k paths read K from its diagonal
blocks rightwards (its upper triangle, `_upper_tiles_product`).

Memory of the dense path: the float64 copy of K is symmetrized in place, then
numpy.linalg.eigh (LAPACK syevd) copies it and needs a 2 N^2 workspace and the
N^2 eigenvectors; its peak above the input (VmHWM growth in a fresh process)
stays below DENSE_PEAK_FACTOR N^2 * 8 bytes (eigen_test checks it at N = 4000):
~41 GB at N = 32,767. scipy's eigh(overwrite_a=True) would save about one copy
but runs another LAPACK build, so the small-N spectra would change bits; use
block_lanczos for large N instead.

Paper: Sec. 2 (Gram eigenvectors approximate the eigenfunctions phi_j), Sec. 3.1
(sign(phi_j) as tasks), Sec. 4.2 (top-K eigenvectors Phi_t), App. B
("Eigendecompositions").
"""

from typing import Any, Optional, Tuple

from absl import logging
import numpy as np
from scipy.sparse import linalg as sparse_linalg

from ntk_tf import topk_eigen
from ntk_tf import validation

# Dense eigh is refused from this size on (int16 max; LAPACK's 32-bit workspace
# sizes 1 + 6N + 2N^2 overflow past ~32,767; ~41 GB peak below it, DENSE_PEAK_FACTOR).
DENSE_MAX_N = 32_767
# `auto` uses dense eigh up to this size, a top-k method above.
_AUTO_DENSE_MAX_N = 4_096
# Rows of a matrix upcast at once (the float64 copy of a float32 matrix).
_ROW_CHUNK = 2_048
# Side of the square tiles of K read at once in a top-k product (`_upper_tiles_product`).
_TILE = 2_048
# Bound on the dense path's peak above its input, in N^2 float64 units (eigen_test checks it).
DENSE_PEAK_FACTOR = 4.8
# Largest float64 copy of a non-float64 matrix kept for top-k products (N <= 16,384).
_CACHE_BYTES = 2 << 30
# Square tiles read at once by the input checks.
_CHECK_TILE = 2_048
METHODS = ("auto", "dense", "lanczos", "randomized", "block_lanczos")


def apply_sign_convention(eigvecs: np.ndarray) -> np.ndarray:
  """Returns `eigvecs [N, k]` with each column's largest-|entry| made positive (ties: first)."""
  return validation.sign_convention(eigvecs, axis=0)


class _Operator:
  """Matrix products with a dense array, a memory map or a LinearOperator-like object."""

  def __init__(self, source: Any):
    # A GramStore (or anything with `.matrix`) is read through its memory map.
    if hasattr(source, "matrix") and hasattr(source, "is_complete"):
      source = source.matrix
    self.dense = None
    self.linear_operator = None
    if isinstance(source, np.ndarray) or hasattr(source, "__array__") and not hasattr(
        source, "matvec"):
      array = source if isinstance(source, np.ndarray) else np.asarray(source)
      if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ValueError(f"eigen needs a square matrix. Received: shape={array.shape}")
      self.dense = array
    elif hasattr(source, "matvec") and hasattr(source, "shape"):
      self.linear_operator = source
    else:
      raise TypeError("eigen needs an [N, N] array, a GramStore or an object with .matvec and "
                      f".shape. Received: {type(source).__name__}")
    self.shape = tuple(int(s) for s in (self.dense if self.dense is not None
                                        else self.linear_operator).shape)
    if len(self.shape) != 2 or self.shape[0] != self.shape[1]:
      raise ValueError(f"eigen needs a square matrix. Received: shape={self.shape}")
    self.n = self.shape[0]
    self._cache = None  # float64 copy of a non-float64 dense matrix, see _float64_source.

  def _float64_source(self) -> np.ndarray:
    """The dense matrix as float64 rows: a float64 copy, made once, when it fits _CACHE_BYTES.

    Upcasting a float32 Gram on every product costs as much as the product itself;
    the copy holds the same values, so products are bit-identical either way.
    """
    if self.dense.dtype == np.float64:
      return self.dense
    if self._cache is None and self.n * self.n * 8 <= _CACHE_BYTES:
      self._cache = np.empty(self.shape, dtype=np.float64)  # [N, N]
      for r0 in range(0, self.n, _ROW_CHUNK):
        self._cache[r0:r0 + _ROW_CHUNK] = self.dense[r0:r0 + _ROW_CHUNK]
    return self._cache if self._cache is not None else self.dense

  def matmat(self, v: np.ndarray) -> np.ndarray:
    """Returns Theta V, `[N, N] x [N, m] -> [N, m]`, in float64.

    A dense Theta is read once per product, as tiles of its upper triangle
    (symmetry gives the rest, see `_upper_tiles_product`).
    """
    if self.dense is not None:
      return _upper_tiles_product(self._float64_source(), v)
    matmat = getattr(self.linear_operator, "matmat", None)
    if matmat is not None:
      return np.asarray(matmat(v), dtype=np.float64).reshape(self.n, v.shape[1])
    return np.stack([np.asarray(self.linear_operator.matvec(v[:, c]), dtype=np.float64)
                     .reshape(self.n) for c in range(v.shape[1])], axis=1)  # [N, m]


def _upper_tiles_product(matrix: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Returns K V for a symmetric K `[N, N]` read as tiles of its upper triangle, V `[N, m]`.

      T_ij = K[r_i, r_j]   (R x R tiles, j >= i)
      (K V)[r_i] += T_ij V[r_j]                 (every tile)
      (K V)[r_j] += T_ij^T V[r_i]               (j > i: the tile below, by symmetry)

  A product reads N (N + R) / 2 entries instead of N^2. Each tile of a float32
  (or memory-mapped) K is upcast into one reused float64 buffer of R^2 entries
  (32 MiB at R = 2,048, where strips of R full rows needed R N); accumulation
  is float64. The GEMMs run as V^T-on-the-left
  products [m, R] x [R, R]: OpenBLAS runs those 1.3-1.4x faster than
  [R, R] x [R, m] for m <= 256 (benchmarks/speed_notes.md).
  """
  n, width = matrix.shape[0], v.shape[1]
  v_t = np.ascontiguousarray(v.T, dtype=np.float64)  # [m, N]
  out_t = np.zeros((width, n), dtype=np.float64)  # [m, N]: (K V)^T
  size = min(_TILE, n)
  buffer = None if matrix.dtype == np.float64 else np.empty(size * size, dtype=np.float64)
  for r0 in range(0, n, _TILE):
    r1 = min(n, r0 + _TILE)
    for c0 in range(r0, n, _TILE):
      c1 = min(n, c0 + _TILE)
      tile = matrix[r0:r1, c0:c1]  # [R, C]
      if buffer is not None:
        converted = buffer[:tile.size].reshape(tile.shape)
        np.copyto(converted, tile)
        tile = converted
      out_t[:, r0:r1] += v_t[:, c0:c1] @ tile.T  # [m, R]
      if c0 > r0:
        out_t[:, c0:c1] += v_t[:, r0:r1] @ tile  # [m, C]
  return np.ascontiguousarray(out_t.T)  # [N, m]


def _tiles(n: int):
  """Yields (rows_i, rows_j) slices of the upper-triangle `_CHECK_TILE` tiles, i <= j."""
  for i0 in range(0, n, _CHECK_TILE):
    for j0 in range(i0, n, _CHECK_TILE):
      yield slice(i0, i0 + _CHECK_TILE), slice(j0, j0 + _CHECK_TILE)


def _symmetrize_in_place(matrix: np.ndarray) -> None:
  """matrix <- (matrix + matrix^T) / 2 tile by tile, equal bit for bit to the out-of-place form."""
  for rows, cols in _tiles(matrix.shape[0]):
    upper = matrix[rows, cols]  # [T, T]
    mean = 0.5 * (upper + matrix[cols, rows].T)  # fl(0.5 fl(a + b)) is symmetric in a, b.
    matrix[rows, cols] = mean
    matrix[cols, rows] = mean.T


def check_matrix(matrix: np.ndarray, symmetry_tol: Optional[float] = None) -> float:
  """Returns max|K - K^T| / max|K| after checking K `[N, N]` is finite and symmetric.

  Reads K in square tiles (a memory map streams once). The default
  symmetry_tol is max(1e-12, 8 eps(dtype)) (~1e-6 for float32).

  Raises:
    ValueError: naming the count of non-finite entries, or the relative
      asymmetry when it exceeds symmetry_tol.
  """
  dtype = matrix.dtype if np.issubdtype(matrix.dtype, np.floating) else np.dtype(np.float64)
  if symmetry_tol is None:
    symmetry_tol = max(1e-12, 8 * float(np.finfo(dtype).eps))
  non_finite, max_abs, max_asym = 0, 0.0, 0.0
  for rows, cols in _tiles(matrix.shape[0]):
    upper = np.asarray(matrix[rows, cols], dtype=np.float64)  # [T, T]
    lower_t = np.asarray(matrix[cols, rows], dtype=np.float64).T  # [T, T]
    finite = np.isfinite(upper)
    bad = upper.size - int(np.count_nonzero(finite))
    if rows != cols:
      bad += lower_t.size - int(np.count_nonzero(np.isfinite(lower_t)))
    non_finite += bad
    if bad:
      continue
    max_abs = max(max_abs, float(np.max(np.abs(upper))), float(np.max(np.abs(lower_t))))
    max_asym = max(max_asym, float(np.max(np.abs(upper - lower_t))))
  if non_finite:
    raise ValueError(f"eigen needs a finite matrix; {non_finite} of its {matrix.size} entries "
                     f"are NaN or inf. Received: non_finite={non_finite}")
  asymmetry = max_asym / max_abs if max_abs > 0 else 0.0
  if asymmetry > symmetry_tol:
    raise ValueError(f"eigen needs a symmetric matrix; max|K - K^T| / max|K| = {asymmetry:.3g} "
                     f"exceeds symmetry_tol={symmetry_tol:.3g} (a corrupted or non-Gram input?). "
                     f"Received: asymmetry={asymmetry:.3g}")
  return asymmetry


def _dense(op: _Operator, k: int) -> Tuple[np.ndarray, np.ndarray]:
  if op.n >= DENSE_MAX_N:
    raise ValueError(
        f"Dense eigh is refused for N >= {DENSE_MAX_N} (O(N^3) time, N^2 float64 memory); "
        f"use a top-k method: eigen(..., k=1000, method='block_lanczos' or 'auto'). "
        f"Received: N={op.n}")
  if op.dense is not None:
    matrix = np.array(op.dense, dtype=np.float64)  # [N, N]
  else:
    matrix = op.matmat(np.eye(op.n))  # [N, N]
  _symmetrize_in_place(matrix)
  eigvals, eigvecs = np.linalg.eigh(matrix)  # ascending
  del matrix
  return eigvals[::-1][:k], eigvecs[:, ::-1][:, :k]


def _lanczos(op: _Operator, k: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
  if k >= op.n - 1:  # ARPACK needs k < N - 1; such k is a dense problem anyway.
    return _dense(op, k)
  operator = sparse_linalg.LinearOperator(
      op.shape, matvec=lambda v: op.matmat(np.reshape(v, (-1, 1)))[:, 0],
      matmat=op.matmat, dtype=np.float64)
  v0 = np.random.default_rng(seed).standard_normal(op.n)
  eigvals, eigvecs = sparse_linalg.eigsh(operator, k=k, which="LA", v0=v0)
  order = np.argsort(eigvals)[::-1]
  return eigvals[order], eigvecs[:, order]


def _randomized(op: _Operator, k: int, seed: int, oversample: Optional[int], max_iter: int,
                tol: float) -> Tuple[np.ndarray, np.ndarray]:
  """Block subspace iteration with Rayleigh-Ritz until the top-k residuals are below tol.

  Each iteration is one pass over the matrix: Y = Theta Q, Ritz pairs of
  Q^T Y, residuals ||Theta v - lambda v|| / lambda_1 from Y, then Q = orth(Y).
  """
  width = min(op.n, k + (oversample if oversample is not None else max(20, k // 2)))
  rng = np.random.default_rng(seed)
  basis, _ = np.linalg.qr(op.matmat(rng.standard_normal((op.n, width))))  # [N, w]
  for iteration in range(max_iter):
    theta_basis = op.matmat(basis)  # [N, w]: Y = Theta Q
    projected = basis.T @ theta_basis  # [w, w]: Q^T Theta Q
    ritz_vals, ritz_vecs = np.linalg.eigh(0.5 * (projected + projected.T))
    order = np.argsort(ritz_vals)[::-1][:k]
    ritz_vals, ritz_vecs = ritz_vals[order], ritz_vecs[:, order]  # [k], [w, k]
    eigvecs = basis @ ritz_vecs  # [N, k]
    residuals = np.linalg.norm(theta_basis @ ritz_vecs - eigvecs * ritz_vals, axis=0)  # [k]
    scale = max(abs(ritz_vals[0]), np.finfo(np.float64).tiny)
    if np.max(residuals) <= tol * scale or iteration == max_iter - 1:
      if np.max(residuals) > tol * scale:
        logging.warning("eigen(method='randomized'): max residual %.3g > tol %.3g after "
                        "max_iter=%d passes", np.max(residuals) / scale, tol, max_iter)
      return ritz_vals, eigvecs
    basis, _ = np.linalg.qr(theta_basis)  # [N, w]
  raise AssertionError("unreachable")


def eigen(matrix_or_store: Any, k: Optional[int] = None, *, method: str = "auto",
          seed: int = 0, oversample: Optional[int] = None, max_iter: int = 100,
          tol: float = 1e-10, block_size: Optional[int] = None,
          symmetry_tol: Optional[float] = None,
          checkpoint: Optional[Any] = None) -> Tuple[np.ndarray, np.ndarray]:
  """Returns the top-k eigenvalues (descending) and unit eigenvectors of a Gram.

      Theta phi_j = lambda_j phi_j,  lambda_1 >= ... >= lambda_k,  ||phi_j||_2 = 1,
      sign: the largest-|entry| of each phi_j is positive (ties: first index).

  Args:
    matrix_or_store: a symmetric `[N, N]` array (or memory map), a complete
      `GramStore`, or a LinearOperator-like object with `.shape` and `.matvec`
      (and optionally `.matmat`) for matrix-free top-k.
    k: number of eigenpairs, 1 <= k <= N; None means all N (dense only).
    method: "auto" (dense for k=None or N <= 4096, else lanczos for k <= 64 and
      block_lanczos above), "dense", "lanczos", "randomized" or "block_lanczos".
    seed: seed of the random start vectors (lanczos, randomized).
    oversample: randomized only, extra basis columns p (default max(20, k/2));
      each pass costs N^2 (k + p) flops, convergence of phi_k goes like
      (lambda_{k+p+1} / lambda_k)^iterations.
    max_iter: randomized only, at most this many passes over the matrix.
    tol: randomized and block_lanczos, stop when every ||Theta phi_j - lambda_j
      phi_j|| <= tol * lambda_1 (eigenvector error ~ residual / eigengap;
      block_lanczos also bounds that ratio, see `ntk_tf/topk_eigen.py`).
    block_size: block_lanczos only, columns per product (default max(32, k/16)).
    symmetry_tol: largest accepted max|K - K^T| / max|K| (default ~8 eps of
      the dtype); arrays and memory maps only.
    checkpoint: block_lanczos only (other methods finish in one go and ignore it), a
      folder where the solver keeps its state so that a killed solve resumes
      (`topk_eigen.block_lanczos`); remove it after storing the result.

  Returns:
    (eigvals `[k]` float64 descending, eigvecs `[N, k]` float64, orthonormal columns).

  Paper: Sec. 3.1 and App. B (eigenfunctions of the NTK of the 60,000 CIFAR-10
  images), Sec. 4.2 (top-K eigenvectors).
  """
  validation.check_choice(method, "method", METHODS)
  op = _Operator(matrix_or_store)
  k = validation.check_k(k, op.n)
  if op.dense is not None:
    check_matrix(op.dense, symmetry_tol)
  if method == "auto":
    if k == op.n or op.n <= _AUTO_DENSE_MAX_N:
      method = "dense"
    else:
      method = "lanczos" if k <= 64 else "block_lanczos"
  if method == "dense":
    eigvals, eigvecs = _dense(op, k)
  elif method == "lanczos":
    eigvals, eigvecs = _lanczos(op, k, seed)
  elif method == "randomized":
    eigvals, eigvecs = _randomized(op, k, seed, oversample, max_iter, tol)
  elif k + 2 * (block_size or topk_eigen.default_block_size(op.n, k)) > op.n:  # No basis room.
    eigvals, eigvecs = _dense(op, k)
  else:
    eigvals, eigvecs, _ = topk_eigen.block_lanczos(op.matmat, op.n, k, block_size=block_size,
                                                   seed=seed, tol=tol, checkpoint=checkpoint)
  return np.asarray(eigvals, dtype=np.float64), apply_sign_convention(eigvecs)
