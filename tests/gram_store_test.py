"""Tests for ntk_tf.GramStore: SIGKILLed jobs resume to a bit-identical matrix."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from absl.testing import absltest
import numpy as np

from tests import test_util  # pylint: disable=unused-import
import ntk_tf

_SHAPE = (4, 4, 1)
_N = 10
_BLOCK_SIZE = 3  # 4 row blocks -> 10 upper-triangular blocks, last ones partial.
_NUM_BLOCKS = 10

# The job a child process runs; each block sleeps so the parent can kill it mid-job.
_CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    import ntk_tf
    from ntk_tf import kernels
    factory = kernels._FACTORIES[kernels.NtkImplementation.JACOBIAN]
    def slow_factory(model, dtype, block_size):
      fn = factory(model, dtype, block_size)
      def slow_fn(x_a, x_b):
        time.sleep({delay})  # The block is in flight while it sleeps.
        return fn(x_a, x_b)
      return slow_fn
    kernels._FACTORIES[kernels.NtkImplementation.JACOBIAN] = slow_factory
    model = ntk_tf.models.get("mlp", input_shape={shape}, seed=0, width=7)
    x = np.random.RandomState(0).randn({n}, *{shape}).astype(np.float32)
    ntk_tf.GramStore(sys.argv[1], model, x, block_size={block_size}).compute(progress=False)
""")


def _model(seed=0):
  return ntk_tf.models.get("mlp", input_shape=_SHAPE, seed=seed, width=7)


def _inputs(seed=0):
  return np.random.RandomState(seed).randn(_N, *_SHAPE).astype(np.float32)


def _num_done(path):
  try:
    with open(os.path.join(path, "manifest.json")) as f:
      return len(json.load(f)["done"])
  except (OSError, ValueError):
    return -1  # Not written yet.


class GramStoreTest(absltest.TestCase):

  def _run_child_and_kill(self, path, kill_when_done, extra_delay_s):
    """Starts the job in a subprocess; SIGKILLs it once `kill_when_done` blocks are on disk."""
    script = _CHILD.format(delay=0.8, shape=_SHAPE, n=_N, block_size=_BLOCK_SIZE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    child = subprocess.Popen([sys.executable, "-c", script, path], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while _num_done(path) < kill_when_done:
      if child.poll() is not None:
        self.fail(f"child exited early: {child.stderr.read()[-2000:]}")
      self.assertLess(time.monotonic(), deadline, "child too slow")
      time.sleep(0.02)
    time.sleep(extra_delay_s)  # 0.4 s lands inside the next block's sleep: a block in flight.
    child.send_signal(signal.SIGKILL)
    child.wait()
    stderr = child.stderr.read()
    child.stderr.close()
    self.assertEqual(child.returncode, -signal.SIGKILL, stderr[-2000:])
    return _num_done(path)

  def test_killed_job_resumes_bit_identical(self):
    reference = ntk_tf.GramStore(self.create_tempdir().full_path, _model(), _inputs(),
                                 block_size=_BLOCK_SIZE).compute(progress=False)
    expected = np.array(reference.matrix)
    path = self.create_tempdir().full_path
    done_history = []
    for kill_when_done, extra_delay_s in ((0, 0.0), (1, 0.4), (4, 0.0), (6, 0.4)):
      done = self._run_child_and_kill(path, kill_when_done, extra_delay_s)
      self.assertLess(done, _NUM_BLOCKS)  # Killed before the end.
      done_history.append(done)
    self.assertGreater(done_history[-1], done_history[0])
    store = ntk_tf.GramStore(path, _model(), _inputs(), block_size=_BLOCK_SIZE)
    self.assertFalse(store.is_complete)
    self.assertEqual(store.num_done, done_history[-1])
    with self.assertRaisesRegex(RuntimeError, "incomplete"):
      _ = store.matrix
    store.compute(progress=False)
    self.assertTrue(store.is_complete)
    np.testing.assert_array_equal(store.matrix, expected)  # Bit-identical.
    # And equal to the in-memory Gram with the same blocks.
    np.testing.assert_array_equal(
        expected, ntk_tf.ntk_gram(_model(), _inputs(), block_size=_BLOCK_SIZE, progress=False))

  def test_matrix_is_read_only_memmap(self):
    store = ntk_tf.GramStore(self.create_tempdir().full_path, _model(), _inputs(),
                             block_size=4, dtype="float64").compute(progress=False)
    matrix = store.matrix
    self.assertIsInstance(matrix, np.memmap)
    self.assertEqual((matrix.shape, matrix.dtype), ((_N, _N), np.float64))
    self.assertFalse(matrix.flags.writeable)
    np.testing.assert_array_equal(matrix, matrix.T)
    eigvals, eigvecs = ntk_tf.eigen(store, 3, method="lanczos")  # Reads the memory map.
    np.testing.assert_allclose(eigvals, np.linalg.eigvalsh(np.array(matrix))[::-1][:3],
                               rtol=1e-10)
    self.assertEqual(eigvecs.shape, (_N, 3))

  def test_mismatched_job_refused(self):
    path = self.create_tempdir().full_path
    ntk_tf.GramStore(path, _model(), _inputs(), block_size=_BLOCK_SIZE)
    with self.assertRaisesRegex(ValueError, "model_fingerprint"):
      ntk_tf.GramStore(path, _model(seed=1), _inputs(), block_size=_BLOCK_SIZE)
    with self.assertRaisesRegex(ValueError, "block_size: store has 3, this job has 4"):
      ntk_tf.GramStore(path, _model(), _inputs(), block_size=4)
    with self.assertRaisesRegex(ValueError, "data_fingerprint"):
      ntk_tf.GramStore(path, _model(), _inputs(seed=1), block_size=_BLOCK_SIZE)
    with self.assertRaisesRegex(ValueError, "dtype"):
      ntk_tf.GramStore(path, _model(), _inputs(), block_size=_BLOCK_SIZE, dtype="float64")

  def test_bad_block_size(self):
    with self.assertRaisesRegex(ValueError, "block_size=0"):
      ntk_tf.GramStore(self.create_tempdir().full_path, _model(), _inputs(), block_size=0)


if __name__ == "__main__":
  absltest.main()
