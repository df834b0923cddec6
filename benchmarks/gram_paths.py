"""Gram-matrix benchmark: naive, reference, structured and auto paths vs the GEMM bound.

For each model and N (float32, CIFAR-10 inputs, or Gaussian inputs of the same
shape when the data is absent), in one run, each path in a fresh process:

  naive       tape.jacobian (pfor) of the N logits, then J J^T (one matmul);
              timed on min(N, naive_max_n) examples and, if smaller, scaled by
              (N / n)^2 (both its pfor Jacobian and its matmul grow as N^2)
  reference   ntk_tf.ntk_gram(implementation="jacobian")
  structured  the STRUCTURED BlockFn, per-layer cheaper form, block size from the
              budget (`ntk_tf.ntk.block_size`)
  auto        the AUTO BlockFn (`ntk_tf.ntk.auto`'s choice for that block size)
  bound       the cheapest exact contraction's FLOPs, sum_l min(structured_l,
              jacobian_l) counted for the N (N + 1) / 2 distinct entries, timed as
              one general GEMM [N, k] x [k, N] of the same FLOPs with the fastest
              matmul here (min over NumPy BLAS, TF and XLA)

Fast paths are timed after one untimed first run on the same data (tracing
excluded), as the best of `repeats` runs, each with the feature cache cleared.
Peak memory is the rise of the peak resident set (VmHWM) during the first run
above the resident set just before it: tracing and the result included, model
and data excluded. A fresh process per path, because one that already ran a
path keeps freed memory in its allocator (hiding the rise) and runs slower.
"""

import dataclasses
import multiprocessing
import time
from typing import Callable, Dict, List, Optional, Sequence

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from ntk_tf import models
from ntk_tf.ntk import block_size
from ntk_tf.ntk import gram
from ntk_tf.ntk import structured


@dataclasses.dataclass
class Row:
  model: str
  n: int
  seconds: Dict[str, Optional[float]]
  notes: Dict[str, str]
  peak_bytes: Dict[str, Optional[int]]
  contraction_flops: int
  gemm_bound_seconds: float
  block_size: int


def _seconds(fn: Callable[[], object]) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def full_gram(block_fn, x: np.ndarray, block: int) -> np.ndarray:
  """Returns Theta(x, x) [N, N] from diagonal and upper BlockFn calls, mirrored."""
  n = len(x)
  theta = np.empty((n, n), np.float32)
  for i in range(0, n, block):
    for j in range(i, n, block):
      xa, xb = x[i:i + block], x[j:j + block]
      out = block_fn(xa) if i == j else block_fn(xa, xb)
      theta[i:i + len(xa), j:j + len(xb)] = out
      if i != j:
        theta[j:j + len(xb), i:i + len(xa)] = out.T
  return theta


def naive_gram(model: keras.Model, x: np.ndarray) -> np.ndarray:
  """The naive baseline: J = tape.jacobian(f(x), theta) with pfor, then J J^T."""
  with tf.GradientTape() as tape:
    logits = tf.reshape(model(x, training=False), [-1])  # [N]
  jac = tape.jacobian(logits, model.trainable_variables, experimental_use_pfor=True)
  jac = tf.concat([tf.reshape(j, [len(x), -1]) for j in jac], axis=1)  # [N, P]
  return tf.matmul(jac, jac, transpose_b=True).numpy()  # [N, N]


def scale_to_flops(seconds: float, n: int, k: int, flops: int) -> float:
  """Time of a GEMM of `flops`, from `seconds` measured for [n, k] x [k, n] (2 n^2 k FLOPs).

  GEMM time is linear in k at fixed n, so the time scales by flops / (2 n^2 k).
  """
  return seconds * flops / (2 * n * n * k)


