"""One task of a TensorFlow cluster: a `tf.distribute.Server` that serves until killed.

    python ntk_tf/distributed/server.py --cluster_spec='{"worker": [...], "ps": [...]}' \
        --job=worker --index=0 [--intra_op_threads=1]

`local_cluster.LocalCluster` starts one per worker and parameter server, by
path, so a server imports TensorFlow only (not ntk_tf and Keras: it runs the
coordinator's functions, it does not build them). A TF_CONFIG cluster runs
the gram binary on every task instead: `cluster.serve_if_server` calls `serve`.

Servers keep TF's default inter-op pool: with one inter-op thread, remote
function calls deadlock.
"""

import argparse
import json
import os
from typing import Dict, List, Optional

import tensorflow as tf


def serve(spec: Dict[str, List[str]], job: str, index: int,
          intra_op_threads: Optional[int] = None) -> None:
  """Runs task `job`:`index` of the cluster `spec` as a gRPC server; returns never."""
  config = tf.compat.v1.ConfigProto()
  if intra_op_threads:
    config.intra_op_parallelism_threads = int(intra_op_threads)
  if len(os.sched_getaffinity(0)) < 2:
    # TF sizes its default inter-op pool by the cores this process may run on:
    # pinned to one core (`--cpu`, a one-core cpuset) that is one thread, and a
    # closure that loops over nested functions (sharded_passes) deadlocks.
    config.inter_op_parallelism_threads = 2
  server = tf.distribute.Server(tf.train.ClusterSpec(spec), job_name=job, task_index=index,
                                protocol="grpc", config=config, start=True)
  server.join()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cluster_spec", required=True, help="The cluster's spec as JSON.")
  parser.add_argument("--job", required=True, choices=["worker", "ps"])
  parser.add_argument("--index", type=int, default=0, help="This task's index in its job.")
  parser.add_argument("--intra_op_threads", type=int, default=0,
                      help="TF intra-op threads (0: TF's default).")
  parser.add_argument("--cpu", type=int, default=-1,
                      help="Pin the server to this CPU core (-1: no pinning).")
  args = parser.parse_args()
  if args.cpu >= 0:
    # One core, whatever TF's inter-op pool and oneDNN do with their own threads.
    os.sched_setaffinity(0, {args.cpu})
  serve(json.loads(args.cluster_spec), args.job, args.index, args.intra_op_threads or None)


if __name__ == "__main__":
  main()
