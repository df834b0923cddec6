r"""The Gram against the machine's own limit: FLOPs per pair, the GEMM rate, the ratio.

A Gram entry Theta[i, j] needs, per pair of examples, at least

    dense layer, a inputs, b units:   2 (a + b)   (x_i^T x_j and g_i^T g_j, the structured form)
    any other layer with P_l weights: 2 P_l       (its per-example gradients contracted)

FLOPs, so a symmetric N-sample Gram needs at least

    bound_s = N (N + 1) / 2 * flops_per_pair / R

seconds, with R the machine's fp32 GEMM rate, measured in the same process (the best of
NumPy's and TensorFlow's matmul on 4096^2 matrices). The benchmark times `ntk_gram`
(auto, float32, default blocks; best of `--repeats` after one warm-up Gram) and prints and
appends to a CSV, per model: flops_per_pair, both GEMM rates, the bound, the time and
time / bound, with the CPU's features (benchmarks/machine.py). `--render` writes
docs/performance.md from that CSV alone.

    .venv/bin/python -m benchmarks.bound --models=mlp,lenet --n=4000 \
        --data_dir=../shared/data --csv=docs/performance.csv
    .venv/bin/python -m benchmarks.bound --render --csv=docs/performance.csv \
        --step_csv=docs/performance_step.csv --out=docs/performance.md

The training step (`--step`, rows to `--step_csv`): one `ntk_tf.train` step of the network
(SGD, batch `--batch_size`, timed as `train` runs its steps) against

    step_bound_s = B * sum_l (2 or 3) * F_l / R,   F_l = 2 a b (dense), 2 P' K C (conv)

with F_l the forward multiply-adds x 2 of a layer per example (P' output positions, K the
patch length, C output channels), counted three times (forward, weight gradient, input
gradient), except twice for the first layer (no input gradient). Activations, pooling,
the loss and the update are not counted.

    .venv/bin/python -m benchmarks.bound --step --models=mlp,lenet \
        --data_dir=../shared/data --step_csv=docs/performance_step.csv
"""

import os
import pathlib
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from absl import app
from absl import flags

from benchmarks import machine
from benchmarks import rows as result_rows

COLUMNS = ("commit", "model", "n", "flops_per_pair", "gemm_numpy_gflops", "gemm_tf_gflops",
           "bound_s", "time_s", "ratio", "cpu", "avx512", "onednn", "blas", "load_avg")
STEP_COLUMNS = ("commit", "model", "batch", "step_gflop", "gemm_numpy_gflops", "gemm_tf_gflops",
                "bound_ms", "time_ms", "ratio", "cpu", "avx512", "onednn", "blas", "load_avg")


def pair_flops(model) -> int:
  """FLOPs per pair of examples of the structured Gram entry (the rule above), summed."""
  import keras  # pylint: disable=g-import-not-at-top
  total = 0
  for layer in model.layers:
    params = sum(_prod(w.shape) for w in layer.trainable_weights)
    if not params:
      continue
    if isinstance(layer, keras.layers.Dense):
      inputs = int(layer.kernel.shape[0])
      total += 2 * (inputs + layer.units)
    else:
      total += 2 * params
  return total


def _prod(shape) -> int:
  out = 1
  for s in shape:
    out *= int(s)
  return out


def step_flops(model, batch: int) -> int:
  """FLOPs of one training step at `batch` by the rule in the module docstring."""
  import keras  # pylint: disable=g-import-not-at-top
  per_example, first = 0, True
  for layer in model.layers:
    if isinstance(layer, keras.layers.Dense):
      forward = 2 * int(layer.kernel.shape[0]) * layer.units
    elif isinstance(layer, keras.layers.Conv2D):
      positions = _prod(layer.output.shape[1:-1])  # H' W'
      forward = 2 * positions * _prod(layer.kernel.shape)  # 2 P' K C
    else:
      if any(_prod(w.shape) for w in layer.trainable_weights):
        raise ValueError(f"step_flops counts Dense and Conv2D layers only. Received: layer "
                         f"{layer.name!r} ({type(layer).__name__}) with weights")
      continue
    per_example += (2 if first else 3) * forward
    first = False
  return batch * per_example


def gram_bound_s(n: int, flops_per_pair: int, gflops: float) -> float:
  """N (N + 1) / 2 * flops_per_pair / R seconds, R in GFLOP/s."""
  return n * (n + 1) / 2 * flops_per_pair / (gflops * 1e9)


