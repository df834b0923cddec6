"""The runs of a plan: one experiment config for one model, its parts and settings_id.

    figure x scale x model -> Run: one experiment config (configs/<experiment>.py:<variant>
                              and overrides), folder <workdir>/<experiment>/<label>/<model>
    Run -> Tasks              the trainings it makes (the result rows each writes), in the
                              experiment's order, e.g. eigenfunctions: <model>_phi0001_network
                              (tasks.py)
    Run -> Parts              the tasks still to do, split over `jobs` folders part<k>, each
                              one process (plan.py)

settings_id: sha256 (16 hex digits) of the canonical JSON of the run's config without its
task-selecting fields and without where things are (data_dir, gram.cache_dir), whether
data may be fetched (allow_download) or shown (progress): the same settings give the same
id on any machine, and a part's config.json gives its run's id (`config_settings_id`).
"""

import dataclasses
import hashlib
import importlib
import json
import os
import pathlib
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ntk_tf.reproduce import figures as figures_lib
from ntk_tf.reproduce import tasks as tasks_lib

# Fields that never change what is computed: stripped from settings_id.
LOCATION_FIELDS = ("data_dir", "allow_download", "progress", "gram.cache_dir", "workdir")
# Seconds per epoch where no rate was measured (a guess; the plan says so).
GUESS_SECONDS_PER_EPOCH = {"smoke": 2.0, "quick": 10.0, "paper": 60.0}
GRAM_CACHE = "gram_cache"


# ----------------------------------------------------------------------------
# Configs and their settings_id.

def load_config(experiment: str, variant: str, overrides: tasks_lib.Overrides = ()) -> Any:
  """configs/<experiment>.py:<variant> with `overrides` ("a.b" reaches nested fields)."""
  config = importlib.import_module(f"configs.{experiment}").get_config(variant)
  for name, value in overrides:
    parent, _, leaf = name.rpartition(".")
    node = config
    for part in filter(None, parent.split(".")):
      node = node[part]
    node[leaf] = value
  return config


def jsonable(value: Any) -> Any:
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  return value


def settings_json(config: Any) -> str:
  """The canonical JSON of a config (or its config.json) without task and location fields."""
  values = jsonable(config)
  experiment = values.get("experiment")
  if experiment not in tasks_lib.EXPERIMENTS:
    raise ValueError(f"A config must name one of the experiments {list(tasks_lib.EXPERIMENTS)}. "
                     f"Received: experiment={experiment!r}")
  for name in tasks_lib.EXPERIMENTS[experiment].task_fields + LOCATION_FIELDS:
    parent, _, leaf = name.rpartition(".")
    node = values.get(parent, {}) if parent else values
    if isinstance(node, dict):
      node.pop(leaf, None)
  return json.dumps(values, sort_keys=True, separators=(",", ":"))


def settings_id(config: Any) -> str:
  """sha256 (16 hex digits) of `settings_json(config)`."""
  return hashlib.sha256(settings_json(config).encode()).hexdigest()[:16]


def config_settings_id(path: os.PathLike) -> Optional[str]:
  """The settings_id of a workdir's config.json (None where it is missing or unreadable)."""
  try:
    return settings_id(json.loads(pathlib.Path(path).read_text()))
  except (OSError, ValueError):
    return None


def format_value(value: Any) -> str:
  """The text of --config.<field>=<value>: strings as they are, the rest as Python literals."""
  return value if isinstance(value, str) else repr(value)


# ----------------------------------------------------------------------------
# Runs, parts and the plan's data.

@dataclasses.dataclass(frozen=True)
class Part:
  """One process of a run: a folder part<k> and the todo tasks it makes."""
  index: int
  dir: pathlib.Path
  tasks: Tuple[tasks_lib.Task, ...]
  overrides: tasks_lib.Overrides  # the run's, then the task selection
  estimate_s: float


@dataclasses.dataclass
class Run:
  """One experiment config for one model, and what the plan's figures need of it."""
  experiment: str
  scale: str
  label: str
  variant: str
  model: str
  overrides: tasks_lib.Overrides  # the settings (no task selection, no locations)
  locations: tasks_lib.Overrides  # data_dir, gram.cache_dir
  dir: pathlib.Path
  settings_id: str
  settings: str  # settings_json of the run's config
  gram_key: Optional[str]
  tasks: List[tasks_lib.Task] = dataclasses.field(default_factory=list)
  figures: List[str] = dataclasses.field(default_factory=list)
  done: Dict[str, str] = dataclasses.field(default_factory=dict)  # task -> where
  parts: List[Part] = dataclasses.field(default_factory=list)

  @property
  def name(self) -> str:
    return f"{self.experiment}/{self.label}/{self.model}"

  @property
  def spec(self) -> tasks_lib.Experiment:
    return tasks_lib.EXPERIMENTS[self.experiment]

  def config(self, selection: tasks_lib.Overrides = ()) -> Any:
    return load_config(self.experiment, self.variant,
                       self.overrides + self.locations + tuple(selection))

  def todo(self) -> List[tasks_lib.Task]:
    return [t for t in self.tasks if t.name not in self.done]

  def part_dirs(self) -> List[pathlib.Path]:
    """The part folders that exist, part0 first."""
    if not self.dir.is_dir():
      return []
    found = [p for p in self.dir.glob("part*") if p.is_dir() and p.name[4:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[4:]))


