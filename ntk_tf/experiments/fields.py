"""Settings read from a config: each field declared once, with the check that reads it.

An experiment's settings are a frozen dataclass whose fields say how each is read:

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Settings:
      common: pipeline.Common = fields.block(pipeline.Common)
      data: pipeline.DataSpec = fields.block(pipeline.DataSpec, datasets=("cifar2",))
      gram: pipeline.GramSpec = fields.block(pipeline.GramSpec, key="gram")
      top_k: int = fields.setting(validation.check_positive_int)
      measure_epochs: Tuple[int, ...] = fields.setting(
          fields.int_set, low=0, high=lambda s: s.common.recipe.epochs)

    settings = fields.read(Settings, config)

`read` fills the fields in their order, before any folder is made or data read:
  * a `setting` is `check(config.<key>, "config.<key>", **bounds)` (key: the
    field's name unless given), or its `default` where the config lacks it;
  * a `block` is a dataclass of such fields, read from the same config or from
    its sub-config `config.<key>` with `bounds` as options, or a function
    `reader(config, **bounds)` of the config (several fields into one value).
A bound given as a function is called with what has been read so far: the
fields above it and the options of the read, as attributes. Every check
raises ValueError naming the field ("config.<key> must be ...") and the value.
"""

import dataclasses
import math
import types
from typing import (Any, Callable, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple, Type,
                    TypeVar)

import numpy as np

from ntk_tf import validation

T = TypeVar("T")
Check = Callable[..., Any]  # check(value, label, **bounds) -> the typed value
REQUIRED = dataclasses.MISSING
_HOW = "ntk_tf.experiments.fields"  # the metadata key of a field's `_Reading`


class _Reading(NamedTuple):
  """How `read` fills one field: a `setting` (`reader` is its check) or a `block`."""
  is_setting: bool
  reader: Any
  key: Optional[str]
  default: Any
  bounds: Dict[str, Any]


def setting(check: Check, *, key: Optional[str] = None, default: Any = REQUIRED,
            **bounds: Any) -> Any:
  """A settings field read from config.<key> by `check` (`default`: where the config lacks it)."""
  how = {_HOW: _Reading(True, check, key, default, bounds)}
  if default is REQUIRED:
    return dataclasses.field(metadata=how)
  return dataclasses.field(default=default, metadata=how)


def block(reader: Any, *, key: Optional[str] = None, **bounds: Any) -> Any:
  """A settings field read from several config fields: a dataclass of settings, or a function."""
  return dataclasses.field(metadata={_HOW: _Reading(False, reader, key, REQUIRED, bounds)})


def read(cls: Type[T], config: Mapping[str, Any], *, label: str = "config", **options: Any) -> T:
  """`cls` (a dataclass of `setting` and `block` fields) read from `config`, each field checked.

  Args:
    cls: the settings dataclass.
    config: a ConfigDict or dict.
    label: how the errors name `config` ("config", or e.g. "config.gram").
    **options: values the bounds of the fields may read (as attributes).
  Raises:
    ValueError: a field's check, naming "<label>.<key>" and the value.
  """
  known = types.SimpleNamespace(**options)
  for item in dataclasses.fields(cls):
    if _HOW not in item.metadata:
      raise TypeError(f"{cls.__name__}.{item.name} is not a fields.setting or fields.block.")
    how = item.metadata[_HOW]
    bounds = {name: bound(known) if callable(bound) else bound
              for name, bound in how.bounds.items()}
    if how.is_setting:
      key = how.key or item.name
      value = config[key] if key in config or how.default is REQUIRED else how.default
      value = how.reader(value, f"{label}.{key}", **bounds)
    else:  # A block: of the whole config, or of its sub-config config.<key>.
      sub, sub_label = ((config[how.key], f"{label}.{how.key}") if how.key
                        else (config, label))
      value = (read(how.reader, sub, label=sub_label, **bounds)
               if dataclasses.is_dataclass(how.reader) else how.reader(sub, **bounds))
    setattr(known, item.name, value)
  return cls(**{item.name: getattr(known, item.name) for item in dataclasses.fields(cls)})


