"""An on-disk, resumable NTK Gram of one (model, dataset) pair.

    Theta(x, x) = J(x) J(x)^T,  stored as `<path>/gram.npy`  [N, N]

The store's files, checksums, log and lock are described in
`ntk_tf.ntk.gram_store_format`. In short: the matrix is filled block by block (upper
triangle, mirrored) through a memory map; every `commit_interval_s` seconds it is
flushed to disk and the finished blocks, each with the crc32 of its bytes, are
appended to `blocks.log` and fsynced. A kill at any point (even SIGKILL) loses at
most one commit interval; the restarted job recomputes exactly the missing
blocks. Blocks are deterministic functions of (model, data, block), so the final
matrix is bit-identical to an uninterrupted run and to `ntk_gram` with the same
block size and implementation.

Identity: a store belongs to one (architecture, weights, data, N, dtype, block
size, implementation, options, output kernel). The architecture is the model's Keras config
(canonical JSON, initializers/regularizers/constraints left out: they do not
change the function once the weights exist), its class, and its weights' paths,
shapes, dtypes and trainability; for a subclassed model whose config does not
describe it, its code is not hashed, only its class path and weights.

Paper: App. B (Grams of 60,000 CIFAR-10/MNIST images, jobs of hours).
"""

import hashlib
import os
import pathlib
import time
from typing import Any, Iterator, List, Optional, Tuple, Union

from absl import logging
import keras
import numpy as np

from ntk_tf import atomic
from ntk_tf import types
from ntk_tf import validation
from ntk_tf.ntk import gram as gram_lib
from ntk_tf.ntk import gram_store_format as fmt
from ntk_tf.ntk import implementation as implementation_lib
from ntk_tf.ntk import output_kernel as output_kernel_lib
from ntk_tf.ntk import progress as progress_lib
from ntk_tf.ntk.implementation import NtkImplementation

# Manifest fields that must match for a job to continue a store (in the order errors list them).
_IDENTITY_FIELDS = ("n", "block_size", "dtype", "implementation", "options", "output_kernel",
                    "model_class",
                    "architecture_fingerprint", "weights_fingerprint", "data_fingerprint")
# Output kernels that are not [N, N] (refused: the store holds one square matrix).
_NOT_SQUARE = (output_kernel_lib.FULL, output_kernel_lib.DIAGONAL)
# Damaged blocks named one per log line; the rest are counted.
_MAX_LOGGED = 10
# Config keys that do not change the function of a built model.
_IGNORED_CONFIG_SUFFIXES = ("_initializer", "_regularizer", "_constraint")


def _canonical_config(value: Any) -> Any:
  if isinstance(value, dict):
    return {key: _canonical_config(item) for key, item in value.items()
            if not str(key).endswith(_IGNORED_CONFIG_SUFFIXES)}
  if isinstance(value, (list, tuple)):
    return [_canonical_config(item) for item in value]
  return value


def architecture_fingerprint(model: keras.Model) -> str:
  """Returns the SHA-256 of `model`'s architecture (config, class, weight paths/shapes).

  The config is `model.get_config()` as key-sorted JSON without initializers,
  regularizers and constraints; a model whose `get_config` raises counts by its
  class path and weights only.
  """
  try:
    config = _canonical_config(model.get_config())
  except (NotImplementedError, TypeError, AttributeError) as error:
    config = f"get_config unavailable: {type(error).__name__}"
  weights = [(v.path, tuple(v.shape), str(v.dtype), bool(v.trainable)) for v in model.weights]
  description = {"class": f"{type(model).__module__}.{type(model).__qualname__}",
                 "config": config, "weights": weights}
  text = atomic.json_text(description, sort_keys=True, default=repr)
  return hashlib.sha256(text.encode()).hexdigest()


def weights_fingerprint(model: keras.Model) -> str:
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


