"""The first-order Taylor expansion of a Keras model in its parameters (paper Eq. 1).

    f_lin(x; theta) = [f(x; theta_star)] + J(x; theta_star) (theta - theta_origin),
    J(x; theta_star) = d f(x; theta) / d theta  at theta = theta_star,

where theta_star is the expansion point, theta_origin the point the trainable
weights theta start from, and the bracketed offset is present only when
`offset=True`. With theta_star = theta_origin = theta0 (the default) this is the
linearized network of Eq. 1; `offset=False` with theta_star a trained checkpoint
is the "unbiased linearization around theta_star" of Sec. 4.3 (Fig. 8).

theta is every trainable weight of the model, BatchNorm gamma/beta included:
the same parameter set as `ntk_gram`'s Jacobian, so the kernel of the
linearized model at theta0 is the model's NTK, ntk_gram(linearize(m)) =
ntk_gram(m) (Sec. 2; alpha_0(phi_j) = lambda_j / N^2 of Lemma 1 needs it).

BatchNorm always runs in inference mode (`training=False`), so samples do not
interact. At an expansion point other than the model's own weights, its
weights (gamma, beta, moving mean and variance) are taken from `model`, i.e.
theta0, by default (`batch_norm="initial"`), as App. B does: "In the case of
the ResNet18 network, which includes batch normalization layers [43], we fix the
batch normalization parameters to their initialization values when
performing the linearization. This effectively deactivates batch
normalization for the linear approximations." `batch_norm="trained"` takes
them from the expansion point instead (our option, not the paper's).

The Jacobian-vector product J (theta - theta_origin) is computed in forward
mode together with f(x; theta_star), in one pass through the wrapped model's
layers (`ntk_tf.forward_mode.primal_and_jvp`); J is never materialized.
Gradients with respect to theta flow back through the JVP, which is linear in
theta: d loss / d theta = J^T d loss / d f_lin, one reverse pass through the
network at theta_star. So `fit()` trains the linear model.

Shapes (the whole module): x `[N, ...]` model inputs; outputs `[N, K]` (K = 1
for the paper's models); theta a list of arrays with the shapes of the
wrapped model's parameters, P numbers in all.
"""

from typing import List, Optional, Sequence, Union

import keras
import numpy as np
import tensorflow as tf

from ntk_tf import forward_mode
from ntk_tf import onednn
from ntk_tf import validation
from ntk_tf.types import Inputs

# A point in weight space: a model of the same architecture, or the list
# `model.get_weights()` (all weights, BatchNorm statistics included).
ExpansionPoint = Union[keras.Model, Sequence[np.ndarray]]

# Where the BatchNorm weights of the expansion point come from (see `linearize`).
BATCH_NORM_MODES = ("initial", "trained")


def batch_norm_indices_of(model: keras.Model) -> List[int]:
  """Positions in `model.weights` of every BatchNormalization weight.

  gamma, beta, moving mean and moving variance of each BatchNormalization
  layer (nested models included), in `model.weights` order.
  """
  ids = set()
  for layer in model._flatten_layers(include_self=False, recursive=True):  # pylint: disable=protected-access
    if isinstance(layer, keras.layers.BatchNormalization):
      ids.update(id(v) for v in layer.weights)
  return [i for i, v in enumerate(model.weights) if id(v) in ids]


def parameter_indices_of(model: keras.Model) -> List[int]:
  """Positions in `model.weights` of the linearized parameters theta.

  theta = every trainable weight of `model`, BatchNorm gamma/beta included:
  the parameters of `ntk_gram`'s Jacobian, so both see one parameter set.
  (Before this release BatchNorm gamma/beta were left out.)

  Args:
    model: a built Keras model.
  Returns:
    Increasing indices into `model.weights`.
  """
  trainable_ids = {id(v) for v in model.trainable_weights}
  return [i for i, v in enumerate(model.weights) if id(v) in trainable_ids]


