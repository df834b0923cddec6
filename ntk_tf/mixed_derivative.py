"""The mixed derivative M = E_x[d^2 f(x) / dtheta dx] of Theorem 1, and its products.

    M = E_x[ grad^2_{x,theta} f_theta0(x) ]                         (Theorem 1, Eq. 4, Sec. 3.2)
    M v   = E_x d/dt grad_theta f(x + t v) |_{t=0}                  (forward-over-reverse)
    M^T w = E_x grad_x <grad_theta f(x), w>                         (reverse-over-reverse)
    M^T M = G,   G[:, b] = M^T (M V_b),  V_b a block of identity columns

As in App. C.2 the expectation is replaced by its value at the origin, M = d^2 f(0) / dtheta dx,
by default; passing a sample `x` averages over it instead (the mean over the N samples).

Shape convention (whole module):
  d = H * W * C      flattened input size; the input shape `(H, W, C)` is the model's.
  P                  trainable parameters, flattened variable by variable in
                     `model.trainable_variables` order, each in row-major order.
  M                  `[P, d]`, M[p, i] = mean_n d^2 f(x_n) / dtheta_p dx_i.
  N                  sample size of `x` (N = 1, x = 0 at the origin); n: samples per pass.
  B                  input-space directions per batched pass (`directions_per_pass`).
  v: `[d]` or `[H, W, C]` (input space), w: `[P]` (parameter space).

The model is called with `training=False` (BatchNorm uses its moving statistics) and must
have a single output logit. Products run in the dtype of the model's variables.
"""

from typing import Callable, List, Optional, Tuple
import weakref

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from ntk_tf import validation
from ntk_tf.types import Array, Inputs

# Largest P * d for which `dense` materializes M (float64 copy: 512 MiB).
DENSE_MAX_ENTRIES = 1 << 26
# Budget, in entries, for one `[B, P]` block of M V products (float32: 256 MiB).
_BLOCK_MAX_ENTRIES = 1 << 26
_MAX_DIRECTIONS_PER_PASS = 64
_DEFAULT_BATCH_SIZE = 128

_ZERO = tf.UnconnectedGradients.ZERO


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
    logits = tf.reshape(self.model(x_chunk, training=False), [-1])  # [n]
    return tf.reduce_sum(weights * logits)

  def _flat(self, per_variable: List[tf.Tensor], lead: Tuple = ()) -> tf.Tensor:
    return tf.concat([tf.reshape(g, lead + (-1,)) for g in per_variable], axis=-1)

  # Each kernel handles one chunk of samples; callers sum over chunks.

  def _m_block_impl(self, x_chunk, weights, v_block):
    """`[B, P]` rows (M v_b)^T, by reverse-over-reverse: grad_theta <grad_x f, v_b>."""
    num_directions = v_block.shape[0]
    with tf.GradientTape() as outer:
      with tf.GradientTape() as inner:
        inner.watch(x_chunk)
        total = self._weighted_logit_sum(x_chunk, weights)
      grad_x = tf.reshape(inner.gradient(total, x_chunk), [-1, self.d])  # [n, d]
      # h_b = sum_n <grad_x f(x_n), v_b>, so grad_theta h_b = M v_b.
      h = tf.linalg.matvec(v_block, tf.reduce_sum(grad_x, axis=0))  # [B]
    jac = outer.jacobian(h, self.variables, unconnected_gradients=_ZERO)
    return self._flat(jac, lead=(num_directions,))  # [B, P]

  def _mt_block_impl(self, x_chunk, weights, w_block):
    """`[B, d]` rows (M^T w_b)^T, by reverse-over-reverse: grad_x <grad_theta f, w_b>."""
    num_directions = w_block.shape[0]
    with tf.GradientTape() as outer:
      outer.watch(x_chunk)
      with tf.GradientTape() as inner:
        total = self._weighted_logit_sum(x_chunk, weights)
      grad_theta = self._flat(inner.gradient(total, self.variables, unconnected_gradients=_ZERO))
      s = tf.linalg.matvec(w_block, grad_theta)  # [B]
    jac = outer.jacobian(s, x_chunk, unconnected_gradients=_ZERO)  # [B, n, H, W, C]
    return tf.reduce_sum(tf.reshape(jac, [num_directions, -1, self.d]), axis=1)  # [B, d]

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


