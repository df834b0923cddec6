"""Kernel-target alignment of a network and energy concentration of a target.

    alpha(y) = || (1/N) sum_i y_i grad_theta f(x_i) ||^2 = y^T Theta y / N^2    (Lemma 1)
    E_k(y)   = || Phi_k^T y ||^2 / || y ||^2                                   (Sec. 4.2)

Shapes: inputs `[N, ...]`, labels `[N]` or `[N, m]` (m label vectors at once),
eigenvectors `[N, K]` (orthonormal columns). Both functions return an ndarray:
0-d for labels `[N]`, `[m]` for `[N, m]` (`float(result)` for a Python float).

`alignment` never forms Theta or the `[N, P]` Jacobian (App. B: "computed
directly using a weighted average of the Jacobian"): for each batch it adds
J_b^T y_b[:, c] to v_c, then alpha_c = ||v_c / N||^2, by one of two routes
(`ROUTES`):

  "vjp"       m vector-Jacobian products, one backward pass of the whole batch
              per label column (sharing one forward pass): ~m batched backward passes;
  "jacobian"  the batch's per-example Jacobian J_b `[B, P]` (`jacobian.jacobian_fn`,
              B backward passes of one example) and one GEMM Y_b^T J_b `[m, P]`.

"auto" takes "jacobian" when a chunk has at least `JACOBIAN_MIN_LABELS`
columns and J_b fits in the memory budget, else "vjp": the vjp route costs
one backward pass of the batch per column, the jacobian route B backward
passes of one example and a GEMM whose cost grows with m, so past some m the
jacobian route is the cheaper (`JACOBIAN_MIN_LABELS` is near the break-even
measured on LeNet, benchmarks/speed_notes.md). The routes agree to float32
rounding, up to ReLU units whose pre-activation is within rounding of 0
(their derivative flips between two float32 evaluations). The m label
columns are taken in chunks of m_chunk columns, one
pass over the data per chunk, so that the [m_chunk, P] arrays live at once
fit in `memory_budget_bytes` (`label_chunks`); each column's arithmetic is the
same whatever the chunking, so results are bit-identical across budgets
(for one route).
Memory: that budget plus one batch of activations (batch_size examples).

One pass (`label_gradients_fn`: J(x)^T y `[m, P]` over any rows x, batches
summed in order) is a pure-TF function: `alignment` runs it on all of x,
`ntk_tf.distributed.sharded_passes` on one shard of x per device or worker.
"""

import time
from typing import Callable, List, Tuple

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from ntk_tf import jacobian as jacobian_lib
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


# How a batch's J_b^T Y_b is formed (module docstring).
ROUTES = ("auto", "vjp", "jacobian")
# "auto" takes the jacobian route from this many label columns per chunk (module docstring).
JACOBIAN_MIN_LABELS = 64

# Default budget for the [m_chunk, P] arrays of `alignment`: 2 GiB.
DEFAULT_MEMORY_BUDGET_BYTES = 2 * 1024**3
# [m_chunk, P] arrays live at once while a chunk is accumulated: the running
# sum, the batch's VJPs, and tape.jacobian's stacked per-column gradients and
# their concatenation. (Turning the sum into float64 at the end of a chunk
# needs the sum plus one float64 copy, 12 or 16 bytes per entry, within 4x.)
_LIVE_ARRAYS = 4
# Rows of x per call of the pass (rounded down to whole batches), and seconds between the
# progress lines of a long pass.
_SLAB_ROWS = 8192
_LOG_EVERY_S = 30.0


