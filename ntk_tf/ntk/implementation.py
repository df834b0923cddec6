"""Which algorithm computes a Gram block: the enums, the BlockFn protocol, option checks.

    BlockFn: (x_a [B, ...], x_b [B, ...] | None) -> Theta(x_a, x_b) [B, B]

(x_b None means x_b = x_a, a diagonal block of a symmetric Gram.) Every
`NtkImplementation` member has one module with a function

    make_block_fn(model, dtype, block_size, *, output_kernel=None, **options) -> BlockFn

`output_kernel` ("full", "diagonal", "trace"; None for one logit) is the
kernel of a K-logit model (`ntk_tf.ntk.output_kernel`); the BlockFn then
returns `[Na, Nb, K, K]`, `[Na, Nb, K]` or `[Na, Nb]`, and a make_block_fn
refuses a kernel it does not compute, naming the implementation and kernel.

`model` is the Keras model as the caller gave it, `dtype` "float32" or
"float64" (the precision rule is in `ntk_tf.ntk.gram.ntk_gram`), `block_size`
the number of rows B of the padded blocks the BlockFn will receive. `options`
are keyword-only arguments of that function (see `OPTIONS`); `check_options`
rejects any option it does not take, by name, before it is called. The table
from member to function is `ntk_tf.ntk.gram` (right above `ntk_gram`).

This module imports no implementation.
"""

import enum
import inspect
from typing import Any, Callable, Mapping, Optional, Protocol, Tuple, Union

import numpy as np


class NtkImplementation(enum.Enum):
  """How a Gram block is computed; every member must match JACOBIAN in tests."""

  JACOBIAN = "jacobian"
  """Reference: per-example GradientTape Jacobians J_a, J_b [B, P], then J_a J_b^T
  (`ntk_tf.ntk.jacobian_block`). Cost: 2B backward passes of batch 1 per block (B
  with a cached row block) plus a [B, P] x [P, B] matmul. Fast when P is small
  (MLP, LeNet); for ResNet18 (P = 11M) use small blocks. Peak memory:
  `ntk_tf.ntk.block_size.peak_memory_bytes`."""

  STRUCTURED = "structured"
  """Structured derivatives (`ntk_tf.ntk.structured`): per layer, the cheaper (by a
  FLOP estimate, see `structured.flop_report`) of the product form
  (A_a A_b^T) * (D_a D_b^T) of layer inputs A and output cotangents D (Dense;
  patch/cotangent sums for Conv2D) and the layer's own per-example gradients
  contracted; BatchNorm affine parameters and biases by per-example gradients;
  unknown layers fall back to the reference path for their variables only.
  One batched forward/backward pass per block instead of B single-example
  ones. Peak memory: `ntk_tf.ntk.block_size.peak_memory_bytes`."""

  NTK_VECTOR_PRODUCTS = "ntk_vector_products"
  """Matrix-free (`ntk_tf.ntk.ntk_vector_products`): Theta v = J (J^T v) by one VJP
  and one JVP pass over the data, so no [B, P] Jacobian is ever held. A Gram
  block costs B such products; its real use is top-k eigenvectors without
  storing Theta (`ntk_tf.NtkOperator` passed to `ntk_tf.eigen`). Peak memory:
  `ntk_tf.ntk.block_size.peak_memory_bytes`."""

  AUTO = "auto"
  """STRUCTURED or JACOBIAN, whichever has fewer estimated FLOPs for a block of
  `nominal_block` examples, by the rule of `ntk_tf.ntk.auto`."""


# The values of every member, e.g. for validating a config field.
IMPLEMENTATION_NAMES: Tuple[str, ...] = tuple(m.value for m in NtkImplementation)


class MatmulEngine(enum.Enum):
  """Where the final GEMMs of a block (J_a J_b^T, feature Grams) run."""

  AUTO = "auto"
  """The path's default: STRUCTURED uses NUMPY when no GPU is visible, else XLA;
  JACOBIAN uses XLA."""
  XLA = "xla"
  """`ops/` (jit-compiled TensorFlow), static padded shapes."""
  NUMPY = "numpy"
  """Host BLAS through NumPy/SciPy (float32/float64 GEMM and SYRK)."""


