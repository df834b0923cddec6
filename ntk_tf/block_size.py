"""Gram block size from a memory budget.

Peak memory of one [B, B] Gram block (s = bytes per float, F_act = floats of
all layer outputs per example, P = trainable parameters):

  structured:          s * [ 3 B F_act + B F_patch + 2 B F_feat + B^2 (7 + P2) ]
      (forward activations and their cotangents and the recorded copies;
       the largest conv patch tensor F_patch = P_l K_l; features of both
       blocks, F_feat per example; the NumPy engine's kept Gram buffers, two
       block shapes of three [B, B] each (the sum and two factor Grams), and
       the result, plus the [B, B, P_l, P_l] intermediate of a structured
       conv, P2 = max P_l^2)
  jacobian:            s * [ 2 B P + 3 B F_act + B^2 ]
      (both Jacobian blocks, activations/cotangents, the result)
  ntk_vector_products: s * [ 4 B F_act + 4 P ]
      (activations with forward-mode tangents, the tangent u and gradients;
       the Gram itself is N^2 s on top, not counted per block)

`block_size_for_budget` returns the largest B (capped at `max_block`) whose
peak fits the budget. The feature cache of the structured path
(`feature_cache_bytes`) is a separate budget.
"""

import math
from typing import Optional

import keras

from ntk_tf import precision
from ntk_tf import structured
from ntk_tf.types import DType, Shape

IMPLEMENTATIONS = ("jacobian", "structured", "ntk_vector_products", "auto")


def peak_memory_bytes(model: keras.Model, block_size: int, implementation: str,
                      dtype: DType = "float32",
                      ntk: Optional[structured.StructuredNtk] = None) -> int:
  """Returns the estimated peak memory of one [B, B] block (formula in the module docstring)."""
  implementation = getattr(implementation, "value", implementation)
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}. "
                     f"Received: implementation={implementation!r}")
  itemsize = 8 if precision.canonical_dtype(dtype) == "float64" else 4
  ntk = ntk or structured.StructuredNtk(model, precision.model_dtype(model))
  b = int(block_size)
  act = ntk.activation_size()
  params = sum(p.params for p in ntk.plans)
  if implementation in ("structured", "auto"):
    floats = (3 * b * act + b * ntk.transient_size() + 2 * b * ntk.feature_size()
              + b * b * (7 + ntk.positional_square()))
  elif implementation == "jacobian":
    floats = 2 * b * params + 3 * b * act + b * b
  else:
    floats = 4 * b * act + 4 * params
  return itemsize * floats


def block_size_for_budget(model: keras.Model, input_shape: Shape, memory_budget_bytes: int,
                          implementation: str = "structured", dtype: DType = "float32", *,
                          max_block: int = 4096) -> int:
  """Returns the largest block size B <= max_block whose peak memory fits the budget.

  Peak memory per block is the formula of the module docstring, quadratic in
  B: a B^2 + b B + c <= budget.

  Args:
    model: the model (its input shape must equal `input_shape`).
    input_shape: `(H, W, C)` of one example.
    memory_budget_bytes: bytes one Gram block may use.
    implementation: "structured", "jacobian", "ntk_vector_products" or "auto".
    dtype: "float32" or "float64".
    max_block: upper bound on B.
  Raises:
    ValueError: if not even B = 1 fits.
  """
  if tuple(model.inputs[0].shape[1:]) != tuple(input_shape):
    raise ValueError(f"input_shape must match the model's input {tuple(model.inputs[0].shape[1:])}. "
                     f"Received: input_shape={tuple(input_shape)}")
  if memory_budget_bytes <= 0:
    raise ValueError(f"memory_budget_bytes must be positive. "
                     f"Received: memory_budget_bytes={memory_budget_bytes}")
  ntk = structured.StructuredNtk(model, precision.model_dtype(model))
  peak = lambda b: peak_memory_bytes(model, b, implementation, dtype, ntk=ntk)
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
