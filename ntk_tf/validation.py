"""Argument checks shared by the NTK modules; every error names the bad value."""

from typing import Optional

import keras
import numpy as np

from ntk_tf import types


def check_positive_int(value, name: str) -> int:
  """Returns `value` as an int if it is a positive integer, else raises ValueError."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
    raise ValueError(f"{name} must be a positive int. Received: {name}={value!r}")
  return int(value)


def check_inputs(model: keras.Model, x: types.Inputs, name: str = "x",
                 dtype: Optional[str] = None) -> np.ndarray:
  """Returns `x` as a NumPy array after checking it fits `model` and is finite.

  Args:
    model: the Keras model `x` is fed to; `x.shape[1:]` must equal its input
      shape (dimensions that the model leaves as None match anything).
    x: `[N, ...]` inputs.
    name: the argument name used in error messages.
    dtype: the NumPy dtype of the result (default: the model's input dtype).
  """
  array = np.asarray(x)
  if not np.issubdtype(array.dtype, np.number):
    raise ValueError(f"{name} must be numeric. Received: {name}.dtype={array.dtype}")
  expected = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
  if expected is not None:
    fits = array.ndim == len(expected) + 1 and all(
        e is None or e == s for e, s in zip(expected, array.shape[1:]))
    if not fits:
      raise ValueError(
          f"{name} must have shape [N, {', '.join(str(e) for e in expected)}] for model "
          f"{model.name!r}. Received: {name}.shape={array.shape}")
  if array.ndim == 0 or array.shape[0] == 0:
    raise ValueError(f"{name} must hold at least one example. Received: {name}.shape={array.shape}")
  if not np.all(np.isfinite(array)):
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    raise ValueError(f"{name} must be finite. Received: {name} with {bad} NaN/inf entries")
  out_dtype = dtype or (model.inputs[0].dtype if getattr(model, "inputs", None) else "float32")
  return np.ascontiguousarray(array, dtype=np.dtype(str(getattr(out_dtype, "name", out_dtype))))


def check_finite_weights(model: keras.Model) -> None:
  """Raises ValueError naming the first variable of `model` with a NaN/inf entry."""
  for variable in model.weights:
    if not np.all(np.isfinite(np.asarray(variable))):
      raise ValueError(
          f"model {model.name!r} has non-finite weights. Received: variable "
          f"{variable.path!r} with NaN/inf entries")
