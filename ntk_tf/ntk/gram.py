"""The empirical NTK Gram matrix, computed block by block.

    Theta(x1, x2) = J(x1) J(x2)^T,   Theta[i, j] = <d f(x1_i)/d theta, d f(x2_j)/d theta>

Shapes: `x1 [N1, ...]`, `x2 [N2, ...]`, Gram `[N1, N2]`; blocks are
`[B, B]` with B = block_size (the last row/column block may be partial; it is
zero-padded to B before the block function and cropped after, so compiled
functions see one shape).

The block loop is generic: an `NtkImplementation` selects, in the table
`_IMPLEMENTATION_TO_BLOCK_FN` right above `ntk_gram`, the `make_block_fn`
`(model, dtype, block_size, **options)` of one implementation module, which
returns a `BlockFn` `(x_a [B, ...], x_b [B, ...] | None) -> [B, B]` (x_b None
means x_b = x_a, a diagonal block of a symmetric Gram). For a model with K
logits the block carries the output kernel's axes after the example axes,
`[B, B, K, K]` ("full") or `[B, B, K]` ("diagonal"), and so does the Gram
(`ntk_tf.ntk.output_kernel`).

Paper: Sec. 2 (empirical NTK), App. B (Gram matrices of the trained networks).
"""

import collections
from typing import Any, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import keras
import numpy as np

from ntk_tf import precision
from ntk_tf import types
from ntk_tf import validation
from ntk_tf.ntk import auto
from ntk_tf.ntk import block_size as block_size_lib
from ntk_tf.ntk import implementation as implementation_lib
from ntk_tf.ntk import jacobian_block
from ntk_tf.ntk import ntk_vector_products
from ntk_tf.ntk import output_kernel as output_kernel_lib
from ntk_tf.ntk import progress as progress_lib
from ntk_tf.ntk import structured
from ntk_tf.ntk.structured import features as features_lib
from ntk_tf.ntk.implementation import BlockFn
from ntk_tf.ntk.implementation import NtkImplementation

# (i0, i1, j0, j1): rows x1[i0:i1], columns x2[j0:j1].
Block = Tuple[int, int, int, int]


# BlockFns kept between `ntk_gram` calls, so a repeated Gram of the same model
# does not rebuild its plan and retrace its tf.functions: the last few, by
# (id(model), implementation, dtype, block_size, options). Only BlockFns that
# declare `reusable = True` (they read the model's live variables, and the
# feature cache, their only state, is emptied before and after each Gram)
# and that run on the caller's model itself (no dtype-cast copy) are kept.
_REUSED_MAX = 2
_reused: "collections.OrderedDict[tuple, BlockFn]" = collections.OrderedDict()


def clear_block_fn_cache() -> None:
  """Forgets the BlockFns `ntk_gram` keeps between calls (and the models they hold)."""
  _reused.clear()


def _reusable_block_fn(make_fn: implementation_lib.MakeBlockFn, model: keras.Model,
                       member: NtkImplementation, dtype: str, block_size: int,
                       options: dict) -> BlockFn:
  """Returns `make_fn(model, dtype, block_size, **options)`, or the one kept from earlier."""
  try:
    key = (id(model), member, dtype, block_size, repr(sorted(options.items())))
  except TypeError:  # Options that do not sort: no reuse.
    return make_fn(model, dtype, block_size, **options)
  fn = _reused.get(key)
  if fn is not None and getattr(fn, "model", None) is model:
    _reused.move_to_end(key)
    return fn
  fn = make_fn(model, dtype, block_size, **options)
  if getattr(fn, "reusable", False) and getattr(fn, "model", None) is model:
    _reused[key] = fn
    while len(_reused) > _REUSED_MAX:
      _reused.popitem(last=False)
  return fn


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


