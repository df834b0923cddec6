"""Planning of the structured NTK: which form each layer takes, its FLOPs and memory.

Per layer with trainable weights, a `LayerPlan` records the contraction sizes
(P output positions, K patch length or Dense input width, C output channels)
and the form: "structured" (the product of an inputs Gram and a cotangents
Gram), "jacobian" (per-example gradients contracted) or "reference" (layers
with no structured rule: per-example gradients by `tape.jacobian`). Each
Dense / Conv2D kernel takes the form with fewer FLOPs for a
[nominal_block, nominal_block] block (`LayerPlan.structured_flops`,
`LayerPlan.jacobian_flops`). `ModelPlan` holds the plans of one model and the
per-example sizes the peak-memory formula (`ntk_tf.ntk.block_size`) uses.
"""

import dataclasses
import math
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from ntk_tf import precision
from ntk_tf.ntk.structured import geometry
from ntk_tf.ntk.structured import keras_graph
from ntk_tf.types import Shape

STRUCTURED = "structured"
JACOBIAN = "jacobian"
REFERENCE = "reference"
CHOICES = (STRUCTURED, JACOBIAN)


@dataclasses.dataclass
class LayerPlan:
  """How one layer's NTK contribution is computed.

  kind: "dense" | "conv2d" | "batch_norm" | "reference".
  positions (P), patch_len (K), channels (C): the layer's contraction sizes
  (Dense on [N, ..., K] inputs has P = prod of the middle dimensions).
  """
  name: str
  kind: str
  layer: Optional[keras.layers.Layer]
  params: int
  kernel: bool = False
  bias: bool = False
  gamma: bool = False
  beta: bool = False
  positions: int = 1
  patch_len: int = 0
  channels: int = 0
  choice: str = JACOBIAN
  variables: Tuple = ()
  patches: Optional[Tuple] = None  # Conv2D: (paddings, index) of `geometry.patch_indices`.

  def structured_flops(self, n_a: int, n_b: int) -> Optional[int]:
    """FLOPs of the structured product for a [n_a, n_b] block (kernel + bias), or None."""
    if self.kind not in ("dense", "conv2d") or not self.kernel:
      return None
    p, k, c = self.positions, self.patch_len, self.channels
    if p == 1:  # (A_a A_b^T) * (D_a D_b^T), bias as a ones column of A.
      return 2 * n_a * n_b * (k + self.bias + c) + n_a * n_b
    kernel = 2 * n_a * n_b * p * p * (k + c) + 2 * n_a * n_b * p * p
    return kernel + self._bias_flops(n_a, n_b)

  def jacobian_flops(self, n_a: int, n_b: int) -> int:
    """FLOPs of forming per-example gradients for both blocks and contracting them."""
    if self.kind == REFERENCE:
      return 2 * n_a * n_b * self.params  # Forming them is a jacobian pass (not counted).
    if self.kind == "batch_norm":
      per_example = 2 * self.positions * self.channels * (self.gamma + self.beta)
      return (n_a + n_b) * per_example + 2 * n_a * n_b * self.params
    flops = self._bias_flops(n_a, n_b)
    if self.kernel:
      p, k, c = self.positions, self.patch_len, self.channels
      flops += 2 * (n_a + n_b) * p * k * c + 2 * n_a * n_b * k * c
    return flops

  def _bias_flops(self, n_a, n_b):
    if not self.bias:
      return 0
    return (n_a + n_b) * self.positions * self.channels + 2 * n_a * n_b * self.channels

  def flops(self, n_a: int, n_b: int) -> int:
    """FLOPs of the chosen form."""
    if self.choice == STRUCTURED:
      return self.structured_flops(n_a, n_b)
    return self.jacobian_flops(n_a, n_b)

  @property
  def is_product(self) -> bool:
    """A structured kernel with one position: (A_a A_b^T) * (D_a D_b^T)."""
    return (self.kind in ("dense", "conv2d") and self.kernel and self.choice == STRUCTURED
            and self.positions == 1)

  @property
  def is_positional(self) -> bool:
    """A structured kernel with P > 1 positions: sum_{p,q} (X_a[p].X_b[q]) (D_a[p].D_b[q])."""
    return (self.kind in ("dense", "conv2d") and self.kernel and self.choice == STRUCTURED
            and self.positions > 1)


def check_logits(outputs):
  """Returns `outputs` if it is one output of logits [N, O], else raises naming its shape.

  (O logits: the output kernels of `ntk_tf.ntk.output_kernel`, which call it K;
  here K is the patch length.)
  """
  if len(outputs.shape) != 2:
    raise ValueError(f"The structured NTK needs one output of logits, [N, O]. "
                     f"Received: output shape {tuple(outputs.shape)}")
  return outputs


