"""Neural anisotropy directions (NADs): right singular vectors of the mixed derivative.

    M = E_x[ d^2 f(x) / dtheta dx ]            (Theorem 1, Sec. 3.2)
    M = sum_j s_j u_j v_j^T,  s_1 >= s_2 >= ...   NADs: v_1, v_2, ...
    alpha(g_v) = ||M v||^2   for a unit v       (alignment of x -> v^T x with the NTK, Eq. 4)

As in App. C.2 the expectation is replaced by its value at the origin, M = d^2 f(0) / dtheta dx,
by default; passing a sample `x` averages over it instead. Use GeLU models (`NAD_ACTIVATION`):
with ReLU the second derivative vanishes almost everywhere and, at the origin with zero
biases, every pre-activation sits on the kink (App. C.2, after [25]).

Shape convention (whole module):
  d = H * W * C      flattened input size; the input shape `(H, W, C)` is the model's.
  P                  trainable parameters, flattened variable by variable in
                     `model.trainable_variables` order, each in row-major order.
  M                  `[P, d]`, M[p, i] = mean_n d^2 f(x_n) / dtheta_p dx_i; never stored by
                     the default method.
  N                  sample size of `x` (N = 1, x = 0 at the origin).
  B                  directions per block; k: NADs returned.
  v: `[d]` or `[H, W, C]` (input space), w: `[P]` (parameter space),
  directions: `[k, H, W, C]`.

The model is called with `training=False` (BatchNorm uses its moving statistics) and must
have a single output logit, `[N, 1]`. Computation runs in the dtype of the model's
variables; eigen/singular decompositions run in float64 on the host.

Sign convention: each returned direction is flipped so that its entry of largest absolute
value (first such entry in row-major order) is positive.
"""

import enum
import weakref
from typing import Callable, List, Optional, Tuple, Union

from absl import logging
import keras
import numpy as np
import scipy.sparse.linalg
import tensorflow as tf

from ntk_tf import validation
from ntk_tf.types import Array, Inputs

# Activation for NAD models, as in App. C.2 (`ntk_tf.models.get(..., activation=NAD_ACTIVATION)`).
NAD_ACTIVATION = "gelu"
# Paper values for the linearly separable dataset D(u) of Eq. 5 (App. C.1).
SEPARABLE_EPS = 1.0
SEPARABLE_SIGMA = 1.0
SEPARABLE_NUM_TRAIN = 10_000
SEPARABLE_NUM_TEST = 10_000

# Largest P * d for which `NadMethod.DENSE` materializes M (float64 copy: 512 MiB).
_DENSE_MAX_ENTRIES = 1 << 26
# Budget, in entries, for one `[B, P]` block of M V products (float32: 256 MiB).
_BLOCK_MAX_ENTRIES = 1 << 26
_MAX_BLOCK_SIZE = 64
_DEFAULT_BATCH_SIZE = 128

_ZERO = tf.UnconnectedGradients.ZERO


class NadMethod(enum.Enum):
  """How `nads` gets the singular vectors of M `[P, d]`.

  DENSE: materializes M (d/B blocks of B columns, each one batched reverse-over-reverse
    Jacobian), then a NumPy SVD. The reference; most accurate for small singular values.
    Memory P * d; refused when P * d > 2**26.
  GRAM: the default. Builds G = M^T M `[d, d]` in d/B blocks of columns, G[:, b] = M^T (M V_b)
    for V_b a block of identity columns, then `eigh`. Memory d^2 + O(B * P); never stores M.
    Singular values come from sqrt of eigenvalues, so those below ~sqrt(eps) * s_1 are noise.
  LANCZOS: ARPACK `eigsh` on v -> M^T (M v) (one forward-over-reverse and one
    reverse-over-reverse pass per product). Fast for the top few NADs (num << d); needs
    num < d.
  """
  DENSE = "dense"
  GRAM = "gram"
  LANCZOS = "lanczos"


