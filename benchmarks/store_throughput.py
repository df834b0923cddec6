r"""GramStore vs in-memory `ntk_gram`: the price of a resumable Gram on disk.

    .venv/bin/python -m benchmarks.store_throughput [--model=mlp] [--n=8000] \
        [--block_sizes=default,256] [--repeats=3] [--data_dir=../shared/data]

For N CIFAR-10 images (Gaussian inputs where the data is absent), times, in one
process and interleaved `--repeats` times: `ntk_gram(model, x)` with its
default arguments (the baseline), then for each `--block_sizes` entry a new
`GramStore(path, model, x, block_size=B).compute()` in a fresh directory under
`--workdir` (the system's temporary folder by default; its disk is part of what
is measured), each deleted afterwards. "default" is GramStore's own
(`block_size=None`: `ntk_tf.ntk.block_size.default_block_size`). Prints the
machine's features, every time, the best of each, the throughput ratio
t(ntk_gram) / t(store) of the bests (1.0: the store costs nothing), and
whether each store's matrix is bit for bit `ntk_gram`'s with the same B.
"""

import shutil
import tempfile
import time

from absl import app
from absl import flags
import keras
import numpy as np

from benchmarks import gram_paths
from benchmarks import machine
import ntk_tf
from ntk_tf.ntk import gram as gram_lib

_MODEL = flags.DEFINE_enum("model", "mlp", list(ntk_tf.models.MODEL_NAMES), "Architecture.")
_N = flags.DEFINE_integer("n", 8000, "Samples of the Gram.", lower_bound=1)
_BLOCK_SIZES = flags.DEFINE_list("block_sizes", ["default", "256"],
                                 "GramStore block sizes to time: 'default' or integers.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Interleaved measurements; the best is kept.",
                                lower_bound=1)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder with cifar10.npz (default: search).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the stores are written (default: tmp).")


def _block_size(value: str):
  if value == "default":
    return None
  try:
    block = int(value)
  except ValueError:
    block = 0
  if block <= 0:
    raise app.UsageError(f"--block_sizes entries are 'default' or integers > 0. "
                         f"Received: {value!r}")
  return block


def _timed(fn):
  start = time.perf_counter()
  result = fn()
  return time.perf_counter() - start, result


def main(argv):
  del argv
  blocks = [_block_size(value) for value in _BLOCK_SIZES.value]
  keras.utils.set_random_seed(0)
  model = ntk_tf.models.get(_MODEL.value, input_shape=(32, 32, 3), seed=0)
  x = gram_paths.inputs((32, 32, 3), _N.value, _DATA_DIR.value)
  print(machine.format_features(machine.features()) + "\n")
  ntk_tf.ntk_gram(model, x[:min(len(x), 512)], progress=False)  # Tracing, not timed.
  labels = ["ntk_gram"] + [f"GramStore B={b or 'default'}" for b in blocks]
  times = {label: [] for label in labels}
  identical = {}  # label -> (its B, bit-identical), checked on the first repeat only
  default_block = _default_block(model, x)
  for _ in range(_REPEATS.value):
    seconds, gram = _timed(lambda: ntk_tf.ntk_gram(model, x, progress=False))
    times["ntk_gram"].append(seconds)
    for block, label in zip(blocks, labels[1:]):
      folder = tempfile.mkdtemp(dir=_WORKDIR.value)
      try:
        seconds, store = _timed(lambda b=block, f=folder: ntk_tf.GramStore(
            f + "/gram", model, x, block_size=b).compute(progress=False))
        times[label].append(seconds)
        if label not in identical:
          same_blocks = gram if store.block_size == default_block else \
              ntk_tf.ntk_gram(model, x, block_size=store.block_size, progress=False)
          identical[label] = (f"B={store.block_size}",
                              np.asarray(store.matrix).tobytes() == same_blocks.tobytes())
      finally:
        shutil.rmtree(folder)
  base = min(times["ntk_gram"])
  print(f"{_MODEL.value}, N = {_N.value}: seconds per Gram (best of {_REPEATS.value}; all)")
  for label in labels:
    best = min(times[label])
    extra = "" if label == "ntk_gram" else \
        f"  ratio {base / best:.2f}  {identical[label][0]}, bit-identical: {identical[label][1]}"
    print(f"  {label:<24}{best:8.2f} s  [{', '.join(f'{t:.2f}' for t in times[label])}]{extra}")


def _default_block(model, x) -> int:
  """The block size `ntk_gram(model, x)` uses by default."""
  return gram_lib.prepare(model, x, None, None, "float32", implementation="auto",
                          cap_block_size=True)[2]


if __name__ == "__main__":
  app.run(main)
