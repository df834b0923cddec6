"""The matrix-free NTK passes with their data sharded over devices or workers.

    alpha(phi_c) = ||(1/N) sum_i phi_c(x_i) grad_theta f(x_i)||^2 = phi_c^T Theta phi_c / N^2
                 = ||(1/N) sum_s J_s^T Phi_s[:, c]||^2                         (Lemma 1)
    Theta v      = J (J^T v):   u = sum_s J_s^T v_s   (round 1),
                                (Theta v)_s = J_s u   (round 2, concatenated over s)

Shapes: x `[N, ...]`, labels Phi `[N, m]`, v `[N]`, V `[N, k]`; J = d f(x) / d theta
`[N, P]`; J_s, Phi_s, v_s the rows of shard s. Neither Theta `[N, N]` nor J is
ever formed (App. B: alignment "computed directly using a weighted average of
the Jacobian").

Sharding. x is cut into S contiguous shards of R rows, R a multiple of the
batch size B (`shard_rows`): shard s is rows [s R, (s+1) R), the last one
zero-padded (zero labels, zero v: an exact zero contribution). The runner is
started on x with block_size R (`runner.Runner.start`: a ClusterRunner keeps
x resident on every worker), and each shard is one closure
(`Runner.submit_rows`) on some device or worker, computing

    alignment   J_s^T Phi_s[:, chunk]   [m_chunk, P]  (`alignment.label_gradients_fn`:
                per batch of B rows m VJPs, or the per-example Jacobian and one
                GEMM (`alignment.choose_route`), batches summed in order)
    round 1     J_s^T v_s               [P]           (`ntk_vector_products.BatchProducts`)
    round 2     J_s u                   [R]

The coordinator sums the shard partials in shard order, in float64, so the
result depends only on S (not on which device or worker ran a shard, nor on
a worker lost mid-pass: its closure re-runs whole elsewhere and the partial
is recomputed from scratch). Why data-parallel shards rather than splitting
the m label columns: Lemma 1 is one sum over examples, every label column
needs every example's gradient, and a shard needs only its rows and the
model; each shard sends back one `[m_chunk, P]` partial (S m P numbers per
pass, independent of N), while its compute is N m / S VJPs. The label
columns are chunked as in `ntk_tf.alignment` (`label_chunks`: one pass over
the data per chunk, `memory_budget_bytes` per device or worker, so a
LocalRunner on D logical CPU devices holds D budgets in one host); the
coordinator holds the float64 sum and one partial. Theta v needs two rounds
because J_s u needs the whole u = J^T v: the coordinator is the barrier
between them, and ships u (P numbers) with each round-2 closure.

Faults (ClusterRunner): a shard closure whose worker dies is re-run by the
`ClusterCoordinator` on another worker, and one whose result is lost with its
worker is scheduled again (`ClusterRunner.result`); shards hold no state
between closures, so nothing else is redone.

Not byte-identical to one process: `ntk_tf.alignment` and `NtkOperator` sum
the ceil(N/B) batch partials in one left-to-right chain, here each shard sums
its own chain and the coordinator adds the S chain results, so the float
additions associate differently (S = 1 gives the single chain). Both are sums
of the same N terms in some order, so each is within gamma_N sum_i |J_i||v_i|
(gamma_N = N u / (1 - N u), u the unit round-off) of the exact sum; tests
bound the difference by that scale.

Paper: Lemma 1, App. B ("Alignment"); Sec. 3 (the Gram's spectrum by products).
"""

from typing import Callable, Iterator, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from ntk_tf.alignment import DEFAULT_MEMORY_BUDGET_BYTES
from ntk_tf.alignment import alphas_from_label_gradients
from ntk_tf.alignment import check_alignment_inputs
from ntk_tf.alignment import choose_route
from ntk_tf.alignment import label_chunks
from ntk_tf.alignment import label_gradients_fn
from ntk_tf import types
from ntk_tf import validation
from ntk_tf.distributed import runner as runner_lib
from ntk_tf.ntk import ntk_vector_products


