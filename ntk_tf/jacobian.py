"""Per-example Jacobians of a single-logit model with respect to its weights.

    J(x)[i, :] = d f(x_i) / d theta,   theta = concat(vec(v) for v in model.trainable_variables)

Shapes: inputs `[N, ...]` (the model's input shape), Jacobian `[N, P]` with
P = number of trainable parameters, columns in `model.trainable_variables`
order, each variable flattened in C order.

The model runs in inference mode (`training=False`): BatchNorm uses its moving
statistics and dropout is off, so samples do not interact and row i depends on
x_i alone (Sec. 2: the empirical NTK of the network at its current weights).
"""

from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from ntk_tf import onednn
from ntk_tf import precision
from ntk_tf import types
from ntk_tf import validation

# Examples differentiated concurrently inside one block (tf.map_fn).
_PARALLEL_EXAMPLES = 16


def jacobian_fn(model: keras.Model,
                outputs: Optional[int] = None) -> Callable[[tf.Tensor], tf.Tensor]:
  """Returns a `tf.function` mapping a block `x [B, ...]` to its Jacobian `[B, P]`.

  Each row is a separate GradientTape gradient of the logit of one example
  (a `tf.map_fn` over the block), so per-example gradients are exact and the
  work per block is B backward passes of batch size 1. The function is traced
  once per block shape and dtype. Peak memory: B * P * bytes for the result
  plus one example's activations per concurrent example.

  With `outputs=K` (a model with K logits `[N, K]`) the Jacobian is
  `[B, K, P]`, J[i, a] = d f_a(x_i) / d theta: K backward passes per example
  from one forward pass (a persistent tape), B K P * bytes for the result.
  """
  onednn.protect(model)  # per-example (batch 1) gradients hit oneDNN's 1x1 stride-2 bug
  variables = model.trainable_variables
  num_params = validation.parameter_count(model)
  dtype = tf.as_dtype(variables[0].dtype)

  def flat(grads):  # a list shaped like the variables -> [P]
    return tf.concat([tf.reshape(tf.cast(g, dtype), [-1]) for g in grads], axis=0)

  def example_gradient(x_i):  # x_i [...] -> [P]
    with tf.GradientTape() as tape:
      logit = tf.reshape(model(x_i[None], training=False), [])  # [] (the single logit)
    return flat(tape.gradient(logit, variables,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO))

  def example_output_gradients(x_i):  # x_i [...] -> [K, P]
    with tf.GradientTape(persistent=True) as tape:
      logits = tf.reshape(model(x_i[None], training=False), [outputs])  # [K]
      per_output = [logits[a] for a in range(outputs)]
    rows = [flat(tape.gradient(logit, variables,
                               unconnected_gradients=tf.UnconnectedGradients.ZERO))
            for logit in per_output]
    return tf.stack(rows)  # [K, P]

  if outputs is None:
    fn, row_shape = example_gradient, [num_params]
  else:
    fn, row_shape = example_output_gradients, [validation.check_positive_int(
        outputs, "outputs"), num_params]

  @tf.function(reduce_retracing=True)
  def block_jacobian(x):  # x [B, ...] -> [B, P] (or [B, K, P])
    return tf.map_fn(fn, x, parallel_iterations=_PARALLEL_EXAMPLES,
                     fn_output_signature=tf.TensorSpec(row_shape, dtype))

  return block_jacobian


def jacobian(model: keras.Model, x: types.Inputs, *, dtype: types.DType = "float32",
             batch_size: int = 256) -> np.ndarray:
  """Returns the per-example Jacobian J(x) of the model's single logit.

      J[i, :] = d f(x_i) / d theta    (theta: all trainable variables, flattened)

  BatchNorm and dropout run in inference mode (`training=False`), so samples do
  not interact: row i is the gradient of f(x_i) alone.

  Args:
    model: a Keras model with one output logit, `[N, ...] -> [N, 1]`.
    x: `[N, ...]` inputs matching the model's input shape; must be finite.
    dtype: "float32" or "float64". float64 differentiates a float64 copy of the
      model (`precision.as_float64_model`), so the result is float64 end to end.
    batch_size: examples per compiled call; peak memory is about
      batch_size * P * bytes plus the `[N, P]` result.

  Returns:
    `[N, P]` NumPy array of `dtype`, columns in `model.trainable_variables` order.

  Paper: Sec. 2 (the Jacobian whose Gram is the empirical NTK).
  """
  dtype = precision.canonical_dtype(dtype)
  batch_size = validation.check_positive_int(batch_size, "batch_size")
  validation.check_single_logit(model)
  validation.check_finite_weights(model)
  x = validation.check_inputs(model, x, "x")
  work_model = precision.model_for_dtype(model, dtype)
  x = x.astype(dtype)
  block_jacobian = jacobian_fn(work_model)
  rows = [block_jacobian(tf.constant(x[start:start + batch_size])).numpy()  # [B, P]
          for start in range(0, x.shape[0], batch_size)]
  return np.concatenate(rows, axis=0)  # [N, P]

