"""Experiment working directories: the config, resumable per-task results, atomic writes.

Layout of a workdir:
  config.json            the config of the latest run (previous ones kept as config.<n>.json)
  settings.json          its validated, resolved settings (`pipeline.prepare`; the report reads it)
  results/<task>.json    one finished task each, written atomically; holds the config
                         fingerprint of the settings that produced it
  results.csv            every finished task as a table (rewritten after each task)

A rerun with the same workdir skips tasks whose result exists *with the same
fingerprint*; a task whose settings changed is recomputed, never silently mixed.
"""

import hashlib
import json
import os
import pathlib
from typing import Any, Dict, Iterable, List, Mapping, Optional

from absl import logging

from ntk_tf import atomic


def fingerprint(settings: Mapping[str, Any]) -> str:
  """sha256 (16 hex digits) of the canonical JSON of `settings`."""
  text = atomic.json_text(settings, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def resolve_workdir(workdir: str) -> pathlib.Path:
  """Absolute workdir; relative paths are taken from where `bazel run` was called.

  Creates nothing. Raises ValueError if `workdir` is empty or it (or a folder
  above it) exists as something other than a folder.
  """
  if not workdir:
    raise ValueError(f"workdir must be a non-empty path. Received: workdir={workdir!r}")
  path = pathlib.Path(workdir).expanduser()
  if not path.is_absolute():
    path = pathlib.Path(os.environ.get("BUILD_WORKING_DIRECTORY", os.getcwd())) / path
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
    """The stored row of `key`, or None if absent or made with another fingerprint."""
    path = self._path(key)
    if not path.exists():
      return None
    row = json.loads(path.read_text())
    if fingerprint_ is not None and row.get("fingerprint") != fingerprint_:
      logging.info("Task %s was computed with other settings; recomputing.", key)
      return None
    return row

  def put(self, key: str, row: Mapping[str, Any], fingerprint_: Optional[str] = None) -> None:
    row = dict(atomic.jsonable(row))
    row["task"] = key
    if fingerprint_ is not None:
      row["fingerprint"] = fingerprint_
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
