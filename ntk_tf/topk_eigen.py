"""Top-k eigenpairs of a large symmetric Gram by thick-restarted block Lanczos.

    K Q_m = Q_m T_m + Q_next R E_last^T,    Q_m^T Q_m = I,   T_m = Q_m^T K Q_m   [m, m]
    Ritz pairs (theta_j, x_j = Q_m y_j) of T_m;  ||K x_j - theta_j x_j|| = ||R y_j[last block]||

Shapes: K `[N, N]` (used only through products K V, `[N, b] -> [N, b]`); Krylov
basis Q `[N, m]` float64; block `[N, b]`; T `[m, m]`; Ritz vectors `[N, k]`.

Algorithm: a block Krylov space K_q(K, Q_0) = span{Q_0, K Q_0, ..., K^{q-1} Q_0}
of b columns per block is grown one product K Q_i (one pass over the Gram) at
a time, each new block orthogonalized against the whole basis twice ("twice is
enough", full reorthogonalization: the Ritz vectors stay orthonormal to float64
precision and no ghost eigenvalues appear). The coefficients of that
orthogonalization are the columns of T_m = Q_m^T K Q_m, so no product is spent
on the Rayleigh-Ritz step, and the residual of every Ritz pair comes from the
last block's R without another pass. When the basis reaches m columns and some
of the top k are not converged, it is restarted from the top k + b Ritz
vectors and the residual block (thick restart, Wu & Simon 2000 for b = 1).

Stopping rule, tied to what the eigenfunction tasks need (lambda_j, and the
signs of phi_j): pair j converged when
    r_j <= tol * theta_1                              (eigenvalue error <= r_j)
and r_j <= max(vector_tol * gap_j, tol * theta_1 * 1e-3)   (sin angle(x_j, phi_j) <= r_j / gap_j)
with gap_j the distance from theta_j to its nearest other Ritz value. An
eigenvector error of norm e flips the sign of about 0.8 e of the entries of a
Gaussian-like phi_j, so vector_tol = 1e-4 keeps sign(phi_j) agreement far
above 99.9% wherever phi_j is determined at all; below the floor, phi_j sits
in a cluster it cannot be told apart from by any float64 solver.

Why block Lanczos: for k in the thousands the cost is dominated by products
with the Gram (N^2 flops per column). Subspace iteration (the "randomized"
method) multiplies all k + p columns per pass and converges like
(lambda_{k+p+1} / lambda_k)^pass, which on NTK spectra (fast decay at the top,
clustered around j = 1000) takes tens of passes: tens of thousands of columns
for k = 1000. Krylov convergence depends on the square root of the relative
gap, so block Lanczos needs far fewer columns than subspace iteration
(benchmarks/speed_notes.md has the counts on one Gram; benchmarks/eigen_solvers.py
prints the timings, which belong to the machine, see README). LOBPCG and
Chebyshev filtering were not measured: both also multiply the whole block of
>= k columns per step.

Products take float64 blocks against row chunks of the (possibly float32,
memory-mapped) Gram upcast to float64: float32 accumulation would put a
residual floor near 1e-7 * lambda_1, above the smallest eigengaps among the top
1,000 of an NTK Gram (benchmarks/speed_notes.md), so some phi_j would not be
resolved (an estimate; float32 products were not measured).

Checkpoint (`checkpoint=` a folder): a solve on a Gram that does not fit in
memory takes an hour or more (each product reads the whole Gram), so the state
(Q, T, the counters and the random generator) is saved every
`checkpoint_every_s` and at every restart, and a rerun with the same folder and
settings continues from it, bit for bit the same as a solve never stopped (see
`_Checkpoint`).

Paper: App. B ("Eigendecompositions": top eigenvectors of the 60,000-sample
Gram), Sec. 3.1 (sign(phi_j) as tasks).
"""

import json
import os
import pathlib
import time
from typing import Callable, NamedTuple, Optional, Tuple, Union

from absl import logging
import numpy as np
from scipy import linalg as scipy_linalg

from ntk_tf import atomic

# Seconds between progress lines on long solves.
_LOG_EVERY_S = 30.0


class TopKInfo(NamedTuple):
  """What a top-k solve did: `passes` products K V (of `block_size` columns),
  `restarts`, the final `max_residual` (max_j r_j / theta_1 over j <= k) and
  `seconds`."""
  passes: int
  restarts: int
  max_residual: float
  seconds: float


