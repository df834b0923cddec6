"""Fault injection for ntk_tf.GramStore: SIGKILLed jobs and concurrent writer processes.

Jobs run in processes forked from one server process that imported ntk_tf (and
TensorFlow) once and ran no TensorFlow op before forking, so each job start
costs a model build and a trace, not a TensorFlow import. This test process
does not import TensorFlow: it checks the store's files with NumPy, zlib and
its own reading of the log.
"""

import fcntl
import json
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time
import zlib

from absl.testing import absltest
import numpy as np

_N = 240
_BLOCK_SIZE = 8  # 30 row blocks -> 465 upper-triangular blocks.
_NUM_BLOCKS = 30 * 31 // 2
_NUM_KILLS = 20

# Reads one JSON job per stdin line, forks a process that runs it, and answers
# "started <pid>"; "wait <pid>" answers "exit <pid> <status>" (negative: the signal).
_SERVER = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import ntk_tf
    print("server ready", flush=True)
    for line in sys.stdin:
      if line.startswith("wait "):
        pid = int(line.split()[1])
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(f"exit {pid} {code}", flush=True)
        continue
      job = json.loads(line)
      pid = os.fork()
      if pid:
        print(f"started {pid}", flush=True)
        continue
      try:
        model = ntk_tf.models.get("mlp", input_shape=(4, 4, 1), seed=0, width=7)
        x = np.random.RandomState(0).randn(%d, 4, 4, 1).astype(np.float32)
        ntk_tf.GramStore(job["path"], model, x, block_size=%d,
                         commit_interval_s=job["commit_interval_s"],
                         lock=job["lock"]).compute(progress=False)
        code = 0
      except BaseException as error:  # Reported on stderr, exit status 3.
        print(f"job error: {error!r}", file=sys.stderr, flush=True)
        code = 3
      os._exit(code)
""") % (_N, _BLOCK_SIZE)


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


def _is_zombie_or_gone(pid):
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().split(")")[-1].split()[0] == "Z"
  except FileNotFoundError:
    return True


class GramStoreFaultsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
               TF_CPP_MIN_LOG_LEVEL="2")
    cls.stderr_path = os.path.join(absltest.get_default_test_tmpdir(), "server_stderr.txt")
    cls.stderr = open(cls.stderr_path, "w+")
    cls.server = subprocess.Popen([sys.executable, "-c", _SERVER], env=env, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=cls.stderr)
    cls._expect("server ready", timeout=240)
    cls.reference_dir = os.path.join(absltest.get_default_test_tmpdir(), "reference")
    pid = cls._start(cls.reference_dir, commit_interval_s=5.0)
    assert cls._wait(pid) == 0, cls._server_stderr()
    with open(os.path.join(cls.reference_dir, "gram.npy"), "rb") as f:
      cls.reference_bytes = f.read()
    cls.reference = np.load(os.path.join(cls.reference_dir, "gram.npy"))

  @classmethod
  def tearDownClass(cls):
    cls.server.stdin.close()
    cls.server.wait(timeout=60)
    cls.stderr.close()
    super().tearDownClass()

  @classmethod
  def _server_stderr(cls):
    with open(cls.stderr_path) as f:
      return f.read()[-3000:]

  @classmethod
  def _expect(cls, prefix, timeout=120):
    ready, _, _ = select.select([cls.server.stdout], [], [], timeout)
    line = cls.server.stdout.readline().strip() if ready else ""
    if not line.startswith(prefix):
      raise AssertionError(f"server said {line!r}, expected {prefix!r}: "
                           f"{cls._server_stderr()}")
    return line

  @classmethod
  def _start(cls, path, commit_interval_s, lock="wait"):
    cls.server.stdin.write(json.dumps({"path": path, "commit_interval_s": commit_interval_s,
                                       "lock": lock}) + "\n")
    cls.server.stdin.flush()
    return int(cls._expect("started").split()[1])

  @classmethod
  def _wait(cls, pid):
    cls.server.stdin.write(f"wait {pid}\n")
    cls.server.stdin.flush()
    return int(cls._expect(f"exit {pid}", timeout=240).split()[2])

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
      while len(_log_records(path)) < target and not _is_zombie_or_gone(pid):
        self.assertLess(time.monotonic(), deadline, "job too slow")
        time.sleep(0.002)
      time.sleep(rng.uniform(0.0, 0.02))
      os.kill(pid, signal.SIGKILL)  # A zombie until the server waits for it: no pid reuse.
      status = self._wait(pid)
      self.assertIn(status, (-signal.SIGKILL, 0), self._server_stderr())
      killed += status == -signal.SIGKILL
      self._assert_committed_blocks_right(path)  # Never a wrong block on disk in the log.
      done_history.append(len({i for i, _ in _log_records(path)}))
    self.assertGreaterEqual(killed, _NUM_KILLS - 2, done_history)
    self.assertLess(done_history[0], done_history[-1])
    self.assertEqual(self._wait(self._start(path, commit_interval_s=0.05)), 0,
                     self._server_stderr())
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
      self.assertEqual(self._wait(refused), 3)
      self.assertIn(f"is being written by another process (pid {os.getpid()})",
                    self._server_stderr())
      first = self._start(path, commit_interval_s=0.05)
      second = self._start(path, commit_interval_s=0.0)
      deadline = time.monotonic() + 120
      while self._server_stderr().count("waiting for its lock") < 2:
        self.assertLess(time.monotonic(), deadline, self._server_stderr())
        time.sleep(0.05)
      self.assertFalse(_is_zombie_or_gone(first) or _is_zombie_or_gone(second))
    finally:
      fcntl.flock(lock_fd, fcntl.LOCK_UN)
      os.close(lock_fd)
    self.assertEqual(self._wait(first), 0, self._server_stderr())
    self.assertEqual(self._wait(second), 0, self._server_stderr())
    self.assertEqual(sorted({i for i, _ in _log_records(path)}), list(range(_NUM_BLOCKS)))
    with open(os.path.join(path, "gram.npy"), "rb") as f:
      self.assertEqual(f.read(), self.reference_bytes)

if __name__ == "__main__":
  absltest.main()