MATMUL_ENGINE_NAMES: Tuple[str, ...] = tuple(m.value for m in MatmulEngine)


def _member(enum_cls, value, name: str):
  """Returns the member of `enum_cls` named by `value` (a member or its value), else raises."""
  try:
    return enum_cls(value)
  except ValueError:
    names = [m.value for m in enum_cls]
    raise ValueError(f"{name} must be one of {names}. Received: {name}={value!r}") from None


def resolve_engine(engine: Union[str, MatmulEngine]) -> MatmulEngine:
  """Returns the `MatmulEngine` member named by `engine`, else raises naming it."""
  return _member(MatmulEngine, engine, "matmul_engine")


# Every option some make_block_fn takes (each takes a subset):
#   matmul_engine     MatmulEngine or its value        (jacobian, structured)
#   accumulate_dtype  dtype the block is summed in      (jacobian, structured)
#   allow_tf32        TF32 matmuls on Ampere+ GPUs      (all; False by default)
#   nominal_block     block size the FLOP rules plan for (structured, auto)
#   choices           per-layer form of the structured path (structured)
#   feature_cache_bytes  host memory for cached block features (structured)
OPTIONS: Tuple[str, ...] = ("matmul_engine", "accumulate_dtype", "allow_tf32", "nominal_block",
                            "choices", "feature_cache_bytes")
# Keyword-only arguments of a make_block_fn that are not options: `ntk_gram` passes
# `output_kernel` itself (resolved by `ntk_tf.ntk.output_kernel`), never from **options.
NOT_OPTIONS: Tuple[str, ...] = ("output_kernel",)


class BlockFn(Protocol):
  """Theta(x_a, x_b) `[Na, Nb]` of x_a `[Na, ...]` and x_b `[Nb, ...]` (None: x_b = x_a).

  An optional attribute `exactly_symmetric = True` says diagonal blocks come
  out exactly symmetric, so `ntk_gram` need not symmetrize them. An optional
  method `cached_blocks() -> int` says how many example blocks' features the
  BlockFn caches (once it has computed one); `ntk_gram` and `GramStore` then
  order the blocks to reuse them (`gram.sweep_order`), else go row by row.
  """

  def __call__(self, x_a: np.ndarray, x_b: Optional[np.ndarray] = None) -> np.ndarray:
    ...


MakeBlockFn = Callable[..., BlockFn]  # (model, dtype, block_size, **options) -> BlockFn


def resolve(implementation: Union[str, NtkImplementation]) -> NtkImplementation:
  """Returns the `NtkImplementation` member named by `implementation`, else raises naming it."""
  return _member(NtkImplementation, implementation, "implementation")


def accepted_options(make_block_fn: MakeBlockFn) -> Tuple[str, ...]:
  """Returns the options (keyword-only arguments) `make_block_fn` takes.

  One with `**options` (AUTO's) takes every name in `OPTIONS` and passes them
  on to a `make_block_fn` that checks them.
  """
  params = inspect.signature(make_block_fn).parameters.values()
  names = [p.name for p in params
           if p.kind == inspect.Parameter.KEYWORD_ONLY and p.name not in NOT_OPTIONS]
  if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params):
    names += [name for name in OPTIONS if name not in names]
  return tuple(names)


def check_options(member: NtkImplementation, make_block_fn: MakeBlockFn,
                  options: Mapping[str, Any]) -> None:
  """Raises ValueError naming every option `member`'s `make_block_fn` does not take."""
  accepted = accepted_options(make_block_fn)
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    raise ValueError(f"implementation={member.value!r} takes the options {list(accepted)}. "
                     f"Received: {', '.join(f'{k}={options[k]!r}' for k in unknown)}")
