"""The first-order Taylor expansion of a Keras model in its parameters (paper Eq. 1).

    f_lin(x; theta) = [f(x; theta_star)] + J(x; theta_star) (theta - theta_origin),
    J(x; theta_star) = d f(x; theta) / d theta  at theta = theta_star,

where theta_star is the expansion point, theta_origin the point the trainable
weights theta start from, and the bracketed offset is present only when
`offset=True`. With theta_star = theta_origin = theta0 (the default) this is the
linearized network of Eq. 1; `offset=False` with theta_star a trained checkpoint
is the "unbiased linearization around theta_star" of Sec. 4.3 (Fig. 8).

The Jacobian-vector product J (theta - theta_origin) is computed in forward
mode (`tf.autodiff.ForwardAccumulator`), one extra forward pass per call; J is
never materialized. Gradients with respect to theta flow back through the
JVP, so `fit()` trains the linear model.

Shapes (the whole module): x `[N, ...]` model inputs; outputs `[N, K]` (K = 1
for the paper's models); theta a list of arrays with the shapes of the
wrapped model's parameters, P numbers in all.
"""

from typing import List, Optional, Sequence, Union

import keras
import numpy as np
import tensorflow as tf

from ntk_tf import onednn
from ntk_tf.types import Inputs

# A point in weight space: a model of the same architecture, or the list
# `model.get_weights()` (all weights, BatchNorm statistics included).
ExpansionPoint = Union[keras.Model, Sequence[np.ndarray]]


def _batchnorm_variable_ids(model: keras.Model) -> set:
  """ids of every variable owned by a BatchNormalization layer of `model`."""
  ids = set()
  for layer in model._flatten_layers(include_self=False, recursive=True):  # pylint: disable=protected-access
    if isinstance(layer, keras.layers.BatchNormalization):
      ids.update(id(v) for v in layer.weights)
  return ids


def parameter_indices_of(model: keras.Model) -> List[int]:
  """Positions in `model.weights` of the linearized parameters theta.

  theta = the trainable weights of `model` except those of BatchNormalization
  layers (frozen at the expansion point, App. B).

  Args:
    model: a built Keras model.
  Returns:
    Increasing indices into `model.weights`.
  """
  trainable_ids = {id(v) for v in model.trainable_weights}
  bn_ids = _batchnorm_variable_ids(model)
  return [i for i, v in enumerate(model.weights) if id(v) in trainable_ids and id(v) not in bn_ids]


@keras.saving.register_keras_serializable(package="ntk_tf")
class Linearized(keras.Model):
  """A Keras model computing the linearization of a wrapped model.

      f_lin(x; theta) = [f(x; theta_star)] + J(x; theta_star) (theta - theta_origin)

  State:
    * the wrapped model (`self.network`), frozen, holding theta_star and, for
      BatchNorm, its parameters and moving statistics at the expansion point.
      It is always called with `training=False`, so BatchNorm runs in
      inference mode with frozen statistics (App. B) and its gamma/beta are
      not part of theta.
    * `theta_origin`: non-trainable copies of the parameters theta starts from.
    * `theta`: the trainable weights (the only ones `fit()` updates).

  Build instances with `ntk_tf.linearize`; the constructor takes the wrapped
  model as the expansion point itself.

  Args:
    network: the model at the expansion point theta_star. It is owned (and
      frozen) by the Linearized model: pass a copy.
    parameter_indices: positions in `network.weights` of the parameters theta
      (default: `parameter_indices_of(network)`).
    theta_origin: initial values of theta, one array per parameter (default:
      theta_star).
    offset: whether to add f(x; theta_star).
  """

  def __init__(self, network: keras.Model, *, parameter_indices: Optional[Sequence[int]] = None,
               theta_origin: Optional[Sequence[np.ndarray]] = None, offset: bool = True,
               **kwargs):
    kwargs.setdefault("dtype", network.dtype_policy)
    super().__init__(**kwargs)
    if parameter_indices is None:
      parameter_indices = parameter_indices_of(network)
    num_weights = len(network.weights)
    indices = [int(i) for i in parameter_indices]
    if not indices or any(i < 0 or i >= num_weights for i in indices) or len(set(indices)) != len(indices):
      raise ValueError(
          f"parameter_indices must be distinct positions in network.weights (0..{num_weights - 1}). "
          f"Received: parameter_indices={list(parameter_indices)!r}")
    if not isinstance(offset, bool):
      raise ValueError(f"offset must be a bool. Received: offset={offset!r}")
    self.network = onednn.protect(network)  # exact conv gradients with oneDNN on
    self.network.trainable = False
    # A functional model casts its inputs to its own dtype policy, which is not
    # serialized (a float64 model reloads as float32): keep it equal to ours.
    self.network.dtype_policy = self.dtype_policy
    self.parameter_indices = indices
    self.offset = offset
    star_shapes = [tuple(self._theta_star()[k].shape) for k in range(len(indices))]
    if theta_origin is not None:
      theta_origin = [np.asarray(t) for t in theta_origin]
      shapes = [t.shape for t in theta_origin]
      if shapes != star_shapes:
        raise ValueError(
            f"theta_origin must match the parameter shapes {star_shapes}. Received shapes: {shapes}")
    self._theta_origin_values = theta_origin
    self.build(network.inputs[0].shape if network.inputs else None)

  def _theta_star(self) -> List[keras.Variable]:
    """The wrapped model's parameter variables, i.e. theta_star."""
    weights = self.network.weights
    return [weights[i] for i in self.parameter_indices]

  def build(self, input_shape=None):
    del input_shape  # The parameter shapes come from the wrapped model.
    if self.built:
      return
    star = self._theta_star()
    origin = self._theta_origin_values or [v.numpy() for v in star]
    self.theta_origin = []
    self.theta = []
    for v, value in zip(star, origin):
      name = v.path.replace("/", "__")
      self.theta_origin.append(self.add_weight(
          shape=v.shape, dtype=v.dtype, initializer=keras.initializers.Constant(value),
          trainable=False, name=f"theta_origin__{name}"))
    for v, value in zip(star, origin):
      name = v.path.replace("/", "__")
      self.theta.append(self.add_weight(
          shape=v.shape, dtype=v.dtype, initializer=keras.initializers.Constant(value),
          trainable=True, name=f"theta__{name}"))
    self._theta_origin_values = None
    self.built = True

  def call(self, inputs: Inputs, training=None) -> tf.Tensor:
    """Returns f_lin(x; theta), `[N, K]`. BatchNorm is always in inference mode."""
    del training  # The wrapped model is frozen: inference mode always (App. B).
    primals = [v.value for v in self._theta_star()]  # the tf.Variables holding theta_star
    tangents = [t - o for t, o in zip(self.theta, self.theta_origin)]  # theta - theta_origin
    with tf.autodiff.ForwardAccumulator(primals=primals, tangents=tangents) as acc:
      f_star = self.network(inputs, training=False)  # f(x; theta_star), [N, K]
    jvp = acc.jvp(f_star, unconnected_gradients=tf.UnconnectedGradients.ZERO)  # J dtheta, [N, K]
    return f_star + jvp if self.offset else jvp

  def compute_output_shape(self, input_shape):
    return self.network.compute_output_shape(input_shape)

  def get_config(self):
    config = super().get_config()
    config.update({
        "network": keras.saving.serialize_keras_object(self.network),
        "parameter_indices": list(self.parameter_indices),
        "offset": self.offset,
    })
    return config

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    network = keras.saving.deserialize_keras_object(config.pop("network"),
                                                    custom_objects=custom_objects)
    return cls(network, **config)


