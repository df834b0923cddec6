"""The "auto" NTK implementation: the cheapest path by a FLOP estimate.

Rule. For an N x N Gram of a model with P trainable parameters and F forward
FLOPs per example (see `StructuredNtk.forward_flops`), estimate

  jacobian:            3 N F  + 2 N^2 P
      (per-example gradients, ~one forward+backward per example, then J J^T)
  structured:          3 N F  + sum_l min(structured_l, jacobian_l)(N, N)
      (one batched forward+backward, then each layer's cheaper form; layers it
       does not know cost as in the jacobian path)
  ntk_vector_products: 6 N^2 F
      (N products K e_j, each one VJP and one JVP pass over N examples)

and pick the smallest; ties go to the earlier of structured, jacobian,
ntk_vector_products. Since each structured layer costs at most its jacobian
form, "structured" is never worse than "jacobian"; NTK-vector products win
only when F is tiny compared with the per-layer contraction widths. For top-k
eigenvectors (k products instead of N) use `ntk_vector_products.NtkOperator`
directly.
"""

from typing import Dict

import keras

from ntk_tf import ntk_vector_products
from ntk_tf import precision
from ntk_tf import structured
from ntk_tf.types import DType, Shape

ORDER = ("structured", "jacobian", "ntk_vector_products")


def implementation_flops(model: keras.Model, input_shape: Shape, n: int) -> Dict[str, int]:
  """Returns the estimated FLOPs of an [n, n] Gram per implementation (rule above)."""
  if tuple(model.inputs[0].shape[1:]) != tuple(input_shape):
    raise ValueError(f"input_shape must match the model's input {tuple(model.inputs[0].shape[1:])}. "
                     f"Received: input_shape={tuple(input_shape)}")
  if n <= 0:
    raise ValueError(f"n must be positive. Received: n={n}")
  ntk = structured.StructuredNtk(model, precision.model_dtype(model), nominal_block=n)
  forward = ntk.forward_flops()
  params = sum(p.params for p in ntk.plans)
  contraction = structured.contraction_flops(ntk.flop_report(n, n))
  return {
      "structured": 3 * n * forward + contraction,
      "jacobian": 3 * n * forward + 2 * n * n * params,
      "ntk_vector_products": 6 * n * n * forward,
  }


def choose_implementation(model: keras.Model, input_shape: Shape, n: int):
  """Returns the implementation with the fewest estimated FLOPs for an [n, n] Gram.

  Returns `ntk_tf.gram.NtkImplementation` when that module is present, else
  its value string ("structured" | "jacobian" | "ntk_vector_products").
  """
  flops = implementation_flops(model, input_shape, n)
  best = min(ORDER, key=lambda name: (flops[name], ORDER.index(name)))
  try:
    from ntk_tf.gram import NtkImplementation  # pylint: disable=g-import-not-at-top
    return NtkImplementation(best)
  except ImportError:
    return best


def make_block_fn(model: keras.Model, dtype: DType = "float32", *, nominal_block: int = 256,
                  **options):
  """Returns the BlockFn of the implementation `choose_implementation` picks for one block.

  "jacobian" is never strictly cheaper than "structured" (see the rule), so
  this returns a structured or an NTK-vector-product BlockFn.
  """
  input_shape = tuple(model.inputs[0].shape[1:])
  choice = choose_implementation(model, input_shape, nominal_block)
  choice = getattr(choice, "value", choice)
  if choice == "ntk_vector_products":
    return ntk_vector_products.make_block_fn(model, dtype)
  return structured.make_block_fn(model, dtype, nominal_block=nominal_block, **options)
