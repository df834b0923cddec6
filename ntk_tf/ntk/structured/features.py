"""Block features of the structured NTK: one batched forward/backward pass per block, cached.

For a block x [N, ...], one forward pass records each planned layer's input A
and pre-activation output z (`keras_graph.Recorder`) and one backward pass of
sum_i f(x_i) gives the cotangents D_i = d f(x_i) / d z_i (examples are
independent in inference mode). The features are

  products    [(A [N, K], D [N, C])]         structured kernels with one position
  positional  [(X [N, P, K], D [N, P, C])]   structured kernels with P > 1 positions
  gradient    [N, p_G]                       per-example gradients of every other
              parameter (jacobian-form kernels, biases, BatchNorm gamma/beta,
              reference layers by `tape.jacobian`), concatenated in plan order

With a host engine (`on_host`), features are NumPy arrays cropped to the N
real rows, and each jacobian-form conv kernel's gradients are formed where
`geometry.gradient_on_host` says: by `geometry.conv_gradient` in the traced
function (TF; large per-example work) or by `geometry.host_conv_gradient`
(NumPy, after it). Otherwise they stay padded TF tensors and those gradients
contract gathered patches (`structured_blocks.positional_gradient`).
"""

import hashlib
from collections import OrderedDict
from typing import Any, Callable, Hashable, List, NamedTuple, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from ntk_tf import onednn
from ntk_tf import precision
from ntk_tf.ntk.structured import geometry
from ntk_tf.ntk.structured import keras_graph
from ntk_tf.ntk.structured import plan as plan_lib
from ntk_tf.types import Inputs
from ops import structured_blocks


class BlockFeatures(NamedTuple):
  """The features of one block of n examples (see the module docstring)."""
  n: int
  products: list
  positional: list
  gradient: object  # [N, p_G]


def _nbytes(t) -> int:
  return int(np.prod(t.shape)) * tf.as_dtype(t.dtype).size


def features_nbytes(features: BlockFeatures) -> int:
  """Returns the bytes held by `features` (padded rows included for TF tensors)."""
  pairs = features.products + features.positional
  return sum(_nbytes(t) for pair in pairs for t in pair) + _nbytes(features.gradient)


class FeatureCache:
  """An LRU cache of block features by key, bounded in bytes.

  Keys are block contents (`key`) here, row offsets in a device's cache
  (`distributed.local_runner.LocalRunner`); `nbytes(entry)` is an entry's size
  (default: `features_nbytes` of `BlockFeatures`).
  """

  def __init__(self, max_bytes: int, nbytes: Callable[[Any], int] = features_nbytes):
    self.max_bytes = int(max_bytes)
    self._nbytes = nbytes
    self._entries: "OrderedDict[Hashable, Any]" = OrderedDict()
    self.size_bytes = 0

  @staticmethod
  def key(x: np.ndarray) -> bytes:
    """A content key of a C-contiguous block (SHA-1: a cache key, not a signature)."""
    return hashlib.sha1(memoryview(x).cast("B")).digest() + str(x.shape).encode()

  def get(self, key: Hashable) -> Optional[Any]:
    if key not in self._entries:
      return None
    self._entries.move_to_end(key)
    return self._entries[key]

  def put(self, key: Hashable, entry: Any) -> None:
    size = self._nbytes(entry)
    if size > self.max_bytes:
      return
    self._entries[key] = entry
    self.size_bytes += size
    while self.size_bytes > self.max_bytes:
      _, old = self._entries.popitem(last=False)
      self.size_bytes -= self._nbytes(old)

  def clear(self) -> None:
    """Drops every cached entry."""
    self._entries.clear()
    self.size_bytes = 0

  def __len__(self) -> int:
    return len(self._entries)


class KeyedRows(np.ndarray):
  """A block of inputs whose content key is computed once per Gram job (`keyed_rows`).

  A Gram of B blocks asks for the features of each block about B times; SHA-1
  of a 256-row CIFAR-10 block (3 MiB, ~1.2 GB/s) costs about as much as its
  contraction. The job's driver (`gram.compute_block`) names each block by a
  slot (which input, first row) and keeps one memo dict per job, so each block
  is hashed once; a memo never outlives its job, so inputs changed between
  jobs are hashed afresh.
  """
  key_memo: Optional[dict] = None
  key_slot: Hashable = None


