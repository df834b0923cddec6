"""The JACOBIAN BlockFn: a Gram block from two blocks of per-example Jacobians.

    Theta(x_a, x_b) = J(x_a) J(x_b)^T,   J [B, P] (`ntk_tf.jacobian.jacobian_fn`)

A model with K logits has J [B, K, P] and every output kernel
(`ntk_tf.ntk.output_kernel`):

    full      Theta[i, j, a, b] = J_a[i, a] . J_b[j, b]    [Ba, Bb, K, K]
              (one GEMM of J_a, J_b as [B K, P])
    diagonal  Theta[i, j, a]    = J_a[i, a] . J_b[j, a]    [Ba, Bb, K]  (K GEMMs)
    trace     Theta[i, j]       = sum_a J_a[i, a] . J_b[j, a]   [Ba, Bb]
              (one GEMM of J_a, J_b as [B, K P])

Blocks are visited row by row, so J(x_a) of the current row block is cached
and each block costs one new Jacobian. The final matmul runs in `ops.gram_block`
(XLA) or in NumPy's BLAS (`matmul_engine="numpy"`), in `accumulate_dtype`.
"""

from typing import Optional, Union

import keras
import numpy as np
import tensorflow as tf

from ntk_tf import precision
from ntk_tf.jacobian import jacobian_fn
from ntk_tf.ntk import implementation as implementation_lib
from ntk_tf.ntk import output_kernel as output_kernel_lib
from ntk_tf.types import DType
from ops import gram_block

# The output kernels of a K-logit model this path computes ("pseudo" is one logit).
OUTPUT_KERNELS = (output_kernel_lib.FULL, output_kernel_lib.DIAGONAL, output_kernel_lib.TRACE)


class JacobianBlockFn:
  """The JACOBIAN `BlockFn`: J_a J_b^T with the last row block's J_a cached.

  The model is `precision.cast_model(model, dtype)`: Jacobians are in `dtype`.
  With an `output_kernel` (a K-logit model) the Jacobians are [B, K, P] and
  the block is contracted as the module docstring says; K is read from the
  model's output (from the first block for a subclassed model).
  """

  def __init__(self, model: keras.Model, dtype: DType = "float32", *,
               matmul_engine: Union[str, implementation_lib.MatmulEngine] = "auto",
               accumulate_dtype: Optional[DType] = None, allow_tf32: bool = False,
               output_kernel: Optional[str] = None):
    output_kernel_lib.check_supported(output_kernel_lib.check_output_kernel(output_kernel),
                                      OUTPUT_KERNELS, "jacobian")
    self.output_kernel = output_kernel
    self.dtype = precision.canonical_dtype(dtype)
    self.accumulate_dtype = precision.canonical_dtype(accumulate_dtype or self.dtype)
    engine = implementation_lib.resolve_engine(matmul_engine)
    self.on_host = engine == implementation_lib.MatmulEngine.NUMPY  # AUTO: XLA.
    self.allow_tf32 = bool(allow_tf32)
    self._model = precision.cast_model(model, self.dtype)
    self._block_jacobian = None if output_kernel else jacobian_fn(self._model)
    self._cached_x = None
    self._cached_jac = None

  def _jacobian(self, x: np.ndarray) -> tf.Tensor:
    x = x.astype(self.dtype)
    if self._block_jacobian is None:  # K logits: K is known once the model has run.
      k = output_kernel_lib.logit_count(self._model, x[:1])
      self._block_jacobian = jacobian_fn(self._model, outputs=k)
    jac = self._block_jacobian(tf.constant(x))  # [B, P] or [B, K, P]
    if self.accumulate_dtype != self.dtype:
      jac = tf.cast(jac, self.accumulate_dtype)
    return jac

  def __call__(self, x_a: np.ndarray, x_b: Optional[np.ndarray] = None) -> np.ndarray:
    with precision.tf32_matmuls(self.allow_tf32):
      if self._cached_x is None or not np.array_equal(self._cached_x, x_a):
        self._cached_x = np.array(x_a, copy=True)
        self._cached_jac = self._jacobian(x_a)  # [B, P]
      jac_a = self._cached_jac
      jac_b = jac_a if x_b is None else self._jacobian(x_b)  # [B, P] or [B, K, P]
      if self.output_kernel is None:
        return self._gram(jac_a, jac_b)  # [B, B]
      return self._output_gram(jac_a, jac_b)

  def _gram(self, jac_a: tf.Tensor, jac_b: tf.Tensor) -> np.ndarray:
    """J_a J_b^T [Ba, Bb] of two Jacobians [B, P], on the host or in `ops.gram_block`."""
    if self.on_host:
      return jac_a.numpy() @ jac_b.numpy().T  # [Ba, Bb]
    return gram_block.gram_block(jac_a, jac_b).numpy()  # [Ba, Bb]

  def _output_gram(self, jac_a: tf.Tensor, jac_b: tf.Tensor) -> np.ndarray:
    """The output kernel of two Jacobians [B, K, P] (module docstring)."""
    (n_a, k, p), n_b = jac_a.shape, jac_b.shape[0]
    if self.output_kernel == output_kernel_lib.TRACE:
      return self._gram(tf.reshape(jac_a, [n_a, k * p]), tf.reshape(jac_b, [n_b, k * p]))
    if self.output_kernel == output_kernel_lib.DIAGONAL:
      return np.stack([self._gram(jac_a[:, a], jac_b[:, a]) for a in range(k)],
                      axis=-1)  # [Ba, Bb, K]
    pairs = self._gram(tf.reshape(jac_a, [n_a * k, p]), tf.reshape(jac_b, [n_b * k, p]))
    return pairs.reshape(n_a, k, n_b, k).transpose(0, 2, 1, 3)  # [Ba, Bb, K, K]


def make_block_fn(model: keras.Model, dtype: DType = "float32", block_size: Optional[int] = None,
                  *, matmul_engine: Union[str, implementation_lib.MatmulEngine] = "auto",
                  accumulate_dtype: Optional[DType] = None, allow_tf32: bool = False,
                  output_kernel: Optional[str] = None) -> JacobianBlockFn:
  """Returns the JACOBIAN BlockFn `(x_a, x_b=None) -> J_a J_b^T` [Na, Nb].

  Blocks are padded to `block_size` rows by the caller (`ntk_tf.ntk.gram`).
  `output_kernel` ("full", "diagonal" or "trace"; None: one logit) is the
  kernel of a K-logit model (module docstring), `[Na, Nb, K, K]`,
  `[Na, Nb, K]` or `[Na, Nb]`.
  """
  del block_size  # One traced Jacobian per block shape.
  return JacobianBlockFn(model, dtype, matmul_engine=matmul_engine,
                         accumulate_dtype=accumulate_dtype, allow_tf32=allow_tf32,
                         output_kernel=output_kernel)
