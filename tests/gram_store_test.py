"""Tests for ntk_tf.GramStore in one process: bytes, identity, damage, lock.

Kills of running jobs (SIGKILL at random points) and concurrent writer processes
are in gram_store_faults_test.py.
"""

import builtins
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import pathlib
import threading
import time
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import keras
import numpy as np

from tests import test_util  # pylint: disable=unused-import
import ntk_tf
from ntk_tf.ntk import block_size as block_size_lib
from ntk_tf.ntk import gram_store_format

_SHAPE = (4, 4, 1)
_N = 10
_BLOCK_SIZE = 3  # 4 row blocks -> 10 upper-triangular blocks, last ones partial.
_NUM_BLOCKS = 10
# Block 5 of iter_blocks(10, 10, 3, symmetric=True): rows 3:6, columns 6:9 (off the diagonal).
_BLOCK_5 = (3, 6, 6, 9)


def _model(seed=0):
  return ntk_tf.models.get("mlp", input_shape=_SHAPE, seed=seed, width=7)


def _inputs(seed=0):
  return np.random.RandomState(seed).randn(_N, *_SHAPE).astype(np.float32)


def _store(path, model=None, **kwargs):
  kwargs.setdefault("block_size", _BLOCK_SIZE)
  return ntk_tf.GramStore(path, model or _model(), _inputs(), **kwargs)


def _sequential(activation, seed=0):
  """A named two-layer MLP, so two builds in one process have the same config and weight paths."""
  keras.utils.set_random_seed(seed)
  return keras.Sequential([
      keras.Input(shape=_SHAPE, name="image"),
      keras.layers.Flatten(name="flatten"),
      keras.layers.Dense(6, activation=activation, name="hidden",
                         kernel_initializer=keras.initializers.GlorotNormal(seed=seed)),
      keras.layers.Dense(1, name="logit"),
  ], name="net")


def _flip_byte(path, row, col, itemsize=4):
  """Flips one bit of entry [row, col] of the [N, N] gram.npy at `path` on disk."""
  offset = np.load(path, mmap_mode="r").offset + (row * _N + col) * itemsize
  with open(path, "r+b") as f:
    f.seek(offset)
    value = f.read(1)
    f.seek(offset)
    f.write(bytes([value[0] ^ 0x10]))


class GramStoreTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.path = self.create_tempdir().full_path
    self.matrix_file = os.path.join(self.path, "gram.npy")

  def test_data_fingerprint_is_sha256_of_shape_dtype_and_bytes(self):
    # Stores made before keep their fingerprints: the digest is fixed by its definition.
    x = np.arange(24, dtype="float32").reshape(2, 3, 4)
    for array in (x, np.asfortranarray(x), x.astype("float64")):
      expected = hashlib.sha256(f"{array.shape}|{array.dtype}|".encode()
                                + np.ascontiguousarray(array).tobytes()).hexdigest()
      self.assertEqual(ntk_tf.ntk.gram_store.data_fingerprint(array), expected)
    self.assertNotEqual(ntk_tf.ntk.gram_store.data_fingerprint(x),
                        ntk_tf.ntk.gram_store.data_fingerprint(x.reshape(6, 4)))

  @parameterized.parameters("jacobian", "auto")
  def test_bytes_equal_ntk_gram(self, implementation):
    store = _store(self.path, implementation=implementation).compute(progress=False)
    expected = ntk_tf.ntk_gram(_model(), _inputs(), block_size=_BLOCK_SIZE,
                               implementation=implementation, progress=False)
    self.assertTrue(store.is_complete)
    self.assertEqual(store.num_done, _NUM_BLOCKS)
    on_disk = np.load(self.matrix_file, mmap_mode="r")  # Plain NumPy reads the store.
    self.assertEqual(on_disk.tobytes(), expected.tobytes())  # Bit-identical.
    self.assertEqual(np.asarray(store.matrix).tobytes(), expected.tobytes())
    np.testing.assert_array_equal(store.block(5), expected[3:6, 6:9])

  def test_matrix_is_read_only_memmap(self):
    store = _store(self.path, block_size=4, dtype="float64").compute(progress=False)
    matrix = store.matrix
    self.assertIsInstance(matrix, np.memmap)
    self.assertEqual((matrix.shape, matrix.dtype), ((_N, _N), np.float64))
    self.assertFalse(matrix.flags.writeable)
    np.testing.assert_array_equal(matrix, matrix.T)
    eigvals, eigvecs = ntk_tf.eigen(store, 3, method="lanczos")  # Reads the memory map.
    np.testing.assert_allclose(eigvals, np.linalg.eigvalsh(np.array(matrix))[::-1][:3],
                               rtol=1e-10)
    self.assertEqual(eigvecs.shape, (_N, 3))

  def test_reopened_complete_store_is_not_recomputed(self):
    _store(self.path).compute(progress=False)
    before = os.stat(self.matrix_file).st_mtime_ns
    store = _store(self.path)
    self.assertTrue(store.is_complete)
    store.compute(progress=False)
    self.assertEqual(os.stat(self.matrix_file).st_mtime_ns, before)

  def test_mismatched_job_refused(self):
    _store(self.path)
    with self.assertRaisesRegex(ValueError, "weights_fingerprint"):
      _store(self.path, _model(seed=1))
    with self.assertRaisesRegex(ValueError, "block_size: store has 3, this job has 4"):
      _store(self.path, block_size=4)
    with self.assertRaisesRegex(ValueError, "data_fingerprint"):
      ntk_tf.GramStore(self.path, _model(), _inputs(seed=1), block_size=_BLOCK_SIZE)
    with self.assertRaisesRegex(ValueError, "dtype"):
      _store(self.path, dtype="float64")
    with self.assertRaisesRegex(ValueError, "implementation"):
      _store(self.path, implementation="structured")

  def test_architecture_change_with_same_weights(self):
    relu, tanh = _sequential("relu"), _sequential("tanh")
    tanh.set_weights(relu.get_weights())
    self.assertEqual(ntk_tf.ntk.gram_store.weights_fingerprint(relu),
                     ntk_tf.ntk.gram_store.weights_fingerprint(tanh))
    _store(self.path, relu).compute(progress=False)
    with self.assertRaisesRegex(ValueError, "architecture_fingerprint"):
      _store(self.path, tanh)
    # overwrite=True recomputes it: the tanh Gram, not the relu one.
    store = _store(self.path, tanh, overwrite=True)
    self.assertEqual(store.num_done, 0)
    store.compute(progress=False)
    expected = ntk_tf.ntk_gram(tanh, _inputs(), block_size=_BLOCK_SIZE, progress=False)
    self.assertEqual(np.asarray(store.matrix).tobytes(), expected.tobytes())
    relu_gram = ntk_tf.ntk_gram(relu, _inputs(), block_size=_BLOCK_SIZE, progress=False)
    self.assertFalse(np.allclose(relu_gram, expected, rtol=1e-2))
    # Initializers do not change the function: same weights, other seed, same store.
    other_init = _sequential("tanh", seed=5)
    other_init.set_weights(relu.get_weights())
    self.assertTrue(_store(self.path, other_init).is_complete)

  @parameterized.parameters((5, 7), (7, 5))  # The block's tile, then its mirror tile.
  def test_flipped_bytes_are_recomputed(self, row, col):
    expected = np.array(_store(self.path).compute(progress=False).matrix)
    _flip_byte(self.matrix_file, row, col)
    with self.assertLogs(level="WARNING") as logs:
      store = _store(self.path)
    self.assertIn("block 5 (rows 3:6, columns 6:9) fails its checksum", "\n".join(logs.output))
    self.assertEqual(store.num_done, _NUM_BLOCKS - 1)
    with self.assertRaisesRegex(RuntimeError, "incomplete"):
      _ = store.matrix  # Never the damaged matrix.
    store.compute(progress=False)
    self.assertEqual(np.asarray(store.matrix).tobytes(), expected.tobytes())

  def test_damage_after_open_never_returned(self):
    store = _store(self.path).compute(progress=False)
    expected = np.array(store.matrix)
    _flip_byte(self.matrix_file, 4, 7)
    with self.assertLogs(level="WARNING"):
      np.testing.assert_array_equal(store.block(5), expected[3:6, 6:9])
    time.sleep(0.01)  # A new mtime for the next write.
    _flip_byte(self.matrix_file, 9, 9)
    with self.assertLogs(level="WARNING") as logs:
      self.assertEqual(np.asarray(store.matrix).tobytes(), expected.tobytes())
    self.assertIn("block 9 (rows 9:10, columns 9:10)", "\n".join(logs.output))

  def test_truncated_matrix_is_repaired(self):
    expected = np.array(_store(self.path).compute(progress=False).matrix)
    header = np.load(self.matrix_file, mmap_mode="r").offset
    os.truncate(self.matrix_file, header + 4 * (4 * _N + 2))  # Rows 0..3 and 2 entries remain.
    with self.assertLogs(level="WARNING") as logs:
      store = _store(self.path)
    self.assertIn("truncated", "\n".join(logs.output))
    # Block 0 (rows 0:3, columns 0:3) is intact; every other one lost a row or its mirror.
    self.assertEqual(store.num_done, 1)
    store.compute(progress=False)
    self.assertEqual(np.asarray(store.matrix).tobytes(), expected.tobytes())

  def test_damaged_header_is_repaired(self):
    expected = np.array(_store(self.path).compute(progress=False).matrix)
    with open(self.matrix_file, "r+b") as f:
      f.seek(12)
      f.write(b"#garbage#")
    with self.assertLogs(level="WARNING") as logs:
      store = _store(self.path)
    self.assertIn("header", "\n".join(logs.output))
    self.assertTrue(store.is_complete)
    self.assertEqual(np.load(self.matrix_file).tobytes(), expected.tobytes())

  def test_damaged_manifest_refused_by_name(self):
    _store(self.path).compute(progress=False)
    manifest = os.path.join(self.path, "manifest.json")
    with open(manifest, "r+b") as f:
      f.truncate(os.path.getsize(manifest) // 2)
    with self.assertRaisesRegex(ValueError, "manifest.json' is damaged .*Delete the directory"):
      _store(self.path)
    with self.assertRaisesRegex(ValueError, "manifest.json' is damaged"):
      ntk_tf.GramStore(self.path, _model(), _inputs())  # The default block size, unreadable.
    self.assertEqual(_store(self.path, overwrite=True).num_done, 0)

  def test_format_1_store_refused(self):
    os.makedirs(self.path, exist_ok=True)
    with open(os.path.join(self.path, "manifest.json"), "w") as f:
      json.dump({"format": 1, "done": [0, 1]}, f)
    with self.assertRaisesRegex(ValueError, "format version 1.*Delete the directory"):
      _store(self.path)

  def test_torn_log_line_dropped(self):
    store = _store(self.path, commit_interval_s=0)
    store.compute(progress=False)
    log = os.path.join(self.path, "blocks.log")
    with open(log) as f:
      lines = f.readlines()
    self.assertLen(lines, _NUM_BLOCKS)
    with open(log, "w") as f:  # Line 3 damaged, the last one torn mid-write.
      f.writelines(lines[:3] + ["3 0000ffff 12345678\n"] + lines[4:-1] + [lines[-1][:7]])
    with self.assertLogs(level="WARNING") as logs:
      store = _store(self.path)
    self.assertIn("dropped 2 damaged or torn line(s)", "\n".join(logs.output))
    self.assertEqual(store.num_done, _NUM_BLOCKS - 2)
    store.compute(progress=False)
    with open(log) as f:
      self.assertLen(f.readlines(), _NUM_BLOCKS)  # Repaired, then appended on a line boundary.
    self.assertTrue(_store(self.path).is_complete)

  def test_second_writer_fails_or_waits(self):
    _store(self.path)
    with gram_store_format.locked(pathlib.Path(self.path), "wait"):
      with self.assertRaisesRegex(RuntimeError, f"another process \\(pid {os.getpid()}\\)"):
        _store(self.path, lock="fail")
      results = []
      waiter = threading.Thread(target=lambda: results.append(_store(self.path)))
      with self.assertLogs(level="WARNING") as logs:
        waiter.start()
        waiter.join(timeout=1.0)
        self.assertTrue(waiter.is_alive())  # Waits while the lock is held.
      self.assertIn("waiting for its lock", "\n".join(logs.output))
    waiter.join(timeout=60)
    self.assertFalse(waiter.is_alive())
    self.assertLen(results, 1)

  def test_default_block_size_is_ntk_grams_and_an_existing_store_keeps_its_own(self):
    # A new store splits N like ntk_gram(block_size=None): here N = 10 into blocks of
    # at most 6 rows -> 2 row blocks of 5 (ceil(10 / 2)), not 6 + 4.
    with mock.patch.object(block_size_lib, "DEFAULT_MAX_BLOCK", 6):
      store = ntk_tf.GramStore(self.path, _model(), _inputs()).compute(progress=False)
      self.assertEqual(store.block_size, 5)
      self.assertEqual(store.num_blocks, 3)  # 2 * 3 / 2 upper-triangular blocks.
    expected = ntk_tf.ntk_gram(_model(), _inputs(), block_size=5, progress=False)
    self.assertEqual(np.asarray(store.matrix).tobytes(), expected.tobytes())
    # Reopened without a block size, under another default, it is continued as it was made.
    reopened = ntk_tf.GramStore(self.path, _model(), _inputs())
    self.assertEqual((reopened.block_size, reopened.num_done), (5, 3))
    other = os.path.join(self.create_tempdir().full_path, "other")
    _store(other)  # block_size=3, made explicitly.
    self.assertEqual(ntk_tf.GramStore(other, _model(), _inputs()).block_size, 3)
    with self.assertRaisesRegex(ValueError, "block_size: store has 3, this job has 5"):
      ntk_tf.GramStore(other, _model(), _inputs(), block_size=5)  # An explicit one is checked.

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, "block_size=0"):
      _store(self.path, block_size=0)
    with self.assertRaisesRegex(ValueError, "commit_interval_s=-1"):
      _store(self.path, commit_interval_s=-1)
    with self.assertRaisesRegex(ValueError, "lock='later'"):
      _store(self.path, lock="later")
    store = _store(self.path)
    with self.assertRaisesRegex(ValueError, "index=10"):
      store.block(10)
    with self.assertRaisesRegex(RuntimeError, "block 0 is not computed"):
      store.block(0)


