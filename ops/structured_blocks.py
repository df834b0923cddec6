"""XLA-compiled contractions for one [Na, Nb] block of the structured NTK.

Shape convention: `a`/`b` suffixes are the two example blocks (Na, Nb rows);
P = output positions of a layer (H'*W' for a conv), K = patch length
(kh*kw*C_in), C = output channels; k1, k2 = feature widths.

Every function is `tf.function(jit_compile=True)`; callers pad partial blocks
to a fixed block size, so each function traces once per block shape.

Engines (`ntk_tf.ntk.structured.engines`). With the XLA engine (the default when
a GPU is visible) every contraction runs here. With the NumPy engine (the
default without one) `ntk_tf.ntk.structured` runs the final GEMMs (`gram_product`,
`gradient_gram`) as host BLAS SYRK/GEMM and forms per-example conv gradients
(`positional_gradient`) by `ntk_tf.ntk.structured.geometry.conv_gradient` (a TF
conv gradient per example) or, for small kernels, NumPy instead; all are exact float32/float64
products, only the summation order differs. Measured speeds of both are in
the benchmark's output (binaries/bench_gram.py), beside the machine's features.
"""

import tensorflow as tf


@tf.function(jit_compile=True)
def gradient_gram(g_a: tf.Tensor, g_b: tf.Tensor) -> tf.Tensor:
  """Returns G_a G_b^T, the NTK of per-example gradients.

  Args:
    g_a: [Na, p] per-example gradients (flattened parameters).
    g_b: [Nb, p].
  Returns:
    [Na, Nb].
  """
  return tf.matmul(g_a, g_b, transpose_b=True)  # [Na, Nb]


@tf.function(jit_compile=True)
def gram_product(left_a: tf.Tensor, left_b: tf.Tensor, right_a: tf.Tensor,
                 right_b: tf.Tensor, offset: float = 0.0) -> tf.Tensor:
  """Returns (L_a L_b^T + offset) * (R_a R_b^T), a Dense layer's NTK without its weight gradient.

  For a Dense layer z = A W (+ b), d f / d W_i = A_i^T D_i, so
  <df_a/dW, df_b/dW> = (A_a . A_b)(D_a . D_b); offset 1 adds the bias term
  D_a . D_b (as a ones column appended to A would).

  Args:
    left_a: [Na, k1] layer inputs A.
    left_b: [Nb, k1].
    right_a: [Na, k2] output cotangents D = d f / d z.
    right_b: [Nb, k2].
    offset: 1.0 to include the bias, else 0.0 (a Python float: one trace each).
  Returns:
    [Na, Nb].
  """
  inputs_gram = tf.matmul(left_a, left_b, transpose_b=True) + offset  # [Na, Nb]
  cotangent_gram = tf.matmul(right_a, right_b, transpose_b=True)  # [Na, Nb]
  return inputs_gram * cotangent_gram


@tf.function(jit_compile=True)
def positional_gram_product(patches_a: tf.Tensor, cot_a: tf.Tensor, patches_b: tf.Tensor,
                            cot_b: tf.Tensor) -> tf.Tensor:
  """Returns sum_{p,q} (X_a[p] . X_b[q]) (D_a[p] . D_b[q]), a conv kernel's NTK.

  A conv (or a Dense on [N, P, K] inputs) has per-example kernel gradient
  g_i = sum_p X_i[p]^T D_i[p], so <g_a, g_b> is the double sum above; it never
  forms g. Costs 2 Na Nb P^2 (K + C) FLOPs and Na Nb P^2 memory.

  Args:
    patches_a: [Na, P, K] input patches.
    cot_a: [Na, P, C] output cotangents.
    patches_b: [Nb, P, K].
    cot_b: [Nb, P, C].
  Returns:
    [Na, Nb].
  """
  patch_gram = tf.einsum("apk,bqk->abpq", patches_a, patches_b)  # [Na, Nb, P, P]
  cotangent_gram = tf.einsum("apc,bqc->abpq", cot_a, cot_b)  # [Na, Nb, P, P]
  return tf.reduce_sum(patch_gram * cotangent_gram, axis=[2, 3])  # [Na, Nb]


@tf.function(jit_compile=True)
def positional_gradient(patches: tf.Tensor, cot: tf.Tensor) -> tf.Tensor:
  """Returns the per-example kernel gradients g_i = sum_p X_i[p]^T D_i[p], flattened.

  (The NumPy engine forms them with `ntk_tf.ntk.structured.conv_gradient` or, for small
  kernels, `ntk_tf.ntk.structured.host_conv_gradient` instead.)

  Args:
    patches: [N, P, K].
    cot: [N, P, C].
  Returns:
    [N, K*C].
  """
  grads = tf.einsum("npk,npc->nkc", patches, cot)  # [N, K, C]
  return tf.reshape(grads, [tf.shape(grads)[0], -1])  # [N, K*C]
