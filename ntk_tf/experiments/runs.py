"""Runs of the Sec. 3.2 / 4.2 / 4.3 experiments: config checks, data, checkpoints, training.

Config conventions (configs/kernel_rotation.py, late_linearization.py, nads.py; shared
with configs/eigenfunctions.py where the fields overlap):
  experiment         the experiment name; `binaries/report` identifies a workdir by it.
  variant            "smoke" | "small" | "paper" | ...; recorded in the report.
  model / models     names of `ntk_tf.models.MODEL_NAMES`; activation; model_kwargs.
  recipe             the base preset of `ntk_tf.recipe` ("PAPER_SGD" or "PAPER_CIFAR2");
  optimizer          "sgd" (the preset) or "adam" (PAPER_ADAM with the preset's epochs);
  epochs, learning_rate, batch_size   override the recipe when not None
                     (`experiments.common.make_recipe`).
  model_seed, train_seed, data_seed   theta0, minibatch order, data sampling.
  gram               block_size, implementation, dtype of every Gram (GramStore).

Validation helpers raise ValueError naming the config field and the bad value.
"""

import math
import pathlib
import shutil
from typing import Any, Dict, Iterable, List, Optional, Sequence

from absl import logging
import keras
import numpy as np

from ntk_tf import data as data_lib
from ntk_tf import models as models_lib
from ntk_tf import recipe as recipe_lib
from ntk_tf import training
from ntk_tf.experiments import common

RECIPE_PRESETS = ("PAPER_SGD", "PAPER_CIFAR2")
GRAM_DTYPES = ("float32", "float64")
GRAM_IMPLEMENTATIONS = ("jacobian", "structured", "ntk_vector_products", "auto")


# ----------------------------------------------------------------------------
# Validation (names the config field and the value).

def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
  if value not in choices:
    raise ValueError(f"config.{name} must be one of {tuple(choices)}. Received: {name}={value!r}")
  return value