@contextlib.contextmanager
def _read_only(path):
  """Makes the store at `path` read-only: chmod, and (root ignores modes) writes into it fail."""
  names = [os.path.join(path, name) for name in os.listdir(path)]
  real_os_open, real_open = os.open, builtins.open

  def refuse(file):
    if os.path.abspath(os.fspath(file)).startswith(os.path.abspath(path) + os.sep):
      raise OSError(errno.EROFS, "Read-only file system", os.fspath(file))

  def os_open(file, flags, *args, **kwargs):
    if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
      refuse(file)
    return real_os_open(file, flags, *args, **kwargs)

  def open_(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+"):
      refuse(file)
    return real_open(file, mode, *args, **kwargs)

  for name in names:
    os.chmod(name, 0o444)
  os.chmod(path, 0o555)
  try:
    with mock.patch.object(os, "open", os_open), mock.patch.object(builtins, "open", open_):
      yield
  finally:
    os.chmod(path, 0o755)
    for name in names:
      os.chmod(name, 0o644)


class SharedReadTest(absltest.TestCase):
  """A finished store opens without write access, and its readers do not wait for each other."""

  def setUp(self):
    super().setUp()
    self.path = self.create_tempdir().full_path
    self.expected = np.array(_store(self.path).compute(progress=False).matrix)

  def test_finished_store_opens_on_a_read_only_filesystem(self):
    with _read_only(self.path):
      store = _store(self.path)
      self.assertTrue(store.is_complete)
      self.assertIs(store.compute(progress=False), store)
      np.testing.assert_array_equal(store.matrix, self.expected)
      np.testing.assert_array_equal(store.block(5), self.expected[3:6, 6:9])
      # A store of another job is refused by name, not by the lock's write permission.
      with self.assertRaisesRegex(ValueError, "block_size: store has 3, this job has 4"):
        _store(self.path, block_size=4)

  def test_read_only_directory_without_lock_file(self):
    os.remove(os.path.join(self.path, gram_store_format.LOCK_FILE))
    with _read_only(self.path):
      np.testing.assert_array_equal(_store(self.path).matrix, self.expected)

  def test_readers_share_the_lock_and_wait_for_a_writer(self):
    unfinished = _store(self.create_tempdir().full_path, lock="fail")
    readers = [os.open(os.path.join(path, gram_store_format.LOCK_FILE), os.O_RDONLY)
               for path in (self.path, unfinished.path)]
    try:
      for reader in readers:
        fcntl.flock(reader, fcntl.LOCK_SH)  # Another reader, opening the store.
      np.testing.assert_array_equal(_store(self.path, lock="fail").matrix, self.expected)
      with self.assertRaisesRegex(RuntimeError, "another process"):  # A writer's lock excludes it.
        unfinished.compute(progress=False)
    finally:
      for reader in readers:
        os.close(reader)
    with gram_store_format.locked(pathlib.Path(self.path), "wait"):  # A writer, repairing it.
      with self.assertRaisesRegex(RuntimeError, "another process"):
        _store(self.path, lock="fail")


if __name__ == "__main__":
  absltest.main()