class _Kernels:
  """The traced products with M for one model (cached per model; inputs are arguments)."""

  def __init__(self, model: keras.Model, variables: List[tf.Variable],
               input_shape: Tuple[int, ...]):
    self.model = model
    self.variables = variables
    self.input_shape = input_shape
    self.d = int(np.prod(input_shape))
    self.m_block = tf.function(self._m_block_impl)
    self.mt_block = tf.function(self._mt_block_impl)
    self.matvec = tf.function(self._matvec_impl)
    self.rmatvec = tf.function(self._rmatvec_impl)

  def _weighted_logit_sum(self, x_chunk: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """sum_n weights_n f(x_n); summed over chunks, its derivatives are the E_x of M."""
    logits = self.model(x_chunk, training=False)  # [n, 1]
    return tf.reduce_sum(weights * logits[:, 0])

  def _flat(self, per_variable: List[tf.Tensor], lead: Tuple = ()) -> tf.Tensor:
    return tf.concat([tf.reshape(g, lead + (-1,)) for g in per_variable], axis=-1)

  # Each kernel handles one chunk of samples; callers sum over chunks.

  def _m_block_impl(self, x_chunk, weights, v_block):
    """`[B, P]` rows (M v_b)^T, by reverse-over-reverse: grad_theta <grad_x f, v_b>."""
    num = v_block.shape[0]
    with tf.GradientTape() as outer:
      with tf.GradientTape() as inner:
        inner.watch(x_chunk)
        total = self._weighted_logit_sum(x_chunk, weights)
      grad_x = tf.reshape(inner.gradient(total, x_chunk), [-1, self.d])  # [n, d]
      # h_b = sum_n <grad_x f(x_n), v_b>, so grad_theta h_b = M v_b.
      h = tf.linalg.matvec(v_block, tf.reduce_sum(grad_x, axis=0))  # [B]
    jac = outer.jacobian(h, self.variables, unconnected_gradients=_ZERO)
    return self._flat(jac, lead=(num,))  # [B, P]

  def _mt_block_impl(self, x_chunk, weights, w_block):
    """`[B, d]` rows (M^T w_b)^T, by reverse-over-reverse: grad_x <grad_theta f, w_b>."""
    num = w_block.shape[0]
    with tf.GradientTape() as outer:
      outer.watch(x_chunk)
      with tf.GradientTape() as inner:
        total = self._weighted_logit_sum(x_chunk, weights)
      grad_theta = self._flat(inner.gradient(total, self.variables, unconnected_gradients=_ZERO))
      s = tf.linalg.matvec(w_block, grad_theta)  # [B]
    jac = outer.jacobian(s, x_chunk, unconnected_gradients=_ZERO)  # [B, n, H, W, C]
    return tf.reduce_sum(tf.reshape(jac, [num, -1, self.d]), axis=1)  # [B, d]

  def _matvec_impl(self, x_chunk, weights, v):
    """`[P]` M v, forward-over-reverse: d/dt grad_theta f(x + t v) at t = 0."""
    tangent = tf.broadcast_to(tf.reshape(v, (1,) + self.input_shape), tf.shape(x_chunk))
    with tf.autodiff.ForwardAccumulator(x_chunk, tangent) as acc:
      with tf.GradientTape() as tape:
        total = self._weighted_logit_sum(x_chunk, weights)
      grad_theta = tape.gradient(total, self.variables, unconnected_gradients=_ZERO)
    return self._flat(acc.jvp(grad_theta, unconnected_gradients=_ZERO))  # [P]

  def _rmatvec_impl(self, x_chunk, weights, w):
    """`[d]` M^T w, reverse-over-reverse: grad_x <grad_theta f(x), w>."""
    with tf.GradientTape() as outer:
      outer.watch(x_chunk)
      with tf.GradientTape() as inner:
        total = self._weighted_logit_sum(x_chunk, weights)
      grad_theta = self._flat(inner.gradient(total, self.variables, unconnected_gradients=_ZERO))
      s = tf.reduce_sum(grad_theta * w)
    grad_x = outer.gradient(s, x_chunk, unconnected_gradients=_ZERO)  # [n, H, W, C]
    return tf.reduce_sum(tf.reshape(grad_x, [-1, self.d]), axis=0)  # [d]


# model -> {ids of its trainable variables: _Kernels}; traces are reused across calls.
_KERNELS: "weakref.WeakKeyDictionary[keras.Model, dict]" = weakref.WeakKeyDictionary()


def _kernels(model: keras.Model, variables: List[tf.Variable],
             input_shape: Tuple[int, ...]) -> _Kernels:
  per_model = _KERNELS.setdefault(model, {})
  key = tuple(id(v) for v in variables)
  if key not in per_model:
    per_model[key] = _Kernels(model, variables, input_shape)
  return per_model[key]


class _Mixed:
  """Products with M for one model and one sample `x` (chunked, zero-weight padded)."""

  def __init__(self, model: keras.Model, x: Optional[Inputs], batch_size: Optional[int]):
    if not isinstance(model, keras.Model):
      raise TypeError(f"model must be a keras.Model. Received: model={model!r}")
    input_shape = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    if input_shape is None or any(s is None for s in input_shape):
      raise ValueError("model must have one input with a fully defined shape. "
                       f"Received: model.input_shape={model.input_shape}")
    output_shape = model.output_shape
    if isinstance(output_shape, list) or tuple(output_shape[1:]) != (1,):
      raise ValueError("model must have a single output logit, shape [N, 1]. "
                       f"Received: model.output_shape={output_shape}")
    variables: List[tf.Variable] = [v.value for v in model.trainable_variables]
    if not variables:
      raise ValueError(f"model has no trainable variables. Received: model={model.name!r}")
    self.kernels = _kernels(model, variables, input_shape)
    self.dtype = variables[0].dtype
    self.input_shape = input_shape
    self.d = int(np.prod(input_shape))
    self.num_params = int(sum(np.prod(v.shape) for v in variables))

    if x is None:
      x = np.zeros((1,) + input_shape)
    x = np.asarray(x)
    if x.ndim != len(input_shape) + 1 or tuple(x.shape[1:]) != input_shape or x.shape[0] < 1:
      raise ValueError(f"x must have shape [N, {', '.join(map(str, input_shape))}] with N >= 1 "
                       f"(the model input). Received: x.shape={x.shape}")
    n = x.shape[0]
    if batch_size is None:
      batch_size = min(n, _DEFAULT_BATCH_SIZE)
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
      raise ValueError(f"batch_size must be a positive int. Received: batch_size={batch_size!r}")
    batch_size = min(int(batch_size), n)
    # Chunks of `batch_size` samples, the last padded with zeros of weight 0 (no retracing).
    num_chunks = -(-n // batch_size)
    padded = np.zeros((num_chunks * batch_size,) + input_shape, x.dtype)
    padded[:n] = x
    weights = np.zeros(num_chunks * batch_size)
    weights[:n] = 1.0 / n  # The mean over the sample: E_x.
    self.chunks = [(tf.constant(padded[i:i + batch_size], self.dtype),
                    tf.constant(weights[i:i + batch_size], self.dtype))
                   for i in range(0, len(padded), batch_size)]
    self.np_dtype = self.dtype.as_numpy_dtype

  # -- public-facing products (host arrays, summed over chunks) ------------------------------

  def _sum_chunks(self, fn: Callable, arg: Array) -> Array:
    arg = tf.constant(arg, self.dtype)
    total = None
    for x_chunk, weights in self.chunks:
      part = fn(x_chunk, weights, arg).numpy()
      total = part if total is None else total + part
    return total

  def matvec(self, v: Array) -> Array:
    return self._sum_chunks(self.kernels.matvec, v)

  def rmatvec(self, w: Array) -> Array:
    return self._sum_chunks(self.kernels.rmatvec, w)

  def m_block(self, v_block: Array) -> Array:
    return self._sum_chunks(self.kernels.m_block, v_block)

  def mt_block(self, w_block: Array) -> Array:
    return self._sum_chunks(self.kernels.mt_block, w_block)

  def block_size(self, block_size: Optional[int]) -> int:
    if block_size is None:
      return int(max(1, min(_MAX_BLOCK_SIZE, _BLOCK_MAX_ENTRIES // self.num_params, self.d)))
    if not isinstance(block_size, (int, np.integer)) or block_size < 1:
      raise ValueError(f"block_size must be a positive int. Received: block_size={block_size!r}")
    return int(min(block_size, self.d))

  def identity_blocks(self, block_size: int):
    """Yields (start, stop, V) with V `[B, d]` rows e_start..e_stop-1, zero-padded to B rows."""
    for start in range(0, self.d, block_size):
      stop = min(start + block_size, self.d)
      v_block = np.zeros((block_size, self.d), self.np_dtype)
      v_block[np.arange(stop - start), np.arange(start, stop)] = 1.0
      yield start, stop, v_block


def _check_vector(name: str, value: Inputs, size: int, ndims: Tuple[int, ...],
                  shape_text: str) -> np.ndarray:
  value = np.asarray(value)
  if value.size != size or value.ndim not in ndims:
    raise ValueError(f"{name} must have {size} entries ({shape_text}). "
                     f"Received: {name}.shape={value.shape}")
  return value.reshape(size)


parameter_count = validation.parameter_count  # The old name of this module.


def mixed_derivative_matvec(model: keras.Model, v: Inputs, x: Optional[Inputs] = None, *,
                            batch_size: Optional[int] = None) -> Array:
  """Returns M v, the mixed derivative applied to an input-space vector.

      M v = mean_n d/dt grad_theta f(x_n + t v) |_{t=0}     (forward-over-reverse)

  Args:
    model: Keras model with one logit, input `[N, H, W, C]`.
    v: `[d]` or `[H, W, C]`.
    x: `[N, H, W, C]` sample to average over; None for the origin (App. C.2).
    batch_size: samples of `x` per pass.

  Returns:
    `[P]` in the module's parameter order.

  Theorem 1 (Sec. 3.2).
  """
  mixed = _Mixed(model, x, batch_size)
  return mixed.matvec(_check_vector("v", v, mixed.d, (1, len(mixed.input_shape)),
                                     f"[{mixed.d}] or {list(mixed.input_shape)}"))


def mixed_derivative_rmatvec(model: keras.Model, w: Inputs, x: Optional[Inputs] = None, *,
                             batch_size: Optional[int] = None) -> Array:
  """Returns M^T w, the transposed mixed derivative applied to a parameter-space vector.

      M^T w = mean_n grad_x <grad_theta f(x_n), w>     (reverse-over-reverse)

  Args:
    model: Keras model with one logit.
    w: `[P]` in the module's parameter order.
    x: `[N, H, W, C]` sample to average over; None for the origin.
    batch_size: samples of `x` per pass.

  Returns:
    `[d]`, the flattened input-space vector.
  """
  mixed = _Mixed(model, x, batch_size)
  return mixed.rmatvec(_check_vector("w", w, mixed.num_params, (1,), f"[{mixed.num_params}]"))


def mixed_derivative(model: keras.Model, x: Optional[Inputs] = None, *,
                     block_size: Optional[int] = None,
                     batch_size: Optional[int] = None) -> Array:
  """Returns the dense mixed derivative M = E_x[d^2 f / dtheta dx]; for small P * d only.

  Args:
    model: Keras model with one logit.
    x: `[N, H, W, C]` sample to average over; None for the origin.
    block_size: input coordinates per batched pass.
    batch_size: samples of `x` per pass.

  Returns:
    `[P, d]`.
  """
  mixed = _Mixed(model, x, batch_size)
  return _dense_m(mixed, mixed.block_size(block_size))


def _dense_m(mixed: _Mixed, block_size: int) -> Array:
  entries = mixed.num_params * mixed.d
  if entries > _DENSE_MAX_ENTRIES:
    raise ValueError(f"Dense M needs P * d <= {_DENSE_MAX_ENTRIES} entries; use "
                     f"NadMethod.GRAM. Received: P * d = {mixed.num_params} * {mixed.d} = {entries}")
  m_transposed = np.zeros((mixed.d, mixed.num_params), mixed.np_dtype)  # [d, P]
  for start, stop, v_block in mixed.identity_blocks(block_size):
    m_transposed[start:stop] = mixed.m_block(v_block)[:stop - start]  # [B, P]
  return m_transposed.T  # [P, d]


def mixed_derivative_gram(model: keras.Model, x: Optional[Inputs] = None, *,
                          block_size: Optional[int] = None,
                          batch_size: Optional[int] = None) -> Array:
  """Returns G = M^T M, built column block by column block without storing M.

      G[:, b] = M^T (M V_b),   V_b = identity columns of block b   (d / B passes of each kind)

  Args:
    model: Keras model with one logit.
    x: `[N, H, W, C]` sample to average over; None for the origin.
    block_size: B, columns per pass; None picks min(64, 2**26 // P).
    batch_size: samples of `x` per pass.

  Returns:
    `[d, d]` symmetric positive semi-definite, float64.
  """
  mixed = _Mixed(model, x, batch_size)
  return _gram(mixed, mixed.block_size(block_size))


def _gram(mixed: _Mixed, block_size: int) -> Array:
  gram = np.zeros((mixed.d, mixed.d), np.float64)  # [d, d]
  num_blocks = -(-mixed.d // block_size)
  for i, (start, stop, v_block) in enumerate(mixed.identity_blocks(block_size)):
    m_v = mixed.m_block(v_block)  # [B, P], rows (M e_i)^T
    gram[start:stop] = mixed.mt_block(m_v)[:stop - start]  # [B, d], rows (M^T M e_i)^T
    if (i + 1) % 10 == 0 or i + 1 == num_blocks:
      logging.info("M^T M: block %d/%d (columns %d..%d of %d)", i + 1, num_blocks, start,
                   stop - 1, mixed.d)
  return 0.5 * (gram + gram.T)


def _check_num(num: Optional[int], d: int, method: NadMethod) -> int:
  if num is None:
    num = d
  if not isinstance(num, (int, np.integer)) or not 1 <= num <= d:
    raise ValueError(f"num must be an int in [1, d = {d}]. Received: num={num!r}")
  if method is NadMethod.LANCZOS and num >= d:
    raise ValueError(f"NadMethod.LANCZOS needs num < d = {d}; use NadMethod.GRAM. "
                     f"Received: num={num}")
  return int(num)


def nads(model: keras.Model, *, num: Optional[int] = None, x: Optional[Inputs] = None,
         method: Union[NadMethod, str] = NadMethod.GRAM, block_size: Optional[int] = None,
         batch_size: Optional[int] = None, seed: int = 0) -> Tuple[Array, Array]:
  """Returns the first `num` NADs: right singular vectors of M = E_x[d^2 f / dtheta dx].

      M = U diag(s) V^T,   s descending,   directions = rows of V^T,
      alpha(g_{v_j}) = ||M v_j||^2 = s_j^2   (Theorem 1)

  M is taken at x = 0 (App. C.2) unless a sample `x` is given. Each direction is signed so
  that its largest-|.| entry is positive (see the module docstring).

  Args:
    model: Keras model with one logit; GeLU (`NAD_ACTIVATION`) as in App. C.2.
    num: k, how many NADs; None for all d.
    x: `[N, H, W, C]` sample to average M over; None for the origin.
    method: a `NadMethod` (or its value); GRAM, matrix-free, by default.
    block_size: B, input directions per batched pass (DENSE, GRAM); None picks
      min(64, 2**26 // P).
    batch_size: samples of `x` per pass.
    seed: start vector of LANCZOS.

  Returns:
    singular_values: `[k]` descending, float64.
    directions: `[k, H, W, C]`, orthonormal rows, float64.

  Sec. 3.2, Theorem 1; App. C.2; Fig. 10.
  """
  try:
    method = NadMethod(method)
  except ValueError:
    raise ValueError(f"method must be one of {[m.value for m in NadMethod]}. "
                     f"Received: method={method!r}") from None
  mixed = _Mixed(model, x, batch_size)
  num = _check_num(num, mixed.d, method)
  for layer in model.layers:
    if getattr(getattr(layer, "activation", None), "__name__", "") == "relu":
      logging.warning("nads: layer %r uses ReLU; App. C.2 uses GeLU (NAD_ACTIVATION) because "
                      "the mixed derivative of ReLU networks is degenerate.", layer.name)
      break
  d = mixed.d
  if method is NadMethod.DENSE:
    m = _dense_m(mixed, mixed.block_size(block_size)).astype(np.float64)  # [P, d]
    _, s, vh = np.linalg.svd(m, full_matrices=m.shape[0] < d)  # vh [d, d] or [P, d]
    singular_values = np.concatenate([s, np.zeros(d - len(s))])[:num]
    directions = vh[:num]  # [k, d]
  elif method is NadMethod.GRAM:
    gram = _gram(mixed, mixed.block_size(block_size))  # [d, d]
    eigvals, eigvecs = np.linalg.eigh(gram)  # ascending
    order = np.argsort(eigvals)[::-1][:num]
    singular_values = np.sqrt(np.clip(eigvals[order], 0.0, None))
    directions = eigvecs[:, order].T  # [k, d]
  else:
    operator = scipy.sparse.linalg.LinearOperator(
        (d, d), dtype=np.float64,
        matvec=lambda v: mixed.rmatvec(mixed.matvec(np.ravel(v))).astype(np.float64))
    start = np.random.default_rng(seed).standard_normal(d)
    tol = 0.0 if mixed.dtype == tf.float64 else 1e-6
    eigvals, eigvecs = scipy.sparse.linalg.eigsh(operator, k=num, which="LA", v0=start, tol=tol)
    order = np.argsort(eigvals)[::-1]
    singular_values = np.sqrt(np.clip(eigvals[order], 0.0, None))
    directions = eigvecs[:, order].T  # [k, d]
  directions = validation.sign_convention(directions, axis=1)  # [k, d] rows
  return singular_values, directions.reshape((num,) + mixed.input_shape)  # [k, H, W, C]


def nad_alignment(model: keras.Model, directions: Inputs, x: Optional[Inputs] = None, *,
                  block_size: Optional[int] = None,
                  batch_size: Optional[int] = None) -> Array:
  """Returns the NTK alignment of x -> v_j^T x for each direction: alpha_j = ||M v_j||^2.

  Each direction is scaled to unit norm first (Theorem 1 takes u on the unit sphere).

  Args:
    model: Keras model with one logit.
    directions: `[k, H, W, C]` (or `[k, d]`), nonzero rows.
    x: `[N, H, W, C]` sample to average M over; None for the origin.
    block_size: directions per batched pass.
    batch_size: samples of `x` per pass.

  Returns:
    `[k]` float64.

  Theorem 1, Eq. 4; Fig. 4 (right).
  """
  mixed = _Mixed(model, x, batch_size)
  directions = np.asarray(directions)
  if directions.ndim < 2 or directions[0].size != mixed.d or directions.shape[0] < 1:
    raise ValueError(f"directions must have shape [k, {', '.join(map(str, mixed.input_shape))}] "
                     f"or [k, {mixed.d}] (the model input). Received: "
                     f"directions.shape={directions.shape}")
  flat = directions.reshape(len(directions), mixed.d).astype(np.float64)  # [k, d]
  norms = np.linalg.norm(flat, axis=1)
  if np.any(norms == 0) or not np.all(np.isfinite(norms)):
    raise ValueError("directions must be finite and nonzero. Received: row norms "
                     f"{norms[(norms == 0) | ~np.isfinite(norms)][:5]} at rows "
                     f"{np.flatnonzero((norms == 0) | ~np.isfinite(norms))[:5]}")
  unit = flat / norms[:, None]
  block_size = mixed.block_size(block_size)
  alignment = np.zeros(len(unit))
  for start in range(0, len(unit), block_size):
    v_block = np.zeros((block_size, mixed.d), mixed.np_dtype)  # [B, d], zero-padded
    rows = unit[start:start + block_size]
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
    y: `[n]` int64 in {-1, +1} (the binary-label convention of `ntk_tf.data`).

  App. C.1, Eq. 5 (from [25]).
  """
  u = np.asarray(u, np.float64)
  if u.ndim < 1 or u.size < 2:
    raise ValueError(f"u must be an array with at least 2 entries (e.g. [H, W, C]). "
                     f"Received: u.shape={u.shape}")
  norm = np.linalg.norm(u)
  if not np.isfinite(norm) or norm == 0:
    raise ValueError(f"u must be finite and nonzero. Received: ||u|| = {norm}")
  if not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"n must be a positive int. Received: n={n!r}")
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
    "NAD_ACTIVATION", "NadMethod", "mixed_derivative", "mixed_derivative_gram",
    "mixed_derivative_matvec", "mixed_derivative_rmatvec", "nad_alignment", "nads",
    "parameter_count", "separable_dataset",
]