def gemm_rates(n: int = 4096, repeats: int = 3) -> Dict[str, float]:
  """fp32 GEMM rate of NumPy and of TensorFlow in GFLOP/s, best of `repeats` (one warm-up)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  a = rng.standard_normal((n, n), dtype=np.float32)
  b = rng.standard_normal((n, n), dtype=np.float32)
  flops = 2.0 * n ** 3

  def best(fn) -> float:
    fn()
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
    return flops / min(times) / 1e9

  ta, tb = tf.constant(a), tf.constant(b)
  return {"numpy": best(lambda: a @ b),
          "tensorflow": best(lambda: tf.linalg.matmul(ta, tb).numpy())}


def time_gram(model, x, repeats: int = 3) -> float:
  """Best wall time of `ntk_gram(model, x)` over `repeats` calls, after one warm-up call."""
  import ntk_tf  # pylint: disable=g-import-not-at-top
  ntk_tf.ntk_gram(model, x, progress=False)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    ntk_tf.ntk_gram(model, x, progress=False)
    times.append(time.perf_counter() - start)
  return min(times)


def _machine_columns(gemm_n: int) -> Tuple[Dict[str, object], float]:
  """(the columns every row shares: commit, GEMM rates, CPU features; R in GFLOP/s)."""
  features = machine.features()
  rates = gemm_rates(gemm_n)
  return {"commit": result_rows.commit(),
          "gemm_numpy_gflops": f"{rates['numpy']:.1f}",
          "gemm_tf_gflops": f"{rates['tensorflow']:.1f}",
          "cpu": features["CPU"], "avx512": features["AVX-512"],
          "onednn": features["TF oneDNN"].split()[0], "blas": features["NumPy BLAS"]}, max(
              rates.values())


def measure(models: Sequence[str], n: int, data_dir: Optional[str], repeats: int,
            gemm_n: int) -> List[Dict[str, object]]:
  """One row per model (COLUMNS): the Gram of `n` CIFAR-10 images (or Gaussian inputs)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import ntk_tf  # pylint: disable=g-import-not-at-top
  if data_dir:
    data = ntk_tf.data.load("cifar10", data_dir=data_dir, train_size=n, test_size=1)
    x = data.x_train
  else:
    x = np.random.default_rng(0).standard_normal((n, 32, 32, 3)).astype(np.float32)
  shared, best_rate = _machine_columns(gemm_n)
  rows = []
  for name in models:
    model = ntk_tf.models.get(name, input_shape=x.shape[1:], seed=0)
    per_pair = pair_flops(model)
    bound = gram_bound_s(len(x), per_pair, best_rate)
    seconds = time_gram(model, x, repeats)
    rows.append({**shared, "model": name, "n": len(x), "flops_per_pair": per_pair,
                 "bound_s": f"{bound:.3f}", "time_s": f"{seconds:.3f}",
                 "ratio": f"{seconds / bound:.2f}", "load_avg": f"{os.getloadavg()[0]:.1f}"})
  return rows


