"""The shared steps of every experiment: settings, data, model, Theta_0, training, result rows.

    config -> settings (validated, typed, frozen; before any folder is made)
           -> data (`DataSpec.load`) -> model at theta0 (`ModelSpec.build`)
           -> Theta_0 (`theta0.store`: a content-addressed GramStore shared by experiments)
           -> spectrum and tasks (`experiments/spectrum.py`)
           -> training (`train_task`: resumable, one folder per task)
           -> result rows (`workdir.ResultStore`, `summary`) -> figures (`experiments/plots.py`)

An experiment module holds only what is particular to it: its settings
dataclass (the blocks below and its own fields, each read once by `fields.read`),
its loop over tasks and its rows. Errors of a config name the field
("config.train_size must be ..."). Labels are +-1 everywhere (`ntk_tf.train`).

Theta_0 cache: one content-addressed store per (model, seed, weights, data,
dtype), shared by every experiment and by the gram binary (`theta0`). Default
folder: `$NTK_TF_CACHE_DIR/grams`, else `~/.cache/ntk_tf/grams`.
"""

import dataclasses
import json
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
from ntk_tf.experiments import fields
from ntk_tf.experiments import workdir as workdir_lib

KINDS = ("network", "linearized")
RECIPE_PRESETS = ("PAPER_SGD", "PAPER_CIFAR2")
RECIPE_OVERRIDES = ("epochs", "learning_rate", "batch_size")
GRAM_DTYPES = ("float32", "float64")
GRAM_IMPLEMENTATIONS = tuple(m.value for m in ntk_tf.NtkImplementation)
_FULL_SIZES = {"cifar10": "cifar10", "cifar2": "cifar10", "mnist": "mnist", "mnist2": "mnist"}


# ----------------------------------------------------------------------------
# The settings blocks every experiment shares (configs/common.py), read by `fields.read`.

def _experiment_name(value: Any, label: str) -> str:
  if not value:
    raise ValueError(f"{label} must name the experiment. Received: experiment={value!r}")
  return str(value)


def read_recipe(config: Mapping[str, Any]) -> recipe_lib.Recipe:
  """The training recipe: the preset config.recipe, then config.optimizer and the overrides.

  "adam" swaps in PAPER_ADAM with the preset's epochs (App. E.1); the config's
  non-None `RECIPE_OVERRIDES` replace the preset's values.
  """
  preset = validation.check_choice(config["recipe"], "config.recipe", RECIPE_PRESETS)
  optimizer = validation.check_choice(fields.get(config, "optimizer", "sgd"), "config.optimizer",
                                      recipe_lib.OPTIMIZERS)
  base = getattr(recipe_lib, preset)
  recipe = base if optimizer == "sgd" else recipe_lib.PAPER_ADAM.replace(epochs=base.epochs)
  overrides = {k: config[k] for k in RECIPE_OVERRIDES if fields.get(config, k) is not None}
  try:
    return recipe.replace(**overrides)
  except (TypeError, ValueError) as e:
    raise ValueError(f"config recipe fields are invalid: {e}") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Common:
  """What every experiment has: its name, variant, recipe and the raw config (config.json)."""
  experiment: str = fields.setting(_experiment_name)
  variant: str = fields.setting(fields.text, default="?")
  recipe: recipe_lib.Recipe = fields.block(read_recipe)
  progress: bool = fields.setting(fields.flag, default=False)
  config: Mapping[str, Any] = fields.block(atomic.jsonable)


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


def read_models(config: Mapping[str, Any], key: str = "models") -> Tuple[ModelSpec, ...]:
  """One ModelSpec per name of config.<key>: config.activation, model_kwargs[name], model_seed.

  model_seed is 0 where the config has none (an experiment that seeds each run itself).
  """
  names = fields.names(config[key], f"config.{key}", models_lib.MODEL_NAMES)
  activation = validation.check_choice(config["activation"], "config.activation",
                                       models_lib.ACTIVATIONS)
  extras = atomic.jsonable(fields.get(config, "model_kwargs") or {})
  bad = sorted(set(extras) - set(models_lib.MODEL_NAMES))
  if bad:
    raise ValueError(f"config.model_kwargs keys must be model names {list(models_lib.MODEL_NAMES)}. "
                     f"Received: model_kwargs keys {bad}")
  seed = validation.check_non_negative_int(fields.get(config, "model_seed", 0), "config.model_seed")
  return tuple(ModelSpec(n, activation, dict(extras.get(n, {})), seed) for n in names)


def read_model(config: Mapping[str, Any]) -> ModelSpec:
  """The one ModelSpec of config.model (see `read_models`)."""
  (spec,) = read_models(config, "model")
  return spec


def _full_sizes(dataset: str) -> Tuple[int, int]:
  _, _, train, test = sources.RAW_SPECS[_FULL_SIZES[dataset]]
  return train, test


