"""The empirical NTK Gram matrix, computed block by block.

    Theta(x1, x2) = J(x1) J(x2)^T,   Theta[i, j] = <d f(x1_i)/d theta, d f(x2_j)/d theta>

Shapes: `x1 [N1, ...]`, `x2 [N2, ...]`, Gram `[N1, N2]`; blocks are
`[B, B]` with B = block_size (the last row/column block may be partial; it is
zero-padded to B before the block function and cropped after, so compiled
functions see one shape).

The block loop is generic: an `NtkImplementation` selects a factory in
`_BLOCK_FN_FACTORIES` that turns (model, dtype) into a `BlockFn`
`(x_a [B, ...], x_b [B, ...] | None) -> [B, B]` (x_b None means x_b = x_a, a
diagonal block of a symmetric Gram). This module registers the reference
JACOBIAN path; faster paths register themselves under their member.

Paper: Sec. 2 (empirical NTK), App. B (Gram matrices of the trained networks).
"""

import enum
from typing import Callable, Dict, List, Optional, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

# From-imports of the submodule: `ntk_tf.jacobian` is the function once ntk_tf is imported.
from ntk_tf.jacobian import jacobian_fn
from ntk_tf import auto
from ntk_tf import ntk_vector_products
from ntk_tf import precision
from ntk_tf import progress as progress_lib
from ntk_tf import structured
from ntk_tf import types
from ntk_tf import validation
from ops import gram_block

# (x_a [B, ...], x_b [B, ...] or None for x_b = x_a) -> Theta block [B, B].
BlockFn = Callable[[np.ndarray, Optional[np.ndarray]], np.ndarray]
# (i0, i1, j0, j1): rows x1[i0:i1], columns x2[j0:j1].
Block = Tuple[int, int, int, int]


class NtkImplementation(enum.Enum):
  """How a Gram block is computed; every member must match JACOBIAN in tests."""

  JACOBIAN = "jacobian"
  """Reference: per-example GradientTape Jacobians J_a, J_b [B, P], then J_a J_b^T
  (XLA-compiled). Cost: 2B backward passes of batch 1 per block (B with a cached
  row block) plus a [B, P] x [P, B] matmul. Memory: about 3 * B * P * bytes (two
  Jacobian blocks + one transient copy) + B^2 * bytes. Fast when P is small (MLP, LeNet); for ResNet18
  (P = 11M) use small blocks."""

  STRUCTURED = "structured"
  """Structured derivatives (`ntk_tf.structured`): per layer, the cheaper (by a
  FLOP estimate, see `structured.flop_report`) of the product form
  (A_a A_b^T) * (D_a D_b^T) of layer inputs A and output cotangents D (Dense;
  patch/cotangent sums for Conv2D) and the layer's own per-example gradients
  contracted; BatchNorm affine parameters and biases by per-example gradients;
  unknown layers fall back to the reference path for their variables only.
  One batched forward/backward pass per block instead of B single-example ones.
  Fast for all three paper models. Memory: activations and cotangents of the
  2B examples in flight, plus the per-layer factors (`ntk_tf.block_size`)."""

  NTK_VECTOR_PRODUCTS = "ntk_vector_products"
  """Matrix-free (`ntk_tf.ntk_vector_products`): Theta v = J (J^T v) by one VJP
  and one JVP pass over the data, so no [B, P] Jacobian is ever held. A Gram
  block costs B such products; its real use is top-k eigenvectors without
  storing Theta (`ntk_tf.NtkOperator` passed to `ntk_tf.eigen`). Memory: one
  batch of activations plus P."""

  AUTO = "auto"
  """The cheapest of STRUCTURED and NTK_VECTOR_PRODUCTS by the FLOP rule of
  `ntk_tf.auto` (JACOBIAN is never cheaper than STRUCTURED by that rule)."""


def _check_implementation(implementation) -> NtkImplementation:
  try:
    return NtkImplementation(implementation)
  except ValueError:
    names = [m.value for m in NtkImplementation]
    raise ValueError(f"implementation must be one of {names}. "
                     f"Received: implementation={implementation!r}") from None