def measure_step(models: Sequence[str], batch: int, data_dir: Optional[str], repeats: int,
                 gemm_n: int) -> List[Dict[str, object]]:
  """One row per model (STEP_COLUMNS): the network's training step on a CIFAR-2 batch."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import ntk_tf  # pylint: disable=g-import-not-at-top
  from benchmarks import step_timing  # pylint: disable=g-import-not-at-top
  if data_dir:
    data = ntk_tf.data.load("cifar2", data_dir=data_dir, train_size=batch, test_size=1)
    x, y = data.x_train, data.y_train
  else:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 32, 32, 3)).astype(np.float32)
    y = np.where(rng.random(batch) < 0.5, -1.0, 1.0).astype(np.float32)
  shared, best_rate = _machine_columns(gemm_n)
  rows = []
  for name in models:
    model = ntk_tf.models.get(name, input_shape=x.shape[1:], seed=0)
    flops = step_flops(model, len(x))
    seconds = min(step_timing.time_train_step(model, x, y) for _ in range(repeats))
    bound = flops / (best_rate * 1e9)
    rows.append({**shared, "model": name, "batch": len(x), "step_gflop": f"{flops / 1e9:.3f}",
                 "bound_ms": f"{1e3 * bound:.2f}", "time_ms": f"{1e3 * seconds:.2f}",
                 "ratio": f"{seconds / bound:.2f}", "load_avg": f"{os.getloadavg()[0]:.1f}"})
  return rows


def append_rows(path: os.PathLike, rows: Sequence[Mapping[str, object]]) -> None:
  """Appends `rows` to the CSV at `path` (header written when the file is new)."""
  result_rows.append_rows(path, rows, COLUMNS)


def render(csv_path: os.PathLike, step_csv_path: Optional[os.PathLike] = None) -> str:
  """docs/performance.md from the CSVs alone: each rule, then one table row per measurement."""
  rows = result_rows.read_rows(csv_path)
  lines = [
      "# Performance",
      "",
      "Generated by `python -m benchmarks.bound --render` from `docs/performance.csv`; rows are",
      "appended by `python -m benchmarks.bound` (see its docstring). The bound is",
      "N (N + 1) / 2 x FLOPs per pair / R, with FLOPs per pair 2 (a + b) for a dense layer",
      "of a inputs and b units and 2 P for any other layer of P weights, and R the best fp32",
      "GEMM rate of NumPy and TensorFlow measured in the same process. `ntk_gram` is timed",
      "with its defaults (auto, float32), the best of `--repeats` (3) after a warm-up; `load` is",
      "the 1-minute load average when the row was measured (2 or more: other work shared the",
      "machine, and the ratio is pessimistic).",
      "",
      "| commit | model | N | FLOPs / pair | GEMM NumPy / TF, GFLOP/s | bound s | time s | "
      "time / bound | CPU | AVX-512 | oneDNN | load |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for r in rows:
    lines.append(f"| {r['commit']} | {r['model']} | {int(r['n']):,} | {int(r['flops_per_pair']):,} | "
                 f"{r['gemm_numpy_gflops']} / {r['gemm_tf_gflops']} | {r['bound_s']} | "
                 f"{r['time_s']} | {r['ratio']} | {r['cpu']} | {r['avx512']} | {r['onednn']} | "
                 f"{r['load_avg']} |")
  if step_csv_path is not None:
    lines += [
        "",
        "## Training step",
        "",
        "Rows from `docs/performance_step.csv`, appended by `python -m benchmarks.bound --step`.",
        "One `ntk_tf.train` step of the network (SGD, the batch shown, 20 steps per call as",
        "`train` runs them, the best of `--repeats`). The bound is B x sum_l (2 or 3) x F_l / R,",
        "with F_l = 2 a b for a dense layer and 2 P' K C for a conv (P' output positions, K the",
        "patch length, C channels): forward, weight and input gradient, and no input gradient",
        "for the first layer. `oneDNN` is TensorFlow's kernel choice in that row (the experiment",
        "binaries turn it on unless `TF_ENABLE_ONEDNN_OPTS` is set: binaries/engine_defaults.py).",
        "",
        "| commit | model | batch | GFLOP / step | GEMM NumPy / TF, GFLOP/s | bound ms | time ms | "
        "time / bound | CPU | AVX-512 | oneDNN | load |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result_rows.read_rows(step_csv_path):
      lines.append(f"| {r['commit']} | {r['model']} | {r['batch']} | {r['step_gflop']} | "
                   f"{r['gemm_numpy_gflops']} / {r['gemm_tf_gflops']} | {r['bound_ms']} | "
                   f"{r['time_ms']} | {r['ratio']} | {r['cpu']} | {r['avx512']} | "
                   f"{r['onednn']} | {r['load_avg']} |")
  return "\n".join(lines) + "\n"


_MODELS = flags.DEFINE_list("models", ["mlp", "lenet"], "Models to time.")
_N = flags.DEFINE_integer("n", 4000, "Examples in the Gram.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder with cifar10.npz (else Gaussian).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed Grams per model (the best is kept).")
_GEMM_N = flags.DEFINE_integer("gemm_n", 4096, "Side of the GEMM that measures R.")
_CSV = flags.DEFINE_string("csv", None, "CSV to append the rows to (or to render from).")
_STEP = flags.DEFINE_bool("step", False, "Time the training step instead of the Gram.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Examples per step (--step; App. A: 128).")
_STEP_CSV = flags.DEFINE_string("step_csv", None, "CSV of the step rows (--step; --render).")
_RENDER = flags.DEFINE_bool("render", False, "Only write --out from --csv.")
_OUT = flags.DEFINE_string("out", "docs/performance.md", "The page --render writes.")

flags.register_validator("n", lambda v: v > 0, "--n must be positive")
flags.register_validator("repeats", lambda v: v > 0, "--repeats must be positive")
flags.register_validator("batch_size", lambda v: v > 0, "--batch_size must be positive")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _RENDER.value:
    if not _CSV.value:
      raise app.UsageError("--render needs --csv")
    pathlib.Path(_OUT.value).write_text(render(_CSV.value, _STEP_CSV.value))
    print(f"wrote {_OUT.value}")
    return
  print(machine.format_features(machine.features()))
  if _STEP.value:
    rows = measure_step(_MODELS.value, _BATCH_SIZE.value, _DATA_DIR.value, _REPEATS.value,
                        _GEMM_N.value)
    for r in rows:
      print(", ".join(f"{k}={r[k]}" for k in STEP_COLUMNS[1:9]))
    if _STEP_CSV.value:
      result_rows.append_rows(_STEP_CSV.value, rows, STEP_COLUMNS)
      print(f"appended {len(rows)} rows to {_STEP_CSV.value}")
    return
  rows = measure(_MODELS.value, _N.value, _DATA_DIR.value, _REPEATS.value, _GEMM_N.value)
  for r in rows:
    print(", ".join(f"{k}={r[k]}" for k in COLUMNS[1:9]))
  if _CSV.value:
    append_rows(_CSV.value, rows)
    print(f"appended {len(rows)} rows to {_CSV.value}")


if __name__ == "__main__":
  app.run(main)
