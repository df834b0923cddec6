"""`StructuredNtk`: the structured-NTK BlockFn of one model, and its `make_block_fn`.

Plan (`plan.ModelPlan`) + features (`features.FeatureExtractor`, cached) +
contraction (`engines.Contraction`): Theta(x_a, x_b) = sum_l Theta_l(x_a, x_b).
"""

from typing import List, Mapping, Optional, Union

import keras
import numpy as np

from ntk_tf import precision
from ntk_tf.ntk import implementation as implementation_lib
from ntk_tf.ntk import output_kernel as output_kernel_lib
from ntk_tf.ntk.structured import engines
from ntk_tf.ntk.structured import features as features_lib
from ntk_tf.ntk.structured import plan as plan_lib
from ntk_tf.types import Array, DType, Inputs

# The output kernels of a K-logit model this path computes ("pseudo" is one logit):
# "trace" carries the K logits' cotangents side by side (`features.FeatureExtractor`),
# "full" and "diagonal" keep them apart (`engines.OutputContraction`, host BLAS).
OUTPUT_KERNELS = (output_kernel_lib.FULL, output_kernel_lib.DIAGONAL, output_kernel_lib.TRACE)
_SEPARATE = (output_kernel_lib.FULL, output_kernel_lib.DIAGONAL)


