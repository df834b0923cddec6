"""Where Gram blocks run: one device, several local devices, or a parameter-server cluster.

    start(x [N, ...], B);  submit(i0, j0) -> handle;  result(handle) -> Theta [B, B]
    submit_row(i0, [j0, ...]) -> handle;  row_results(handle) -> [Theta [B, B], ...]

A `Runner` is given the inputs once (`start`: zero-padded to a multiple of B
rows) and then row offsets: block (i0, j0) is the `[B, B]` block of
`device_block.DeviceBlock` on x[i0:i0+B] and x[j0:j0+B] (i0 == j0: the
diagonal block Theta(x_a, x_a), symmetrized). Blocks are assigned, never split: every block is computed whole
by the same traced function on one device, so the bytes of a block do not
depend on which device or worker computed it (on identical hardware and
thread settings). `slots` is how many blocks the caller keeps in flight.

  LocalRunner    one process, D local devices (GPUs, or logical CPU devices
                 from `split_cpu`): block k runs on device k mod D (round
                 robin) in that device's thread, with that device's own
                 DeviceBlock (own traces). With D > 1 the model's variables
                 are mirrored on every device (`tf.distribute.MirroredStrategy`).
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

Row passes (`distributed.sharded_passes`) use the same inputs and places:

    fns = replicate(make);  submit_rows(fns, i0, *args) -> handle;  result(handle)

`replicate(make)` builds `make(model)` (a pure-TF function of `x_rows [R, ...]`
and tensors, on the runner's placed model) once per place it runs (each
local device; one function for the cluster); `submit_rows` runs it on the
rows x[i0:i0+B] of the inputs given to `start` (B = start's block_size): on
the next device round robin, or as a closure on some worker, which reads a
resident x there and is re-run elsewhere if its worker is lost.
"""

import concurrent.futures
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from ntk_tf import precision
from ntk_tf import types
from ntk_tf import validation
from ntk_tf.distributed import device_block
from ntk_tf.ntk.implementation import NtkImplementation
from ntk_tf.ntk.structured import features as features_lib

# Inputs kept on every worker when they are at most this large (a graph constant:
# protocol buffers cap at 2 GiB); larger inputs are sent with each block.
RESIDENT_MAX_BYTES = 1 << 30
# Each local device's cache of structured block features (`LocalRunner`).
DEVICE_FEATURE_CACHE_BYTES = 1 << 30
# Blocks of one block row per cluster closure (`ClusterRunner.row_blocks`; chosen by
# benchmarks.distributed_scaling, see README "Measured: 2 workers vs 1 worker").
ROW_BLOCKS = 8
# Times `ClusterRunner.result` tries a block whose worker was lost after computing it.
FETCH_ATTEMPTS = 5


def split_cpu(num_devices: int) -> List[str]:
  """Splits the host CPU into `num_devices` logical devices; returns their names.

  Must run before TensorFlow initializes its devices (before any op runs);
  if they are already split into `num_devices`, returns those.
  """
  cpu = tf.config.list_physical_devices("CPU")[0]
  configured = tf.config.get_logical_device_configuration(cpu)
  if configured and len(configured) == num_devices:
    return [device.name for device in tf.config.list_logical_devices("CPU")]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])
  return [device.name for device in tf.config.list_logical_devices("CPU")]


def local_devices(num_devices: int) -> List[str]:
  """The first `num_devices` GPUs, else (no GPU) `num_devices` logical CPU devices.

  Raises:
    ValueError: more devices asked than there are GPUs, naming both counts.
  """
  if num_devices < 1:
    raise ValueError(f"num_devices must be >= 1. Received: num_devices={num_devices}")
  # Physical devices first: listing logical ones initializes them, after which the
  # CPU can no longer be split.
  if tf.config.list_physical_devices("GPU"):
    gpus = tf.config.list_logical_devices("GPU")
    if num_devices > len(gpus):
      raise ValueError(f"Only {len(gpus)} GPUs are visible. Received: num_devices={num_devices}")
    return [device.name for device in gpus[:num_devices]]
  return split_cpu(num_devices)


