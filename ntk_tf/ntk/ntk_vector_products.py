"""Matrix-free NTK-vector products: K v = J (J^T v) without storing K or J.

    u = J^T v = d/dtheta sum_i v_i f(x_i)        (one VJP pass over the data)
    K v = J u = d/dt f(x; theta + t u) |_{t=0}   (one JVP pass, ForwardAccumulator)

Shapes: data x [N, ...], J [N, P], v [N], V [N, k]. Each product costs about
one forward+backward and one forward-mode pass over the N examples (~6 N F
FLOPs for a model of F forward FLOPs per example) and O(P + batch activations)
memory, so the top-k eigenvectors of K (Lanczos, k + O(10) products) never
need the N x N matrix. A full Gram this way costs N products, ~6 N^2 F, so it
is only the cheapest path when few products are needed.

A model with a grouped convolution (`groups > 1`) is refused by name: TF
2.21's forward-mode JVPs through them are wrong (`keras_graph.grouped_conv_layers`).

Paper: Sec. 3 (the NTK Gram matrix and its spectrum).
"""

from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from ntk_tf import precision
from ntk_tf import validation
from ntk_tf.ntk import output_kernel as output_kernel_lib
from ntk_tf.ntk.structured import keras_graph
from ntk_tf.types import Array, DType, Inputs


class BatchProducts:
  """Batched VJP / JVP of a single-logit model with static (padded) batch shapes.

      vjp_batch(x [B, ...], v [B]) = J_B^T v    (a list shaped like the variables)
      jvp_batch(x [B, ...], u)     = J_B u  [B] (u a list shaped like the variables)

  With `multi_logit` the model may have K logits: v is `[B, K]` and J_B u is
  `[B, K]` (J_B [B, K, P]).

  `_vjp` / `_jvp` are their `tf.function`s; `NtkOperator` and
  `distributed.sharded_passes` (one shard of x per device or worker) call them.
  The caller checks that `model` has a single logit
  (`validation.check_single_logit`), once per public call.
  """

  def __init__(self, model: keras.Model, dtype: str, multi_logit: bool = False):
    self.multi_logit = bool(multi_logit)
    grouped = keras_graph.grouped_conv_layers(model)
    if grouped:
      raise ValueError(
          f"NTK-vector products use forward-mode JVPs, which TF 2.21 computes wrongly "
          f"through grouped convolutions; use implementation='jacobian' or 'structured'. "
          f"Received: model {model.name!r} with groups > 1 in layers {list(grouped)}")
    self.model = precision.cast_model(model, dtype)
    self.dtype = dtype
    # The tf.Variables under Keras' variables: ForwardAccumulator needs TF's own.
    self.variables = [getattr(v, "value", v) for v in self.model.trainable_variables]
    self._vjp = tf.function(self.vjp_batch)
    self._jvp = tf.function(self.jvp_batch)

  def _logits(self, x):
    out = self.model(x, training=False)
    if isinstance(out, (list, tuple)) and len(out) == 1:
      out = out[0]  # [B, 1]
    if self.multi_logit and len(out.shape) == 2:
      return out  # [B, K]
    if len(out.shape) != 2 or out.shape[-1] != 1:
      raise ValueError(f"NTK-vector products need a single-logit model, output [N, 1]. "
                       f"Received: output shape {tuple(out.shape)}")
    return out[:, 0]  # [B]

  def vjp_batch(self, x, v):
    """Returns J_B^T v_B as a list shaped like the variables; x [B, ...], v [B] (or [B, K])."""
    with tf.GradientTape() as tape:
      total = tf.reduce_sum(self._logits(x) * v)
    return tape.gradient(total, self.variables,
                         unconnected_gradients=tf.UnconnectedGradients.ZERO)

  def jvp_batch(self, x, tangents):
    """Returns J_B u [B] (or [B, K]) for u given as a list shaped like the variables."""
    with tf.autodiff.ForwardAccumulator(self.variables, tangents) as acc:
      logits = self._logits(x)
    return acc.jvp(logits, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def _batches(x: np.ndarray, batch_size: int):
  """Yields (start, padded batch [batch_size, ...], true size)."""
  for start in range(0, len(x), batch_size):
    batch = x[start:start + batch_size]
    n = len(batch)
    if n < batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - n,) + batch.shape[1:], batch.dtype)])
    yield start, batch, n


# Output kernels that are not [N, N]: `NtkOperator` refuses them.
_NOT_SQUARE = (output_kernel_lib.FULL, output_kernel_lib.DIAGONAL)


