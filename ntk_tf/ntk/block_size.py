"""Peak memory of one Gram block per implementation, and the block size for a budget.

The one peak-memory formula of each path (`ntk_gram`, `GramStore` and the
benchmark all refer here). It counts the arrays one [B, B] block holds at its
peak, in floats of s bytes (4 for float32, 8 for float64); the model's
weights, the inputs, the Gram result (N1 N2 s) and the structured feature
cache (`feature_cache_bytes`, a separate budget) are not counted. With
F_act = floats of all layer outputs per example, P = trainable parameters:

  jacobian:            s * [ 3 B P + 3 B F_act + B^2 ]
      (the cached row block J_a and the column block J_b [B, P], plus one
       transient [B, P] copy while per-example gradients are stacked; the
       activations, cotangents and recorded copies of the examples in flight,
       at most B; the [B, B] block)
  structured:          s * [ 3 B F_act + B F_patch + 2 B F_feat + B^2 (7 + P2) ]
      (forward activations and their cotangents and the recorded copies;
       the largest conv patch tensor F_patch = P_l K_l; features of both
       blocks, F_feat per example; the NumPy engine's kept Gram buffers, two
       block shapes of three [B, B] each (the sum and two factor Grams), and
       the result, plus the [B, B, P_l, P_l] intermediate of a structured
       conv, P2 = max P_l^2)
  ntk_vector_products: s * [ 4 B F_act + 4 P ]
      (activations with forward-mode tangents, the tangent u and gradients)
  auto:                the formula of the implementation `ntk_tf.ntk.auto` chooses.

A model with no layer graph (subclassed; only JACOBIAN and
NTK_VECTOR_PRODUCTS apply) is counted without its activations (F_act = 0).

A model with K > 1 logits and an output kernel (`ntk_tf.ntk.output_kernel`)
holds W entries per example pair, W = K^2 ("full"), K ("diagonal") or 1
("trace"), and K per-example gradients or cotangents per example:

  jacobian:            s * [ 3 B K P + 3 B F_act + 2 B^2 W ]
      (Jacobians [B, K, P]; the block and its reordered copy)
  structured:          s * [ (2 + K) B F_act + B F_patch + 2 B F_feat(K) + B^2 V (7 + P2) ]
      (K cotangents per activation; F_feat(K) counts K cotangents per layer;
       V = 1 for "trace", K^2 for "full" and "diagonal", whose contraction
       holds [B K, B K] cotangent Grams and [B, K, B, K, P_l, P_l] positional ones)
  ntk_vector_products: s * [ 4 B F_act + 4 P + B^2 W ]
  auto:                the formula of the implementation it chooses for that kernel.
"pseudo" is one logit (its model ends in a fixed sum): the one-logit formulas.

`block_size_for_budget` returns the largest B (capped at `max_block`) whose
peak fits the budget; `default_block_size`, what `ntk_gram` and `GramStore`
use when not given a block size, splits N evenly into blocks that fit and are
at most DEFAULT_MAX_BLOCK rows; `check_block_memory` refuses a block size whose
peak exceeds the budget (by default the machine's physical memory).
"""

import math
import os
from typing import Optional, Union

import keras

from ntk_tf import precision
from ntk_tf import validation
from ntk_tf.ntk import auto
from ntk_tf.ntk import implementation as implementation_lib
from ntk_tf.ntk import output_kernel as output_kernel_lib
from ntk_tf.ntk import structured
from ntk_tf.ntk.implementation import NtkImplementation
from ntk_tf.types import DType, Shape


def peak_memory_bytes(model: keras.Model, block_size: int,
                      implementation: Union[str, NtkImplementation],
                      dtype: DType = "float32",
                      model_plan: Optional[structured.ModelPlan] = None,
                      nominal_block: int = 256, *, output_kernel: Optional[str] = None,
                      outputs: Optional[int] = 1) -> int:
  """Returns the estimated peak memory of one [B, B] block (formula in the module docstring).

  Args:
    model: the model.
    block_size: B.
    implementation: an `NtkImplementation` member or its value.
    dtype: "float32" or "float64" (s = 4 or 8).
    model_plan: the model's `structured.ModelPlan`, if already built.
    nominal_block: the block size AUTO's choice and the structured plan assume.
    output_kernel: the kernel of a K-logit model ("full", "diagonal", "trace");
      None: one logit.
    outputs: K (None, unknown: counted as 1).
  """
  member = implementation_lib.resolve(implementation)
  itemsize = 8 if precision.canonical_dtype(dtype) == "float64" else 4
  k = int(outputs or 1) if output_kernel else 1
  width = output_kernel_lib.entries_per_pair(output_kernel, k)  # W
  b = int(block_size)
  if model_plan is None and not structured.keras_graph.is_functional(model):
    params = validation.parameter_count(model)
    if member == NtkImplementation.NTK_VECTOR_PRODUCTS:
      return itemsize * (4 * params + (b * b * width if output_kernel else 0))
    return itemsize * _jacobian_floats(b, params, 0, k, width, output_kernel)  # AUTO: JACOBIAN.
  model_plan = model_plan or structured.ModelPlan(model, nominal_block=nominal_block)
  if member == NtkImplementation.AUTO:
    member = auto.choose_implementation(model, model_plan.input_shape, nominal_block,
                                        output_kernel=output_kernel)
  act = model_plan.activation_size()
  if member == NtkImplementation.STRUCTURED:
    pair_blocks = k * k if output_kernel in (output_kernel_lib.FULL,
                                             output_kernel_lib.DIAGONAL) else 1  # V
    floats = ((2 + k) * b * act + b * model_plan.transient_size()
              + 2 * b * model_plan.feature_size(outputs=k)
              + b * b * pair_blocks * (7 + model_plan.positional_square()))
  elif member == NtkImplementation.JACOBIAN:
    floats = _jacobian_floats(b, model_plan.params, act, k, width, output_kernel)
  else:
    floats = 4 * b * act + 4 * model_plan.params + (b * b * width if output_kernel else 0)
  return itemsize * floats


