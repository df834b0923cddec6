"""An on-disk, resumable NTK Gram of one (model, dataset) pair.

    Theta(x, x) = J(x) J(x)^T,  stored as `<path>/gram.npy`  [N, N]

Layout of the store directory `path`:
  gram.npy       the `[N, N]` matrix (NumPy .npy, readable with np.load(mmap_mode="r")).
  manifest.json  what the matrix is (model and data fingerprints, dtype, block
                 size, implementation, N) and which upper-triangular blocks
                 (indices into `gram.iter_blocks(N, N, B, symmetric=True)`) are done.

Crash safety: a block (and its mirror) is written into gram.npy and fsynced
before the manifest that lists it replaces the old one atomically (temp file,
fsync, os.replace). A kill at any point (even SIGKILL) therefore loses at most
the block in flight; the restarted job recomputes exactly the missing blocks.
Blocks are deterministic functions of (model, data, block), so the final matrix
is bit-identical to an uninterrupted run.

Paper: App. B (Grams of 60,000 CIFAR-10/MNIST images, jobs of hours).
"""

import hashlib
import json
import os
import pathlib
from typing import Optional, Union

import keras
import numpy as np

from ntk_tf import atomic
from ntk_tf import gram as gram_lib
from ntk_tf import kernels
from ntk_tf import progress as progress_lib
from ntk_tf import types

_FORMAT_VERSION = 1
_MATRIX_FILE = "gram.npy"
_MANIFEST_FILE = "manifest.json"
# Manifest fields that must match for a restart to continue a store.
_IDENTITY_FIELDS = ("n", "block_size", "dtype", "implementation", "model_fingerprint",
                    "data_fingerprint", "options")