class MixedDerivative:
  """Products with M `[P, d]` for one model and one sample `x` (chunked, zero-weight padded).

  Args:
    model: Keras model with one logit, input `[N, H, W, C]` of fully defined shape.
    x: `[N, H, W, C]` sample to average over; None for the origin (App. C.2).
    batch_size: samples of `x` per pass (default min(N, 128)).
  """

  def __init__(self, model: keras.Model, x: Optional[Inputs], batch_size: Optional[int]):
    if not isinstance(model, keras.Model):
      raise TypeError(f"model must be a keras.Model. Received: model={model!r}")
    input_shape = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    if input_shape is None or any(s is None for s in input_shape):
      raise ValueError("model must have one input with a fully defined shape. "
                       f"Received: model.input_shape={model.input_shape}")
    validation.check_single_logit(model)
    variables: List[tf.Variable] = [v.value for v in model.trainable_variables]
    self.kernels = _kernels(model, variables, input_shape)
    self.dtype = variables[0].dtype
    self.np_dtype = self.dtype.as_numpy_dtype
    self.input_shape = input_shape
    self.d = int(np.prod(input_shape))
    self.num_params = validation.parameter_count(model)

    x = validation.check_inputs(model, np.zeros((1,) + input_shape) if x is None else x, "x")
    n = x.shape[0]
    batch_size = min(n, _DEFAULT_BATCH_SIZE) if batch_size is None else min(
        validation.check_positive_int(batch_size, "batch_size"), n)
    # Chunks of `batch_size` samples, the last padded with zeros of weight 0 (no retracing).
    num_chunks = -(-n // batch_size)
    padded = np.zeros((num_chunks * batch_size,) + input_shape, x.dtype)  # [N', H, W, C]
    padded[:n] = x
    weights = np.zeros(num_chunks * batch_size)  # [N']
    weights[:n] = 1.0 / n  # The mean over the sample: E_x.
    self.chunks = [(tf.constant(padded[i:i + batch_size], self.dtype),
                    tf.constant(weights[i:i + batch_size], self.dtype))
                   for i in range(0, len(padded), batch_size)]

  def _sum_chunks(self, fn: Callable, arg: Array) -> Array:
    arg = tf.constant(arg, self.dtype)
    total = None
    for x_chunk, weights in self.chunks:
      part = fn(x_chunk, weights, arg).numpy()
      total = part if total is None else total + part
    return total

  def matvec(self, v: Array) -> Array:
    """`[d]` -> `[P]`: M v."""
    return self._sum_chunks(self.kernels.matvec, v)

  def rmatvec(self, w: Array) -> Array:
    """`[P]` -> `[d]`: M^T w."""
    return self._sum_chunks(self.kernels.rmatvec, w)

  def m_block(self, v_block: Array) -> Array:
    """`[B, d]` -> `[B, P]`: rows (M v_b)^T."""
    return self._sum_chunks(self.kernels.m_block, v_block)

  def mt_block(self, w_block: Array) -> Array:
    """`[B, P]` -> `[B, d]`: rows (M^T w_b)^T."""
    return self._sum_chunks(self.kernels.mt_block, w_block)

  def directions_per_pass(self, value: Optional[int]) -> int:
    """Returns B: `value` checked and capped at d; None picks min(64, 2**26 // P, d)."""
    if value is None:
      return int(max(1, min(_MAX_DIRECTIONS_PER_PASS, _BLOCK_MAX_ENTRIES // self.num_params,
                            self.d)))
    return min(validation.check_positive_int(value, "directions_per_pass"), self.d)

  def identity_blocks(self, directions_per_pass: int):
    """Yields (start, stop, V) with V `[B, d]` rows e_start..e_stop-1, zero-padded to B rows."""
    for start in range(0, self.d, directions_per_pass):
      stop = min(start + directions_per_pass, self.d)
      v_block = np.zeros((directions_per_pass, self.d), self.np_dtype)  # [B, d]
      v_block[np.arange(stop - start), np.arange(start, stop)] = 1.0
      yield start, stop, v_block

  def dense(self, directions_per_pass: int) -> Array:
    """Returns M `[P, d]`, d / B passes of M V_b; refused when P * d > 2**26."""
    entries = self.num_params * self.d
    if entries > DENSE_MAX_ENTRIES:
      raise ValueError(f"Dense M needs P * d <= {DENSE_MAX_ENTRIES} entries; use NadMethod.MTM. "
                       f"Received: P * d = {self.num_params} * {self.d} = {entries}")
    m_transposed = np.zeros((self.d, self.num_params), self.np_dtype)  # [d, P]
    for start, stop, v_block in self.identity_blocks(directions_per_pass):
      m_transposed[start:stop] = self.m_block(v_block)[:stop - start]  # [B, P]
    return m_transposed.T  # [P, d]

  def mtm(self, directions_per_pass: int) -> Array:
    """Returns G = M^T M `[d, d]` float64, symmetrized, without storing M."""
    gram = np.zeros((self.d, self.d), np.float64)  # [d, d]
    num_blocks = -(-self.d // directions_per_pass)
    for i, (start, stop, v_block) in enumerate(self.identity_blocks(directions_per_pass)):
      m_v = self.m_block(v_block)  # [B, P], rows (M e_i)^T
      gram[start:stop] = self.mt_block(m_v)[:stop - start]  # [B, d], rows (M^T M e_i)^T
      if (i + 1) % 10 == 0 or i + 1 == num_blocks:
        logging.info("M^T M: block %d/%d (columns %d..%d of %d)", i + 1, num_blocks, start,
                     stop - 1, self.d)
    return 0.5 * (gram + gram.T)


def _check_vector(name: str, value: Inputs, size: int, ndims: Tuple[int, ...],
                  shape_text: str) -> np.ndarray:
  value = np.asarray(value)
  if value.size != size or value.ndim not in ndims:
    raise ValueError(f"{name} must have {size} entries ({shape_text}). "
                     f"Received: {name}.shape={value.shape}")
  return value.reshape(size)


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
  mixed = MixedDerivative(model, x, batch_size)
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

  Theorem 1 (Sec. 3.2).
  """
  mixed = MixedDerivative(model, x, batch_size)
  return mixed.rmatvec(_check_vector("w", w, mixed.num_params, (1,), f"[{mixed.num_params}]"))


def mixed_derivative(model: keras.Model, x: Optional[Inputs] = None, *,
                     directions_per_pass: Optional[int] = None,
                     batch_size: Optional[int] = None) -> Array:
  """Returns the dense mixed derivative M = E_x[d^2 f / dtheta dx]; for small P * d only.

      M[:, i] = M e_i,   built d / B passes of B identity columns at a time

  Args:
    model: Keras model with one logit.
    x: `[N, H, W, C]` sample to average over; None for the origin.
    directions_per_pass: B, input coordinates per batched pass; None picks
      min(64, 2**26 // P).
    batch_size: samples of `x` per pass.

  Returns:
    `[P, d]` in the dtype of the model's variables.

  Theorem 1 (Sec. 3.2, Eq. 4).
  """
  mixed = MixedDerivative(model, x, batch_size)
  return mixed.dense(mixed.directions_per_pass(directions_per_pass))


def mixed_derivative_mtm(model: keras.Model, x: Optional[Inputs] = None, *,
                         directions_per_pass: Optional[int] = None,
                         batch_size: Optional[int] = None) -> Array:
  """Returns G = M^T M, built column block by column block without storing M.

      G[:, b] = M^T (M V_b),   V_b = identity columns of block b   (d / B passes of each kind)

  Its eigenvectors are the NADs and its eigenvalues the alignments s_j^2 (Theorem 1).

  Args:
    model: Keras model with one logit.
    x: `[N, H, W, C]` sample to average over; None for the origin.
    directions_per_pass: B, columns per pass; None picks min(64, 2**26 // P).
    batch_size: samples of `x` per pass.

  Returns:
    `[d, d]` symmetric positive semi-definite, float64.

  Theorem 1 (Sec. 3.2, Eq. 4).
  """
  mixed = MixedDerivative(model, x, batch_size)
  return mixed.mtm(mixed.directions_per_pass(directions_per_pass))


__all__ = [
    "MixedDerivative", "mixed_derivative", "mixed_derivative_matvec", "mixed_derivative_mtm",
    "mixed_derivative_rmatvec",
]