class StructuredNtk:
  """The structured NTK of one model: a per-layer plan, cached block features, an engine.

  Call it as a BlockFn: `ntk(x_a, x_b=None) -> [Na, Nb]` (x_b None: the
  diagonal block Theta(x_a, x_a)). Diagonal blocks are exactly symmetric
  (`exactly_symmetric`): the NumPy engine mirrors one triangle and the XLA
  engine symmetrizes.

  Memory: features per example are sum over structured Dense layers of
  (K + 1 + C), over structured positional layers of P (K + C), plus the
  per-example gradient width p_G (jacobian-form kernels, biases, BatchNorm,
  reference layers); the peak of one block is `ntk_tf.ntk.block_size.peak_memory_bytes`.
  """

  exactly_symmetric = True  # Diagonal blocks: see the class docstring.
  # `ntk_gram` may keep it between Grams of `model`: its tf.functions read the
  # model's live variables, and its one state, the feature cache, is cleared.
  reusable = True

  def __init__(self, model: keras.Model, dtype: DType = "float32", *,
               choices: Union[None, str, Mapping[str, str]] = None,
               nominal_block: int = 256,
               matmul_engine: Union[str, implementation_lib.MatmulEngine] = "auto",
               accumulate_dtype: Optional[DType] = None, allow_tf32: bool = False,
               feature_cache_bytes: int = 1 << 30, output_kernel: Optional[str] = None):
    """Builds the plan.

    Args:
      model: a functional/sequential Keras model with output [N, 1] (or [N, K]
        with an output_kernel).
      dtype: "float32" or "float64"; the model is cast if needed.
      choices: None (by FLOP estimate), "structured" or "jacobian" for every
        Dense/Conv2D kernel, or {layer name: choice}.
      nominal_block: block size the FLOP estimate assumes when choosing.
      matmul_engine: an `implementation.MatmulEngine` or its value ("auto": NumPy
        when no GPU is visible, else XLA).
      accumulate_dtype: dtype the per-layer contributions are summed in
        (default `dtype`; "float64" for float32 features).
      allow_tf32: allow TF32 matmuls on GPU (inexact; off by default).
      feature_cache_bytes: host memory for caching per-block features, so an
        example block's forward/backward pass runs once per Gram.
      output_kernel: None (one logit), or a K-logit model's "trace" (folded
        features, any engine), "full" or "diagonal" (per-logit features,
        contracted by `engines.OutputContraction` on the host whatever
        `matmul_engine` says); `OUTPUT_KERNELS`.
    """
    output_kernel_lib.check_supported(output_kernel_lib.check_output_kernel(output_kernel),
                                      OUTPUT_KERNELS, "structured")
    self.output_kernel = output_kernel
    self.dtype = precision.canonical_dtype(dtype)
    self.accumulate_dtype = precision.canonical_dtype(accumulate_dtype or self.dtype)
    engine = implementation_lib.resolve_engine(matmul_engine)
    self.allow_tf32 = bool(allow_tf32)
    self.model = precision.cast_model(model, self.dtype)
    self.model_plan = plan_lib.ModelPlan(self.model, choices=choices,
                                         nominal_block=nominal_block)
    self.plans: List[plan_lib.LayerPlan] = self.model_plan.plans
    self.input_shape = self.model_plan.input_shape
    output_kernel_lib.resolve(output_kernel, self.model_plan.outputs,  # K > 1 needs one.
                              model.name)
    offsets = [float(p.bias) for p in self.plans if p.is_product]
    separate = output_kernel in _SEPARATE
    if separate:  # Host BLAS whatever the engine: the O x O structure (`OutputContraction`).
      self.contraction = engines.OutputContraction(
          offsets, self.accumulate_dtype,
          diagonal_only=output_kernel == output_kernel_lib.DIAGONAL)
    else:
      self.contraction = engines.make_contraction(engine, offsets, self.accumulate_dtype)
    self.matmul_engine = "numpy" if self.contraction.on_host else "xla"
    self.features = features_lib.FeatureExtractor(
        self.model_plan, on_host=self.contraction.on_host, allow_tf32=self.allow_tf32,
        cache_bytes=feature_cache_bytes, outputs=self.model_plan.outputs,
        separate_outputs=separate)

  @property
  def cache(self) -> features_lib.FeatureCache:
    """The feature cache (`cache.clear()` empties it)."""
    return self.features.cache

  def cached_blocks(self) -> int:
    """How many blocks' features the cache holds, from its entries so far (0 before any).

    `ntk_gram` and `GramStore` order the blocks by it (`gram.sweep_order`).
    """
    cache = self.cache
    if not len(cache) or not cache.size_bytes:
      return 0
    return int(cache.max_bytes * len(cache) // cache.size_bytes)

  def flop_report(self, n_a: int, n_b: int) -> List[dict]:
    """Per-layer FLOP estimates for one [n_a, n_b] block (`plan.flop_report`)."""
    return self.model_plan.flop_report(n_a, n_b)

  def __call__(self, x_a: Inputs, x_b: Optional[Inputs] = None) -> Array:
    """Returns the NTK block Theta(x_a, x_b) [Na, Nb] (x_b None: Theta(x_a, x_a))."""
    features_a = self.features(x_a)
    features_b = features_a if x_b is None else self.features(x_b)
    with precision.tf32_matmuls(self.allow_tf32):
      return self.contraction(features_a, features_b, diagonal=x_b is None)


def make_block_fn(model: keras.Model, dtype: DType = "float32", block_size: Optional[int] = None,
                  *, choices: Union[None, str, Mapping[str, str]] = None,
                  nominal_block: int = 256,
                  matmul_engine: Union[str, implementation_lib.MatmulEngine] = "auto",
                  accumulate_dtype: Optional[DType] = None, allow_tf32: bool = False,
                  feature_cache_bytes: int = 1 << 30,
                  output_kernel: Optional[str] = None) -> StructuredNtk:
  """Returns the structured-NTK BlockFn `(x_a, x_b=None) -> Theta(x_a, x_b)` [Na, Nb].

  Theta = sum_l Theta_l as in `ntk_tf.ntk.structured`; the options are those of
  `StructuredNtk`. Blocks are padded to `block_size` rows by the caller
  (`ntk_tf.ntk.gram`).
  """
  del block_size  # Features are bucketed by the block sizes they see.
  return StructuredNtk(model, dtype, choices=choices, nominal_block=nominal_block,
                       matmul_engine=matmul_engine, accumulate_dtype=accumulate_dtype,
                       allow_tf32=allow_tf32, feature_cache_bytes=feature_cache_bytes,
                       output_kernel=output_kernel)
