"""Each experiment's tasks: the trainings a config makes and the overrides that select some.

`EXPERIMENTS[name]` says how reproduce drives binaries/<name>.py: its task-selecting fields,
`tasks(config, model)` (the trainings, in the experiment's order, with the result rows
each writes), `select(config, tasks)` (the overrides that make the binary run only those),
whether its tasks may run in several parts, and the columns a committed row must have.
"""

import dataclasses
from typing import Any, Callable, List, Optional, Sequence, Tuple

Overrides = Tuple[Tuple[str, Any], ...]


@dataclasses.dataclass(frozen=True)
class Task:
  """One training of a run and the result rows it writes.

  Attributes:
    name: the task's name (its first row's key).
    rows: (row key, row kind) of every row it writes (results/<key>.json).
    unit: its value of the run's task-selecting field (j, n, ...): tasks of one unit
      run in one part.
    epochs: its training epochs.
    samples: training samples per epoch where the task sets them (Fig. 5's n), else None;
      a run with no measured rate of its own is estimated from another's per sample.
  """
  name: str
  rows: Tuple[Tuple[str, str], ...]
  unit: Any
  epochs: int
  samples: Optional[int] = None

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
  """indices, kinds and baseline of these tasks; no index where only the baseline is left."""
  indexed = [t for t in tasks if t.unit != "baseline"]
  baseline = [t for t in tasks if t.unit == "baseline"]
  indices = tuple(sorted({t.unit for t in indexed}))
  kinds = _ordered([_kind(t) for t in indexed], c.kinds) or (c.kinds[0],)
  selected = [("indices", indices), ("kinds", kinds), ("baseline", bool(baseline))]
  if baseline:
    selected.append(("baseline_kinds", _ordered([_kind(t) for t in baseline],
                                                c.baseline_kinds)))
  return tuple(selected)


def _sample_size_tasks(c: Any, model: str) -> List[Task]:
  epochs = _recipe_epochs(c)
  return [Task(f"{model}_n{n:06d}_s{s}_{kind}", ((f"{model}_n{n:06d}_s{s}_{kind}", kind),),
               n, epochs, samples=int(n))
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
    prepare: overrides that make the binary compute only the shared Theta_0 and its
      eigenvectors and stop, which the runner runs on every free core before the parts
      that share them; () where the binary has no such mode.
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
  prepare: Overrides = ()


EXPERIMENTS = {
    "eigenfunctions": Experiment(
        "models", ("models", "indices", "kinds", "baseline", "baseline_kinds", "spectrum_only"),
        _eigen_tasks, _eigen_select, splits=True, has_gram=True, has_data=True,
        ready_glob="train/*", prepare=(("spectrum_only", True),)),
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
