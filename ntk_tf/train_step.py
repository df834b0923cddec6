"""The compiled training step of `ntk_tf.train`: forward, loss, backward, optimizer update.

    loss_k = mean_{i in batch k} l(f(x_i; theta_k), t_i),
    theta_{k+1} = optimizer update of theta_k with d loss_k / d theta,

with l the binary cross-entropy of one logit, t_i = (1 + y_i) / 2 the {0, 1} target of the
label y_i in {-1, +1}; or, for C > 1 logits, the softmax cross-entropy
l(f, t) = logsumexp(f) - t . f with t_i the one-hot row of the class c_i (`loss_of`).
`make_train_step` runs one step per call; `make_train_loop` runs K
consecutive minibatches in one call (a loop inside one tf.function), so the
host dispatches once per K steps and never waits for a step's loss. Both run
the same step, and their results are bitwise equal (tests/train_step_test.py).
For a `Linearized` model the loop can read the constant theta_star primals of
its examples from a `ntk_tf.primal_cache.PrimalCache` instead of recomputing them.

The paper's optimizer, `keras.optimizers.SGD` with momentum (no Nesterov,
weight decay, clipping, EMA or gradient accumulation), is applied by TF's
fused `ResourceApplyKerasMomentum` kernel,

    m <- momentum m - lr g,   theta <- theta + m,

Keras' own update (same operations, same rounding, bitwise equal to
`optimizer.apply_gradients`) in one pass over the weights instead of five.
Like Keras, it casts the learning rate (a float32 schedule) and the Python
float momentum through float32 to a float64 model's dtype.
Every other optimizer runs `optimizer.apply_gradients`.

Shapes: x `[B, ...]`, targets t `[B, C]` in the model's compute dtype (C = 1: the BCE target
of one logit; C > 1: one-hot rows for C logits); a loop's slab `[K*B, ...]` and `[K*B, C]`,
its losses `[K]` (K steps).
"""

from typing import Callable, List, Optional

import keras
import numpy as np
import tensorflow as tf

from ntk_tf import onednn
from ntk_tf import validation
from ntk_tf.primal_cache import PrimalCache


def bce_with_logits(y01: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """mean_i [softplus(f_i) - y_i f_i], the binary cross-entropy of one logit. `[B, 1]` -> `[]`."""
  return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y01, logits=logits))


def softmax_cross_entropy(one_hot: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """mean_i [logsumexp(f_i) - t_i . f_i], the cross-entropy of C > 1 logits. `[B, C]` -> `[]`."""
  return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=one_hot, logits=logits))


def per_example_losses(targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """The loss of each example for targets `[B, C]`: BCE `[B, 1]` for C = 1, else the softmax
  cross-entropy `[B]`. C is static; logits must have the same shape `[B, C]`."""
  if targets.shape[-1] == 1:
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
  return tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)


