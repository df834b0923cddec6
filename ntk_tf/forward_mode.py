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

`AffineRule`, `is_linear_layer`, `linear_layer_tangent` and `local_jvp` are
the layer rules, shared with `ntk_tf.primal_cache`, whose tangent pass reads
the primals at theta_star from a per-example cache instead of computing them.

Uses Keras 3's private `Function._run_through_graph(call_fn=...)` and
`Layer._call_has_training_arg`, like `ntk_tf.ntk.structured.keras_graph`.

Shapes: x `[N, ...]`; outputs and tangents shaped like the model's outputs,
`[N, K]` for the paper's models.
"""

from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import keras
import tensorflow as tf

from ntk_tf.ntk.structured import keras_graph

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


class Dual:
  """A graph node's value and tangent (tangent None = identically zero; primal None = not needed)."""

  __slots__ = ("primal", "tangent")

  def __init__(self, primal: tf.Tensor, tangent: Optional[tf.Tensor]):
    self.primal = primal
    self.tangent = tangent


def is_dual(x) -> bool:
  return isinstance(x, Dual)


def tangent_sum(terms: List[Optional[tf.Tensor]]) -> Optional[tf.Tensor]:
  """The sum of the non-None terms, None if there are none."""
  terms = [t for t in terms if t is not None]
  if not terms:
    return None
  total = terms[0]
  for t in terms[1:]:
    total = total + t
  return total


def primals(structure):
  """`structure` with each `Dual` leaf replaced by its primal value."""
  return tf.nest.map_structure(lambda l: l.primal if is_dual(l) else l, structure)


def _weight_tangent(variable, tangents: ParameterTangents) -> Optional[tf.Tensor]:
  return None if variable is None else tangents.get(id(variable))


def local_jvp(fn: Callable, args, tangents: ParameterTangents, variables) -> Tuple:
  """fn(args with primal values) and its JVP, by a ForwardAccumulator local to this call.

  `args` is a structure whose `Dual` leaves are watched with their tangents;
  `variables` are the weights fn reads, watched with theirs.
  """
  leaves = tf.nest.flatten(args)
  watched = [(leaf.primal, leaf.tangent) for leaf in leaves
             if is_dual(leaf) and leaf.tangent is not None]
  for v in variables:
    dv = _weight_tangent(v, tangents)
    if dv is not None:
      watched.append((v.value, dv))
  plain = primals(args)
  if not watched:
    out = fn(plain)
    return out, tf.nest.map_structure(lambda _: None, out)
  with tf.autodiff.ForwardAccumulator(primals=[p for p, _ in watched],
                                      tangents=[t for _, t in watched]) as acc:
    out = fn(plain)
  jvp = tf.nest.map_structure(
      lambda o: acc.jvp(o, unconnected_gradients=tf.UnconnectedGradients.ZERO), out)
  return out, jvp


def _activation(fn, z: tf.Tensor, dz: Optional[tf.Tensor], tangents) -> Dual:
  """(fn(z), fn'(z) dz); identity for a linear (or absent) activation."""
  if fn is None or fn is keras.activations.linear:
    return Dual(z, dz)
  if dz is None:
    return Dual(fn(z), None)
  out, jvp = local_jvp(fn, Dual(z, dz), tangents, ())
  return Dual(out, jvp)


def _own_weight(layer, name: str):
  """The layer's variable `name` if it is the plain weight it computes with, else False."""
  value = getattr(layer, name, None)
  if value is None:
    return None
  return value if any(value is w for w in layer.weights) else False


class AffineRule(NamedTuple):
  """A plain Dense or Conv2D layer as a bilinear op, a bias and an activation.

      z = op(x, W) + b,   dz = op(dx, W) + op(x, dW) + db,   out = activation(z).
  """
  op: Callable  # Dense: matmul [N, ..., D_in] x [D_in, D_out]; Conv2D: [N, H, W, C_in] * [h, w, C_in, C_out]
  kernel: keras.Variable
  bias: Optional[keras.Variable]
  bias_shape: Optional[Tuple[int, ...]]  # None: added as is (Dense); (1, 1, 1, C_out) (Conv2D)
  activation: Optional[Callable]  # None or keras.activations.linear: the identity

  def pre_activation(self, x: tf.Tensor) -> tf.Tensor:
    """z = op(x, W) + b."""
    z = self.op(x, self.kernel)
    if self.bias is None:
      return z
    return keras.ops.add(z, self.bias if self.bias_shape is None
                         else keras.ops.reshape(self.bias, self.bias_shape))

  def tangent(self, x: tf.Tensor, dx: Optional[tf.Tensor],
              tangents: ParameterTangents) -> Optional[tf.Tensor]:
    """dz = op(dx, W) + op(x, dW) + db; terms with a zero factor are skipped; None if all are."""
    dkernel, dbias = _weight_tangent(self.kernel, tangents), _weight_tangent(self.bias, tangents)
    if dbias is not None and self.bias_shape is not None:
      dbias = tf.reshape(dbias, self.bias_shape)
    return tangent_sum([self.op(dx, self.kernel) if dx is not None else None,
                 self.op(x, dkernel) if dkernel is not None else None,
                 dbias])


