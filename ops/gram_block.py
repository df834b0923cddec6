"""One Gram block from two Jacobian blocks, XLA-compiled.

    Theta_block = J_a J_b^T

Shapes: `jac_a [B, P]`, `jac_b [B, P]` -> `[B, B]`. Callers pad every block
(including the last, partial one) to the same B so the compiled function is
traced once per (B, P, dtype) and reused for every block of a Gram.
"""

import tensorflow as tf


@tf.function(jit_compile=True)
def gram_block(jac_a: tf.Tensor, jac_b: tf.Tensor) -> tf.Tensor:
  """Returns J_a J_b^T, `[B_a, P] x [B_b, P] -> [B_a, B_b]`, accumulated in the inputs' dtype."""
  return tf.matmul(jac_a, jac_b, transpose_b=True)  # [B_a, B_b]
