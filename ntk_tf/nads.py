"""Neural anisotropy directions (NADs), their NTK alignment, and the dataset D(u) that tests them.

    M = E_x[ grad^2_{x,theta} f(x) ]  [P, d]   (Theorem 1, Sec. 3.2; `ntk_tf.mixed_derivative`)
    M = sum_j s_j u_j v_j^T,  s_1 >= s_2 >= ...   NADs: v_1, v_2, ...  (right singular vectors)
    alpha(g_v) = ||M v||^2   for a unit v, g_v(x) = v^T x      (Theorem 1, Eq. 4)
    D(u):  x = eps y u + w,  w ~ N(0, sigma (I - u u^T)),  y ~ U{-1, +1}   (App. C.1, Eq. 5)

As in App. C.2 the expectation is replaced by its value at the origin, M = d^2 f(0) / dtheta dx,
by default; passing a sample `x` averages over it instead. Use GeLU models (`NAD_ACTIVATION`):
with ReLU the second derivative vanishes almost everywhere and, at the origin with zero
biases, every pre-activation sits on the kink (App. C.2, after [25]).

Shape convention (whole module):
  d = H * W * C      flattened input size; the input shape `(H, W, C)` is the model's.
  P                  trainable parameters (order of `ntk_tf.mixed_derivative`).
  N                  sample size of `x` (N = 1, x = 0 at the origin).
  B                  input-space directions per batched pass (`directions_per_pass`).
  k                  NADs returned or directions given.
  directions: `[k, H, W, C]`, one direction per row, stacked like a batch of inputs
  (the library's rule for sets of vectors: see `ntk_tf/__init__.py`).

The model is called with `training=False` (BatchNorm uses its moving statistics) and must
have a single output logit. Computation runs in the dtype of the model's variables;
eigen/singular decompositions run in float64 on the host.

Sign convention (`ntk_tf.validation.sign_convention`): each returned direction is flipped so
that its entry of largest absolute value (first such entry in row-major order) is positive.
"""

import enum
from typing import Optional, Tuple, Union

from absl import logging
import keras
import numpy as np
import scipy.sparse.linalg
import tensorflow as tf

from ntk_tf import validation
from ntk_tf.mixed_derivative import MixedDerivative
from ntk_tf.mixed_derivative import mixed_derivative
from ntk_tf.mixed_derivative import mixed_derivative_matvec
from ntk_tf.mixed_derivative import mixed_derivative_mtm
from ntk_tf.mixed_derivative import mixed_derivative_rmatvec
from ntk_tf.types import Array, Inputs

# Activation for NAD models, as in App. C.2 (`ntk_tf.models.get(..., activation=NAD_ACTIVATION)`).
NAD_ACTIVATION = "gelu"
# Paper values for the linearly separable dataset D(u) of Eq. 5 (App. C.1).
SEPARABLE_EPS = 1.0
SEPARABLE_SIGMA = 1.0
SEPARABLE_NUM_TRAIN = 10_000
SEPARABLE_NUM_TEST = 10_000


class NadMethod(enum.Enum):
  """How `nads` gets the right singular vectors of M `[P, d]`.

  DENSE: materializes M (d/B passes, each a batched reverse-over-reverse Jacobian of B
    columns), then a NumPy SVD. The reference; most accurate for small singular values.
    Memory P * d; refused when P * d > 2**26.
  MTM: the default. Builds the normal matrix M^T M `[d, d]` in d/B blocks of columns,
    (M^T M)[:, b] = M^T (M V_b) for V_b a block of identity columns, then `eigh`. Memory
    d^2 + O(B * P); never stores M. Singular values come from sqrt of eigenvalues, so those
    below ~sqrt(eps) * s_1 are noise.
  LANCZOS: ARPACK `eigsh` on v -> M^T (M v) (one forward-over-reverse and one
    reverse-over-reverse pass per product). Fast for the top few NADs (k << d); needs
    k < d.
  """
  DENSE = "dense"
  MTM = "mtm"
  LANCZOS = "lanczos"


def _check_method(method: Union[NadMethod, str]) -> NadMethod:
  try:
    return NadMethod(method)
  except ValueError:
    raise ValueError(f"method must be one of {[m.value for m in NadMethod]}. "
                     f"Received: method={method!r}") from None


