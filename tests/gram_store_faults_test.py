"""Fault injection for ntk_tf.GramStore: SIGKILLed jobs and concurrent writer processes.

Jobs run in processes forked from one server process that imported ntk_tf (and
TensorFlow) once and ran no TensorFlow op before forking (`tests/job_server.py`),
so each job start costs a model build and a trace, not a TensorFlow import. This
test process does not import TensorFlow: it checks the store's files with NumPy,
zlib and its own reading of the log.
"""

import fcntl
import os
import random
import signal
import time
import zlib

from absl.testing import absltest
import numpy as np

from tests import job_server

_N = 240
_BLOCK_SIZE = 8  # 30 row blocks -> 465 upper-triangular blocks.
_NUM_BLOCKS = 30 * 31 // 2
_NUM_KILLS = 20

# The job each forked process runs (`tests/job_server.py`): `job` is the dict sent.
# It runs at a lower priority than this test (nice 10), so that on a loaded machine
# the test's polling is not starved while the job runs to its end before a kill, and
# on the per-example-Jacobian path: the structured one ("auto") finishes all blocks
# before the first kill can land.
_JOB = """
os.nice(10)
model = ntk_tf.models.get("mlp", input_shape=(4, 4, 1), seed=0, width=7)
x = np.random.RandomState(0).randn(%d, 4, 4, 1).astype(np.float32)
ntk_tf.GramStore(job["path"], model, x, block_size=%d, implementation="jacobian",
                 commit_interval_s=job["commit_interval_s"],
                 lock=job["lock"]).compute(progress=False)
""" % (_N, _BLOCK_SIZE)


def _blocks():
  """The (i0, i1, j0, j1) upper-triangular blocks in the store's order (row-major)."""
  return [(i0, min(i0 + _BLOCK_SIZE, _N), j0, min(j0 + _BLOCK_SIZE, _N))
          for i0 in range(0, _N, _BLOCK_SIZE) for j0 in range(i0, _N, _BLOCK_SIZE)]


def _log_records(path):
  """[(index, crc)] of the log's complete, self-consistent lines."""
  try:
    with open(os.path.join(path, "blocks.log"), "rb") as f:
      lines = f.readlines()
  except FileNotFoundError:
    return []
  records = []
  for line in lines:
    fields = line.split()
    if line.endswith(b"\n") and len(fields) == 3 and zlib.crc32(
        fields[0] + b" " + fields[1]) == int(fields[2], 16):
      records.append((int(fields[0]), int(fields[1], 16)))
  return records


class GramStoreFaultsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    tmp = absltest.get_default_test_tmpdir()
    cls.server = job_server.JobServer(_JOB, os.path.join(tmp, "server_stderr.txt"))
    cls.reference_dir = os.path.join(tmp, "reference")
    pid = cls._start(cls.reference_dir, commit_interval_s=5.0)
    assert cls.server.wait(pid) == 0, cls.server.stderr()
    with open(os.path.join(cls.reference_dir, "gram.npy"), "rb") as f:
      cls.reference_bytes = f.read()
    cls.reference = np.load(os.path.join(cls.reference_dir, "gram.npy"))

  @classmethod
  def tearDownClass(cls):
    cls.server.close()
    super().tearDownClass()

  @classmethod
  def _start(cls, path, commit_interval_s, lock="wait"):
    """Forks a GramStore job on `path`; returns its pid."""
    return cls.server.start({"path": path, "commit_interval_s": commit_interval_s,
                             "lock": lock})

  def _assert_committed_blocks_right(self, path):
    """Every block the log names holds the reference's bytes (tile and mirror)."""
    matrix = np.load(os.path.join(path, "gram.npy"), mmap_mode="r")
    blocks = _blocks()
    for index, crc in _log_records(path):
      i0, i1, j0, j1 = blocks[index]
      expected = self.reference[i0:i1, j0:j1]
      self.assertEqual(crc, zlib.crc32(np.ascontiguousarray(expected)), index)
      np.testing.assert_array_equal(matrix[i0:i1, j0:j1], expected, err_msg=str(index))
      np.testing.assert_array_equal(matrix[j0:j1, i0:i1], expected.T, err_msg=str(index))

  def test_reference_is_symmetric_and_complete(self):
    self.assertEqual(self.reference.shape, (_N, _N))
    np.testing.assert_array_equal(self.reference, self.reference.T)
    self.assertTrue(np.all(np.diag(self.reference) > 0))  # Squared gradient norms.
    self.assertEqual(sorted({i for i, _ in _log_records(self.reference_dir)}),
                     list(range(_NUM_BLOCKS)))

  def test_killed_at_random_points_resumes_bit_identical(self):
    path = self.create_tempdir().full_path
    rng = random.Random(20240)
    # Kill points spread over the job: when the log holds `target` blocks, plus 0-20 ms.
    targets = sorted(rng.sample(range(0, _NUM_BLOCKS - 60), _NUM_KILLS))
    killed, done_history = 0, []
    for target in targets:
      pid = self._start(path, commit_interval_s=rng.choice([0.0, 0.01, 0.05]))
      deadline = time.monotonic() + 120
      while len(_log_records(path)) < target and not job_server.is_zombie_or_gone(pid):
        self.assertLess(time.monotonic(), deadline, "job too slow")
        time.sleep(0.002)
      time.sleep(rng.uniform(0.0, 0.02))
      os.kill(pid, signal.SIGKILL)  # A zombie until the server waits for it: no pid reuse.
      status = self.server.wait(pid)
      self.assertIn(status, (-signal.SIGKILL, 0), self.server.stderr())
      killed += status == -signal.SIGKILL
      self._assert_committed_blocks_right(path)  # Never a wrong block on disk in the log.
      done_history.append(len({i for i, _ in _log_records(path)}))
    self.assertGreaterEqual(killed, _NUM_KILLS - 2, done_history)
    self.assertLess(done_history[0], done_history[-1])
    self.assertEqual(self.server.wait(self._start(path, commit_interval_s=0.05)), 0,
                     self.server.stderr())
    with open(os.path.join(path, "gram.npy"), "rb") as f:
      self.assertEqual(f.read(), self.reference_bytes)  # Bit-identical file.

  def test_two_writers_never_crash(self):
    path = self.create_tempdir().full_path
    # This process holds the store's lock, as a writer would, while three jobs start.
    lock_fd = os.open(os.path.join(path, "lock"), os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    os.write(lock_fd, f"{os.getpid()}\n".encode())
    try:
      refused = self._start(path, commit_interval_s=0.05, lock="fail")
      self.assertEqual(self.server.wait(refused), 3)
      self.assertIn(f"is being written by another process (pid {os.getpid()})",
                    self.server.stderr())
      first = self._start(path, commit_interval_s=0.05)
      second = self._start(path, commit_interval_s=0.0)
      deadline = time.monotonic() + 120
      while self.server.stderr().count("waiting for its lock") < 2:
        self.assertLess(time.monotonic(), deadline, self.server.stderr())
        time.sleep(0.05)
      self.assertFalse(job_server.is_zombie_or_gone(first)
                       or job_server.is_zombie_or_gone(second))
    finally:
      fcntl.flock(lock_fd, fcntl.LOCK_UN)
      os.close(lock_fd)
    self.assertEqual(self.server.wait(first), 0, self.server.stderr())
    self.assertEqual(self.server.wait(second), 0, self.server.stderr())
    self.assertEqual(sorted({i for i, _ in _log_records(path)}), list(range(_NUM_BLOCKS)))
    with open(os.path.join(path, "gram.npy"), "rb") as f:
      self.assertEqual(f.read(), self.reference_bytes)

if __name__ == "__main__":
  absltest.main()
