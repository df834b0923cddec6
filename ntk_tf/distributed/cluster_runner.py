"""Gram blocks and row passes as closures on the workers of a parameter-server cluster.

  ClusterRunner  a `tf.distribute.experimental.ParameterServerStrategy` and its
                 `tf.distribute.coordinator.ClusterCoordinator` (`ntk_tf.distributed.cluster`):
                 blocks are closures scheduled on free workers; the model's
                 variables live on the parameter servers. Inputs up to
                 `RESIDENT_MAX_BYTES` are sent once to every worker (a
                 per-worker dataset) and closures take only row offsets;
                 larger inputs travel with each closure (two [B, ...] blocks).
                 With resident inputs, one closure computes up to
                 `row_blocks` blocks of one block row (`submit_row`,
                 `DeviceBlock.row`): the coordinator's own work per closure
                 (scheduling, the remote call, fetching) is paid once for
                 them, and the worker computes x[i0:i0+B]'s features once.
                 A start with the data key of the last one keeps the
                 inputs resident (a second Gram of the same inputs).
                 With resident inputs, a block that takes its weights as
                 tensors (`DeviceBlock.takes_weights`: structured, no
                 reference layers) gets them with the inputs, once per
                 worker; otherwise every block reads the variables from the
                 parameter servers (ResNet18: 45 MB per block, float32).

The protocol it implements, and the bytes it guarantees, are `runner.Runner`'s.
"""

from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from ntk_tf import precision
from ntk_tf import types
from ntk_tf import validation
from ntk_tf.distributed import device_block
from ntk_tf.distributed import runner as runner_lib
from ntk_tf.ntk.implementation import NtkImplementation

# Inputs kept on every worker when they are at most this large (a graph constant:
# protocol buffers cap at 2 GiB); larger inputs are sent with each block.
RESIDENT_MAX_BYTES = 1 << 30
# Blocks of one block row per cluster closure (`ClusterRunner.row_blocks`; chosen by
# benchmarks.distributed_scaling, see README "Measured: 2 workers vs 1 worker").
ROW_BLOCKS = 8
# Times `ClusterRunner.result` tries a block whose worker was lost after computing it.
FETCH_ATTEMPTS = 5


