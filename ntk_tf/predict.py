"""What the linearized network predicts after gradient descent on the MSE loss, from its NTK.

The linearized model f(x; theta) = f(x; theta0) + J(x) (theta - theta0) trained by
gradient flow on L = ||f(x_train) - y||^2 / (2 n), n = y_train.size, moves in function space as

    d f_train / dt = -(eta / n) Theta (f_train - y),      Theta = k_train_train,

so, with A = Theta + diag_reg I and its eigenpairs A = V diag(lambda) V^T,

    f_train(t) = f_train(0) + V expm1(-lambda eta t / n) V^T (f_train(0) - y)
    f_test(t)  = f_test(0)  + k_test_train V [expm1(-lambda eta t / n) / lambda] V^T (f_train(0) - y)
    t = None (t -> infinity):  f_train = y,  f_test = f_test(0) + k_test_train A^{-1} (y - f_train(0)).

Full-batch gradient descent with step eta (`gradient_descent_mse_discrete`) is the same with
expm1(-lambda eta t / n) replaced by (1 - eta lambda / n)^t - 1 after t steps.

Conventions are neural-tangents' (`nt.predict.gradient_descent_mse`), so users can switch:
`diag_reg` is relative to the mean diagonal of the Gram (trace / size) unless
`diag_reg_absolute_scale=True`; `learning_rate` scales t; `fx_train_0=None` skips the train
predictions, `fx_test_0=None` the test ones; t may be an array of times (leading axes).

Shapes (K outputs):
  k_train_train `[N, N]` acting on every output alike (a one-logit Gram, or the "trace" or
                "pseudo" output kernel of a K-logit model), or `[N, N, K, K]` ("full");
  y_train `[N]` or `[N, K]`;  k_test_train `[M, N]` or `[M, N, K, K]`;
  fx_train_0 like y_train (or a scalar), fx_test_0 `[M]` / `[M, K]` (or a scalar).

A `GramStore` (or its `.matrix`) can stand for an `[N, N]` Gram; the prediction reads it once
into memory in the dtype asked for. The eigendecomposition (finite t) and the Cholesky factor
(t = None) are computed on first use and cached.

No closed form: the paper's recipe (minibatch SGD with momentum on the binary cross-entropy,
App. A) is not linear in f, and minibatches make each step depend on the batch order; only
full-batch gradient descent on the MSE loss is predicted here.
"""

from typing import Any, Callable, Optional, Tuple, Union

import numpy as np
import scipy.linalg
import scipy.linalg.lapack

ArrayOrScalar = Union[None, float, np.ndarray]
# (t, fx_train_0, fx_test_0, k_test_train) -> fx_train_t | fx_test_t | (fx_train_t, fx_test_t)
PredictFn = Callable[..., Any]

# Bytes of A above which `cholesky_upper` factors it in blocks whose updates are GEMMs. The
# dsyrk of scipy-openblas 0.3.31 with its own kernels on an AVX-512 Sapphire Rapids Xeon
# (OPENBLAS_CORETYPE unset) segfaults once its output passes 2 GiB (measured: N = 20,000,
# float64, k >= 256), and LAPACK's potrf calls it on the trailing matrix.
DIRECT_CHOLESKY_BYTES = 1 << 30
_CHOLESKY_BLOCK = 4096


def cholesky_upper(a: np.ndarray) -> np.ndarray:
  """U upper triangular with A = U^T U, for A `[n, n]` symmetric positive definite.

  LAPACK's potrf up to DIRECT_CHOLESKY_BYTES; above, the right-looking blocked form: per
  block row k, U_kk = potrf(A_kk), U_k,>k = U_kk^-T A_k,>k, then A_>k,>k -= U_k,>k^T U_k,>k
  in row slabs (GEMMs, no dsyrk). A is not modified.
  Raises np.linalg.LinAlgError if A is not positive definite.
  """
  if a.nbytes <= DIRECT_CHOLESKY_BYTES:
    return scipy.linalg.cholesky(a, lower=False, check_finite=False)
  n, bs = len(a), _CHOLESKY_BLOCK
  u = np.array(a, order="C")  # [n, n]; its upper triangle becomes U
  potrf = scipy.linalg.lapack.get_lapack_funcs("potrf", (u,))
  for k in range(0, n, bs):
    e = min(k + bs, n)
    block, info = potrf(np.asfortranarray(u[k:e, k:e]), lower=0, clean=1)
    if info != 0:
      raise np.linalg.LinAlgError(f"the leading minor of order {k + info} is not positive")
    u[k:e, k:e] = block
    if e < n:
      row = scipy.linalg.solve_triangular(block, u[k:e, e:], trans="T", lower=False,
                                          check_finite=False)  # [bs, n - e]
      u[k:e, e:] = row
      column = np.ascontiguousarray(row.T)  # [n - e, bs]
      for s in range(e, n, bs):  # rows s.., columns s..: the upper part and its diagonal block
        u[s:s + bs, s:] -= column[s - e:s - e + bs] @ row[:, s - e:]
  for s in range(0, n, bs):  # Zero the lower triangle in place, a slab of rows at a time.
    rows = u[s:s + bs]
    rows[:, :s] = 0.0
    rows[:, s:s + bs] = np.triu(rows[:, s:s + bs])
  return u


