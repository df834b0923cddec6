"""A server process that imports ntk_tf once and forks one process per job (fault-injection tests).

The server imports ntk_tf (and TensorFlow) and runs no TensorFlow op before
forking, so each job start costs a model build and a trace, not an import. The
test process talks to it over stdin/stdout and need not import TensorFlow:

    server = JobServer(JOB)   # JOB: Python source run in the child, `job` = the dict sent.
    pid = server.start({"path": ...})
    os.kill(pid, signal.SIGKILL)
    server.wait(pid)          # -9; 0 if the job finished; 3 if it raised (see server.stderr()).
"""

import json
import os
import select
import subprocess
import sys
import textwrap

# Reads one JSON job per stdin line, forks a process that runs it, and answers
# "started <pid>"; "wait <pid>" answers "exit <pid> <status>" (negative: the signal).
_SERVER = """
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
%s
    code = 0
  except BaseException as error:  # Reported on stderr, exit status 3.
    print(f"job error: {error!r}", file=sys.stderr, flush=True)
    code = 3
  os._exit(code)
"""


def is_zombie_or_gone(pid: int) -> bool:
  """Whether process `pid` has exited (a zombie until its parent waits for it: no pid reuse)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().split(")")[-1].split()[0] == "Z"
  except FileNotFoundError:
    return True


class JobServer:
  """The forking server; `job_source` runs in each child with `job` (a dict) and `np` defined."""

  def __init__(self, job_source: str, stderr_path: str, timeout: float = 240):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
               TF_CPP_MIN_LOG_LEVEL="2")
    self._stderr_path = stderr_path
    self._stderr = open(stderr_path, "w+")
    code = _SERVER % textwrap.indent(textwrap.dedent(job_source).strip(), "    ")
    self._process = subprocess.Popen([sys.executable, "-c", code], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr)
    self._expect("server ready", timeout)

  def close(self) -> None:
    self._process.stdin.close()
    self._process.wait(timeout=60)
    self._stderr.close()

  def stderr(self) -> str:
    """The last 3,000 characters the server and its jobs wrote to stderr."""
    with open(self._stderr_path) as f:
      return f.read()[-3000:]

  def _expect(self, prefix: str, timeout: float = 120) -> str:
    ready, _, _ = select.select([self._process.stdout], [], [], timeout)
    line = self._process.stdout.readline().strip() if ready else ""
    if not line.startswith(prefix):
      raise AssertionError(f"server said {line!r}, expected {prefix!r}: {self.stderr()}")
    return line

  def start(self, job: dict) -> int:
    """Forks a process running the job; returns its pid."""
    self._process.stdin.write(json.dumps(job) + "\n")
    self._process.stdin.flush()
    return int(self._expect("started").split()[1])

  def wait(self, pid: int, timeout: float = 240) -> int:
    """The exit status of job `pid` (negative: the signal that ended it)."""
    self._process.stdin.write(f"wait {pid}\n")
    self._process.stdin.flush()
    return int(self._expect(f"exit {pid}", timeout).split()[2])
