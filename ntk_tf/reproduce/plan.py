"""The plan of a figure: its runs, their tasks, what is done, the parts that run the rest.

    figure x scale x model -> Run: one experiment config (configs/<experiment>.py:<variant>
                              and overrides), folder <workdir>/<experiment>/<label>/<model>
    Run -> Tasks              the trainings it makes (the result rows each writes), in the
                              experiment's order, e.g. eigenfunctions: <model>_phi0001_network
    Run -> Parts              the tasks still to do, split over `jobs` folders part<k>, each
                              one process: the task-selecting fields (indices, train_sizes,
                              nad_indices, eigenfunction_indices, pretrain_epochs ...)
                              overridden to its share

A task is done when every row it writes is in a part of its run (results/<row>.json of a
part whose config.json has the run's settings_id) or in a committed CSV
(<out>/<figure>_<model>.csv) with the same settings_id and the columns its figures plot.

settings_id: sha256 (16 hex digits) of the canonical JSON of the run's config without its
task-selecting fields and without where things are (data_dir, gram.cache_dir), whether
data may be fetched (allow_download) or shown (progress): the same settings give the same
id on any machine, and a part's config.json gives its run's id (`config_settings_id`).

Parts. Tasks with the same value of the task-selecting field (a "unit": one j, one n)
stay together; units are spread over the parts longest first (by the estimate). The
first unfinished unit of an existing part stays in that part, so a killed task resumes
where its training state is. Runs whose tasks need one Theta_0 share it through
<workdir>/gram_cache (`gram_key`); the runner starts one of them first and the others
once it trains (the Gram and the eigenvectors are then in the cache).
"""

import dataclasses
import hashlib
import importlib
import json
import os
import pathlib
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ntk_tf.reproduce import figures as figures_lib

Overrides = Tuple[Tuple[str, Any], ...]
# Fields that never change what is computed: stripped from settings_id.
LOCATION_FIELDS = ("data_dir", "allow_download", "progress", "gram.cache_dir", "workdir")
# Seconds per epoch where no rate was measured (a guess; the plan says so).
GUESS_SECONDS_PER_EPOCH = {"smoke": 2.0, "quick": 10.0, "paper": 60.0}
GRAM_CACHE = "gram_cache"
# A run is split only into parts of at least this many estimated seconds: starting a
# process (TensorFlow, the data, the model) costs seconds, which a smoke task is.
MIN_PART_SECONDS = 120.0


@dataclasses.dataclass(frozen=True)
class Task:
  """One training of a run and the result rows it writes.

  Attributes:
    name: the task's name (its first row's key).
    rows: (row key, row kind) of every row it writes (results/<key>.json).
    unit: its value of the run's task-selecting field (j, n, ...): tasks of one unit
      run in one part.
    epochs: its training epochs.
  """
  name: str
  rows: Tuple[Tuple[str, str], ...]
  unit: Any
  epochs: int

  @property
  def keys(self) -> Tuple[str, ...]:
    return tuple(key for key, _ in self.rows)


def _recipe_epochs(config: Any) -> int:
  """The epochs of a config's recipe: config.epochs, else its preset's (ntk_tf/recipe.py)."""
  from ntk_tf import recipe as recipe_lib  # pylint: disable=g-import-not-at-top
  if config.get("epochs") is not None:
    return int(config.epochs)
  return getattr(recipe_lib, config.get("recipe") or "PAPER_SGD").epochs


def _ordered(values: Sequence[Any], order: Sequence[Any]) -> Tuple[Any, ...]:
  return tuple(v for v in order if v in set(values))


# ----------------------------------------------------------------------------
# Each experiment: its tasks and the overrides that select some of them.

def _eigen_tasks(c: Any, model: str) -> List[Task]:
  epochs = _recipe_epochs(c)
  tasks = [Task(f"{model}_phi{j:04d}_{kind}", ((f"{model}_phi{j:04d}_{kind}", kind),), j,
                epochs) for j in sorted(c.indices) for kind in c.kinds]
  if c.baseline:
    baseline = {"cifar10": "cifar2", "mnist": "mnist2"}[c.dataset]
    base_epochs = epochs if c.get("baseline_epochs") is None else int(c.baseline_epochs)
    tasks += [Task(f"{model}_{baseline}_{kind}", ((f"{model}_{baseline}_{kind}", kind),),
                   "baseline", base_epochs) for kind in c.baseline_kinds]
  return tasks


