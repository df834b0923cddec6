"""Kernel-target alignment of a network and energy concentration of a target.

    alpha(y) = || (1/N) sum_i y_i grad_theta f(x_i) ||^2 = y^T Theta y / N^2    (Lemma 1)
    E_k(y)   = || Phi_k^T y ||^2 / || y ||^2                                   (Sec. 4.2)

Shapes: inputs `[N, ...]`, labels `[N]` or `[N, m]` (m label vectors at once),
eigenvectors `[N, K]` (orthonormal columns). Both functions return an ndarray:
0-d for labels `[N]`, `[m]` for `[N, m]` (`float(result)` for a Python float).

`alignment` never forms Theta or the per-example Jacobian: for each batch it
takes m vector-Jacobian products v_c += J_b^T y_b[:, c] / N (one backward pass
of the whole batch per label vector, sharing one forward pass), then alpha_c =
||v_c||^2. Memory: m * P * bytes for the accumulated gradients plus one batch
of activations.
"""

import keras
import numpy as np
import tensorflow as tf

from ntk_tf import precision
from ntk_tf import types
from ntk_tf import validation


def _check_labels(y, n: int, name: str = "y") -> np.ndarray:
  labels = np.asarray(y, dtype=np.float64)
  if labels.ndim not in (1, 2) or labels.shape[0] != n:
    raise ValueError(f"{name} must be [N] or [N, m] with N={n}. Received: {name}.shape="
                     f"{labels.shape}")
  if not np.all(np.isfinite(labels)):
    raise ValueError(f"{name} must be finite. Received: {name} with NaN/inf entries")
  return labels


def alignment(model: keras.Model, x: types.Inputs, y: types.Array, *, batch_size: int = 256,
              dtype: types.DType = "float32") -> np.ndarray:
  """Returns alpha(y) = ||(1/N) sum_i y_i grad_theta f(x_i)||^2 for each label vector.

      alpha(y) = ||J^T y||^2 / N^2 = y^T Theta y / N^2,   J = d f(x) / d theta  [N, P]

  BatchNorm and dropout run in inference mode, as for `ntk_gram`.

  Args:
    model: Keras model with one output logit.
    x: `[N, ...]` inputs.
    y: `[N]` labels or `[N, m]` label vectors (columns).
    batch_size: examples per vector-Jacobian product (> 0).
    dtype: "float32" or "float64" (float64 uses a float64 copy of the model).

  Returns:
    float64 ndarray: 0-d for `y [N]`, `[m]` for `y [N, m]`. (Before this
    release `y [N]` gave a Python float; a 0-d array converts with `float()`.)

  Paper: Lemma 1 (alpha(f) = ||E_x[f(x) grad_theta f(x)]||^2); App. B
  ("Alignment"), used for alpha(phi_j) in Sec. 4.2.
  """
  dtype = precision.canonical_dtype(dtype)
  batch_size = validation.check_positive_int(batch_size, "batch_size")
  validation.check_single_logit(model)
  validation.check_finite_weights(model)
  x = validation.check_inputs(model, x, "x")
  n = x.shape[0]
  labels = _check_labels(y, n)
  labels_2d = labels.reshape(n, -1)  # [N, m]
  work_model = precision.model_for_dtype(model, dtype)
  variables = work_model.trainable_variables
  tf_dtype = tf.as_dtype(dtype)

  @tf.function(reduce_retracing=True)
  def batch_vjps(x_b, y_b):  # [B, ...], [B, m] -> [m, P]: rows J_b^T y_b[:, c]
    with tf.GradientTape() as tape:
      logits = tf.reshape(work_model(x_b, training=False), [-1])  # [B]
      projected = tf.linalg.matvec(y_b, logits, transpose_a=True)  # [m]
    grads = tape.jacobian(projected, variables, experimental_use_pfor=False,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)  # m VJPs
    return tf.concat([tf.reshape(g, [tf.shape(y_b)[1], -1]) for g in grads], axis=1)  # [m, P]

  # Pad to a whole number of batches with zero labels (zero contribution), so
  # every call has one shape and batch_vjps is traced once.
  num_batches = -(-n // batch_size)
  padded = num_batches * batch_size
  x = np.pad(x.astype(dtype), [(0, padded - n)] + [(0, 0)] * (x.ndim - 1))  # [N', ...]
  labels_2d = np.pad(labels_2d, [(0, padded - n), (0, 0)])  # [N', m]
  total = None
  for start in range(0, padded, batch_size):
    vjps = batch_vjps(tf.constant(x[start:start + batch_size]),
                      tf.constant(labels_2d[start:start + batch_size], dtype=tf_dtype))
    total = vjps if total is None else total + vjps  # [m, P]
  mean_gradients = total.numpy().astype(np.float64) / n  # [m, P]: (1/N) J^T y
  alphas = np.sum(mean_gradients**2, axis=1)  # [m]
  return alphas.reshape(labels.shape[1:])  # [] or [m]


def energy_concentration(eigvecs: types.Array, y: types.Array, k: int) -> np.ndarray:
  """Returns the fraction of ||y||^2 in the span of the top-k eigenvectors.

      E_k(y) = || Phi_k^T y ||^2 / || y ||^2,   Phi_k = eigvecs[:, :k] (orthonormal)

  Args:
    eigvecs: `[N, K]` orthonormal eigenvectors, descending eigenvalues.
    y: `[N]` or `[N, m]` targets (nonzero).
    k: number of leading eigenvectors, 1 <= k <= K.

  Returns:
    float64 ndarray of values in [0, 1]: 0-d for `y [N]`, `[m]` for `y [N, m]`.
    (Before this release `y [N]` gave a Python float; a 0-d array converts
    with `float()`.)

  Paper: Sec. 4.2, ||Phi_t y||^2 / ||y||^2 with the eigenvectors as the rows of
  Phi_t (Sec. 2), here the columns of `eigvecs`.
  """
  eigvecs = np.asarray(eigvecs, dtype=np.float64)
  if eigvecs.ndim != 2:
    raise ValueError(f"eigvecs must be [N, K]. Received: eigvecs.shape={eigvecs.shape}")
  if k is None:  # check_k reads None as "all K"; here k is required.
    raise ValueError(f"k must be an int in [1, {eigvecs.shape[1]}]. Received: k=None")
  k = validation.check_k(k, eigvecs.shape[1])
  labels = _check_labels(y, eigvecs.shape[0])
  labels_2d = labels.reshape(labels.shape[0], -1)  # [N, m]
  norms_sq = np.sum(labels_2d**2, axis=0)  # [m]
  if np.any(norms_sq == 0):
    raise ValueError("y must be nonzero (energy is relative to ||y||^2). Received: y with a "
                     "zero column")
  energy_top_k = np.sum((eigvecs[:, :k].T @ labels_2d)**2, axis=0)  # [m]: ||Phi_k^T y||^2
  fractions = energy_top_k / norms_sq  # [m]
  return fractions.reshape(labels.shape[1:])  # [] or [m]