def _resident_functions(block: device_block.DeviceBlock, rows_shape) -> Tuple[Callable, ...]:
  """(diagonal(iterator, i0), pair(iterator, i0, j0), {diagonal: row(iterator, i0, j0s)}):
  `block`'s functions on rows x[i0:i0+B] (`rows_shape` [B, ...]) of the resident
  x [N_pad, ...] the iterator yields, with the resident weights when the block
  takes them. `row[d](iterator, i0, j0s, count)` is `block.row` on x[i0:i0+B]
  and x[j0:j0+B] for the first `count` j0 in j0s (with the diagonal block first
  when d); j0s has a fixed length, so each is traced once."""

  def sliced(x_rows, i0):  # x [N_pad, ...] -> x[i0:i0+B] [B, ...] (static shape).
    return tf.ensure_shape(tf.slice(x_rows, [i0] + [0] * (len(rows_shape) - 1), rows_shape),
                           rows_shape)

  @tf.function
  def resident_diagonal(iterator, i0):
    x_all, weights = next(iterator)
    if block.takes_weights:
      return block.stateless_diagonal(sliced(x_all, i0), weights)  # [B, B]
    return block.diagonal(sliced(x_all, i0))  # [B, B]

  @tf.function
  def resident_block(iterator, i0, j0):
    x_all, weights = next(iterator)
    if block.takes_weights:
      return block.stateless_block(sliced(x_all, i0), sliced(x_all, j0), weights)  # [B, B]
    return block.block(sliced(x_all, i0), sliced(x_all, j0))  # [B, B]

  def resident_row(diagonal):
    @tf.function
    def row(iterator, i0, j0s, count):  # j0s [row_blocks] int32, the first K' = count used
      x_all, weights = next(iterator)
      blocks = tf.reshape(x_all, [-1] + list(rows_shape))  # [N_pad / B, B, ...]
      x_bs = tf.gather(blocks, j0s[:count] // rows_shape[0])  # [K', B, ...]
      return block.row(sliced(x_all, i0), x_bs, diagonal=diagonal,
                       weights=weights if block.takes_weights else None)
    return row

  return resident_diagonal, resident_block, {True: resident_row(True), False: resident_row(False)}


class ClusterRunner(runner_lib.Runner):
  """Blocks as closures scheduled by a `ClusterCoordinator` on free workers (a row of
  up to `row_blocks` blocks per closure with resident inputs, else one block).

  The coordinator re-runs a closure on another worker when its worker fails
  (`tf.distribute.coordinator.ClusterCoordinator`), so a lost worker costs its
  blocks in flight, not the job.

  Args:
    model: as for `LocalRunner`; copied onto the parameter servers.
    implementation, dtype: as for `LocalRunner`.
    strategy: a `tf.distribute.experimental.ParameterServerStrategy`.
    num_workers: its number of workers (closures in flight: 2 per worker + 2).
    row_blocks: blocks of one block row per closure (`submit_row`) when the
      inputs are resident: the coordinator's own work per closure (scheduling,
      the remote call, fetching the result) is paid once for them, and the
      worker computes the row block's features once (`DeviceBlock.row`).
  """

  def __init__(self, model: keras.Model, implementation: Union[str, NtkImplementation],
               dtype: types.DType, strategy: tf.distribute.Strategy, num_workers: int,
               row_blocks: int = ROW_BLOCKS):
    self.row_blocks = validation.check_positive_int(row_blocks, "row_blocks")
    self.strategy = strategy
    self.coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    placed = runner_lib.place_model(precision.cast_model(model, dtype), strategy)
    self.block = device_block.DeviceBlock(placed, implementation, dtype)
    self.model = placed  # in `dtype`, its variables on the parameter servers
    self.dtype = self.block.dtype
    self.num_workers = int(num_workers)
    self.slots = 2 * self.num_workers + 2
    self.places = self.num_workers
    self._resident_key = None  # (x shape, B) the resident block functions were traced for
    self._iterator = None  # the resident inputs' (and weights') iterator

  def start(self, x: np.ndarray, block_size: int, key: Optional[str] = None) -> None:
    """Sends `x` (padded; with the weights if the block takes them) to every worker
    once, if they are at most RESIDENT_MAX_BYTES.

    The resident block functions are traced once per (N_pad, B): a second
    Gram of the same shapes (a test kernel, a rerun) reuses their traces. A
    start with the `key` and block size of the last one, and the same weights,
    keeps the inputs already resident instead of sending x to every worker again.
    """
    super().start(x, block_size, key)
    if self._same_inputs and self._iterator is not None:
      return
    self._iterator = None
    weights = []
    if self.block.takes_weights:  # read by the base class' start when it had a key
      weights = (self.model.get_weights() if self._start_weights is None
                 else self._start_weights)
    if self.x.nbytes + sum(w.nbytes for w in weights) > RESIDENT_MAX_BYTES:
      return
    x_all = tf.constant(np.ascontiguousarray(self.x, dtype=self.block.dtype))  # [N_pad, ...]
    # The weights travel with x when the block takes them: read once per worker, not
    # once per block from the parameter servers.
    weights = tuple(tf.constant(w) for w in weights)
    self._iterator = iter(self.coordinator.create_per_worker_dataset(
        lambda: tf.data.Dataset.from_tensors((x_all, weights)).repeat()))
    traced_for = (self.x.shape, block_size)
    if self._resident_key != traced_for:
      self._resident = _resident_functions(self.block, [block_size] + list(self.x.shape[1:]))
      self._resident_key = traced_for

  def submit(self, i0: int, j0: int) -> Any:
    return self._submitted(lambda: self._schedule(i0, j0))

  def _submitted(self, schedule: Callable[[], Any]) -> Any:
    """A handle: the closure scheduled now, and how to schedule it again."""
    return (schedule, schedule())

  def replicate(self, make: Callable[[keras.Model], Callable]) -> Any:
    """One function f(x_rows, *args) for every worker, and its resident twin
    f'(iterator, i0, rows, *args) = f(x_all[i0:i0+rows], *args) on the worker's own x."""
    fn = make(self.model)

    def resident(iterator, i0, rows, *args):
      x_all, _ = next(iterator)  # [N_pad, ...] (row passes read the variables)
      begin = tf.concat([[i0], tf.zeros([len(x_all.shape) - 1], tf.int32)], 0)
      size = tf.concat([[rows], tf.shape(x_all)[1:]], 0)
      return fn(tf.slice(x_all, begin, size), *args)  # x[i0:i0+rows] [rows, ...]

    return tf.function(fn), tf.function(resident)

  def submit_rows(self, functions: Any, i0: int, *args: np.ndarray) -> Any:
    fn, resident = functions
    tensors = tuple(tf.constant(arg) for arg in args)
    if self._iterator is not None:
      return self._submitted(lambda: self.coordinator.schedule(
          resident, args=(self._iterator, tf.constant(i0), tf.constant(self.block_size))
          + tensors))
    x_rows = runner_lib.block_tensor(self.rows(i0), self.dtype)
    return self._submitted(lambda: self.coordinator.schedule(fn, args=(x_rows,) + tensors))

  def submit_row(self, i0: int, j0s: Sequence[int]) -> Any:
    """One closure for the whole row when the inputs are resident (`DeviceBlock.row`),
    else one per block."""
    j0s = runner_lib.checked_row(i0, j0s, self.row_blocks)
    if self._iterator is None:
      return super().submit_row(i0, j0s)
    diagonal = j0s[0] == i0
    row = self._resident[2][diagonal]
    others = j0s[1:] if diagonal else j0s  # K' blocks
    # Padded to one shape, so one trace per `diagonal` serves every row.
    padded = tf.constant(others + [0] * (self.row_blocks - len(others)), tf.int32)
    return (len(j0s), self._submitted(lambda: self.coordinator.schedule(
        row, args=(self._iterator, tf.constant(i0, tf.int32), padded,
                   tf.constant(len(others), tf.int32)))))

  def row_results(self, handle: Any) -> List[np.ndarray]:
    if isinstance(handle, list):  # one closure per block
      return super().row_results(handle)
    count, closure = handle
    return np.split(self.result(closure), count, axis=1)  # [B, K * B] -> K x [B, B]

  def _schedule(self, i0: int, j0: int) -> Any:
    if self._iterator is not None:
      diagonal, pair, _ = self._resident
      if i0 == j0:
        return self.coordinator.schedule(diagonal, args=(self._iterator, tf.constant(i0)))
      return self.coordinator.schedule(pair, args=(self._iterator, tf.constant(i0),
                                                   tf.constant(j0)))
    x_a = runner_lib.block_tensor(self.rows(i0), self.block.dtype)  # [B, ...]
    if i0 == j0:
      return self.coordinator.schedule(self.block.diagonal, args=(x_a,))
    x_b = runner_lib.block_tensor(self.rows(j0), self.block.dtype)  # [B, ...]
    return self.coordinator.schedule(self.block.block, args=(x_a, x_b))

  def result(self, handle: Any) -> np.ndarray:
    """The block `[B, B]` (or a row pass's value); waits. A closure whose worker
    fails is re-run by the coordinator; a result lost with its worker after the
    closure finished (the copy to the coordinator fails with UnavailableError,
    which the coordinator does not retry) is computed again, up to
    `FETCH_ATTEMPTS` times."""
    schedule, remote = handle
    for _ in range(FETCH_ATTEMPTS - 1):
      try:
        return np.asarray(remote.fetch())
      except (tf.errors.UnavailableError, tf.errors.AbortedError):
        remote = schedule()
    return np.asarray(remote.fetch())