def sweep_order(blocks: Sequence[Block], block_size: int, cached_blocks: int) -> List[int]:
  """Positions in `blocks` in the order that reuses a cache of `cached_blocks` blocks' features.

  Row blocks r = i0 // B go in panels of h = cached_blocks - 2; the panels in
  turn, each column by column (j0; every other panel from the last column
  back, so it starts on the columns its predecessor left cached), then row by
  row. A panel's h row blocks stay in an LRU cache of h + 2 blocks (the
  panel, the last column block and the next) while the column blocks stream
  through, so each column block's features are computed once per panel:
  about n + n^2 / (2h) feature computations for an upper triangle of n row
  blocks, where row-major order computes about n^2 / 2 once n > cached_blocks
  (n = 235, 40 cached: 838 against 26,949). The Gram's numbers do not depend
  on the order. With h < 1: the order given.
  """
  h = int(cached_blocks) - 2
  if h < 1:
    return list(range(len(blocks)))

  def key(k: int) -> Tuple[int, int, int]:
    i0, _, j0, _ = blocks[k]
    panel = i0 // block_size // h
    return panel, j0 if panel % 2 == 0 else -j0, i0

  return sorted(range(len(blocks)), key=key)


def sweep(fn: BlockFn, blocks: Sequence[Block], block_size: int) -> Iterator[int]:
  """Positions in `blocks`, lazily, in the order to compute them with `fn`.

  The first as given; the rest in `sweep_order` for `fn.cached_blocks()` (how
  many blocks' features `fn` caches, known once it has computed one: the
  structured BlockFn), or as given when `fn` caches no features by block.
  """
  if not blocks:
    return
  yield 0  # the caller computes it before the order is chosen
  cached_blocks = getattr(fn, "cached_blocks", None)
  order = sweep_order(blocks[1:], block_size, cached_blocks() if cached_blocks else 0)
  for position in order:
    yield position + 1


