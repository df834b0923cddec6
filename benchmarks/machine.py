"""The features of the machine that set the speed of the Gram paths, for the benchmark table.

CPU model and AVX-512 (from /proc/cpuinfo), whether TensorFlow runs its oneDNN
CPU kernels (TF_ENABLE_ONEDNN_OPTS, else TF's own default for this CPU), the
BLAS kernel NumPy calls (threadpoolctl when installed, else numpy.show_config)
and OPENBLAS_CORETYPE.
"""

import os
import platform
from typing import Dict


def _cpuinfo() -> Dict[str, str]:
  """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
  fields = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if not line.strip():
          break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
  except OSError:
    pass
  return fields


def onednn_enabled() -> str:
  """Returns "on" or "off": whether TensorFlow uses its oneDNN CPU kernels in this process."""
  setting = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
  if setting in ("0", "1"):
    return ("on" if setting == "1" else "off") + " (TF_ENABLE_ONEDNN_OPTS)"
  try:
    from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
    return ("on" if _pywrap_util_port.IsMklEnabled() else "off") + " (TF default for this CPU)"
  except (ImportError, AttributeError):
    return "unknown"


def numpy_blas() -> str:
  """Returns the BLAS library (and its CPU kernel where known) NumPy calls."""
  try:
    import threadpoolctl  # pylint: disable=g-import-not-at-top
    import numpy  # pylint: disable=g-import-not-at-top,unused-import
    infos = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
    if infos:
      return "; ".join(f"{i.get('internal_api')} {i.get('version')} "
                       f"kernel={i.get('architecture', '?')} threads={i.get('num_threads')}"
                       for i in infos)
  except ImportError:
    pass
  import numpy as np  # pylint: disable=g-import-not-at-top
  try:
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    return f"{blas.get('name')} {blas.get('version')} (numpy.show_config; kernel unknown)"
  except (TypeError, KeyError):
    return "unknown"


def features() -> Dict[str, str]:
  """Returns {feature: value} for CPU model, AVX-512, oneDNN, NumPy BLAS, OPENBLAS_CORETYPE."""
  info = _cpuinfo()
  flags = info.get("flags", "").split()
  return {
      "CPU": info.get("model name") or platform.processor() or "unknown",
      "AVX-512": ("yes" if "avx512f" in flags else "no") if flags else "unknown",
      "TF oneDNN": onednn_enabled(),
      "NumPy BLAS": numpy_blas(),
      "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
  }


def format_features(values: Dict[str, str]) -> str:
  """Returns the features as aligned `name: value` lines."""
  width = max(map(len, values))
  return "\n".join(f"{name:<{width}s}  {value}" for name, value in values.items())
