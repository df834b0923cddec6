"""SIGINT / SIGTERM stop an experiment binary within seconds, exit 130 / 143, and it resumes.

The binary (binaries/cifar2_sample_size on the smoke data, 4 trainings) runs in
processes forked from one server that imported ntk_tf once (`tests/job_server.py`),
through `cli.main` as from the shell. Signals land at different moments: during
the start, mid-training, after one and after two finished tasks. The interrupted
runs, resumed to the end, give the rows of an uninterrupted run (but wall seconds).
"""

import json
import os
import pathlib
import signal
import time

from absl.testing import absltest

from tests import job_server
from tests import test_util

_CONFIG = pathlib.Path(__file__).resolve().parent.parent / "configs" / "cifar2_sample_size.py"
_STOP_WITHIN_S = 10.0  # signals.GRACE_S (5 s) and a loaded machine's slack.

# Runs the binary's main as `python -m binaries.cifar2_sample_size <argv>` would, its
# stdout and stderr into job["log"]; the exit status is the binary's.
_JOB = """
import signal, time
log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
os.dup2(log, 1)
os.dup2(log, 2)
sys.argv = job["argv"]
from ntk_tf.experiments import cli
if job.get("swallowed"):  # A signal raised inside a finalizer, then pure Python work.
  class Finalized:
    def __del__(self):
      os.kill(os.getpid(), signal.SIGINT)
      end = time.monotonic() + 0.3
      while time.monotonic() < end:
        pass
  def main(argv):
    Finalized()
    end = time.monotonic() + 60
    while time.monotonic() < end:
      sum(range(1000))
  sys.argv = ["binaries/finalizer.py"]
else:
  from binaries import cifar2_sample_size as binary
  main = binary.main
try:
  cli.main(main, require_workdir=False)
except SystemExit as exit_:
  os._exit(0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 1)
"""


def _without_seconds(value):
  if isinstance(value, dict):
    return {k: _without_seconds(v) for k, v in value.items() if k != "seconds"}
  if isinstance(value, list):
    return [_without_seconds(v) for v in value]
  return value


def _rows(workdir: pathlib.Path):
  return {p.name: _without_seconds(json.loads(p.read_text()))
          for p in sorted((workdir / "results").glob("*.json"))}


def _training(workdir: pathlib.Path) -> bool:
  """Whether some task is between its first saved epoch and its end."""
  return any(workdir.glob("train/*/state/state.json"))


class SignalsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    tmp = absltest.get_default_test_tmpdir()
    cls.server = job_server.JobServer(_JOB, os.path.join(tmp, "signals_server_stderr.txt"))

  @classmethod
  def tearDownClass(cls):
    cls.server.close()
    super().tearDownClass()

  def _argv(self, workdir):
    return ["binaries/cifar2_sample_size.py", f"--config={_CONFIG}:smoke",
            "--config.train_sizes=(32,48)", "--config.seeds=(0,)", "--config.test_size=8",
            "--config.epochs=8", f"--config.data_dir={test_util.smoke_data_dir(self)}",
            f"--workdir={workdir}"]

  def _log(self, name):
    return os.path.join(self.create_tempdir().full_path, f"{name}.txt")

  def test_signals_stop_within_seconds_and_the_rerun_resumes_identically(self):
    reference = pathlib.Path(self.create_tempdir().full_path) / "reference"
    log = self._log("reference")
    code = self.server.wait(self.server.start({"argv": self._argv(reference), "log": log}))
    self.assertEqual(code, 0, pathlib.Path(log).read_text()[-3000:])
    workdir = pathlib.Path(self.create_tempdir().full_path) / "run"
    started = lambda log: os.path.exists(log) and "Config:" in pathlib.Path(log).read_text()
    moments = [(signal.SIGINT, started),  # the data loads, the first model is built
               (signal.SIGTERM, lambda log: _training(workdir)),
               (signal.SIGINT, lambda log: len(_rows(workdir)) >= 1),
               (signal.SIGTERM, lambda log: len(_rows(workdir)) >= 2 and _training(workdir))]
    stopped = 0
    for index, (signum, ready) in enumerate(moments):
      log = self._log(f"stop{index}")
      pid = self.server.start({"argv": self._argv(workdir), "log": log})
      deadline = time.monotonic() + 120
      while not ready(log) and not job_server.is_zombie_or_gone(pid):
        self.assertLess(time.monotonic(), deadline, "job too slow")
        time.sleep(0.01)
      sent = time.monotonic()
      os.kill(pid, signum)
      while not job_server.is_zombie_or_gone(pid):
        self.assertLess(time.monotonic() - sent, _STOP_WITHIN_S,
                        f"not stopped in time: {pathlib.Path(log).read_text()[-2000:]}")
        time.sleep(0.01)
      code = self.server.wait(pid)
      text = pathlib.Path(log).read_text()
      if code == 0:  # It finished before the signal came.
        continue
      stopped += 1
      self.assertEqual(code, 128 + signum, text[-3000:])
      name = signal.Signals(signum).name
      self.assertIn(f"cifar2_sample_size: stopped by {name}; the work done so far is kept: "
                    "rerun the same command to resume.\n", text)
    self.assertGreaterEqual(stopped, 3)
    log = self._log("resume")
    code = self.server.wait(self.server.start({"argv": self._argv(workdir), "log": log}))
    self.assertEqual(code, 0, pathlib.Path(log).read_text()[-3000:])
    self.assertLen(_rows(reference), 4)
    self.assertEqual(_rows(workdir), _rows(reference))

  def test_a_signal_dropped_in_a_finalizer_still_stops_the_run(self):
    log = self._log("swallowed")
    start = time.monotonic()
    code = self.server.wait(self.server.start({"argv": [], "log": log, "swallowed": True}))
    text = pathlib.Path(log).read_text()
    self.assertLess(time.monotonic() - start, _STOP_WITHIN_S, text)
    self.assertEqual(code, 130, text)
    self.assertIn("Exception ignored", text)  # Python dropped the first one.
    self.assertIn("finalizer: stopped by SIGINT", text)


if __name__ == "__main__":
  absltest.main()
