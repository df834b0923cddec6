"""The "auto" NTK implementation: the cheapest path by a FLOP estimate.

Rule. For an n x n block of a model with P trainable parameters and F forward
FLOPs per example (`structured.ModelPlan.forward_flops`), estimate

  jacobian:            3 n F  + 2 n^2 P
      (per-example gradients, ~one forward+backward per example, then J J^T)
  structured:          3 n F  + sum_l min(structured_l, jacobian_l)(n, n)
      (one batched forward+backward, then each layer's cheaper form; layers it
       does not know cost as in the jacobian path)
  ntk_vector_products: 6 n^2 F
      (n products K e_j, each one VJP and one JVP pass over n examples)

and pick the smaller of structured and jacobian (ties: structured). A model with
no layer graph (a subclassed `keras.Model`) always gets jacobian. n is
`nominal_block` (256 by default, whatever the Gram's block_size, so the
choice does not depend on how a Gram is tiled). The jacobian estimate does
not count forming per-example conv gradients (they come with its backward
passes), so it can win for small n on conv nets.

NTK-vector products are never a candidate: every layer has at least as many
forward FLOPs as parameters (F >= P: Dense 2 K C vs K C + C, Conv2D 2 P_l K C,
BatchNorm 4 P_l C vs 2 C, other layers 2 p by the rule), so
6 n^2 F - (3 n F + 2 n^2 P) >= n F (4 n - 3) > 0: for a whole block they
always cost more FLOPs than the jacobian path. Their use is memory (no
[B, P] Jacobian) and top-k eigenvectors (k products instead of n): use
`ntk_vector_products.NtkOperator` directly.

Output kernels of a K-logit model (`ntk_tf.ntk.output_kernel`) are chosen by
the same one-logit rule: both candidates compute every kernel, and both pay
about K times the backward passes and K (trace) to K^2 (full) times the
final contraction of one logit. An output kernel a candidate does not
compute (`OUTPUT_KERNELS` of its module) goes to the other.
"""

from typing import Dict, Optional

import keras

from ntk_tf.ntk import engine_cache
from ntk_tf.ntk import implementation as implementation_lib
from ntk_tf.ntk import jacobian_block
from ntk_tf.ntk import structured
from ntk_tf.ntk.implementation import NtkImplementation
from ntk_tf.types import DType, Shape

# Candidates in tie-breaking order (NTK_VECTOR_PRODUCTS never wins: module docstring).
CANDIDATES = (NtkImplementation.STRUCTURED, NtkImplementation.JACOBIAN)
# The make_block_fn of each candidate (the table of `ntk_tf.ntk.gram` holds AUTO itself).
_CANDIDATE_TO_BLOCK_FN = {
    NtkImplementation.STRUCTURED: structured.make_block_fn,
    NtkImplementation.JACOBIAN: jacobian_block.make_block_fn,
}


def implementation_flops(model: keras.Model, input_shape: Shape,
                         n: int) -> Dict[NtkImplementation, int]:
  """Returns the estimated FLOPs of an [n, n] block per implementation (rule above)."""
  structured.plan.check_input_shape(model, input_shape)
  if n <= 0:
    raise ValueError(f"n must be positive. Received: n={n}")
  model_plan = structured.ModelPlan(model, nominal_block=n)
  forward = model_plan.forward_flops()
  contraction = structured.contraction_flops(model_plan.flop_report(n, n))
  return {
      NtkImplementation.STRUCTURED: 3 * n * forward + contraction,
      NtkImplementation.JACOBIAN: 3 * n * forward + 2 * n * n * model_plan.params,
      NtkImplementation.NTK_VECTOR_PRODUCTS: 6 * n * n * forward,
  }


def choose_implementation(model: keras.Model, input_shape: Shape, n: int, *,
                          output_kernel: Optional[str] = None) -> NtkImplementation:
  """Returns the candidate with the fewest estimated FLOPs for an [n, n] block.

  An `output_kernel` the structured path does not compute gets JACOBIAN
  (today it computes every one).
  """
  if output_kernel is not None and output_kernel not in structured.OUTPUT_KERNELS:
    return NtkImplementation.JACOBIAN
  flops = implementation_flops(model, input_shape, n)
  return min(CANDIDATES, key=lambda member: (flops[member], CANDIDATES.index(member)))


def make_block_fn(model: keras.Model, dtype: DType = "float32", block_size: Optional[int] = None,
                  *, nominal_block: int = 256, output_kernel: Optional[str] = None,
                  **options) -> implementation_lib.BlockFn:
  """Returns the BlockFn of the candidate with the fewest estimated FLOPs (rule above).

  `output_kernel` (a K-logit model's kernel) goes to the candidate, chosen as
  the module docstring says.

  The chosen candidate's `make_block_fn` gets `options`; one it does not take
  is rejected by name (`implementation.check_options`). nominal_block also
  reaches a structured choice. Without a `matmul_engine` option, the engine
  pinned or cached for the machine at hand and model name (`ntk_tf.ntk.engine_cache`)
  is used, if any.
  """
  if "matmul_engine" not in options:
    engine = engine_cache.matmul_engine(model.name)
    if engine is not None:
      options["matmul_engine"] = engine
  if not structured.keras_graph.is_functional(model):
    # A subclassed model has no layer graph to plan: only per-example gradients apply.
    choice = NtkImplementation.JACOBIAN
  else:
    choice = choose_implementation(model, tuple(model.inputs[0].shape[1:]), nominal_block,
                                   output_kernel=output_kernel)
    if choice == NtkImplementation.STRUCTURED:
      options["nominal_block"] = nominal_block
  chosen_make_block_fn = _CANDIDATE_TO_BLOCK_FN[choice]
  implementation_lib.check_options(choice, chosen_make_block_fn, options)
  if output_kernel is not None:
    options["output_kernel"] = output_kernel
  return chosen_make_block_fn(model, dtype, block_size, **options)