def place_model(model: keras.Model, strategy: tf.distribute.Strategy) -> keras.Model:
  """A copy of `model` whose variables `strategy` creates (mirrored, or on parameter servers).

  Same architecture (`get_config`/`from_config`) and the same weights, bit for bit.
  """
  with strategy.scope():
    placed = model.__class__.from_config(model.get_config())
    placed.set_weights(model.get_weights())
  return placed


def _tensor(x: np.ndarray, dtype: str) -> tf.Tensor:
  """A padded block `[B, ...]` as a tensor of the block's dtype (as the reference casts it)."""
  return tf.constant(np.ascontiguousarray(x, dtype=dtype))


class Runner:
  """Runs blocks; subclasses say where. `slots`: blocks the caller keeps in flight;
  `places`: devices or workers that run them at once."""

  slots: int = 1
  places: int = 1
  row_blocks: int = 1  # blocks of one block row a `submit_row` handle may hold
  block_size: Optional[int] = None  # B of the last `start`
  _start_key: Optional[str] = None  # the last start's key, and the model's weights then
  _start_weights: Optional[List[np.ndarray]] = None  # (read only when a key is given)

  def start(self, x: np.ndarray, block_size: int, key: Optional[str] = None) -> None:
    """Takes the inputs `x [N, ...]` of the blocks to come, zero-padded to a multiple of B.

    `key`: a digest of x's shape, dtype and bytes (`gram_store.data_fingerprint`),
    or None. A runner started again with the key and block size of its last
    start, and its model's weights unchanged since, may keep what it derived
    from x (features, inputs resident on workers): `_same_inputs`.
    """
    padded_rows = -(-x.shape[0] // block_size) * block_size  # ceil(N / B) * B
    weights = None if key is None else self.model.get_weights()
    last = self._start_weights
    self._same_inputs = (key is not None and key == self._start_key
                         and block_size == self.block_size
                         and last is not None and len(last) == len(weights)
                         and all(np.array_equal(a, b) for a, b in zip(weights, last)))
    self._start_key, self._start_weights = key, weights
    self.block_size = block_size
    self.x = np.concatenate([x, np.zeros((padded_rows - x.shape[0],) + x.shape[1:], x.dtype)])

  def rows(self, i0: int) -> np.ndarray:
    """The padded example block x[i0:i0+B] `[B, ...]`."""
    return self.x[i0:i0 + self.block_size]

  def submit(self, i0: int, j0: int) -> Any:
    """Starts block (i0, j0) (i0 == j0: a diagonal block); returns a handle for `result`."""
    raise NotImplementedError

  def result(self, handle: Any) -> np.ndarray:
    raise NotImplementedError

  def submit_row(self, i0: int, j0s: Sequence[int]) -> Any:
    """Starts the blocks (i0, j0) of one block row, j0 in `j0s` (at most `row_blocks`;
    only the first may be the diagonal, j0 == i0); a handle for `row_results`.

    The default submits each block; a runner that runs them as one unit overrides it.
    """
    return [self.submit(i0, j0) for j0 in _checked_row(i0, j0s, self.row_blocks)]

  def row_results(self, handle: Any) -> List[np.ndarray]:
    """The blocks `[B, B]` of a `submit_row` handle, in its j0 order; waits."""
    return [self.result(block) for block in handle]

  def replicate(self, make: Callable[[keras.Model], Callable]) -> Any:
    """`make(model)` on the runner's placed model, as one `tf.function` per place it runs.

    `make(model)` returns f(x_rows [R, ...], *tensors) -> tensor, pure TF
    (graph-safe); it is called once per place so each has its own traces.
    """
    raise NotImplementedError

  def submit_rows(self, functions: Any, i0: int, *args: np.ndarray) -> Any:
    """Starts f(x[i0:i0+B], *args) (f from `replicate`, B = start's block_size); a handle."""
    raise NotImplementedError

  def close(self) -> None:
    """Releases threads or connections (the default holds none)."""

  def __enter__(self) -> "Runner":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _checked_row(i0: int, j0s: Sequence[int], row_blocks: int) -> List[int]:
  """`j0s` as ints, checked: 1 to `row_blocks` of them, the diagonal (i0) first if at all."""
  j0s = [int(j0) for j0 in j0s]
  if not 1 <= len(j0s) <= row_blocks:
    raise ValueError(f"A row holds 1 to row_blocks={row_blocks} blocks. Received: j0s={j0s}")
  if i0 in j0s[1:]:
    raise ValueError(f"Only a row's first block may be its diagonal block (i0={i0}). "
                     f"Received: j0s={j0s}")
  return j0s


def _on_device(fn: Callable, device: Optional[str]) -> Callable:
  """`fn` as a `tf.function` whose ops run on `device` (None: the caller's)."""
  if device is None:
    return tf.function(fn)

  def placed(*args):
    with tf.device(device):
      return fn(*args)

  return tf.function(placed)


def _call_rows(fn: Callable, x_rows: np.ndarray, dtype: str, args) -> np.ndarray:
  return fn(_tensor(x_rows, dtype), *(tf.constant(arg) for arg in args)).numpy()


def _call(block: device_block.DeviceBlock, x_a: np.ndarray,
          x_b: Optional[np.ndarray]) -> np.ndarray:
  if x_b is None:
    return block.diagonal(_tensor(x_a, block.dtype)).numpy()  # [B, B]
  return block.block(_tensor(x_a, block.dtype), _tensor(x_b, block.dtype)).numpy()  # [B, B]


def _tensors_nbytes(features) -> int:
  """Bytes of a nest of tensors (a device block's features)."""
  return sum(t.shape.num_elements() * t.dtype.size for t in tf.nest.flatten(features))


class _DeviceFeatures(features_lib.FeatureCache):
  """One device's LRU cache of structured block features, by row offset, bounded in bytes.

  Used by that device's thread only. The inputs are fixed between `start`s,
  so a row offset names a block's features; `clear` at each start.
  """

  def __init__(self, block: device_block.DeviceBlock, max_bytes: int):
    super().__init__(max_bytes, nbytes=_tensors_nbytes)
    self.block = block
    self.computed = 0  # feature computations (misses), for tests and benchmarks

  def features(self, i0: int, x_rows: np.ndarray) -> Any:
    """The features of rows x[i0:i0+B] (`x_rows`), computed on a miss."""
    features = self.get(i0)
    if features is None:
      features = self.block.features(_tensor(x_rows, self.block.dtype))
      self.computed += 1
      self.put(i0, features)
    return features


class LocalRunner(Runner):
  """Blocks round robin over local devices, one thread and one DeviceBlock per device.

  STRUCTURED blocks keep each device's block features in a cache on that
  device (`feature_cache_bytes` per device, least recently used out), so a
  device computes an example block's features once while they fit, not twice
  per Gram block; the block's bytes are those of `DeviceBlock.block`.

  Args:
    model: Keras model with one output logit (any dtype; cast to `dtype`).
    implementation: "jacobian" or "structured" (`device_block.IMPLEMENTATION_NAMES`).
    dtype: "float32" or "float64".
    devices: device names (None: the caller's default device, no threads).
    feature_cache_bytes: device memory for each device's cached features
      (STRUCTURED; 0: none, every block computes both blocks' features).
  """

  def __init__(self, model: keras.Model, implementation: Union[str, NtkImplementation],
               dtype: types.DType = "float32", devices: Optional[Sequence[str]] = None,
               feature_cache_bytes: int = DEVICE_FEATURE_CACHE_BYTES):
    model = precision.cast_model(model, dtype)
    self.devices = list(devices) if devices else [None]
    if len(self.devices) > 1:
      model = place_model(model, tf.distribute.MirroredStrategy(self.devices))
    self.blocks = [device_block.DeviceBlock(model, implementation, dtype, device=device)
                   for device in self.devices]
    cache_bytes = validation.check_non_negative_int(feature_cache_bytes, "feature_cache_bytes")
    self.feature_caches = ([_DeviceFeatures(block, cache_bytes) for block in self.blocks]
                           if self.blocks[0].features is not None and cache_bytes else None)
    self.model = model  # in `dtype`, mirrored over the devices when D > 1
    self.dtype = self.blocks[0].dtype
    self.slots = 2 * len(self.devices)
    self.places = len(self.devices)
    self._pools = ([concurrent.futures.ThreadPoolExecutor(1) for _ in self.devices]
                   if len(self.devices) > 1 else None)
    self._next = 0

  def _run(self, fn: Callable, *args) -> Any:
    """fn(device index, *args) on the next device round robin: its value (one device) or a future."""
    device = self._next % len(self.devices)
    self._next += 1
    if self._pools is None:
      return fn(0, *args)  # Computed now: one device, nothing to overlap.
    return self._pools[device].submit(fn, device, *args)

  def start(self, x: np.ndarray, block_size: int, key: Optional[str] = None) -> None:
    super().start(x, block_size, key)
    if not self._same_inputs:
      for cache in self.feature_caches or ():
        cache.clear()  # features of the previous inputs

  def submit(self, i0: int, j0: int) -> Any:
    if self.feature_caches is not None:
      return self._run(self._cached_block, i0, j0)
    x_b = None if i0 == j0 else self.rows(j0)
    return self._run(lambda device, x_a, x_b: _call(self.blocks[device], x_a, x_b),
                     self.rows(i0), x_b)

  def _cached_block(self, device: int, i0: int, j0: int) -> np.ndarray:
    """Block (i0, j0) on `device` from its cached features `[B, B]` (in its thread)."""
    cache, block = self.feature_caches[device], self.blocks[device]
    features_a = cache.features(i0, self.rows(i0))
    if i0 == j0:
      return block.contract_diagonal(features_a).numpy()
    return block.contract(features_a, cache.features(j0, self.rows(j0))).numpy()

  def replicate(self, make: Callable[[keras.Model], Callable]) -> List[Callable]:
    return [_on_device(make(self.model), device) for device in self.devices]

  def submit_rows(self, functions: List[Callable], i0: int, *args: np.ndarray) -> Any:
    x_rows = self.rows(i0)
    if self._pools is not None:
      # Tracing writes Keras' Python state, so the device threads must not trace
      # concurrently: trace these shapes on every device here, one at a time
      # (a cache lookup once traced); the threads then only execute.
      specs = [tf.TensorSpec(x_rows.shape, self.dtype)] + [
          tf.TensorSpec(np.shape(arg), tf.as_dtype(np.asarray(arg).dtype)) for arg in args]
      for fn in functions:
        fn.get_concrete_function(*specs)
    return self._run(lambda device, rows: _call_rows(functions[device], rows, self.dtype, args),
                     x_rows)

  def result(self, handle: Any) -> np.ndarray:
    return handle if self._pools is None else handle.result()

  def warm_up(self, x: np.ndarray) -> None:
    """Traces the functions `submit` runs, on every device, on `x [B, ...]`, one device at a time.

    Tracing writes to Keras' and the structured recorder's Python state, so the
    device threads must not trace concurrently; after this they only execute.
    """
    for block in self.blocks:
      if self.feature_caches is None:
        _call(block, x, None)
        _call(block, x, x)
      else:  # what `_cached_block` runs
        features = block.features(_tensor(x, block.dtype))
        block.contract_diagonal(features)
        block.contract(features, features)

  def close(self) -> None:
    for pool in self._pools or ():
      pool.shutdown(wait=True)


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


class ClusterRunner(Runner):
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
    placed = place_model(precision.cast_model(model, dtype), strategy)
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
    keeps the inputs already resident (sending them costs 0.1-0.9 s for the
    49 MB of 4,000 CIFAR-10 images on 2 local workers).
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
    x_rows = _tensor(self.rows(i0), self.dtype)
    return self._submitted(lambda: self.coordinator.schedule(fn, args=(x_rows,) + tensors))

  def submit_row(self, i0: int, j0s: Sequence[int]) -> Any:
    """One closure for the whole row when the inputs are resident (`DeviceBlock.row`),
    else one per block."""
    j0s = _checked_row(i0, j0s, self.row_blocks)
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
    dtype = self.block.dtype
    if i0 == j0:
      return self.coordinator.schedule(self.block.diagonal, args=(_tensor(self.rows(i0), dtype),))
    return self.coordinator.schedule(
        self.block.block, args=(_tensor(self.rows(i0), dtype), _tensor(self.rows(j0), dtype)))

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
