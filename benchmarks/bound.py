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
        --out=docs/performance.md
"""

import os
import pathlib
import time
from typing import Dict, List, Mapping, Optional, Sequence

from absl import app
from absl import flags

from benchmarks import machine
from benchmarks import rows as result_rows

COLUMNS = ("commit", "model", "n", "flops_per_pair", "gemm_numpy_gflops", "gemm_tf_gflops",
           "bound_s", "time_s", "ratio", "cpu", "avx512", "onednn", "blas", "load_avg")


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
  features = machine.features()
  rates = gemm_rates(gemm_n)
  best_rate = max(rates.values())
  commit = result_rows.commit()
  rows = []
  for name in models:
    model = ntk_tf.models.get(name, input_shape=x.shape[1:], seed=0)
    per_pair = pair_flops(model)
    bound = gram_bound_s(len(x), per_pair, best_rate)
    seconds = time_gram(model, x, repeats)
    rows.append({
        "commit": commit, "model": name, "n": len(x), "flops_per_pair": per_pair,
        "gemm_numpy_gflops": f"{rates['numpy']:.1f}", "gemm_tf_gflops": f"{rates['tensorflow']:.1f}",
        "bound_s": f"{bound:.3f}", "time_s": f"{seconds:.3f}", "ratio": f"{seconds / bound:.2f}",
        "cpu": features["CPU"], "avx512": features["AVX-512"],
        "onednn": features["TF oneDNN"].split()[0], "blas": features["NumPy BLAS"],
        "load_avg": f"{os.getloadavg()[0]:.1f}"})
  return rows


def append_rows(path: os.PathLike, rows: Sequence[Mapping[str, object]]) -> None:
  """Appends `rows` to the CSV at `path` (header written when the file is new)."""
  result_rows.append_rows(path, rows, COLUMNS)


def render(csv_path: os.PathLike) -> str:
  """docs/performance.md from the CSV alone: the rule, then one table row per measurement."""
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
  return "\n".join(lines) + "\n"


_MODELS = flags.DEFINE_list("models", ["mlp", "lenet"], "Models to time.")
_N = flags.DEFINE_integer("n", 4000, "Examples in the Gram.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder with cifar10.npz (else Gaussian).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed Grams per model (the best is kept).")
_GEMM_N = flags.DEFINE_integer("gemm_n", 4096, "Side of the GEMM that measures R.")
_CSV = flags.DEFINE_string("csv", None, "CSV to append the rows to (or to render from).")
_RENDER = flags.DEFINE_bool("render", False, "Only write --out from --csv.")
_OUT = flags.DEFINE_string("out", "docs/performance.md", "The page --render writes.")

flags.register_validator("n", lambda v: v > 0, "--n must be positive")
flags.register_validator("repeats", lambda v: v > 0, "--repeats must be positive")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _RENDER.value:
    if not _CSV.value:
      raise app.UsageError("--render needs --csv")
    pathlib.Path(_OUT.value).write_text(render(_CSV.value))
    print(f"wrote {_OUT.value}")
    return
  print(machine.format_features(machine.features()))
  rows = measure(_MODELS.value, _N.value, _DATA_DIR.value, _REPEATS.value, _GEMM_N.value)
  for r in rows:
    print(", ".join(f"{k}={r[k]}" for k in COLUMNS[1:9]))
  if _CSV.value:
    append_rows(_CSV.value, rows)
    print(f"appended {len(rows)} rows to {_CSV.value}")


if __name__ == "__main__":
  app.run(main)
