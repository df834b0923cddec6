"""Scaling of the Gram on a localhost parameter-server cluster: 2 workers vs 1 worker.

    python -m benchmarks.distributed_scaling [--models=mlp,lenet] [--n=4000] [--block_size=256]
        [--workers=1,2] [--row_blocks=K] [--repeats=3]

For each model, the same Gram Theta(x, x) of N CIFAR-10 images (N = 4,000;
Gaussian inputs where the data is absent) is computed by `ntk_tf.distributed`
on `--cluster=local:1` and on `--cluster=local:2`, every worker with ONE
intra-op thread and pinned to its own core (worker i on core i; without
pinning TF's inter-op pool lets one worker use every core), each configuration
in a fresh coordinator process. Timed: `--repeats` Grams one after another
(`compute_gram`, each into a new store) after a warm-up Gram of the same
inputs on the same cluster, so cluster start, tracing and XLA compilation on
the workers, and sending the inputs to them, fixed costs of a job whatever
its size, are not counted (the timed Grams' stores have the warm-up's data
key, and the runner keeps the inputs resident: `ClusterRunner.start`). Each
closure carries up to `--row_blocks` blocks of one block row (default:
`cluster_runner.ROW_BLOCKS`). Printed: the machine's features; per configuration
the median Gram's seconds (all of them in brackets), the speedup of the
medians t(1 worker) / t(2 workers) (ideal 2.0), the CPU seconds the
coordinator, the parameter server and the workers used in the median Gram
(the coordinator and the parameter server share the machine's cores with the
workers, so their CPU bounds the speedup), whether the Grams are
byte-identical, and the machine's own ceiling measured in the same run
(`machine_parallel_speedup`: two independent single-threaded processes).
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from benchmarks import machine

_MODELS = flags.DEFINE_list("models", ["mlp", "lenet"], "Models to time.")
_N = flags.DEFINE_integer("n", 4000, "Samples in the Gram.", lower_bound=1)
_BLOCK_SIZE = flags.DEFINE_integer("block_size", 256, "Gram block size.", lower_bound=1)
_WORKERS = flags.DEFINE_list("workers", ["1", "2"], "Worker counts; the first is the baseline.")
_IMPLEMENTATION = flags.DEFINE_enum("implementation", "structured", ["structured", "jacobian"],
                                    "The device block's implementation.")
_ROW_BLOCKS = flags.DEFINE_integer("row_blocks", None, "Blocks of one row per closure "
                                   "(None: ClusterRunner's default).", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed Grams per configuration, one after another "
                                "on the same cluster; the median is reported.", lower_bound=1)
_PIN = flags.DEFINE_bool("pin_workers", True, "Pin worker i to core i (one core per worker).")
_CHILD = flags.DEFINE_string("child", None, "Internal: time one 'model:workers' and print JSON.")


def _inputs(n: int):
  """N CIFAR-10 training images (standardized), else Gaussian `[N, 32, 32, 3]`."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ntk_tf import data  # pylint: disable=g-import-not-at-top
  try:
    return data.load("cifar10", train_size=n, seed=0).x_train, "cifar10"
  except (FileNotFoundError, OSError, ValueError):
    return np.random.default_rng(0).normal(size=(n, 32, 32, 3)).astype("float32"), "gaussian"


