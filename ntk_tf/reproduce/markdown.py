"""The shared pieces of the results pages: numbers, Markdown tables, PNG bytes, ranks.

A renderer (renderers.py) makes a `Section` of one model's rows with these; pages.py puts
the sections of a figure on its page.
"""

import dataclasses
import math
import pathlib
import struct
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from ntk_tf.reproduce import figures as figures_lib
from ntk_tf.reproduce import tables

Row = Mapping[str, str]
_MODEL_NAMES = {"mlp": "MLP", "lenet": "LeNet", "resnet18": "ResNet18"}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclasses.dataclass
class Section:
  """What a renderer makes of one model's rows."""
  images: List[str]  # PNG file names in the output folder
  body: List[str]  # Markdown lines: tables, notes
  verdict: str  # whether the claim holds, with the number


# ----------------------------------------------------------------------------
# Helpers: numbers, PNGs, tables.

def ranks(values: Sequence[float]) -> np.ndarray:
  """Average ranks (1-based) of `values`; NaN ranks above every number (e.g. "never")."""
  x = np.asarray(values, np.float64)
  x = np.where(np.isnan(x), np.inf, x)
  order = np.argsort(x, kind="stable")
  result = np.empty(len(x))
  sorted_x = x[order]
  start = 0
  while start < len(x):
    stop = start
    while stop + 1 < len(x) and sorted_x[stop + 1] == sorted_x[start]:
      stop += 1
    result[order[start:stop + 1]] = (start + stop) / 2 + 1
    start = stop + 1
  return result


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
  """Spearman's rank correlation (Pearson's of the average ranks); NaN below 3 points."""
  if len(x) < 3:
    return math.nan
  rx, ry = ranks(x), ranks(y)
  if rx.std() == 0 or ry.std() == 0:
    return math.nan
  return float(np.corrcoef(rx, ry)[0, 1])


def fmt(value: float, digits: int = 3) -> str:
  return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def g(value: float) -> str:
  return "—" if value is None or math.isnan(value) else f"{value:.4g}"


def pct(value: float) -> str:
  return "—" if math.isnan(value) else f"{100 * value:.1f}%"


def verdict_word(holds: bool, *numbers: float) -> str:
  """"holds" / "does not hold", or "cannot tell yet" where a number is NaN (too few points)."""
  if any(math.isnan(v) for v in numbers):
    return "cannot tell yet (too few points)"
  return "holds" if holds else "does not hold"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  return lines + ["| " + " | ".join(r) + " |" for r in rows]


def strip_software_chunk(path: pathlib.Path) -> None:
  """Removes the PNG text chunk naming the software (matplotlib's version) from `path`."""
  data = path.read_bytes()
  if data[:8] != _PNG_MAGIC:
    raise ValueError(f"Not a PNG file. Received: path={path.name}")
  out, offset = [data[:8]], 8
  while offset < len(data):
    (length,) = struct.unpack(">I", data[offset:offset + 4])
    kind = data[offset + 4:offset + 8]
    chunk = data[offset:offset + 12 + length]
    body = data[offset + 8:offset + 8 + length]
    if not (kind in (b"tEXt", b"iTXt", b"zTXt") and body.split(b"\0", 1)[0] == b"Software"):
      out.append(chunk)
    offset += 12 + length
  path.write_bytes(b"".join(out))


def drawn(path: pathlib.Path) -> str:
  strip_software_chunk(path)
  return path.name


def model_name(name: str) -> str:
  return _MODEL_NAMES.get(name, name)


def by_kind(rows: Sequence[Row], kind: str) -> List[Row]:
  return [r for r in rows if r.get("kind") == kind]


def row_index(row: Row) -> Optional[int]:
  text = row.get("index", "")
  return int(float(text)) if text else None


def row_config(rows: Sequence[Row]) -> Dict:
  return next((tables.values(r, "config") for r in rows if r.get("config")), None) or {}


def page_command(spec: figures_lib.FigureSpec, models: Sequence[str], scale: str) -> str:
  models = ",".join(models)
  return (f"bazel run //binaries:reproduce -- --figure={spec.name} --models={models} "
          f"--scale={scale} --workdir=runs/{scale}")