class _Checkpoint:
  """The solver's state in a folder: Q `[N, filled]`, T `[filled, filled]`, counters, generator.

      basis_<g>.npy  `[m, N]` float64, row i = column i of Q (a new file g at each restart)
      state.npz      filled, passes, restarts, g, T[:filled, :filled], elapsed, settings, rng

  A save writes the new rows of Q (rows of basis_<g>.npy past those the last
  state named) and fsyncs them before `state.npz` is replaced atomically, and a
  restart writes basis_<g+1>.npy whole before the state names it: a kill at
  any point leaves a state and the rows it names. Float64 bits are stored as
  they are, so a resumed solve continues exactly where the saved one stood.
  """

  def __init__(self, folder: Union[str, os.PathLike], settings: dict, every_s: float):
    self.folder = pathlib.Path(folder)
    self.settings = json.dumps(settings, sort_keys=True)
    self.every_s = float(every_s)
    self.generation, self.rows, self.last = -1, 0, time.monotonic()

  def _basis_path(self, generation: int) -> pathlib.Path:
    return self.folder / f"basis_{generation}.npy"

  def load(self, basis: np.ndarray, projected: np.ndarray, rng: np.random.Generator):
    """Fills basis/projected/rng from a saved state; returns (filled, passes, restarts, elapsed) or None."""
    state_path = self.folder / "state.npz"
    if not state_path.is_file():
      return None
    with np.load(state_path) as state:
      if str(state["settings"]) != self.settings:
        logging.warning("block_lanczos: the checkpoint in %s has other settings (%s, not %s); "
                        "starting afresh", self.folder, state["settings"], self.settings)
        return None
      filled, generation = int(state["filled"]), int(state["generation"])
      saved = np.load(self._basis_path(generation), mmap_mode="r")  # [m, N]
      basis[:, :filled] = saved[:filled].T
      del saved
      projected[:filled, :filled] = state["projected"]
      rng.bit_generator.state = json.loads(str(state["rng"]))
      self.generation, self.rows = generation, filled
      logging.info("block_lanczos: resuming from %s at pass %d, restart %d, basis %d columns",
                   self.folder, int(state["passes"]), int(state["restarts"]), filled)
      return filled, int(state["passes"]), int(state["restarts"]), float(state["elapsed"])

  def save(self, basis: np.ndarray, projected: np.ndarray, rng: np.random.Generator,
           filled: int, passes: int, restarts: int, elapsed: float, *,
           restarted: bool = False) -> None:
    """Saves the state with Q = basis[:, :filled] at a restart, else every `every_s`."""
    if not (restarted or time.monotonic() - self.last >= self.every_s):
      return
    self.folder.mkdir(parents=True, exist_ok=True)
    old = self.generation
    if restarted or self.generation < 0:
      self.generation, self.rows = self.generation + 1, 0
      rows = np.lib.format.open_memmap(self._basis_path(self.generation), mode="w+",
                                       dtype=np.float64, shape=(basis.shape[1], basis.shape[0]))
    else:
      rows = np.load(self._basis_path(self.generation), mmap_mode="r+")  # [m, N]
    rows[self.rows:filled] = basis[:, self.rows:filled].T
    rows.flush()
    del rows
    with open(self._basis_path(self.generation), "rb") as f:
      os.fsync(f.fileno())
    atomic.write_numpy(self.folder / "state.npz", np.savez, filled=filled, passes=passes,
                       restarts=restarts, generation=self.generation, elapsed=elapsed,
                       projected=projected[:filled, :filled], settings=self.settings,
                       rng=json.dumps(rng.bit_generator.state))
    if old >= 0 and old != self.generation:
      self._basis_path(old).unlink(missing_ok=True)
    self.rows, self.last = filled, time.monotonic()


def _orthonormalize_against(basis: np.ndarray, block: np.ndarray
                            ) -> Tuple[np.ndarray, np.ndarray]:
  """Returns (C, W) with W = block - basis C orthogonal to basis; two Gram-Schmidt sweeps.

  basis `[N, c]` orthonormal, block `[N, b]`; C `[c, b]` = basis^T block.
  """
  coefficients = basis.T @ block  # [c, b]
  block = block - basis @ coefficients  # [N, b]
  correction = basis.T @ block  # [c, b]
  block -= basis @ correction
  return coefficients + correction, block


def _cholesky_qr2(block: np.ndarray) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
  """Returns (Q, R) with block = Q R by Cholesky QR twice (Yamamoto et al. 2015), or (None, None).

  Two GEMMs of `[N, b]` per sweep instead of Householder's level-2 panels; the
  second sweep restores orthogonality to float64 precision when cond(block) <~ 1e7,
  which is checked (diag(R) ratio), else (None, None) for the Householder fallback.
  """
  factor = np.eye(block.shape[1])
  q = block
  for _ in range(2):
    gram = q.T @ q  # [b, b]
    try:
      upper = scipy_linalg.cholesky(gram, lower=False)  # [b, b]: gram = U^T U
    except np.linalg.LinAlgError:
      return None, None
    diag = np.abs(np.diag(upper))
    if not np.all(np.isfinite(diag)) or diag.min() <= 1e-7 * diag.max():
      return None, None
    q = scipy_linalg.solve_triangular(upper, q.T, trans="T", lower=False).T  # [N, b]: Q U = block
    factor = upper @ factor
  return q, factor