class NtkOperator:
  """The NTK Gram matrix K = J J^T [N, N] of `model` on x, as a linear operator.

  `matvec(v)` = K v by one VJP and one JVP pass over x; `matmat(V)` applies it
  to each column. Use `as_linear_operator()` for scipy (e.g. `eigsh`).

  Memory: O(P) for the tangent plus one batch of activations (x2 for forward
  mode); K is never stored.

  A model with K logits takes an [N, N] output kernel (`ntk_tf.ntk.output_kernel`):
  "pseudo", the one-logit NTK of (1/sqrt K) sum_a f_a (one product per
  matvec), or "trace", sum_a J_a J_a^T v with J_a = d f_a / d theta [N, P]
  (K VJP and K JVP passes per matvec); "full" and "diagonal" are not [N, N]
  and are refused by name.
  """

  def __init__(self, model: keras.Model, x: Inputs, *, batch_size: int = 256,
               dtype: DType = "float32", output_kernel: Optional[str] = None):
    if output_kernel_lib.check_output_kernel(output_kernel) in _NOT_SQUARE:
      raise ValueError(
          f"NtkOperator applies an [N, N] kernel: it takes output_kernel=None, 'trace' or "
          f"'pseudo'. Received: output_kernel={output_kernel!r}")
    validation.check_model(model, one_logit=False)
    model, kernel, k = output_kernel_lib.output_model(
        model, output_kernel, np.asarray(x[:1], precision.model_dtype(model)))
    self.dtype = np.dtype(precision.canonical_dtype(dtype))
    self.batch_size = validation.check_positive_int(batch_size, "batch_size")
    self._x = np.asarray(x, dtype=self.dtype)
    # The logits summed over ("trace": K of them), or None for one logit.
    self._logits = range(k) if kernel == output_kernel_lib.TRACE else None
    self._products = BatchProducts(model, self.dtype.name, multi_logit=kernel is not None)
    self.shape = (len(self._x), len(self._x))

  def transposed_jacobian_product(self, v: Array, logit: Optional[int] = None) -> list:
    """Returns u = J^T v (J_a^T v for `logit` a), a list shaped like the trainable variables."""
    total = [tf.zeros_like(w) for w in self._products.variables]
    k = None if logit is None else len(self._logits)
    for start, batch, n in _batches(self._x, self.batch_size):
      v_batch = np.zeros((self.batch_size,) if k is None else (self.batch_size, k), self.dtype)
      if k is None:
        v_batch[:n] = v[start:start + n]  # [B]
      else:
        v_batch[:n, logit] = v[start:start + n]  # [B, K], zero but for logit a
      grads = self._products._vjp(tf.constant(batch), tf.constant(v_batch))
      total = [t + g for t, g in zip(total, grads)]
    return total

  def jacobian_product(self, tangents: list, logit: Optional[int] = None) -> Array:
    """Returns J u [N] (J_a u for `logit` a) for u a list shaped like the trainable variables."""
    out = np.empty(self.shape[0], self.dtype)
    for start, batch, n in _batches(self._x, self.batch_size):
      products = self._products._jvp(tf.constant(batch), tangents).numpy()  # [B] or [B, K]
      out[start:start + n] = products[:n] if logit is None else products[:n, logit]
    return out

  def matvec(self, v: Array) -> Array:
    """Returns K v [N] for v [N] ("trace": sum_a J_a J_a^T v)."""
    v = np.asarray(v, self.dtype).reshape(-1)
    if v.shape[0] != self.shape[0]:
      raise ValueError(f"v must have shape [{self.shape[0]}]. Received: shape={v.shape}")
    if self._logits is None:
      return self.jacobian_product(self.transposed_jacobian_product(v))
    return sum(self.jacobian_product(self.transposed_jacobian_product(v, a), a)
               for a in self._logits)

  def matmat(self, matrix: Array) -> Array:
    """Returns K V [N, k] for V [N, k]."""
    matrix = np.asarray(matrix, self.dtype)
    if matrix.ndim != 2 or matrix.shape[0] != self.shape[0]:
      raise ValueError(f"V must have shape [{self.shape[0]}, k]. Received: shape={matrix.shape}")
    return np.stack([self.matvec(matrix[:, j]) for j in range(matrix.shape[1])], axis=1)

  def as_linear_operator(self):
    """Returns a `scipy.sparse.linalg.LinearOperator` view (symmetric)."""
    from scipy.sparse import linalg  # pylint: disable=g-import-not-at-top
    return linalg.LinearOperator(self.shape, matvec=self.matvec, rmatvec=self.matvec,
                                 matmat=self.matmat, dtype=self.dtype)


