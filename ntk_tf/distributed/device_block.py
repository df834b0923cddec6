"""One Gram block as one `tf.function`, so it runs on any device: a GPU, a remote worker.

    Theta(x_a, x_b) = J(x_a) J(x_b)^T                                  [B, B]
    diagonal block: Theta(x_a, x_a), symmetrized (G + G^T) / 2

Shapes: `x_a [B, ...]`, `x_b [B, ...]` (the model's input shape, B = block
size; partial blocks are zero-padded to B by the caller and cropped after, as in
`ntk_tf.ntk.gram.compute_block`), result `[B, B]` in `accumulate_dtype`.

Unlike the `BlockFn`s of `ntk_tf.ntk` (Python objects that mix TF with host
NumPy and keep host caches), a `DeviceBlock`'s two functions are pure TF graphs:
every op, the jit-compiled contractions of `ops/` included, runs where the
function is called (`with tf.device(...)`, or on a parameter-server worker
through `ClusterCoordinator.schedule`). The model's variables are read where
they live (the host, a mirrored copy per device, or the parameter servers).

Implementations (`ntk_tf.NtkImplementation`):
  JACOBIAN    per-example Jacobians (`ntk_tf.jacobian.jacobian_fn`), then
              `ops.gram_block` (XLA): the same ops as `ntk_gram(...,
              implementation="jacobian", matmul_engine="xla")`.
  STRUCTURED  the structured-NTK features (`structured.features`, TF tensors,
              one batched forward/backward pass per example block) contracted
              by the XLA ops of `ops.structured_blocks`, summed in the order of
              `structured.engines.XlaContraction`: the same ops as
              `ntk_gram(..., implementation="structured", matmul_engine="xla")`.
Each function recomputes the features (Jacobians) of both example blocks: a
remote worker keeps no state between blocks, so it holds no feature cache;
this costs at most one extra forward/backward pass of B examples per block.
STRUCTURED also has the two steps apart, `features(x)` and
`contract(features_a, features_b)` / `contract_diagonal(features_a)`, the
same ops: a local device keeps its blocks' features (`local_runner.LocalRunner`).
`row(x_a, x_bs, diagonal=...)` computes several blocks of one block row in
one function, the features of x_a once, each block with its function's ops
(one cluster closure per row of blocks, `cluster_runner.ClusterRunner.submit_row`).

Weights as inputs (STRUCTURED without reference layers: `takes_weights`):
`stateless_block(x_a, x_b, weights)` and `stateless_diagonal(x_a, weights)`
are the same block functions, untraced, with every `model.weights[k]` read
from the tensor `weights[k]` (a `keras.StatelessScope`) instead of its
variable. The structured features differentiate with respect to layer
activations, not variables, so the ops and the numbers are the same; a
cluster worker then reads the weights it holds (`cluster_runner.ClusterRunner`)
instead of fetching every variable from the parameter servers for every block.

Paper: Sec. 2 (the empirical NTK), App. B (Grams computed block by block).
"""

from typing import Union

import keras
import tensorflow as tf

from ntk_tf import precision
from ntk_tf import types
from ntk_tf.jacobian import jacobian_fn
from ntk_tf.ntk import implementation as implementation_lib
from ntk_tf.ntk.implementation import MatmulEngine
from ntk_tf.ntk.implementation import NtkImplementation
from ntk_tf.ntk.structured import features as features_lib
from ntk_tf.ntk.structured import plan as plan_lib
from ops import gram_block
from ops import structured_blocks

# The implementations a DeviceBlock has (AUTO and NTK_VECTOR_PRODUCTS have no pure-TF block).
IMPLEMENTATIONS = (NtkImplementation.JACOBIAN, NtkImplementation.STRUCTURED)
IMPLEMENTATION_NAMES = tuple(member.value for member in IMPLEMENTATIONS)


def store_options(implementation: Union[str, NtkImplementation]) -> dict:
  """The `GramStore` options that name a DeviceBlock's numbers: the XLA matmul engine."""
  del implementation  # Both implementations contract with the XLA ops.
  return {"matmul_engine": MatmulEngine.XLA.value}