def model_fingerprint(model: keras.Model) -> str:
  """Returns the SHA-256 of every weight of `model` (paths, shapes, dtypes, bytes).

  All weights count, not only trainable ones: BatchNorm moving statistics change
  the inference-mode NTK.
  """
  digest = hashlib.sha256()
  for variable in model.weights:
    value = np.ascontiguousarray(np.asarray(variable))
    digest.update(f"{variable.path}|{value.shape}|{value.dtype}|".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


def data_fingerprint(x: np.ndarray) -> str:
  """Returns the SHA-256 of the inputs `x [N, ...]` (shape, dtype and bytes)."""
  x = np.ascontiguousarray(x)
  digest = hashlib.sha256(f"{x.shape}|{x.dtype}|".encode())
  digest.update(x.tobytes())
  return digest.hexdigest()


class GramStore:
  """The on-disk symmetric NTK Gram `[N, N]` of `model` on `x`, resumable.

  `GramStore(path, model, x).compute()` fills `<path>/gram.npy` block by block
  (upper triangle, mirrored). If the job is killed, the same call resumes it.
  Reopening a store with different weights, data, block size, dtype or
  implementation raises ValueError naming the field.

  Peak memory: that of one `ntk_gram` block (`ntk_tf.block_size.peak_memory_bytes`)
  plus one [B, B] block in flight; the matrix itself stays on disk (N^2 * bytes,
  e.g. 14.4 GB for N = 60,000 in float32).

  Args:
    path: the store directory (created if absent).
    model: Keras model with one output logit (inference mode).
    x: `[N, ...]` inputs.
    block_size: B (> 0).
    dtype: "float32" or "float64".
    implementation: an `NtkImplementation` member or its value.
    **options: options of the implementation's factory (see `ntk_gram`); part
      of the store's identity.
  """

  def __init__(self, path: Union[str, os.PathLike], model: keras.Model, x: types.Inputs, *,
               block_size: int = 256, dtype: types.DType = "float32",
               implementation: Union[str, gram_lib.NtkImplementation] = "jacobian",
               **options):
    x, _, block_size, dtype = gram_lib.prepare(model, x, None, block_size, dtype)
    member = gram_lib.resolve_implementation(implementation)
    kernels.check_options(member, options)
    self.path = pathlib.Path(path)
    self.n = int(x.shape[0])
    self.block_size = block_size
    self.dtype = dtype
    self.implementation = member
    self._model = model
    self._x = x
    self._options = options
    self._blocks = gram_lib.iter_blocks(self.n, self.n, block_size, symmetric=True)
    self._identity = {
        "n": self.n,
        "block_size": block_size,
        "dtype": dtype,
        "implementation": member.value,
        "model_fingerprint": model_fingerprint(model),
        "data_fingerprint": data_fingerprint(x),
    }
    if options:  # Absent without options: such stores match those made before options existed.
      self._identity["options"] = atomic.jsonable(
          {key: getattr(value, "value", value) for key, value in options.items()})
    self._done = self._open()

  @property
  def matrix_path(self) -> pathlib.Path:
    return self.path / _MATRIX_FILE

  @property
  def manifest_path(self) -> pathlib.Path:
    return self.path / _MANIFEST_FILE

  @property
  def num_blocks(self) -> int:
    return len(self._blocks)

  @property
  def num_done(self) -> int:
    return len(self._done)

  @property
  def is_complete(self) -> bool:
    return len(self._done) == len(self._blocks)

  @property
  def shape(self):
    return (self.n, self.n)

  def _open(self) -> set:
    """Creates the store or checks an existing one; returns the done block indices."""
    self.path.mkdir(parents=True, exist_ok=True)
    if self.manifest_path.exists() and self.matrix_path.exists():
      manifest = json.loads(self.manifest_path.read_text())
      mismatched = [f"{field}: store has {manifest.get(field)!r}, "
                    f"this job has {self._identity.get(field)!r}"
                    for field in _IDENTITY_FIELDS
                    if manifest.get(field) != self._identity.get(field)]
      if mismatched:
        raise ValueError(
            f"GramStore at {str(self.path)!r} was made for a different job and cannot be "
            f"continued ({'; '.join(mismatched)}). Use a new path or delete the old store.")
      return set(manifest["done"])
    # Fresh store (or one killed before its first manifest): allocate the matrix.
    np.lib.format.open_memmap(self.matrix_path, mode="w+", dtype=self.dtype,
                              shape=(self.n, self.n)).flush()
    self._write_manifest(set())
    return set()

  def _write_manifest(self, done: set) -> None:
    manifest = dict(self._identity, format=_FORMAT_VERSION, num_blocks=len(self._blocks),
                    done=sorted(done))
    atomic.write_text(self.manifest_path, json.dumps(manifest))

  def _write_block(self, fd: int, offset: int, row0: int, col0: int,
                   values: np.ndarray) -> None:
    """pwrites `values [r, c]` at rows row0.., columns col0.. of the on-disk matrix."""
    values = np.ascontiguousarray(values, dtype=self.dtype)
    itemsize = values.itemsize
    for r in range(values.shape[0]):
      os.pwrite(fd, values[r].tobytes(), offset + ((row0 + r) * self.n + col0) * itemsize)

  def compute(self, progress: bool = True) -> "GramStore":
    """Computes every block not yet on disk; returns self (complete)."""
    if self.is_complete:
      return self
    fn = gram_lib.block_fn(self._model, self.implementation, self.dtype, self.block_size,
                           **self._options)
    offset = np.load(self.matrix_path, mmap_mode="r").offset
    fd = os.open(self.matrix_path, os.O_RDWR)
    try:
      with progress_lib.Progress(len(self._blocks), desc=f"GramStore {self.path.name}",
                                 unit="blocks", initial=len(self._done),
                                 enabled=progress) as bar:
        for index, block in enumerate(self._blocks):
          if index in self._done:
            continue
          i0, _, j0, _ = block
          theta_block = gram_lib.compute_block(fn, self._x, None, block, self.block_size)
          self._write_block(fd, offset, i0, j0, theta_block)
          if i0 != j0:
            self._write_block(fd, offset, j0, i0, theta_block.T)
          os.fsync(fd)
          self._done.add(index)
          self._write_manifest(self._done)
          bar.update()
    finally:
      os.close(fd)
    return self

  @property
  def matrix(self) -> np.memmap:
    """The complete `[N, N]` Gram as a read-only memory map."""
    if not self.is_complete:
      raise RuntimeError(
          f"GramStore at {str(self.path)!r} is incomplete ({len(self._done)}/"
          f"{len(self._blocks)} blocks); call compute() first.")
    return np.load(self.matrix_path, mmap_mode="r")
