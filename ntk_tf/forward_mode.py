"""A Keras model's output and its Jacobian-vector product in one forward pass.

    (f(x; theta_star), J(x; theta_star) dtheta),   J = d f / d theta at theta_star,

computed layer by layer through a functional (or Sequential) model's graph:
each node carries its primal value and its tangent, the directional
derivative along dtheta (None where it is identically zero, e.g. at the
inputs). Dense and Conv2D layers, the ones holding nearly all the FLOPs, use
their exact rules,

    z = x W + b,   dz = dx W + x dW + db      (Dense; Conv2D with conv(., .)),

and skip the `dx W` term where dx is zero; parameter-free linear layers
(flatten, reshape, average pooling, padding, add, concatenate, ...) apply
themselves to the tangent; every other layer (activations, BatchNorm, max
pooling, nested models, custom layers) gets its JVP from a
`tf.autodiff.ForwardAccumulator` local to that layer. A model that is not
functional runs under one ForwardAccumulator as a whole.

Why not one ForwardAccumulator around the whole model: TF computes each op's
JVP by transposing its gradient, and a GradientTape differentiating through
that (as in training a linearized model) keeps work the forward pass would
prune, e.g. an input-gradient matmul of the first Dense layer against a zero
tangent. Here a tape differentiating the tangent with respect to dW sees
plain matmuls and convolutions: its backward is one reverse pass,
dL/dW = x^T dL/dz per layer, the network's own backward at theta_star.

Uses Keras 3's private `Function._run_through_graph(call_fn=...)` and
`Layer._call_has_training_arg`, like `ntk_tf.structured.keras_graph`.

Shapes: x `[N, ...]`; outputs and tangents shaped like the model's outputs,
`[N, K]` for the paper's models.
"""

from typing import Callable, Dict, List, Optional, Tuple

import keras
import tensorflow as tf

from ntk_tf.structured import keras_graph

# Tangents of parameters: {id(variable): tensor shaped like it}; absent = zero.
ParameterTangents = Dict[int, tf.Tensor]

# Parameter-free layers that are linear in their inputs: their tangent is the
# layer applied to the input tangents (exact, no ForwardAccumulator).
_LINEAR_LAYERS = tuple(getattr(keras.layers, name) for name in (
    "Flatten", "Reshape", "Permute", "Identity", "Dropout",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D",
    "Cropping3D", "UpSampling1D", "Add", "Subtract", "Average", "Concatenate")
                       if hasattr(keras.layers, name))


class _Dual:
  """A graph node's value and tangent (None = identically zero)."""

  __slots__ = ("primal", "tangent")

  def __init__(self, primal: tf.Tensor, tangent: Optional[tf.Tensor]):
    self.primal = primal
    self.tangent = tangent


def _is_dual(x) -> bool:
  return isinstance(x, _Dual)


def _sum(terms: List[Optional[tf.Tensor]]) -> Optional[tf.Tensor]:
  """The sum of the non-None terms, None if there are none."""
  terms = [t for t in terms if t is not None]
  if not terms:
    return None
  total = terms[0]
  for t in terms[1:]:
    total = total + t
  return total


def _primals(structure):
  """`structure` with each `_Dual` leaf replaced by its primal value."""
  return tf.nest.map_structure(lambda l: l.primal if _is_dual(l) else l, structure)


def _weight_tangent(variable, tangents: ParameterTangents) -> Optional[tf.Tensor]:
  return None if variable is None else tangents.get(id(variable))


def _local_jvp(fn: Callable, args, tangents: ParameterTangents, variables) -> Tuple:
  """fn(args with primal values) and its JVP, by a ForwardAccumulator local to this call.

  `args` is a structure whose `_Dual` leaves are watched with their tangents;
  `variables` are the weights fn reads, watched with theirs.
  """
  leaves = tf.nest.flatten(args)
  watched = [(leaf.primal, leaf.tangent) for leaf in leaves
             if _is_dual(leaf) and leaf.tangent is not None]
  for v in variables:
    dv = _weight_tangent(v, tangents)
    if dv is not None:
      watched.append((v.value, dv))
  plain = _primals(args)
  if not watched:
    out = fn(plain)
    return out, tf.nest.map_structure(lambda _: None, out)
  with tf.autodiff.ForwardAccumulator(primals=[p for p, _ in watched],
                                      tangents=[t for _, t in watched]) as acc:
    out = fn(plain)
  jvp = tf.nest.map_structure(
      lambda o: acc.jvp(o, unconnected_gradients=tf.UnconnectedGradients.ZERO), out)
  return out, jvp


def _activation(fn, z: tf.Tensor, dz: Optional[tf.Tensor], tangents) -> _Dual:
  """(fn(z), fn'(z) dz); identity for a linear (or absent) activation."""
  if fn is None or fn is keras.activations.linear:
    return _Dual(z, dz)
  if dz is None:
    return _Dual(fn(z), None)
  out, jvp = _local_jvp(fn, _Dual(z, dz), tangents, ())
  return _Dual(out, jvp)