def _orth_block(block: np.ndarray, rng: np.random.Generator, basis: Optional[np.ndarray],
                scale: float) -> Tuple[np.ndarray, np.ndarray]:
  """Returns (Q, R): block = Q R, Q `[N, b]` orthonormal (and orthogonal to basis).

  Columns whose R diagonal is below 1e-10 * scale (the norm of the block before
  it was orthogonalized: an invariant subspace was found) are replaced by random directions orthogonal to basis, with zero rows of R, so the
  Krylov relation still holds.
  """
  q, r = _cholesky_qr2(block)
  if q is None:  # Nearly dependent columns: Householder QR, then repair below.
    q, r = np.linalg.qr(block)  # [N, b], [b, b]
  weak = np.abs(np.diag(r)) <= 1e-10 * scale
  if np.any(weak):
    fresh = rng.standard_normal((block.shape[0], int(weak.sum())))  # [N, w]
    keep = q[:, ~weak]
    full = keep if basis is None else np.concatenate([basis, keep], axis=1)
    for _ in range(2):
      fresh -= full @ (full.T @ fresh)
    fresh, _ = np.linalg.qr(fresh)
    q[:, weak] = fresh
    r[weak, :] = 0.0
  return q, r


def _grow(matmat: Callable[[np.ndarray], np.ndarray], basis: np.ndarray, projected: np.ndarray,
          filled: int, passes: int, *, b: int, m: int, keep: int, max_passes: int,
          rng: np.random.Generator, progress: Callable[[int, int], None],
          grown: Callable[[int, int], None]) -> Tuple[int, int, np.ndarray, np.ndarray]:
  """Grows Q = basis[:, :filled] and T = projected to m columns, one product K Q_i per block.

  Stops when one more block would pass m columns (or max_passes are spent and
  Q holds `keep` columns). Returns (filled, passes, Q_next `[N, b]`, R `[b, b]`):
  the last product's residual block, not in Q, with K Q_m = Q_m T_m + Q_next R E_last^T.
  `grown(filled, passes)` is called after each block joins Q (the checkpoint).
  """
  while True:
    lo = filled - b
    product = np.asarray(matmat(basis[:, lo:filled]), dtype=np.float64)  # [N, b]: K Q_i
    passes += 1
    progress(passes, filled)
    if not np.all(np.isfinite(product)):
      raise ValueError(f"block_lanczos: the product K Q_{passes} has "
                       f"{int(np.count_nonzero(~np.isfinite(product)))} non-finite entries "
                       "(NaN or inf in the matrix?)")
    product_norm = float(np.max(np.linalg.norm(product, axis=0)))
    coefficients, product = _orthonormalize_against(basis[:, :filled], product)  # [c, b]
    projected[:filled, lo:filled] = coefficients
    projected[lo:filled, :filled] = coefficients.T
    diagonal = projected[lo:filled, lo:filled]
    projected[lo:filled, lo:filled] = 0.5 * (diagonal + diagonal.T)
    next_block, coupling = _orth_block(product, rng, basis[:, :filled],
                                       product_norm)  # [N, b], [b, b]
    if filled + b > m or (passes >= max_passes and filled >= keep):
      return filled, passes, next_block, coupling
    basis[:, filled:filled + b] = next_block
    projected[filled:filled + b, lo:filled] = coupling
    projected[lo:filled, filled:filled + b] = coupling.T
    filled += b
    grown(filled, passes)


