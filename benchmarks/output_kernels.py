r"""Time and memory of each output kernel of a K-logit model, against K^2 one-logit Grams.

For the MLP and LeNet with K logits (default 10) on N CIFAR-10 images, per output kernel of
`ntk_gram(model, x, output_kernel=...)` ("full" [N, N, K, K], "diagonal" [N, N, K], "trace"
and "pseudo" [N, N]) and for the one-logit model's Gram ("one_logit", the same architecture
with K = 1): the best wall time of `--repeats` after a warm-up, the peak resident memory
while computing it (the process's VmHWM, reset through /proc/self/clear_refs before each
kernel, minus its value at the reset), the result's bytes, and

    vs_one_logit = time / time(one_logit),
    vs_k2_grams  = time / (K^2 time(one_logit))   (for "full": what K^2 separate
                                                    one-logit Grams would cost)

Rows are printed and, with `--csv`, appended with the CPU's features (benchmarks/machine.py).
`--export=F.npz` also writes what benchmarks/neural_tangents_peer.py needs to time the same
kernels in neural-tangents (`--output_kernels` there): weights, inputs and ntk_tf's Grams.

    .venv/bin/python -m benchmarks.output_kernels --models=mlp,lenet --n=1000 \
        --data_dir=../shared/data --export=/tmp/peer_k.npz
    /tmp/peer/bin/python benchmarks/neural_tangents_peer.py /tmp/peer_k.npz --output_kernels
"""

import io
import time
from typing import Dict, List, Sequence, Tuple

from absl import app
from absl import flags
import numpy as np

from benchmarks import gram_paths
from benchmarks import machine
from benchmarks import rows as rows_lib
from ntk_tf import atomic
from ntk_tf import models
from ntk_tf.ntk import gram

KERNELS = ("one_logit", "full", "diagonal", "trace", "pseudo")
COLUMNS = ("commit", "model", "n", "num_outputs", "output_kernel", "seconds", "peak_mib",
           "result_mib", "vs_one_logit", "vs_k2_grams", "cpu", "avx512", "onednn", "blas",
           "openblas_coretype")

_MODELS = flags.DEFINE_list("models", ["mlp", "lenet"], "Models (mlp, lenet).")
_N = flags.DEFINE_integer("n", 1000, "Examples N of each Gram.")
_K = flags.DEFINE_integer("num_outputs", 10, "Logits K.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed Grams per kernel (best is kept).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "CIFAR-10 folder (else synthetic inputs).")
_CSV = flags.DEFINE_string("csv", None, "Append the rows to this CSV.")
_EXPORT = flags.DEFINE_string("export", None, "Write the neural-tangents peer's .npz here.")


def _peak_kib() -> int:
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def _reset_peak() -> None:
  """Sets VmHWM to the current resident size (Linux >= 4.0)."""
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")


def measure(model_name: str, n: int, num_outputs: int, x: np.ndarray,
            repeats: int) -> Tuple[List[dict], Dict[str, np.ndarray], object]:
  """(rows, grams, model): a row and the Gram per kernel of `KERNELS`, and the K-logit model."""
  shape = x.shape[1:]
  nets = {"one_logit": models.get(model_name, input_shape=shape, seed=0),
          "k": models.get(model_name, input_shape=shape, seed=0, outputs=num_outputs)}
  rows, grams = [], {}
  for kernel in KERNELS:
    model = nets["one_logit" if kernel == "one_logit" else "k"]
    options = dict(implementation="auto", progress=False,
                   output_kernel=None if kernel == "one_logit" else kernel)
    grams[kernel] = gram.ntk_gram(model, x, **options)  # Warm-up (traces, engine choice).
    best = float("inf")
    _reset_peak()
    before = _peak_kib()  # The resident size at the reset: VmHWM only grows from it.
    for _ in range(repeats):
      start = time.perf_counter()
      result = gram.ntk_gram(model, x, **options)
      best = min(best, time.perf_counter() - start)
      del result
    rows.append({"model": model_name, "n": n, "num_outputs": num_outputs,
                 "output_kernel": kernel, "seconds": best,
                 "peak_mib": (_peak_kib() - before) / 1024,
                 "result_mib": grams[kernel].nbytes / 2**20})
  base = rows[0]["seconds"]
  for row in rows:
    row["vs_one_logit"] = row["seconds"] / base
    row["vs_k2_grams"] = row["seconds"] / (num_outputs ** 2 * base)
  return rows, grams, nets["k"]


def export(path: str, arrays: Dict[str, np.ndarray]) -> str:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  atomic.write_bytes(path, buffer.getvalue())
  return path


def main(argv: Sequence[str]) -> None:
  del argv
  values = machine.features()
  print(machine.format_features(values))
  columns = {"cpu": values["CPU"], "avx512": values["AVX-512"],
             "onednn": values["TF oneDNN"].split()[0], "blas": values["NumPy BLAS"],
             "openblas_coretype": values["OPENBLAS_CORETYPE"]}
  print(f"{'model':<7}{'N':>6}{'K':>4} {'kernel':<10}{'s':>9}{'peak MiB':>10}{'result MiB':>11}"
        f"{'/one-logit':>11}{'/K^2 grams':>11}")
  all_rows: List[dict] = []
  arrays: Dict[str, np.ndarray] = {}
  for name in _MODELS.value:
    x = gram_paths.inputs((32, 32, 3), _N.value, _DATA_DIR.value)[:_N.value]
    rows, grams, model = measure(name, _N.value, _K.value, x, _REPEATS.value)
    for r in rows:
      print(f"{r['model']:<7}{r['n']:>6}{r['num_outputs']:>4} {r['output_kernel']:<10}"
            f"{r['seconds']:>9.3f}{r['peak_mib']:>10.0f}{r['result_mib']:>11.0f}"
            f"{r['vs_one_logit']:>11.2f}{r['vs_k2_grams']:>11.3f}")
    all_rows += rows
    if _EXPORT.value:
      arrays[f"x_{name}"] = x
      for kernel in KERNELS[1:]:
        arrays[f"gram_{name}_{kernel}"] = grams[kernel]
      for i, weight in enumerate(model.trainable_weights):
        arrays[f"w_{name}_{i}"] = np.asarray(weight.numpy(), np.float32)
  if _CSV.value:
    commit = rows_lib.commit()
    rows_lib.append_rows(_CSV.value, [{**r, "commit": commit, **columns} for r in all_rows],
                         COLUMNS)
  if _EXPORT.value:
    print(f"exported: {export(_EXPORT.value, arrays)}")


if __name__ == "__main__":
  app.run(main)