def get(config: Mapping[str, Any], key: str, default: Any = None) -> Any:
  """config[key] of a dict or ConfigDict, `default` where it is absent."""
  return config[key] if key in config else default


# ----------------------------------------------------------------------------
# Checks: check(value, label, **bounds) -> the typed value. `label` is "config.<key>";
# where a message quotes the value as "<key>=...", `_key` drops the "config." prefix.
# (ntk_tf.validation's check_positive_int, check_non_negative_int and check_choice
# are checks of this form too.)

def _key(label: str) -> str:
  return label.split(".", 1)[1] if label.startswith("config.") else label


def flag(value: Any, label: str) -> bool:
  del label  # Any value: its truth.
  return bool(value)


def text(value: Any, label: str) -> str:
  del label  # Any value: its str.
  return str(value)


def optional(check: Check) -> Check:
  """`check`, letting None through."""
  def check_or_none(value: Any, label: str, **bounds: Any) -> Any:
    return None if value is None else check(value, label, **bounds)
  return check_or_none


def at_most(value: Any, label: str, *, maximum: int, bound: str = "{maximum}") -> int:
  """A positive int <= `maximum`; `bound` says what the maximum is, e.g. "train_size={maximum}"."""
  number = validation.check_positive_int(value, label)
  if number > maximum:
    raise ValueError(f"{label} must be <= {bound.format(maximum=maximum)}. "
                     f"Received: {_key(label)}={number}")
  return number


def names(value: Any, label: str, allowed: Sequence[str]) -> Tuple[str, ...]:
  """Distinct names from a list (entries may be "a,b") or one "a,b" string, in the given order."""
  name = _key(label)
  items = [value] if isinstance(value, str) else value
  if not isinstance(items, (list, tuple)):
    raise ValueError(f"{label} must be a list of names. Received: {name}={value!r}")
  found = tuple(p.strip() for item in items for p in str(item).split(",") if p.strip())
  if not found:
    raise ValueError(f"{label} must be a non-empty list of names. Received: {name}={value!r}")
  bad = [n for n in found if n not in allowed]
  if bad:
    raise ValueError(f"{label} holds unknown names {bad}; expected some of "
                     f"{list(allowed)}. Received: {name}={list(found)}")
  if len(set(found)) != len(found):
    raise ValueError(f"{label} must not repeat a name. Received: {name}={list(found)}")
  return found


def int_set(value: Any, label: str, *, low: int, high: Optional[int] = None) -> Tuple[int, ...]:
  """A non-empty set of distinct ints in [low, high], returned sorted ascending."""
  name = _key(label)
  items = [value] if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
  if not isinstance(items, (list, tuple)) or not items:
    raise ValueError(f"{label} must be a non-empty list of ints. Received: {name}={value!r}")
  bound = f"[{low}, {high}]" if high is not None else f">= {low}"
  for v in items:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
      raise ValueError(f"{label} must hold ints. Received: {name}={list(items)!r}")
    if v < low or (high is not None and v > high):
      raise ValueError(f"{label} entries must lie in {bound}. Received: {name}={list(items)!r}")
  if len(set(items)) != len(items):
    raise ValueError(f"{label} must not repeat a value. Received: {name}={list(items)!r}")
  return tuple(sorted(int(v) for v in items))


def optional_size(value: Any, label: str, maximum: int) -> Optional[int]:
  """None (a whole split) or a sample count in [1, maximum]."""
  if value is None:
    return None
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
      or not 1 <= value <= maximum):
    raise ValueError(f"{label} must be None or an int in [1, {maximum}]. "
                     f"Received: {_key(label)}={value!r}")
  return int(value)


def positive_number(value: Any, label: str) -> float:
  if (isinstance(value, bool) or not isinstance(value, (int, float))
      or not math.isfinite(value) or value <= 0):
    raise ValueError(f"{label} must be a positive number. Received: {_key(label)}={value!r}")
  return float(value)


def non_negative_number(value: Any, label: str) -> float:
  """A finite number >= 0, as a float."""
  if (isinstance(value, bool) or not isinstance(value, (int, float))
      or not math.isfinite(value) or value < 0):
    raise ValueError(f"{label} must be a number >= 0. Received: {_key(label)}={value!r}")
  return float(value)