def _kind(task: Task) -> str:
  return task.rows[0][1]


def _eigen_select(c: Any, tasks: Sequence[Task]) -> Overrides:
  """indices, kinds and baseline of these tasks (the experiment needs one index at least)."""
  indexed = [t for t in tasks if t.unit != "baseline"]
  baseline = [t for t in tasks if t.unit == "baseline"]
  indices = tuple(sorted({t.unit for t in indexed})) or (min(c.indices),)
  kinds = _ordered([_kind(t) for t in indexed], c.kinds) or (c.kinds[0],)
  selected = [("indices", indices), ("kinds", kinds), ("baseline", bool(baseline))]
  if baseline:
    selected.append(("baseline_kinds", _ordered([_kind(t) for t in baseline],
                                                c.baseline_kinds)))
  return tuple(selected)


def _sample_size_tasks(c: Any, model: str) -> List[Task]:
  epochs = _recipe_epochs(c)
  return [Task(f"{model}_n{n:06d}_s{s}_{kind}", ((f"{model}_n{n:06d}_s{s}_{kind}", kind),),
               n, epochs)
          for n in sorted(c.train_sizes) for s in sorted(c.seeds) for kind in c.kinds]


def _sample_size_select(c: Any, tasks: Sequence[Task]) -> Overrides:
  seeds = sorted({int(t.name.split("_s")[-1].split("_")[0]) for t in tasks})
  return (("train_sizes", tuple(sorted({t.unit for t in tasks}))), ("seeds", tuple(seeds)),
          ("kinds", _ordered([_kind(t) for t in tasks], c.kinds)))


def _nad_tasks(c: Any, model: str) -> List[Task]:
  del model  # The keys carry no model: one model per run.
  epochs = _recipe_epochs(c)
  return [Task(f"nad{j:05d}", ((f"nad{j:05d}", "nad"),), j, epochs)
          for j in sorted(c.nad_indices)]


def _nad_select(c: Any, tasks: Sequence[Task]) -> Overrides:
  del c
  return (("nad_indices", tuple(sorted({t.unit for t in tasks}))),)


def _rotation_tasks(c: Any, model: str) -> List[Task]:
  epochs = _recipe_epochs(c)
  targets = (["cifar2"] if c.task == "cifar2" else
             [f"phi{j}" for j in sorted(c.eigenfunction_indices)])
  tasks = []
  for target in targets:
    key = f"{model}_{target}"
    rows = tuple((f"{key}_epoch{e:04d}", "epoch") for e in sorted(c.measure_epochs))
    unit = "cifar2" if target == "cifar2" else int(target[3:])
    tasks.append(Task(key, rows + ((f"{key}_summary", "summary"),), unit, epochs))
  return tasks


def _rotation_select(c: Any, tasks: Sequence[Task]) -> Overrides:
  if c.task == "cifar2":
    return ()
  return (("eigenfunction_indices", tuple(sorted({t.unit for t in tasks}))),)


def _late_tasks(c: Any, model: str) -> List[Task]:
  del model
  epochs = _recipe_epochs(c)
  pretrain = sorted(set(c.pretrain_epochs) | {0})
  forms = tuple(c.late_linearization_forms)
  linear = [(form, t) for form in forms for t in pretrain]
  if "offset" not in forms:
    linear.append(("offset", 0))
  return ([Task("network", (("network", "network"),), "run", epochs)]
          + [Task(f"{form}_t{t:04d}", ((f"{form}_t{t:04d}", "linear_pretrained"),), t, epochs)
             for form, t in linear]
          + [Task("linear_star", (("linear_star", "linear_star_unbiased"),), "run", epochs)])


def _late_select(c: Any, tasks: Sequence[Task]) -> Overrides:
  del c  # Epoch 0 is always trained (Fig. 8's linearization at init).
  return (("pretrain_epochs", tuple(sorted({0} | {t.unit for t in tasks if t.unit != "run"}))),)


