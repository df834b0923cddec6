"""Argument checks shared by the NTK modules; every error names the bad value."""

from typing import Any, Optional, Sequence
import warnings

import keras
import numpy as np

from ntk_tf import types


class ConflictError(ValueError):
  """Earlier work would be replaced or mixed with this job's; the message says what and the way on.

  The binaries print it as one line (`experiments/cli.main`), not a traceback.
  """


def check_positive_int(value, name: str) -> int:
  """Returns `value` as an int if it is a positive integer, else raises ValueError."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
    raise ValueError(f"{name} must be a positive int. Received: {name}={value!r}")
  return int(value)


def check_inputs(model: keras.Model, x: types.Inputs, name: str = "x",
                 dtype: Optional[str] = None, *, one_logit: bool = True) -> np.ndarray:
  """Returns `x` as a NumPy array after checking it fits `model` and is finite.

  Complex inputs are refused (not cast: that would drop their imaginary part);
  uint8 inputs are used as their raw 0-255 values, with a warning once per process.
  For a subclassed model (no symbolic outputs to read), the model is run on the
  first example to check that its output is one logit (`check_single_logit`),
  or, with `one_logit=False`, one output of K logits `[N, K]` (`check_logits`).

  Args:
    model: the Keras model `x` is fed to; `x.shape[1:]` must equal its input
      shape (dimensions that the model leaves as None match anything).
    x: `[N, ...]` inputs, one array.
    name: the argument name used in error messages.
    dtype: the NumPy dtype of the result (default: the model's input dtype; for a
      subclassed model without `inputs`, float `x` keeps its dtype, other x gets floatx).
  """
  try:
    array = np.asarray(x)
  except ValueError:  # A list of arrays of different shapes: one per model input.
    array = None
  if array is None or array.dtype == object:
    received = (f"{name} = a {type(x).__name__} of {len(x)} arrays"
                if isinstance(x, (list, tuple, dict)) else f"{name}.dtype=object")
    raise ValueError(f"{name} must be one array [N, ...]: ntk_tf expects a model with one input. "
                     f"Received: {received}")
  if np.iscomplexobj(array):
    raise ValueError(f"{name} must be real: ntk_tf does not take complex inputs (a cast would "
                     f"drop their imaginary part). Received: {name}.dtype={array.dtype}")
  if not np.issubdtype(array.dtype, np.number):
    raise ValueError(f"{name} must be numeric. Received: {name}.dtype={array.dtype}")
  if array.dtype == np.uint8:
    _warn_once("uint8", f"{name} is uint8: ntk_tf uses its raw 0-255 values as they are (no "
                        "scaling to [0, 1]); divide by 255 first if the model expects that.")
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
  if dtype is not None:
    out_dtype = dtype
  elif getattr(model, "inputs", None):
    out_dtype = model.inputs[0].dtype
  else:  # A subclassed model (e.g. `Linearized`): keep float inputs as they are.
    out_dtype = array.dtype if np.issubdtype(array.dtype, np.floating) else keras.config.floatx()
  array = np.ascontiguousarray(array, dtype=np.dtype(str(getattr(out_dtype, "name", out_dtype))))
  if not getattr(model, "outputs", None) and model.built:
    outputs = model(array[:1], training=False)
    if one_logit:
      _check_one_logit(model, outputs, "for one example")
    else:
      check_logits(model, outputs, "for one example")
  return array


def check_finite_weights(model: keras.Model) -> None:
  """Raises ValueError naming the first variable of `model` with a NaN/inf entry."""
  for variable in model.weights:
    if not np.all(np.isfinite(np.asarray(variable))):
      raise ValueError(
          f"model {model.name!r} has non-finite weights. Received: variable "
          f"{variable.path!r} with NaN/inf entries")


def check_non_negative_int(value, name: str) -> int:
  """Returns `value` as an int if it is an integer >= 0, else raises ValueError."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise ValueError(f"{name} must be a non-negative int. Received: {name}={value!r}")
  return int(value)


def check_k(k: Optional[int], n: int, name: str = "k") -> int:
  """Returns the count `k` (of eigenpairs or directions) checked to lie in [1, n]; None means n."""
  if k is None:
    return int(n)
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
    raise ValueError(f"{name} must be an int in [1, {n}]. Received: {name}={k!r}")
  return int(k)


def check_choice(value, name: str, choices: Sequence) -> object:
  """Returns `value` if it is one of `choices`, else raises ValueError listing them."""
  if value not in tuple(choices):
    raise ValueError(f"{name} must be one of {tuple(choices)}. Received: {name}={value!r}")
  return value


