"""The shared steps of every experiment: settings, data, model, Theta_0, training, result rows.

    config -> settings (validated, typed, frozen; before any folder is made)
           -> data (`DataSpec.load`) -> model at theta0 (`ModelSpec.build`)
           -> Theta_0 (`theta0.store`: a content-addressed GramStore shared by experiments)
           -> spectrum and tasks (`experiments/spectrum.py`)
           -> training (`train_task`: resumable, one folder per task)
           -> result rows (`workdir.ResultStore`, `summary`) -> figures (`experiments/plots.py`)

An experiment module holds only what is particular to it: its settings
dataclass, its loop over tasks and its rows. Errors of a config name the field
("config.train_size must be ..."). Labels are +-1 everywhere (`ntk_tf.train`).

Theta_0 cache: one content-addressed store per (model, seed, weights, data,
dtype), shared by every experiment and by the gram binary (`theta0`). Default
folder: `$NTK_TF_CACHE_DIR/grams`, else `~/.cache/ntk_tf/grams`.
"""

import dataclasses
import json
import math
import os
import pathlib
import shutil
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import logging
import keras
import numpy as np

import ntk_tf
from ntk_tf import atomic
from ntk_tf import data as data_lib
from ntk_tf import models as models_lib
from ntk_tf import recipe as recipe_lib
from ntk_tf import training
from ntk_tf import validation
from ntk_tf.data import sources
from ntk_tf.distributed import cluster as cluster_lib
from ntk_tf.experiments import workdir as workdir_lib

KINDS = ("network", "linearized")
RECIPE_PRESETS = ("PAPER_SGD", "PAPER_CIFAR2")
RECIPE_OVERRIDES = ("epochs", "learning_rate", "batch_size")
GRAM_DTYPES = ("float32", "float64")
GRAM_IMPLEMENTATIONS = tuple(m.value for m in ntk_tf.NtkImplementation)
_FULL_SIZES = {"cifar10": "cifar10", "cifar2": "cifar10", "mnist": "mnist", "mnist2": "mnist"}


# ----------------------------------------------------------------------------
# Settings: config fields -> typed values; every error names the field.

def field(config: Mapping[str, Any], name: str, default: Any = None) -> Any:
  """config[name] of a dict or ConfigDict, `default` where it is absent."""
  return config[name] if name in config else default


def check_names(value: Any, name: str, allowed: Sequence[str]) -> Tuple[str, ...]:
  """Distinct names from a list (entries may be "a,b") or one "a,b" string, in the given order."""
  items = [value] if isinstance(value, str) else value
  if not isinstance(items, (list, tuple)):
    raise ValueError(f"config.{name} must be a list of names. Received: {name}={value!r}")
  names = tuple(p.strip() for item in items for p in str(item).split(",") if p.strip())
  if not names:
    raise ValueError(f"config.{name} must be a non-empty list of names. Received: {name}={value!r}")
  bad = [n for n in names if n not in allowed]
  if bad:
    raise ValueError(f"config.{name} holds unknown names {bad}; expected some of "
                     f"{list(allowed)}. Received: {name}={list(names)}")
  if len(set(names)) != len(names):
    raise ValueError(f"config.{name} must not repeat a name. Received: {name}={list(names)}")
  return names


def check_ints(value: Any, name: str, *, low: int, high: Optional[int] = None
               ) -> Tuple[int, ...]:
  """A non-empty set of distinct ints in [low, high], returned sorted ascending."""
  items = [value] if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
  if not isinstance(items, (list, tuple)) or not items:
    raise ValueError(f"config.{name} must be a non-empty list of ints. Received: {name}={value!r}")
  bound = f"[{low}, {high}]" if high is not None else f">= {low}"
  for v in items:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
      raise ValueError(f"config.{name} must hold ints. Received: {name}={list(items)!r}")
    if v < low or (high is not None and v > high):
      raise ValueError(f"config.{name} entries must lie in {bound}. Received: {name}={list(items)!r}")
  if len(set(items)) != len(items):
    raise ValueError(f"config.{name} must not repeat a value. Received: {name}={list(items)!r}")
  return tuple(sorted(int(v) for v in items))


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
  return validation.check_choice(value, f"config.{name}", choices)


def check_positive_int(value: Any, name: str) -> int:
  return validation.check_positive_int(value, f"config.{name}")


def check_non_negative_int(value: Any, name: str) -> int:
  return validation.check_non_negative_int(value, f"config.{name}")


def check_optional_size(value: Any, name: str, maximum: int) -> Optional[int]:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= maximum:
    raise ValueError(f"config.{name} must be None or an int in [1, {maximum}]. "
                     f"Received: {name}={value!r}")
  return int(value)


