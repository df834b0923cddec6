"""A linearized model's theta_star primals, cached per training example, for its training step.

    f_lin(x_i; theta) = f(x_i; theta_star) + J(x_i; theta_star) (theta - theta_origin)   (Eq. 1)

`Linearized.call` computes, every step, the network's forward pass at
theta_star (the primal), its tangent J dtheta, and (under the training tape)
the backward pass J^T g. Everything the tangent and the backward read at
theta_star is constant while theta trains: the input of each layer, the
derivative sigma'(z) of each activation and f(x_i; theta_star). `train` uses
no data augmentation, so these are computed once per training set
(`build`, in batches) and a step of the examples `indices` gathers them
instead of recomputing them (`PrimalCache.__call__`): its cost is the tangent
and J^T g only, the network's primal forward is gone (its share of a step:
benchmarks/speed_notes.md).

The tangent pass is `ntk_tf.forward_mode`'s, with the primals read here:

  * Dense / Conv2D (`forward_mode.affine_rule`): dz = op(dx, W) + op(x, dW) + db,
    x the layer's cached input, then its activation as below;
  * elementwise activations (`Activation` layers and those inside Dense /
    Conv2D; relu, gelu, tanh, ...): dz * sigma'(z), sigma'(z) cached (relu: the
    mask z > 0, as bool);
  * parameter-free linear layers (flatten, pooling, add, ...): the layer on
    the tangent, no cache;
  * any other layer (max pooling, BatchNorm, nested models, custom layers):
    a ForwardAccumulator local to the layer, on its cached inputs; this
    recomputes that layer's own forward.

A primal the step can compute for free is not cached: the model input and
parameter-free linear layers of it (flatten(x)), and the outputs of the
layers of the last kind (their local forward computes them).

Shapes: x `[N, ...]`, indices `[B]` into the N cached examples, outputs `[B, K]`.
"""

from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from ntk_tf import forward_mode
from ntk_tf import validation
from ntk_tf.linearize import Linearized
from ntk_tf.ntk import block_size
from ntk_tf.ntk.structured import keras_graph
from ntk_tf.types import Array

# The cache's default memory budget: this, or a quarter of physical memory if less.
DEFAULT_MEMORY_BUDGET_BYTES = 2 << 30

# Elementwise activations, whose JVP is sigma'(z) dz with sigma'(z) cached.
_ELEMENTWISE = tuple(getattr(keras.activations, name) for name in (
    "relu", "gelu", "tanh", "sigmoid", "elu", "selu", "softplus", "softsign", "silu",
    "exponential", "mish", "relu6", "hard_sigmoid") if hasattr(keras.activations, name))

# How a graph node's tangent is computed (module docstring).
_AFFINE, _ACTIVATION, _LINEAR, _LOCAL = "affine", "activation", "linear", "local"


class _Call(NamedTuple):
  """The plan of one layer call: its rule and the cache slots it reads."""
  rule: str
  reads: Tuple[int, ...]  # slots of its arguments without a free primal, in tf.nest order
  derivative: Optional[int]  # slot of sigma'(z) (affine with activation, activation)


class _Recorded:
  """A graph node in the recording pass: its primal, and two facts the plan needs."""

  __slots__ = ("primal", "free", "varies")

  def __init__(self, primal: tf.Tensor, free: bool, varies: bool):
    self.primal = primal
    self.free = free  # the tangent pass has its primal without the cache
    self.varies = varies  # a tangent reaches it (it depends on theta)


def _is_linear_activation(fn) -> bool:
  return fn is None or fn is keras.activations.linear


def _activation_of(layer) -> Optional[Callable]:
  """The elementwise function of a plain `Activation` layer, else None."""
  if type(layer) is keras.layers.Activation and layer.activation in _ELEMENTWISE:  # pylint: disable=unidiomatic-typecheck
    return layer.activation
  return None


def _rule_of(layer, args, kwargs) -> str:
  """The rule of one layer call in the recording pass (module docstring)."""
  single = len(args) == 1 and not kwargs and isinstance(args[0], _Recorded)
  if single:
    affine = forward_mode.affine_rule(layer)
    if affine is not None and (_is_linear_activation(affine.activation)
                               or affine.activation in _ELEMENTWISE):
      return _AFFINE
    if _activation_of(layer) is not None:
      return _ACTIVATION
  if forward_mode.is_linear_layer(layer):
    return _LINEAR
  return _LOCAL