def _rotation_required(c: Any, key: str, kind: str) -> Tuple[str, ...]:
  del key
  return ("alpha",) if c.task == "eigenfunction" and kind == "epoch" else ()


def _late_required(c: Any, key: str, kind: str) -> Tuple[str, ...]:
  del c, kind
  return ("history_train_loss",) if key in ("network", "offset_t0000", "linear_star") else ()


def _nothing_required(c: Any, key: str, kind: str) -> Tuple[str, ...]:
  del c, key, kind
  return ()


@dataclasses.dataclass(frozen=True)
class Experiment:
  """How reproduce drives one experiment binary (binaries/<name>.py).

  Attributes:
    model_field: "models" (a tuple) or "model" (one name).
    task_fields: the task-selecting fields (not in settings_id).
    tasks: (config, model) -> its tasks, in the experiment's order.
    select: (config, tasks) -> the overrides that make the binary run those tasks.
    splits: whether its tasks may run in several parts (not when later tasks need the
      first one's checkpoints, or a model's run is one task).
    has_gram, has_data: whether the config has gram.cache_dir / data_dir and --download.
    ready_glob: a path under a part that exists once Theta_0 and its eigenvectors are in
      the cache (its first training has begun); None: no shared Theta_0.
    required: (config, row key, row kind) -> columns a committed row must have to count.
  """
  model_field: str
  task_fields: Tuple[str, ...]
  tasks: Callable[[Any, str], List[Task]]
  select: Callable[[Any, Sequence[Task]], Overrides]
  splits: bool
  has_gram: bool
  has_data: bool
  ready_glob: Optional[str]
  required: Callable[[Any, str, str], Tuple[str, ...]] = _nothing_required


EXPERIMENTS = {
    "eigenfunctions": Experiment(
        "models", ("models", "indices", "kinds", "baseline", "baseline_kinds"), _eigen_tasks,
        _eigen_select, splits=True, has_gram=True, has_data=True, ready_glob="train/*"),
    "cifar2_sample_size": Experiment(
        "models", ("models", "train_sizes", "seeds", "kinds"), _sample_size_tasks,
        _sample_size_select, splits=True, has_gram=False, has_data=True, ready_glob=None),
    "nads": Experiment(
        "model", ("model", "nad_indices"), _nad_tasks, _nad_select, splits=True,
        has_gram=False, has_data=False, ready_glob=None),
    "kernel_rotation": Experiment(
        "models", ("models", "eigenfunction_indices"), _rotation_tasks, _rotation_select,
        splits=True, has_gram=True, has_data=True, ready_glob="*/*/fingerprint.txt",
        required=_rotation_required),
    "late_linearization": Experiment(
        "model", ("model", "pretrain_epochs"), _late_tasks, _late_select, splits=False,
        has_gram=True, has_data=True, ready_glob="runs/*", required=_late_required),
}


# ----------------------------------------------------------------------------
# Configs and their settings_id.

def load_config(experiment: str, variant: str, overrides: Overrides = ()) -> Any:
  """configs/<experiment>.py:<variant> with `overrides` ("a.b" reaches nested fields)."""
  config = importlib.import_module(f"configs.{experiment}").get_config(variant)
  for name, value in overrides:
    parent, _, leaf = name.rpartition(".")
    node = config
    for part in filter(None, parent.split(".")):
      node = node[part]
    node[leaf] = value
  return config


def _jsonable(value: Any) -> Any:
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return value


def settings_json(config: Any) -> str:
  """The canonical JSON of a config (or its config.json) without task and location fields."""
  values = _jsonable(config)
  experiment = values.get("experiment")
  if experiment not in EXPERIMENTS:
    raise ValueError(f"A config must name one of the experiments {list(EXPERIMENTS)}. "
                     f"Received: experiment={experiment!r}")
  for name in EXPERIMENTS[experiment].task_fields + LOCATION_FIELDS:
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
# Runs, parts and the plan.

@dataclasses.dataclass(frozen=True)
class Part:
  """One process of a run: a folder part<k> and the todo tasks it makes."""
  index: int
  dir: pathlib.Path
  tasks: Tuple[Task, ...]
  overrides: Overrides  # the run's, then the task selection
  estimate_s: float


