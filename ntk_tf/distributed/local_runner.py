"""Gram blocks and row passes round robin over the local devices of one process.

  LocalRunner    one process, D local devices (GPUs, or logical CPU devices
                 from `split_cpu`): block k runs on device k mod D (round
                 robin) in that device's thread, with that device's own
                 DeviceBlock (own traces). With D > 1 the model's variables
                 are mirrored on every device (`tf.distribute.MirroredStrategy`).

The protocol it implements, and the bytes it guarantees, are `runner.Runner`'s.
"""

import concurrent.futures
from typing import Any, Callable, List, Optional, Sequence, Union

import keras
import numpy as np
import tensorflow as tf

from ntk_tf import precision
from ntk_tf import types
from ntk_tf import validation
from ntk_tf.distributed import device_block
from ntk_tf.distributed import runner as runner_lib
from ntk_tf.ntk.implementation import NtkImplementation
from ntk_tf.ntk.structured import features as features_lib

# Each local device's cache of structured block features (`LocalRunner`).
DEVICE_FEATURE_CACHE_BYTES = 1 << 30


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


def _on_device(fn: Callable, device: Optional[str]) -> Callable:
  """`fn` as a `tf.function` whose ops run on `device` (None: the caller's)."""
  if device is None:
    return tf.function(fn)

  def placed(*args):
    with tf.device(device):
      return fn(*args)

  return tf.function(placed)


def _call_rows(fn: Callable, x_rows: np.ndarray, dtype: str, args) -> np.ndarray:
  return fn(runner_lib.block_tensor(x_rows, dtype), *(tf.constant(arg) for arg in args)).numpy()


def _call(block: device_block.DeviceBlock, x_a: np.ndarray,
          x_b: Optional[np.ndarray]) -> np.ndarray:
  if x_b is None:
    return block.diagonal(runner_lib.block_tensor(x_a, block.dtype)).numpy()  # [B, B]
  return block.block(runner_lib.block_tensor(x_a, block.dtype),
                     runner_lib.block_tensor(x_b, block.dtype)).numpy()  # [B, B]


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
      features = self.block.features(runner_lib.block_tensor(x_rows, self.block.dtype))
      self.computed += 1
      self.put(i0, features)
    return features


class LocalRunner(runner_lib.Runner):
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
      model = runner_lib.place_model(model, tf.distribute.MirroredStrategy(self.devices))
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
        features = block.features(runner_lib.block_tensor(x, block.dtype))
        block.contract_diagonal(features)
        block.contract(features, features)

  def close(self) -> None:
    for pool in self._pools or ():
      pool.shutdown(wait=True)