def _ritz_pairs(projected: np.ndarray, coupling: np.ndarray, filled: int, b: int, keep: int,
                k: int, tol: float, vector_tol: float
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, float]:
  """Rayleigh-Ritz on T `[filled, filled]`: the top `keep` Ritz pairs, descending.

  Returns (theta `[keep]`, Y `[filled, keep]`, converged `[k]` bool by the
  module docstring's stopping rule, max_j r_j / theta_1 over j <= k).
  """
  ritz_vals, ritz_vecs = scipy_linalg.eigh(projected[:filled, :filled],
                                           subset_by_index=[filled - keep, filled - 1])
  ritz_vals, ritz_vecs = ritz_vals[::-1], ritz_vecs[:, ::-1]  # [keep], [filled, keep]
  residuals = np.linalg.norm(coupling @ ritz_vecs[filled - b:filled], axis=0)  # [keep]
  scale = max(abs(ritz_vals[0]), np.finfo(np.float64).tiny)
  gaps = np.full(keep, np.inf)
  gaps[1:] = ritz_vals[:-1] - ritz_vals[1:]
  gaps[:-1] = np.minimum(gaps[:-1], ritz_vals[:-1] - ritz_vals[1:])
  vector_bound = np.maximum(vector_tol * gaps[:k], 1e-3 * tol * scale)
  converged = (residuals[:k] <= tol * scale) & (residuals[:k] <= vector_bound)
  max_residual = float(np.max(residuals[:k]) / scale)
  return ritz_vals, ritz_vecs, converged, max_residual


def _restart(basis: np.ndarray, projected: np.ndarray, filled: int, keep: int, b: int,
             ritz_vals: np.ndarray, ritz_vecs: np.ndarray, next_block: np.ndarray,
             coupling: np.ndarray) -> int:
  """Thick restart: Q <- [Q Y_keep, Q_next], T <- [[diag(theta), S^T], [S, .]]; returns keep + b."""
  kept = basis[:, :filled] @ ritz_vecs  # [N, keep]
  basis[:, :keep] = kept
  del kept
  basis[:, keep:keep + b] = next_block
  projected[:] = 0.0
  projected[np.arange(keep), np.arange(keep)] = ritz_vals
  coupling_kept = coupling @ ritz_vecs[filled - b:filled]  # [b, keep]: Q_next^T K X
  projected[keep:keep + b, :keep] = coupling_kept
  projected[:keep, keep:keep + b] = coupling_kept.T
  return keep + b


def _start(n: int, b: int, m: int, seed: int, saver: Optional[_Checkpoint]):
  """(rng, Q `[N, m]`, T `[m, m]`, filled, passes, restarts, elapsed): saved, or a random block."""
  rng = np.random.default_rng(seed)
  basis = np.empty((n, m), dtype=np.float64)  # [N, m]: Q
  projected = np.zeros((m, m), dtype=np.float64)  # [m, m]: T = Q^T K Q
  resumed = None if saver is None else saver.load(basis, projected, rng)
  if resumed is not None:
    return (rng, basis, projected) + tuple(resumed)
  basis[:, :b], _ = _orth_block(rng.standard_normal((n, b)), rng, None, 1.0)
  return rng, basis, projected, b, 0, 0, 0.0


def _finish(basis: np.ndarray, ritz_vals: np.ndarray, ritz_vecs: np.ndarray,
            converged: np.ndarray, max_passes: int, info: TopKInfo):
  """(theta `[k]`, X = Q Y_k `[N, k]`, info), warning when some of the top k are not converged."""
  k = converged.shape[0]
  if not np.all(converged):
    logging.warning("eigen(method='block_lanczos'): %d of the top %d pairs not converged "
                    "after max_passes=%d (max residual %.2e of lambda_1)",
                    int(k - converged.sum()), k, max_passes, info.max_residual)
  return ritz_vals[:k].copy(), basis @ ritz_vecs[:, :k], info


def _log_ritz(passes: int, restarts: int, converged: np.ndarray, max_residual: float,
              elapsed: float, passes_per_restart: Optional[float]) -> None:
  """The progress line after a Rayleigh-Ritz step (with an ETA unless done)."""
  rate = elapsed / passes
  eta = "" if passes_per_restart is None else f", ETA ~{rate * passes_per_restart:.0f} s per restart"
  logging.info("eigen(method='block_lanczos'): pass %d, restart %d, %d/%d converged, "
               "max residual %.2e of lambda_1, %.0f s elapsed (%.1f s/pass)%s", passes, restarts,
               int(converged.sum()), converged.shape[0], max_residual, elapsed, rate, eta)


def default_block_size(n: int, k: int) -> int:
  """b = min(N, max(32, 32 round(k / 256))): about k / 8 in multiples of 32, 128 for k = 1,000.

  Fewer, wider products: per pass the GEMM rate rises with b (OpenBLAS float64,
  b = 62 / 128: 82 / 114 GFLOP/s) and the Gram is read once per pass. The top
  1,000 of LeNet's 60,000-sample Gram took 573 s at b = 128 against 670 s at
  b = 62 (benchmarks/speed_notes.md), with the same eigenpairs to 5e-16 lambda_1.
  """
  return min(int(n), max(32, 32 * round(int(k) / 256)))