def _warn_if_relu(model: keras.Model) -> None:
  for layer in model.layers:
    if getattr(getattr(layer, "activation", None), "__name__", "") == "relu":
      logging.warning("nads: layer %r uses ReLU; App. C.2 uses GeLU (NAD_ACTIVATION) because "
                      "the mixed derivative of ReLU networks is degenerate.", layer.name)
      return


def nads(model: keras.Model, *, k: Optional[int] = None, x: Optional[Inputs] = None,
         method: Union[NadMethod, str] = NadMethod.MTM,
         directions_per_pass: Optional[int] = None, batch_size: Optional[int] = None,
         seed: int = 0) -> Tuple[Array, Array]:
  """Returns the first k NADs: right singular vectors of M = E_x[d^2 f / dtheta dx].

      M = U diag(s) V^T,   s descending,   directions = rows of V^T,
      alpha(g_{v_j}) = ||M v_j||^2 = s_j^2   (Theorem 1, Eq. 4)

  M is taken at x = 0 (App. C.2) unless a sample `x` is given. Each direction is signed so
  that its largest-|.| entry is positive (see the module docstring).

  Args:
    model: Keras model with one logit; GeLU (`NAD_ACTIVATION`) as in App. C.2.
    k: how many NADs, 1 <= k <= d; None for all d.
    x: `[N, H, W, C]` sample to average M over; None for the origin.
    method: a `NadMethod` (or its value); MTM, matrix-free, by default.
    directions_per_pass: B, input directions per batched pass (DENSE, MTM); None picks
      min(64, 2**26 // P).
    batch_size: samples of `x` per pass.
    seed: start vector of LANCZOS.

  Returns:
    singular_values: `[k]` descending, float64.
    directions: `[k, H, W, C]`, orthonormal rows, float64.

  Sec. 3.2, Theorem 1; App. C.2; Fig. 10.
  """
  method = _check_method(method)
  mixed = MixedDerivative(model, x, batch_size)
  d = mixed.d
  k = validation.check_k(k, d)
  if method is NadMethod.LANCZOS and k >= d:
    raise ValueError(f"NadMethod.LANCZOS needs k < d = {d}; use NadMethod.MTM. Received: k={k}")
  _warn_if_relu(model)
  if method is NadMethod.DENSE:
    m = mixed.dense(mixed.directions_per_pass(directions_per_pass)).astype(np.float64)  # [P, d]
    _, s, vh = np.linalg.svd(m, full_matrices=m.shape[0] < d)  # vh [d, d] or [P, d]
    singular_values = np.concatenate([s, np.zeros(d - len(s))])[:k]
    directions = vh[:k]  # [k, d]
  elif method is NadMethod.MTM:
    mtm = mixed.mtm(mixed.directions_per_pass(directions_per_pass))  # [d, d]
    eigvals, eigvecs = np.linalg.eigh(mtm)  # ascending
    order = np.argsort(eigvals)[::-1][:k]
    singular_values = np.sqrt(np.clip(eigvals[order], 0.0, None))
    directions = eigvecs[:, order].T  # [k, d]
  else:
    operator = scipy.sparse.linalg.LinearOperator(
        (d, d), dtype=np.float64,
        matvec=lambda v: mixed.rmatvec(mixed.matvec(np.ravel(v))).astype(np.float64))
    start = np.random.default_rng(seed).standard_normal(d)  # [d]
    tol = 0.0 if mixed.dtype == tf.float64 else 1e-6
    eigvals, eigvecs = scipy.sparse.linalg.eigsh(operator, k=k, which="LA", v0=start, tol=tol)
    order = np.argsort(eigvals)[::-1]
    singular_values = np.sqrt(np.clip(eigvals[order], 0.0, None))
    directions = eigvecs[:, order].T  # [k, d]
  directions = validation.sign_convention(directions, axis=1)  # [k, d] rows
  return singular_values, directions.reshape((k,) + mixed.input_shape)  # [k, H, W, C]