@dataclasses.dataclass
class Run:
  """One experiment config for one model, and what the plan's figures need of it."""
  experiment: str
  scale: str
  label: str
  variant: str
  model: str
  overrides: Overrides  # the settings (no task selection, no locations)
  locations: Overrides  # data_dir, gram.cache_dir
  dir: pathlib.Path
  settings_id: str
  settings: str  # settings_json of the run's config
  gram_key: Optional[str]
  tasks: List[Task] = dataclasses.field(default_factory=list)
  figures: List[str] = dataclasses.field(default_factory=list)
  done: Dict[str, str] = dataclasses.field(default_factory=dict)  # task -> where
  parts: List[Part] = dataclasses.field(default_factory=list)

  @property
  def name(self) -> str:
    return f"{self.experiment}/{self.label}/{self.model}"

  @property
  def spec(self) -> Experiment:
    return EXPERIMENTS[self.experiment]

  def config(self, selection: Overrides = ()) -> Any:
    return load_config(self.experiment, self.variant,
                       self.overrides + self.locations + tuple(selection))

  def todo(self) -> List[Task]:
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


def default_models(scale: str) -> Tuple[str, ...]:
  """MLP and LeNet at every scale: ResNet18 runs when named (figures.DEFAULT_MODELS)."""
  del scale
  return figures_lib.DEFAULT_MODELS


def _gram_key(experiment: Experiment, config: Any, model: str) -> Optional[str]:
  """What determines the shared Theta_0 of a run (None: it uses none)."""
  if experiment.ready_glob is None or (config.get("task") == "cifar2"):
    return None
  kwargs = _jsonable(config.get("model_kwargs") or {}).get(model, {})
  identity = [config.dataset, config.get("train_size"), config.get("test_size"),
              config.get("data_seed", 0), model, config.activation, kwargs,
              config.get("model_seed", 0), config.gram.dtype]
  return json.dumps(identity, sort_keys=True)


def _run_for(figure: figures_lib.FigureSpec, scale: str, model: str, workdir: pathlib.Path,
             data_dir: Optional[str]) -> Tuple[Run, List[Task]]:
  """The run of a figure at a scale for a model, and the figure's tasks in it."""
  experiment = EXPERIMENTS[figure.experiment]
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


def _merge_tasks(run: Run, tasks: Sequence[Task]) -> None:
  """Adds `tasks` to the run's, keeping the experiment's order (units ascending)."""
  names = {t.name for t in run.tasks}
  merged = run.tasks + [t for t in tasks if t.name not in names]
  full = EXPERIMENTS[run.experiment].tasks(
      run.config(EXPERIMENTS[run.experiment].select(run.config(), merged)), run.model)
  order = {t.name: i for i, t in enumerate(full)}
  run.tasks = sorted(merged, key=lambda t: order.get(t.name, len(order)))


# ----------------------------------------------------------------------------
# What is done, and how long the rest takes.

@dataclasses.dataclass(frozen=True)
class Rates:
  """Measured seconds per epoch by (experiment, model, row kind, scale) (`tables.rates`)."""
  seconds_per_epoch: Mapping[Tuple[str, str, str, str], float]

  def task_seconds(self, run: Run, task: Task) -> Tuple[float, bool]:
    """(estimated seconds of `task`, whether every row's rate was measured)."""
    total, measured = 0.0, True
    for _, kind in task.rows:
      rate = self.seconds_per_epoch.get((run.experiment, run.model, kind, run.scale))
      if rate is None:
        rate = GUESS_SECONDS_PER_EPOCH[run.scale] / len(task.rows)
        measured = False
      total += rate * task.epochs
    return total, measured


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
  """Whether a CSV row holds every column its figures plot (`Experiment.required`)."""
  return all(row.get(c) not in (None, "") for c in run.spec.required(config, key, kind))


