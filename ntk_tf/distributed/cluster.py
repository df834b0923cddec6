"""Which cluster a Gram job runs on: `--cluster=local:N`, `TF_CONFIG`, or none.

    resolve("local:N") -> a LocalCluster of N workers + 1 parameter server, and its strategy
    resolve(None), TF_CONFIG set -> the cluster TF_CONFIG names (this task: the chief)
    resolve(None), no TF_CONFIG  -> no cluster (one process)

Why ParameterServerStrategy + ClusterCoordinator (not MultiWorkerMirroredStrategy):
a Gram is thousands of independent blocks with no reduction between them. The
coordinator schedules each block as a closure (a `tf.function`) on whichever
worker is free, so fast and slow workers share the work dynamically, and when
a worker dies TensorFlow re-runs its closures on the others (and takes the
worker back when it returns); the job goes on. MultiWorkerMirroredStrategy
runs every worker in lockstep collectives: one lost worker stops all of them,
and the blocks would have to be split statically. The coordinator is also the
only writer of the `GramStore`, so a killed coordinator restarts and resumes
from the store's committed blocks. The parameter server holds the model's
weights (read by every block); losing it fails the job, which then resumes.

Every task of a TF_CONFIG cluster runs the same command; `serve_if_server`
turns the worker and ps tasks into servers (`server.serve`) that serve until
killed, and the chief (task type "chief") coordinates.

A process that trains models and also computes Grams on a cluster (an
experiment's Theta_0, `experiments/theta0.py`) connects once, with `connect`,
before it builds any model: connecting moves TF's eager context onto the
cluster, and variables made before it are no longer readable.
"""

import atexit
import json
import os
import re
from typing import NamedTuple, Optional

import tensorflow as tf

from ntk_tf.distributed import local_cluster
from ntk_tf.distributed import server

_LOCAL = re.compile(r"^local:([1-9][0-9]*)$")


def check_cluster(value: Optional[str]) -> Optional[str]:
  """Returns `value` if it is None, "" or "local:N" (N >= 1), else raises naming it."""
  if value and not _LOCAL.match(value):
    raise ValueError(f"cluster must be 'local:N' with N >= 1 workers. Received: cluster={value!r}")
  return value or None


def serve_if_server(intra_op_threads: Optional[int] = None) -> None:
  """With TF_CONFIG naming this task a worker or ps, serves forever; else returns."""
  if "TF_CONFIG" not in os.environ:
    return
  tf_config = json.loads(os.environ["TF_CONFIG"])
  task = tf_config.get("task", {})
  if task.get("type") in ("worker", "ps"):
    server.serve(tf_config["cluster"], task["type"], int(task.get("index", 0)), intra_op_threads)


class Cluster(NamedTuple):
  """A resolved cluster: its strategy, its number of workers, the LocalCluster started (or None)."""
  strategy: tf.distribute.Strategy
  num_workers: int
  local: Optional[local_cluster.LocalCluster]


def resolve(cluster: Optional[str], intra_op_threads: Optional[int] = None) -> Optional[Cluster]:
  """Returns the `Cluster` to run on, or None for one process.

  Args:
    cluster: "local:N" (start N localhost workers and a parameter server),
      or None (TF_CONFIG if set, this process being its chief; else no cluster).
    intra_op_threads: intra-op threads of each local worker (None: TF's default).

  Raises:
    ValueError: a malformed `cluster`, or TF_CONFIG whose task is not the chief
      (call `serve_if_server` first on worker and ps tasks).
  """
  cluster = check_cluster(cluster)
  started = None
  if cluster:
    started = local_cluster.LocalCluster(int(_LOCAL.match(cluster).group(1)), intra_op_threads)
    resolver = started.cluster_resolver()
  elif "TF_CONFIG" in os.environ:
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if resolver.task_type != "chief":
      raise ValueError("Only the chief task coordinates; run worker and ps tasks through "
                       f"cluster.serve_if_server. Received: task type {resolver.task_type!r}")
  else:
    return None
  num_workers = resolver.cluster_spec().num_tasks("worker")
  return Cluster(tf.distribute.experimental.ParameterServerStrategy(resolver), num_workers, started)


_connected: Optional[Cluster] = None
_connected_as: Optional[str] = None


def connect(cluster: Optional[str], intra_op_threads: Optional[int] = None) -> Optional[Cluster]:
  """Connects this process to its cluster, once; returns it (None: no cluster to connect to).

  `cluster` is resolved as by `resolve`; a second call with the same value
  returns the same `Cluster`, and a LocalCluster started here is closed when
  the process exits. Call it before building any model (module docstring).

  Raises:
    ValueError: as `resolve`, or a call naming another cluster than the first.
  """
  global _connected, _connected_as
  key = check_cluster(cluster) or ("TF_CONFIG" if "TF_CONFIG" in os.environ else None)
  if key is None:
    return None
  if _connected is not None:
    if key != _connected_as:
      raise ValueError(f"This process is connected to {_connected_as!r}; it cannot connect to "
                       f"another cluster. Received: cluster={key!r}")
    return _connected
  _connected, _connected_as = resolve(cluster, intra_op_threads), key
  if _connected.local is not None:
    atexit.register(_connected.local.close)
  return _connected


def connected() -> Optional[Cluster]:
  """The cluster `connect` connected this process to, or None."""
  return _connected