def nad_alignment(model: keras.Model, directions: Inputs, x: Optional[Inputs] = None, *,
                  directions_per_pass: Optional[int] = None,
                  batch_size: Optional[int] = None) -> Array:
  """Returns the NTK alignment of x -> v_j^T x for each direction: alpha_j = ||M v_j||^2.

  Each direction is scaled to unit norm first (Theorem 1 takes u on the unit sphere).

  Args:
    model: Keras model with one logit.
    directions: `[k, H, W, C]` (or `[k, d]`), nonzero rows.
    x: `[N, H, W, C]` sample to average M over; None for the origin.
    directions_per_pass: B, directions per batched pass.
    batch_size: samples of `x` per pass.

  Returns:
    `[k]` float64.

  Theorem 1, Eq. 4; Fig. 4 (right).
  """
  mixed = MixedDerivative(model, x, batch_size)
  directions = np.asarray(directions)
  if directions.ndim < 2 or directions[0].size != mixed.d or directions.shape[0] < 1:
    raise ValueError(f"directions must have shape [k, {', '.join(map(str, mixed.input_shape))}] "
                     f"or [k, {mixed.d}] (the model input). Received: "
                     f"directions.shape={directions.shape}")
  flat = directions.reshape(len(directions), mixed.d).astype(np.float64)  # [k, d]
  norms = np.linalg.norm(flat, axis=1)  # [k]
  bad = (norms == 0) | ~np.isfinite(norms)
  if np.any(bad):
    raise ValueError("directions must be finite and nonzero. Received: row norms "
                     f"{norms[bad][:5]} at rows {np.flatnonzero(bad)[:5]}")
  unit = flat / norms[:, None]  # [k, d]
  per_pass = mixed.directions_per_pass(directions_per_pass)
  alignment = np.zeros(len(unit))  # [k]
  for start in range(0, len(unit), per_pass):
    v_block = np.zeros((per_pass, mixed.d), mixed.np_dtype)  # [B, d], zero-padded
    rows = unit[start:start + per_pass]
    v_block[:len(rows)] = rows
    m_v = mixed.m_block(v_block)[:len(rows)].astype(np.float64)  # [b, P]
    alignment[start:start + len(rows)] = np.sum(m_v**2, axis=1)
  return alignment


def separable_dataset(u: Inputs, n: int, *, eps: float = SEPARABLE_EPS,
                      sigma: float = SEPARABLE_SIGMA, seed: int = 0) -> Tuple[Array, Array]:
  """Returns n samples of the linearly separable dataset D(u) of Eq. 5.

      x = eps * y * u + w,   w ~ N(0, sigma (I - u u^T)),   y ~ U{-1, +1}

  `u` is scaled to unit norm. `sigma` is the variance of w in every direction orthogonal to
  u: w = sqrt(sigma) * (g - u (u^T g)) with g ~ N(0, I), so u^T w = 0 exactly (up to
  rounding) and Cov(w) = sigma (I - u u^T).

  Args:
    u: the direction, any shape (e.g. `[H, W, C]`, a NAD); nonzero and finite.
    n: number of samples.
    eps: margin along u (1 in App. C.1).
    sigma: noise variance orthogonal to u (1 in App. C.1).
    seed: NumPy generator seed.

  Returns:
    x: `[n, *u.shape]` float32.
    y: `[n]` int64 in {-1, +1} (the label convention of `ntk_tf`).

  App. C.1, Eq. 5 (from [25]).
  """
  u = np.asarray(u, np.float64)
  if u.ndim < 1 or u.size < 2:
    raise ValueError(f"u must be an array with at least 2 entries (e.g. [H, W, C]). "
                     f"Received: u.shape={u.shape}")
  norm = np.linalg.norm(u)
  if not np.isfinite(norm) or norm == 0:
    raise ValueError(f"u must be finite and nonzero. Received: ||u|| = {norm}")
  n = validation.check_positive_int(n, "n")
  if not np.isfinite(eps):
    raise ValueError(f"eps must be finite. Received: eps={eps!r}")
  if not (np.isfinite(sigma) and sigma >= 0):
    raise ValueError(f"sigma must be a finite variance >= 0. Received: sigma={sigma!r}")
  unit = u.ravel() / norm  # [d]
  rng = np.random.default_rng(seed)
  y = rng.choice(np.array([-1, 1], np.int64), size=n)  # [n]
  g = rng.standard_normal((n, unit.size))  # [n, d]
  w = np.sqrt(sigma) * (g - np.outer(g @ unit, unit))  # [n, d], projected off u
  x = eps * y[:, None] * unit[None, :] + w  # [n, d]
  return x.reshape((n,) + u.shape).astype(np.float32), y


__all__ = [
    "NAD_ACTIVATION", "NadMethod", "mixed_derivative", "mixed_derivative_matvec",
    "mixed_derivative_mtm", "mixed_derivative_rmatvec", "nad_alignment", "nads",
    "separable_dataset",
]