def _existing_folder(value: Any, label: str) -> Optional[str]:
  if value is not None and not pathlib.Path(value).is_dir():
    raise ValueError(f"{label} must be an existing folder. Received: data_dir={value!r}")
  return value


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """A (sub)sampled dataset of `ntk_tf.data` (None sizes keep the whole split).

  Read with the option `datasets`, the names the experiment accepts.
  """
  dataset: str = fields.setting(validation.check_choice, choices=lambda s: s.datasets)
  train_size: Optional[int] = fields.setting(fields.optional_size, default=None,
                                             maximum=lambda s: _full_sizes(s.dataset)[0])
  test_size: Optional[int] = fields.setting(fields.optional_size, default=None,
                                            maximum=lambda s: _full_sizes(s.dataset)[1])
  seed: int = fields.setting(validation.check_non_negative_int, key="data_seed", default=0)
  data_dir: Optional[str] = fields.setting(_existing_folder, default=None)
  allow_download: bool = fields.setting(fields.flag, default=False)

  @property
  def full_sizes(self) -> Tuple[int, int]:
    return _full_sizes(self.dataset)

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


def default_gram_cache_dir() -> pathlib.Path:
  """`$NTK_TF_CACHE_DIR/grams`, else `~/.cache/ntk_tf/grams`."""
  root = os.environ.get("NTK_TF_CACHE_DIR")
  base = pathlib.Path(root) if root else pathlib.Path.home() / ".cache" / "ntk_tf"
  return base / "grams"


def _gram_cache_dir(value: Any, label: str) -> str:
  """config.gram.cache_dir as an absolute folder (None: `default_gram_cache_dir`)."""
  if value is not None and not isinstance(value, str):
    raise ValueError(f"{label} must be a folder path or None. Received: gram.cache_dir={value!r}")
  path = pathlib.Path(value).expanduser() if value else default_gram_cache_dir()
  return str(path.absolute())


def _cluster(value: Any, label: str) -> Optional[str]:
  """config.gram.cluster: None or "local:N" (N >= 1 localhost workers)."""
  if value is not None and not isinstance(value, str):
    raise ValueError(f"{label} must be 'local:N' or None. Received: cluster={value!r}")
  try:
    return cluster_lib.check_cluster(value)
  except ValueError as err:
    raise ValueError(f"config.gram.{err}") from None


@dataclasses.dataclass(frozen=True)
class GramSpec:
  """How Theta_0 is computed (block size, implementation, dtype), where it is cached, and on
  which cluster ("local:N", or None: TF_CONFIG when set, else this process; `theta0`)."""
  block_size: int = fields.setting(validation.check_positive_int)
  implementation: str = fields.setting(validation.check_choice, choices=GRAM_IMPLEMENTATIONS)
  dtype: str = fields.setting(validation.check_choice, choices=GRAM_DTYPES)
  cache_dir: str = fields.setting(_gram_cache_dir, default=None)
  cluster: Optional[str] = fields.setting(_cluster, default=None)

  def identity(self) -> Dict[str, Any]:
    """What determines a Gram's values (for fingerprints): not where it is cached."""
    return {"block_size": self.block_size, "implementation": self.implementation,
            "dtype": self.dtype}


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
  """`path`, made for a job of `fingerprint` (its fingerprint.txt); the one place.

  A job of the same settings keeps what it left (resumable state, checkpoints,
  Grams). A folder of another job (e.g. another seed) is never reused nor
  cleared: fingerprint.json beside the stamp records the settings, to name
  what changed.

  Raises:
    validation.ConflictError: `path` holds another job's work, or files without
      a stamp; nothing is removed (see `workdir.start_over`).
  """
  path = pathlib.Path(path)
  stamp = path / "fingerprint.txt"
  new = (fingerprint if isinstance(fingerprint, workdir_lib.Fingerprint)
         else workdir_lib.Fingerprint(fingerprint))
  if path.exists() and (not stamp.is_file() or stamp.read_text() != new):
    if stamp.is_file() or any(path.iterdir()):
      record = path / "fingerprint.json"
      old = json.loads(record.read_text()) if record.is_file() else None
      raise workdir_lib.conflict(path, old, new, f"the folder {path} (its training state, "
                                 "checkpoints and results)")
  path.mkdir(parents=True, exist_ok=True)
  if not stamp.is_file():
    if new.settings is not None:
      atomic.write_json(path / "fingerprint.json", new.settings)
    atomic.write_text(stamp, new)
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

  `task_dir` (never another job's, see `fresh_dir`) holds
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


def describe_outputs(workdir: pathlib.Path, results: Any) -> List[str]:
  """What an experiment binary prints when done: where its table and figures are."""
  del results  # All in the workdir.
  return [f"Results: {workdir / 'results.csv'}; figures: {workdir}/*.png"]


def describe_rows(workdir: pathlib.Path, results: Mapping[str, Any]) -> List[str]:
  """What a binary prints for `results` with "rows", "csv", "json" and "figures"."""
  del workdir  # The paths are in `results`.
  return ([f"Results ({len(results['rows'])} tasks): {results['csv']} and {results['json']}"]
          + [f"Figure: {figure}" for figure in results["figures"]])


def write_table(path: os.PathLike, rows: Sequence[Mapping[str, Any]],
                columns: Optional[Sequence[str]] = None,
                int_columns: Sequence[str] = ()) -> pathlib.Path:
  """Writes `rows` as a CSV (`int_columns` as nullable ints: empty where None)."""
  import pandas as pd  # Heavy import; only where tables are written.
  table = pd.DataFrame(list(rows), columns=columns)
  for name in int_columns:
    table[name] = table[name].astype("Int64")
  return atomic.write_text(path, table.to_csv(index=False))