def gemm_seconds(flops: int, n: int, repeats: int = 3, max_bytes: int = 1 << 26) -> float:
  """Seconds of the fastest float32 GEMM [n, k] x [k, n] with 2 n^2 k = flops.

  k is capped so each operand stays under `max_bytes`; the time is then
  scaled linearly to `flops` (GEMM time is linear in k at fixed n).
  """
  k = max(1, min(int(round(flops / (2 * n * n))), max_bytes // (4 * n)))
  rng = np.random.default_rng(0)
  a = rng.normal(size=(n, k)).astype(np.float32)
  b = rng.normal(size=(n, k)).astype(np.float32)
  ta, tb = tf.constant(a), tf.constant(b)
  xla = tf.function(lambda u, v: tf.matmul(u, v, transpose_b=True), jit_compile=True)
  engines = {
      "numpy": lambda: a @ b.T,
      "tf": lambda: tf.matmul(ta, tb, transpose_b=True).numpy(),
      "xla": lambda: xla(ta, tb).numpy(),
  }
  best = float("inf")
  for fn in engines.values():
    fn()  # Warm-up (and XLA compile).
    for _ in range(repeats):
      start = time.perf_counter()
      fn()
      best = min(best, time.perf_counter() - start)
  return scale_to_flops(best, n, k, flops)


def inputs(input_shape: Sequence[int], n: int, data_dir: Optional[str]) -> np.ndarray:
  """Returns `[n, *input_shape]` float32 CIFAR-10 training inputs (Gaussian without the data)."""
  if data_dir:
    try:
      from ntk_tf import data  # pylint: disable=g-import-not-at-top
      return data.load("cifar10", data_dir=data_dir, train_size=n, test_size=10).x_train[:n] \
          .astype(np.float32)
    except Exception as err:  # pylint: disable=broad-except
      logging.warning("CIFAR-10 not loaded (%s); using Gaussian inputs.", err)
  return np.random.default_rng(0).normal(size=(n,) + tuple(input_shape)).astype(np.float32)


def _reference_gram(model, x: np.ndarray, block: int) -> np.ndarray:
  return gram.ntk_gram(model, x, block_size=block, implementation="jacobian", dtype="float32",
                       progress=False)


def _model_and_block(name: str, n: int, input_shape, memory_budget: int):
  """Returns (model, Gram block size) of one benchmark case."""
  model = models.get(name, input_shape=input_shape)
  block = block_size.block_size_for_budget(model, input_shape, memory_budget, "structured")
  return model, min(block, n)


def _path_fn(path: str, model, x: np.ndarray, block: int, naive_max_n: int):
  """Returns (run, m): `run()` computes the path's Gram on m <= N examples.

  The fast paths return their BlockFn's Gram of all N; `run.clear_cache`
  empties the BlockFn's feature cache (a no-op for BlockFns without one).
  """
  n = len(x)
  if path == "naive":
    m = min(n, naive_max_n)
    return (lambda: naive_gram(model, x[:m])), m
  if path == "reference":
    m = min(n, naive_max_n)
    return (lambda: _reference_gram(model, x[:m], min(block, m))), m
  options = {} if path == "structured" else {"nominal_block": block}
  block_fn = gram.make_block_fn(model, path, "float32", block, **options)
  run = lambda: full_gram(block_fn, x, block)
  cache = getattr(block_fn, "cache", None)
  run.clear_cache = cache.clear if cache is not None else (lambda: None)
  return run, n


def measure_path(name: str, n: int, path: str, input_shape, memory_budget: int,
                 naive_max_n: int, data_dir: Optional[str], repeats: int,
                 measure_memory: bool):
  """Times one path of one case; returns (seconds of each timed run, m, peak bytes or None).

  naive / reference: one run on m = min(N, naive_max_n) examples, timed (and
  its peak memory measured) as is. Fast paths: a first run on all N (tracing;
  its peak memory is the one reported), then `repeats` timed runs, each with
  the feature cache cleared. Runs this process; `bench_model` calls it in a
  fresh one per path.
  """
  model, block = _model_and_block(name, n, input_shape, memory_budget)
  x = inputs(input_shape, n, data_dir)
  run, m = _path_fn(path, model, x, block, naive_max_n)
  times = []
  timed = lambda: times.append(_seconds(run))
  slow = path in ("naive", "reference")
  first = timed if slow else run  # Fast paths: the first run traces, untimed.
  peak = peak_rss_of_call(first) if measure_memory else None
  if not measure_memory:
    first()
  if not slow:
    for _ in range(repeats):
      run.clear_cache()
      timed()
  return times, m, peak


def _status_kib(field: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise KeyError(field)


def peak_rss_of_call(fn: Callable, *args) -> Optional[int]:
  """Returns how many bytes the peak resident set rose above its level before `fn(*args)`.

  Resets the kernel's high-water mark (VmHWM) first; None without Linux /proc
  (fn still runs).
  In a process that already ran similar work, freed memory kept by the
  allocator hides part of the rise: use `run_in_fresh_process`.
  """
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")  # Resets VmHWM to the current resident set (Linux >= 4.0).
    before = _status_kib("VmRSS")
  except (OSError, KeyError):
    fn(*args)
    return None
  fn(*args)
  return (_status_kib("VmHWM") - before) * 1024


def run_in_fresh_process(fn: Callable, *args):
  """Returns `fn(*args)` computed in a newly spawned Python process (fn module-level)."""
  context = multiprocessing.get_context("spawn")
  with context.Pool(1) as pool:
    return pool.apply(fn, args)


def bench_model(name: str, n: int, *, input_shape=(32, 32, 3), memory_budget: int = 4 << 30,
                naive_max_n: int = 500, data_dir: Optional[str] = None,
                paths: Sequence[str] = ("naive", "reference", "structured", "auto"),
                repeats: int = 3, measure_memory: bool = True,
                fresh_process: bool = True) -> Row:
  """Times every path for one model and N (`measure_path`); returns one table row.

  With `fresh_process`, each path runs in its own newly spawned process, so no
  path runs in the allocator and thread state another left behind (the fast
  paths measured 10-30% slower after the naive one in the same process).
  """
  model, block = _model_and_block(name, n, input_shape, memory_budget)
  report = structured.flop_report(model, input_shape, n, n)
  flops = structured.contraction_flops(report, symmetric=True)
  seconds, notes, peak = {}, {}, {}
  for path in paths:
    logging.info("%s N=%d: %s", name, n, path)
    args = (name, n, path, tuple(input_shape), memory_budget, naive_max_n, data_dir, repeats,
            measure_memory)
    times, m, peak[path] = (run_in_fresh_process(measure_path, *args) if fresh_process
                            else measure_path(*args))
    seconds[path] = min(times) * (n / m) ** 2
    if m < n:
      notes[path] = f"extrapolated from N={m}"
  return Row(model=name, n=n, seconds=seconds, notes=notes, peak_bytes=peak,
             contraction_flops=flops, gemm_bound_seconds=gemm_seconds(flops, n),
             block_size=block)


def run(config) -> List[Row]:
  """Runs the benchmark described by `config` (see configs/bench_gram.py)."""
  rows = []
  for name, n in config["cases"]:
    rows.append(bench_model(name, n, memory_budget=config["memory_budget"],
                            naive_max_n=config["naive_max_n"][name],
                            data_dir=config.get("data_dir"), repeats=config["repeats"][name],
                            measure_memory=config["measure_memory"],
                            fresh_process=config["fresh_process"]))
    logging.info("row: %s", rows[-1])
  for n in config["scaling_ns"]:
    rows.append(bench_model("mlp", n, memory_budget=config["memory_budget"],
                            data_dir=config.get("data_dir"), paths=("auto",),
                            repeats=config["repeats"]["mlp"], measure_memory=False,
                            fresh_process=config["fresh_process"]))
    logging.info("row: %s", rows[-1])
  return rows


def format_table(rows: Sequence[Row]) -> str:
  """Returns the benchmark table (and the auto path's N-scaling) as text."""
  paths = ("naive", "reference", "structured", "auto")
  lines = ["model     N     block | " + " | ".join(f"{p:>11s} s (x naive)" for p in paths)
           + " | contraction GFLOP | GEMM bound s | structured/bound | auto/bound | "
           "peak MB (naive/ref/struct/auto)"]
  scaling = []
  for row in rows:
    if set(row.seconds) == {"auto"}:
      scaling.append(row)
      continue
    naive = row.seconds.get("naive")
    cells = []
    for p in paths:
      t = row.seconds.get(p)
      if t is None:
        cells.append(f"{row.notes.get(p, 'n/a'):>23s}")
      else:
        star = "*" if p in row.notes else " "
        cells.append(f"{t:10.3f}{star} ({naive / t:7.1f}x)" if naive else f"{t:10.3f}{star}")
    ratio = lambda p: (f"{row.seconds[p] / row.gemm_bound_seconds:16.2f}"
                       if row.seconds.get(p) else f"{'n/a':>16s}")
    mem = "/".join("n/a" if row.peak_bytes.get(p) is None else f"{row.peak_bytes[p] / 2**20:.0f}"
                   for p in paths)
    lines.append(f"{row.model:8s} {row.n:5d} {row.block_size:5d} | " + " | ".join(cells)
                 + f" | {row.contraction_flops / 1e9:17.2f} | {row.gemm_bound_seconds:12.3f} | "
                 + ratio("structured") + " | " + ratio("auto")[6:] + " | " + mem)
  lines.append("* extrapolated quadratically from a subset (see notes): "
               + "; ".join(f"{r.model} {p}: {r.notes[p]}" for r in rows for p in r.notes))
  if scaling:
    lines.append("auto path, MLP, growth with N:")
    previous = None
    for row in scaling:
      t = row.seconds["auto"]
      growth = f"  x{t / previous:.2f} vs N/2 (N^2 would be x4)" if previous else ""
      lines.append(f"  N={row.n:5d}  {t:8.3f} s  bound {row.gemm_bound_seconds:7.3f} s{growth}")
      previous = t
  return "\n".join(lines)