@dataclasses.dataclass
class Plan:
  scale: str
  workdir: pathlib.Path
  out: pathlib.Path
  jobs: int
  runs: List[Run]
  # (figure, model) -> (run, names of the figure's tasks)
  figures: Dict[Tuple[str, str], Tuple[Run, List[str]]]
  notes: List[str]
  rates: "Rates"

  def tasks_done(self) -> Tuple[int, int]:
    """(done, total) tasks over every run of the plan."""
    total = sum(len(r.tasks) for r in self.runs)
    return sum(len(r.done) for r in self.runs), total



def _gram_key(experiment: tasks_lib.Experiment, config: Any, model: str) -> Optional[str]:
  """What determines the shared Theta_0 of a run (None: it uses none)."""
  if experiment.ready_glob is None or (config.get("task") == "cifar2"):
    return None
  kwargs = jsonable(config.get("model_kwargs") or {}).get(model, {})
  identity = [config.dataset, config.get("train_size"), config.get("test_size"),
              config.get("data_seed", 0), model, config.activation, kwargs,
              config.get("model_seed", 0), config.gram.dtype]
  return json.dumps(identity, sort_keys=True)


def run_for(figure: figures_lib.FigureSpec, scale: str, model: str, workdir: pathlib.Path,
            data_dir: Optional[str]) -> Tuple[Run, List[tasks_lib.Task]]:
  """The run of a figure at a scale for a model, and the figure's tasks in it."""
  experiment = tasks_lib.EXPERIMENTS[figure.experiment]
  chosen = figure.scales[scale]
  task_overrides = tuple((k, v) for k, v in chosen.overrides if k in experiment.task_fields)
  settings = tuple((k, v) for k, v in chosen.overrides if k not in experiment.task_fields)
  if scale == "smoke":
    settings += figures_lib.SMOKE_MODEL_OVERRIDES.get(model, ())
  model_value = (model,) if experiment.model_field == "models" else model
  settings = ((experiment.model_field, model_value),) + settings
  locations = ()
  if experiment.has_data and data_dir:
    locations += (("data_dir", data_dir),)
  if experiment.has_gram:
    locations += (("gram.cache_dir", str(workdir / GRAM_CACHE)),)
  config = load_config(figure.experiment, chosen.variant, settings + locations + task_overrides)
  run = Run(experiment=figure.experiment, scale=scale, label=chosen.name,
            variant=chosen.variant, model=model, overrides=settings, locations=locations,
            dir=workdir / figure.experiment / chosen.name / model,
            settings_id=settings_id(config), settings=settings_json(config),
            gram_key=_gram_key(experiment, config, model))
  return run, experiment.tasks(config, model)


# ----------------------------------------------------------------------------
# Measured rates, and the rows a run has.

@dataclasses.dataclass(frozen=True)
class Rates:
  """Measured seconds per epoch by (experiment, model, row kind, scale) (`tables.rates`).

  `seconds_per_sample_epoch` (same keys) estimates a task that sets its samples
  (`tasks.Task.samples`): its own experiment's rate if measured, else the same model,
  kind and scale measured in another experiment, times samples x epochs. A per-epoch
  rate would average over the run's sample sizes, so it is never used for such a task.
  """
  seconds_per_epoch: Mapping[Tuple[str, str, str, str], float]
  seconds_per_sample_epoch: Mapping[Tuple[str, str, str, str], float] = (
      dataclasses.field(default_factory=dict))

  def _per_sample(self, run: Run, kind: str) -> Optional[Tuple[str, float]]:
    """(experiment, seconds per sample-epoch) of `kind` rows: this run's, else another's."""
    own = self.seconds_per_sample_epoch.get((run.experiment, run.model, kind, run.scale))
    if own is not None:
      return run.experiment, own
    for (experiment, model, row_kind, scale), rate in sorted(
        self.seconds_per_sample_epoch.items()):
      if (model, row_kind, scale) == (run.model, kind, run.scale):
        return experiment, rate
    return None

  def task_seconds(self, run: Run, task: tasks_lib.Task) -> Tuple[float, Optional[str]]:
    """(estimated seconds of `task`, None if every row's rate was measured, else a note)."""
    total, notes = 0.0, []
    for _, kind in task.rows:
      if task.samples:
        measured = self._per_sample(run, kind)
        rate = None if measured is None else measured[1] * task.samples
        if measured is not None and measured[0] != run.experiment:
          notes.append(f"scaled per sample from the {measured[0]} {kind} rate")
      else:
        rate = self.seconds_per_epoch.get((run.experiment, run.model, kind, run.scale))
      if rate is None:
        rate = GUESS_SECONDS_PER_EPOCH[run.scale] / len(task.rows)
        notes.append("a guess: no measured rate")
      total += rate * task.epochs
    return total, ("; ".join(dict.fromkeys(notes)) or None)


def workdir_rows(run: Run) -> Dict[str, pathlib.Path]:
  """{row key: results/<key>.json} over the run's parts made with its settings_id."""
  rows = {}
  for part in run.part_dirs():
    if config_settings_id(part / "config.json") != run.settings_id:
      continue
    for path in sorted((part / "results").glob("*.json")):
      rows.setdefault(path.stem, path)
  return rows


def has_required(run: Run, config: Any, row: Mapping[str, str], key: str, kind: str) -> bool:
  """Whether a CSV row holds every column its figures plot (`tasks_lib.Experiment.required`)."""
  return all(row.get(c) not in (None, "") for c in run.spec.required(config, key, kind))