def label_chunks(num_labels: int, num_params: int, dtype: types.DType,
                 memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES) -> List[slice]:
  """Returns the column chunks of `alignment`: slices of the m label columns, in order.

      m_chunk = floor(memory_budget_bytes / (4 * P * bytes(dtype)))

  so the 4 `[m_chunk, P]` arrays live while a chunk is accumulated fit in the
  budget; every chunk but the last has m_chunk columns.

  Args:
    num_labels: m, the label columns (> 0).
    num_params: P, the model's trainable scalars (> 0).
    dtype: "float32" or "float64", the dtype of the gradients.
    memory_budget_bytes: the budget (> 0); must hold one column.
  Returns:
    `[slice(0, m_chunk), slice(m_chunk, 2 m_chunk), ...]` covering range(m).
  """
  num_labels = validation.check_positive_int(num_labels, "num_labels")
  num_params = validation.check_positive_int(num_params, "num_params")
  budget = validation.check_positive_int(memory_budget_bytes, "memory_budget_bytes")
  bytes_per_column = _LIVE_ARRAYS * num_params * np.dtype(precision.canonical_dtype(dtype)).itemsize
  if budget < bytes_per_column:
    raise ValueError(
        f"memory_budget_bytes must hold one label column's {_LIVE_ARRAYS} [1, P] arrays, "
        f"{bytes_per_column} bytes for P={num_params} in {precision.canonical_dtype(dtype)}. "
        f"Received: memory_budget_bytes={memory_budget_bytes}")
  m_chunk = min(num_labels, budget // bytes_per_column)
  return [slice(start, min(start + m_chunk, num_labels)) for start in range(0, num_labels, m_chunk)]


def alignment(model: keras.Model, x: types.Inputs, y: types.Array, *, batch_size: int = 256,
              dtype: types.DType = "float32",
              memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
              route: str = "auto") -> np.ndarray:
  """Returns alpha(y) = ||(1/N) sum_i y_i grad_theta f(x_i)||^2 for each label vector.

      alpha(y) = ||J^T y||^2 / N^2 = y^T Theta y / N^2,   J = d f(x) / d theta  [N, P]

  BatchNorm and dropout run in inference mode, as for `ntk_gram`. The m
  columns are processed `label_chunks` at a time, one pass over x per chunk,
  so memory stays within `memory_budget_bytes` plus one batch of activations
  for any m (e.g. m = 1,000 eigenfunctions of ResNet18, P ~ 11M: 2 GiB holds
  12 float32 columns, 84 passes). Each column's result does not depend on the
  chunking (bit-identical across budgets).

  Args:
    model: Keras model with one output logit.
    x: `[N, ...]` inputs.
    y: `[N]` labels or `[N, m]` label vectors (columns).
    batch_size: examples per vector-Jacobian product (> 0).
    dtype: "float32" or "float64" (float64 uses a float64 copy of the model).
    memory_budget_bytes: bytes for the `[m_chunk, P]` gradient arrays
      (default 2 GiB); must hold one column (`label_chunks`).
    route: "auto", "vjp" or "jacobian" (module docstring).

  Returns:
    float64 ndarray: 0-d for `y [N]`, `[m]` for `y [N, m]`. (Before this
    release `y [N]` gave a Python float; a 0-d array converts with `float()`.)

  Paper: Lemma 1 (alpha(f) = ||E_x[f(x) grad_theta f(x)]||^2); App. B
  ("Alignment"), used for alpha(phi_j) in Sec. 4.2.
  """
  dtype = precision.canonical_dtype(dtype)
  batch_size = validation.check_positive_int(batch_size, "batch_size")
  x, labels = check_alignment_inputs(model, x, y)
  n = x.shape[0]
  labels_2d = labels.reshape(n, -1)  # [N, m]
  work_model = precision.model_for_dtype(model, dtype)
  num_params = validation.parameter_count(work_model)
  chunks = label_chunks(labels_2d.shape[1], num_params, dtype, memory_budget_bytes)
  route = choose_route(route, chunks[0].stop - chunks[0].start, batch_size, num_params, dtype,
                       memory_budget_bytes)
  gradients = tf.function(label_gradients_fn(work_model, batch_size, route))
  # Pad to a whole number of batches with zero labels (zero contribution), so
  # every batch has one shape and the VJP is traced once per chunk width.
  padded = -(-n // batch_size) * batch_size  # ceil(N / B) * B
  x = tf.constant(np.pad(x.astype(dtype), [(0, padded - n)] + [(0, 0)] * (x.ndim - 1)))  # [N', ...]
  labels_2d = np.pad(labels_2d, [(0, padded - n), (0, 0)])  # [N', m]
  slab = max(1, _SLAB_ROWS // batch_size) * batch_size  # rows per call (progress)
  alphas = np.concatenate([  # [m]
      _chunk_alignment(gradients, x, labels_2d[:, chunk], n, tf.as_dtype(dtype), slab,
                       f" (labels {chunk.start + 1}-{chunk.stop} of {labels_2d.shape[1]})"
                       if len(chunks) > 1 else "")
      for chunk in chunks])
  return alphas.reshape(labels.shape[1:])  # [] or [m]


def choose_route(route: str, chunk_columns: int, batch_size: int, num_params: int,
                 dtype: types.DType, memory_budget_bytes: int) -> str:
  """"vjp" or "jacobian" for `route` ("auto": the module docstring's rule).

  "auto" is "jacobian" when a chunk has at least `JACOBIAN_MIN_LABELS` columns and
  the batch's Jacobian `[batch_size, P]` fits in `memory_budget_bytes`.
  """
  route = validation.check_choice(route, "route", ROUTES)
  if route != "auto":
    return route
  jacobian_bytes = batch_size * num_params * np.dtype(precision.canonical_dtype(dtype)).itemsize
  wide = chunk_columns >= JACOBIAN_MIN_LABELS
  return "jacobian" if wide and jacobian_bytes <= memory_budget_bytes else "vjp"


def check_alignment_inputs(model: keras.Model, x: types.Inputs,
                           y: types.Array) -> Tuple[np.ndarray, np.ndarray]:
  """Checks `model` (one logit, finite weights), `x [N, ...]` and `y [N]` / `[N, m]`.

  Returns:
    (x as an ndarray, y as a float64 ndarray). Raises ValueError naming the bad value.
  """
  validation.check_single_logit(model)
  validation.check_finite_weights(model)
  x = validation.check_inputs(model, x, "x")
  return x, _check_labels(y, x.shape[0])


def label_gradients_fn(model: keras.Model, batch_size: int, route: str = "vjp"
                       ) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
  """Returns g(x [R, ...], y [R, m]) = J(x)^T y as `[m, P]`, batches summed in order.

      g(x, y) = sum_b J_b^T y_b,   b = rows [b B, (b+1) B) of x,  R a multiple of B

  Row c of the result is J(x)^T y[:, c] = sum_i y_ic grad_theta f(x_i) (Lemma 1,
  before the 1/N and the squared norm), flattened over the trainable variables
  in order (P = their total size). With route "vjp" each batch is one forward
  pass and m backward passes (`tape.jacobian` of the m projections
  y_b[:, c]^T f(x_b)); with "jacobian" it is the batch's per-example Jacobian
  J_b `[B, P]` and Y_b^T J_b (module docstring). Batches are summed in order
  in the model's dtype, onto `initial` [m, P] when given (consecutive slabs of rows,
  each call continuing the last one's sum, give the bits of one call). The batch loop is a
  `tf.range` loop, so g runs eagerly or (wrapped in `tf.function`) as one
  graph anywhere: `alignment` calls it on all of x, `sharded_passes` on one
  shard of x per device or worker.

  Args:
    model: a one-logit Keras model in the dtype of the gradients (variables
      wherever they live: host, mirrored, parameter servers).
    batch_size: B, examples per VJP batch (> 0).
    route: "vjp" or "jacobian".
  """
  batch_size = validation.check_positive_int(batch_size, "batch_size")
  route = validation.check_choice(route, "route", ROUTES[1:])
  variables = model.trainable_variables
  num_params = validation.parameter_count(model)
  block_jacobian = jacobian_lib.jacobian_fn(model) if route == "jacobian" else None

  @tf.function(reduce_retracing=True)
  def batch_vjps(x_b, y_b):  # [B, ...], [B, m] -> [m, P]: rows J_b^T y_b[:, c]
    if block_jacobian is not None:
      return tf.matmul(y_b, block_jacobian(x_b), transpose_a=True)  # Y_b^T J_b
    with tf.GradientTape() as tape:
      logits = tf.reshape(model(x_b, training=False), [-1])  # [B]
      projected = tf.linalg.matvec(y_b, logits, transpose_a=True)  # [m]
    grads = tape.jacobian(projected, variables, experimental_use_pfor=False,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)  # m VJPs
    return tf.concat([tf.reshape(g, [tf.shape(y_b)[1], -1]) for g in grads], axis=1)  # [m, P]

  def label_gradients(x, labels, initial=None):
    batch_shape = [batch_size] + list(x.shape[1:])
    labels = tf.cast(labels, variables[0].dtype)  # [R, m]
    total = (tf.zeros([labels.shape[1], num_params], labels.dtype) if initial is None
             else tf.cast(initial, labels.dtype))  # [m, P]
    for start in tf.range(0, tf.shape(x)[0], batch_size):
      x_b = tf.ensure_shape(x[start:start + batch_size], batch_shape)  # [B, ...]
      y_b = tf.ensure_shape(labels[start:start + batch_size], [batch_size, labels.shape[1]])
      total += batch_vjps(x_b, y_b)  # [m, P]
    return total

  return label_gradients


def alphas_from_label_gradients(label_gradients: np.ndarray, n: int) -> np.ndarray:
  """alpha_c = ||(1/N) g_c||^2 for the rows g_c = J^T y[:, c] of `[m, P]`: `[m]` float64.

  Overwrites `label_gradients` when it is a writable float64 ndarray (else works on a copy).
  """
  mean_gradients = np.asarray(label_gradients, dtype=np.float64)  # [m, P]
  if not mean_gradients.flags.writeable:
    mean_gradients = mean_gradients.copy()
  mean_gradients /= n  # (1/N) J^T y
  np.square(mean_gradients, out=mean_gradients)
  return np.sum(mean_gradients, axis=1)  # [m]


def _chunk_alignment(gradients, x: tf.Tensor, labels_chunk: np.ndarray, n: int,
                     tf_dtype: tf.DType, slab: int, what: str = "") -> np.ndarray:
  """One pass over the padded `x [N', ...]` for `labels_chunk [N', m_chunk]`: alphas `[m_chunk]`.

  The pass runs in slabs of `slab` rows (a multiple of the batch size), each continuing
  the last one's sum (`label_gradients_fn`'s `initial`: the same bits as one call), so
  a long pass logs its progress every `_LOG_EVERY_S` seconds.
  """
  rows = int(x.shape[0])
  labels = tf.constant(labels_chunk, dtype=tf_dtype)  # [N', m_chunk]
  total, start_time = None, time.monotonic()
  last_log = start_time
  for start in range(0, rows, slab):
    stop = min(rows, start + slab)
    total = gradients(x[start:stop], labels[start:stop], total)  # [m_chunk, P]
    now = time.monotonic()
    if now - last_log >= _LOG_EVERY_S and stop < rows:
      logging.info("alignment%s: %d of %d samples, %.0f s, ETA %.0f s", what, stop, n,
                   now - start_time, (now - start_time) / stop * (rows - stop))
      last_log = now
  return alphas_from_label_gradients(total.numpy(), n)


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