def block_lanczos(matmat: Callable[[np.ndarray], np.ndarray], n: int, k: int, *,
                  block_size: Optional[int] = None, basis_size: Optional[int] = None,
                  seed: int = 0, tol: float = 1e-10, vector_tol: float = 1e-4,
                  max_passes: int = 1000,
                  checkpoint: Optional[Union[str, os.PathLike]] = None,
                  checkpoint_every_s: float = 120.0) -> Tuple[np.ndarray, np.ndarray, TopKInfo]:
  """Returns the top-k eigenpairs of a symmetric K given by `matmat(V) = K V`.

      K x_j = theta_j x_j + residual_j,  theta_1 >= ... >= theta_k,  X^T X = I

  Args:
    matmat: `[N, b] float64 -> [N, b] float64`, the product with K.
    n: N.
    k: number of eigenpairs, 1 <= k < N.
    block_size: b, columns per product (default `default_block_size`).
    basis_size: m, Krylov basis size before a restart (default k + max(1.5 k, 4 b),
      at most N - b); memory N * m * 8 bytes.
    seed: seed of the random start block.
    tol: eigenvalue residual bound, relative to theta_1 (see the module docstring).
    vector_tol: eigenvector residual bound, relative to the eigengap.
    max_passes: at most this many products K Q_i (but at least the (k + b) / b
      that span k + b columns); a warning if not converged.
    checkpoint: a folder for the solver's state (None: none kept); one saved with the
      same settings is resumed, one with others replaced (a warning). The caller
      removes it after storing the result. Disk: N m 8 bytes (2x at a restart).
    checkpoint_every_s: seconds between saves (and at every restart).

  Returns: (eigvals `[k]` descending, eigvecs `[N, k]` orthonormal, `TopKInfo`).
  """
  start_time = time.monotonic()
  b = int(block_size) if block_size is not None else default_block_size(n, k)
  m = int(basis_size) if basis_size is not None else k + max(3 * k // 2, 4 * b)
  # At most N - b: the residual block of the last product must fit beside the basis, and
  # so must the random directions that replace its dependent columns.
  m = min(n - b, max(m, k + 2 * b))
  keep = min(k + b, m - b)  # Ritz vectors kept on restart.
  if keep < k:
    raise ValueError(f"block_lanczos needs basis_size >= k + 2 * block_size and "
                     f"N >= k + 2 * block_size. Received: "
                     f"k={k}, block_size={b}, basis_size={m}, N={n}")
  saver = None if checkpoint is None else _Checkpoint(
      checkpoint, dict(n=int(n), k=int(k), b=b, m=m, seed=int(seed), tol=float(tol),
                       vector_tol=float(vector_tol), max_passes=int(max_passes)),
      checkpoint_every_s)
  rng, basis, projected, filled, passes, restarts, elapsed = _start(n, b, m, seed, saver)
  start_time -= elapsed
  last_log = [time.monotonic()]

  def grown(filled: int, passes: int, restarted: bool = False) -> None:  # The checkpoint.
    if saver is not None:
      saver.save(basis, projected, rng, filled, passes, restarts,
                 time.monotonic() - start_time, restarted=restarted)

  def progress(passes: int, filled: int) -> None:  # A line every _LOG_EVERY_S within a fill.
    now = time.monotonic()
    if now - last_log[0] >= _LOG_EVERY_S:
      logging.info("eigen(method='block_lanczos'): pass %d, restart %d, basis %d of %d "
                   "columns, %.0f s elapsed (%.1f s/pass)", passes, restarts, filled, m,
                   now - start_time, (now - start_time) / passes)
      last_log[0] = now

  while True:
    filled, passes, next_block, coupling = _grow(matmat, basis, projected, filled, passes, b=b,
                                                 m=m, keep=keep, max_passes=max_passes, rng=rng,
                                                 progress=progress, grown=grown)
    ritz_vals, ritz_vecs, converged, max_residual = _ritz_pairs(projected, coupling, filled, b,
                                                                keep, k, tol, vector_tol)
    now = time.monotonic()
    done = bool(np.all(converged)) or passes >= max_passes
    if now - last_log[0] >= _LOG_EVERY_S or done:
      _log_ritz(passes, restarts, converged, max_residual, now - start_time,
                None if done else (m - keep) / b)
      last_log[0] = now
    if done:
      return _finish(basis[:, :filled], ritz_vals, ritz_vecs, converged, max_passes,
                     TopKInfo(passes, restarts, max_residual, time.monotonic() - start_time))
    restarts += 1
    filled = _restart(basis, projected, filled, keep, b, ritz_vals, ritz_vecs, next_block,
                      coupling)
    grown(filled, passes, restarted=True)
