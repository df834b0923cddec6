"""The plan of figures: their runs (runs.py), what is done, the parts that run the rest.

A task is done when every row it writes is in a part of its run (results/<row>.json of a
part whose config.json has the run's settings_id) or in a committed CSV
(<out>/<figure>_<model>.csv) with the same settings_id and the columns its figures plot.

Parts. Tasks with the same value of the task-selecting field (a "unit": one j, one n)
stay together; units are spread over the parts longest first (by the estimate). The
first unfinished unit of an existing part stays in that part, so a killed task resumes
where its training state is. Runs whose tasks need one Theta_0 share it through
<workdir>/gram_cache (`gram_key`); the runner starts one of them first and the others
once it trains (the Gram and the eigenvectors are then in the cache).
"""

import json
import pathlib
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ntk_tf.reproduce import figures as figures_lib
from ntk_tf.reproduce import runs as runs_lib
from ntk_tf.reproduce import tables
from ntk_tf.reproduce import tasks as tasks_lib

# A run is split only into parts of at least this many estimated seconds: starting a
# process (TensorFlow, the data, the model) costs seconds, which a smoke task is.
MIN_PART_SECONDS = 120.0


def default_models(scale: str) -> Tuple[str, ...]:
  """MLP and LeNet at every scale: ResNet18 runs when named (figures.DEFAULT_MODELS)."""
  del scale
  return figures_lib.DEFAULT_MODELS


def _merge_tasks(run: runs_lib.Run, tasks: Sequence[tasks_lib.Task]) -> None:
  """Adds `tasks` to the run's, keeping the experiment's order (units ascending)."""
  names = {t.name for t in run.tasks}
  merged = run.tasks + [t for t in tasks if t.name not in names]
  full = tasks_lib.EXPERIMENTS[run.experiment].tasks(
      run.config(tasks_lib.EXPERIMENTS[run.experiment].select(run.config(), merged)), run.model)
  order = {t.name: i for i, t in enumerate(full)}
  run.tasks = sorted(merged, key=lambda t: order.get(t.name, len(order)))


def mark_done(run: runs_lib.Run, committed: Mapping[Tuple[str, str], Mapping[str, str]]) -> None:
  """Fills run.done: {task: "workdir" | "committed"} for tasks whose rows all exist."""
  in_workdir = runs_lib.workdir_rows(run)
  config = run.config()
  run.done = {}
  for task in run.tasks:
    where = set()
    for key, kind in task.rows:
      row = committed.get((run.settings_id, f"{run.model}/{key}"))
      if row is not None and runs_lib.has_required(run, config, row, key, kind):
        where.add("committed")
      elif key in in_workdir:
        where.add("workdir")
      else:
        break
    else:
      run.done[task.name] = "committed" if where == {"committed"} else "workdir"


def _first_todo_units(run: runs_lib.Run, jobs: int) -> Dict[int, Any]:
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
    if runs_lib.config_settings_id(part / "config.json") != run.settings_id:
      continue
    selection = tuple((f, config[f]) for f in run.spec.task_fields if f in config)
    tasks = run.spec.tasks(run.config(selection), run.model)
    for task in tasks:
      if task.unit in todo_units and task.unit not in pinned.values():
        pinned[index] = task.unit
        break
  return pinned


def split_parts(run: runs_lib.Run, jobs: int, rates: runs_lib.Rates,
                min_part_seconds: float = MIN_PART_SECONDS) -> List[runs_lib.Part]:
  """The run's todo tasks in at most `jobs` parts (units longest first; see module doc).

  There are no more parts than units, nor than `total / min_part_seconds` (at least one).
  """
  todo = run.todo()
  if not todo:
    return []
  units: Dict[Any, List[tasks_lib.Task]] = {}
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
    parts.append(runs_lib.Part(index, run.dir / f"part{index}", tasks,
                               run.overrides + run.locations + selection, load[index]))
  return parts


def make_plan(names: Sequence[str], scale: str, models: Optional[Sequence[str]],
              workdir: pathlib.Path, out: pathlib.Path, jobs: int,
              data_dir: Optional[str] = None,
              committed: Optional[Mapping[Tuple[str, str], Mapping[str, str]]] = None,
              rates: Optional[runs_lib.Rates] = None,
              min_part_seconds: float = MIN_PART_SECONDS) -> runs_lib.Plan:
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
  if committed is None:
    committed = tables.committed_rows(out)
  if rates is None:
    rates = tables.read_rates(out)
  asked = tuple(models) if models else default_models(scale)
  runs: Dict[Tuple[str, str, str], runs_lib.Run] = {}
  figure_tasks: Dict[Tuple[str, str], Tuple[runs_lib.Run, List[str]]] = {}
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
      run, tasks = runs_lib.run_for(figure, scale, model, workdir, data_dir)
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
  return runs_lib.Plan(scale=scale, workdir=workdir, out=out, jobs=jobs, runs=list(runs.values()),
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


def command(run: runs_lib.Run, part: runs_lib.Part, download: bool = False,
            start_over: bool = False) -> List[str]:
  """The part's command line after `python -m` (the binary, config, overrides, workdir).

  `start_over` passes --start_over: the binary moves earlier work made with other
  settings to <part dir>/earlier.<n>/ instead of refusing to run.
  """
  args = [f"binaries.{run.experiment}", f"--config=configs/{run.experiment}.py:{run.variant}"]
  args += [f"--config.{k}={runs_lib.format_value(v)}" for k, v in part.overrides]
  args.append(f"--workdir={part.dir}")
  if download and run.spec.has_data:
    args.append("--download")
  if start_over:
    args.append("--start_over")
  return args


def describe(plan: runs_lib.Plan, relative_to: Optional[pathlib.Path] = None) -> str:
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
        seconds, note = plan.rates.task_seconds(run, task)
        lines.append(f"    {task.name}: todo, about {format_seconds(seconds)}"
                     f"{'' if note is None else f' ({note})'}")
      total_left += part.estimate_s
  done, total = plan.tasks_done()
  lines.append(f"{done} of {total} tasks done; about {format_seconds(total_left / plan.jobs)} "
               f"left on {plan.jobs} job(s).")
  lines += plan.notes
  return "\n".join(lines)
