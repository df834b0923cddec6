"""A localhost TensorFlow cluster: N worker processes and one parameter server.

    LocalCluster(num_workers) -> ClusterSpec {"worker": [N], "ps": [1], "chief": [1]}

Each worker and the parameter server is a `tf.distribute.Server` in its own
subprocess (`ntk_tf/distributed/server.py`, run by path) on a free localhost port;
the chief entry is the coordinator (the calling process). Every server, the
coordinator's included, listens on 127.0.0.1 only
(`server.listen_on_loopback_only`: TensorFlow's servers have no authentication,
and TensorFlow itself would listen on every interface). The servers are
killed when the cluster is closed, when the interpreter exits, and (Linux
`PR_SET_PDEATHSIG`) when the coordinator dies, even by SIGKILL.

A server that dies while the cluster is open is restarted on its port, as a
cluster manager (Kubernetes, SLURM) restarts a lost task: the
`ClusterCoordinator` re-runs the lost worker's closures on the other workers
at once, but it rebuilds its cluster view (`update_server_def`) only once
every worker answers again, and until then its remote calls can stall.

For single-machine multi-process runs and for tests; a real cluster's tasks
are started by its scheduler with `TF_CONFIG` (`ntk_tf.distributed.cluster`).
"""

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

from absl import logging
import tensorflow as tf

from ntk_tf import atomic
from ntk_tf.distributed import server

_PR_SET_PDEATHSIG = 1
_START_TIMEOUT_S = 180.0
_SUPERVISE_EVERY_S = 0.5
_SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server.py")


def free_port() -> int:
  """A loopback (127.0.0.1) TCP port free at the time of the call."""
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def _die_with_parent() -> None:
  """Runs in the child before exec: SIGKILL it when its parent (the coordinator) dies."""
  libc = ctypes.CDLL("libc.so.6", use_errno=True)
  libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _listening(address: str) -> bool:
  host, port = address.rsplit(":", 1)
  try:
    with socket.create_connection((host, int(port)), timeout=1.0):
      return True
  except OSError:
    return False


class LocalCluster:
  """N worker servers and one parameter server on localhost (see the module docstring).

  Args:
    num_workers: N >= 1 worker processes.
    intra_op_threads: TF intra-op threads of each worker (None: TF's default,
      all cores). The parameter server gets 1.
    pin_workers: pin worker i to CPU core i mod (number of cores), so each
      worker uses one core (intra-op threads alone do not bound TF's inter-op
      pool, which runs independent ops, and map_fn iterations, in parallel).
  """

  def __init__(self, num_workers: int, intra_op_threads: Optional[int] = None,
               pin_workers: bool = False):
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
      raise ValueError(f"num_workers must be an int >= 1. Received: num_workers={num_workers!r}")
    self.num_workers = num_workers
    # This process is the chief: its server starts when a strategy connects.
    server.listen_on_loopback_only()
    self.spec: Dict[str, List[str]] = {
        "worker": [f"127.0.0.1:{free_port()}" for _ in range(num_workers)],
        "ps": [f"127.0.0.1:{free_port()}"],
        "chief": [f"127.0.0.1:{free_port()}"],
    }
    self.processes: Dict[str, subprocess.Popen] = {}
    self.restarts = 0  # Servers restarted after they died.
    self._env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    self._env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    self._commands: Dict[str, List[str]] = {}
    for job, threads in (("ps", 1), ("worker", intra_op_threads)):
      for index in range(len(self.spec[job])):
        name = f"{job}:{index}"
        cpu = index % os.cpu_count() if pin_workers and job == "worker" else -1
        self._commands[name] = [sys.executable, _SERVER,
                                f"--cluster_spec={atomic.json_text(self.spec)}",
                                f"--job={job}", f"--index={index}",
                                f"--intra_op_threads={threads or 0}", f"--cpu={cpu}",
                                "--loopback_only"]
        self._spawn(name)
    self._closed = threading.Event()
    atexit.register(self.close)
    self._wait_until_listening()
    # PR_SET_PDEATHSIG follows the spawning thread: restarted servers die with the
    # supervisor thread, which lives until `close`.
    self._supervisor = threading.Thread(target=self._supervise, daemon=True)
    self._supervisor.start()

  def _spawn(self, name: str) -> None:
    self.processes[name] = subprocess.Popen(self._commands[name], env=self._env,
                                            preexec_fn=_die_with_parent,
                                            stdin=subprocess.DEVNULL)

  def _supervise(self) -> None:
    """Restarts, on its port, every server that dies while the cluster is open."""
    while not self._closed.wait(_SUPERVISE_EVERY_S):
      for name, process in list(self.processes.items()):
        if process.poll() is not None and not self._closed.is_set():
          logging.warning("LocalCluster: server %s exited with code %s; restarting it.", name,
                          process.returncode)
          self.restarts += 1
          self._spawn(name)

  def _wait_until_listening(self) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    for name, address in self.server_addresses().items():
      while not _listening(address):
        if self.processes[name].poll() is not None:
          self.close()
          raise RuntimeError(f"Server {name} at {address} exited with code "
                             f"{self.processes[name].returncode} while starting.")
        if time.monotonic() > deadline:
          self.close()
          raise RuntimeError(f"Server {name} at {address} did not start in "
                             f"{_START_TIMEOUT_S:.0f} s.")
        time.sleep(0.2)

  def server_addresses(self) -> Dict[str, str]:
    """{"worker:0": "127.0.0.1:port", ..., "ps:0": ...} of the server processes."""
    return {f"{job}:{i}": address for job in ("worker", "ps")
            for i, address in enumerate(self.spec[job])}

  def cluster_resolver(self) -> tf.distribute.cluster_resolver.ClusterResolver:
    """The coordinator's (chief 0's) resolver of this cluster."""
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(self.spec), task_type="chief", task_id=0, rpc_layer="grpc")

  def cpu_seconds(self) -> Dict[str, float]:
    """{"worker:0": s, ..., "ps:0": s}: CPU seconds (user + system) each live server has used.

    Read from /proc/PID/stat (Linux); a server restarted after a crash counts from its restart.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for name, process in self.processes.items():
      try:
        with open(f"/proc/{process.pid}/stat") as f:
          fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)"
      except OSError:
        continue
      seconds[name] = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return seconds

  def kill(self, name: str) -> None:
    """SIGKILLs the server `name` ("worker:1", ...), as a failed machine would stop."""
    self.processes[name].kill()

  def close(self) -> None:
    """Kills every server process (idempotent); none is restarted after this."""
    self._closed.set()
    for process in self.processes.values():
      if process.poll() is None:
        process.kill()
        process.wait()

  def __enter__(self) -> "LocalCluster":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