def mark_done(run: Run, committed: Mapping[Tuple[str, str], Mapping[str, str]]) -> None:
  """Fills run.done: {task: "workdir" | "committed"} for tasks whose rows all exist."""
  in_workdir = workdir_rows(run)
  config = run.config()
  run.done = {}
  for task in run.tasks:
    where = set()
    for key, kind in task.rows:
      row = committed.get((run.settings_id, f"{run.model}/{key}"))
      if row is not None and has_required(run, config, row, key, kind):
        where.add("committed")
      elif key in in_workdir:
        where.add("workdir")
      else:
        break
    else:
      run.done[task.name] = "committed" if where == {"committed"} else "workdir"


def _first_todo_units(run: Run, jobs: int) -> Dict[int, Any]:
  """{part index: the first unit of that existing part still to do} (its running task)."""
  pinned = {}
  todo_units = {t.unit for t in run.todo()}
  for part in run.part_dirs():
    index = int(part.name[4:])
    if index >= jobs:
      continue
    try:
      config = json.loads((part / "config.json").read_text())
    except (OSError, ValueError):
      continue
    if config_settings_id(part / "config.json") != run.settings_id:
      continue
    selection = tuple((f, config[f]) for f in run.spec.task_fields if f in config)
    tasks = run.spec.tasks(run.config(selection), run.model)
    for task in tasks:
      if task.unit in todo_units and task.unit not in pinned.values():
        pinned[index] = task.unit
        break
  return pinned


