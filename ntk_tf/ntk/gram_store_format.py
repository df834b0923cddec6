"""The on-disk format of a `GramStore` (format version 2): files, checksums, log and lock.

Layout of a store directory:
  manifest.json  what the matrix is (format, model/data fingerprints, dtype, block
                 size, implementation, N, number of blocks). Written once, atomically
                 (`ntk_tf.atomic`), when the store is made; a store without it is empty.
  gram.npy       the `[N, N]` matrix (NumPy .npy v1.0, C order), preallocated at its
                 full size; readable with `np.load(path, mmap_mode="r")`.
  blocks.log     append-only log of committed blocks, one text line per block:
                   "<index> <crc32 of the block's bytes, 8 hex> <crc32 of the line's
                   first two fields, 8 hex>\n"
                 `index` counts the upper-triangular blocks in the order of
                 `gram.iter_blocks(N, N, B, symmetric=True)`. The block's checksum
                 is zlib.crc32 of its `[i1 - i0, j1 - j0]` tile in C order; the mirror
                 tile `[j0:j1, i0:i1]` holds its transpose, whose transposed bytes
                 have the same checksum. A later line for an index replaces an
                 earlier one. A torn or damaged line is dropped (its block is
                 recomputed). The log is appended in place, not replaced: a
                 rewrite per block made the bookkeeping quadratic in the number of
                 blocks (27,500 blocks at N = 60,000, B = 256).
  lock           `fcntl.flock` target: one writer per store (exclusive); readers
                 share it, so they wait for a writer but not for each other.

Commit protocol (crash safety): blocks are written into gram.npy; every commit
interval the matrix is flushed to disk (msync), then the blocks' log lines are
appended and the log fsynced. A kill loses at most the blocks since the last
commit; a block in the log whose bytes on disk do not match its checksum (a
power loss, a damaged disk, a hand edit) is found when the store is opened and
recomputed, never returned.
"""

import contextlib
import errno
import fcntl
import io
import json
import os
import pathlib
import zlib
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

from absl import logging
import numpy as np

from ntk_tf import atomic

FORMAT_VERSION = 2
MATRIX_FILE = "gram.npy"
MANIFEST_FILE = "manifest.json"
LOG_FILE = "blocks.log"
LOCK_FILE = "lock"
LOCK_MODES = ("wait", "fail")

# (i0, i1, j0, j1), as in `ntk_tf.ntk.gram.Block`.
Block = Tuple[int, int, int, int]


def block_checksum(tile: np.ndarray) -> int:
  """Returns zlib.crc32 of `tile [r, c]` in C order (the bytes gram.npy holds)."""
  return zlib.crc32(np.ascontiguousarray(tile))


# --- manifest.json -------------------------------------------------------------------------

def stored_block_size(path: Union[str, os.PathLike]) -> Optional[int]:
  """Returns the block size B of the store at `path`; None if none, or its manifest is damaged.

  A damaged or foreign manifest is not an error here: opening the store reports it.
  """
  try:
    manifest = read_manifest(pathlib.Path(path))
  except ValueError:
    return None
  block_size = None if manifest is None else manifest.get("block_size")
  return block_size if type(block_size) is int and block_size > 0 else None  # pylint: disable=unidiomatic-typecheck


def read_manifest(path: pathlib.Path) -> Optional[dict]:
  """Returns the manifest of the store at `path`, None if it has none.

  Raises:
    ValueError: the manifest is damaged (not JSON, not an object) or of another
      format version; the message names the file and says to delete the store.
  """
  manifest_path = path / MANIFEST_FILE
  if not manifest_path.exists():
    return None
  try:
    manifest = json.loads(manifest_path.read_text())
    if not isinstance(manifest, dict):
      raise ValueError(f"a JSON {type(manifest).__name__}, not an object")
  except (ValueError, UnicodeDecodeError) as error:
    raise ValueError(
        f"GramStore manifest {str(manifest_path)!r} is damaged ({error}); the store cannot be "
        f"trusted. Delete the directory {str(path)!r} (or pass overwrite=True) to start "
        f"over.") from None
  version = manifest.get("format")
  if version != FORMAT_VERSION:
    raise ValueError(
        f"GramStore at {str(path)!r} has format version {version!r}; this ntk_tf reads "
        f"version {FORMAT_VERSION} (block checksums, append-only log). Delete the directory "
        f"{str(path)!r} (or pass overwrite=True) and recompute.")
  return manifest


