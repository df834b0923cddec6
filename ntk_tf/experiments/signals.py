"""SIGINT and SIGTERM stop a binary within seconds, with exit 128 + signal; a rerun resumes.

`stop_on_signals(name)` wraps a binary's main (`cli.main`). The first SIGINT or
SIGTERM raises `Stopped` in the main thread at the next Python instruction, and
again every `REDELIVER_S` seconds while the process runs: one that lands in a
finalizer (which Python reports as "Exception ignored ..." and drops) cannot
let the run go on to exit 0. Where the main thread stays in one long
TensorFlow call, the process ends itself after `GRACE_S` seconds. Either way
it prints one line, "<name>: stopped by SIGINT; ... rerun the same command to
resume.", and exits 130 (SIGINT) or 143 (SIGTERM), also where the work
returned or raised something else meanwhile.

Stopping anywhere is safe: every experiment writes its state atomically and
resumes from what a SIGKILL at any point leaves (tests/training_faults_test.py).
"""

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Iterator, List, Optional

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
REDELIVER_S = 1.0
GRACE_S = 5.0  # Below the reproduce runner's STOP_WAIT_S (10 s) before it sends SIGKILL.


class Stopped(KeyboardInterrupt):
  """Raised in the main thread by a SIGINT or SIGTERM (`signum`)."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


def exit_code(signum: int) -> int:
  """The shell's convention: 128 + the signal number (SIGINT 130, SIGTERM 143)."""
  return 128 + int(signum)


def message(name: str, signum: int) -> str:
  """The one line a stopped binary prints."""
  return (f"{name}: stopped by {signal.Signals(signum).name}; the work done so far is kept: "
          f"rerun the same command to resume.")


def _finish(name: str, signum: int) -> None:
  """Prints `message` and ends the process now (no finalizer may undo the exit code)."""
  try:
    sys.stdout.flush()
    sys.stderr.write(message(name, signum) + "\n")
    sys.stderr.flush()
  finally:
    os._exit(exit_code(signum))  # pylint: disable=protected-access


@contextlib.contextmanager
def stop_on_signals(name: str) -> Iterator[None]:
  """Runs the body so that SIGINT / SIGTERM end the process as the module docstring says."""
  received: List[int] = []
  done = threading.Event()

  def watchdog(signum: int) -> None:
    deadline = time.monotonic() + GRACE_S
    while not done.wait(REDELIVER_S):
      if time.monotonic() >= deadline:
        _finish(name, signum)
      os.kill(os.getpid(), signum)  # Raises Stopped again, should the last one be dropped.

  def handler(signum: int, frame) -> None:
    del frame
    if done.is_set():
      return
    if not received:
      received.append(signum)
      threading.Thread(target=watchdog, args=(signum,), daemon=True).start()
    raise Stopped(received[0])

  previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
  signum: Optional[int] = None
  try:
    yield
  except BaseException:  # pylint: disable=broad-except
    done.set()
    if not received:
      raise
  finally:
    done.set()
    signum = received[0] if received else None
    if signum is None:
      for s, h in previous.items():
        signal.signal(s, h)
  if signum is not None:
    _finish(name, signum)