def split_parts(run: Run, jobs: int, rates: Rates,
                min_part_seconds: float = MIN_PART_SECONDS) -> List[Part]:
  """The run's todo tasks in at most `jobs` parts (units longest first; see module doc).

  There are no more parts than units, nor than `total / min_part_seconds` (at least one).
  """
  todo = run.todo()
  if not todo:
    return []
  units: Dict[Any, List[Task]] = {}
  for task in todo:
    units.setdefault(task.unit, []).append(task)
  cost = {u: sum(rates.task_seconds(run, t)[0] for t in ts) for u, ts in units.items()}
  worth = max(1, int(sum(cost.values()) // min_part_seconds)) if min_part_seconds > 0 else jobs
  count = min(jobs, len(units), worth) if run.spec.splits else 1
  assigned: Dict[int, List[Any]] = {k: [] for k in range(count)}
  load = {k: 0.0 for k in range(count)}
  for index, unit in _first_todo_units(run, count).items():
    assigned[index].append(unit)
    load[index] += cost[unit]
  placed = {u for us in assigned.values() for u in us}
  order = sorted((u for u in units if u not in placed), key=lambda u: (-cost[u], str(u)))
  for unit in order:
    index = min(load, key=lambda k: (load[k], k))
    assigned[index].append(unit)
    load[index] += cost[unit]
  parts = []
  for index, chosen in sorted(assigned.items()):
    if not chosen:
      continue
    tasks = tuple(t for t in todo if t.unit in chosen)
    selection = run.spec.select(run.config(), tasks)
    parts.append(Part(index, run.dir / f"part{index}", tasks,
                      run.overrides + run.locations + selection, load[index]))
  return parts


def make_plan(names: Sequence[str], scale: str, models: Optional[Sequence[str]],
              workdir: pathlib.Path, out: pathlib.Path, jobs: int,
              data_dir: Optional[str] = None,
              committed: Optional[Mapping[Tuple[str, str], Mapping[str, str]]] = None,
              rates: Optional[Rates] = None,
              min_part_seconds: float = MIN_PART_SECONDS) -> Plan:
  """The plan of figures `names` at `scale` for `models` (None: `default_models`).

  Args:
    names: figure names (figures.FIGURES keys).
    scale: "smoke" | "quick" | "paper".
    models: the models asked for; each figure runs those of them it covers.
    workdir: the root of the runs (absolute).
    out: the folder of the committed CSVs (absolute).
    jobs: processes at once, >= 1.
    data_dir: passed to the experiments as --config.data_dir.
    committed: {(settings_id, "<model>/<row key>"): row} of the committed CSVs
      (`tables.committed_rows`); None reads them from `out`.
    rates: measured rates (`tables.read_rates`); None reads them from `out`.
    min_part_seconds: the least estimated time of a part (`split_parts`).
  """
  from ntk_tf.reproduce import tables  # pylint: disable=g-import-not-at-top
  if committed is None:
    committed = tables.committed_rows(out)
  if rates is None:
    rates = tables.read_rates(out)
  asked = tuple(models) if models else default_models(scale)
  runs: Dict[Tuple[str, str, str], Run] = {}
  figure_tasks: Dict[Tuple[str, str], Tuple[Run, List[str]]] = {}
  notes = []
  for name in names:
    figure = figures_lib.FIGURES[name]
    chosen = [m for m in asked if m in figure.models]
    missing = [m for m in asked if m not in figure.models]
    if models and missing:
      notes.append(f"{name}: not made for {', '.join(missing)} (it covers "
                   f"{', '.join(figure.models)}).")
    if scale == "paper" and figure.paper_needs_gpu and "resnet18" not in chosen:
      notes.append(f"{name}: the paper shows ResNet18, which {figures_lib.GPU_NOTE}; on a GPU: "
                   f"bazel run //binaries:reproduce -- --figure={name} --models=resnet18 "
                   f"--scale=paper --workdir=runs/paper")
    for model in chosen:
      run, tasks = _run_for(figure, scale, model, workdir, data_dir)
      key = (run.experiment, run.label, model)
      if key in runs:
        if runs[key].settings_id != run.settings_id:
          raise ValueError(f"Figures sharing the run {run.name} must share its settings. "
                           f"Received: {name} with settings_id {run.settings_id}, the run "
                           f"{runs[key].settings_id}")
        run = runs[key]
      else:
        runs[key] = run
      _merge_tasks(run, tasks)
      run.figures.append(name)
      figure_tasks[(name, model)] = (run, [t.name for t in tasks])
  for run in runs.values():
    mark_done(run, committed)
    run.parts = split_parts(run, jobs, rates, min_part_seconds)
  return Plan(scale=scale, workdir=workdir, out=out, jobs=jobs, runs=list(runs.values()),
              figures=figure_tasks, notes=notes, rates=rates)


# ----------------------------------------------------------------------------
# The plan as text (--dry-run).

def format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  minutes, seconds = divmod(seconds, 60)
  if minutes < 60:
    return f"{minutes}m{seconds:02d}s"
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m"


def command(run: Run, part: Part, download: bool = False) -> List[str]:
  """The part's command line after `python -m` (the binary, config, overrides, workdir)."""
  args = [f"binaries.{run.experiment}", f"--config=configs/{run.experiment}.py:{run.variant}"]
  args += [f"--config.{k}={format_value(v)}" for k, v in part.overrides]
  args.append(f"--workdir={part.dir}")
  if download and run.spec.has_data:
    args.append("--download")
  return args


def describe(plan: Plan, relative_to: Optional[pathlib.Path] = None) -> str:
  """The plan: each run, part and task (done / todo, estimated time), and the notes."""

  def show(path: pathlib.Path) -> str:
    if relative_to is not None:
      try:
        return str(path.relative_to(relative_to))
      except ValueError:
        pass
    return str(path)

  lines = [f"Plan at the {plan.scale} scale, {plan.jobs} job(s), workdir {show(plan.workdir)}:"]
  total_left = 0.0
  for run in plan.runs:
    lines.append(f"run {run.name}: configs/{run.experiment}.py:{run.variant}, settings_id "
                 f"{run.settings_id}, for {', '.join(run.figures)}; {len(run.done)} of "
                 f"{len(run.tasks)} tasks done")
    for task in run.tasks:
      if task.name in run.done:
        lines.append(f"    {task.name}: done ({run.done[task.name]})")
    for part in run.parts:
      lines.append(f"  part{part.index} ({show(part.dir)}), about "
                   f"{format_seconds(part.estimate_s)}:")
      for task in part.tasks:
        seconds, measured = plan.rates.task_seconds(run, task)
        lines.append(f"    {task.name}: todo, about {format_seconds(seconds)}"
                     f"{'' if measured else ' (a guess: no measured rate)'}")
      total_left += part.estimate_s
  done, total = plan.tasks_done()
  lines.append(f"{done} of {total} tasks done; about {format_seconds(total_left / plan.jobs)} "
               f"left on {plan.jobs} job(s).")
  lines += plan.notes
  return "\n".join(lines)