def check_positive_number(value: Any, name: str) -> float:
  if (isinstance(value, bool) or not isinstance(value, (int, float))
      or not math.isfinite(value) or value <= 0):
    raise ValueError(f"config.{name} must be a positive number. Received: {name}={value!r}")
  return float(value)


@dataclasses.dataclass(frozen=True)
class Common:
  """What every experiment has: its name, variant, recipe and the raw config (config.json)."""
  experiment: str
  variant: str
  recipe: recipe_lib.Recipe
  progress: bool
  config: Mapping[str, Any]


def check_common(config: Mapping[str, Any], default_recipe: str = "PAPER_SGD") -> Common:
  """The fields every experiment has.

  The recipe is the preset `config.recipe` (default `default_recipe`), "adam"
  swapping in PAPER_ADAM with the preset's epochs (App. E.1), then the config's
  non-None overrides of `RECIPE_OVERRIDES`.
  """
  experiment = field(config, "experiment")
  if not experiment:
    raise ValueError(f"config.experiment must name the experiment. Received: experiment={experiment!r}")
  preset = check_choice(field(config, "recipe", default_recipe), "recipe", RECIPE_PRESETS)
  optimizer = check_choice(field(config, "optimizer", "sgd"), "optimizer", recipe_lib.OPTIMIZERS)
  base = getattr(recipe_lib, preset)
  recipe = base if optimizer == "sgd" else recipe_lib.PAPER_ADAM.replace(epochs=base.epochs)
  overrides = {k: field(config, k) for k in RECIPE_OVERRIDES if field(config, k) is not None}
  try:
    recipe = recipe.replace(**overrides)
  except (TypeError, ValueError) as e:
    raise ValueError(f"config recipe fields are invalid: {e}") from None
  raw = atomic.jsonable(config)
  return Common(experiment=str(experiment), variant=str(field(config, "variant", "?")),
                recipe=recipe, progress=bool(field(config, "progress", False)), config=raw)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A paper model at its seeded initialization theta0 (`ntk_tf.models.get`)."""
  name: str
  activation: str
  kwargs: Mapping[str, Any]  # architecture extras, e.g. {"width": 16}
  seed: int

  def build(self, input_shape: Sequence[int], seed: Optional[int] = None) -> keras.Model:
    """The model at theta0 (same spec and seed, bit-identical weights)."""
    return models_lib.get(self.name, input_shape=tuple(input_shape), activation=self.activation,
                          seed=self.seed if seed is None else seed, **dict(self.kwargs))


def check_models(config: Mapping[str, Any], name: str = "models",
                 seed_field: Optional[str] = "model_seed") -> Tuple[ModelSpec, ...]:
  """One ModelSpec per name of config.<name> (config.activation, config.model_kwargs[name])."""
  names = check_names(config[name], name, models_lib.MODEL_NAMES)
  activation = check_choice(config["activation"], "activation", models_lib.ACTIVATIONS)
  extras = atomic.jsonable(field(config, "model_kwargs") or {})
  bad = sorted(set(extras) - set(models_lib.MODEL_NAMES))
  if bad:
    raise ValueError(f"config.model_kwargs keys must be model names {list(models_lib.MODEL_NAMES)}. "
                     f"Received: model_kwargs keys {bad}")
  seed = check_non_negative_int(config[seed_field], seed_field) if seed_field else 0
  return tuple(ModelSpec(n, activation, dict(extras.get(n, {})), seed) for n in names)


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """A (sub)sampled dataset of `ntk_tf.data` (None sizes keep the whole split)."""
  dataset: str
  train_size: Optional[int]
  test_size: Optional[int]
  seed: int
  data_dir: Optional[str]
  allow_download: bool

  @property
  def full_sizes(self) -> Tuple[int, int]:
    _, _, train, test = sources.RAW_SPECS[_FULL_SIZES[self.dataset]]
    return train, test

  @property
  def num_train(self) -> int:
    return self.train_size or self.full_sizes[0]

  @property
  def num_test(self) -> int:
    return self.test_size or self.full_sizes[1]

  def identity(self) -> Dict[str, Any]:
    """What determines the samples (for task fingerprints): not where the files are."""
    return {"dataset": self.dataset, "train_size": self.train_size,
            "test_size": self.test_size, "seed": self.seed}

  def load(self, **overrides: Any) -> data_lib.Dataset:
    spec = dataclasses.replace(self, **overrides)
    return data_lib.load(spec.dataset, data_dir=spec.data_dir, train_size=spec.train_size,
                         test_size=spec.test_size, seed=spec.seed,
                         allow_download=spec.allow_download)


def check_data(config: Mapping[str, Any], datasets: Sequence[str] = data_lib.DATASET_NAMES,
               *, sizes: bool = True) -> DataSpec:
  """config.dataset, train_size, test_size (bounded by the split), data_seed, data_dir."""
  dataset = check_choice(config["dataset"], "dataset", datasets)
  data_dir = field(config, "data_dir")
  if data_dir is not None and not pathlib.Path(data_dir).is_dir():
    raise ValueError(f"config.data_dir must be an existing folder. Received: data_dir={data_dir!r}")
  spec = DataSpec(dataset, None, None, check_non_negative_int(field(config, "data_seed", 0),
                                                              "data_seed"),
                  data_dir, bool(field(config, "allow_download", False)))
  if not sizes:
    return spec
  full_train, full_test = spec.full_sizes
  return dataclasses.replace(
      spec, train_size=check_optional_size(field(config, "train_size"), "train_size", full_train),
      test_size=check_optional_size(field(config, "test_size"), "test_size", full_test))


@dataclasses.dataclass(frozen=True)
class GramSpec:
  """How Theta_0 is computed (block size, implementation, dtype), where it is cached, and on
  which cluster ("local:N", or None: TF_CONFIG when set, else this process; `theta0`)."""
  block_size: int
  implementation: str
  dtype: str
  cache_dir: str
  cluster: Optional[str] = None

  def identity(self) -> Dict[str, Any]:
    """What determines a Gram's values (for fingerprints): not where it is cached."""
    return {"block_size": self.block_size, "implementation": self.implementation,
            "dtype": self.dtype}