def affine_rule(layer) -> Optional[AffineRule]:
  """The exact rule of a plain Dense or channels-last Conv2D layer; None for any other layer."""
  if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
    return None
  if layer.compute_dtype != layer.variable_dtype:
    return None
  kernel, bias = _own_weight(layer, "kernel"), _own_weight(layer, "bias")
  if kernel is False or bias is False or kernel is None:
    return None
  if type(layer) is keras.layers.Dense:  # pylint: disable=unidiomatic-typecheck
    return AffineRule(keras.ops.matmul, kernel, bias, None, layer.activation)
  if type(layer) is keras.layers.Conv2D and layer.data_format == "channels_last":  # pylint: disable=unidiomatic-typecheck
    return AffineRule(layer.convolution_op, kernel, bias, (1, 1, 1, layer.filters),
                      layer.activation)
  return None


def _affine_layer(layer, x: Dual, tangents: ParameterTangents) -> Optional[Dual]:
  """The exact rule of a plain Dense or Conv2D layer; None if `layer` is neither."""
  rule = affine_rule(layer)
  if rule is None:
    return None
  return _activation(rule.activation, rule.pre_activation(x.primal),
                     rule.tangent(x.primal, x.tangent, tangents), tangents)


def is_linear_layer(layer) -> bool:
  """Whether `layer` is parameter-free and linear in its inputs (its tangent is itself on the tangent)."""
  return isinstance(layer, _LINEAR_LAYERS) and not layer.weights


def linear_layer_tangent(layer, args, kwargs) -> Optional[tf.Tensor]:
  """layer(dx...) for a linear layer's `Dual` arguments; zeros for the zero ones; None if all are."""
  leaves = tf.nest.flatten((args, kwargs))
  if all(l.tangent is None for l in leaves if is_dual(l)):
    return None
  tangent_args = tf.nest.map_structure(
      lambda l: (tf.zeros_like(l.primal) if l.tangent is None else l.tangent)
      if is_dual(l) else l, (args, kwargs))
  return layer(*tangent_args[0], **tangent_args[1])


def _call_layer(layer, tangents: ParameterTangents, *args, **kwargs):
  """One graph node: the layer's outputs as `Dual`s, in inference mode."""
  if len(args) == 1 and not kwargs and is_dual(args[0]):
    affine = _affine_layer(layer, args[0], tangents)
    if affine is not None:
      return affine
  if getattr(layer, "_call_has_training_arg", False):
    kwargs["training"] = False
  if is_linear_layer(layer):
    plain = primals((args, kwargs))
    out = layer(*plain[0], **plain[1])
    jvp = linear_layer_tangent(layer, args, kwargs)
    if jvp is None:
      return tf.nest.map_structure(lambda o: Dual(o, None), out)
    return tf.nest.map_structure(Dual, out, jvp)
  out, jvp = local_jvp(lambda a: layer(*a[0], **a[1]), (args, kwargs), tangents,
                        layer.weights)
  return tf.nest.map_structure(Dual, out, jvp)


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
    return local_jvp(lambda x: model(x, training=False), inputs, tangents, model.weights)
  graph = keras_graph.functional_graph(model)
  flat_inputs = tf.nest.flatten(graph._standardize_inputs(inputs))  # pylint: disable=protected-access
  outputs = graph._run_through_graph(  # pylint: disable=protected-access
      [Dual(x, None) for x in flat_inputs],
      call_fn=lambda layer, *args, **kwargs: _call_layer(layer, tangents, *args, **kwargs))
  return (tf.nest.map_structure(lambda o: o.primal, outputs),
          tf.nest.map_structure(lambda o: o.tangent, outputs))