class _JacobianBlockFn:
  """The JACOBIAN `BlockFn`: J_a J_b^T with the last row block's J_a cached.

  Blocks are visited row by row, so caching J(x_a) of the current row block
  saves one Jacobian per block.
  """

  def __init__(self, model: keras.Model, dtype: tf.DType):
    self._model = precision.model_for_dtype(model, dtype.name)
    self._dtype = dtype
    self._block_jacobian = jacobian_fn(self._model)
    self._cached_x = None
    self._cached_jac = None

  def _jacobian(self, x: np.ndarray) -> tf.Tensor:
    return self._block_jacobian(tf.constant(x.astype(self._dtype.as_numpy_dtype)))  # [B, P]

  def __call__(self, x_a: np.ndarray, x_b: Optional[np.ndarray]) -> np.ndarray:
    if self._cached_x is None or not np.array_equal(self._cached_x, x_a):
      self._cached_x = np.array(x_a, copy=True)
      self._cached_jac = self._jacobian(x_a)  # [B, P]
    jac_a = self._cached_jac
    jac_b = jac_a if x_b is None else self._jacobian(x_b)  # [B, P]
    return gram_block.gram_block(jac_a, jac_b).numpy()  # [B, B]


# The registry: one factory per implemented member (others add theirs).
# factory(model, dtype) gets the model as the caller gave it and must compute in
# `dtype` (tf.float32 | tf.float64; see precision.model_for_dtype). Its BlockFn
# always receives zero-padded blocks of exactly block_size rows (one static
# shape) and x_b=None for diagonal blocks; padding rows are cropped afterwards.
def _structured_factory(model: keras.Model, dtype: tf.DType) -> BlockFn:
  return structured.make_block_fn(model, dtype.name)


def _ntk_vector_products_factory(model: keras.Model, dtype: tf.DType) -> BlockFn:
  return ntk_vector_products.make_block_fn(model, dtype.name)


def _auto_factory(model: keras.Model, dtype: tf.DType) -> BlockFn:
  return auto.make_block_fn(model, dtype.name)


_BLOCK_FN_FACTORIES: Dict[NtkImplementation, Callable[[keras.Model, tf.DType], BlockFn]] = {
    NtkImplementation.JACOBIAN: _JacobianBlockFn,
    NtkImplementation.STRUCTURED: _structured_factory,
    NtkImplementation.NTK_VECTOR_PRODUCTS: _ntk_vector_products_factory,
    NtkImplementation.AUTO: _auto_factory,
}


def resolve_implementation(implementation: Union[str, NtkImplementation]) -> NtkImplementation:
  """Returns the `NtkImplementation` member named by `implementation`."""
  member = _check_implementation(implementation)
  if member not in _BLOCK_FN_FACTORIES:
    raise NotImplementedError(
        f"NtkImplementation.{member.name} has no block function. "
        f"Received: implementation={implementation!r}")
  return member


def block_fn(model: keras.Model, implementation: Union[str, NtkImplementation],
             dtype: types.DType) -> BlockFn:
  """Returns the `BlockFn` of `implementation` for `model` accumulating in `dtype`."""
  member = resolve_implementation(implementation)
  return _BLOCK_FN_FACTORIES[member](model, tf.as_dtype(precision.canonical_dtype(dtype)))


def iter_blocks(n1: int, n2: int, block_size: int, symmetric: bool) -> List[Block]:
  """Returns the blocks `(i0, i1, j0, j1)` of an `[n1, n2]` Gram, row-major.

  With `symmetric` (n1 == n2, x2 = x1) only blocks with j0 >= i0 (the upper
  triangle, diagonal included) are listed; the rest are their transposes.
  """
  block_size = validation.check_positive_int(block_size, "block_size")
  if symmetric and n1 != n2:
    raise ValueError(f"A symmetric Gram is square. Received: n1={n1}, n2={n2}")
  blocks = []
  for i0 in range(0, n1, block_size):
    for j0 in range(i0 if symmetric else 0, n2, block_size):
      blocks.append((i0, min(i0 + block_size, n1), j0, min(j0 + block_size, n2)))
  return blocks


