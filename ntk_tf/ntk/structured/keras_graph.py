"""Keras graph access for the structured NTK: the one place using Keras' private graph APIs.

A functional (or Sequential) Keras model runs through its graph of nodes; the
structured NTK runs that graph itself (`Recorder`), replacing Dense, Conv2D
and BatchNormalization calls by versions that record each layer's input A
[N, ...] and pre-activation output z [N, ..., C], and calling every other
layer as is in inference mode. The private APIs used (Keras 3):
`Sequential._functional`, `Functional._run_through_graph(operation_fn=...)`,
`Functional._nodes_by_depth`, `Operation._call_has_training_arg`.
"""

from typing import Dict, Iterator, Mapping, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

MIN_CONV_CHANNELS = 8  # CPU: convs with fewer input channels run zero-padded (`Recorder`).


def is_functional(model: keras.Model) -> bool:
  """Whether `model` runs a graph of layers the structured NTK can walk (Functional, Sequential)."""
  return isinstance(model, keras.Sequential) or hasattr(model, "_run_through_graph")


def functional_graph(model: keras.Model):
  """Returns the Functional graph that runs `model` (a Sequential wraps one)."""
  if isinstance(model, keras.Sequential):
    model.build(model.inputs[0].shape) if not model.built else None
    return model._functional  # pylint: disable=protected-access
  if not hasattr(model, "_run_through_graph"):
    raise ValueError(
        f"The structured NTK needs a functional or sequential Keras model. "
        f"Received: model={model.name!r} of type {type(model).__name__}")
  return model


def _nodes(graph) -> Iterator:
  for nodes in graph._nodes_by_depth.values():  # pylint: disable=protected-access
    yield from nodes


def node_counts(graph) -> Dict[int, int]:
  """Returns {id(layer): how many times the graph calls it} (input nodes excluded)."""
  counts = {}
  for node in _nodes(graph):
    if node.operation is not None and not node.is_input:
      counts[id(node.operation)] = counts.get(id(node.operation), 0) + 1
  return counts


def output_floats(graph) -> int:
  """Returns the per-example number of floats in all node outputs (inputs included)."""
  total = 0
  for node in _nodes(graph):
    for t in node.outputs:
      total += int(np.prod([d for d in t.shape[1:] if d is not None]))
  return total


def _all_layers(graph) -> Iterator:
  """Yields every layer of `graph`, nested models' layers included."""
  for layer in graph.layers:
    yield from layer._flatten_layers(include_self=True, recursive=True)  # pylint: disable=protected-access


def grouped_conv_layers(graph) -> Tuple[str, ...]:
  """Returns the names of the grouped convolutions (`groups > 1`) anywhere in `graph`.

  TF 2.21 differentiates them wrongly in two places the NTK paths use: the
  pfor (vectorized) Jacobian of `Conv2DBackpropFilter` with groups (float32:
  wrong values; float64: "filter_size does not have enough elements") and
  forward-mode (`ForwardAccumulator`) JVPs through them. Plain per-example
  GradientTape gradients are right (checked by finite differences in
  tests/robustness_test.py).
  """
  return tuple(layer.name for layer in _all_layers(graph) if getattr(layer, "groups", 1) > 1)


def _is_plain(layer, cls) -> bool:
  return (type(layer) is cls and getattr(layer, "quantization_mode", None) is None
          and not getattr(layer, "lora_enabled", False))


def known_kind(layer) -> Optional[str]:
  """Returns "dense", "conv2d" or "batch_norm" for layers with a structured rule, else None."""
  if _is_plain(layer, keras.layers.Dense):
    return "dense"
  if (_is_plain(layer, keras.layers.Conv2D) and layer.groups == 1
      and layer.data_format == "channels_last"):
    return "conv2d"
  if (type(layer) is keras.layers.BatchNormalization and not getattr(layer, "renorm", False)
      and _normalizes_last_axis(layer)):
    return "batch_norm"
  return None


def _normalizes_last_axis(layer) -> bool:
  """Whether a BatchNormalization normalizes (holds one gamma per entry of) its input's last axis."""
  axis = layer.axis if isinstance(layer.axis, int) else tuple(layer.axis)
  if isinstance(axis, tuple):
    if len(axis) != 1:
      return False
    axis = axis[0]
  try:
    rank = len(layer.input.shape)
  except (AttributeError, ValueError):  # Called more than once: no single input.
    return axis == -1
  return axis in (-1, rank - 1)


def zero_pad_channels(t: tf.Tensor, extra: int, axis: int) -> tf.Tensor:
  """Returns `t` with `extra` zero slices appended along `axis` (a concat, not a `tf.Pad`).

  Not `tf.pad`: with oneDNN on, TF's graph rewrite fuses a Pad feeding a
  Conv2D with padding="valid" into one padded conv that assumes the Pad is
  spatial, so a channel Pad aborts the process (`mkl_layout_pass.cc` check)
  or fails with "input depth must be evenly divisible by filter depth". A
  concat of zeros is the same tensor and is never fused.
  """
  zeros_shape = tf.concat([tf.shape(t)[:axis], [extra], tf.shape(t)[axis + 1:]], axis=0)
  return tf.concat([t, tf.zeros(zeros_shape, t.dtype)], axis=axis)


class Recorder:
  """Runs the model's graph, recording (A, z) for the planned layers.

  With `pad_channels`, convs with fewer than MIN_CONV_CHANNELS input channels
  run on inputs and kernels zero-padded to that many channels (TF's own CPU
  conv, with oneDNN off, is faster with 8 input channels than with 3; the
  caller turns padding off where oneDNN is on); the zero channels and zero
  kernel rows add exact zeros, and the gradient of the pad is a slice.
  """

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
    if self.pad_channels and c_in < MIN_CONV_CHANNELS:
      extra = MIN_CONV_CHANNELS - c_in
      padded_inputs = zero_pad_channels(inputs, extra, axis=3)  # [N, H, W, 8]
      kernel = zero_pad_channels(layer.kernel, extra, axis=2)  # [kh, kw, 8, C]
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
