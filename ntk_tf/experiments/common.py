"""Pieces shared by the experiments: config checks, the recipe of a config, one training task.

A *task* is one training run of one model "kind" on one binary labelling:
  kind = "network":     the Keras model f(x; theta), trained from theta0;
  kind = "linearized":  f_lin(x; theta) = f(x; theta0) + J(x; theta0)(theta - theta0)
                        (paper Eq. 1), trained from the same theta0 with the same recipe.

Shapes: x `[N, H, W, C]`, labels `[N]` in {0, 1}.
"""

import math
import pathlib
import shutil
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

from absl import logging
import keras
import numpy as np

from ntk_tf import models
from ntk_tf import recipe as recipe_lib
from ntk_tf import training
from ntk_tf.linearize import linearize

KINDS = ("network", "linearized")
# Config fields that override a value of the base recipe when they are not None.
RECIPE_OVERRIDES = ("epochs", "learning_rate", "batch_size")


def as_name_list(value: Any, name: str) -> List[str]:
  """A list of names from a tuple/list (entries may be "a,b" strings) or one "a,b" string."""
  if isinstance(value, str):
    value = [value]
  if not isinstance(value, (list, tuple)):
    raise ValueError(f"{name} must be a list of names. Received: {name}={value!r}")
  names = [part.strip() for item in value for part in str(item).split(",") if part.strip()]
  if not names:
    raise ValueError(f"{name} must not be empty. Received: {name}={value!r}")
  return names


def check_names(values: Sequence[str], allowed: Sequence[str], name: str) -> None:
  bad = [v for v in values if v not in allowed]
  if bad:
    raise ValueError(f"Unknown {name} {bad}; expected some of {list(allowed)}. "
                     f"Received: {name}={list(values)}")
  if len(set(values)) != len(values):
    raise ValueError(f"{name} must not repeat a value. Received: {name}={list(values)}")


def as_int_list(value: Any, name: str, minimum: int = 1) -> List[int]:
  """A non-empty list of distinct ints >= minimum, kept in the given order."""
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    value = [value]
  if not isinstance(value, (list, tuple)) or len(value) == 0:
    raise ValueError(f"{name} must be a non-empty list of ints. Received: {name}={value!r}")
  ints = []
  for v in value:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
      raise ValueError(f"{name} must hold ints >= {minimum}. Received: {name}={list(value)!r}")
    ints.append(int(v))
  if len(set(ints)) != len(ints):
    raise ValueError(f"{name} must not repeat a value. Received: {name}={ints}")
  return ints


def check_optional_size(value: Any, name: str, maximum: int) -> Optional[int]:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= maximum:
    raise ValueError(f"{name} must be None or an int in [1, {maximum}]. Received: {name}={value!r}")
  return int(value)


def make_recipe(config: Mapping[str, Any], base: recipe_lib.Recipe) -> recipe_lib.Recipe:
  """`base` with the config's optimizer and its non-None overrides (epochs, learning_rate, ...).

  The optimizer picks the paper recipe: "sgd" -> `base` (PAPER_SGD or PAPER_CIFAR2),
  "adam" -> PAPER_ADAM with `base`'s epochs (App. E.1, Fig. 11).
  """
  optimizer = config["optimizer"]
  if optimizer not in recipe_lib.OPTIMIZERS:
    raise ValueError(f"optimizer must be one of {recipe_lib.OPTIMIZERS}. "
                     f"Received: optimizer={optimizer!r}")
  recipe = base if optimizer == "sgd" else recipe_lib.PAPER_ADAM.replace(epochs=base.epochs)
  overrides = {k: config[k] for k in RECIPE_OVERRIDES if config.get(k) is not None}
  return recipe.replace(**overrides)


def as_dict(value: Any) -> Dict[str, Any]:
  """A plain dict of a dict or ml_collections.ConfigDict (nested values too)."""
  return value.to_dict() if hasattr(value, "to_dict") else dict(value or {})


def model_kwargs(config: Mapping[str, Any], name: str) -> Dict[str, Any]:
  """The architecture extras of model `name` (e.g. {"width": 4} for a narrow ResNet18)."""
  extras = as_dict(config.get("model_kwargs"))
  return dict(extras.get(name, {}))


def build_model(config: Mapping[str, Any], name: str, input_shape: Sequence[int],
                seed: int) -> keras.Model:
  """The seeded model `name` at initialization theta0 (same arguments, same weights)."""
  return models.get(name, input_shape=tuple(input_shape), activation=config["activation"],
                    seed=seed, **model_kwargs(config, name))


