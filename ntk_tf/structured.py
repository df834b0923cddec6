"""Structured empirical NTK: per-layer contributions without full Jacobians.

    Theta(x_a, x_b) = sum_l Theta_l(x_a, x_b),
    Theta_l(x_a, x_b) = < d f(x_a) / d theta_l , d f(x_b) / d theta_l >.

For every layer l with trainable parameters, one batched forward pass records
its input A (activations) and pre-activation output z, and one batched
backward pass of sum_i f(x_i) gives the per-example output cotangents
D_i = d f(x_i) / d z_i (examples are independent in inference mode, and the
model has one logit). Then, with `.` the inner product over features:

  Dense  z = A W + b:            Theta_W = (A_a A_b^T) * (D_a D_b^T),  Theta_b = D_a D_b^T
  Conv2D z = conv(A, W) + b:     Theta_W = sum_{p,q} (X_a[p] . X_b[q]) (D_a[p] . D_b[q])
                                 (X = input patches, p, q = output positions),
                                 or G_a G_b^T with g_i = sum_p X_i[p]^T D_i[p]
  BatchNorm (inference) y = gamma * xhat + beta:
                                 g_gamma,i = sum_pos xhat_i * D_i,  g_beta,i = sum_pos D_i
  other layers with trainable weights: per-example gradients of f with respect
                                 to that layer's variables by `tape.jacobian`
                                 (the reference path, restricted to the layer).

Each Dense / Conv2D kernel takes the cheaper, by the FLOP estimate in
`flop_report`, of (a) the structured product ("structured") and (b) forming
per-example gradients and contracting them ("jacobian"). Biases and BatchNorm
parameters are always per-example gradients (they have few parameters).

Shape convention: N examples, P output positions, K = kh*kw*C_in (patch
length; for Dense, the input width), C = output channels; `_a`, `_b` name the
two example blocks of a Gram block [Na, Nb].

Reference: the paper's App. B ("the NTK of a Dense layer factorizes") and
Novak et al. 2022, "Fast finite width neural tangent kernel".
"""

import dataclasses
import hashlib
import math
from collections import OrderedDict
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import keras
import numpy as np
from scipy.linalg import blas as scipy_blas
import tensorflow as tf
from absl import logging

from ntk_tf import precision
from ntk_tf.types import Array, DType, Inputs, Shape
from ops import structured_blocks

BlockFn = Callable[[Inputs, Optional[Inputs]], Array]

STRUCTURED = "structured"
JACOBIAN = "jacobian"
REFERENCE = "reference"
CHOICES = (STRUCTURED, JACOBIAN)
MATMUL_ENGINES = ("auto", "xla", "numpy")
_WORKSPACES = 2  # Gram-buffer shapes kept by the NumPy engine (see `_workspace`).
_MIN_CONV_CHANNELS = 8  # CPU: convs with fewer input channels run zero-padded (`_Recorder`).


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
  patches: Optional[Tuple] = None  # Conv2D: (paddings, index) of `patch_indices`.

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


def _graph(model: keras.Model):
  """The Functional graph that runs `model` (a Sequential wraps one)."""
  if isinstance(model, keras.Sequential):
    model.build(model.inputs[0].shape) if not model.built else None
    return model._functional  # pylint: disable=protected-access
  if not hasattr(model, "_run_through_graph"):
    raise ValueError(
        f"The structured NTK needs a functional or sequential Keras model. "
        f"Received: model={model.name!r} of type {type(model).__name__}")
  return model


def _node_counts(graph) -> Dict[int, int]:
  counts = {}
  for nodes in graph._nodes_by_depth.values():  # pylint: disable=protected-access
    for node in nodes:
      if node.operation is not None and not node.is_input:
        counts[id(node.operation)] = counts.get(id(node.operation), 0) + 1
  return counts


def _is_plain(layer, cls) -> bool:
  return (type(layer) is cls and getattr(layer, "quantization_mode", None) is None
          and not getattr(layer, "lora_enabled", False))


def _known_kind(layer) -> Optional[str]:
  if _is_plain(layer, keras.layers.Dense):
    return "dense"
  if (_is_plain(layer, keras.layers.Conv2D) and layer.groups == 1
      and layer.data_format == "channels_last"):
    return "conv2d"
  if type(layer) is keras.layers.BatchNormalization and not getattr(layer, "renorm", False):
    return "batch_norm"
  return None