# The output kernels of a K-logit model the BlockFn computes ("pseudo" is one logit).
OUTPUT_KERNELS = (output_kernel_lib.FULL, output_kernel_lib.DIAGONAL, output_kernel_lib.TRACE)


class NtkVectorProductBlockFn:
  """BlockFn Theta(x_a, x_b) [Na, Nb] by NTK-vector products (column j = J_a J_b^T e_j).

  Matrix-free: forms one per-example gradient at a time (O(P) memory), at the
  cost of Nb VJP and Nb JVP passes; meant for checks and tiny blocks. The
  model is `precision.cast_model(model, dtype)`: products are in `dtype`.

  With an `output_kernel` (a K-logit model), column (j, b) is
  J_a J_b[j, b]^T = Theta[:, j, :, b] `[Na, K]` (one VJP of e_b at x_b[j], one
  JVP over x_a): Nb K products give "full" `[Na, Nb, K, K]`, whose a = b
  entries are "diagonal" `[Na, Nb, K]` and their sum "trace" `[Na, Nb]`.
  """

  def __init__(self, model: keras.Model, dtype: DType = "float32", *, allow_tf32: bool = False,
               output_kernel: Optional[str] = None):
    output_kernel_lib.check_supported(output_kernel_lib.check_output_kernel(output_kernel),
                                      OUTPUT_KERNELS, "ntk_vector_products")
    self.output_kernel = output_kernel
    self.dtype = np.dtype(precision.canonical_dtype(dtype))
    self.allow_tf32 = bool(allow_tf32)
    self._products = BatchProducts(model, self.dtype.name, multi_logit=output_kernel is not None)

  def __call__(self, x_a: Inputs, x_b: Optional[Inputs] = None) -> Array:
    x_a = tf.constant(np.asarray(x_a, self.dtype))
    x_b = x_a if x_b is None else tf.constant(np.asarray(x_b, self.dtype))
    if self.output_kernel is not None:
      return self._output_block(x_a, x_b)
    columns = []
    with precision.tf32_matmuls(self.allow_tf32):
      for j in range(x_b.shape[0]):
        grads = self._products._vjp(x_b[j:j + 1], tf.ones([1], self.dtype))  # J_b^T e_j
        columns.append(self._products._jvp(x_a, grads).numpy())  # [Na]
    return np.stack(columns, axis=1)  # [Na, Nb]

  def _output_block(self, x_a: tf.Tensor, x_b: tf.Tensor) -> Array:
    """The output kernel of the block from its Nb K columns Theta[:, j, :, b] (class docstring)."""
    k = int(self._products._logits(x_b[:1]).shape[-1])
    full = np.empty((x_a.shape[0], x_b.shape[0], k, k), self.dtype)  # [Na, Nb, K, K]
    with precision.tf32_matmuls(self.allow_tf32):
      for j in range(x_b.shape[0]):
        for b in range(k):
          grads = self._products._vjp(x_b[j:j + 1], tf.one_hot([b], k, dtype=self.dtype))
          full[:, j, :, b] = self._products._jvp(x_a, grads).numpy()  # [Na, K]
    if self.output_kernel == output_kernel_lib.FULL:
      return full
    diagonal = np.diagonal(full, axis1=2, axis2=3)  # [Na, Nb, K]
    if self.output_kernel == output_kernel_lib.DIAGONAL:
      return np.ascontiguousarray(diagonal)
    return diagonal.sum(axis=-1)  # [Na, Nb]


def make_block_fn(model: keras.Model, dtype: DType = "float32", block_size: Optional[int] = None,
                  *, allow_tf32: bool = False,
                  output_kernel: Optional[str] = None) -> NtkVectorProductBlockFn:
  """Returns the NTK-vector-product BlockFn `(x_a, x_b=None) -> [Na, Nb]`.

  One VJP and one JVP per column; no GEMM to place, so no `matmul_engine`.
  `output_kernel` ("full", "diagonal", "trace"; None: one logit): K columns
  per example of x_b (`NtkVectorProductBlockFn`).
  """
  del block_size  # Each column is one product; the block shape needs no planning.
  return NtkVectorProductBlockFn(model, dtype, allow_tf32=allow_tf32, output_kernel=output_kernel)