def _weights_of(point: ExpansionPoint, model: keras.Model) -> List[np.ndarray]:
  """The expansion point as a list of arrays shaped like `model.get_weights()`."""
  weights = point.get_weights() if isinstance(point, keras.Model) else [np.asarray(w) for w in point]
  want = [tuple(v.shape) for v in model.weights]
  got = [tuple(w.shape) for w in weights]
  if got != want:
    raise ValueError(
        f"expansion_point must hold weights shaped like model.get_weights() {want}. "
        f"Received shapes: {got}")
  return weights


def linearize(model: keras.Model, *, expansion_point: Optional[ExpansionPoint] = None,
              offset: bool = True) -> Linearized:
  """Returns the linearization of `model` as a Keras model (paper Eq. 1).

      f_lin(x; theta) = [f(x; theta_star)] + J(x; theta_star) (theta - theta_origin)

  theta_star is `expansion_point` (default: the model's current weights, i.e.
  theta0 at initialization); the trainable weights theta start at theta_origin
  = the model's current parameters, so at the start f_lin = [f(x; theta_star)].
  The offset term is present only when `offset=True`; `offset=False` with the
  expansion point at a trained checkpoint is the "unbiased linearization
  around theta_star" of Sec. 4.3 (Fig. 8).

  The JVP is computed in forward mode (`tf.autodiff.ForwardAccumulator`);
  J is never materialized. theta = the model's trainable weights except
  BatchNorm gamma/beta; BatchNorm parameters and moving statistics are frozen
  at their values at the expansion point and run in inference mode (App. B).
  `model` itself is not modified (it is cloned).

  Args:
    model: a built Keras model, `[N, ...] -> [N, K]`.
    expansion_point: theta_star, a model of the same architecture or a list
      shaped like `model.get_weights()` (e.g. a checkpoint's weights).
    offset: whether to include f(x; theta_star).
  Returns:
    A `Linearized` keras.Model, `[N, ...] -> [N, K]`; supports
    compile/fit/evaluate/predict and `.keras` save/load.
  """
  if not isinstance(model, keras.Model) or not model.built:
    raise ValueError(f"model must be a built keras.Model. Received: model={model!r}")
  indices = parameter_indices_of(model)
  if not indices:
    raise ValueError(f"model has no trainable parameters to linearize. Received: model={model.name!r}")
  all_weights = model.get_weights()
  theta_origin = [all_weights[i] for i in indices]
  network = keras.models.clone_model(model)
  network.set_weights(all_weights if expansion_point is None else _weights_of(expansion_point, model))
  return Linearized(network, parameter_indices=indices, theta_origin=theta_origin, offset=offset,
                    dtype=model.dtype_policy, name=f"{model.name}_linearized")
