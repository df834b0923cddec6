"""Numerical precision controls: model dtype casts and the TF32 matmul switch.

`cast_model(model, "float64")` rebuilds a Keras functional model with every
layer computing in float64 and the same (upcast) weights, so float64 NTKs are
exact to ~1e-15 rather than float32's ~1e-7. `tf32_matmuls(enabled)` scopes
TensorFloat-32 matmuls on Ampere+ GPUs; it is off by default, and the
reference "jacobian" path never turns it on (TF32 keeps a 10-bit mantissa, so
a TF32 Gram is not exact).
"""

import contextlib
from typing import Iterator

import keras
import numpy as np
import tensorflow as tf

from ntk_tf.types import DType

FLOAT_DTYPES = ("float32", "float64")


def canonical_dtype(dtype: DType) -> str:
  """Returns "float32" or "float64" for a dtype given as name, NumPy or TF dtype."""
  name = tf.as_dtype(dtype).name if not isinstance(dtype, str) else dtype
  if name not in FLOAT_DTYPES:
    raise ValueError(f"dtype must be one of {FLOAT_DTYPES}. Received: dtype={dtype!r}")
  return name


def model_dtype(model: keras.Model) -> str:
  """Returns the compute dtype shared by the model's trainable weights."""
  dtypes = {tf.as_dtype(v.dtype).name for v in model.trainable_variables}
  if len(dtypes) > 1:
    raise ValueError(f"model weights have mixed dtypes. Received: dtypes={sorted(dtypes)}")
  return dtypes.pop() if dtypes else keras.config.floatx()


def cast_model(model: keras.Model, dtype: DType) -> keras.Model:
  """Returns `model` itself if it already computes in `dtype`, else a float copy.

  The copy is `keras.models.clone_model` with each layer rebuilt from its
  config with `dtype=dtype`, then the original weights cast to `dtype`.

  Args:
    model: a functional or sequential Keras model.
    dtype: "float32" or "float64".
  """
  dtype = canonical_dtype(dtype)
  if model_dtype(model) == dtype and tf.as_dtype(model.inputs[0].dtype).name == dtype:
    return model

  def clone_layer(layer):
    config = layer.get_config()
    config["dtype"] = dtype
    return layer.__class__.from_config(config)

  input_tensors = [keras.Input(shape=t.shape[1:], dtype=dtype, name=getattr(t, "name", None))
                   for t in model.inputs]
  clone = keras.models.clone_model(
      model, input_tensors=input_tensors if len(input_tensors) > 1 else input_tensors[0],
      clone_function=clone_layer)
  clone.set_weights([np.asarray(w).astype(dtype) if np.issubdtype(np.asarray(w).dtype, np.floating)
                     else w for w in model.get_weights()])
  return clone


@contextlib.contextmanager
def tf32_matmuls(enabled: bool) -> Iterator[None]:
  """Scopes TensorFloat-32 matmuls/convs (GPU only; no effect on CPU), restoring after."""
  previous = tf.config.experimental.tensor_float_32_execution_enabled()
  tf.config.experimental.enable_tensor_float_32_execution(bool(enabled))
  try:
    yield
  finally:
    tf.config.experimental.enable_tensor_float_32_execution(previous)