def parameter_count(model: keras.Model) -> int:
  """Returns P, the number of trainable scalars of `model` (the NTK's parameter dimension)."""
  return int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))


_ONE_LOGIT = "ntk_tf expects a model with one output logit, [N, 1]"
_LOGITS = "ntk_tf expects a model with one output of K logits, [N, K]"


def _check_output(model: keras.Model, outputs: Any, where: str, expects: str,
                  max_width: Optional[int]) -> None:
  """Raises ValueError, `expects` first, unless `outputs` is one `[N]` or `[N, K <= max_width]`."""
  if isinstance(outputs, (list, tuple, dict)):
    if len(outputs) != 1:
      raise ValueError(f"{expects}. Received: model {model.name!r} with {len(outputs)} outputs")
    outputs = list(outputs.values() if isinstance(outputs, dict) else outputs)[0]
  shape = tuple(outputs.shape)
  width_ok = len(shape) == 2 and (max_width is None or shape[1] == max_width)
  if not (len(shape) == 1 or width_ok):
    raise ValueError(f"{expects}. Received: model {model.name!r} with output shape "
                     f"{shape}{' ' + where if where else ''}")


def _check_one_logit(model: keras.Model, outputs: Any, where: str = "") -> None:
  """Raises ValueError unless `outputs` (symbolic or computed) is one `[N, 1]` or `[N]` logit."""
  _check_output(model, outputs, where, _ONE_LOGIT, 1)


def check_logits(model: keras.Model, outputs: Any, where: str = "") -> None:
  """Raises ValueError unless `outputs` (symbolic or computed) is one `[N, K]` or `[N]` output.

  The K logits of one output array (`ntk_tf.ntk.output_kernel`); a model with
  several output arrays is refused, naming how many.
  """
  _check_output(model, outputs, where, _LOGITS, None)


def check_single_logit(model: keras.Model) -> None:
  """Raises ValueError unless `model` is built with one input, one logit and trainable weights.

  The logit is one output `[N, 1]` (or `[N]`): every NTK in ntk_tf is the
  kernel of a single scalar logit (Sec. 2 of the paper: binary classification,
  f: R^d -> R), except `ntk_gram`'s output kernels (`check_model` with
  `one_logit=False`). A subclassed model's output is checked on its inputs
  (`check_inputs`).
  """
  check_model(model, one_logit=True)


def check_model(model: keras.Model, *, one_logit: bool = True) -> None:
  """Raises ValueError unless `model` is built with one input, its logits and trainable weights.

  With `one_logit`, the logits are one `[N, 1]` output (`check_single_logit`);
  else one `[N, K]` output of any K (`check_logits`).
  """
  inputs = getattr(model, "inputs", None)
  if inputs is not None and len(inputs) != 1:
    raise ValueError(f"ntk_tf expects a model with one input, [N, ...]. Received: model "
                     f"{model.name!r} with {len(inputs)} inputs")
  outputs = getattr(model, "outputs", None)
  if outputs:
    (_check_one_logit if one_logit else check_logits)(model, outputs)
  if not model.built:
    raise ValueError(f"model {model.name!r} is not built: ntk_tf needs its weights. Call it on a "
                     f"batch (or model.build(input_shape)) first. Received: model {model.name!r} "
                     "with built=False")
  if not model.trainable_variables:
    raise ValueError(
        f"the NTK needs trainable parameters. Received: model {model.name!r} with 0 trainable "
        "variables")


_warned = set()  # The keys `_warn_once` has warned about in this process.


def _warn_once(key: str, message: str) -> None:
  """Warns `message` (UserWarning) the first time this process passes `key`."""
  if key not in _warned:
    _warned.add(key)
    warnings.warn(message, UserWarning, stacklevel=3)


def sign_convention(vectors: np.ndarray, axis: int = 0) -> np.ndarray:
  """Returns float64 `vectors` with each vector's largest-|entry| made positive (ties: first).

  The one sign convention of ntk_tf for eigenvectors and NADs: a vector v and
  -v span the same eigenspace, so each is reported with
  v[argmax |v|] > 0. `axis` is the axis that runs along one vector: 0 for
  columns `[N, k]` (eigenvectors), 1 for rows `[k, d]`.
  """
  vectors = np.array(vectors, dtype=np.float64, copy=True)
  if vectors.size == 0:
    return vectors
  pivots = np.argmax(np.abs(vectors), axis=axis)  # one index per vector
  pivot_values = np.take_along_axis(vectors, np.expand_dims(pivots, axis), axis=axis)
  signs = np.sign(pivot_values)
  signs[signs == 0] = 1.0
  return vectors * signs