def _var_size(v) -> int:
  return int(np.prod(v.shape)) if len(v.shape) else 1


class ModelPlan:
  """The per-layer plans of one model (in its own dtype), its FLOP and memory counts.

  Attributes:
    model: the model; graph: its Functional graph; input_shape: one example's shape.
    outputs: O, the width of the model's output of logits [N, O].
    plans: one `LayerPlan` per layer with trainable weights, in graph order
      (plus one for trainable variables no layer owns).
  """

  def __init__(self, model: keras.Model, *,
               choices: Union[None, str, Mapping[str, str]] = None, nominal_block: int = 256):
    if nominal_block <= 0:
      raise ValueError(f"nominal_block must be positive. Received: nominal_block={nominal_block}")
    self.dtype = precision.model_dtype(model)
    model = precision.cast_model(model, self.dtype)  # A mixed-policy model: its own dtype.
    self.model = model
    self.graph = keras_graph.functional_graph(model)
    self.input_shape = tuple(model.inputs[0].shape[1:])
    self.plans = self._make_plans(choices, nominal_block)

  def _make_plans(self, choices, nominal_block) -> List[LayerPlan]:
    trainable_ids = {id(v) for v in self.model.trainable_variables}
    counts = keras_graph.node_counts(self.graph)
    plans, covered = [], set()
    for layer in self.graph.layers:
      own = [v for v in layer.trainable_variables if id(v) in trainable_ids]
      if not own:
        continue
      kind = keras_graph.known_kind(layer)
      if kind is not None and counts.get(id(layer), 0) == 1:
        plan = LayerPlan(name=layer.name, kind=kind, layer=layer,
                         params=sum(_var_size(v) for v in own))
        if kind in ("dense", "conv2d"):
          plan.kernel = id(layer.kernel) in trainable_ids
          plan.bias = layer.bias is not None and id(layer.bias) in trainable_ids
        else:
          plan.gamma = layer.scale and id(layer.gamma) in trainable_ids
          plan.beta = layer.center and id(layer.beta) in trainable_ids
      else:
        plan = LayerPlan(name=layer.name, kind=REFERENCE, layer=layer,
                         params=sum(_var_size(v) for v in own), choice=REFERENCE,
                         variables=tuple(own))
      covered.update(id(v) for v in own)
      plans.append(plan)
    leftover = tuple(v for v in self.model.trainable_variables if id(v) not in covered)
    if leftover:
      plans.append(LayerPlan(name="<unassigned variables>", kind=REFERENCE, layer=None,
                             params=sum(_var_size(v) for v in leftover), choice=REFERENCE,
                             variables=leftover))
    self._fill_shapes(plans)
    for plan in plans:
      if plan.kind in ("dense", "conv2d") and plan.kernel:
        plan.choice = _pick(plan, choices, nominal_block)
    return plans

  def _fill_shapes(self, plans):
    """Reads P, K, C of each known layer from one eager pass on a single zero input."""
    known = {id(p.layer): p.kind for p in plans if p.kind != REFERENCE}
    recorder = keras_graph.Recorder(self.graph, known)
    self.outputs = int(check_logits(
        recorder.run(tf.zeros((1,) + self.input_shape, self.dtype))).shape[-1])  # O logits
    for plan in plans:
      if plan.kind == REFERENCE:
        continue
      inputs, z = recorder.records[plan.name]
      plan.channels = int(z.shape[-1])
      if plan.kind == "dense":
        plan.patch_len = int(inputs.shape[-1])
        plan.positions = int(np.prod(z.shape[1:-1])) if len(z.shape) > 2 else 1
      elif plan.kind == "conv2d":
        plan.patch_len = int(np.prod(plan.layer.kernel.shape[:-1]))
        plan.positions = int(np.prod(z.shape[1:-1]))
        plan.patches = geometry.patch_indices(plan.layer, tuple(inputs.shape[1:3]))
        if len(plan.patches[1]) != plan.positions * int(np.prod(plan.layer.kernel_size)):
          raise AssertionError(f"The patch index of layer {plan.name!r} does not match its "
                               f"output shape {tuple(z.shape)}")
      else:  # BatchNormalization of the last axis (others are REFERENCE: `known_kind`).
        plan.positions = int(np.prod(z.shape[1:-1])) if len(z.shape) > 2 else 1

  # ---------------------------------------------------------------- FLOPs
  def flop_report(self, n_a: int, n_b: int) -> List[dict]:
    """Per-layer FLOP estimates for one [n_a, n_b] block (see `flop_report`)."""
    return [dict(layer=p.name, kind=p.kind, params=p.params,
                 structured_flops=p.structured_flops(n_a, n_b) if p.kind != REFERENCE else None,
                 jacobian_flops=p.jacobian_flops(n_a, n_b), choice=p.choice)
            for p in self.plans]

  def forward_flops(self) -> int:
    """Per-example forward FLOPs F: 2 P K C per Dense/Conv2D, 4 P C per BatchNorm,
    2 p_layer per reference layer (parameter-free layers are not counted)."""
    total = 0
    for p in self.plans:
      if p.kind in ("dense", "conv2d"):
        total += 2 * p.positions * p.patch_len * p.channels
      elif p.kind == "batch_norm":
        total += 4 * p.positions * p.channels
      else:
        total += 2 * p.params
    return total

  @property
  def params(self) -> int:
    """P, the number of trainable parameters."""
    return sum(p.params for p in self.plans)

  # ---------------------------------------------------------------- memory
  def activation_size(self) -> int:
    """Per-example floats F_act of all layer outputs (the forward pass's activations)."""
    return keras_graph.output_floats(self.graph)

  def feature_size(self, outputs: int = 1) -> int:
    """Per-example floats F_feat of block features: products, positional terms, gradients.

    With `outputs` O > 1 (the "trace" output kernel) every cotangent and
    per-example gradient is held once per logit (`features.FeatureExtractor`).
    """
    total = 0
    for p in self.plans:
      c = p.channels * outputs  # cotangent width
      if p.kind == REFERENCE:
        total += p.params * outputs
      elif p.kind == "batch_norm":
        total += c * (p.gamma + p.beta)
      else:
        if p.is_product:
          total += p.patch_len + c
          continue
        if p.kernel:
          total += (p.positions * (p.patch_len + c) if p.choice == STRUCTURED
                    else p.patch_len * c)
        total += c * p.bias
    return total

  def transient_size(self) -> int:
    """Per-example floats F_patch of the largest transient: conv patches [P, K] of one layer."""
    return max([p.positions * p.patch_len for p in self.plans if p.kind == "conv2d"] + [0])

  def positional_square(self) -> int:
    """max P^2 over structured positional terms (their [Na, Nb, P, P] intermediates)."""
    return max([p.positions ** 2 for p in self.plans if p.is_positional] + [0])