def default_gram_cache_dir() -> pathlib.Path:
  """`$NTK_TF_CACHE_DIR/grams`, else `~/.cache/ntk_tf/grams`."""
  root = os.environ.get("NTK_TF_CACHE_DIR")
  base = pathlib.Path(root) if root else pathlib.Path.home() / ".cache" / "ntk_tf"
  return base / "grams"


def check_cluster(value: Any) -> Optional[str]:
  """config.gram.cluster: None or "local:N" (N >= 1 localhost workers)."""
  if value is not None and not isinstance(value, str):
    raise ValueError(f"config.gram.cluster must be 'local:N' or None. Received: cluster={value!r}")
  try:
    return cluster_lib.check_cluster(value)
  except ValueError as err:
    raise ValueError(f"config.gram.{err}") from None


def check_gram(config: Mapping[str, Any]) -> GramSpec:
  gram = config["gram"]
  cache_dir = field(gram, "cache_dir")
  if cache_dir is not None and not isinstance(cache_dir, str):
    raise ValueError(f"config.gram.cache_dir must be a folder path or None. "
                     f"Received: gram.cache_dir={cache_dir!r}")
  path = pathlib.Path(cache_dir).expanduser() if cache_dir else default_gram_cache_dir()
  return GramSpec(block_size=check_positive_int(gram["block_size"], "gram.block_size"),
                  implementation=check_choice(gram["implementation"], "gram.implementation",
                                              GRAM_IMPLEMENTATIONS),
                  dtype=check_choice(gram["dtype"], "gram.dtype", GRAM_DTYPES),
                  cache_dir=str(path.absolute()), cluster=check_cluster(field(gram, "cluster")))


# ----------------------------------------------------------------------------
# Workdir, Theta_0, training.

def prepare(workdir: os.PathLike, settings: Any) -> Tuple[pathlib.Path, workdir_lib.ResultStore]:
  """Creates the workdir; writes config.json (the raw config) and settings.json (normalized).

  settings.json holds the resolved settings (recipe, sizes, ...) that
  `binaries/report` reads instead of re-deriving them from the config.
  """
  common = settings.common
  path = workdir_lib.prepare(workdir, common.config)
  normalized = dataclasses.asdict(settings)
  del normalized["common"]["config"]
  data = getattr(settings, "data", None)
  if isinstance(data, DataSpec):  # The resolved sizes (None = the whole split).
    normalized["data"].update(num_train=data.num_train, num_test=data.num_test)
  normalized.update(experiment=common.experiment, variant=common.variant)
  atomic.write_json(path / "settings.json", normalized)
  return path, workdir_lib.ResultStore(path)


def fresh_dir(path: os.PathLike, fingerprint: str) -> pathlib.Path:
  """`path`, emptied first if another job made it (its fingerprint.txt differs); the one place.

  A job of the same settings keeps what it left (resumable state, checkpoints,
  Grams); a job of other settings (e.g. another seed) never reuses it.
  """
  path = pathlib.Path(path)
  stamp = path / "fingerprint.txt"
  if path.exists() and (not stamp.is_file() or stamp.read_text() != fingerprint):
    logging.info("Clearing %s, left by a job with other settings.", path)
    shutil.rmtree(path)
  path.mkdir(parents=True, exist_ok=True)
  if not stamp.is_file():
    atomic.write_text(stamp, fingerprint)
  return path