def _pad_rows(x: np.ndarray, block_size: int) -> np.ndarray:
  """Zero-pads `x [b, ...]` to `[block_size, ...]` so every block has one static shape."""
  if x.shape[0] == block_size:
    return x
  padding = [(0, block_size - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
  return np.pad(x, padding)  # [block_size, ...]


def compute_block(fn: BlockFn, x1: np.ndarray, x2: Optional[np.ndarray], block: Block,
                  block_size: int, key_memo: Optional[dict] = None) -> np.ndarray:
  """Returns Theta(x1[i0:i1], x2[j0:j1]) `[i1 - i0, j1 - j0, ...]` for one block.

  `x2=None` means the symmetric Gram of x1; its diagonal blocks are made exactly
  symmetric ((G + G^T) / 2, G^T by `output_kernel.transpose_block`), so the
  whole matrix is, unless `fn` says its diagonal blocks already are (attribute
  `exactly_symmetric`). Output-kernel blocks carry their K axes after the two
  example axes. `key_memo`, one dict per job (x1, x2 and block_size fixed),
  lets a feature cache hash each row block once (`features.KeyedRows`).
  """
  i0, i1, j0, j1 = block
  x_a = _pad_rows(x1[i0:i1], block_size)  # [B, ...]
  if key_memo is not None:
    x_a = features_lib.keyed_rows(x_a, key_memo, ("x1", i0))
  if x2 is None and i0 == j0:
    theta = np.asarray(fn(x_a, None))  # [B, B, ...]
    if not getattr(fn, "exactly_symmetric", False):
      theta = 0.5 * (theta + output_kernel_lib.transpose_block(theta))
  else:
    x_b = _pad_rows((x1 if x2 is None else x2)[j0:j1], block_size)  # [B, ...]
    if key_memo is not None:
      x_b = features_lib.keyed_rows(x_b, key_memo, ("x1" if x2 is None else "x2", j0))
    theta = fn(x_a, x_b)  # [B, B]
  theta = np.asarray(theta)[:i1 - i0, :j1 - j0]  # [i1-i0, j1-j0]
  check_finite_block(theta, block)
  return theta


def check_finite_block(theta: np.ndarray, block: Block) -> None:
  """Raises FloatingPointError naming `block` if the finished block has NaN/inf entries.

  Weights and inputs are checked finite before a Gram starts, so a non-finite
  entry means an overflow in the computation dtype (huge weights or inputs).
  """
  finite = np.isfinite(theta)
  if not finite.all():
    i0, i1, j0, j1 = block
    bad = int(finite.size - np.count_nonzero(finite))
    raise FloatingPointError(
        f"The Gram block of rows {i0}:{i1} and columns {j0}:{j1} has {bad} NaN/inf entries "
        f"({theta.dtype}); weights and inputs are finite, so this is likely an overflow "
        f"from huge weights or inputs: rescale them or use dtype='float64'. Received: "
        f"block=({i0}, {i1}, {j0}, {j1})")


def effective_block_size(block_size: int, n1: int, n2: int) -> int:
  """Returns min(block_size, max(n1, n2)): no block is padded past the larger side."""
  return min(validation.check_positive_int(block_size, "block_size"), max(int(n1), int(n2)))


def prepare(model: keras.Model, x1: types.Inputs, x2: Optional[types.Inputs],
            block_size: Optional[int], dtype: types.DType, *,
            implementation: Union[None, str, NtkImplementation] = None,
            cap_block_size: bool = False, memory_budget_bytes: Optional[int] = None,
            output_kernel: Optional[str] = None):
  """Validates the arguments of a Gram job; returns (x1, x2, block_size, dtype name).

  The model must have one output of K logits; K > 1 needs an `output_kernel`
  (`output_kernel.resolve` refuses None, naming K), and the memory estimates
  count K (`block_size.peak_memory_bytes`).

  With `cap_block_size`, block_size becomes `effective_block_size` (at most
  max(N1, N2)). With `implementation`, the block's estimated peak memory
  (`block_size.check_block_memory`) must fit `memory_budget_bytes` (None:
  the machine's physical memory), else ValueError names block_size.
  `block_size=None` (only with `implementation`) means max(N1, N2) split
  evenly into blocks that fit `memory_budget_bytes` (None: the default budget)
  and are at most `block_size.DEFAULT_MAX_BLOCK` rows
  (`block_size.default_block_size`).
  """
  if block_size is not None or implementation is None:
    block_size = validation.check_positive_int(block_size, "block_size")
  dtype = precision.canonical_dtype(dtype)
  validation.check_model(model, one_logit=False)
  validation.check_finite_weights(model)
  x1 = validation.check_inputs(model, x1, "x1", one_logit=False)
  x2 = None if x2 is None else validation.check_inputs(model, x2, "x2", one_logit=False)
  model, kernel, k = output_kernel_lib.output_model(model, output_kernel, x1[:1])
  outputs = dict(output_kernel=kernel, outputs=k)  # What the memory estimates count.
  if block_size is None:
    n = max(x1.shape[0], x1.shape[0] if x2 is None else x2.shape[0])
    block_size = block_size_lib.default_block_size(model, implementation, dtype, n,
                                                   memory_budget_bytes, **outputs)
  if cap_block_size:
    block_size = effective_block_size(block_size, x1.shape[0],
                                      x1.shape[0] if x2 is None else x2.shape[0])
  if implementation is not None:
    block_size_lib.check_block_memory(model, block_size, implementation, dtype,
                                      memory_budget_bytes, **outputs)
  return x1, x2, block_size, dtype


def check_options(implementation: Union[str, NtkImplementation],
                  options: Mapping[str, Any]) -> NtkImplementation:
  """Returns the member named by `implementation` once its make_block_fn takes every option.

  Raises:
    ValueError: for an unknown implementation, or naming every option its
      `make_block_fn` (the table below) does not take, with those it takes.
  """
  member = implementation_lib.resolve(implementation)
  implementation_lib.check_options(member, _IMPLEMENTATION_TO_BLOCK_FN[member], options)
  return member


def make_block_fn(model: keras.Model, implementation: Union[str, NtkImplementation],
                  dtype: types.DType, block_size: int = 256, *,
                  output_kernel: Optional[str] = None, **options) -> BlockFn:
  """Returns the `BlockFn` of `implementation` for `model` in `dtype`, for blocks of `block_size`.

  Checks the options (`check_options`) and that `model` has one output of
  logits and trainable weights (`validation.check_model`), resolves
  `output_kernel` (`output_kernel.output_model`: K > 1 needs one; "pseudo"
  runs the one-logit path on the pseudo-NTK model), then calls the
  implementation's `make_block_fn` (the table below), which refuses by name
  an output kernel it does not compute. `ntk_gram` checks the model in
  `prepare` instead and looks the table up itself.
  """
  member = check_options(implementation, options)
  validation.check_model(model, one_logit=False)
  model, kernel, _ = output_kernel_lib.output_model(model, output_kernel)
  return _IMPLEMENTATION_TO_BLOCK_FN[member](model, precision.canonical_dtype(dtype), block_size,
                                             **_with_output_kernel(options, kernel))


def _with_output_kernel(options: Mapping[str, Any], kernel: Optional[str]) -> dict:
  """`options`, plus `output_kernel=kernel` for a K-logit kernel (one logit: as they are)."""
  return dict(options) if kernel is None else dict(options, output_kernel=kernel)


# The BlockFn maker of each implementation, `(model, dtype, block_size, **options) -> BlockFn`
# (`implementation.BlockFn`); AUTO picks STRUCTURED or JACOBIAN and calls theirs.
_IMPLEMENTATION_TO_BLOCK_FN = {
    NtkImplementation.JACOBIAN: jacobian_block.make_block_fn,
    NtkImplementation.STRUCTURED: structured.make_block_fn,
    NtkImplementation.NTK_VECTOR_PRODUCTS: ntk_vector_products.make_block_fn,
    NtkImplementation.AUTO: auto.make_block_fn,
}


def ntk_gram(model: keras.Model, x1: types.Inputs, x2: Optional[types.Inputs] = None, *,
             block_size: Optional[int] = None,
             implementation: Union[str, NtkImplementation] = "auto",
             dtype: types.DType = "float32", progress: bool = True,
             memory_budget_bytes: Optional[int] = None, output_kernel: Optional[str] = None,
             **options) -> np.ndarray:
  """Returns the empirical NTK Gram Theta(x1, x2) as a NumPy array.

      Theta(x1, x2) = J(x1) J(x2)^T,   J = d f / d theta (all trainable weights)

  A model with K > 1 logits needs `output_kernel` (`ntk_tf.ntk.output_kernel`:
  "full" Theta[i, j, a, b] = J_a(x1_i) . J_b(x2_j), "diagonal", "trace",
  "pseudo"; which implementation computes which is listed there).

  The model runs in inference mode (BatchNorm moving statistics, no dropout),
  so Theta[i, j] depends on x1_i and x2_j only. With `x2=None` only the upper
  triangular blocks of the symmetric Theta(x1, x1) are computed and mirrored.

  Precision (every implementation): the Gram is computed in `dtype`. Each
  path works on `precision.cast_model(model, dtype)`, the model itself when
  its weights and compute dtype already are `dtype`, else a copy cast to
  `dtype` (a float64 model asked for a float32 Gram computes in float32);
  Jacobians, features and products are in `dtype`, each block is summed in
  `accumulate_dtype` (an option; default `dtype`), and the result is `dtype`.

  Block size: by default (None) max(N1, N2) split evenly into row blocks
  whose estimated peak memory fits `memory_budget_bytes` (None: 1 GiB or a
  quarter of physical memory) and of at most `block_size.DEFAULT_MAX_BLOCK`
  = 3,000 rows (`block_size.default_block_size`), so a Gram of up to 3,000
  small-model examples is one block.
  Blocks are at most max(N1, N2) rows (`effective_block_size`: a larger
  block_size is capped, so a small Gram is not padded to a full block). The
  padded batch size can change the last bits of the batched TF ops, so a Gram
  with N < block_size agrees with the uncapped one to rounding, not bit for
  bit; with N >= block_size nothing changes.
  Peak memory per block: `ntk_tf.ntk.block_size.peak_memory_bytes` (one formula
  per implementation), plus the N1 * N2 * bytes result; a block size whose
  estimate exceeds `memory_budget_bytes` is refused before any work. Every
  finished block is checked finite (`check_finite_block`: an overflow raises
  FloatingPointError naming the block). For an on-disk, resumable Gram use
  `GramStore`.

  Args:
    model: Keras model with one output logit, `[N, ...] -> [N, 1]`.
    x1: `[N1, ...]` inputs (finite, matching the model's input shape).
    x2: `[N2, ...]` inputs, or None for Theta(x1, x1).
    block_size: B, examples per block (> 0, capped at max(N1, N2)), or
      None for `block_size.default_block_size` (above); N1, N2 need not be
      multiples.
    implementation: an `NtkImplementation` member or its value; "auto" (the default)
      picks the cheaper exact path by a FLOP estimate (`ntk_tf.ntk.auto`).
    dtype: "float32" or "float64" (the precision rule above).
    progress: show blocks done, rate and ETA.
    memory_budget_bytes: bytes one block may use (estimated); None means the
      machine's physical memory for an explicit block_size, and the default
      budget above when block_size is None.
    output_kernel: None (one logit; a K > 1 model is refused, naming K),
      "full", "diagonal", "trace" or "pseudo" (above).
    **options: options of the implementation's `make_block_fn` (the table
      right above; `implementation.OPTIONS`: matmul_engine, accumulate_dtype,
      allow_tf32, nominal_block, choices, feature_cache_bytes); one the
      implementation does not take raises ValueError naming it.

  Returns:
    `[N1, N2]` array of `dtype` (`[N1, N2, K, K]` for "full", `[N1, N2, K]`
    for "diagonal" with K > 1).

  Paper: Sec. 2, eq. for Theta; App. B.
  """
  x1, x2, block_size, dtype = prepare(model, x1, x2, block_size, dtype,  # checks the model
                                      implementation=implementation, cap_block_size=True,
                                      memory_budget_bytes=memory_budget_bytes,
                                      output_kernel=output_kernel)
  member = check_options(implementation, options)
  model, kernel, k = output_kernel_lib.output_model(model, output_kernel, x1[:1])
  fn = _reusable_block_fn(_IMPLEMENTATION_TO_BLOCK_FN[member], model, member, dtype, block_size,
                          _with_output_kernel(options, kernel))
  n2 = x1.shape[0] if x2 is None else x2.shape[0]
  shape = output_kernel_lib.gram_shape(x1.shape[0], n2, kernel, k)  # [N1, N2, ...]
  return _fill_gram_clearing(fn, x1, x2, block_size, shape, dtype, progress)


def _fill_gram_clearing(fn: BlockFn, x1: np.ndarray, x2: Optional[np.ndarray], block_size: int,
                        shape: Tuple[int, ...], dtype: str, progress: bool) -> np.ndarray:
  """`_fill_gram`, with `fn`'s feature cache (if any) emptied before and after."""
  feature_cache = getattr(fn, "cache", None)
  if feature_cache is not None:
    feature_cache.clear()  # Weights may have changed since a reused fn last ran.
  try:
    return _fill_gram(fn, x1, x2, block_size, shape, dtype, progress)
  finally:
    if feature_cache is not None:
      feature_cache.clear()  # Do not hold block features past the call.


def _fill_gram(fn: BlockFn, x1: np.ndarray, x2: Optional[np.ndarray], block_size: int,
               shape: Tuple[int, ...], dtype: str, progress: bool) -> np.ndarray:
  """Returns Theta(x1, x2) of `shape` `[N1, N2, ...]` from `fn`'s blocks.

  With x2 None the upper triangle of blocks is mirrored
  (`output_kernel.transpose_block`: for "full", Theta[j, i, b, a] = Theta[i, j, a, b]).
  """
  n1, n2 = shape[:2]
  blocks = iter_blocks(n1, n2, block_size, symmetric=x2 is None)
  theta = np.empty(shape, dtype=dtype)  # [N1, N2, ...]
  key_memo = {}  # Content keys of the row blocks, for this call only.
  with progress_lib.Progress(len(blocks), desc="ntk_gram", unit="blocks",
                             enabled=progress) as bar:
    for position in sweep(fn, blocks, block_size):
      block = blocks[position]
      i0, i1, j0, j1 = block
      theta_block = compute_block(fn, x1, x2, block, block_size, key_memo)
      theta[i0:i1, j0:j1] = theta_block
      if x2 is None and i0 != j0:
        theta[j0:j1, i0:i1] = output_kernel_lib.transpose_block(theta_block)
      bar.update()
  return theta