def _derivative(fn: Callable, z: tf.Tensor) -> tf.Tensor:
  """sigma'(z) of an elementwise activation; relu: the mask z > 0 (bool, as TF's ReluGrad)."""
  if fn is keras.activations.relu:
    return z > 0
  with tf.GradientTape() as tape:
    tape.watch(z)
    out = fn(z)
  return tape.gradient(out, z)  # elementwise: d sum(fn(z)) / dz = sigma'(z)


def _times_derivative(dz: Optional[tf.Tensor], derivative: tf.Tensor) -> Optional[tf.Tensor]:
  if dz is None:
    return None
  if derivative.dtype == tf.bool:
    return dz * tf.cast(derivative, dz.dtype)
  return dz * derivative


def _with_training_false(layer, kwargs) -> Dict:
  kwargs = dict(kwargs)
  if getattr(layer, "_call_has_training_arg", False):
    kwargs["training"] = False
  return kwargs


class _Recorder:
  """Runs the network at theta_star on one batch, recording the primals the plan reads."""

  def __init__(self, varying_ids):
    self._varying_ids = varying_ids  # ids of the theta_star variables
    self.plan: List[_Call] = []
    self.slots: List[tf.Tensor] = []  # [b, ...] each
    self._slot_of: Dict[int, int] = {}  # id(tensor) -> slot, so a shared primal is stored once

  def _store(self, tensor: tf.Tensor) -> int:
    if id(tensor) not in self._slot_of:
      self._slot_of[id(tensor)] = len(self.slots)
      self.slots.append(tensor)
    return self._slot_of[id(tensor)]

  def _reads(self, leaves) -> Tuple[int, ...]:
    return tuple(self._store(l.primal) for l in leaves if not l.free)

  def __call__(self, layer, *args, **kwargs):
    rule = _rule_of(layer, args, kwargs)
    leaves = [l for l in tf.nest.flatten((args, kwargs)) if isinstance(l, _Recorded)]
    plain = tf.nest.map_structure(lambda l: l.primal if isinstance(l, _Recorded) else l,
                                  (args, kwargs))
    owns_theta = any(id(w) in self._varying_ids for w in layer.weights)
    varies = owns_theta or any(l.varies for l in leaves)
    derivative = None
    if rule == _AFFINE:
      affine = forward_mode.affine_rule(layer)
      reads = self._reads(leaves)
      out = affine.pre_activation(plain[0][0])
      if not _is_linear_activation(affine.activation):
        derivative = self._store(_derivative(affine.activation, out))
        out = affine.activation(out)
      free = False
    elif rule == _ACTIVATION:
      reads = ()
      derivative = self._store(_derivative(_activation_of(layer), plain[0][0]))
      out = layer(plain[0][0])
      free = False
    elif rule == _LINEAR:
      # A zero tangent beside a nonzero one is filled by zeros_like(primal): read it.
      reads = self._reads([l for l in leaves if not l.varies] if varies else [])
      out = layer(*plain[0], **plain[1])
      free = all(l.free for l in leaves)
    else:
      reads = self._reads(leaves)
      out = layer(*plain[0], **_with_training_false(layer, plain[1]))
      free = True
    self.plan.append(_Call(rule, reads, derivative))
    return tf.nest.map_structure(lambda o: _Recorded(o, free, varies), out)


