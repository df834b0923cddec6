"""Shared helpers for ntk_tf tests: data location, a synthetic dataset, quiet TensorFlow."""

import os
import pathlib
from typing import Optional

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Sizes of the synthetic splits: enough for every smoke config (at most 64 train, 32 test).
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 120, 40
_SPECS = {"cifar10": (32, 32, 3), "mnist": (28, 28, 1)}


def data_dir() -> Optional[str]:
  """The folder with cifar10.npz / mnist.npz, or None where it is absent.

  Looks at NTK_TF_DATA_DIR (set by scripts/test.sh to ../shared/data when that
  folder exists), then at shared/data beside the source tree.
  """
  candidates = []
  if os.environ.get("NTK_TF_DATA_DIR"):
    candidates.append(pathlib.Path(os.environ["NTK_TF_DATA_DIR"]))
  here = pathlib.Path(__file__).resolve()
  for parent in here.parents:
    candidates.append(parent / "shared" / "data")
  for c in candidates:
    if (c / "cifar10.npz").is_file() and (c / "mnist.npz").is_file():
      return str(c)
  return None


def write_synthetic_data(folder: os.PathLike, seed: int = 0) -> str:
  """Writes tiny cifar10.npz and mnist.npz with the arrays of the real files; returns the folder.

  Each file holds x_train `[120, H, W, C]` uint8, y_train `[120]` int64 (12 per
  class, shuffled), x_test `[40, H, W, C]`, y_test `[40]` (4 per class), as in
  shared/data/README.md (MNIST without the channel axis, like the real file).
  Images are a class-dependent smooth pattern plus noise, so classes are learnable.
  """
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  for name, (h, w, c) in _SPECS.items():
    rows = np.linspace(0.0, np.pi, h)[:, None, None]
    cols = np.linspace(0.0, np.pi, w)[None, :, None]
    arrays = {}
    for split, n in (("train", SYNTHETIC_TRAIN), ("test", SYNTHETIC_TEST)):
      y = rng.permutation(np.arange(n) % 10).astype(np.int64)  # [n]
      pattern = np.stack([np.sin((k + 1) * rows) * np.cos((k % 3 + 1) * cols) * np.ones((1, 1, c))
                          for k in range(10)])  # [10, H, W, C] in [-1, 1]
      noise = rng.normal(scale=0.3, size=(n, h, w, c))
      x = np.clip(127.5 * (1.0 + 0.7 * pattern[y] + noise), 0, 255).astype(np.uint8)
      arrays[f"x_{split}"] = x[..., 0] if name == "mnist" else x
      arrays[f"y_{split}"] = y
    np.savez_compressed(folder / f"{name}.npz", **arrays)
  return str(folder)


def smoke_data_dir(test_case) -> str:
  """The real data folder where it exists, else a synthetic one in a temp dir of `test_case`.

  NTK_TF_TEST_SYNTHETIC=1 forces the synthetic data (to run the suite as on a
  fresh clone without data).
  """
  real = None if os.environ.get("NTK_TF_TEST_SYNTHETIC") == "1" else data_dir()
  if real:
    return real
  if getattr(test_case, "_synthetic_data_dir", None) is None:
    test_case._synthetic_data_dir = write_synthetic_data(test_case.create_tempdir().full_path)
  return test_case._synthetic_data_dir


def run_binary_main(test_case, binary, spec: str, workdir: str, **overrides) -> str:
  """Runs `binary.main` as `--config=<spec> --config.<field>=<value> --workdir=<workdir>`.

  The smoke data folder (`smoke_data_dir`) and a temp Gram cache are set unless
  `overrides` names data_dir / gram.cache_dir; dotted names reach nested fields.
  Returns the data folder used.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top
  with flagsaver.flagsaver(workdir=workdir):
    flags.FLAGS["config"].parse(spec)
    config = flags.FLAGS["config"].value
    if "data_dir" in config and "data_dir" not in overrides:
      overrides["data_dir"] = smoke_data_dir(test_case)
    if "gram" in config and "gram.cache_dir" not in overrides:
      overrides["gram.cache_dir"] = test_case.create_tempdir().full_path
    for name, value in overrides.items():
      parent, _, leaf = name.rpartition(".")
      (config[parent] if parent else config)[leaf] = value
    binary.main([binary.__name__])
  return overrides.get("data_dir")


def smoke_config(test_case, module, variant: str = "smoke", **overrides):
  """`module.get_config(variant)` with the smoke data, a temp Gram cache and `overrides`."""
  config = module.get_config(variant)
  if "data_dir" in config:
    config.data_dir = smoke_data_dir(test_case)
  if "gram" in config:
    config.gram.cache_dir = test_case.create_tempdir().full_path
  for name, value in overrides.items():
    parent, _, leaf = name.rpartition(".")
    (config[parent] if parent else config)[leaf] = value
  return config