def model_fingerprint(model: keras.Model) -> str:
  """Returns the SHA-256 of `model`'s architecture and weights (both fingerprints above)."""
  both = f"{architecture_fingerprint(model)}|{weights_fingerprint(model)}"
  return hashlib.sha256(both.encode()).hexdigest()


def data_fingerprint(x: np.ndarray) -> str:
  """Returns the SHA-256 of the inputs `x [N, ...]` (shape, dtype and bytes)."""
  x = np.ascontiguousarray(x)
  digest = hashlib.sha256(f"{x.shape}|{x.dtype}|".encode())
  digest.update(x.reshape(-1).view(np.uint8))  # the bytes, not a copy of them
  return digest.hexdigest()


class GramStore:
  """The on-disk symmetric NTK Gram `[N, N]` of `model` on `x`, resumable and checked.

  `GramStore(path, model, x).compute()` fills `<path>/gram.npy` block by block
  (upper triangle, mirrored). If the job is killed, the same call resumes it.

  Opening a store checks it: a store made for another job (architecture,
  weights, data, N, block size, dtype, implementation or options) raises
  `validation.ConflictError` (a ValueError) naming the differing field, unless
  `overwrite=True` (then it is
  emptied and recomputed); a damaged manifest or a store of format version 1
  raises ValueError saying to delete it; a damaged .npy header is rewritten, a
  truncated gram.npy extended; every committed block is checked against its
  crc32 (`verify=True`), and one that fails is logged and recomputed by
  `compute()`, never returned. `matrix` re-checks the blocks if gram.npy changed
  on disk since, and `block` checks the block it returns.

  One writer at a time: `compute()`, and opening a store that must be made or
  repaired, hold an exclusive lock on the store; a second process waits for it
  (`lock="wait"`, logged) or raises RuntimeError (`lock="fail"`). Opening a
  store of this job that needs no repair only reads, under a shared lock:
  readers do not wait for each other, and a finished store opens (and
  `compute()` returns at once) without write access, e.g. on a read-only cache.

  Peak memory: that of one `ntk_gram` block (`ntk_tf.ntk.block_size.peak_memory_bytes`)
  plus one [B, B] block in flight; the matrix itself stays on disk (N^2 * bytes,
  e.g. 14.4 GB for N = 60,000 in float32), written through a memory map.

  Args:
    path: the store directory (created if absent).
    model: Keras model with one output of logits (inference mode); K > 1
      logits need `output_kernel`.
    x: `[N, ...]` inputs.
    block_size: B (> 0), the rows of a block, the unit of work and of a commit.
      None (the default): the existing store's B if `path` holds one, else
      `block_size.default_block_size` (N split evenly into blocks of at most
      3,000 rows that fit 1 GiB), as `ntk_gram` picks it. A small B is slower
      than in-memory `ntk_gram` (more blocks, each with its own passes over
      the data); the default comes close to it (`benchmarks/store_throughput.py`
      measures both).
    dtype: "float32" or "float64".
    implementation: an `NtkImplementation` member or its value; "auto" (the default)
      picks the cheaper exact path by a FLOP estimate (`ntk_tf.ntk.auto`).
    commit_interval_s: seconds between commits (flush of the matrix, append and
      fsync of the log), >= 0; a kill loses at most this much work. 0 commits
      after every block.
    lock: "wait" or "fail", what a second writer does.
    overwrite: empty a store made for another job instead of refusing it.
    verify: check every committed block's checksum when opening.
    output_kernel: None (one logit), or for a model with K > 1 logits one of
      the `[N, N]` output kernels "trace" or "pseudo" (`ntk_tf.ntk.output_kernel`);
      part of the store's identity. "full" and "diagonal" (`[N, N, K, K]`,
      `[N, N, K]`) are refused by name: use `ntk_gram`.
    **options: options of the implementation's `make_block_fn` (see
      `ntk_gram`); part of the store's identity.
  """

  def __init__(self, path: Union[str, os.PathLike], model: keras.Model, x: types.Inputs, *,
               block_size: Optional[int] = None, dtype: types.DType = "float32",
               implementation: Union[str, NtkImplementation] = "auto",
               commit_interval_s: float = 5.0, lock: str = "wait", overwrite: bool = False,
               verify: bool = True, output_kernel: Optional[str] = None, **options):
    member = implementation_lib.resolve(implementation)
    if output_kernel_lib.check_output_kernel(output_kernel) in _NOT_SQUARE:
      raise ValueError(
          f"GramStore stores [N, N] Grams: output_kernel={output_kernel!r} is not one "
          f"(use ntk_gram, or output_kernel='trace' or 'pseudo'). "
          f"Received: output_kernel={output_kernel!r}")
    if block_size is None:
      block_size = fmt.stored_block_size(path)  # Continue an existing store as it was made.
    x, _, block_size, dtype = gram_lib.prepare(
        model, x, None, block_size, dtype,
        implementation=member if block_size is None else None,  # None: default_block_size.
        output_kernel=output_kernel)
    gram_lib.check_options(member, options)
    # The model differentiated ("pseudo": its pseudo-NTK model) and the kernel it computes.
    self._ntk_model, self._kernel, _ = output_kernel_lib.output_model(model, output_kernel,
                                                                      x[:1])
    if (isinstance(commit_interval_s, bool) or not isinstance(commit_interval_s, (int, float))
        or not commit_interval_s >= 0):
      raise ValueError("commit_interval_s must be a number >= 0. "
                       f"Received: commit_interval_s={commit_interval_s!r}")
    self._lock_mode = validation.check_choice(lock, "lock", fmt.LOCK_MODES)
    self.path = pathlib.Path(path)
    self.n = int(x.shape[0])
    self.block_size = block_size
    self.dtype = dtype
    self.implementation = member
    self.output_kernel = output_kernel
    self.commit_interval_s = float(commit_interval_s)
    self._model = model
    self._x = x
    self._options = options
    self._blocks = gram_lib.iter_blocks(self.n, self.n, block_size, symmetric=True)
    self._log = fmt.BlockLog(self.path, len(self._blocks))
    self._identity = {
        "n": self.n,
        "block_size": block_size,
        "dtype": dtype,
        "implementation": member.value,
        "options": atomic.jsonable(
            {key: getattr(value, "value", value) for key, value in sorted(options.items())}),
        "output_kernel": output_kernel,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "architecture_fingerprint": architecture_fingerprint(model),
        "weights_fingerprint": weights_fingerprint(model),
        "data_fingerprint": data_fingerprint(x),
    }
    self._done = {}  # {block index: checksum} of the committed, verified blocks.
    self._damaged = {}  # {block index: checksum} of log lines whose blocks failed it.
    self._matrix_stat = None  # gram.npy's (size, mtime) when last verified or written.
    self.path.mkdir(parents=True, exist_ok=True)
    with fmt.locked(self.path, self._lock_mode, shared=True):
      opened = self._open_as_is(overwrite, verify)
    if not opened:
      with fmt.locked(self.path, self._lock_mode):
        self._open(overwrite, verify)

  @property
  def matrix_path(self) -> pathlib.Path:
    return self.path / fmt.MATRIX_FILE

  @property
  def manifest_path(self) -> pathlib.Path:
    return self.path / fmt.MANIFEST_FILE

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

  def _manifest(self, overwrite: bool) -> Tuple[Optional[dict], List[str]]:
    """(manifest or None, the identity fields it differs in); raises unless `overwrite`."""
    try:
      manifest = fmt.read_manifest(self.path)
    except ValueError:
      if not overwrite:
        raise
      return None, []
    mismatched = [f"{field}: store has {manifest.get(field)!r}, "
                  f"this job has {self._identity[field]!r}"
                  for field in _IDENTITY_FIELDS
                  if manifest is not None and manifest.get(field) != self._identity[field]]
    if mismatched and not overwrite:
      raise validation.ConflictError(
          f"GramStore at {str(self.path)!r} was made for a different job and cannot be "
          f"continued ({'; '.join(mismatched)}). Use a new path, delete the old store or "
          f"pass overwrite=True.")
    return manifest, mismatched

  def _open_as_is(self, overwrite: bool, verify: bool) -> bool:
    """Opens a store of this job that needs no repair, reading only (a shared lock is held).

    Returns False, having read nothing else, for a store that is absent, of another
    job (`overwrite`) or with a damaged matrix: `_open` makes or repairs it. Torn log
    lines are left to the next `compute`, which rewrites the log before appending.
    """
    manifest, mismatched = self._manifest(overwrite)
    if manifest is None or mismatched or not fmt.matrix_is_intact(self.path, self.n, self.dtype):
      return False
    committed = self._log.read(repair=False)
    self._done = self._verified(committed) if verify else committed
    return True

  def _open(self, overwrite: bool, verify: bool) -> None:
    """Creates the store or checks and repairs an existing one (the lock is held)."""
    manifest, mismatched = self._manifest(overwrite)
    if mismatched:
      logging.warning("GramStore %s: made for a different job (%s); overwrite=True, "
                      "recomputing it.", self.path, "; ".join(mismatched))
    if manifest is None or mismatched or not self.matrix_path.exists():
      self._create()
      return
    fmt.repair_matrix(self.path, self.n, self.dtype)
    committed = self._log.read(repair=True)
    self._done = self._verified(committed) if verify else committed

  def _create(self) -> None:
    """Makes an empty store; the manifest comes last, so a kill leaves no half-made store."""
    self.manifest_path.unlink(missing_ok=True)
    self._log.reset()
    fmt.create_matrix(self.path, self.n, self.dtype)
    fmt.write_manifest(self.path, dict(self._identity, num_blocks=len(self._blocks)))
    self._done = {}
    self._matrix_stat = self._stat()

  def _stat(self):
    stat = os.stat(self.matrix_path)
    return stat.st_size, stat.st_mtime_ns

  def _verified(self, committed: dict) -> dict:
    """Returns the blocks of `committed` whose bytes match their checksums; logs the others."""
    matrix = fmt.open_matrix(self.path, "r")
    damaged = set(fmt.find_damaged(matrix, self._blocks, committed))
    for index in sorted(damaged)[:_MAX_LOGGED]:
      i0, i1, j0, j1 = self._blocks[index]
      logging.warning("GramStore %s: block %d (rows %d:%d, columns %d:%d) fails its checksum; "
                      "it will be recomputed.", self.path, index, i0, i1, j0, j1)
    if len(damaged) > _MAX_LOGGED:
      logging.warning("GramStore %s: %d more blocks fail their checksums; they will be "
                      "recomputed.", self.path, len(damaged) - _MAX_LOGGED)
    self._damaged.update({index: committed[index] for index in damaged})
    self._matrix_stat = self._stat()
    return {index: crc for index, crc in committed.items() if index not in damaged}

  def _refresh(self) -> None:
    """Takes in the blocks another writer committed since we looked (the lock is held)."""
    committed = self._log.read(repair=True)
    new = {index: crc for index, crc in committed.items()
           if self._done.get(index) != crc and self._damaged.get(index) != crc}
    if new:
      self._done.update(self._verified(new))

  def compute(self, progress: bool = True) -> "GramStore":
    """Computes every block not yet on disk; returns self (complete)."""
    if self.is_complete:
      return self
    with fmt.locked(self.path, self._lock_mode):
      self._refresh()
      if not self.is_complete:
        self._compute_missing(progress)
    return self

  def _missing_blocks(self) -> Iterator[Tuple[int, np.ndarray]]:
    """(index, Theta block `[i1-i0, j1-j0]`, finite) of every block not yet committed.

    The one source of blocks a subclass replaces (e.g. blocks computed on other
    devices or workers, `ntk_tf.distributed.RunnerGramStore`); the writing and
    the commit protocol stay in `_compute_missing`.
    """
    fn = gram_lib.make_block_fn(self._ntk_model, self.implementation, self.dtype,
                                self.block_size, output_kernel=self._kernel, **self._options)
    missing = [index for index in range(len(self._blocks)) if index not in self._done]
    blocks = [self._blocks[index] for index in missing]
    key_memo = {}  # Content keys of the row blocks, for this pass only.
    for position in gram_lib.sweep(fn, blocks, self.block_size):  # reuses cached features
      yield missing[position], gram_lib.compute_block(fn, self._x, None, blocks[position],
                                                      self.block_size, key_memo)

  def _compute_missing(self, progress: bool) -> None:
    matrix = fmt.open_matrix(self.path, "r+")  # [N, N]
    pending: List = []  # (index, checksum) written since the last commit.

    def commit():
      if pending:
        matrix.flush()  # The blocks' bytes reach the disk before the log lines naming them.
        appender.commit(pending)
        self._done.update(pending)
        pending.clear()

    with self._log.appender() as appender, progress_lib.Progress(
        len(self._blocks), desc=f"GramStore {self.path.name}", unit="blocks",
        initial=len(self._done), enabled=progress) as bar:
      try:
        last_commit = time.monotonic()
        for index, theta_block in self._missing_blocks():
          i0, i1, j0, j1 = self._blocks[index]
          theta_block = np.ascontiguousarray(theta_block, dtype=self.dtype)  # [i1-i0, j1-j0]
          matrix[i0:i1, j0:j1] = theta_block
          if i0 != j0:
            matrix[j0:j1, i0:i1] = theta_block.T
          pending.append((index, fmt.block_checksum(theta_block)))
          bar.update()
          if time.monotonic() - last_commit >= self.commit_interval_s:
            commit()
            last_commit = time.monotonic()
      finally:
        commit()  # Blocks fully written before an exception are kept.
        del matrix
        self._matrix_stat = self._stat()

  def block(self, index: int) -> np.ndarray:
    """Returns block `index` of `gram.iter_blocks(N, N, B, symmetric=True)`, checked.

    A committed block whose bytes fail its checksum is logged and recomputed first.

    Returns:
      `[i1 - i0, j1 - j0]` array of dtype.
    """
    index = validation.check_non_negative_int(index, "index")
    if index >= len(self._blocks):
      raise ValueError(f"index must be < num_blocks={len(self._blocks)}. Received: index={index}")
    if index not in self._done:
      raise RuntimeError(f"GramStore at {str(self.path)!r}: block {index} is not computed yet; "
                         "call compute() first.")
    i0, i1, j0, j1 = self._blocks[index]
    tile = np.array(fmt.open_matrix(self.path, "r")[i0:i1, j0:j1])
    if fmt.block_checksum(tile) != self._done[index]:
      self._recompute_damaged()
      tile = np.array(fmt.open_matrix(self.path, "r")[i0:i1, j0:j1])
    return tile

  def _recompute_damaged(self) -> None:
    with fmt.locked(self.path, self._lock_mode, shared=True):
      self._done = self._verified(self._done)
    self.compute(progress=False)

  @property
  def matrix(self) -> np.memmap:
    """The complete `[N, N]` Gram as a read-only memory map.

    If gram.npy changed on disk since it was last checked or written here, every
    block is checked again first, and those that fail are recomputed.
    """
    if not self.is_complete:
      raise RuntimeError(
          f"GramStore at {str(self.path)!r} is incomplete ({len(self._done)}/"
          f"{len(self._blocks)} blocks); call compute() first.")
    if self._stat() != self._matrix_stat:
      self._recompute_damaged()
    return fmt.open_matrix(self.path, "r")