def write_manifest(path: pathlib.Path, manifest: dict) -> None:
  atomic.write_json(path / MANIFEST_FILE, dict(manifest, format=FORMAT_VERSION))


# --- gram.npy ------------------------------------------------------------------------------

def npy_header(n: int, dtype: str) -> bytes:
  """Returns the .npy v1.0 header of a C-order `[n, n]` array of `dtype` (what np.save writes)."""
  buffer = io.BytesIO()
  np.lib.format.write_array_header_1_0(buffer, {
      "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
      "fortran_order": False,
      "shape": (n, n),
  })
  return buffer.getvalue()


def _allocate(fd: int, size: int) -> None:
  """Makes the file `fd` `size` bytes long, reserving the disk space where the FS can."""
  os.ftruncate(fd, size)
  try:
    os.posix_fallocate(fd, 0, size)  # A full disk fails here, not as SIGBUS in a memmap write.
  except OSError as error:
    if error.errno not in (95, 22):  # EOPNOTSUPP, EINVAL: the FS cannot; ftruncate suffices.
      raise


def create_matrix(path: pathlib.Path, n: int, dtype: str) -> None:
  """Writes a fresh gram.npy: header, then `n * n` zero entries of `dtype` (allocated)."""
  header = npy_header(n, dtype)
  fd = os.open(path / MATRIX_FILE, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
  try:
    _allocate(fd, matrix_bytes(n, dtype))
    os.pwrite(fd, header, 0)
    os.fsync(fd)
  finally:
    os.close(fd)
  atomic.fsync_dir(path)


def matrix_bytes(n: int, dtype: str) -> int:
  """The size of an intact gram.npy: its header and `n * n` entries of `dtype`."""
  return len(npy_header(n, dtype)) + n * n * np.dtype(dtype).itemsize


def matrix_is_intact(path: pathlib.Path, n: int, dtype: str) -> bool:
  """True if gram.npy exists with its header and length intact (`repair_matrix` would not write)."""
  header = npy_header(n, dtype)
  try:
    with open(path / MATRIX_FILE, "rb") as f:
      intact_header = f.read(len(header)) == header
      return intact_header and os.fstat(f.fileno()).st_size == matrix_bytes(n, dtype)
  except FileNotFoundError:
    return False


def repair_matrix(path: pathlib.Path, n: int, dtype: str) -> bool:
  """Checks gram.npy's header and length; repairs them in place. Returns True if it did.

  A damaged header is rewritten (it depends only on N and dtype); a file shorter
  than the header says is extended with zeros (the blocks it lost then fail
  their checksums and are recomputed); a longer one is cut.
  """
  header, size = npy_header(n, dtype), matrix_bytes(n, dtype)
  fd = os.open(path / MATRIX_FILE, os.O_RDWR)
  repaired = False
  try:
    if os.pread(fd, len(header), 0) != header:
      logging.warning("GramStore %s: the header of %s is damaged; rewriting it (N=%d, %s).",
                      path, MATRIX_FILE, n, dtype)
      os.pwrite(fd, header, 0)
      repaired = True
    actual = os.fstat(fd).st_size
    if actual != size:
      logging.warning("GramStore %s: %s has %d bytes where [%d, %d] %s needs %d (%s); "
                      "blocks that fail their checksums are recomputed.", path, MATRIX_FILE,
                      actual, n, n, dtype, size, "truncated" if actual < size else "too long")
      if actual < size:
        _allocate(fd, size)
      else:
        os.ftruncate(fd, size)
      repaired = True
    if repaired:
      os.fsync(fd)
  finally:
    os.close(fd)
  return repaired


def open_matrix(path: pathlib.Path, mode: str) -> np.memmap:
  """Returns gram.npy as a memory map (`mode` "r" or "r+")."""
  return np.load(path / MATRIX_FILE, mmap_mode=mode)


def tile_is_intact(matrix: np.ndarray, block: Block, checksum: int) -> bool:
  """True if the block's tile and (off the diagonal) its mirror match `checksum`."""
  i0, i1, j0, j1 = block
  if block_checksum(matrix[i0:i1, j0:j1]) != checksum:  # [i1 - i0, j1 - j0]
    return False
  return i0 == j0 or block_checksum(matrix[j0:j1, i0:i1].T) == checksum


def find_damaged(matrix: np.ndarray, blocks: List[Block],
                 checksums: Dict[int, int]) -> List[int]:
  """Returns the indices in `checksums` whose tiles in `matrix` fail their checksum.

  Streams over the matrix block row by block row (one [B, B] tile and its
  mirror in memory at a time).
  """
  return [index for index in sorted(checksums)
          if not tile_is_intact(matrix, blocks[index], checksums[index])]


# --- blocks.log ----------------------------------------------------------------------------

def _record(index: int, checksum: int) -> bytes:
  body = f"{index} {checksum:08x}"
  return f"{body} {zlib.crc32(body.encode()):08x}\n".encode()


def _parse(line: bytes, num_blocks: int) -> Optional[Tuple[int, int]]:
  """(index, checksum) of one log line, None if it is torn or damaged."""
  fields = line.split(b" ")
  if len(fields) != 3 or not line.endswith(b"\n"):
    return None
  try:
    index, checksum, line_checksum = int(fields[0]), int(fields[1], 16), int(fields[2], 16)
  except ValueError:
    return None
  body = fields[0] + b" " + fields[1]
  if zlib.crc32(body) != line_checksum or not 0 <= index < num_blocks:
    return None
  return index, checksum


class BlockLog:
  """The append-only log of committed blocks (`blocks.log`); see the module docstring."""

  def __init__(self, path: pathlib.Path, num_blocks: int):
    self.path = path / LOG_FILE
    self.num_blocks = num_blocks

  def reset(self) -> None:
    """Empties the log (a new store)."""
    atomic.write_bytes(self.path, b"")

  def read(self, repair: bool) -> Dict[int, int]:
    """Returns {block index: checksum} of the committed blocks (the last line per index wins).

    Damaged or torn lines are dropped and logged; with `repair` (the caller holds
    the store's lock) the log is rewritten without them, so later appends start on
    a line boundary.
    """
    try:
      data = self.path.read_bytes()
    except FileNotFoundError:
      data = b""
    checksums, bad = {}, 0
    for line in io.BytesIO(data):
      parsed = _parse(line, self.num_blocks)
      if parsed is None:
        bad += 1
      else:
        checksums[parsed[0]] = parsed[1]
    if bad or not self.path.exists():
      if bad:
        logging.warning("GramStore %s: dropped %d damaged or torn line(s) of %s; their blocks "
                        "are recomputed.", self.path.parent, bad, LOG_FILE)
      if repair:
        atomic.write_bytes(self.path, b"".join(_record(i, c) for i, c in checksums.items()))
    return checksums

  @contextlib.contextmanager
  def appender(self) -> Iterator["_Appender"]:
    with open(self.path, "ab") as f:
      yield _Appender(f)


class _Appender:
  """Appends records; `commit` makes them durable (one write + one fsync per commit)."""

  def __init__(self, f):
    self._f = f

  def commit(self, records: Iterable[Tuple[int, int]]) -> None:
    payload = b"".join(_record(index, checksum) for index, checksum in records)
    if payload:
      self._f.write(payload)
      self._f.flush()
      os.fsync(self._f.fileno())


# --- lock ----------------------------------------------------------------------------------

@contextlib.contextmanager
def locked(path: pathlib.Path, mode: str, shared: bool = False) -> Iterator[None]:
  """Holds the store's lock (`fcntl.flock` on `<path>/lock`) inside the block.

  A writer's lock is exclusive; a reader's (`shared`) is held by every reader at
  once and excludes writers. mode "wait": a process that must wait logs so, then
  blocks until the holder is done; "fail": it raises RuntimeError naming the
  store and the last writer's pid. The lock file holds that pid as text (it is
  locked by inode, so it is rewritten in place, not replaced). A reader without
  write access opens the lock file read-only, or takes no lock where there is
  none and none can be made (a read-only directory, where no writer is either).
  """
  try:
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
  except OSError as error:
    if not shared or error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
      raise
    try:
      fd = os.open(path / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
      yield
      return
  kind = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
  try:
    try:
      fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
      if mode == "fail":
        raise RuntimeError(
            f"GramStore at {str(path)!r} is being written by another process (pid {holder}). "
            f"Wait for it, use lock='wait', or use another path.") from None
      logging.warning("GramStore %s: another process (pid %s) is writing it; waiting for its "
                      "lock.", path, holder)
      fcntl.flock(fd, kind)
      logging.info("GramStore %s: lock acquired.", path)
    if not shared:
      os.ftruncate(fd, 0)
      os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
      yield
    finally:
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)