def _own_weight(layer, name: str):
  """The layer's variable `name` if it is the plain weight it computes with, else False."""
  value = getattr(layer, name, None)
  if value is None:
    return None
  return value if any(value is w for w in layer.weights) else False


def _affine_layer(layer, x: _Dual, tangents: ParameterTangents) -> Optional[_Dual]:
  """The exact rule of a plain Dense or Conv2D layer; None if `layer` is neither.

      z = op(x, W) + b,   dz = op(dx, W) + op(x, dW) + db,   op bilinear.
  """
  if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
    return None
  if layer.compute_dtype != layer.variable_dtype:
    return None
  kernel, bias = _own_weight(layer, "kernel"), _own_weight(layer, "bias")
  if kernel is False or bias is False or kernel is None:
    return None
  if type(layer) is keras.layers.Dense:  # pylint: disable=unidiomatic-typecheck
    op = keras.ops.matmul  # [N, ..., D_in] x [D_in, D_out]
    bias_shape = None
  elif type(layer) is keras.layers.Conv2D and layer.data_format == "channels_last":  # pylint: disable=unidiomatic-typecheck
    op = layer.convolution_op  # [N, H, W, C_in] * [h, w, C_in, C_out]
    bias_shape = (1, 1, 1, layer.filters)
  else:
    return None
  dkernel, dbias = _weight_tangent(kernel, tangents), _weight_tangent(bias, tangents)
  z = op(x.primal, kernel)
  if bias is not None:
    z = keras.ops.add(z, bias if bias_shape is None else keras.ops.reshape(bias, bias_shape))
    if dbias is not None and bias_shape is not None:
      dbias = tf.reshape(dbias, bias_shape)
  dz = _sum([op(x.tangent, kernel) if x.tangent is not None else None,
             op(x.primal, dkernel) if dkernel is not None else None,
             dbias])
  return _activation(layer.activation, z, dz, tangents)


def _call_layer(layer, tangents: ParameterTangents, *args, **kwargs):
  """One graph node: the layer's outputs as `_Dual`s, in inference mode."""
  if len(args) == 1 and not kwargs and _is_dual(args[0]):
    affine = _affine_layer(layer, args[0], tangents)
    if affine is not None:
      return affine
  if getattr(layer, "_call_has_training_arg", False):
    kwargs["training"] = False
  leaves = tf.nest.flatten((args, kwargs))
  if isinstance(layer, _LINEAR_LAYERS) and not layer.weights:
    plain = _primals((args, kwargs))
    out = layer(*plain[0], **plain[1])
    if all(l.tangent is None for l in leaves if _is_dual(l)):
      return tf.nest.map_structure(lambda o: _Dual(o, None), out)
    tangent_args = tf.nest.map_structure(
        lambda l: (tf.zeros_like(l.primal) if l.tangent is None else l.tangent)
        if _is_dual(l) else l, (args, kwargs))
    jvp = layer(*tangent_args[0], **tangent_args[1])
    return tf.nest.map_structure(_Dual, out, jvp)
  out, jvp = _local_jvp(lambda a: layer(*a[0], **a[1]), (args, kwargs), tangents,
                        layer.weights)
  return tf.nest.map_structure(_Dual, out, jvp)


def primal_and_jvp(model: keras.Model, inputs, tangents: ParameterTangents
                   ) -> Tuple[tf.Tensor, Optional[tf.Tensor]]:
  """Returns f(x; theta_star) and J(x; theta_star) dtheta in one pass, inference mode.

      f = model(x, training=False),   jvp = sum_p d f / d theta_p  dtheta_p

  Args:
    model: a built Keras model at theta_star.
    inputs: x, `[N, ...]`.
    tangents: {id(variable): dtheta_p} for the model's variables with a
      nonzero tangent (any of `model.weights`; the rest count as zero).
  Returns:
    (f `[N, K]`, jvp `[N, K]`); jvp is None when no tangent reaches the output.
  """
  if not keras_graph.is_functional(model):  # the whole model under one accumulator
    return _local_jvp(lambda x: model(x, training=False), inputs, tangents, model.weights)
  graph = keras_graph.functional_graph(model)
  flat_inputs = tf.nest.flatten(graph._standardize_inputs(inputs))  # pylint: disable=protected-access
  outputs = graph._run_through_graph(  # pylint: disable=protected-access
      [_Dual(x, None) for x in flat_inputs],
      call_fn=lambda layer, *args, **kwargs: _call_layer(layer, tangents, *args, **kwargs))
  return (tf.nest.map_structure(lambda o: o.primal, outputs),
          tf.nest.map_structure(lambda o: o.tangent, outputs))
