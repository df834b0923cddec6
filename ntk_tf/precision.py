"""Numerical precision controls: float64 (or float32) copies of Keras models, TF32 switch.

A float32 model cast "on the fly" still computes in float32; the only way to
get truly float64 Jacobians is a model whose variables *and* layer compute
dtypes are float64. `cast_model(model, dtype)` rebuilds the architecture from
its config with every dtype policy set to `dtype` and copies the weights,
cast; `as_float64_model` is its float64 case. Float64 NTKs are then exact to
~1e-15 rather than float32's ~1e-7.

A model built under a mixed policy ("mixed_float16", "mixed_bfloat16":
float32 variables, float16 compute) is no exception: every public quantity
(`ntk_gram`, `jacobian`, `GramStore`, `NtkOperator`) is computed on its
`cast_model` copy in the dtype asked for, built under a float32 global policy
(`global_policy`) whatever the process's policy is.

`tf32_matmuls(enabled)` scopes TensorFloat-32 matmuls on Ampere+ GPUs. Every
Gram path runs its matmuls inside `tf32_matmuls(allow_tf32)` with
allow_tf32=False unless asked (TF32 keeps a 10-bit mantissa, so a TF32 Gram
is not exact).
"""

import contextlib
from typing import Any, Iterator

import keras
import numpy as np
import tensorflow as tf

from ntk_tf import types

FLOAT_DTYPES = ("float32", "float64")


def canonical_dtype(dtype: types.DType) -> str:
  """Returns "float32" or "float64" for any spelling of those dtypes, else raises."""
  try:
    name = np.dtype(getattr(dtype, "as_numpy_dtype", dtype)).name
  except TypeError:
    name = None
  if name not in FLOAT_DTYPES:
    raise ValueError(f"dtype must be float32 or float64. Received: dtype={dtype!r}")
  return name


def model_dtype(model: keras.Model) -> str:
  """Returns the dtype shared by the model's trainable weights."""
  dtypes = {tf.as_dtype(v.dtype).name for v in model.trainable_variables}
  if len(dtypes) > 1:
    raise ValueError(f"model weights have mixed dtypes. Received: dtypes={sorted(dtypes)}")
  return dtypes.pop() if dtypes else keras.config.floatx()


def computes_in(model: keras.Model, dtype: str) -> bool:
  """Whether every weight of `model` is `dtype` and its layers compute in `dtype`."""
  layers = [model] + list(getattr(model, "_flatten_layers", lambda: [])())
  return (all(v.dtype == dtype for v in model.weights)
          and all(getattr(layer, "compute_dtype", dtype) == dtype for layer in layers))


@contextlib.contextmanager
def global_policy(name: str) -> Iterator[None]:
  """Scopes Keras' global dtype policy (`keras.config.set_dtype_policy`), restoring after."""
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(name)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


def _with_dtype(config: Any, dtype: str) -> Any:
  """Returns `config` with every "dtype" entry (layer policies, inputs) set to `dtype`."""
  if isinstance(config, dict):
    return {key: (dtype if key == "dtype" else _with_dtype(value, dtype))
            for key, value in config.items()}
  if isinstance(config, list):
    return [_with_dtype(value, dtype) for value in config]
  return config


def cast_model(model: keras.Model, dtype: types.DType) -> keras.Model:
  """Returns `model` itself if it already computes in `dtype`, else a copy in `dtype`.

  Same architecture, same weights (trainable and non-trainable, e.g. BatchNorm
  moving statistics) cast to `dtype`, so `copy(x) == model(x)` up to float32
  round-off. The copy is independent: later changes to `model` do not reach it.
  A model of a mixed policy (float32 weights, float16 compute) gets a copy that
  computes in `dtype` too.
  Call it with `training=False` for inference-mode BatchNorm (as every ntk_tf
  function does).

  Args:
    model: a functional or Sequential Keras model (anything with
      `get_config`/`from_config`).
    dtype: "float32" or "float64".
  """
  dtype = canonical_dtype(dtype)
  if computes_in(model, dtype):
    return model
  try:
    config = model.get_config()
    with global_policy(dtype):  # Sublayers made without a dtype: not the process's policy.
      clone = model.__class__.from_config(_with_dtype(config, dtype))
  except (NotImplementedError, TypeError, ValueError) as err:
    raise ValueError(
        "cast_model needs a model that round-trips through get_config/from_config "
        f"(functional or Sequential). Received: model={model.name!r} "
        f"({type(model).__name__}): {err}") from err
  source_weights = model.get_weights()
  if len(source_weights) != len(clone.weights):
    raise ValueError(
        f"{dtype} clone of model={model.name!r} has {len(clone.weights)} weights, the model "
        f"has {len(source_weights)}; cannot copy them.")
  clone.set_weights([np.asarray(w).astype(dtype) if np.issubdtype(np.asarray(w).dtype, np.floating)
                     else w for w in source_weights])
  return clone


def as_float64_model(model: keras.Model) -> keras.Model:
  """Returns a float64 copy of `model` (or `model` itself if already float64)."""
  return cast_model(model, "float64")


def model_for_dtype(model: keras.Model, dtype: types.DType) -> keras.Model:
  """Returns its float64 copy for float64; for float32, `model` itself unless it computes
  in a narrower float (a mixed_float16 / mixed_bfloat16 model: its float32 copy).

  (`ntk_tf.jacobian` and `ntk_tf.alignment` use it; the Gram paths use
  `cast_model`, which also casts a float64 model down for float32.)"""
  name = canonical_dtype(dtype)
  if name == "float64":
    return as_float64_model(model)
  return model if computes_in(model, "float64") else cast_model(model, name)


@contextlib.contextmanager
def tf32_matmuls(enabled: bool) -> Iterator[None]:
  """Scopes TensorFloat-32 matmuls/convs (GPU only; no effect on CPU), restoring after."""
  previous = tf.config.experimental.tensor_float_32_execution_enabled()
  tf.config.experimental.enable_tensor_float_32_execution(bool(enabled))
  try:
    yield
  finally:
    tf.config.experimental.enable_tensor_float_32_execution(previous)
