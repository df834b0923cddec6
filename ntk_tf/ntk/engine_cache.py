"""Per-machine matmul engine of the "auto" NTK path: a pin and a cache, no silent change.

Which `implementation.MatmulEngine` runs a block's final GEMMs fastest depends on the
machine (NumPy's BLAS kernel, TF with or without oneDNN, XLA). The engine
"auto" uses is, in order:

  1. `NTK_TF_MATMUL_ENGINE` (environment: "auto", "numpy" or "xla"), a pin;
  2. the entry for the machine at hand in the cache file `engines.json` under
     `$NTK_TF_CACHE_DIR`, else `~/.cache/ntk_tf` (written by `record`, e.g. by
     a benchmark that timed the engines on the real shapes);
  3. "auto", the path's own default (`implementation.MatmulEngine.AUTO`).

An explicit `matmul_engine=` option of `ntk_gram` overrides all three. Every
engine is exact (each is tested against the float64 reference), but they
round differently, so nothing is chosen or written behind the caller's back:
with no pin and no cache entry the result is that of the default engine.

A machine is `machine_key()`: the CPU's vector extensions (AVX2, AVX-512),
TensorFlow's version and whether its oneDNN kernels are on.
"""

import json
import os
import pathlib
import platform
from typing import Dict, Optional

import tensorflow as tf

from ntk_tf import atomic
from ntk_tf import onednn
from ntk_tf.ntk import implementation as implementation_lib

ENV_PIN = "NTK_TF_MATMUL_ENGINE"
ENV_CACHE_DIR = "NTK_TF_CACHE_DIR"
CACHE_FILE = "engines.json"


def machine_key() -> str:
  """Returns e.g. "x86_64 avx2 avx512f tf=2.21.0 onednn=on": what sets the engines' speed."""
  flags = onednn._cpu_flags()  # pylint: disable=protected-access
  vector = [f for f in ("avx2", "avx512f") if f in flags] or ["novector"]
  return (f"{platform.machine()} {' '.join(vector)} tf={tf.__version__} "
          f"onednn={'on' if onednn.enabled() else 'off'}")


def cache_path() -> pathlib.Path:
  """Returns `$NTK_TF_CACHE_DIR/engines.json`, else `~/.cache/ntk_tf/engines.json`."""
  folder = os.environ.get(ENV_CACHE_DIR) or os.path.join(os.path.expanduser("~"), ".cache",
                                                         "ntk_tf")
  return pathlib.Path(folder) / CACHE_FILE


def _read() -> Dict[str, Dict[str, str]]:
  """The cache file's {machine key: {model key: engine value}} ({} if absent or unreadable)."""
  try:
    entries = json.loads(cache_path().read_text())
  except (OSError, ValueError):
    return {}
  return entries if isinstance(entries, dict) else {}


def record(model_key: str, engine: str) -> pathlib.Path:
  """Stores `engine` for `model_key` on the machine at hand (atomic rewrite); returns the file."""
  member = implementation_lib.resolve_engine(engine)
  entries = _read()
  entries.setdefault(machine_key(), {})[str(model_key)] = member.value
  return atomic.write_json(cache_path(), entries)


def matmul_engine(model_key: str) -> Optional[str]:
  """Returns the pinned or cached engine value for `model_key` here, or None (path default).

  Raises:
    ValueError: if `NTK_TF_MATMUL_ENGINE` names no engine.
  """
  pin = os.environ.get(ENV_PIN)
  if pin:
    return implementation_lib.resolve_engine(pin).value
  cached = _read().get(machine_key(), {}).get(str(model_key))
  return None if cached is None else implementation_lib.resolve_engine(cached).value
