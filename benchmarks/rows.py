"""Result rows of the benchmarks: appended to a CSV, stamped with the commit they measured."""

import csv
import os
import pathlib
import subprocess
from typing import List, Mapping, Sequence


def append_rows(path: os.PathLike, rows: Sequence[Mapping[str, object]],
                columns: Sequence[str]) -> None:
  """Appends `rows` (dicts with `columns`) to the CSV at `path`; the header when it is new."""
  path = pathlib.Path(path)
  new = not path.exists()
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("a", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
    if new:
      writer.writeheader()
    writer.writerows(rows)


def read_rows(path: os.PathLike) -> List[dict]:
  """The rows of the CSV at `path` ([] when there is no file)."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  with path.open(newline="") as f:
    return list(csv.DictReader(f))


def commit() -> str:
  """The short hash of the checkout's HEAD, or "unknown" outside a git checkout."""
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True, cwd=pathlib.Path(__file__).parent).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