def keyed_rows(x: np.ndarray, memo: dict, slot: Hashable) -> KeyedRows:
  """Returns x viewed as `KeyedRows` with its job's `memo` and its `slot` in it."""
  rows = np.asarray(x).view(KeyedRows)
  rows.key_memo, rows.key_slot = memo, slot
  return rows


class FeatureExtractor:
  """Computes (and caches) the `BlockFeatures` of blocks for one `ModelPlan`.

  Blocks are zero-padded to the smallest block size seen so far that fits
  (buckets), so the traced function sees few shapes. A model with O logits
  has O cotangents per layer (one backward pass each). Folded (the default:
  one logit, or the "trace" output kernel) every cotangent holds the O
  logits' cotangents side by side and every per-example gradient the O
  gradients, so each feature Gram sums over the logits:
  (A_a . A_b)(sum_o D_a,o . D_b,o) = sum_o Theta_oo. With `separate_outputs`
  ("full", "diagonal") the terms keep an axis O (`_features`), for
  `engines.OutputContraction`.
  """

  def __init__(self, model_plan: plan_lib.ModelPlan, *, on_host: bool, allow_tf32: bool,
               cache_bytes: int, outputs: int = 1, separate_outputs: bool = False):
    self.model_plan = model_plan
    self.outputs = int(outputs)  # O: the model's logits
    # Keep the O axis of every term ("full"/"diagonal" output kernels), else fold it.
    self.separate_outputs = bool(separate_outputs)
    self.plans = model_plan.plans
    self.dtype = model_plan.dtype
    self.on_host = on_host
    self.allow_tf32 = allow_tf32
    known = {id(p.layer): p.kind for p in self.plans if p.kind != plan_lib.REFERENCE}
    # Channel padding speeds up TF's own CPU convs but slows oneDNN's, so it is used
    # only where oneDNN is off.
    self._recorder = keras_graph.Recorder(model_plan.graph, known,
                                          pad_channels=on_host and not onednn.enabled())
    self._reference_vars = [v for p in self.plans if p.kind == plan_lib.REFERENCE
                            for v in p.variables]
    # pfor differentiates grouped convs wrongly (`keras_graph.grouped_conv_layers`):
    # with any in the graph, reference layers use the exact while-loop Jacobian.
    self._reference_pfor = not keras_graph.grouped_conv_layers(model_plan.graph)
    # With a host engine (a CPU), jacobian-form conv kernels form their per-example
    # gradients in the traced function (`geometry.conv_gradient`), or with NumPy
    # after it (`host_plans`) where the per-example work is small
    # (`geometry.gradient_on_host`).
    jacobian_convs = ([p for p in self.plans
                       if p.kind == "conv2d" and p.kernel and p.choice == plan_lib.JACOBIAN]
                      if on_host else [])
    self.host_plans = [p for p in jacobian_convs
                       if geometry.gradient_on_host(p.layer, p.positions)]
    self._host_ids = {id(p) for p in self.host_plans}
    self._tf_gradient_ids = {id(p) for p in jacobian_convs} - self._host_ids
    self.traced_fn = tf.function(self._features)
    self.cache = FeatureCache(cache_bytes)
    self._buckets: List[int] = []

  def _features(self, x: tf.Tensor):
    """Returns (product terms, positional terms, per-example gradients, host terms).

    Every term is first formed per logit, with an axis O after the examples
    (`_cotangents`): products (A [N, K], D [N, O, C]), positional
    (X [N, P, K], D [N, O, P, C]), gradients [N, O, p_G']. Unless
    `separate_outputs`, they are then folded (`_fold`): the O logits side by
    side along channels, D [N, O C] and [N, P, O C], gradients [N, O p_G'],
    which for O = 1 is the one-logit layout. Host terms: (conv inputs
    [N, H, W, C_in], cotangents [N, O, P, C]) of the jacobian-form conv kernels
    whose gradients are formed on the host, in `host_plans` order; their
    columns join the gradient there.
    """
    needs_reference = bool(self._reference_vars)
    use_pfor = self._reference_pfor
    with tf.GradientTape(persistent=needs_reference or self.outputs > 1) as tape:
      tape.watch(x)
      outputs = plan_lib.check_logits(self._recorder.run(x))  # [N, O]
      totals = [tf.reduce_sum(outputs[:, a]) for a in range(self.outputs)]  # sum_i f_a(x_i)
    records = self._recorder.records
    planned = [p for p in self.plans if p.kind != plan_lib.REFERENCE]
    cotangents = self._cotangents(tape, totals, [records[p.name][1] for p in planned])
    terms = ([], [], [], [])  # products, positional, grads, host
    for plan, cot in zip(planned, cotangents):
      self._layer_features(plan, records[plan.name][0], cot, terms)
    products, positional, grads, host = terms
    n = tf.shape(x)[0]
    if needs_reference:
      try:
        jac = tape.jacobian(outputs, self._reference_vars, experimental_use_pfor=use_pfor)
      except (ValueError, NotImplementedError, TypeError) as err:
        if not use_pfor:
          raise
        logging.warning("pfor failed for the reference layers (%s); using a while loop.", err)
        jac = tape.jacobian(outputs, self._reference_vars, experimental_use_pfor=False)
      grads.extend(tf.reshape(j, [n, self.outputs, -1]) for j in jac)  # [N, O, p_v] each
    gradient = (tf.concat(grads, axis=2) if grads
                else tf.zeros([n, self.outputs, 0], x.dtype))  # [N, O, p_G']
    if not self.separate_outputs:
      products, positional, gradient = _fold(products, positional, gradient)
    return products, positional, gradient, host

  @staticmethod
  def _cotangents(tape, totals, zs) -> List[tf.Tensor]:
    """d (sum_i f_a(x_i)) / d z [N, O, ..., C] for each recorded z [N, ..., C], a = 0..O-1.

    One backward pass per logit; examples are independent in inference mode.
    """
    per_logit = [tape.gradient(total, zs, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                 for total in totals]
    return [tf.stack(list(cots), axis=1) for cots in zip(*per_logit)]  # [N, O, ..., C] each

  def _layer_features(self, plan, inputs, cot, terms) -> None:
    """Appends one planned layer's per-logit terms to `terms` (products, positional, grads, host)."""
    products, positional, grads, host = terms
    n, o = tf.shape(inputs)[0], self.outputs
    if plan.kind == "batch_norm":
      grads.extend(_batch_norm_grads(plan, inputs, cot, o))  # [N, O, C] each
      return
    cot = tf.reshape(cot, [n, o, plan.positions, plan.channels])  # [N, O, P, C]
    if id(plan) in self._host_ids or id(plan) in self._tf_gradient_ids:
      if id(plan) in self._host_ids:
        host.append((inputs, cot))
      else:
        grads.append(tf.stack([geometry.conv_gradient(plan.layer, inputs, cot[:, a],
                                                      *plan.patches)
                               for a in range(o)], axis=1))  # [N, O, K*C]
      if plan.bias:
        grads.append(tf.reduce_sum(cot, axis=2))  # [N, O, C]
      return
    if plan.kind == "conv2d":
      patches = geometry.conv_patches(plan.layer, inputs, *plan.patches)  # [N, P, K]
    else:
      patches = tf.reshape(inputs, [n, plan.positions, plan.patch_len])  # [N, P, K]
    bias_merged = False
    if plan.kernel:
      if plan.is_product:
        # The bias joins as +1 on the inputs Gram (the engines' product offsets).
        bias_merged = plan.bias
        products.append((tf.reshape(patches, [n, plan.patch_len]),  # [N, K]
                         tf.reshape(cot, [n, o, plan.channels])))  # [N, O, C]
      elif plan.is_positional:
        positional.append((patches, cot))  # [N, P, K], [N, O, P, C]
      else:
        grads.append(tf.stack([structured_blocks.positional_gradient(patches, cot[:, a])
                               for a in range(o)], axis=1))  # [N, O, K*C]
    if plan.bias and not bias_merged:
      grads.append(tf.reduce_sum(cot, axis=2))  # [N, O, C]

  def _host_gradient(self, plan, inputs: np.ndarray, cot: np.ndarray) -> np.ndarray:
    """A host conv's per-example kernel gradients from cot [N, O, P, C]: [N, O, K*C], or folded."""
    grads = np.stack([geometry.host_conv_gradient(plan.layer, inputs, cot[:, a])
                      for a in range(cot.shape[1])], axis=1)  # [N, O, K*C]
    return grads if self.separate_outputs else grads.reshape(grads.shape[0], -1)  # [N, O K*C]

  def _bucket(self, n: int) -> int:
    """The padded block size for n examples: the smallest bucket >= n, else n."""
    fits = [b for b in self._buckets if b >= n]
    if fits:
      return min(fits)
    self._buckets.append(n)
    return n

  def __call__(self, x: Inputs) -> BlockFeatures:
    """Returns the (cached) features of block x [N, ...]."""
    memo, slot = getattr(x, "key_memo", None), getattr(x, "key_slot", None)
    x = np.ascontiguousarray(np.asarray(x, dtype=self.dtype))
    if x.shape[1:] != self.model_plan.input_shape:
      raise ValueError(
          f"inputs must have shape [N, {', '.join(map(str, self.model_plan.input_shape))}]. "
          f"Received: shape={x.shape}")
    key = None if memo is None else memo.get((slot, x.dtype.str, x.shape))
    if key is None:
      key = FeatureCache.key(x)
      if memo is not None:
        memo[(slot, x.dtype.str, x.shape)] = key
    entry = self.cache.get(key)
    if entry is not None:
      return entry
    n = x.shape[0]
    padded = self._bucket(n)
    if padded > n:
      x = np.concatenate([x, np.zeros((padded - n,) + x.shape[1:], x.dtype)])
    with precision.tf32_matmuls(self.allow_tf32):
      products, positional, gradient, host = self.traced_fn(tf.constant(x))
    if self.on_host:
      products = [(l.numpy()[:n], r.numpy()[:n]) for l, r in products]
      positional = [(p.numpy()[:n], d.numpy()[:n]) for p, d in positional]
      pieces = [gradient.numpy()[:n]] + [
          self._host_gradient(plan, inputs.numpy()[:n], cot.numpy()[:n])
          for plan, (inputs, cot) in zip(self.host_plans, host)]
      gradient = np.concatenate(pieces, axis=-1) if len(pieces) > 1 else pieces[0]  # [N, (O,) p_G]
    entry = BlockFeatures(n, products, positional, gradient)
    self.cache.put(key, entry)
    return entry


def _fold(products, positional, gradient):
  """The per-logit terms with the O logits side by side along channels (`_features`).

  (A, D [N, O, C]) -> (A, D [N, O C]); (X, D [N, O, P, C]) -> (X, D [N, P, O C]);
  gradient [N, O, p_G'] -> [N, O p_G']. Each feature Gram then sums over the
  logits: (A_a . A_b)(sum_o D_a,o . D_b,o), the "trace" kernel (and, for O = 1,
  the one-logit one).
  """
  n = tf.shape(gradient)[0]
  width = lambda t: int(np.prod(t.shape[1:]))  # static: O C, O P C, O p_G'
  products = [(inputs, tf.reshape(cot, [n, width(cot)])) for inputs, cot in products]  # [N, O C]
  positional = [(patches, tf.reshape(tf.transpose(cot, [0, 2, 1, 3]),  # [N, P, O, C]
                                     [n, patches.shape[1], width(cot) // patches.shape[1]]))
                for patches, cot in positional]  # [N, P, O C]
  return products, positional, tf.reshape(gradient, [n, width(gradient)])  # [N, O p_G']


def _batch_norm_grads(plan, inputs, cot, outputs: int = 1):
  """Per-example gradients of BatchNorm's gamma [N, O, C] and beta [N, O, C] (inference mode).

  `cot` [N, O, ..., C] holds the O logits' cotangents (O = `outputs`).
  """
  layer = plan.layer
  n = tf.shape(inputs)[0]
  mean = tf.cast(layer.moving_mean, inputs.dtype)
  variance = tf.cast(layer.moving_variance, inputs.dtype)
  x_hat = (inputs - mean) * tf.math.rsqrt(variance + layer.epsilon)  # [N, ..., C]
  cot = tf.reshape(cot, [n, outputs, -1, plan.channels])  # [N, O, P, C]
  grads = []
  if plan.gamma:
    x_hat = tf.reshape(x_hat, [n, 1, -1, plan.channels])  # [N, 1, P, C]
    grads.append(tf.reduce_sum(x_hat * cot, axis=2))  # [N, O, C]
  if plan.beta:
    grads.append(tf.reduce_sum(cot, axis=2))  # [N, O, C]
  return grads