# Relative asymmetry max|K - K^T| / max|K| above which a Gram is refused.
SYMMETRY_TOL = {np.dtype("float32"): 1e-5, np.dtype("float64"): 1e-10}


def _as_matrix(k: Any, dtype: Optional[np.dtype]) -> np.ndarray:
  if hasattr(type(k), "matrix") and hasattr(k, "is_complete"):  # A GramStore.
    if not k.is_complete:
      raise ValueError(f"The GramStore at {getattr(k, 'path', '?')} is not complete "
                       f"({k.num_done} of {k.num_blocks} blocks); run compute() first.")
    k = k.matrix
  k = np.asarray(k)
  if k.dtype.kind != "f":
    raise ValueError(f"k_train_train must be a float array. Received: dtype={k.dtype}")
  return np.array(k, dtype=dtype or k.dtype)  # A private copy: regularized in place.


def _check_gram(k: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, int, int]:
  """Validates k_train_train against y_train; returns (2-D Gram [N K', N K'], N, K)."""
  if y.ndim not in (1, 2):
    raise ValueError(f"y_train must be [N] or [N, K]. Received: y_train.shape={y.shape}")
  n = y.shape[0]
  outputs = 1 if y.ndim == 1 else y.shape[1]
  if k.ndim == 2:
    if k.shape != (n, n):
      raise ValueError(f"k_train_train must be [N, N] with N = len(y_train) = {n} (or "
                       f"[N, N, K, K]). Received: k_train_train.shape={k.shape}")
    flat = k
  elif k.ndim == 4:
    if k.shape != (n, n, outputs, outputs) or y.ndim != 2:
      raise ValueError(f"A full Gram [N, N, K, K] needs y_train [N, K] of the same N and K. "
                       f"Received: k_train_train.shape={k.shape}, y_train.shape={y.shape}")
    flat = k.transpose(0, 2, 1, 3).reshape(n * outputs, n * outputs)  # [N K, N K]
  else:
    raise ValueError(f"k_train_train must be [N, N] or [N, N, K, K]. "
                     f"Received: k_train_train.shape={k.shape}")
  _check_finite_symmetric(flat)
  return flat, n, outputs


def _check_finite_symmetric(flat: np.ndarray, rows: int = 2048) -> None:
  """Refuses a non-finite or non-symmetric Gram, a band of rows at a time (no N^2 temporaries)."""
  scale = 0.0
  for i in range(0, flat.shape[0], rows):
    band = flat[i:i + rows]
    if not np.all(np.isfinite(band)):
      bad = np.argwhere(~np.isfinite(band))[0]
      raise ValueError(f"k_train_train must be finite. Received: a non-finite entry "
                       f"{band[tuple(bad)]} at {(i + int(bad[0]), int(bad[1]))}")
    scale = max(scale, float(np.max(np.abs(band))))
  asym = 0.0
  for i in range(0, flat.shape[0], rows):
    asym = max(asym, float(np.max(np.abs(flat[i:i + rows] - flat[:, i:i + rows].T))))
  tol = SYMMETRY_TOL.get(flat.dtype, 1e-5)
  if asym > tol * (scale or 1.0):
    raise ValueError(f"k_train_train must be symmetric (relative asymmetry <= {tol:g}). "
                     f"Received: max|K - K^T| / max|K| = {asym / (scale or 1.0):.3g}")


def _regularize(flat: np.ndarray, diag_reg: float, absolute: bool) -> np.ndarray:
  """A = K + diag_reg * I in place, diag_reg times the mean diagonal unless `absolute`."""
  if diag_reg < 0 or not np.isfinite(diag_reg):
    raise ValueError(f"diag_reg must be a finite number >= 0. Received: diag_reg={diag_reg}")
  reg = diag_reg if absolute else diag_reg * np.trace(flat) / flat.shape[0]
  flat[np.diag_indices_from(flat)] += reg
  return flat


def _check_times(t: ArrayOrScalar, learning_rate: float) -> np.ndarray:
  times = np.asarray(t, dtype=np.float64)
  if np.any(np.isnan(times)) or np.any(times < 0):
    raise ValueError(f"t must be >= 0 (or +inf; None for the limit). Received: t={t!r}")
  return times * learning_rate


