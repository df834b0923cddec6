"""Experiment working directories: the config, resumable per-task results, atomic writes.

Layout of a workdir:
  config.json            the config of the latest run (previous ones kept as config.<n>.json)
  settings.json          its validated, resolved settings (`pipeline.prepare`; the report reads it)
  results/<task>.json    one finished task each, written atomically; holds the config
                         fingerprint of the settings that produced it
  results.csv            every finished task as a table (rewritten after each task)

A rerun with the same workdir skips tasks whose result exists *with the same
fingerprint*. A finished task whose settings changed is never recomputed over:
`ResultStore.get` (and `pipeline.fresh_dir` for a task's folder) raise
`validation.ConflictError` naming the changed settings (old -> new) and the
finished tasks made with the old ones. To start over on purpose, `start_over`
(the binaries' --start_over) first moves the earlier work to earlier.<n>/.
"""

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from absl import logging

from ntk_tf import atomic
from ntk_tf import validation

EARLIER = "earlier"  # start_over moves earlier work to <workdir>/earlier.<n>/
# How a refusal (`conflict`) tells the user to start over; reproduce looks for it in logs.
START_OVER_HINT = "pass --start_over to move the earlier work"
_MAX_NAMED = 10  # tasks named in a conflict message, then "and N more"


class Fingerprint(str):
  """A `fingerprint`: the hash, keeping (`.settings`) the JSON settings it was made of."""
  settings: Optional[Dict[str, Any]]

  def __new__(cls, value: str, settings: Optional[Mapping[str, Any]] = None):
    obj = super().__new__(cls, value)
    obj.settings = None if settings is None else atomic.jsonable(settings)
    return obj


def fingerprint(settings: Mapping[str, Any]) -> Fingerprint:
  """sha256 (16 hex digits) of the canonical JSON of `settings` (kept as `.settings`)."""
  text = atomic.json_text(settings, sort_keys=True)
  return Fingerprint(hashlib.sha256(text.encode()).hexdigest()[:16], settings)


def _flat(settings: Any, prefix: str = "") -> Dict[str, Any]:
  """{dotted path: leaf value} of nested dicts."""
  if not isinstance(settings, Mapping) or not settings:
    return {prefix: settings}
  flat = {}
  for key, value in settings.items():
    flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
  return flat


def setting_changes(old: Optional[Mapping[str, Any]], new: Optional[Mapping[str, Any]]
                    ) -> Dict[str, Tuple[Any, Any]]:
  """{dotted path: (old value, new value)} of the settings that differ (absent: "<absent>")."""
  if old is None or new is None:
    return {}
  before, after = _flat(atomic.jsonable(old)), _flat(atomic.jsonable(new))
  return {k: (before.get(k, "<absent>"), after.get(k, "<absent>"))
          for k in sorted(set(before) | set(after)) if before.get(k, "<absent>") != after.get(
              k, "<absent>")}


def _made_with(settings: Optional[Mapping[str, Any]], changes: Mapping[str, Tuple[Any, Any]]
               ) -> bool:
  """Whether `settings` hold the old value of every changed setting."""
  flat = _flat(settings) if settings is not None else {}
  return bool(changes) and all(flat.get(k, "<absent>") == old for k, (old, _) in changes.items())


def conflict(where: os.PathLike, old: Optional[Mapping[str, Any]], new: Fingerprint,
             what: str) -> validation.ConflictError:
  """The error of a run that would replace `what` (work made with `old`) in `where`."""
  changes = setting_changes(old, new.settings)
  if changes:
    changed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
  else:
    changed = "the settings it was made with are not recorded"
  return validation.ConflictError(
      f"{where} holds work made with other settings ({changed}); this run would replace "
      f"{what}. Rerun with the earlier settings, choose another --workdir, or "
      f"{START_OVER_HINT} to {EARLIER}.<n>/ in the workdir first.")