@keras.saving.register_keras_serializable(package="ntk_tf")
class Linearized(keras.Model):
  """A Keras model computing the linearization of a wrapped model.

      f_lin(x; theta) = [f(x; theta_star)] + J(x; theta_star) (theta - theta_origin)

  State:
    * the wrapped model (`self.network`), frozen, holding theta_star and the
      BatchNorm moving statistics of the expansion point (`linearize`'s
      `batch_norm` chooses them). It is always called with `training=False`,
      so BatchNorm runs in inference mode with frozen statistics (App. B);
      its gamma/beta are part of theta like every trainable weight.
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
    tangents = {id(v): t - o  # theta - theta_origin, shaped like theta_star's variable v
                for v, t, o in zip(self._theta_star(), self.theta, self.theta_origin)}
    f_star, jvp = forward_mode.primal_and_jvp(self.network, inputs, tangents)  # [N, K] each
    if jvp is None:  # No parameter reaches the output.
      jvp = tf.zeros_like(f_star)
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
              offset: bool = True, batch_norm: str = "initial") -> Linearized:
  """Returns the linearization of `model` as a Keras model (paper Eq. 1).

      f_lin(x; theta) = [f(x; theta_star)] + J(x; theta_star) (theta - theta_origin)

  `model` holds theta0, the initialization: its trainable weights are
  theta_origin, where theta starts, so at the start f_lin = [f(x; theta_star)].
  theta_star is `expansion_point` (default: theta0 itself). The offset term is
  present only when `offset=True`; `offset=False` with the expansion point at
  a trained checkpoint is the "unbiased linearization around theta_star" of
  Sec. 4.3 (Fig. 8).

  theta = every trainable weight of `model`, BatchNorm gamma/beta included,
  the parameter set of `ntk_gram`: ntk_gram(linearize(m)) = ntk_gram(m).

  BatchNorm runs in inference mode (frozen statistics) at every expansion
  point. Its weights at theta_star (gamma, beta, moving mean, moving
  variance) are chosen by `batch_norm`:
    * "initial" (default): theta0's, i.e. `model`'s, whatever the expansion
      point, as in App. B: "we fix the batch normalization parameters to their
      initialization values when performing the linearization. This
      effectively deactivates batch normalization for the linear
      approximations." (At initialization the moving statistics are 0 and 1,
      so each BatchNorm is an affine map of its input, not a normalization.)
    * "trained": the expansion point's (its trained gamma/beta and moving
      statistics); our option, not the paper's.
  Both coincide when `expansion_point` is None. In both, gamma/beta stay
  coordinates of theta (the paper's text does not say whether the linear
  model trains them; keeping them makes its NTK at theta0 the model's).

  The JVP is computed in forward mode, with f(x; theta_star) in one pass
  (`ntk_tf.forward_mode`); J is never materialized. `model` itself is not modified (it is cloned).

  Args:
    model: a built Keras model at theta0, `[N, ...] -> [N, K]`, finite weights.
    expansion_point: theta_star, a model of the same architecture or a list
      shaped like `model.get_weights()` (e.g. a checkpoint's weights); finite.
    offset: whether to include f(x; theta_star).
    batch_norm: "initial" or "trained", the BatchNorm weights at theta_star.
  Returns:
    A `Linearized` keras.Model, `[N, ...] -> [N, K]`; supports
    compile/fit/evaluate/predict and `.keras` save/load.
  Raises:
    ValueError: naming the bad argument, or the first variable with NaN/inf
      entries in `model` or `expansion_point` (`validation.check_finite_weights`).
  """
  if not isinstance(model, keras.Model) or not model.built:
    raise ValueError(f"model must be a built keras.Model. Received: model={model!r}")
  validation.check_choice(batch_norm, "batch_norm", BATCH_NORM_MODES)
  indices = parameter_indices_of(model)
  if not indices:
    raise ValueError(f"model has no trainable parameters to linearize. Received: model={model.name!r}")
  validation.check_finite_weights(model)  # theta0
  all_weights = model.get_weights()
  theta_origin = [all_weights[i] for i in indices]
  network = keras.models.clone_model(model)
  if expansion_point is None:
    star_weights = all_weights
  else:
    star_weights = _weights_of(expansion_point, model)
    if batch_norm == "initial":  # App. B: BatchNorm at theta0's values.
      star_weights = list(star_weights)
      for i in batch_norm_indices_of(model):
        star_weights[i] = all_weights[i]
  network.set_weights(star_weights)
  try:
    validation.check_finite_weights(network)  # theta_star
  except ValueError as err:
    raise ValueError(f"expansion_point must be finite: {err}") from err
  return Linearized(network, parameter_indices=indices, theta_origin=theta_origin, offset=offset,
                    dtype=model.dtype_policy, name=f"{model.name}_linearized")