def check_model_kwargs(config: Mapping[str, Any]) -> None:
  """Raises ValueError unless model_kwargs is keyed by model names and the activation is known."""
  extras = as_dict(config.get("model_kwargs"))
  bad = sorted(set(extras) - set(models.MODEL_NAMES))
  if bad:
    raise ValueError(f"model_kwargs keys must be model names {list(models.MODEL_NAMES)}. "
                     f"Received: model_kwargs keys {bad}")
  if config["activation"] not in models.ACTIVATIONS:
    raise ValueError(f"activation must be one of {list(models.ACTIVATIONS)}. "
                     f"Received: activation={config['activation']!r}")


def saturation_epoch(test_acc: Sequence[float], tolerance: float) -> int:
  """The first epoch from which test accuracy stays within `tolerance` of its final value.

      e* = min { e : |acc_t - acc_T| <= tolerance for all t >= e }

  Args:
    test_acc: `[T + 1]` test accuracy per epoch, index 0 = initialization.
    tolerance: e.g. 0.01 (one percentage point).
  Returns:
    e* in [0, T].
  Paper: Fig. 5 reports accuracy and distance "when the test accuracy has saturated".
  """
  acc = np.asarray(test_acc, np.float64)  # [T + 1]
  if acc.ndim != 1 or acc.size == 0 or not np.all(np.isfinite(acc)):
    raise ValueError(f"test_acc must be a non-empty finite sequence. Received: {test_acc!r}")
  outside = np.abs(acc - acc[-1]) > tolerance  # [T + 1]
  return int(np.flatnonzero(outside)[-1] + 1) if outside.any() else 0


def train_task(network: keras.Model, kind: str, x_train: np.ndarray, y_train01: np.ndarray,
               x_test: np.ndarray, y_test01: np.ndarray, *, recipe: recipe_lib.Recipe,
               seed: int, task_dir: pathlib.Path, fingerprint: str,
               progress: bool = False) -> Dict[str, Any]:
  """Trains `network` (kind "network") or its linearization at theta0 and returns its metrics.

  Resumable per epoch: `task_dir/state` (see `ntk_tf.training.train`) is kept
  while the task runs and removed when it has finished; a `task_dir` left by a
  task with another fingerprint is cleared first.

  Args:
    network: the model at initialization theta0; trained in place for "network".
    kind: "network" or "linearized".
    x_train, y_train01: `[N, ...]`, `[N]` in {0, 1}.
    x_test, y_test01: `[M, ...]`, `[M]` in {0, 1}.
    recipe: the training recipe.
    seed: shuffling seed.
    task_dir: folder for metrics.csv and the resumable state.
    fingerprint: the task's settings fingerprint.
    progress: show a progress bar per epoch.
  Returns:
    A dict: test_acc, train_acc, train_loss, steps_to_loss (None if never
    reached), l2_distance, cosine_distance (after the last epoch), epochs,
    seconds, and `history` (the per-epoch rows).
  Paper: Sec. 3.1 and Fig. 3 (metrics), App. A (recipe), App. B (linearization).
  """
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}. Received: kind={kind!r}")
  stamp = task_dir / "fingerprint.txt"
  if task_dir.exists() and (not stamp.exists() or stamp.read_text() != fingerprint):
    logging.info("Clearing %s, left by a task with other settings.", task_dir)
    shutil.rmtree(task_dir)
  task_dir.mkdir(parents=True, exist_ok=True)
  stamp.write_text(fingerprint)
  model = network if kind == "network" else linearize(network)
  start = time.time()
  result = training.train(model, x_train, y_train01, x_test=x_test, y_test01=y_test01,
                          recipe=recipe, seed=seed, workdir=str(task_dir), progress=progress)
  final = result.final
  steps = result.steps_to_loss(recipe.loss_threshold)
  shutil.rmtree(task_dir / "state", ignore_errors=True)
  return {
      "test_acc": final["test_acc"],
      "train_acc": final["train_acc"],
      "train_loss": final["train_loss"],
      "steps_to_loss": steps,
      "l2_distance": final["l2_distance"],
      "cosine_distance": final["cosine_distance"],
      "epochs": recipe.epochs,
      "seconds": time.time() - start,
      "history": result.history,
  }


def nan_if_none(value: Optional[float]) -> float:
  return math.nan if value is None else float(value)
