"""Scaling of the sharded alignment (Lemma 1) on a localhost cluster: 2 workers vs 1 worker.

    python -m benchmarks.sharded_alignment_scaling [--model=mlp] [--n=4000] [--m=100] [--workers=1,2]

alpha(phi_c) = ||(1/N) J^T phi_c||^2 for m Gaussian label columns on N CIFAR-10
images (Gaussian inputs where the data is absent), by
`ntk_tf.distributed.sharded_passes.sharded_alignment` on `local:1` and on
`local:2` (one shard per worker), every worker with ONE intra-op thread and
pinned to its own core, each configuration in a fresh coordinator process.
Timed: the last of `--passes` identical passes (default 2: the first also
traces the functions and ships them to the workers). Printed: the machine's features,
seconds per configuration, the speedup t(1 worker) / t(2 workers) (ideal
2.0), the largest relative difference of the alphas from the baseline's (the
sum over examples is split differently: not bytewise), and the machine's own
two-process ceiling measured in the same run
(`distributed_scaling.machine_parallel_speedup`).
"""

import json
import os
import time

from absl import app
from absl import flags

from benchmarks import distributed_scaling
from benchmarks import machine

# --n (samples) and --workers (worker counts, the first the baseline) are
# distributed_scaling's flags, shared.
_N = distributed_scaling._N  # pylint: disable=protected-access
_WORKERS = distributed_scaling._WORKERS  # pylint: disable=protected-access
_MODEL = flags.DEFINE_string("model", "mlp", "Model to time.")
_M = flags.DEFINE_integer("m", 100, "Label columns (functions).", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Examples per VJP batch.", lower_bound=1)
_PASSES = flags.DEFINE_integer("passes", 2, "Identical passes; the last is timed.", lower_bound=1)
_ALIGNMENT_CHILD = flags.DEFINE_integer("alignment_child", None,
                                        "Internal: time one worker count, print JSON.")


def time_one(num_workers: int) -> dict:
  """Seconds of one sharded alignment on a fresh `local:num_workers` cluster."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from ntk_tf import models  # pylint: disable=g-import-not-at-top
  from ntk_tf import validation  # pylint: disable=g-import-not-at-top
  from ntk_tf.distributed import local_cluster  # pylint: disable=g-import-not-at-top
  from ntk_tf.distributed import cluster_runner  # pylint: disable=g-import-not-at-top
  from ntk_tf.distributed import sharded_passes  # pylint: disable=g-import-not-at-top
  # Connect first: variables made before connecting live on a device the cluster lacks.
  local = local_cluster.LocalCluster(num_workers, intra_op_threads=1, pin_workers=True)
  strategy = tf.distribute.experimental.ParameterServerStrategy(local.cluster_resolver())
  x, source = distributed_scaling._inputs(_N.value)  # pylint: disable=protected-access
  labels = np.random.default_rng(1).normal(size=(_N.value, _M.value))  # [N, m]
  model = models.get(_MODEL.value, input_shape=x.shape[1:], seed=0)
  try:
    with cluster_runner.ClusterRunner(model, "jacobian", "float32", strategy,
                                      num_workers) as runner:
      seconds = []
      for _ in range(_PASSES.value):
        start = time.perf_counter()
        alphas = sharded_passes.sharded_alignment(runner, x, labels,
                                                  batch_size=_BATCH_SIZE.value)
        seconds.append(time.perf_counter() - start)
  finally:
    local.close()
  return {"workers": num_workers, "first_seconds": seconds[0], "seconds": seconds[-1],
          "alphas": alphas.tolist(), "params": validation.parameter_count(model), "data": source}


def _run_child(workers: str) -> dict:
  return distributed_scaling.run_json_child("benchmarks.sharded_alignment_scaling", [
      f"--alignment_child={workers}", f"--model={_MODEL.value}", f"--n={_N.value}",
      f"--m={_M.value}", f"--batch_size={_BATCH_SIZE.value}", f"--passes={_PASSES.value}"],
      f"local:{workers}")


def main(argv):
  del argv
  if _ALIGNMENT_CHILD.value:
    print(json.dumps(time_one(_ALIGNMENT_CHILD.value)))
    return
  import numpy as np  # pylint: disable=g-import-not-at-top
  print(machine.format_features(machine.features()))
  print(f"load average before: {os.getloadavg()}")
  print(f"Sharded alignment of m={_M.value} functions, {_MODEL.value}, N={_N.value}, "
        f"batches of {_BATCH_SIZE.value}, float32; each worker 1 intra-op thread, pinned to "
        f"its own core; one shard per worker; --cluster=local:W\n")
  print(f"{'workers':>7} {'first s':>8} {'seconds':>8} {'speedup':>8} {'max rel diff':>13}")
  baseline = None
  for workers in _WORKERS.value:
    row = _run_child(workers)
    alphas = np.asarray(row["alphas"])
    if baseline is None:
      baseline = (row["seconds"], alphas)
    rel = np.max(np.abs(alphas - baseline[1]) / np.abs(baseline[1]))
    print(f"{workers:>7} {row['first_seconds']:>8.1f} {row['seconds']:>8.1f} "
          f"{baseline[0] / row['seconds']:>7.2f}x {rel:>13.2e}   "
          f"(P={row['params']}, {row['data']})", flush=True)
  print(f"\nThe machine's ceiling: two single-threaded GEMM loops on cores 0 and 1 vs one: "
        f"{distributed_scaling.machine_parallel_speedup():.2f}x")
  print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
  app.run(main)
