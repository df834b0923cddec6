"""Shared helpers for ntk_tf tests: data location and quiet TensorFlow."""

import os
import pathlib
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def data_dir() -> Optional[str]:
  """The folder with cifar10.npz / mnist.npz, or None where it is absent.

  Looks at NTK_TF_DATA_DIR (set by scripts/test.sh to ../shared/data when that
  folder exists), then at ../shared/data beside the source tree.
  """
  candidates = []
  if os.environ.get("NTK_TF_DATA_DIR"):
    candidates.append(pathlib.Path(os.environ["NTK_TF_DATA_DIR"]))
  here = pathlib.Path(__file__).resolve()
  for parent in here.parents:
    candidates.append(parent / "shared" / "data")
  for c in candidates:
    if (c / "cifar10.npz").is_file() and (c / "mnist.npz").is_file():
      return str(c)
  return None


def require_data(test_case) -> str:
  """Returns the data folder or skips the calling test with a reason."""
  d = data_dir()
  if d is None:
    test_case.skipTest("real data not found: set NTK_TF_DATA_DIR to a folder with "
                       "cifar10.npz and mnist.npz (../shared/data on CI)")
  return d