def check_positive_int(value: Any, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
    raise ValueError(f"config.{name} must be a positive int. Received: {name}={value!r}")
  return int(value)


def check_non_negative_int(value: Any, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise ValueError(f"config.{name} must be a non-negative int. Received: {name}={value!r}")
  return int(value)


def check_int_list(values: Any, name: str, *, low: int, high: Optional[int] = None) -> List[int]:
  """A non-empty list of distinct ints in [low, high], returned sorted."""
  if values is None or isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
    raise ValueError(f"config.{name} must be a non-empty list of ints. Received: {name}={values!r}")
  values = list(values)
  if not values:
    raise ValueError(f"config.{name} must be a non-empty list of ints. Received: {name}=[]")
  for v in values:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
      raise ValueError(f"config.{name} must hold ints. Received: {name}={values!r}")
    if v < low or (high is not None and v > high):
      bound = f"[{low}, {high}]" if high is not None else f">= {low}"
      raise ValueError(f"config.{name} entries must lie in {bound}. Received: {name}={values!r}")
  if len(set(values)) != len(values):
    raise ValueError(f"config.{name} must not repeat entries. Received: {name}={values!r}")
  return sorted(int(v) for v in values)


def check_model(name: Any, field: str = "model") -> str:
  return check_choice(name, field, models_lib.MODEL_NAMES)


def check_gram(gram: Any) -> None:
  check_positive_int(gram.block_size, "gram.block_size")
  check_choice(gram.implementation, "gram.implementation", GRAM_IMPLEMENTATIONS)
  check_choice(gram.dtype, "gram.dtype", GRAM_DTYPES)


def recipe_from_config(config: Any) -> recipe_lib.Recipe:
  """The preset `config.recipe` with the optimizer and overrides of the config (validated)."""
  check_choice(config.recipe, "recipe", RECIPE_PRESETS)
  try:
    return common.make_recipe(config, getattr(recipe_lib, config.recipe))
  except (TypeError, ValueError) as e:
    raise ValueError(f"config recipe fields are invalid: {e}") from None


def check_common(config: Any, *, models_field: str = "model") -> recipe_lib.Recipe:
  """Checks the fields every experiment has; returns the recipe."""
  if not config.get("experiment"):
    raise ValueError(f"config.experiment must name the experiment. "
                     f"Received: experiment={config.get('experiment')!r}")
  for name in ("model_seed", "train_seed", "data_seed"):
    check_non_negative_int(config[name], name)
  names = config[models_field]
  for name in ([names] if isinstance(names, str) else list(names)):
    check_model(name, models_field)
  common.check_model_kwargs(config)
  return recipe_from_config(config)


def check_dataset_sizes(config: Any) -> None:
  check_choice(config.dataset, "dataset", data_lib.DATASET_NAMES)
  for name in ("train_size", "test_size"):
    if config[name] is not None:
      check_positive_int(config[name], name)
  if config.get("data_dir") is not None and not pathlib.Path(config.data_dir).is_dir():
    raise ValueError(f"config.data_dir must be an existing folder. Received: "
                     f"data_dir={config.data_dir!r}")


# ----------------------------------------------------------------------------
# Building blocks.

def load_dataset(config: Any, name: Optional[str] = None) -> data_lib.Dataset:
  return data_lib.load(name or config.dataset, data_dir=config.get("data_dir", None),
                       train_size=config.train_size, test_size=config.test_size,
                       seed=config.data_seed, allow_download=config.get("allow_download", False))


def build_model(config: Any, name: str, input_shape: Sequence[int]) -> keras.Model:
  """The model `name` at initialization theta0 (seed = config.model_seed)."""
  return common.build_model(config, name, input_shape, config.model_seed)


def model_kwargs(config: Any, name: str) -> Dict[str, Any]:
  """Architecture extras of model `name`: config.model_kwargs[name] (e.g. {"width": 4})."""
  return common.model_kwargs(config, name)


def clone_with_weights(model: keras.Model, weights: Optional[List[np.ndarray]] = None
                       ) -> keras.Model:
  """An independent copy of `model` (same architecture) holding `weights` (default: model's)."""
  copy = keras.models.clone_model(model)
  copy.set_weights(model.get_weights() if weights is None else weights)
  return copy


def fresh_dir(path: pathlib.Path, fingerprint: str) -> pathlib.Path:
  """`path`, emptied first if it was made for other settings (its fingerprint.txt differs).

  Keeps a run's resumable state, checkpoints and Grams when the settings are the
  same, and never resumes a run of other settings (e.g. another model seed).
  """
  path = pathlib.Path(path)
  stamp = path / "fingerprint.txt"
  if path.exists() and (not stamp.is_file() or stamp.read_text() != fingerprint):
    logging.info("Clearing %s, left by a run with other settings.", path)
    shutil.rmtree(path)
  path.mkdir(parents=True, exist_ok=True)
  stamp.write_text(fingerprint)
  return path


def checkpoint_path(train_dir: pathlib.Path, epoch: int) -> pathlib.Path:
  """The file `ntk_tf.train` writes for `checkpoint_epochs` entry `epoch`."""
  return pathlib.Path(train_dir) / "checkpoints" / f"epoch_{epoch:04d}.weights.h5"


def load_checkpoint(model: keras.Model, train_dir: pathlib.Path, epoch: int) -> keras.Model:
  """A copy of `model` holding the weights saved after `epoch` of the run in `train_dir`."""
  path = checkpoint_path(train_dir, epoch)
  if not path.is_file():
    raise FileNotFoundError(f"No checkpoint for epoch {epoch} in {train_dir}. "
                            f"Received: path={path}")
  copy = clone_with_weights(model)
  copy.load_weights(str(path))
  return copy


def train_run(model: keras.Model, x_train: np.ndarray, y_train01: np.ndarray,
              x_test: np.ndarray, y_test01: np.ndarray, *, recipe: recipe_lib.Recipe,
              seed: int, train_dir: pathlib.Path, checkpoint_epochs: Sequence[int] = (),
              progress: bool = False) -> training.TrainResult:
  """`ntk_tf.train` in `train_dir` (resumes a killed run; a finished run returns at once)."""
  logging.info("Training %s in %s (%d epochs).", model.name, train_dir, recipe.epochs)
  return training.train(model, x_train, y_train01, x_test=x_test, y_test01=y_test01,
                        recipe=recipe, seed=seed, workdir=str(train_dir),
                        checkpoint_epochs=checkpoint_epochs, progress=progress)


def history_summary(result: training.TrainResult, prefix: Optional[str] = None) -> Dict[str, Any]:
  """Final train/test metrics of a run as flat columns `<prefix>_<metric>` (or `<metric>`)."""
  final = result.final
  steps = result.steps_to_loss()
  values = {
      "train_loss": final["train_loss"],
      "train_acc": final["train_acc"],
      "test_acc": final["test_acc"],
      "max_test_acc": max(row["test_acc"] for row in result.history),
      "l2_distance": final["l2_distance"],
      "steps_to_loss": math.nan if steps is None else steps,
  }
  return {(f"{prefix}_{k}" if prefix else k): v for k, v in values.items()}


def history_columns(result: training.TrainResult, keys: Sequence[str]) -> Dict[str, List[float]]:
  """Per-epoch lists of `keys` from a TrainResult (row 0 = initialization)."""
  return {k: [float(row[k]) for row in result.history] for k in keys}


# ----------------------------------------------------------------------------
# Plot helpers.

def pyplot():
  """matplotlib.pyplot with the non-interactive Agg backend."""
  import matplotlib  # Heavy import; only where figures are drawn.
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def save_figure(fig, path: pathlib.Path) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  pyplot().close(fig)
  logging.info("Wrote %s", path)
  return path