class PrimalCache:
  """The theta_star primals of a `Linearized` model's training step, for N examples.

  Holds, per example i, one array per slot (module docstring), stacked into
  `slots`, a list of tensors `[N, ...]`:
    * the inputs x_l of the Dense / Conv2D layers (and of the layers run under
      a local ForwardAccumulator) that the step cannot compute for free,
      in the model's compute dtype;
    * sigma'(z_l) of each elementwise activation, in the compute dtype; for
      relu the mask z_l > 0, bool;
    * f(x_i; theta_star), `[N, K]`, when the model has its offset term.
  Size: bytes_per_example = sum over slots of prod(slot shape[1:]) * itemsize,
  N * bytes_per_example in all. E.g. float32 and CIFAR-10 inputs: the MLP
  3072-100-100-1 1,004 bytes (2 masks of 100 + 2 inputs of 100 floats + f);
  LeNet 21,504 bytes (masks 6,144 + 4,096 + 120 + 84; inputs 1,536 + 1,024 +
  120 + 84 floats; f), float64 32,584.

  Valid while theta_star (the frozen `model.network`) is unchanged; theta may
  change freely. Build with `build` (or `for_training`).
  """

  def __init__(self, model: Linearized, plan: List[_Call], slots: List[tf.Tensor]):
    self.model = model
    self.plan = plan
    self.slots = slots
    self.num_examples = int(slots[0].shape[0]) if slots else 0
    self.bytes_per_example = _bytes_per_example(slots)

  @property
  def nbytes(self) -> int:
    """N * bytes_per_example."""
    return self.num_examples * self.bytes_per_example

  def __call__(self, x: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
    """f_lin(x; theta) of the cached examples `indices`, `[B, K]`; x `[B, ...]` = their inputs.

    Equals `model(x)` (the same function of theta, gradients included) when x
    are the inputs the cache was built from at `indices`.
    """
    model = self.model
    cached = [tf.gather(slot, indices) for slot in self.slots]  # [B, ...] each
    star = [model.network.weights[i] for i in model.parameter_indices]
    tangents = {id(v): t - o  # theta - theta_origin, shaped like theta_star's variable v
                for v, t, o in zip(star, model.theta, model.theta_origin)}
    graph = keras_graph.functional_graph(model.network)
    flat_inputs = tf.nest.flatten(graph._standardize_inputs(x))  # pylint: disable=protected-access
    calls = iter(self.plan)
    outputs = graph._run_through_graph(  # pylint: disable=protected-access
        [forward_mode.Dual(xi, None) for xi in flat_inputs],
        call_fn=lambda layer, *args, **kwargs: _tangent_call(
            next(calls), cached, tangents, layer, args, kwargs))
    jvp = tf.nest.flatten(outputs)[0].tangent  # [B, K]; None: no parameter reaches f
    if model.offset:
      f_star = cached[-1]  # f(x; theta_star), [B, K]
      return f_star if jvp is None else f_star + jvp
    if jvp is None:
      num_outputs = model.network.outputs[0].shape[-1]  # K
      return tf.zeros(tf.stack([tf.shape(indices)[0], num_outputs]), model.compute_dtype)
    return jvp


def _tangent_call(call: _Call, cached: List[tf.Tensor], tangents, layer, args, kwargs):
  """One graph node of the tangent pass: its outputs as `Dual`s (primal None: not needed)."""
  reads = iter(call.reads)
  fill = lambda l: forward_mode.Dual(cached[next(reads)], l.tangent) if l.primal is None else l
  if call.rule == _AFFINE:
    x = fill(args[0])
    affine = forward_mode.affine_rule(layer)
    dz = affine.tangent(x.primal, x.tangent, tangents)
    if call.derivative is not None:
      dz = _times_derivative(dz, cached[call.derivative])
    return forward_mode.Dual(None, dz)
  if call.rule == _ACTIVATION:
    return forward_mode.Dual(None, _times_derivative(args[0].tangent, cached[call.derivative]))
  if call.rule == _LINEAR:
    leaves = [l for l in tf.nest.flatten((args, kwargs)) if forward_mode.is_dual(l)]
    out = None
    if all(l.primal is not None for l in leaves):  # free: computed from the model input
      plain = forward_mode.primals((args, kwargs))
      out = layer(*plain[0], **plain[1])
    if any(l.tangent is not None for l in leaves):  # zeros_like(primal) for the zero tangents
      args, kwargs = tf.nest.map_structure(
          lambda l: fill(l) if forward_mode.is_dual(l) and l.tangent is None else l,
          (args, kwargs))
    jvp = forward_mode.linear_layer_tangent(layer, args, kwargs)
    if out is None:
      return forward_mode.Dual(None, jvp)
    return tf.nest.map_structure(lambda o: forward_mode.Dual(o, None), out) if jvp is None \
        else tf.nest.map_structure(forward_mode.Dual, out, jvp)
  args, kwargs = tf.nest.map_structure(
      lambda l: fill(l) if forward_mode.is_dual(l) else l, (args, kwargs))
  out, jvp = forward_mode.local_jvp(
      lambda a: layer(*a[0], **_with_training_false(layer, a[1])), (args, kwargs), tangents,
      layer.weights)
  return tf.nest.map_structure(forward_mode.Dual, out, jvp)


def _bytes_per_example(slots: List[tf.Tensor]) -> int:
  return sum(int(np.prod(s.shape[1:])) * s.dtype.size for s in slots)


def default_memory_budget_bytes() -> int:
  """min(DEFAULT_MEMORY_BUDGET_BYTES, physical memory / 4) (the first if unknown)."""
  physical = block_size.physical_memory_bytes()
  return min(DEFAULT_MEMORY_BUDGET_BYTES, physical // 4) if physical else \
      DEFAULT_MEMORY_BUDGET_BYTES


def build(model: Linearized, x: Array, *, batch_size: int = 256,
          memory_budget_bytes: Optional[int] = None) -> PrimalCache:
  """Returns the `PrimalCache` of `model` on the examples x, computed in batches.

  Args:
    model: a `ntk_tf.Linearized` whose wrapped network is functional or Sequential.
    x: `[N, ...]` the training inputs (cast to the model's compute dtype).
    batch_size: examples per forward pass while building.
    memory_budget_bytes: the most bytes the cache may hold
      (default `default_memory_budget_bytes()`).
  Returns:
    The cache, `cache(x[indices], indices)` = `model(x[indices])`.
  Raises:
    ValueError: `model` is not a Linearized model of a functional network, or
      the cache (N * bytes_per_example, named) exceeds the memory budget.
  """
  if not isinstance(model, Linearized):
    raise ValueError(f"A primal cache needs a ntk_tf.Linearized model. Received: model={model!r}")
  if not keras_graph.is_functional(model.network):
    raise ValueError(f"A primal cache needs a functional or Sequential network. Received: "
                     f"model.network={model.network.name!r} of type {type(model.network).__name__}")
  batch_size = validation.check_positive_int(batch_size, "batch_size")
  budget = (default_memory_budget_bytes() if memory_budget_bytes is None
            else validation.check_positive_int(memory_budget_bytes, "memory_budget_bytes"))
  dtype = tf.as_dtype(model.compute_dtype)
  x = np.asarray(x)
  num_examples = len(x)
  if num_examples == 0:
    raise ValueError(f"x must hold at least one example. Received: x.shape={x.shape}")
  graph = keras_graph.functional_graph(model.network)
  varying_ids = {id(model.network.weights[i]) for i in model.parameter_indices}
  plan, columns = None, None
  for start in range(0, num_examples, batch_size):
    recorder = _Recorder(varying_ids)
    inputs = tf.nest.flatten(graph._standardize_inputs(  # pylint: disable=protected-access
        tf.constant(x[start:start + batch_size], dtype)))
    outputs = graph._run_through_graph(  # pylint: disable=protected-access
        [_Recorded(xi, True, False) for xi in inputs], call_fn=recorder)
    batch_slots = list(recorder.slots)
    if model.offset:
      batch_slots.append(tf.nest.flatten(outputs)[0].primal)  # f(x; theta_star), [b, K]
    if columns is None:
      plan = recorder.plan
      needed = num_examples * _bytes_per_example(batch_slots)
      if needed > budget:
        raise ValueError(
            f"The primal cache of {model.name} needs {needed / 2**20:.1f} MiB "
            f"({_bytes_per_example(batch_slots)} bytes per example x {num_examples} examples), "
            f"more than the memory budget of {budget / 2**20:.1f} MiB. "
            f"Received: memory_budget_bytes={memory_budget_bytes}")
      columns = [np.empty((num_examples,) + tuple(s.shape[1:]), s.dtype.as_numpy_dtype)
                 for s in batch_slots]
    for column, values in zip(columns, batch_slots):
      column[start:start + len(values)] = values.numpy()
  return PrimalCache(model, plan, [tf.constant(c) for c in columns])


def for_training(model: keras.Model, x: Array, *, batch_size: int = 256,
                 memory_budget_bytes: Optional[int] = None) -> Optional[PrimalCache]:
  """The cache `train` uses for a Linearized model, or None (the model's own call) where there is none.

  None, with a log line saying why, for a model that is not `Linearized`, a
  network that is not functional, or a cache over the memory budget.
  """
  if not isinstance(model, Linearized):
    return None
  try:
    cache = build(model, x, batch_size=batch_size, memory_budget_bytes=memory_budget_bytes)
  except ValueError as err:
    logging.warning("Training %s without a primal cache (each step recomputes f(x; theta_star)): "
                    "%s", model.name, err)
    return None
  logging.info("Primal cache of %s: %d examples x %d bytes = %.1f MiB.", model.name,
               cache.num_examples, cache.bytes_per_example, cache.nbytes / 2**20)
  return cache