def time_one(model_name: str, num_workers: int, n: int, block_size: int,
             implementation: str) -> dict:
  """Seconds of one Gram on a fresh `local:num_workers` cluster (1 intra-op thread per worker)."""
  from ntk_tf import models  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from ntk_tf.distributed import local_cluster  # pylint: disable=g-import-not-at-top
  from ntk_tf.distributed import gram_job  # pylint: disable=g-import-not-at-top
  from ntk_tf.distributed import cluster_runner  # pylint: disable=g-import-not-at-top
  # Connect first: variables made before connecting live on a device the cluster lacks.
  local = local_cluster.LocalCluster(num_workers, intra_op_threads=1, pin_workers=_PIN.value)
  strategy = tf.distribute.experimental.ParameterServerStrategy(local.cluster_resolver())
  x, source = _inputs(n)
  model = models.get(model_name, input_shape=x.shape[1:], seed=0)
  out = tempfile.mkdtemp(prefix=f"scaling_{model_name}_{num_workers}_")
  try:
    row_blocks = {} if _ROW_BLOCKS.value is None else {"row_blocks": _ROW_BLOCKS.value}
    with cluster_runner.ClusterRunner(model, implementation, "float32", strategy,
                                      num_workers, **row_blocks) as runner:
      kwargs = dict(block_size=block_size, implementation=implementation, progress=False)
      # The same shapes as the timed Gram: its traces and XLA programs are then made.
      gram_job.compute_gram(os.path.join(out, "warm_up"), model, x, runner, **kwargs)
      runs = []  # (seconds, coordinator CPU s, {task: CPU s}) of each timed Gram
      for repeat in range(_REPEATS.value):
        start, start_cpu, servers = time.perf_counter(), time.process_time(), local.cpu_seconds()
        store = gram_job.compute_gram(os.path.join(out, f"gram{repeat}"), model, x, runner,
                                      **kwargs)
        seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        runs.append((seconds, cpu, {name: s - servers.get(name, 0.0)
                                    for name, s in local.cpu_seconds().items()}))
  finally:
    local.close()
  seconds, cpu, servers = sorted(runs, key=lambda run: run[0])[len(runs) // 2]  # the median
  return {"model": model_name, "workers": num_workers, "n": n, "blocks": store.num_blocks,
          "seconds": seconds, "all_seconds": [run[0] for run in runs],
          "coordinator_cpu_s": cpu, "data": source, "row_blocks": runner.row_blocks,
          "ps_cpu_s": servers.get("ps:0", float("nan")),
          "worker_cpu_s": sum(s for name, s in servers.items() if name.startswith("worker")),
          "gram": str(store.matrix_path)}


# A fixed single-threaded float32 GEMM workload (about 2 s on one core), for
# `machine_parallel_speedup`.
_GEMM_LOOP = ("import os, sys, time, numpy as np; os.sched_setaffinity(0, {int(sys.argv[1])}); "
              "a = np.random.default_rng(0).normal(size=(512, 512)).astype('float32'); "
              "[a @ a for _ in range(1500)]")


def machine_parallel_speedup() -> float:
  """t(one GEMM loop on core 0) * 2 / t(two loops at once on cores 0 and 1).

  The speedup two independent single-threaded processes get on the machine it runs on
  (2.0 on two free physical cores; less when the cores share execution units or
  other jobs run): the ceiling for the 2-worker speedup measured in the same run.
  """
  env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

  def wall(cores) -> float:
    start = time.perf_counter()
    processes = [subprocess.Popen([sys.executable, "-c", _GEMM_LOOP, str(core)], env=env)
                 for core in cores]
    for process in processes:
      process.wait()
    return time.perf_counter() - start

  return 2 * wall([0]) / wall([0, 1 % os.cpu_count()])


def run_json_child(module: str, args, what: str) -> dict:
  """Runs `python -m module *args` in a fresh process; returns the last JSON line it printed.

  Raises RuntimeError naming `what`, with the end of its stderr, if it fails or prints none.
  """
  command = [sys.executable, "-m", module, *args]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
  done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
  lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
  if done.returncode or not lines:
    raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stderr[-3000:]}")
  return json.loads(lines[-1])


def _run_child(spec: str) -> dict:
  return run_json_child("benchmarks.distributed_scaling", [
      f"--child={spec}", f"--n={_N.value}", f"--block_size={_BLOCK_SIZE.value}",
      f"--implementation={_IMPLEMENTATION.value}", f"--pin_workers={_PIN.value}",
      f"--repeats={_REPEATS.value}"]
      + ([f"--row_blocks={_ROW_BLOCKS.value}"] if _ROW_BLOCKS.value else []), spec)


def main(argv):
  del argv
  if _CHILD.value:
    model_name, workers = _CHILD.value.split(":")
    print(json.dumps(time_one(model_name, int(workers), _N.value, _BLOCK_SIZE.value,
                              _IMPLEMENTATION.value)))
    return
  print(machine.format_features(machine.features()))
  print(f"load average before: {os.getloadavg()}")
  print(f"The machine's ceiling before (see below): {machine_parallel_speedup():.2f}x")
  print(f"Gram of N={_N.value}, blocks of {_BLOCK_SIZE.value}, {_IMPLEMENTATION.value}, "
        f"float32; each worker 1 intra-op thread, pinned to a core: {_PIN.value}; "
        f"--cluster=local:W; the median of {_REPEATS.value} timed Gram(s) per configuration "
        f"(all of them in brackets), its CPU seconds\n")
  print(f"{'model':8} {'workers':>7} {'blocks':>6} {'seconds':>9} {'speedup':>8} "
        f"{'bytes == baseline':>18} {'CPU s: coordinator':>18} {'ps':>5} {'workers':>7}")
  for model_name in _MODELS.value:
    baseline = None
    for workers in _WORKERS.value:
      row = _run_child(f"{model_name}:{workers}")
      with open(row["gram"], "rb") as f:
        gram_bytes = f.read()
      if baseline is None:
        baseline = (row["seconds"], gram_bytes)
      print(f"{model_name:8} {workers:>7} {row['blocks']:>6} {row['seconds']:>9.2f} "
            f"{baseline[0] / row['seconds']:>7.2f}x {str(gram_bytes == baseline[1]):>18}"
            f" {row['coordinator_cpu_s']:>18.2f} {row['ps_cpu_s']:>5.2f} {row['worker_cpu_s']:>7.2f}"
            f"   [{', '.join(f'{t:.2f}' for t in row['all_seconds'])}] ({row['data']}; "
            f"{row['row_blocks']} blocks per closure)", flush=True)
  print(f"\nThe machine's ceiling after: two single-threaded GEMM loops on cores 0 and 1 "
        f"vs one: {machine_parallel_speedup():.2f}x")
  print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
  app.run(main)