class _Predictor:
  """The shared machinery of the continuous and discrete predictions."""

  def __init__(self, k_train_train: Any, y_train: Any, learning_rate: float, diag_reg: float,
               diag_reg_absolute_scale: bool, dtype: Any,
               spectral_fn: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    if not (np.isfinite(learning_rate) and learning_rate > 0):
      raise ValueError(f"learning_rate must be a finite number > 0. "
                       f"Received: learning_rate={learning_rate}")
    dtype = None if dtype is None else np.dtype(dtype)
    self.y = np.asarray(y_train, dtype=dtype or np.float64)
    kernel = _as_matrix(k_train_train, dtype)
    self.y = self.y.astype(kernel.dtype)
    self.full = kernel.ndim == 4
    flat, self.n, self.outputs = _check_gram(kernel, self.y)
    self.a = _regularize(flat, float(diag_reg), diag_reg_absolute_scale)
    self.learning_rate = float(learning_rate)
    self.normalization = self.y.size  # n of the loss ||f - y||^2 / (2 n)
    self._spectral_fn = spectral_fn  # (lambda, scaled t) -> g(lambda, t), [T, NK']
    self._eigh = None
    self._cho = None

  # The right-hand side: [N K', R], R = 1 for a full Gram, K for a Gram acting on each output.
  def _to_columns(self, r: np.ndarray) -> np.ndarray:
    if self.full:
      return r.reshape(-1, 1)  # [N K, 1], row-major (i, a)
    return r.reshape(self.n, -1)  # [N, K]

  def _from_columns(self, c: np.ndarray) -> np.ndarray:
    return c.reshape((-1,) + self.y.shape)  # [T, N] / [T, N, K]

  def _test_apply(self, k_test_train: np.ndarray, c: np.ndarray) -> np.ndarray:
    """k_test_train (x) c for c [T, N K', R] -> [T, M] / [T, M, K]."""
    k = np.asarray(k_test_train, dtype=self.a.dtype)
    if self.full:
      if k.ndim != 4 or k.shape[1:] != (self.n, self.outputs, self.outputs):
        raise ValueError(f"k_test_train must be [M, N, K, K] = [M, {self.n}, {self.outputs}, "
                         f"{self.outputs}] for a full Gram. Received: shape={k.shape}")
      flat = k.transpose(0, 2, 1, 3).reshape(k.shape[0] * self.outputs, -1)  # [M K, N K]
      return np.einsum("mj,tjr->tmr", flat, c).reshape(c.shape[0], k.shape[0], self.outputs)
    if k.ndim != 2 or k.shape[1] != self.n:
      raise ValueError(f"k_test_train must be [M, N] with N = {self.n}. "
                       f"Received: k_test_train.shape={k.shape}")
    out = np.einsum("mj,tjr->tmr", k, c)  # [T, M, R]
    return out.reshape((c.shape[0], k.shape[0]) + self.y.shape[1:])

  def _eigenpairs(self):
    if self._eigh is None:
      self._eigh = np.linalg.eigh(self.a)
    return self._eigh

  def infinite(self, fx_train_0, fx_test_0, k_test_train):
    fx_train = np.broadcast_to(self.y, self.y.shape).copy()
    if fx_test_0 is None:
      return fx_train
    if self._cho is None:
      try:
        self._cho = (cholesky_upper(self.a), False)  # (U [N K', N K'], lower=False), A = U^T U
      except np.linalg.LinAlgError as e:
        raise ValueError("k_train_train + diag_reg I is not positive definite; pass "
                         "diag_reg > 0 for t=None.") from e
    rhs = self._to_columns(self.y - (0.0 if fx_train_0 is None else fx_train_0))
    delta = scipy.linalg.cho_solve(self._cho, rhs, check_finite=False)[None]  # [1, N K', R]
    fx_test = fx_test_0 + self._test_apply(k_test_train, delta)[0]
    return fx_test if fx_train_0 is None else (fx_train, fx_test)

  def finite(self, t, fx_train_0, fx_test_0, k_test_train):
    times = _check_times(t, self.learning_rate)
    lam, vecs = self._eigenpairs()
    r = self._to_columns((0.0 if fx_train_0 is None else fx_train_0) - self.y)  # [N K', R]
    proj = vecs.T @ r  # [N K', R] in the eigenbasis
    scaled = times.reshape(-1, 1) / self.normalization  # [T, 1]: eta t / n
    g = self._spectral_fn(lam, scaled).astype(lam.dtype)  # [T, N K']
    outputs = []
    if fx_train_0 is not None:
      delta = np.einsum("ij,tj,jr->tir", vecs, g, proj)  # [T, N K', R]
      outputs.append((fx_train_0 + self._from_columns(delta)).reshape(times.shape + self.y.shape))
    if fx_test_0 is not None:
      safe = np.where(np.abs(lam) > 0, np.abs(lam), 1.0)
      inv = np.where(np.abs(lam) > 0, g / safe, -scaled).astype(lam.dtype)  # g / lambda
      delta = np.einsum("ij,tj,jr->tir", vecs, inv, proj)  # [T, N K', R]
      test = fx_test_0 + self._test_apply(k_test_train, delta)
      outputs.append(test.reshape(times.shape + test.shape[1:]))
    return outputs[0] if len(outputs) == 1 else tuple(outputs)

  def __call__(self, t: ArrayOrScalar = None, fx_train_0: ArrayOrScalar = 0.0,
               fx_test_0: ArrayOrScalar = None, k_test_train: Optional[np.ndarray] = None):
    if fx_test_0 is not None and k_test_train is None:
      raise ValueError("fx_test_0 is given but k_test_train is None: test predictions need "
                       "k_test_train [M, N] (or [M, N, K, K]).")
    if fx_train_0 is not None:
      fx_train_0 = np.broadcast_to(np.asarray(fx_train_0, self.a.dtype), self.y.shape)
    if fx_test_0 is not None:
      fx_test_0 = np.asarray(fx_test_0, self.a.dtype)
    if t is None:
      return self.infinite(fx_train_0, fx_test_0, k_test_train)
    return self.finite(t, fx_train_0, fx_test_0, k_test_train)


def _continuous(lam: np.ndarray, scaled_t: np.ndarray) -> np.ndarray:
  """expm1(-max(lambda, 0) t / n), [T, NK'] (the Gram is PSD; rounding negatives are 0)."""
  with np.errstate(invalid="ignore"):
    return np.where(np.isinf(scaled_t), -1.0, np.expm1(-np.maximum(lam, 0.0) * scaled_t))


def gradient_descent_mse(k_train_train: Any, y_train: Any, learning_rate: float = 1.0,
                         diag_reg: float = 0.0, diag_reg_absolute_scale: bool = False,
                         dtype: Any = None) -> PredictFn:
  """Returns `predict_fn(t, fx_train_0, fx_test_0, k_test_train)` of gradient flow on the MSE.

  See the module docstring for the formula. `dtype` (e.g. "float64") is the precision of the
  solve; None keeps the Gram's. The returned function gives `fx_train_t`, `fx_test_t`, or both
  (`(fx_train_t, fx_test_t)`) as neural-tangents' does; t = None is the converged solution.
  """
  return _Predictor(k_train_train, y_train, learning_rate, diag_reg, diag_reg_absolute_scale,
                    dtype, _continuous)


def gradient_descent_mse_discrete(k_train_train: Any, y_train: Any, learning_rate: float = 1.0,
                                  diag_reg: float = 0.0, diag_reg_absolute_scale: bool = False,
                                  dtype: Any = None) -> PredictFn:
  """Returns `predict_fn(steps, ...)` of full-batch gradient descent with step `learning_rate`.

      f_train(k + 1) = f_train(k) - (eta / n) A (f_train(k) - y),   n = y_train.size

  after `steps` steps (an int or an array of ints; None: the limit, when eta lambda_max / n < 2).
  In the eigenbasis: (1 - eta lambda / n)^steps - 1 in place of expm1(-lambda eta t / n).
  """
  def spectral(lam: np.ndarray, scaled_steps: np.ndarray) -> np.ndarray:
    # scaled_steps = eta * steps / n; recover steps to raise (1 - eta lambda / n) to them.
    steps = np.rint(scaled_steps * predictor.normalization / predictor.learning_rate)
    factor = 1.0 - predictor.learning_rate * np.maximum(lam, 0.0) / predictor.normalization
    return np.power(factor, steps) - 1.0

  predictor = _Predictor(k_train_train, y_train, learning_rate, diag_reg, diag_reg_absolute_scale,
                         dtype, spectral)
  base_call = predictor.__call__

  def predict_fn(steps: ArrayOrScalar = None, fx_train_0: ArrayOrScalar = 0.0,
                 fx_test_0: ArrayOrScalar = None, k_test_train: Optional[np.ndarray] = None):
    if steps is not None:
      values = np.asarray(steps)
      if values.dtype.kind not in "iu" and not np.all(values == np.rint(values)):
        raise ValueError(f"steps must be whole numbers. Received: steps={steps!r}")
    else:
      lam = predictor._eigenpairs()[0]  # pylint: disable=protected-access
      if learning_rate * float(lam[-1]) / predictor.normalization >= 2:
        raise ValueError(f"Gradient descent diverges: learning_rate * lambda_max / n = "
                         f"{learning_rate * float(lam[-1]) / predictor.normalization:.3g} >= 2; "
                         f"steps=None (the limit) has no meaning. Received: "
                         f"learning_rate={learning_rate}")
    return base_call(steps, fx_train_0, fx_test_0, k_test_train)

  return predict_fn