def _named(names: Sequence[str]) -> str:
  """`names` joined, the first `_MAX_NAMED` of them, then "and N more"."""
  more = len(names) - _MAX_NAMED
  return ", ".join(names[:_MAX_NAMED]) + (f" and {more} more" if more > 0 else "")


def start_over(workdir: os.PathLike, config: Any) -> Optional[pathlib.Path]:
  """Moves the earlier work of `workdir` to `workdir`/earlier.<n>/ if another config made it.

  Another config: config.json or a kept config.<n>.json (`prepare`) is not
  `config`. Nothing moves where the workdir is absent, empty, or only `config`
  ran in it (a rerun of the same start-over command resumes). Returns the
  earlier.<n> folder, or None.
  """
  path = pathlib.Path(workdir)
  if not path.is_dir():
    return None
  entries = [p for p in path.iterdir() if not p.name.startswith(f"{EARLIER}.")]
  configs = [p for p in entries if p.name.startswith("config.") and p.name.endswith(".json")]
  new = atomic.jsonable(config)
  if not entries or (configs and all(json.loads(p.read_text()) == new for p in configs)):
    return None
  n = 1
  while (path / f"{EARLIER}.{n}").exists():
    n += 1
  earlier = path / f"{EARLIER}.{n}"
  earlier.mkdir()
  for entry in entries:
    os.replace(entry, earlier / entry.name)
  atomic.fsync_dir(path)
  logging.warning("Starting over: the earlier work of %s is now in %s.", path, earlier)
  return earlier


def resolve_workdir(workdir: str) -> pathlib.Path:
  """Absolute workdir; relative paths are taken from where `bazel run` was called.

  Creates nothing. Raises ValueError if `workdir` is empty, or it (or a folder
  above it) exists as something other than a folder or is a dangling symbolic link.
  """
  if not workdir:
    raise ValueError(f"workdir must be a non-empty path. Received: workdir={workdir!r}")
  path = pathlib.Path(workdir).expanduser()
  if not path.is_absolute():
    path = pathlib.Path(os.environ.get("BUILD_WORKING_DIRECTORY", os.getcwd())) / path
  for link in (path, *path.parents):
    if link.is_symlink() and not link.exists():
      raise ValueError(f"workdir must be a folder, but {link} is a symbolic link to "
                       f"{os.readlink(link)}, which does not exist. Received: "
                       f"workdir={workdir!r}")
  existing = next(p for p in (path, *path.parents) if p.exists())
  if not existing.is_dir():
    raise ValueError(f"workdir must be a folder, but {existing} exists and is not one. "
                     f"Received: workdir={workdir!r}")
  return path


def prepare(workdir: os.PathLike, config: Any) -> pathlib.Path:
  """Creates the workdir and writes config.json (keeping an earlier, different one)."""
  path = pathlib.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  config_path = path / "config.json"
  new = atomic.jsonable(config)
  if config_path.exists():
    old = json.loads(config_path.read_text())
    if old != new:
      n = 1
      while (path / f"config.{n}.json").exists():
        n += 1
      os.replace(config_path, path / f"config.{n}.json")
      logging.info("Config changed; the previous one is kept as config.%d.json", n)
  atomic.write_json(config_path, new)
  return path


@contextlib.contextmanager
def kept_on_conflict(workdir: os.PathLike) -> Iterator[None]:
  """On a `validation.ConflictError`, puts config.json and settings.json back as they were.

  A refused rerun leaves the workdir describing its finished work (what
  binaries/report reads), not the refused settings; config.<n>.json that it
  kept are removed again.
  """
  path = pathlib.Path(workdir)
  names = ("config.json", "settings.json")
  before = {n: (path / n).read_bytes() if (path / n).is_file() else None for n in names}
  kept = set(path.glob("config.*.json")) if path.is_dir() else set()
  try:
    yield
  except validation.ConflictError:
    for name, data in before.items():
      if data is None:
        (path / name).unlink(missing_ok=True)
      else:
        atomic.write_bytes(path / name, data)
    for extra in set(path.glob("config.*.json")) - kept:
      extra.unlink()
    raise


