"""The JACOBIAN BlockFn: a Gram block from two blocks of per-example Jacobians.

    Theta(x_a, x_b) = J(x_a) J(x_b)^T,   J [B, P] (`ntk_tf.jacobian.jacobian_fn`)

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
from ntk_tf.types import DType
from ops import gram_block


class JacobianBlockFn:
  """The JACOBIAN `BlockFn`: J_a J_b^T with the last row block's J_a cached.

  The model is `precision.cast_model(model, dtype)`: Jacobians are in `dtype`.
  """

  def __init__(self, model: keras.Model, dtype: DType = "float32", *,
               matmul_engine: Union[str, implementation_lib.MatmulEngine] = "auto",
               accumulate_dtype: Optional[DType] = None, allow_tf32: bool = False):
    self.dtype = precision.canonical_dtype(dtype)
    self.accumulate_dtype = precision.canonical_dtype(accumulate_dtype or self.dtype)
    engine = implementation_lib.resolve_engine(matmul_engine)
    self.on_host = engine == implementation_lib.MatmulEngine.NUMPY  # AUTO: XLA.
    self.allow_tf32 = bool(allow_tf32)
    self._model = precision.cast_model(model, self.dtype)
    self._block_jacobian = jacobian_fn(self._model)
    self._cached_x = None
    self._cached_jac = None

  def _jacobian(self, x: np.ndarray) -> tf.Tensor:
    jac = self._block_jacobian(tf.constant(x.astype(self.dtype)))  # [B, P]
    if self.accumulate_dtype != self.dtype:
      jac = tf.cast(jac, self.accumulate_dtype)
    return jac

  def __call__(self, x_a: np.ndarray, x_b: Optional[np.ndarray] = None) -> np.ndarray:
    with precision.tf32_matmuls(self.allow_tf32):
      if self._cached_x is None or not np.array_equal(self._cached_x, x_a):
        self._cached_x = np.array(x_a, copy=True)
        self._cached_jac = self._jacobian(x_a)  # [B, P]
      jac_a = self._cached_jac
      jac_b = jac_a if x_b is None else self._jacobian(x_b)  # [B, P]
      if self.on_host:
        return jac_a.numpy() @ jac_b.numpy().T  # [B, B]
      return gram_block.gram_block(jac_a, jac_b).numpy()  # [B, B]


def make_block_fn(model: keras.Model, dtype: DType = "float32", block_size: Optional[int] = None,
                  *, matmul_engine: Union[str, implementation_lib.MatmulEngine] = "auto",
                  accumulate_dtype: Optional[DType] = None,
                  allow_tf32: bool = False) -> JacobianBlockFn:
  """Returns the JACOBIAN BlockFn `(x_a, x_b=None) -> J_a J_b^T` [Na, Nb].

  Blocks are padded to `block_size` rows by the caller (`ntk_tf.ntk.gram`).
  """
  del block_size  # One traced Jacobian per block shape.
  return JacobianBlockFn(model, dtype, matmul_engine=matmul_engine,
                         accumulate_dtype=accumulate_dtype, allow_tf32=allow_tf32)