def clone_with_weights(model: keras.Model, weights: Optional[List[np.ndarray]] = None
                       ) -> keras.Model:
  """An independent copy of `model` holding `weights` (default: the model's)."""
  copy = keras.models.clone_model(model)
  copy.set_weights(model.get_weights() if weights is None else weights)
  return copy


def load_checkpoint(model: keras.Model, task_dir: os.PathLike, epoch: int) -> keras.Model:
  """A copy of `model` with the weights `train_task` saved after `epoch` in `task_dir`."""
  path = pathlib.Path(task_dir) / "checkpoints" / f"epoch_{epoch:04d}.weights.h5"
  if not path.is_file():
    raise FileNotFoundError(f"No checkpoint for epoch {epoch} in {task_dir}. Received: path={path}")
  copy = clone_with_weights(model)
  copy.load_weights(str(path))
  return copy


@dataclasses.dataclass(frozen=True)
class TaskData:
  """The samples of one binary task: x `[N, ...]`, y `[N]` in {-1, +1}; test likewise."""
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


def train_task(model: keras.Model, data: TaskData, *, recipe: recipe_lib.Recipe, seed: int,
               task_dir: os.PathLike, fingerprint: str, checkpoint_epochs: Sequence[int] = (),
               progress: bool = False) -> training.TrainResult:
  """Trains a network or a `Linearized` model on one task with `ntk_tf.train`, resumably.

  `task_dir` (cleared first if another job's, see `fresh_dir`) holds
  metrics.csv, checkpoints/ and, while the task runs, the resumable state/. A
  finished task leaves result.json (its history) and drops state/; calling
  again returns that result without training.

  Paper: App. A (recipe), Sec. 3.1 and Fig. 3 (metrics).
  """
  task_dir = fresh_dir(task_dir, fingerprint)
  done = task_dir / "result.json"
  if done.is_file():
    saved = json.loads(done.read_text())
    return training.TrainResult(history=training.history_from_json(saved["history"]),
                                recipe=recipe, seed=seed)
  logging.info("Training %s in %s (%d epochs).", model.name, task_dir, recipe.epochs)
  result = training.train(model, data.x_train, data.y_train, x_test=data.x_test,
                          y_test=data.y_test, recipe=recipe, seed=seed, workdir=str(task_dir),
                          checkpoint_epochs=checkpoint_epochs, progress=progress)
  atomic.write_json(done, {"history": result.history, "seed": seed, "recipe": recipe.to_dict()})
  shutil.rmtree(task_dir / "state", ignore_errors=True)
  return result


def summary(result: training.TrainResult, prefix: Optional[str] = None) -> Dict[str, Any]:
  """The final metrics of a run as flat columns `<prefix>_<metric>` (or `<metric>`).

  train_loss, train_acc, test_acc, max_test_acc (over epochs), l2_distance,
  cosine_distance, steps_to_loss (None if the recipe's loss threshold was never reached).
  """
  final = result.final
  values = {"train_loss": final["train_loss"], "train_acc": final["train_acc"],
            "test_acc": final["test_acc"],
            "max_test_acc": max(row["test_acc"] for row in result.history),
            "l2_distance": final["l2_distance"], "cosine_distance": final["cosine_distance"],
            "steps_to_loss": result.steps_to_loss()}
  return {(f"{prefix}_{k}" if prefix else k): v for k, v in values.items()}


def positive_fraction(y: np.ndarray) -> float:
  """The fraction of +1 labels, averaged in float32 as the tables always were."""
  return float(np.mean((np.asarray(y) > 0).astype(np.float32)))


class Timer:
  """Wall seconds since construction (the `seconds` column)."""

  def __init__(self):
    self._start = time.time()

  @property
  def seconds(self) -> float:
    return time.time() - self._start


def write_table(path: os.PathLike, rows: Sequence[Mapping[str, Any]],
                columns: Optional[Sequence[str]] = None,
                int_columns: Sequence[str] = ()) -> pathlib.Path:
  """Writes `rows` as a CSV (`int_columns` as nullable ints: empty where None)."""
  import pandas as pd  # Heavy import; only where tables are written.
  table = pd.DataFrame(list(rows), columns=columns)
  for name in int_columns:
    table[name] = table[name].astype("Int64")
  return atomic.write_text(path, table.to_csv(index=False))
