"""Float64 copies of Keras models, for reference-precision NTKs.

A float32 model cast "on the fly" still computes in float32; the only way to
get truly float64 Jacobians is a model whose variables *and* layer compute
dtypes are float64. `as_float64_model` rebuilds the architecture from its
config with every dtype policy set to "float64" and copies the weights, cast.
"""

from typing import Any

import keras
import numpy as np

from ntk_tf import types


def _with_float64_dtypes(config: Any) -> Any:
  """Returns `config` with every "dtype" entry (layer policies, inputs) set to float64."""
  if isinstance(config, dict):
    return {key: ("float64" if key == "dtype" else _with_float64_dtypes(value))
            for key, value in config.items()}
  if isinstance(config, list):
    return [_with_float64_dtypes(value) for value in config]
  return config


def as_float64_model(model: keras.Model) -> keras.Model:
  """Returns a copy of `model` with float64 variables and float64 compute dtype.

  Same architecture, same weights (trainable and non-trainable, e.g. BatchNorm
  moving statistics) cast to float64, so `copy(x) == model(x)` up to float32
  round-off. The copy is independent: later changes to `model` do not reach it.
  Call it with `training=False` for inference-mode BatchNorm (as every ntk_tf
  function does). A model that is already float64 is returned as is.

  Args:
    model: a functional or Sequential Keras model (anything with
      `get_config`/`from_config`).

  Returns:
    A float64 `keras.Model`.
  """
  if all(v.dtype == "float64" for v in model.weights) and model.compute_dtype == "float64":
    return model
  try:
    config = model.get_config()
    clone = model.__class__.from_config(_with_float64_dtypes(config))
  except (NotImplementedError, TypeError, ValueError) as err:
    raise ValueError(
        "as_float64_model needs a model that round-trips through get_config/from_config "
        f"(functional or Sequential). Received: model={model.name!r} "
        f"({type(model).__name__}): {err}") from err
  source_weights = model.get_weights()
  if len(source_weights) != len(clone.weights):
    raise ValueError(
        f"float64 clone of model={model.name!r} has {len(clone.weights)} weights, the model "
        f"has {len(source_weights)}; cannot copy them.")
  clone.set_weights([np.asarray(w, dtype=np.float64) for w in source_weights])
  return clone


def model_for_dtype(model: keras.Model, dtype: types.DType) -> keras.Model:
  """Returns `model` itself for float32 and its float64 copy for float64."""
  name = canonical_dtype(dtype)
  return as_float64_model(model) if name == "float64" else model


def canonical_dtype(dtype: types.DType) -> str:
  """Returns "float32" or "float64" for any spelling of those dtypes, else raises."""
  try:
    name = np.dtype(getattr(dtype, "as_numpy_dtype", dtype)).name
  except TypeError:
    name = None
  if name not in ("float32", "float64"):
    raise ValueError(f"dtype must be float32 or float64. Received: dtype={dtype!r}")
  return name