class DeviceBlock:
  """The two block functions of one model: `block(x_a, x_b)` and `diagonal(x_a)`.

  Both are `tf.function`s of padded `[B, ...]` inputs returning `[B, B]`
  (`accumulate_dtype`); call them under `tf.device(...)` or schedule them on a
  cluster. One DeviceBlock per device: each has its own traces (and, for
  STRUCTURED, its own layer recorder, which tracing writes to).

  Args:
    model: Keras model with one output logit; already in `dtype`
      (`precision.cast_model`) and with its variables where they should be
      read (e.g. created under a strategy's scope).
    implementation: "jacobian" or "structured" (`IMPLEMENTATION_NAMES`).
    dtype: "float32" or "float64", the dtype of the Jacobians / features.
    accumulate_dtype: dtype the block is summed in (default `dtype`).
    device: a device string the functions pin their ops to (None: the caller's).
  """

  takes_weights = False  # JACOBIAN differentiates with respect to the variables
  features = None  # STRUCTURED: features(x) [B, ...] -> the block's features (device tensors)

  def __init__(self, model: keras.Model, implementation: Union[str, NtkImplementation],
               dtype: types.DType = "float32", *, accumulate_dtype: types.DType = None,
               device: str = None):
    member = implementation_lib.resolve(implementation)
    if member not in IMPLEMENTATIONS:
      raise ValueError(f"implementation must be one of {list(IMPLEMENTATION_NAMES)} for a "
                       f"device block. Received: implementation={member.value!r}")
    self.implementation = member
    self.dtype = precision.canonical_dtype(dtype)
    self.accumulate_dtype = precision.canonical_dtype(accumulate_dtype or self.dtype)
    if any(v.dtype != self.dtype for v in model.weights):
      raise ValueError(f"The model's weights must be {self.dtype} (use precision.cast_model "
                       f"first). Received: weight dtypes {sorted({v.dtype for v in model.weights})}")
    self.model = model
    self.device = device
    if member == NtkImplementation.JACOBIAN:
      self._jacobian = jacobian_fn(model)
      pair, single = self._jacobian_pair, self._jacobian_single
    else:
      model_plan = plan_lib.ModelPlan(model)
      self._offsets = [float(p.bias) for p in model_plan.plans if p.is_product]
      self._features = features_lib.FeatureExtractor(model_plan, on_host=False,
                                                     allow_tf32=False, cache_bytes=0).traced_fn
      # Reference layers are differentiated with respect to their variables.
      self.takes_weights = all(p.kind != plan_lib.REFERENCE for p in model_plan.plans)
      pair, single = self._structured_pair, self._structured_single
      # The same computation in two steps, for a cache of features per device:
      # block(x_a, x_b) == contract(features(x_a), features(x_b)).
      self.features = tf.function(self._placed(self._features))
      self.contract = tf.function(self._placed(self._contract))
      self.contract_diagonal = tf.function(
          self._placed(lambda features_a: _symmetrized(self._contract(features_a, features_a))))
    self.block = tf.function(self._placed(pair))
    self.diagonal = tf.function(self._placed(single))

  def _stateless(self, fn, weights, *xs, **kwargs) -> tf.Tensor:
    if not self.takes_weights:
      why = ("its model has layers differentiated with respect to their variables"
             if self.implementation == NtkImplementation.STRUCTURED
             else "it differentiates with respect to the variables")
      raise ValueError(f"This {self.implementation.value!r} DeviceBlock takes no weights: {why}.")
    if len(weights) != len(self.model.weights):
      raise ValueError(f"weights must hold one tensor per model weight "
                       f"({len(self.model.weights)}). Received: {len(weights)} tensors")
    features = self._features.python_function  # inlined: traced under the scope below
    with keras.StatelessScope(state_mapping=list(zip(self.model.weights, weights))):
      return self._placed(lambda *args: fn(*args, features=features, **kwargs))(*xs)

  def row(self, x_a: tf.Tensor, x_bs: tf.Tensor, *, diagonal: bool, weights=None) -> tf.Tensor:
    """Several blocks of one block row, the features (Jacobian) of x_a computed once:

        [diagonal(x_a) if diagonal] ++ [block(x_a, x_bs[k]) for k < K']   [B, K * B]

    concatenated along columns (x_bs `[K', B, ...]`, K = diagonal + K'), each
    `[B, B]` part with the same ops, hence the same bytes, as the block
    function it names. The x_bs blocks run one at a time in a `tf.while_loop`,
    so K' may vary without a new trace. Untraced: call it in a `tf.function`.
    With `weights` (`takes_weights`), `model.weights` are read from those
    tensors as in `stateless_block`. A cluster closure then carries K blocks:
    the coordinator's work per closure (scheduling, fetching) is paid once for
    them (`cluster_runner.ClusterRunner.submit_row`).
    """
    if weights is not None:
      return self._stateless(self._row, weights, x_a, x_bs, diagonal=diagonal)
    return self._placed(lambda a, bs: self._row(a, bs, diagonal=diagonal))(x_a, x_bs)

  def _row(self, x_a: tf.Tensor, x_bs: tf.Tensor, *, diagonal: bool, features=None) -> tf.Tensor:
    if self.implementation == NtkImplementation.JACOBIAN:
      featurize, contract = self._jac, gram_block.gram_block
    else:
      featurize, contract = features or self._features, self._contract
    features_a = featurize(x_a)
    rows = tf.shape(x_a)[0]
    blocks = tf.map_fn(lambda x_b: contract(features_a, featurize(x_b)), x_bs,
                       fn_output_signature=self.accumulate_dtype,
                       parallel_iterations=1)  # [K', B, B]
    parts = [tf.reshape(tf.transpose(blocks, [1, 0, 2]), [rows, -1])]  # [B, K' * B]
    if diagonal:
      parts.insert(0, _symmetrized(contract(features_a, features_a)))  # [B, B]
    return tf.concat(parts, axis=1)  # [B, K * B]

  def stateless_block(self, x_a: tf.Tensor, x_b: tf.Tensor, weights) -> tf.Tensor:
    """`block(x_a, x_b)` with `model.weights` read from `weights`; untraced (call it in a
    tf.function)."""
    return self._stateless(self._structured_pair, weights, x_a, x_b)  # [B, B]

  def stateless_diagonal(self, x_a: tf.Tensor, weights) -> tf.Tensor:
    """`diagonal(x_a)` with `model.weights` read from `weights`; untraced (call it in a
    tf.function)."""
    return self._stateless(self._structured_single, weights, x_a)  # [B, B]

  def _placed(self, fn):
    """`fn` with its ops on `self.device` (when set)."""
    if self.device is None:
      return fn

    def placed(*args):
      with tf.device(self.device):
        return fn(*args)

    return placed

  # JACOBIAN: J_a J_b^T.
  def _jac(self, x: tf.Tensor) -> tf.Tensor:
    jac = self._jacobian(x)  # [B, P]
    return tf.cast(jac, self.accumulate_dtype)

  def _jacobian_pair(self, x_a: tf.Tensor, x_b: tf.Tensor) -> tf.Tensor:
    return gram_block.gram_block(self._jac(x_a), self._jac(x_b))  # [B, B]

  def _jacobian_single(self, x_a: tf.Tensor) -> tf.Tensor:
    jac_a = self._jac(x_a)  # [B, P]
    return _symmetrized(gram_block.gram_block(jac_a, jac_a))  # [B, B]

  # STRUCTURED: sum_l Theta_l, in the order of `engines.XlaContraction`.
  def _contract(self, features_a, features_b) -> tf.Tensor:
    products_a, positional_a, grad_a = features_a[:3]
    products_b, positional_b, grad_b = features_b[:3]
    acc = self.accumulate_dtype
    theta = tf.zeros([tf.shape(grad_a)[0], tf.shape(grad_b)[0]], acc)  # [B, B]
    for (left_a, right_a), (left_b, right_b), offset in zip(products_a, products_b,
                                                            self._offsets):
      theta += tf.cast(structured_blocks.gram_product(left_a, left_b, right_a, right_b, offset),
                       acc)  # [B, B]
    if grad_a.shape[1]:
      theta += tf.cast(structured_blocks.gradient_gram(grad_a, grad_b), acc)  # [B, B]
    for (patches_a, cot_a), (patches_b, cot_b) in zip(positional_a, positional_b):
      theta += tf.cast(structured_blocks.positional_gram_product(patches_a, cot_a, patches_b,
                                                                 cot_b), acc)  # [B, B]
    return theta

  def _structured_pair(self, x_a: tf.Tensor, x_b: tf.Tensor, features=None) -> tf.Tensor:
    features = features or self._features
    return self._contract(features(x_a), features(x_b))  # [B, B]

  def _structured_single(self, x_a: tf.Tensor, features=None) -> tf.Tensor:
    features_a = (features or self._features)(x_a)
    return _symmetrized(self._contract(features_a, features_a))  # [B, B]


def _symmetrized(theta: tf.Tensor) -> tf.Tensor:
  """(G + G^T) / 2 `[B, B]`: device matmuls need not give an exactly symmetric block."""
  return 0.5 * (theta + tf.transpose(theta))