class _Recorder:
  """Runs the model's graph, recording (A, z) for the planned layers."""

  def __init__(self, graph, known: Mapping[int, str], pad_channels: bool = False):
    self._graph = graph
    self._known = known  # id(layer) -> kind
    self.pad_channels = pad_channels
    self.records: Dict[str, Tuple[tf.Tensor, tf.Tensor]] = {}

  def run(self, x: tf.Tensor) -> tf.Tensor:
    self.records = {}
    outputs = self._graph._run_through_graph(x, operation_fn=self._operation_fn)  # pylint: disable=protected-access
    if isinstance(outputs, (list, tuple)) and len(outputs) == 1:
      outputs = outputs[0]  # [N, 1]
    return outputs

  def _operation_fn(self, op):
    kind = self._known.get(id(op))
    if kind == "dense":
      return lambda inputs, **kwargs: self._dense(op, inputs)
    if kind == "conv2d":
      return lambda inputs, **kwargs: self._conv(op, inputs)
    if kind == "batch_norm":
      return lambda inputs, **kwargs: self._batch_norm(op, inputs)

    def call(*args, **kwargs):
      if getattr(op, "_call_has_training_arg", False):
        kwargs["training"] = False
      return op(*args, **kwargs)
    return call

  def _dense(self, layer, inputs):
    z = keras.ops.matmul(inputs, layer.kernel)  # [N, ..., C]
    if layer.bias is not None:
      z = keras.ops.add(z, layer.bias)
    self.records[layer.name] = (inputs, z)
    return layer.activation(z) if layer.activation is not None else z

  def _conv(self, layer, inputs):
    c_in = inputs.shape[-1]
    if self.pad_channels and c_in < _MIN_CONV_CHANNELS:
      # TF's CPU (Eigen) conv is ~2x faster with 8 input channels than with 3
      # (LeNet conv 1, 1000 CIFAR images: 0.20 s vs 0.11 s); zero channels and
      # zero kernel rows add exact zeros, and the gradient of the pad is a slice.
      extra = _MIN_CONV_CHANNELS - c_in
      padded_inputs = tf.pad(inputs, [[0, 0]] * 3 + [[0, extra]])
      kernel = tf.pad(layer.kernel, [[0, 0]] * 2 + [[0, extra], [0, 0]])
      z = layer.convolution_op(padded_inputs, kernel)  # [N, H', W', C]
    else:
      z = layer.convolution_op(inputs, layer.kernel)  # [N, H', W', C]
    if layer.use_bias:
      z = keras.ops.add(z, keras.ops.reshape(layer.bias, (1, 1, 1, layer.filters)))
    self.records[layer.name] = (inputs, z)
    return layer.activation(z) if layer.activation is not None else z

  def _batch_norm(self, layer, inputs):
    y = layer(inputs, training=False)
    self.records[layer.name] = (inputs, y)
    return y


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> Tuple[int, int]:
  """TF/Keras 'same' padding (before, after) of one spatial axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
  return total // 2, total - total // 2


def conv_paddings(layer, input_hw: Tuple[int, int]) -> Tuple:
  """Returns the [N, H, W, C] paddings of a Conv2D's input ('same' or 'valid')."""
  (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.strides, layer.dilation_rate
  h, w = input_hw
  if layer.padding == "same":
    pad_h, pad_w = _same_padding(h, kh, sh, dh), _same_padding(w, kw, sw, dw)
  elif layer.padding == "valid":
    pad_h, pad_w = (0, 0), (0, 0)
  else:
    raise NotImplementedError(f"Conv2D padding must be 'same' or 'valid'. "
                              f"Received: padding={layer.padding!r} in layer {layer.name!r}")
  return ((0, 0), pad_h, pad_w, (0, 0))


def patch_indices(layer, input_hw: Tuple[int, int]) -> Tuple[Tuple, np.ndarray]:
  """Returns (paddings, index [P * kh * kw]) that gather a conv's input patches.

  The padded input, flattened to [N, Hp * Wp, C_in], gathered at `index` and
  reshaped to [N, P, kh * kw * C_in], holds the patch of every output position
  p = (oh, ow) in the kernel's (kh, kw, C_in) order: row oh * sh + i * dh,
  column ow * sw + j * dw of the padded input for kernel offset (i, j).
  """
  (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.strides, layer.dilation_rate
  paddings = conv_paddings(layer, input_hw)
  hp, wp = (size + sum(pad) for size, pad in zip(input_hw, paddings[1:3]))
  out_h = (hp - (kh - 1) * dh - 1) // sh + 1
  out_w = (wp - (kw - 1) * dw - 1) // sw + 1
  rows = (np.arange(out_h)[:, None, None, None] * sh + np.arange(kh)[None, None, :, None] * dh)
  cols = (np.arange(out_w)[None, :, None, None] * sw + np.arange(kw)[None, None, None, :] * dw)
  index = (rows * wp + cols).reshape(-1).astype(np.int32)  # [out_h * out_w * kh * kw]
  return paddings, index


def _conv_patches(layer, inputs: tf.Tensor, paddings, index: np.ndarray) -> tf.Tensor:
  """Returns the conv's input patches [N, P, K] (K ordered as the kernel's kh, kw, C_in).

  One gather from the padded input (`patch_indices`); on CPU this is ~3x faster
  than `tf.image.extract_patches` and exact (a copy).
  """
  n, c_in = tf.shape(inputs)[0], inputs.shape[-1]
  padded = tf.pad(inputs, paddings) if any(map(sum, paddings)) else inputs  # [N, Hp, Wp, C_in]
  flat = tf.reshape(padded, [n, -1, c_in])  # [N, Hp * Wp, C_in]
  patches = tf.gather(flat, index, axis=1)  # [N, P * kh * kw, C_in]
  kh, kw = layer.kernel_size
  return tf.reshape(patches, [n, -1, kh * kw * c_in])  # [N, P, K]


def host_patches(layer, inputs: np.ndarray) -> np.ndarray:
  """Returns the conv's input patches [N, P, K] on the host (NumPy), as `_conv_patches`.

  Strided windows of the padded input, copied once into [N, H', W', kh, kw, C_in].
  """
  (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.strides, layer.dilation_rate
  paddings = conv_paddings(layer, inputs.shape[1:3])
  padded = np.pad(inputs, paddings) if any(map(sum, paddings)) else inputs  # [N, Hp, Wp, C_in]
  span_h, span_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
  windows = np.lib.stride_tricks.sliding_window_view(padded, (span_h, span_w), axis=(1, 2))
  windows = windows[:, ::sh, ::sw, :, ::dh, ::dw]  # [N, H', W', C_in, kh, kw] (a view)
  n, out_h, out_w, c_in = windows.shape[:4]
  patches = np.ascontiguousarray(windows.transpose(0, 1, 2, 4, 5, 3))  # [N, H', W', kh, kw, C_in]
  return patches.reshape(n, out_h * out_w, kh * kw * c_in)  # [N, P, K]


def host_conv_gradient(layer, inputs: np.ndarray, cot: np.ndarray,
                       chunk_bytes: int = 32 << 20) -> np.ndarray:
  """Returns the per-example kernel gradients g_i = sum_p X_i[p]^T D_i[p] [N, K*C] on the host.

  Patches are formed for chunks of examples of at most `chunk_bytes` each, so
  they stay small and their buffer is reused instead of page-faulted anew.

  Args:
    layer: the Conv2D.
    inputs: [N, H, W, C_in] its inputs.
    cot: [N, P, C] the cotangents of its pre-activation output.
    chunk_bytes: patch bytes per chunk.
  Returns:
    [N, K*C], flattened like the kernel [kh, kw, C_in, C] (as `positional_gradient`).
  """
  n, p, c = cot.shape
  k = int(np.prod(layer.kernel.shape[:-1]))
  grads = np.empty((n, c, k), cot.dtype)  # [N, C, K]
  step = max(1, chunk_bytes // (p * k * cot.itemsize))
  for i in range(0, n, step):
    patches = host_patches(layer, inputs[i:i + step])  # [n_i, P, K]
    # D^T X ([C, P] x [P, K] per example) runs ~2x faster in OpenBLAS than X^T D here.
    np.matmul(cot[i:i + step].transpose(0, 2, 1), patches, out=grads[i:i + step])
  return np.ascontiguousarray(grads.transpose(0, 2, 1)).reshape(n, k * c)  # [N, K*C]


def _check_single_logit(outputs):
  if len(outputs.shape) != 2 or outputs.shape[-1] != 1:
    raise ValueError(f"The structured NTK needs a single-logit model, output [N, 1]. "
                     f"Received: output shape {tuple(outputs.shape)}")
  return outputs


def _var_size(v) -> int:
  return int(np.prod(v.shape)) if len(v.shape) else 1


class StructuredNtk:
  """The structured NTK of one model: a per-layer plan plus block features.

  Diagonal blocks Theta(x_a, x_a) are exactly symmetric (`exactly_symmetric`):
  the NumPy engine mirrors one triangle and the XLA engine symmetrizes.

  Call it as a BlockFn: `ntk(x_a, x_b=None) -> [Na, Nb]` (x_b None: the
  diagonal block Theta(x_a, x_a)).

  Memory: features per example are sum over structured Dense layers of
  (K + 1 + C), over structured positional layers of P (K + C), plus the
  per-example gradient width p_G (jacobian-form kernels, biases, BatchNorm,
  reference layers); see `ntk_tf.block_size` for the peak-memory formula.
  """

  exactly_symmetric = True  # Diagonal blocks: see the class docstring.

  def __init__(self, model: keras.Model, dtype: DType = "float32", *,
               choices: Union[None, str, Mapping[str, str]] = None,
               nominal_block: int = 256, matmul_engine: str = "auto",
               accumulate_dtype: Optional[DType] = None, allow_tf32: bool = False,
               feature_cache_bytes: int = 1 << 30):
    """Builds the plan.

    Args:
      model: a functional/sequential Keras model with output [N, 1].
      dtype: "float32" or "float64"; the model is cast if needed.
      choices: None (by FLOP estimate), "structured" or "jacobian" for every
        Dense/Conv2D kernel, or {layer name: choice}.
      nominal_block: block size the FLOP estimate assumes when choosing.
      matmul_engine: "xla" (ops/, static padded shapes), "numpy" (host BLAS for
        the final GEMMs; faster on CPU, see ops/structured_blocks.py) or "auto"
        (NumPy when no GPU is visible, else XLA).
      accumulate_dtype: dtype the per-layer contributions are summed in
        (default `dtype`; "float64" for float32 features).
      allow_tf32: allow TF32 matmuls on GPU (inexact; off by default).
      feature_cache_bytes: host memory for caching per-block features, so an
        example block's forward/backward pass runs once per Gram.
    """
    self.dtype = precision.canonical_dtype(dtype)
    self.accumulate_dtype = precision.canonical_dtype(accumulate_dtype or self.dtype)
    if matmul_engine not in MATMUL_ENGINES:
      raise ValueError(f"matmul_engine must be one of {MATMUL_ENGINES}. "
                       f"Received: matmul_engine={matmul_engine!r}")
    if matmul_engine == "auto":
      matmul_engine = "xla" if tf.config.list_physical_devices("GPU") else "numpy"
    self.matmul_engine = matmul_engine
    if nominal_block <= 0:
      raise ValueError(f"nominal_block must be positive. Received: nominal_block={nominal_block}")
    self.allow_tf32 = bool(allow_tf32)
    self.feature_cache_bytes = int(feature_cache_bytes)
    self.model = precision.cast_model(model, self.dtype)
    self._graph = _graph(self.model)
    self.input_shape = tuple(self.model.inputs[0].shape[1:])
    self.plans = self._make_plans(choices, nominal_block)
    known = {id(p.layer): p.kind for p in self.plans if p.kind != REFERENCE}
    self._recorder = _Recorder(self._graph, known, pad_channels=self.matmul_engine == "numpy")
    self._reference_vars = [v for p in self.plans if p.kind == REFERENCE for v in p.variables]
    # Per product term (structured kernels with one position): 1.0 adds the bias.
    self._product_offsets = [float(p.bias) for p in self.plans
                             if p.kind in ("dense", "conv2d") and p.kernel
                             and p.choice == STRUCTURED and p.positions == 1]
    # On CPU (NumPy engine) jacobian-form conv kernels form their per-example
    # gradients on the host (`host_conv_gradient`): NumPy's strided patches and
    # batched BLAS are ~3x faster here than TF's gather and batched matmul.
    self._host_plans = ([p for p in self.plans
                         if p.kind == "conv2d" and p.kernel and p.choice == JACOBIAN]
                        if self.matmul_engine == "numpy" else [])
    self._features_fn = tf.function(self._features)
    self._cache: "OrderedDict[bytes, Tuple]" = OrderedDict()
    self._cache_size = 0
    self._buckets: List[int] = []
    self._buffers: "OrderedDict[tuple, Tuple]" = OrderedDict()

  # ---------------------------------------------------------------- planning
  def _make_plans(self, choices, nominal_block) -> List[LayerPlan]:
    trainable_ids = {id(v) for v in self.model.trainable_variables}
    counts = _node_counts(self._graph)
    plans, covered = [], set()
    for layer in self._graph.layers:
      own = [v for v in layer.trainable_variables if id(v) in trainable_ids]
      if not own:
        continue
      kind = _known_kind(layer)
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
        plan.choice = self._pick(plan, choices, nominal_block)
    return plans

  def _fill_shapes(self, plans):
    """Reads P, K, C of each known layer from one eager pass on a single zero input."""
    known = {id(p.layer): p.kind for p in plans if p.kind != REFERENCE}
    recorder = _Recorder(self._graph, known)
    _check_single_logit(recorder.run(tf.zeros((1,) + self.input_shape, self.dtype)))
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
        plan.patches = patch_indices(plan.layer, tuple(inputs.shape[1:3]))
        if len(plan.patches[1]) != plan.positions * int(np.prod(plan.layer.kernel_size)):
          raise AssertionError(f"The patch index of layer {plan.name!r} does not match its "
                               f"output shape {tuple(z.shape)}")
      else:
        axis = plan.layer.axis if isinstance(plan.layer.axis, int) else plan.layer.axis[0]
        if axis not in (-1, len(z.shape) - 1):
          raise NotImplementedError(
              f"BatchNormalization must normalize the last axis. Received: axis={axis} "
              f"in layer {plan.name!r}")
        plan.positions = int(np.prod(z.shape[1:-1])) if len(z.shape) > 2 else 1

  @staticmethod
  def _pick(plan, choices, nominal_block) -> str:
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

  def activation_size(self) -> int:
    """Per-example number of floats in all layer outputs (the forward pass's activations)."""
    total = 0
    for nodes in self._graph._nodes_by_depth.values():  # pylint: disable=protected-access
      for node in nodes:
        for t in node.outputs:
          total += int(np.prod([d for d in t.shape[1:] if d is not None]))
    return total

  def feature_size(self) -> int:
    """Per-example floats of cached block features: products, positional terms, gradients."""
    total = 0
    for p in self.plans:
      if p.kind == REFERENCE:
        total += p.params
      elif p.kind == "batch_norm":
        total += p.channels * (p.gamma + p.beta)
      else:
        if p.kernel and p.choice == STRUCTURED and p.positions == 1:
          total += p.patch_len + p.channels
          continue
        if p.kernel:
          total += (p.positions * (p.patch_len + p.channels) if p.choice == STRUCTURED
                    else p.patch_len * p.channels)
        total += p.channels * p.bias
    return total

  def transient_size(self) -> int:
    """Per-example floats of the largest transient: conv patches [P, K] of one layer."""
    return max([p.positions * p.patch_len for p in self.plans if p.kind == "conv2d"] + [0])

  def positional_square(self) -> int:
    """max P^2 over structured positional terms (their [Na, Nb, P, P] intermediates)."""
    return max([p.positions ** 2 for p in self.plans
                if p.kind in ("dense", "conv2d") and p.kernel and p.choice == STRUCTURED
                and p.positions > 1] + [0])

  # ---------------------------------------------------------------- features
  def _features(self, x: tf.Tensor):
    """Returns (product terms, positional terms, per-example gradients [N, p_G'], host terms).

    Host terms: (conv inputs [N, H, W, C_in], cotangents [N, P, C]) of the
    jacobian-form conv kernels whose gradients `features` forms on the host
    (NumPy engine), in `_host_plans` order; their columns join the gradient there.
    """
    needs_reference = bool(self._reference_vars)
    with tf.GradientTape(persistent=needs_reference) as tape:
      tape.watch(x)
      outputs = _check_single_logit(self._recorder.run(x))
      logits = tf.reshape(outputs, [-1])  # [N]
      total = tf.reduce_sum(logits)
    records = self._recorder.records
    planned = [p for p in self.plans if p.kind != REFERENCE]
    cotangents = tape.gradient(total, [records[p.name][1] for p in planned],
                               unconnected_gradients=tf.UnconnectedGradients.ZERO)
    n = tf.shape(x)[0]
    products, positional, grads, host = [], [], [], []
    host_ids = {id(p) for p in self._host_plans}
    for plan, cot in zip(planned, cotangents):
      inputs = records[plan.name][0]
      if plan.kind == "batch_norm":
        grads.extend(self._batch_norm_grads(plan, inputs, cot))
        continue
      if id(plan) in host_ids:
        cot = tf.reshape(cot, [n, plan.positions, plan.channels])  # [N, P, C]
        host.append((inputs, cot))
        if plan.bias:
          grads.append(tf.reduce_sum(cot, axis=1))  # [N, C]
        continue
      if plan.kind == "conv2d":
        patches = _conv_patches(plan.layer, inputs, *plan.patches)  # [N, P, K]
      else:
        patches = tf.reshape(inputs, [n, plan.positions, plan.patch_len])  # [N, P, K]
      cot = tf.reshape(cot, [n, plan.positions, plan.channels])  # [N, P, C]
      bias_merged = False
      if plan.kernel:
        if plan.choice == STRUCTURED and plan.positions == 1:
          # The bias joins as +1 on the inputs Gram (`_product_offsets`), not a ones column.
          bias_merged = plan.bias
          products.append((tf.reshape(patches, [n, plan.patch_len]),  # [N, K]
                           tf.reshape(cot, [n, plan.channels])))  # [N, C]
        elif plan.choice == STRUCTURED:
          positional.append((patches, cot))
        else:
          grads.append(structured_blocks.positional_gradient(patches, cot))  # [N, K*C]
      if plan.bias and not bias_merged:
        grads.append(tf.reduce_sum(cot, axis=1))  # [N, C]
    if needs_reference:
      try:
        jac = tape.jacobian(logits, self._reference_vars, experimental_use_pfor=True)
      except (ValueError, NotImplementedError, TypeError) as err:
        logging.warning("pfor failed for the reference layers (%s); using a while loop.", err)
        jac = tape.jacobian(logits, self._reference_vars, experimental_use_pfor=False)
      grads.extend(tf.reshape(j, [n, -1]) for j in jac)  # [N, p_v] each
    gradient = tf.concat(grads, axis=1) if grads else tf.zeros([n, 0], x.dtype)  # [N, p_G']
    return products, positional, gradient, host


  @staticmethod
  def _batch_norm_grads(plan, inputs, cot):
    layer = plan.layer
    n = tf.shape(inputs)[0]
    mean = tf.cast(layer.moving_mean, inputs.dtype)
    variance = tf.cast(layer.moving_variance, inputs.dtype)
    x_hat = (inputs - mean) * tf.math.rsqrt(variance + layer.epsilon)  # [N, ..., C]
    cot = tf.reshape(cot, [n, -1, plan.channels])  # [N, P, C]
    grads = []
    if plan.gamma:
      grads.append(tf.reduce_sum(tf.reshape(x_hat, [n, -1, plan.channels]) * cot, axis=1))
    if plan.beta:
      grads.append(tf.reduce_sum(cot, axis=1))  # [N, C]
    return grads

  def _bucket(self, n: int) -> int:
    """The padded block size for n examples: the smallest bucket >= n, else n."""
    fits = [b for b in self._buckets if b >= n]
    if fits:
      return min(fits)
    self._buckets.append(n)
    return n

  def features(self, x: Inputs):
    """Returns cached features of block x: (n, products, positional, gradient)."""
    x = np.ascontiguousarray(np.asarray(x, dtype=self.dtype))
    if x.shape[1:] != self.input_shape:
      raise ValueError(f"inputs must have shape [N, {', '.join(map(str, self.input_shape))}]. "
                       f"Received: shape={x.shape}")
    # SHA-1 (OpenSSL) hashes ~1.5 GB/s here, ~3x BLAKE2b; a cache key, not a signature.
    key = hashlib.sha1(memoryview(x).cast("B")).digest() + \
        str(x.shape).encode()
    if key in self._cache:
      self._cache.move_to_end(key)
      return self._cache[key]
    n = x.shape[0]
    padded = self._bucket(n)
    if padded > n:
      x = np.concatenate([x, np.zeros((padded - n,) + x.shape[1:], x.dtype)])
    with precision.tf32_matmuls(self.allow_tf32):
      products, positional, gradient, host = self._features_fn(tf.constant(x))
    if self.matmul_engine == "numpy":
      products = [(l.numpy()[:n], r.numpy()[:n]) for l, r in products]
      positional = [(p.numpy()[:n], d.numpy()[:n]) for p, d in positional]
      pieces = [gradient.numpy()[:n]] + [
          host_conv_gradient(plan.layer, inputs.numpy()[:n], cot.numpy()[:n])
          for plan, (inputs, cot) in zip(self._host_plans, host)]  # [N, K*C] each
      gradient = np.concatenate(pieces, axis=1) if len(pieces) > 1 else pieces[0]  # [N, p_G]
    entry = (n, products, positional, gradient)
    size = sum(_nbytes(t) for pair in products + positional for t in pair) + _nbytes(gradient)
    if size <= self.feature_cache_bytes:
      self._cache[key] = entry
      self._cache_size += size
      while self._cache_size > self.feature_cache_bytes:
        _, old = self._cache.popitem(last=False)
        self._cache_size -= sum(_nbytes(t) for pair in old[1] + old[2] for t in pair) + \
            _nbytes(old[3])
    return entry

  # ---------------------------------------------------------------- blocks
  def __call__(self, x_a: Inputs, x_b: Optional[Inputs] = None) -> Array:
    """Returns the NTK block Theta(x_a, x_b) [Na, Nb] (x_b None: Theta(x_a, x_a))."""
    n_a, products_a, positional_a, grad_a = self.features(x_a)
    if x_b is None:
      n_b, products_b, positional_b, grad_b = n_a, products_a, positional_a, grad_a
    else:
      n_b, products_b, positional_b, grad_b = self.features(x_b)
    with precision.tf32_matmuls(self.allow_tf32):
      if self.matmul_engine == "numpy":
        theta = self._contract_numpy(products_a, products_b, positional_a, positional_b,
                                     grad_a, grad_b, x_b is None)
      else:
        theta = self._contract_xla(products_a, products_b, grad_a, grad_b)[:n_a, :n_b]
        for (patches_a, cot_a), (patches_b, cot_b) in zip(positional_a, positional_b):
          term = structured_blocks.positional_gram_product(patches_a, cot_a, patches_b, cot_b)
          theta += term.numpy()[:n_a, :n_b].astype(self.accumulate_dtype)
        if x_b is None:
          theta = 0.5 * (theta + theta.T)  # Device matmuls need not be exactly symmetric.
    return theta

  def _contract_numpy(self, products_a, products_b, positional_a, positional_b, grad_a, grad_b,
                      diagonal):
    """Sums the layer terms [Na, Nb] with host BLAS into reused buffers.

    A diagonal block forms every product and gradient Gram as the upper
    triangle of one SYRK (half the FLOPs of a GEMM) and mirrors the sum once
    (exact: the halved diagonal is added back to itself). The Gram buffers
    (`_workspace`) are kept between calls: fresh [Na, Nb] arrays would cost a
    page fault per 4 KiB on every call.
    """
    n_a, n_b = grad_a.shape[0], grad_b.shape[0]
    theta, first, second = self._workspace(n_a, n_b, grad_a.dtype, diagonal)  # [Na, Nb], F order.
    gram = _syrk_upper if diagonal else _gemm_nt
    # The lower triangles of the SYRK buffers stay zero: every update below keeps them so.
    theta.fill(0)
    for (left_a, right_a), (left_b, right_b), offset in zip(products_a, products_b,
                                                            self._product_offsets):
      inputs_gram = gram(left_a, left_b, out=first)  # [Na, Nb]
      cotangent_gram = gram(right_a, right_b, out=second)  # [Na, Nb]
      inputs_gram *= cotangent_gram
      if offset:
        inputs_gram += cotangent_gram  # The bias: (A_a . A_b + 1)(D_a . D_b).
      theta += inputs_gram
    if grad_a.shape[1]:
      theta += gram(grad_a, grad_b, out=first)  # [Na, Nb]
    if diagonal:
      theta[np.diag_indices(n_a)] *= 0.5
      result = theta + theta.T  # [Na, Na], symmetric.
    else:
      result = theta.copy(order="C")  # [Na, Nb]
    for (patches_a, cot_a), (patches_b, cot_b) in zip(positional_a, positional_b):
      (n_a, p, k), c = patches_a.shape, cot_a.shape[-1]
      n_b = patches_b.shape[0]
      patch_gram = patches_a.reshape(n_a * p, k) @ patches_b.reshape(n_b * p, k).T  # [Na P, Nb P]
      patch_gram *= cot_a.reshape(n_a * p, c) @ cot_b.reshape(n_b * p, c).T  # [Na P, Nb P]
      term = patch_gram.reshape(n_a, p, n_b, p).sum(axis=(1, 3))  # [Na, Nb]
      result += 0.5 * (term + term.T) if diagonal else term  # Summation order breaks symmetry.
    return result

  def _workspace(self, n_a: int, n_b: int, dtype,
                 diagonal: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three Fortran-order buffers, zeroed when made: theta [Na, Nb] (accumulate dtype), two Grams.

    Diagonal and off-diagonal blocks get separate buffers (a GEMM fills the
    lower triangle a SYRK buffer must keep zero); the last `_WORKSPACES` shapes
    are kept, 3 * Na * Nb floats each.
    """
    key = (n_a, n_b, np.dtype(dtype).name, diagonal)
    if key in self._buffers:
      self._buffers.move_to_end(key)
    else:
      self._buffers[key] = (np.zeros((n_a, n_b), self.accumulate_dtype, order="F"),
                            np.zeros((n_a, n_b), dtype, order="F"),
                            np.zeros((n_a, n_b), dtype, order="F"))
      while len(self._buffers) > _WORKSPACES:
        self._buffers.popitem(last=False)
    return self._buffers[key]

  def _contract_xla(self, products_a, products_b, grad_a, grad_b):
    theta = np.zeros((grad_a.shape[0], grad_b.shape[0]), self.accumulate_dtype)
    for (left_a, right_a), (left_b, right_b), offset in zip(products_a, products_b,
                                                            self._product_offsets):
      theta += structured_blocks.gram_product(left_a, left_b, right_a, right_b,
                                              offset).numpy()
    if grad_a.shape[1]:
      theta += structured_blocks.gradient_gram(grad_a, grad_b).numpy()
    return theta


def _syrk_upper(u: np.ndarray, _=None, *, out: np.ndarray) -> np.ndarray:
  """Writes u u^T [N, N] into the upper triangle of `out` (Fortran order) by BLAS SYRK.

  `u` [N, k] in C order is u^T in Fortran order, so SYRK with trans=1 forms
  (u^T)^T u^T without a copy. The strict lower triangle of `out` is not touched.
  """
  syrk = scipy_blas.dsyrk if u.dtype == np.float64 else scipy_blas.ssyrk
  return syrk(1.0, u.T, trans=1, c=out, overwrite_c=1)  # [N, N]


def _gemm_nt(u: np.ndarray, v: np.ndarray, *, out: np.ndarray) -> np.ndarray:
  """Writes u v^T [Nu, Nv] into `out` (Fortran order) by BLAS GEMM."""
  gemm = scipy_blas.dgemm if u.dtype == np.float64 else scipy_blas.sgemm
  return gemm(1.0, u.T, v.T, trans_a=1, c=out, overwrite_c=1)  # [Nu, Nv]


def _nbytes(t) -> int:
  return int(np.prod(t.shape)) * tf.as_dtype(t.dtype).size


def make_block_fn(model: keras.Model, dtype: DType = "float32", **options) -> StructuredNtk:
  """Returns the structured-NTK BlockFn `(x_a, x_b=None) -> Theta(x_a, x_b)` [Na, Nb].

  Theta = sum_l Theta_l as in the module docstring; `options` are those of
  `StructuredNtk` (choices, matmul_engine, accumulate_dtype, allow_tf32, ...).
  """
  return StructuredNtk(model, dtype, **options)


def flop_report(model: keras.Model, input_shape: Shape, n_a: int, n_b: int) -> List[dict]:
  """Returns per-layer FLOP estimates for one [n_a, n_b] NTK block.

  structured_flops: the structured product (Dense: 2 Na Nb (K + 1 + C);
    Conv2D: 2 Na Nb P^2 (K + C) + bias), None where there is none.
  jacobian_flops: forming per-example gradients, 2 (Na + Nb) P K C, plus
    contracting them, 2 Na Nb p_layer.
  choice: the form `make_block_fn` uses ("structured" | "jacobian" | "reference").

  Args:
    model: the model (its own input shape must equal `input_shape`).
    input_shape: `(H, W, C)` of one example.
    n_a, n_b: block sizes.
  Returns:
    A list of dicts with keys layer, kind, params, structured_flops,
    jacobian_flops, choice.
  """
  if tuple(model.inputs[0].shape[1:]) != tuple(input_shape):
    raise ValueError(f"input_shape must match the model's input {tuple(model.inputs[0].shape[1:])}. "
                     f"Received: input_shape={tuple(input_shape)}")
  ntk = StructuredNtk(model, precision.model_dtype(model), nominal_block=max(n_a, n_b))
  return ntk.flop_report(n_a, n_b)


def contraction_flops(report: Sequence[Mapping], symmetric: bool = False) -> int:
  """Returns the FLOPs of the cheapest exact contraction: sum_l min(structured, jacobian).

  With `symmetric`, a square Gram needs only its N (N + 1) / 2 upper entries,
  so the count is halved (rounded up).
  """
  total = sum(min(f for f in (r["structured_flops"], r["jacobian_flops"]) if f is not None)
              for r in report)
  return math.ceil(total / 2) if symmetric else total