def shard_rows(n: int, batch_size: int, num_shards: int) -> int:
  """Rows R per shard: R = ceil(ceil(N / B) / S) B, a whole number of batches.

  Shard s holds rows [s R, (s+1) R); ceil(N / R) <= S shards hold data.
  """
  n = validation.check_positive_int(n, "n")
  batch_size = validation.check_positive_int(batch_size, "batch_size")
  num_shards = validation.check_positive_int(num_shards, "num_shards")
  num_batches = -(-n // batch_size)  # ceil(N / B)
  return -(-num_batches // num_shards) * batch_size


def _padded(array: np.ndarray, rows: int) -> np.ndarray:
  """`array [N, ...]` zero-padded to `[rows, ...]`."""
  return np.pad(array, [(0, rows - array.shape[0])] + [(0, 0)] * (array.ndim - 1))


def _in_order(runner: runner_lib.Runner, jobs: Sequence[tuple],
              functions) -> Iterator[np.ndarray]:
  """Runs `runner.submit_rows(functions, i0, *args)` for each job (i0, *args), at most
  `runner.slots` in flight; yields the results in job order."""
  in_flight = []
  jobs = list(jobs)
  while jobs or in_flight:
    while jobs and len(in_flight) < runner.slots:
      in_flight.append(runner.submit_rows(functions, *jobs.pop(0)))
    yield runner.result(in_flight.pop(0))


class _ShardedData:
  """x `[N, ...]` split into shards of `rows` for a runner (see the module docstring)."""

  def __init__(self, runner: runner_lib.Runner, x: types.Inputs, batch_size: int,
               num_shards: Optional[int]):
    self.runner = runner
    self.batch_size = validation.check_positive_int(batch_size, "batch_size")
    self.x = validation.check_inputs(runner.model, x, "x")
    self.n = self.x.shape[0]
    num_shards = runner.places if num_shards is None else num_shards
    self.rows = shard_rows(self.n, self.batch_size, num_shards)
    self.starts = list(range(0, self.n, self.rows))  # shards that hold data
    self.padded_n = len(self.starts) * self.rows
    self._started = None  # the runner's inputs after our `start`

  def start(self) -> None:
    """Gives the runner this x, zero-padded to S R rows (again, if it ran other inputs since)."""
    if self._started is None or getattr(self.runner, "x", None) is not self._started:
      self.runner.start(_padded(self.x, self.padded_n), self.rows)
      self._started = self.runner.x

  def shards(self, values: np.ndarray) -> List[np.ndarray]:
    """`values [N, ...]` zero-padded and cut into the shards' `[R, ...]` pieces."""
    padded = _padded(np.asarray(values), self.padded_n)
    return [np.ascontiguousarray(padded[start:start + self.rows]) for start in self.starts]


def sharded_alignment(runner: runner_lib.Runner, x: types.Inputs, y: types.Array, *,
                      batch_size: int = 256,
                      memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
                      num_shards: Optional[int] = None, route: str = "auto") -> np.ndarray:
  """Returns alpha(y_c) = ||(1/N) sum_s J_s^T y_s[:, c]||^2, the shards of x on `runner`.

      alpha(y) = ||J^T y||^2 / N^2 = y^T Theta y / N^2,   J = d f(x) / d theta  [N, P]

  The same quantity as `ntk_tf.alignment(runner's model, x, y, dtype=runner.dtype)`
  (equal up to the summation order: see the module docstring), computed by
  S shard closures per label chunk, each returning J_s^T Y_s `[m_chunk, P]`,
  summed by the coordinator in shard order in float64.

  Args:
    runner: a `LocalRunner` (local devices) or `ClusterRunner` (workers); its
      model (one logit) and dtype are used. It is `start`ed on x.
    x: `[N, ...]` inputs.
    y: `[N]` labels or `[N, m]` label vectors (columns).
    batch_size: B, examples per vector-Jacobian product (> 0).
    memory_budget_bytes: bytes for the `[m_chunk, P]` arrays of one shard, on
      each device or worker (`alignment.label_chunks`).
    num_shards: S (default: `runner.places`, one shard per device or worker).
    route: how a batch's J_b^T Y_b is formed, "auto", "vjp" or "jacobian"
      (`alignment.choose_route`; the same rule as `ntk_tf.alignment`).

  Returns:
    float64 ndarray: 0-d for `y [N]`, `[m]` for `y [N, m]`.

  Paper: Lemma 1; App. B ("Alignment"), alpha(phi_j) of Sec. 4.2.
  """
  x, labels = check_alignment_inputs(runner.model, x, y)
  data = _ShardedData(runner, x, batch_size, num_shards)
  labels_2d = labels.reshape(data.n, -1)  # [N, m]
  num_params = validation.parameter_count(runner.model)
  chunks = label_chunks(labels_2d.shape[1], num_params, runner.dtype, memory_budget_bytes)
  route = choose_route(route, chunks[0].stop - chunks[0].start, data.batch_size, num_params,
                       runner.dtype, memory_budget_bytes)
  functions = runner.replicate(lambda model: label_gradients_fn(model, data.batch_size, route))
  data.start()
  alphas = []
  for chunk in chunks:
    label_shards = data.shards(labels_2d[:, chunk].astype(runner.dtype))  # S x [R, m_chunk]
    total = None  # [m_chunk, P] float64: sum over shards, in shard order
    for partial in _in_order(runner, zip(data.starts, label_shards), functions):
      if total is None:
        total = partial.astype(np.float64)
      else:
        total += partial
      del partial
    alphas.append(alphas_from_label_gradients(total, data.n))  # [m_chunk]
    del total
  return np.concatenate(alphas).reshape(labels.shape[1:])  # [] or [m]


def _flat(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
  return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)  # [P]


def _shard_transposed_product(batch_size: int, dtype: str) -> Callable[[keras.Model], Callable]:
  """make(model) -> f(x_s [R, ...], v_s [R]) = J_s^T v_s `[P]`, batches summed in order."""

  def make(model: keras.Model) -> Callable:
    products = ntk_vector_products.BatchProducts(model, dtype)
    num_params = validation.parameter_count(model)

    def transposed_product(x_rows, v_rows):
      total = tf.zeros([num_params], v_rows.dtype)  # [P]
      batch_shape = [batch_size] + list(x_rows.shape[1:])
      for start in tf.range(0, tf.shape(x_rows)[0], batch_size):
        x_b = tf.ensure_shape(x_rows[start:start + batch_size], batch_shape)  # [B, ...]
        v_b = tf.ensure_shape(v_rows[start:start + batch_size], [batch_size])  # [B]
        total += _flat(products.vjp_batch(x_b, v_b))  # [P]
      return total

    return transposed_product

  return make


def _shard_product(batch_size: int, dtype: str) -> Callable[[keras.Model], Callable]:
  """make(model) -> f(x_s [R, ...], u [P]) = J_s u `[R]`, one JVP per batch."""

  def make(model: keras.Model) -> Callable:
    products = ntk_vector_products.BatchProducts(model, dtype)
    shapes = [v.shape for v in products.variables]
    sizes = [int(np.prod(shape)) for shape in shapes]

    def product(x_rows, u_flat):
      tangents = [tf.reshape(part, shape)
                  for part, shape in zip(tf.split(u_flat, sizes), shapes)]  # like the variables
      num_batches = tf.shape(x_rows)[0] // batch_size
      batch_shape = [batch_size] + list(x_rows.shape[1:])
      outputs = tf.TensorArray(u_flat.dtype, size=num_batches)
      for b in tf.range(num_batches):
        x_b = tf.ensure_shape(x_rows[b * batch_size:(b + 1) * batch_size], batch_shape)
        outputs = outputs.write(b, products.jvp_batch(x_b, tangents))  # [B]
      return tf.reshape(outputs.stack(), [-1])  # [R]

    return product

  return make


class ShardedNtkOperator:
  """Theta = J J^T `[N, N]` of the runner's model on x, applied shard by shard.

      Theta V = J (J^T V):  U = sum_s J_s^T V_s  [P, k],  (Theta V)_s = J_s U  [R, k]

  Each column is two rounds of S closures (round 1 partials summed in shard
  order in float64, then cast to the runner's dtype; round 2 pieces
  concatenated); `matmat` submits all k columns of a round together. Equal to
  `ntk_tf.NtkOperator(model, x, dtype=runner.dtype)` up to the summation
  order (module docstring). Memory per closure: O(P) plus one batch of
  activations; K is never stored.

  Args:
    runner: a `LocalRunner` or `ClusterRunner` (its model and dtype); started
      on x now, and again before a product if it ran other inputs since.
    x: `[N, ...]` inputs.
    batch_size: B, examples per VJP / JVP (> 0).
    num_shards: S (default `runner.places`).
  """

  def __init__(self, runner: runner_lib.Runner, x: types.Inputs, *, batch_size: int = 256,
               num_shards: Optional[int] = None):
    validation.check_single_logit(runner.model)
    self.runner = runner
    self.dtype = np.dtype(runner.dtype)
    self._data = _ShardedData(runner, np.asarray(x, self.dtype), batch_size, num_shards)
    self.shape = (self._data.n, self._data.n)
    self._round_1 = runner.replicate(_shard_transposed_product(self._data.batch_size, runner.dtype))
    self._round_2 = runner.replicate(_shard_product(self._data.batch_size, runner.dtype))
    self._data.start()

  def matmat(self, matrix: types.Array) -> np.ndarray:
    """Returns Theta V `[N, k]` for V `[N, k]`."""
    matrix = np.asarray(matrix, self.dtype)
    if matrix.ndim != 2 or matrix.shape[0] != self.shape[0]:
      raise ValueError(f"V must have shape [{self.shape[0]}, k]. Received: shape={matrix.shape}")
    data, k = self._data, matrix.shape[1]
    data.start()
    column_shards = [data.shards(matrix[:, j]) for j in range(k)]  # k x S x [R]
    partials = _in_order(self.runner, [(start, piece) for pieces in column_shards
                                       for start, piece in zip(data.starts, pieces)],
                         self._round_1)
    tangents = []  # k x [P]: u_j = J^T V[:, j], shards summed in order in float64
    for _ in range(k):
      total = next(partials).astype(np.float64)
      for _ in data.starts[1:]:
        total += next(partials)
      tangents.append(total.astype(self.dtype))
    pieces = _in_order(self.runner, [(start, u) for u in tangents for start in data.starts],
                       self._round_2)
    columns = [np.concatenate([next(pieces) for _ in data.starts])[:data.n]
               for _ in range(k)]  # k x [N]
    return np.stack(columns, axis=1)  # [N, k]

  def matvec(self, v: types.Array) -> np.ndarray:
    """Returns Theta v `[N]` for v `[N]`."""
    v = np.asarray(v, self.dtype).reshape(-1)
    if v.shape[0] != self.shape[0]:
      raise ValueError(f"v must have shape [{self.shape[0]}]. Received: shape={v.shape}")
    return self.matmat(v[:, None])[:, 0]

  def as_linear_operator(self):
    """Returns a `scipy.sparse.linalg.LinearOperator` view (symmetric)."""
    from scipy.sparse import linalg  # pylint: disable=g-import-not-at-top
    return linalg.LinearOperator(self.shape, matvec=self.matvec, rmatvec=self.matvec,
                                 matmat=self.matmat, dtype=self.dtype)
