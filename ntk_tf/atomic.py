"""Atomic, durable file writes: a reader sees the old file or the new one, never a mix.

    write to a unique temporary file in the target's folder -> fsync it ->
    os.replace onto the target -> fsync the folder

Every file ntk_tf writes for a user (configs, result tables, manifests, eigen
metadata, training state) goes through this module. Files get the usual
permissions of a new file under the process umask (0644 under the common umask
022), not the 0600 of `tempfile.mkstemp`, so other users of a shared run folder
can read them: the temporary file is created with mode 0666 and the kernel
applies the umask (the umask is never set: every thread would see the change).
A directory is replaced as a whole by `replace_dir`: the new directory is
written and fsynced under a temporary name, then renamed, so a kill leaves the
complete old directory or the complete new one (as seen through `recover_dir`),
never a mix. JSON (`json_text`, `write_json`) is strict: NaN and +-inf are
written as null.
"""

import errno
import io
import json
import math
import os
import pathlib
import shutil
import uuid
from typing import Any, Callable, Mapping, Union

import numpy as np

PathLike = Union[str, os.PathLike]


def fsync_dir(path: PathLike) -> None:
  """fsyncs the directory `path`, so a rename inside it survives a power loss."""
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def write_bytes(path: PathLike, data: bytes) -> pathlib.Path:
  """Atomically replaces `path` by `data` (mode 0666 & ~umask); returns the path."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0666 & ~umask
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as err:
    if os.path.exists(tmp):
      os.remove(tmp)
    if isinstance(err, OSError) and err.errno in _DISK_FULL:
      raise disk_full(err, path, len(data)) from None
    raise
  fsync_dir(path.parent)
  return path


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def write_numpy(path: PathLike, save: Callable[..., None], *args, **kwargs) -> pathlib.Path:
  """Atomically writes what `save(file, *args, **kwargs)` writes (`np.save`, `np.savez`).

  E.g. `write_numpy(path, np.savez, eigvals=w, eigvecs=v)`: the same bytes as
  `np.savez(path, ...)`, through `write_bytes`.
  """
  buffer = io.BytesIO()
  save(buffer, *args, **kwargs)
  return write_bytes(path, buffer.getvalue())


def disk_full(err: OSError, path: PathLike, needed: int) -> OSError:
  """`err` (ENOSPC / EDQUOT) as an OSError naming `path`, the bytes `needed` and those free."""
  try:
    free = f"{shutil.disk_usage(pathlib.Path(path).parent).free} bytes are free there"
  except OSError:
    free = "the free space is unknown"
  return OSError(err.errno, f"No space left to write {path}: it needs {needed} bytes, {free}. "
                 "Free some space and rerun the same command to resume")


def write_text(path: PathLike, text: str) -> pathlib.Path:
  """Atomically replaces `path` by the UTF-8 `text`; returns the path."""
  return write_bytes(path, text.encode("utf-8"))


def jsonable(value: Any) -> Any:
  """`value` with ConfigDicts, tuples and NumPy scalars/arrays turned into JSON types."""
  if hasattr(value, "to_dict"):  # ml_collections.ConfigDict
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  return value


def _null_for_non_finite(value: Any) -> Any:
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _null_for_non_finite(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_null_for_non_finite(v) for v in value]
  return value


def json_text(obj: Any, **kwargs) -> str:
  """`json.dumps` of `jsonable(obj)` with NaN and +-inf as null: strict JSON every parser reads.

  The one JSON writer of ntk_tf; `kwargs` go to `json.dumps` (`allow_nan` is False).
  """
  return json.dumps(_null_for_non_finite(jsonable(obj)), allow_nan=False, **kwargs)


def write_json(path: PathLike, obj: Any) -> pathlib.Path:
  """Atomically writes `obj` as indented, key-sorted JSON (`json_text`); returns the path."""
  return write_text(path, json_text(obj, indent=2, sort_keys=True) + "\n")


def _old_dir(path: pathlib.Path) -> pathlib.Path:
  return path.parent / f".{path.name}.old"


def recover_dir(path: PathLike) -> pathlib.Path:
  """Undoes a `replace_dir` killed between its two renames; returns `path`.

  Call before reading a directory that `replace_dir` writes: if `path` is
  missing but its moved-aside previous version exists, that version is put
  back; leftovers of killed writes are removed.
  """
  path = pathlib.Path(path)
  old = _old_dir(path)
  if old.exists():
    if path.exists():
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(old, path)
      fsync_dir(path.parent)
  if path.parent.exists():
    for stray in path.parent.glob(f".{path.name}.*.partial"):
      shutil.rmtree(stray, ignore_errors=True)
  return path


def replace_dir(path: PathLike, fill: Callable[[pathlib.Path], None]) -> pathlib.Path:
  """Atomically replaces the directory `path` by one that `fill(tmp_dir)` writes.

  `fill` writes plain files into the empty `tmp_dir`; each is fsynced, then the
  directory is renamed onto `path` (the old one is first moved aside to
  `.<name>.old`, then removed) and the parent fsynced. A kill at any point
  leaves the complete old directory or the complete new one, as seen through
  `recover_dir` (which this function also runs first).

  Returns:
    `path` as a `pathlib.Path`.
  """
  path = recover_dir(path)
  parent = path.parent
  parent.mkdir(parents=True, exist_ok=True)
  tmp = parent / f".{path.name}.{uuid.uuid4().hex}.partial"
  tmp.mkdir(mode=0o777)
  try:
    fill(tmp)
    for child in tmp.iterdir():
      if child.is_file():
        fd = os.open(child, os.O_RDONLY)
        try:
          os.fsync(fd)
        finally:
          os.close(fd)
    fsync_dir(tmp)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  old = _old_dir(path)
  if path.exists():
    os.rename(path, old)
  os.rename(tmp, path)
  fsync_dir(parent)
  shutil.rmtree(old, ignore_errors=True)
  return path