def loss_of(targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """The training loss, the mean of `per_example_losses`: `bce_with_logits` for C = 1, else
  `softmax_cross_entropy`."""
  return tf.reduce_mean(per_example_losses(targets, logits))


def targets_of(labels, num_outputs: int, name: str = "y") -> np.ndarray:
  """The targets of `loss_of` for labels `[N]`: `[N, C]` float32.

  C = num_outputs = 1: labels in {-1, +1} (any shape of N of them), targets (1 + y) / 2.
  C > 1: class labels c in {0, ..., C - 1} (ints, or floats with integer values),
  targets the one-hot rows e_c. Raises ValueError naming `name` and a bad label.
  """
  y = np.asarray(labels)
  if num_outputs == 1:  # Any shape, read as [N] (as `train` always took +-1 labels).
    y = y.reshape(-1)
    bad = ~np.isin(y, (-1, 1))
    if bad.any():
      raise ValueError(f"{name} must hold labels in {{-1, +1}} for a model with one logit. "
                       f"Received: {name} containing {np.unique(y[bad])[:5].tolist()}")
    return (y > 0).astype(np.float32).reshape(-1, 1)  # [N, 1]
  if y.ndim != 1:
    raise ValueError(f"{name} must be [N] labels. Received: {name}.shape={y.shape}")
  classes = np.arange(num_outputs)
  bad = ~np.isin(y, classes)
  if bad.any():
    raise ValueError(f"{name} must hold class labels in {{0, ..., {num_outputs - 1}}} for a "
                     f"model with {num_outputs} logits. Received: {name} containing "
                     f"{np.unique(y[bad])[:5].tolist()}")
  return (y.reshape(-1, 1) == classes).astype(np.float32)  # [N, C]


def num_logits(model: keras.Model, x) -> int:
  """C, the logits of `model`, read off its output on one example of x."""
  if len(x) == 0:
    raise ValueError("x must hold at least one example. Received: 0 examples")
  logits = model(tf.constant(x[:1], model.compute_dtype), training=False)
  if logits.shape.rank != 2:
    raise ValueError(f"train needs a model with logits [N, C]. Received: output shape "
                     f"{tuple(logits.shape)} for one example")
  return int(logits.shape[-1])


def make_eval_step(model: keras.Model) -> Callable:
  """eval_step(x `[B, ...]`, t `[B, C]`) -> (sum of the losses, number correct), in inference mode.

  Correct: logit > 0 predicts the target 1 for C = 1; argmax_a f_a = argmax_a t_a for C > 1.
  """
  @tf.function
  def eval_step(x, targets):
    logits = model(x, training=False)  # [B, C]
    if targets.shape[-1] == 1:
      hits = tf.equal(tf.cast(logits > 0, targets.dtype), targets)
    else:
      hits = tf.equal(tf.argmax(logits, -1), tf.argmax(targets, -1))
    return (tf.reduce_sum(per_example_losses(targets, logits)),
            tf.reduce_sum(tf.cast(hits, tf.float64)))

  return eval_step


def fuses_update(optimizer: keras.optimizers.Optimizer) -> bool:
  """Whether `optimizer` is plain heavy-ball SGD, applied by the fused kernel."""
  return (type(optimizer) is keras.optimizers.SGD  # pylint: disable=unidiomatic-typecheck
          and optimizer.momentum > 0 and not optimizer.nesterov
          and not optimizer.weight_decay and optimizer.clipnorm is None
          and optimizer.clipvalue is None and optimizer.global_clipnorm is None
          and not optimizer.use_ema and not optimizer.gradient_accumulation_steps
          and optimizer.loss_scale_factor is None)


def _make_update(optimizer: keras.optimizers.Optimizer, params: List) -> Callable:
  """update(grads): applies one optimizer step to `params` (traced inside a step)."""
  if not fuses_update(optimizer):
    return lambda grads: optimizer.apply_gradients(zip(grads, params))
  if not optimizer.built:
    optimizer.build(params)
  momentums = [optimizer.momentums[optimizer._get_variable_index(p)]  # pylint: disable=protected-access
               for p in params]

  def update(grads):
    lr = optimizer.learning_rate  # eta(k) at k = optimizer.iterations
    for param, momentum, grad in zip(params, momentums, grads):
      if grad is None:
        continue
      dtype = param.dtype
      tf.raw_ops.ResourceApplyKerasMomentum(
          var=param.value.handle, accum=momentum.value.handle, lr=tf.cast(lr, dtype), grad=grad,
          momentum=tf.cast(optimizer.momentum, dtype), use_nesterov=False)  # as Keras casts it
    optimizer.iterations.assign_add(1)

  return update


def _make_step_body(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                    primal_cache: Optional[PrimalCache] = None) -> Callable:
  """step(x [B, ...], t [B, 1], indices [B] or None) -> loss, untraced: forward, backward, update.

  With a primal cache, the forward is `primal_cache(x, indices)`, the same f_lin
  as `model(x)` without recomputing f(x; theta_star).
  """
  onednn.protect(model)  # exact conv gradients with oneDNN on
  params = model.trainable_weights
  update = _make_update(optimizer, params)

  def step(x, y01, indices=None):
    with tf.GradientTape() as tape:
      if primal_cache is None:
        logits = model(x, training=True)  # [B, C]
      else:
        logits = primal_cache(x, indices)  # [B, C]
      loss = loss_of(y01, logits)
    update(tape.gradient(loss, params))
    return loss

  return step


def make_train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> Callable:
  """The compiled step of `train`: forward, loss, backward, optimizer update; returns the loss.

  `step(x [B, ...], t [B, C])`, t the targets of `loss_of` in the model's compute dtype.
  """
  return tf.function(_make_step_body(model, optimizer))


def make_train_loop(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                    batch_size: int, primal_cache: Optional[PrimalCache] = None) -> Callable:
  """K steps of `make_train_step` in one call: `loop(xs, ts[, indices]) -> losses [K]`.

      for k in 0..K-1:  losses[k] = step(xs[k B : (k+1) B], ts[k B : (k+1) B])

  With `primal_cache` (a `Linearized` model's, `ntk_tf.primal_cache`), each
  step reads f(x; theta_star) and the other theta_star primals of its examples
  from the cache: `indices[k B : (k+1) B]` are their positions in it, and
  xs their inputs. The same f_lin and gradients, without the primal forward.

  Args:
    model, optimizer: as for `make_train_step`.
    batch_size: B, the examples per step.
    primal_cache: None, or the cache of `model` (then `indices` is required).
  Returns:
    loop(xs `[K*B, ...]`, ts `[K*B, C]`, indices `[K*B]` int32 with a cache) ->
    `[K]` losses; any K >= 1 without retracing.
  """
  batch_size = validation.check_positive_int(batch_size, "batch_size")
  if primal_cache is not None and primal_cache.model is not model:
    raise ValueError(f"primal_cache must be the cache of model {model.name!r}. "
                     f"Received: the cache of {primal_cache.model.name!r}")
  step = _make_step_body(model, optimizer, primal_cache)

  @tf.function(reduce_retracing=True)
  def train_loop(xs, ys, indices=None):
    if (indices is None) != (primal_cache is None):
      raise ValueError(f"The loop takes indices exactly when it has a primal cache. Received: "
                       f"indices={indices!r}, primal_cache={primal_cache!r}")
    shape = tf.shape(xs)
    num_steps = shape[0] // batch_size  # K
    batches = tf.reshape(xs, tf.concat([[num_steps, batch_size], shape[1:]], 0))  # [K, B, ...]
    batches = tf.ensure_shape(batches, [None, batch_size] + xs.shape[1:].as_list())
    targets = tf.reshape(ys, [num_steps, batch_size, ys.shape[-1]])  # [K, B, C]
    index_batches = None if indices is None else tf.reshape(indices, [num_steps, batch_size])  # [K, B]
    losses = tf.TensorArray(ys.dtype, size=num_steps)
    for k in tf.range(num_steps):
      losses = losses.write(k, step(batches[k], targets[k],
                                    None if index_batches is None else index_batches[k]))
    return losses.stack()  # [K]

  return train_loop