# What a run writes into its workdir before any task (`prepare`, `ResultStore`).
_SET_UP_FILES = frozenset(("config.json", "settings.json"))


@contextlib.contextmanager
def removed_if_unused(workdir: os.PathLike) -> Iterator[None]:
  """On an error, removes the workdir if this run made it and no work was written to it.

  A run that stops before its first task (bad data, a full disk, a refused
  cluster) would otherwise leave a folder holding only config.json,
  settings.json and empty folders. A workdir that existed before the run, or
  that holds any other file, is never touched.
  """
  path = pathlib.Path(workdir)
  made_here = not os.path.lexists(path)
  try:
    yield
  except Exception:
    if made_here and path.is_dir() and not path.is_symlink():
      files = [f for f in path.rglob("*") if not f.is_dir()]
      if all(f.parent == path and f.name in _SET_UP_FILES for f in files):
        shutil.rmtree(path)
    raise


class ResultStore:
  """Finished-task results of one experiment, one atomic JSON file per task."""

  def __init__(self, workdir: os.PathLike, name: str = "results"):
    self.root = pathlib.Path(workdir)
    self.dir = self.root / name
    self.csv_path = self.root / f"{name}.csv"
    self.dir.mkdir(parents=True, exist_ok=True)

  def _path(self, key: str) -> pathlib.Path:
    if not key or "/" in key or key.startswith("."):
      raise ValueError(f"Task key must be a plain file name. Received: key={key!r}")
    return self.dir / f"{key}.json"

  def get(self, key: str, fingerprint_: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """The stored row of `key`, or None if absent.

    Raises:
      validation.ConflictError: the row was made with another fingerprint (it is
        kept); the message names the changed settings and the finished tasks
        made with the old ones.
    """
    path = self._path(key)
    if not path.exists():
      return None
    row = json.loads(path.read_text())
    if fingerprint_ is not None and row.get("fingerprint") != fingerprint_:
      new = fingerprint_ if isinstance(fingerprint_, Fingerprint) else Fingerprint(fingerprint_)
      old = row.get("fingerprint_settings")
      changes = setting_changes(old, new.settings)
      others = sorted(r["task"] for r in self.rows() if r.get("task") not in (None, key) and (
          r.get("fingerprint") == row.get("fingerprint")
          or _made_with(r.get("fingerprint_settings"), changes)))
      raise conflict(self.root, old, new, "the results (results/<task>.json) of the finished "
                     f"tasks made with them: {_named([key] + others)}")
    return row

  def put(self, key: str, row: Mapping[str, Any], fingerprint_: Optional[str] = None) -> None:
    """Stores `row` of `key` (with `fingerprint_` and, of a `Fingerprint`, its settings).

    The row also records the machine that made it (`onednn.machine()`: CPU features and
    whether oneDNN was on), unless it names one.
    """
    from ntk_tf import onednn  # pylint: disable=g-import-not-at-top  (imports Keras)
    row = dict(atomic.jsonable(row))
    row["task"] = key
    row.setdefault("machine", onednn.machine())
    if fingerprint_ is not None:
      row["fingerprint"] = str(fingerprint_)
      if getattr(fingerprint_, "settings", None) is not None:
        row["fingerprint_settings"] = fingerprint_.settings
    atomic.write_json(self._path(key), row)
    self.write_csv()

  def rows(self, keys: Optional[Iterable[str]] = None) -> List[Dict[str, Any]]:
    if keys is None:
      paths = sorted(self.dir.glob("*.json"))
    else:
      paths = [self._path(k) for k in keys]
    return [json.loads(p.read_text()) for p in paths if p.exists()]

  def write_csv(self) -> None:
    import pandas as pd  # Heavy import; only where tables are written.
    rows = [{k: v for k, v in r.items() if not isinstance(v, (list, dict))} for r in self.rows()]
    atomic.write_text(self.csv_path, pd.DataFrame(rows).to_csv(index=False))