def _pad_rows(x: np.ndarray, block_size: int) -> np.ndarray:
  """Zero-pads `x [b, ...]` to `[block_size, ...]` so every block has one static shape."""
  if x.shape[0] == block_size:
    return x
  padding = [(0, block_size - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
  return np.pad(x, padding)  # [block_size, ...]


def compute_block(fn: BlockFn, x1: np.ndarray, x2: Optional[np.ndarray], block: Block,
                  block_size: int) -> np.ndarray:
  """Returns Theta(x1[i0:i1], x2[j0:j1]) `[i1 - i0, j1 - j0]` for one block.

  `x2=None` means the symmetric Gram of x1; its diagonal blocks are made exactly
  symmetric ((G + G^T) / 2), so the whole matrix is, unless `fn` says its
  diagonal blocks already are (attribute `exactly_symmetric`).
  """
  i0, i1, j0, j1 = block
  x_a = _pad_rows(x1[i0:i1], block_size)  # [B, ...]
  if x2 is None and i0 == j0:
    theta = fn(x_a, None)  # [B, B]
    if not getattr(fn, "exactly_symmetric", False):
      theta = 0.5 * (theta + theta.T)
  else:
    x_b = _pad_rows((x1 if x2 is None else x2)[j0:j1], block_size)  # [B, ...]
    theta = fn(x_a, x_b)  # [B, B]
  return np.asarray(theta)[:i1 - i0, :j1 - j0]


def prepare(model: keras.Model, x1: types.Inputs, x2: Optional[types.Inputs],
            block_size: int, dtype: types.DType):
  """Validates the arguments of a Gram job; returns (x1, x2, block_size, dtype name)."""
  block_size = validation.check_positive_int(block_size, "block_size")
  dtype = precision.canonical_dtype(dtype)
  validation.check_single_logit(model)
  validation.check_finite_weights(model)
  x1 = validation.check_inputs(model, x1, "x1")
  x2 = None if x2 is None else validation.check_inputs(model, x2, "x2")
  return x1, x2, block_size, dtype


def ntk_gram(model: keras.Model, x1: types.Inputs, x2: Optional[types.Inputs] = None, *,
             block_size: int = 256,
             implementation: Union[str, NtkImplementation] = "jacobian",
             dtype: types.DType = "float32", progress: bool = True) -> np.ndarray:
  """Returns the empirical NTK Gram Theta(x1, x2) as a NumPy array.

      Theta(x1, x2) = J(x1) J(x2)^T,   J = d f / d theta (all trainable weights)

  The model runs in inference mode (BatchNorm moving statistics, no dropout),
  so Theta[i, j] depends on x1_i and x2_j only. With `x2=None` only the upper
  triangular blocks of the symmetric Theta(x1, x1) are computed and mirrored.

  Peak memory (JACOBIAN): about (3 * B * P + B^2) * bytes for the blocks in
  flight (the cached row block J_a, the column block J_b, and one transient
  copy while per-example gradients are stacked) plus the N1 * N2 * bytes
  result; B = block_size, P = trainable parameters, bytes = 4 (float32) or 8
  (float64). Independent of N1, N2 apart from the result. Measured (CIFAR-10,
  float32, B = 256): MLP (P = 317,501) +0.8 GiB over the process baseline,
  bound 0.93 GiB. For an on-disk, resumable Gram use `GramStore`.

  Args:
    model: Keras model with one output logit, `[N, ...] -> [N, 1]`.
    x1: `[N1, ...]` inputs (finite, matching the model's input shape).
    x2: `[N2, ...]` inputs, or None for Theta(x1, x1).
    block_size: B, examples per block (> 0); N1, N2 need not be multiples.
    implementation: an `NtkImplementation` member or its value.
    dtype: "float32" or "float64": Jacobians and accumulation in this dtype
      (float64 uses a float64 copy of the model).
    progress: show blocks done, rate and ETA.

  Returns:
    `[N1, N2]` array of `dtype`.

  Paper: Sec. 2, eq. for Theta; App. B.
  """
  x1, x2, block_size, dtype = prepare(model, x1, x2, block_size, dtype)
  fn = block_fn(model, implementation, dtype)
  n1 = x1.shape[0]
  n2 = n1 if x2 is None else x2.shape[0]
  blocks = iter_blocks(n1, n2, block_size, symmetric=x2 is None)
  theta = np.empty((n1, n2), dtype=dtype)  # [N1, N2]
  with progress_lib.Progress(len(blocks), desc="ntk_gram", unit="blocks",
                             enabled=progress) as bar:
    for block in blocks:
      i0, i1, j0, j1 = block
      theta_block = compute_block(fn, x1, x2, block, block_size)  # [i1-i0, j1-j0]
      theta[i0:i1, j0:j1] = theta_block
      if x2 is None and i0 != j0:
        theta[j0:j1, i0:i1] = theta_block.T
      bar.update()
  return theta