def _jacobian_floats(b: int, params: int, act: int, k: int, width: int,
                     output_kernel: Optional[str]) -> int:
  """Floats of one jacobian block: 3 B K P + 3 B F_act + B^2 (2 W with an output kernel)."""
  return 3 * b * k * params + 3 * b * act + b * b * (2 * width if output_kernel else 1)


def block_size_for_budget(model: keras.Model, input_shape: Shape, memory_budget_bytes: int,
                          implementation: Union[str, NtkImplementation] = "structured",
                          dtype: DType = "float32", *, max_block: int = 4096) -> int:
  """Returns the largest block size B <= max_block whose peak memory fits the budget.

  Peak memory per block is the formula of the module docstring, quadratic in
  B: a B^2 + b B + c <= budget.

  Args:
    model: the model (its input shape must equal `input_shape`).
    input_shape: `(H, W, C)` of one example.
    memory_budget_bytes: bytes one Gram block may use.
    implementation: an `NtkImplementation` member or its value.
    dtype: "float32" or "float64".
    max_block: upper bound on B.
  Raises:
    ValueError: if not even B = 1 fits.
  """
  structured.plan.check_input_shape(model, input_shape)
  if memory_budget_bytes <= 0:
    raise ValueError(f"memory_budget_bytes must be positive. "
                     f"Received: memory_budget_bytes={memory_budget_bytes}")
  model_plan = structured.ModelPlan(model)
  member = implementation_lib.resolve(implementation)
  if member == NtkImplementation.AUTO:
    member = auto.choose_implementation(model, model_plan.input_shape, 256)
  peak = lambda b: peak_memory_bytes(model, b, member, dtype, model_plan=model_plan)
  c = peak(0)
  b1 = peak(1) - c
  b2 = peak(2) - c
  quad = (b2 - 2 * b1) / 2  # a
  lin = b1 - quad  # b
  if quad > 0:
    block = int((-lin + math.sqrt(lin * lin + 4 * quad * (memory_budget_bytes - c))) / (2 * quad)) \
        if memory_budget_bytes >= c else 0
  else:
    block = int((memory_budget_bytes - c) // lin) if lin > 0 else max_block
  while block > 0 and peak(block) > memory_budget_bytes:
    block -= 1
  if block < 1:
    raise ValueError(f"memory_budget_bytes is too small for a single example "
                     f"({peak(1)} bytes needed). Received: memory_budget_bytes={memory_budget_bytes}")
  return min(block, max_block)


def physical_memory_bytes() -> int:
  """Returns the machine's physical memory in bytes (0 if the OS does not say)."""
  try:
    return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
  except (ValueError, OSError, AttributeError):
    return 0


def check_block_memory(model: keras.Model, block_size: int,
                       implementation: Union[str, NtkImplementation],
                       dtype: DType = "float32",
                       memory_budget_bytes: Optional[int] = None, *,
                       output_kernel: Optional[str] = None, outputs: Optional[int] = 1) -> int:
  """Returns the estimated peak bytes of one block; raises if they exceed the budget.

  Args:
    model, block_size, implementation, dtype, output_kernel, outputs: as
      `peak_memory_bytes`.
    memory_budget_bytes: the bytes a block may use; None means the machine's
      physical memory (`physical_memory_bytes`; no check if unknown).
  Raises:
    ValueError: naming block_size and the estimate, when it exceeds the budget.
  """
  if memory_budget_bytes is None:
    memory_budget_bytes = physical_memory_bytes()
  else:
    memory_budget_bytes = validation.check_positive_int(memory_budget_bytes,
                                                        "memory_budget_bytes")
  if not memory_budget_bytes:
    return 0
  peak = peak_memory_bytes(model, block_size, implementation, dtype,
                           output_kernel=output_kernel, outputs=outputs)
  if peak > memory_budget_bytes:
    raise ValueError(
        f"block_size={block_size} needs about {peak / 2**30:.3g} GiB per block "
        f"(ntk_tf.ntk.block_size.peak_memory_bytes, implementation="
        f"{implementation_lib.resolve(implementation).value!r}, dtype={dtype!r}"
        f"{f', output_kernel={output_kernel!r}, K={outputs}' if output_kernel else ''}), "
        f"more than the "
        f"memory budget of {memory_budget_bytes / 2**30:.3g} GiB; use a smaller block_size "
        f"(ntk_tf.ntk.block_size.block_size_for_budget). Received: block_size={block_size}")
  return peak


# The budget of a block when `ntk_gram` chooses the block size (block_size=None)
# and no memory_budget_bytes is given: this, or a quarter of physical memory if less.
DEFAULT_MEMORY_BUDGET_BYTES = 1 << 30


def default_memory_budget_bytes() -> int:
  """Returns min(DEFAULT_MEMORY_BUDGET_BYTES, physical memory / 4) (the first if unknown)."""
  physical = physical_memory_bytes()
  return min(DEFAULT_MEMORY_BUDGET_BYTES, physical // 4) if physical else \
      DEFAULT_MEMORY_BUDGET_BYTES


def largest_block_size(model: keras.Model, implementation: Union[str, NtkImplementation],
                       dtype: DType, max_block: int,
                       memory_budget_bytes: Optional[int] = None, *,
                       output_kernel: Optional[str] = None,
                       outputs: Optional[int] = 1) -> int:
  """Returns the largest B in [1, max_block] with peak_memory_bytes(B) <= the budget.

  The bound `default_block_size` splits under. Peak memory grows with B (every
  formula of the module docstring is non-decreasing in B), so B is found by
  bisection. Returns 1 when not even one example fits (`check_block_memory`
  then decides against the machine's memory). Works for any model
  `peak_memory_bytes` takes (subclassed ones included).

  Args:
    model, implementation, dtype, output_kernel, outputs: as `peak_memory_bytes`.
    max_block: upper bound on B (a Gram's max(N1, N2)).
    memory_budget_bytes: bytes one block may use; None:
      `default_memory_budget_bytes()`.
  """
  max_block = validation.check_positive_int(max_block, "max_block")
  if memory_budget_bytes is None:
    memory_budget_bytes = default_memory_budget_bytes()
  member, model_plan = implementation_lib.resolve(implementation), None
  if structured.keras_graph.is_functional(model):
    model_plan = structured.ModelPlan(model)
    if member == NtkImplementation.AUTO:
      member = auto.choose_implementation(model, model_plan.input_shape, 256,
                                          output_kernel=output_kernel)
  fits = lambda b: peak_memory_bytes(model, b, member, dtype, model_plan=model_plan,
                                     output_kernel=output_kernel,
                                     outputs=outputs) <= memory_budget_bytes
  if fits(max_block):
    return max_block
  low, high = 1, max_block  # fits(low) or low == 1; not fits(high).
  while high - low > 1:
    mid = (low + high) // 2
    low, high = (mid, high) if fits(mid) else (low, mid)
  return low


# The largest block `default_block_size` picks, even where a larger one fits the budget:
# a few even blocks of at most this many rows beat one larger block, although a diagonal
# block computes its whole square (r row blocks compute N^2 (r + 1) / (2 r) entries instead
# of N^2), because larger blocks allocate larger fresh temporaries
# (`benchmarks/store_throughput.py` times block sizes); N <= 3,000 stays one block.
DEFAULT_MAX_BLOCK = 3000


def default_block_size(model: keras.Model, implementation: Union[str, NtkImplementation],
                       dtype: DType, n: int, memory_budget_bytes: Optional[int] = None, *,
                       output_kernel: Optional[str] = None,
                       outputs: Optional[int] = 1) -> int:
  """Returns the block size of `ntk_gram(block_size=None)`: N split evenly into row blocks.

      b = largest_block_size(..., min(n, DEFAULT_MAX_BLOCK), budget),
      r = ceil(n / b) row blocks,   B = ceil(n / r) <= b.

  So B fits the budget, is at most DEFAULT_MAX_BLOCK, and the last row block is
  not a sliver (n = 8,000 gives three blocks of 2,667, not 3,000 + 3,000 + 2,000).

  Args:
    model, implementation, dtype, memory_budget_bytes, output_kernel, outputs: as
      `largest_block_size`.
    n: the Gram's max(N1, N2) (> 0).
  """
  n = validation.check_positive_int(n, "n")
  largest = largest_block_size(model, implementation, dtype, min(n, DEFAULT_MAX_BLOCK),
                               memory_budget_bytes, output_kernel=output_kernel,
                               outputs=outputs)
  rows = -(-n // largest)
  return -(-n // rows)
