"""The compiled training step of `ntk_tf.train`: forward, loss, backward, optimizer update.

    loss_k = mean_{i in batch k} BCE(f(x_i; theta_k), t_i),
    theta_{k+1} = optimizer update of theta_k with d loss_k / d theta,

t_i = (1 + y_i) / 2 the {0, 1} BCE target of the label y_i in {-1, +1}.
`make_train_step` runs one step per call; `make_train_loop` runs K
consecutive minibatches in one call (a loop inside one tf.function), so the
host dispatches once per K steps and never waits for a step's loss. Both run
the same step, and their results are bitwise equal (tests/train_step_test.py).

The paper's optimizer, `keras.optimizers.SGD` with momentum (no Nesterov,
weight decay, clipping, EMA or gradient accumulation), is applied by TF's
fused `ResourceApplyKerasMomentum` kernel,

    m <- momentum m - lr g,   theta <- theta + m,

Keras' own update (same operations, same rounding, bitwise equal to
`optimizer.apply_gradients`) in one pass over the weights instead of five.
Like Keras, it casts the learning rate (a float32 schedule) and the Python
float momentum through float32 to a float64 model's dtype.
Every other optimizer runs `optimizer.apply_gradients`.

Shapes: x `[B, ...]`, targets t `[B, 1]` in the model's compute dtype;
a loop's slab `[K*B, ...]` and `[K*B, 1]`, its losses `[K]`.
"""

from typing import Callable, List

import keras
import tensorflow as tf

from ntk_tf import onednn
from ntk_tf import validation


def bce_with_logits(y01: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """mean_i [softplus(f_i) - y_i f_i], the binary cross-entropy of one logit. `[B, 1]` -> `[]`."""
  return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y01, logits=logits))


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


def _make_step_body(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> Callable:
  """step(x [B, ...], t [B, 1]) -> loss, untraced: one forward, backward and update."""
  onednn.protect(model)  # exact conv gradients with oneDNN on
  params = model.trainable_weights
  update = _make_update(optimizer, params)

  def step(x, y01):
    with tf.GradientTape() as tape:
      logits = model(x, training=True)  # [B, 1]
      loss = bce_with_logits(y01, logits)
    update(tape.gradient(loss, params))
    return loss

  return step


def make_train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> Callable:
  """The compiled step of `train`: forward, BCE, backward, optimizer update; returns the loss.

  `step(x [B, ...], t [B, 1])`, t the {0, 1} BCE targets in the model's compute dtype.
  """
  return tf.function(_make_step_body(model, optimizer))


def make_train_loop(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                    batch_size: int) -> Callable:
  """K steps of `make_train_step` in one call: `loop(xs, ts) -> losses [K]`.

      for k in 0..K-1:  losses[k] = step(xs[k B : (k+1) B], ts[k B : (k+1) B])

  Args:
    model, optimizer: as for `make_train_step`.
    batch_size: B, the examples per step.
  Returns:
    loop(xs `[K*B, ...]`, ts `[K*B, 1]`) -> `[K]` losses; any K >= 1 without
    retracing.
  """
  batch_size = validation.check_positive_int(batch_size, "batch_size")
  step = _make_step_body(model, optimizer)

  @tf.function(reduce_retracing=True)
  def train_loop(xs, ys):
    shape = tf.shape(xs)
    num_steps = shape[0] // batch_size  # K
    batches = tf.reshape(xs, tf.concat([[num_steps, batch_size], shape[1:]], 0))  # [K, B, ...]
    batches = tf.ensure_shape(batches, [None, batch_size] + xs.shape[1:].as_list())
    targets = tf.reshape(ys, [num_steps, batch_size, 1])  # [K, B, 1]
    losses = tf.TensorArray(ys.dtype, size=num_steps)
    for k in tf.range(num_steps):
      losses = losses.write(k, step(batches[k], targets[k]))
    return losses.stack()  # [K]

  return train_loop