def _pick(plan: LayerPlan, choices, nominal_block: int) -> str:
  if isinstance(choices, str):
    choice = choices
  elif isinstance(choices, Mapping) and plan.name in choices:
    choice = choices[plan.name]
  else:
    structured = plan.structured_flops(nominal_block, nominal_block)
    choice = STRUCTURED if structured <= plan.jacobian_flops(nominal_block, nominal_block) \
        else JACOBIAN
  if choice not in CHOICES:
    raise ValueError(f"choice must be one of {CHOICES}. Received: choice={choice!r} "
                     f"for layer {plan.name!r}")
  return choice


def flop_report(model: keras.Model, input_shape: Shape, n_a: int, n_b: int) -> List[dict]:
  """Returns per-layer FLOP estimates for one [n_a, n_b] NTK block.

  structured_flops: the structured product (Dense: 2 Na Nb (K + 1 + C);
    Conv2D: 2 Na Nb P^2 (K + C) + bias), None where there is none.
  jacobian_flops: forming per-example gradients, 2 (Na + Nb) P K C, plus
    contracting them, 2 Na Nb p_layer.
  choice: the form the structured path uses ("structured" | "jacobian" | "reference").

  Args:
    model: the model (its own input shape must equal `input_shape`).
    input_shape: `(H, W, C)` of one example.
    n_a, n_b: block sizes.
  Returns:
    A list of dicts with keys layer, kind, params, structured_flops,
    jacobian_flops, choice.
  """
  check_input_shape(model, input_shape)
  return ModelPlan(model, nominal_block=max(n_a, n_b)).flop_report(n_a, n_b)


def check_input_shape(model: keras.Model, input_shape: Shape) -> None:
  """Raises if `input_shape` is not the model's input shape (one example)."""
  if tuple(model.inputs[0].shape[1:]) != tuple(input_shape):
    raise ValueError(f"input_shape must match the model's input {tuple(model.inputs[0].shape[1:])}. "
                     f"Received: input_shape={tuple(input_shape)}")


def contraction_flops(report: Sequence[Mapping], symmetric: bool = False) -> int:
  """Returns the FLOPs of the cheapest exact contraction: sum_l min(structured, jacobian).

  With `symmetric`, a square Gram needs only its N (N + 1) / 2 upper entries,
  so the count is halved (rounded up).
  """
  total = sum(min(f for f in (r["structured_flops"], r["jacobian_flops"]) if f is not None)
              for r in report)
  return math.ceil(total / 2) if symmetric else total
