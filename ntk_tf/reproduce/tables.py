"""The committed CSVs: <out>/<figure>_<model>.csv, one row per result row of the figure's tasks.

Columns: `LEAD_COLUMNS` first (what every row has: task, model, kind, dataset,
num_train, num_test, epochs, optimizer, seed, scale, settings_id, fingerprint, machine,
seconds, wall_seconds, source, ...), then the experiment's own columns in name order,
then `config` (the canonical settings JSON whose sha256 is settings_id). Lists (the
1,000 alphas of an epoch, a NAD image, a training history) are JSON in one cell; None
and NaN are empty cells. What a figure plots is in its CSV, so pages are drawn from the
CSVs alone:

  kernel_rotation, on sign(phi_j)   `alpha`: alpha_t(phi_j), j = 1..J, per epoch row
  late_linearization                `history_epoch`, `history_train_loss`, `history_test_acc`
  nads (Fig. 4)                     a row `nad_curve` with `curve_alignment` = s_j^2, j = 1..d
  nads (Fig. 10)                    rows `nad_image<j>` with `direction` (flattened) and `shape`
  Table 1, conventions at init      rows `energy_variant_<variant>` (`add_extra_rows`)

`wall_seconds` is the wall time from the previous row of the same part (or the part's
start) to this row, from the result files' times and the starts the runner records in
<part>/reproduce.json; it counts what `seconds` (the experiment's timer of one training)
leaves out: data, Theta_0, eigenvectors, measurements.

rates.csv: seconds per epoch by (experiment, model, kind, scale) over the rows of every
CSV, `seconds` where the experiment gives it, else `wall_seconds`.
"""

import csv
import io
import json
import math
import os
import pathlib
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ntk_tf.reproduce import figures as figures_lib
from ntk_tf.reproduce import runs as runs_lib
from ntk_tf.reproduce import tasks as tasks_lib

LEAD_COLUMNS = ("task", "model", "kind", "dataset", "num_train", "num_test", "epochs",
                "optimizer", "seed", "experiment", "scale", "settings_id", "fingerprint",
                "machine", "seconds", "wall_seconds", "source", "part", "plan_task",
                "plan_tasks", "task_done")
LAST_COLUMNS = ("config",)
RATES_FILE = "rates.csv"
RATES_COLUMNS = ("experiment", "model", "kind", "scale", "seconds_per_epoch",
                 "seconds_per_sample_epoch", "rows", "machines")
RUNNER_FILE = "reproduce.json"  # <part>/reproduce.json: {"starts": [unix seconds, ...]}
NAD_IMAGE_DIGITS = 6  # significant digits of the NAD image pixels (Fig. 10)
SCALE_ORDER = {scale: i for i, scale in enumerate(figures_lib.SCALES)}
# Rows of a run, not of a task: NAD curve, NAD images, Table 1's conventions at init.
EXTRA_KINDS = ("curve", "image", "energy_variant")

Row = Dict[str, str]


# ----------------------------------------------------------------------------
# Cells and CSV files.

def cell(value: Any) -> str:
  """The CSV text of a value: "" for None / NaN, JSON for lists, dicts and bools."""
  if value is None:
    return ""
  if isinstance(value, bool) or isinstance(value, (list, tuple, dict)):
    return json.dumps(value, separators=(",", ":"))
  if isinstance(value, float):
    return "" if math.isnan(value) else repr(value)
  return str(value)


def number(row: Mapping[str, str], column: str) -> float:
  """A cell as a float (NaN where empty or absent)."""
  text = row.get(column, "")
  return float(text) if text not in ("", None) else math.nan


def values(row: Mapping[str, str], column: str) -> Any:
  """A JSON cell (None where empty or absent)."""
  text = row.get(column, "")
  return json.loads(text) if text else None


def read_csv(path: os.PathLike) -> List[Row]:
  path = pathlib.Path(path)
  if not path.is_file():
    return []
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def write_csv(path: os.PathLike, rows: Sequence[Mapping[str, str]],
              lead: Sequence[str] = LEAD_COLUMNS, last: Sequence[str] = LAST_COLUMNS) -> None:
  """Writes rows with the lead columns first, the others in name order, `last` at the end."""
  present = {c for r in rows for c in r}
  columns = [c for c in lead if c in present]
  columns += sorted(present - set(lead) - set(last))
  columns += [c for c in last if c in present]
  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
  writer.writeheader()
  for row in rows:
    writer.writerow({c: row.get(c, "") for c in columns})
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(text.getvalue())
  os.replace(tmp, path)


def csv_path(out: pathlib.Path, figure: str, model: str) -> pathlib.Path:
  return out / f"{figure}_{model}.csv"


def figure_csvs(out: pathlib.Path) -> Dict[Tuple[str, str], pathlib.Path]:
  """{(figure, model): path} of the CSVs in `out`."""
  found = {}
  for name in figures_lib.NAMES:
    for model in figures_lib.MODELS:
      path = csv_path(out, name, model)
      if path.is_file():
        found[(name, model)] = path
  return found


def committed_rows(out: pathlib.Path) -> Dict[Tuple[str, str], Row]:
  """{(settings_id, "<model>/<task>"): row} over every figure CSV in `out`."""
  rows = {}
  for path in figure_csvs(out).values():
    for row in read_csv(path):
      rows.setdefault((row.get("settings_id", ""), f"{row.get('model')}/{row.get('task')}"), row)
  return rows


def add_extra_rows(out: pathlib.Path, figure: str, model: str, kind: str,
                   rows: Sequence[Mapping[str, Any]]) -> pathlib.Path:
  """Writes `rows` (of `kind`, one of EXTRA_KINDS) into <out>/<figure>_<model>.csv.

  They join the figure's task rows under the settings_id of its summary row (so a
  later merge keeps them), replacing the rows of that kind already there.

  Raises:
    ValueError: naming the CSV when it has no summary row yet (run the figure first).
  """
  if kind not in EXTRA_KINDS:
    raise ValueError(f"kind must be one of {EXTRA_KINDS}. Received: kind={kind!r}")
  path = csv_path(out, figure, model)
  existing = read_csv(path)
  summary = next((r for r in existing if r.get("kind") == "summary"), None)
  if summary is None:
    raise ValueError(f"{path} has no summary row: run --figure={figure} --models={model} "
                     "first (its rows name the settings these rows are filed under).")
  shared = {c: summary[c] for c in ("experiment", "scale", "settings_id", "plan_tasks")
            if c in summary}
  added = [{**shared, **{c: cell(v) for c, v in r.items()}, "kind": kind} for r in rows]
  write_csv(path, [r for r in existing if r.get("kind") != kind] + added)
  return path


# ----------------------------------------------------------------------------
# The machine and the rows of a workdir.

def machine() -> str:
  """This process's `onednn.machine()`: the machine of rows that do not record their own."""
  from ntk_tf import onednn  # pylint: disable=g-import-not-at-top
  return onednn.machine()


def _json(path: pathlib.Path) -> Dict[str, Any]:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return {}


def _nested(values_: Mapping[str, Any], *path: str) -> Any:
  for key in path:
    if not isinstance(values_, Mapping) or key not in values_:
      return None
    values_ = values_[key]
  return values_


def _wall_seconds(source: pathlib.Path) -> Dict[str, float]:
  """{row key: seconds since the previous row of this folder or the latest start before it}."""
  starts = sorted(_json(source / RUNNER_FILE).get("starts", []))
  files = sorted((p.stat().st_mtime, p.stem) for p in (source / "results").glob("*.json"))
  seconds, previous = {}, None
  for mtime, key in files:
    begun = [s for s in starts if s <= mtime]
    if not begun:
      previous = mtime
      continue
    start = begun[-1] if previous is None or previous < begun[-1] else previous
    seconds[key] = mtime - start
    previous = mtime
  return seconds


def _history(path: pathlib.Path) -> Dict[str, List[float]]:
  """Columns epoch, train_loss, test_acc of a training's metrics.csv ({} where absent)."""
  rows = read_csv(path)
  if not rows:
    return {}
  return {f"history_{c}": [float(r[c]) for r in rows] for c in ("epoch", "train_loss", "test_acc")}


def _alpha(path: pathlib.Path) -> Optional[List[float]]:
  """The alpha column of kernel_rotation's alignment_epoch_XXXX.csv (None where absent)."""
  rows = read_csv(path)
  return [float(r["alpha"]) for r in rows] if rows else None


def _extra_columns(run: runs_lib.Run, source: pathlib.Path, key: str, raw: Mapping[str, Any]
                   ) -> Dict[str, Any]:
  """What the experiment writes beside its rows that the figures plot (module docstring)."""
  if run.experiment == "kernel_rotation" and raw.get("kind") == "epoch":
    alpha = _alpha(source / run.model / raw["target"] / f"alignment_epoch_{raw['epoch']:04d}.csv")
    return {} if alpha is None else {"alpha": alpha}
  if run.experiment == "late_linearization":
    return _history(source / "runs" / key / "metrics.csv")
  return {}


def _describe(run: runs_lib.Run, source: pathlib.Path, config: Mapping[str, Any]
              ) -> Dict[str, Any]:
  """The lead columns that come from the settings of a workdir (settings.json, config)."""
  settings = _json(source / "settings.json")
  recipe = _nested(settings, "common", "recipe") or {}
  return {"dataset": config.get("dataset", "separable D(v_j) (Eq. 5)"),
          "num_train": _nested(settings, "data", "num_train") or config.get("train_size"),
          "num_test": _nested(settings, "data", "num_test") or config.get("test_size"),
          "epochs": recipe.get("epochs"), "optimizer": recipe.get("optimizer"),
          "seed": config.get("train_seed", config.get("model_seed", 0))}


def workdir_row(run: runs_lib.Run, source: pathlib.Path, key: str, kind: str,
                context: Mapping[str, Any]) -> Optional[Row]:
  """The CSV row of results/<key>.json in `source` (a part or an adopted workdir)."""
  raw = _json(source / "results" / f"{key}.json")
  if not raw:
    return None
  raw.pop("history", None)  # Per-epoch metrics of eigenfunctions / cifar2: not plotted.
  described = _describe(run, source, context["config"])
  row = {**described, **{k: v for k, v in raw.items() if v is not None or k not in described}}
  row.setdefault("model", run.model)
  row["model"] = row["model"] or run.model
  row.setdefault("kind", kind)
  if "train_size" in raw:  # cifar2_sample_size: each row's own n
    row["num_train"] = raw["train_size"]
  row.update(_extra_columns(run, source, key, raw))
  row.update({"experiment": run.experiment, "scale": run.scale, "settings_id": run.settings_id,
              "config": run.settings, "machine": raw.get("machine") or context["machine"],
              "wall_seconds": context["wall_seconds"].get(key), "source": context["source"],
              "part": context["part"]})
  return {k: cell(v) for k, v in row.items()}


def nad_rows(run: runs_lib.Run, source: pathlib.Path, page: str,
             context: Mapping[str, Any]) -> List[Row]:
  """Fig. 4's alignment curve or Fig. 10's images from a NAD workdir ([] where absent)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  path = source / "nads.npz"
  if run.experiment != "nads" or page not in ("nad_accuracy", "nad_images") or not path.is_file():
    return []
  with np.load(path) as saved:
    singular_values = saved["singular_values"].astype(np.float64)  # [k]
    directions = saved["directions"]  # [k, H, W, C]
  base = {**_describe(run, source, context["config"]), "model": run.model,
          "experiment": run.experiment, "scale": run.scale, "settings_id": run.settings_id,
          "config": run.settings, "machine": context["machine"], "source": context["source"],
          "part": context["part"]}
  if page == "nad_accuracy":
    rows = [{**base, "task": "nad_curve", "kind": "curve",
             "curve_alignment": [float(s * s) for s in singular_values]}]
  else:
    count = min(int(context["config"].get("num_images", 10)), len(directions))
    rows = [{**base, "task": f"nad_image{j + 1:02d}", "kind": "image", "j": j + 1,
             "singular_value": float(singular_values[j]), "shape": list(directions.shape[1:]),
             "direction": [float(f"{v:.{NAD_IMAGE_DIGITS}g}") for v in directions[j].ravel()]}
            for j in range(count)]
  return [{k: cell(v) for k, v in r.items()} for r in rows]


# ----------------------------------------------------------------------------
# Merging a run's rows into its figures' CSVs.

def _context(run: runs_lib.Run, source: pathlib.Path, root: Optional[pathlib.Path],
             machine_: str, label: str) -> Dict[str, Any]:
  part = source.name if root is None else str(source.relative_to(root))
  return {"config": _json(source / "config.json"), "machine": machine_,
          "wall_seconds": _wall_seconds(source), "source": label, "part": part}


def _task_rows(run: runs_lib.Run, config: Any, task: Any, kept: Mapping[str, Row],
               contexts: Sequence[Tuple[pathlib.Path, Mapping[str, Any]]]
               ) -> Tuple[Optional[List[Row]], int]:
  """A task's rows (None while one is missing) and how many come from `contexts`."""
  def good(row, key, kind):
    return row is not None and runs_lib.has_required(run, config, row, key, kind)
  if all(good(kept.get(key), key, kind) for key, kind in task.rows):
    return [kept[key] for key, _ in task.rows], 0
  for source, context in contexts:  # One source per task where one holds it all.
    whole = [workdir_row(run, source, key, kind, context) for key, kind in task.rows]
    if all(good(r, key, kind) for (key, kind), r in zip(task.rows, whole)):
      return whole, len(whole)
  rows, fresh_count = [], 0
  for key, kind in task.rows:
    row = kept.get(key)
    if not good(row, key, kind):
      fresh = next((r for r in (workdir_row(run, s, key, kind, c) for s, c in contexts)
                    if r is not None), None)
      if fresh is not None:
        row, fresh_count = fresh, fresh_count + 1
    if row is None:
      return None, 0
    rows.append(row)
  return rows, fresh_count


def merge_figure(figure: str, run: runs_lib.Run, task_names: Sequence[str],
                 sources: Sequence[pathlib.Path], out: pathlib.Path,
                 root: Optional[pathlib.Path], machine_: str, label: str = "run"
                 ) -> Tuple[Optional[pathlib.Path], str]:
  """Writes <out>/<figure>_<model>.csv from the committed rows and the rows in `sources`.

  Per task of the figure: committed rows with the run's settings_id and the columns
  the figure plots are kept as they are; where one is missing or lacks them, the first
  source folder (made with the run's settings_id) that has every row of the task, with
  those columns, gives them all (one source per task), else each missing row comes from
  the first source that has it. A task is written when all its rows are there;
  `task_done` is 1 when they also hold what the figure plots (a legacy row without it
  is kept with 0 until a run replaces it). Rows of another settings_id are
  replaced, unless they are of a larger scale (then nothing is written).

  Returns:
    (the path written or None, a line saying what was done).
  """
  path = csv_path(out, figure, run.model)
  existing = read_csv(path)
  other = [r for r in existing if r.get("settings_id") != run.settings_id]
  if other and SCALE_ORDER.get(other[0].get("scale"), -1) > SCALE_ORDER[run.scale]:
    return None, (f"{path.name}: holds {other[0].get('scale')}-scale rows; the {run.scale}-"
                  f"scale rows are not written over them (pass another --out).")
  kept = {r["task"]: r for r in existing if r.get("settings_id") == run.settings_id}
  usable = [s for s in sources if runs_lib.config_settings_id(s / "config.json") == run.settings_id]
  contexts = [(s, _context(run, s, root, machine_, label)) for s in usable]
  config = run.config()
  names = set(task_names)
  rows, new = [], 0
  for task in run.tasks:
    if task.name not in names:
      continue
    found, fresh_count = _task_rows(run, config, task, kept, contexts)
    if found is None:
      continue
    ok = all(runs_lib.has_required(run, config, row, key, kind)
             for (key, kind), row in zip(task.rows, found))
    for row in found:
      row.update(plan_task=task.name, task_done="1" if ok else "0")
    rows += found
    new += fresh_count
  page = figures_lib.FIGURES[figure].page
  extras = next((e for e in (nad_rows(run, s, page, c) for s, c in contexts) if e), [])
  if not extras:
    extras = [r for r in kept.values() if r.get("kind") in EXTRA_KINDS]
  if not rows and not extras:
    return None, f"{path.name}: no rows yet."
  for row in rows + extras:
    row["plan_tasks"] = str(len(task_names))
  write_csv(path, rows + extras)
  return path, f"{path.name}: {len(rows)} rows ({new} new), {len(extras)} more."


def merge_plan(plan: runs_lib.Plan, machine_: Optional[str] = None) -> List[str]:
  """Merges every run's parts into the CSVs of its figures; then rates.csv. Returns lines."""
  machine_ = machine_ or machine()
  lines = []
  for (figure, _), (run, names) in sorted(plan.figures.items()):
    _, line = merge_figure(figure, run, names, run.part_dirs(), plan.out, plan.workdir,
                           machine_)
    lines.append(line)
  write_rates(plan.out)
  return lines


# ----------------------------------------------------------------------------
# Measured rates.

def rates(out: pathlib.Path) -> List[Row]:
  """Seconds per epoch by (experiment, model, kind, scale) over the figure CSVs (each row once)."""
  seen, groups = set(), {}
  for path in figure_csvs(out).values():
    for row in read_csv(path):
      ident = (row.get("settings_id"), row.get("model"), row.get("task"))
      seconds = number(row, "seconds")
      if math.isnan(seconds):
        seconds = number(row, "wall_seconds")
      epochs = number(row, "epochs")
      if ident in seen or math.isnan(seconds) or not epochs > 0 or not row.get("experiment"):
        continue
      seen.add(ident)
      key = (row["experiment"], row["model"], row["kind"], row["scale"])
      total = groups.setdefault(key, [0.0, 0.0, 0, set(), 0.0, 0.0])
      total[0] += seconds
      total[1] += epochs
      total[2] += 1
      total[3].add(row.get("machine", ""))
      samples = number(row, "num_train")
      if samples > 0:  # Rows that record their samples: seconds per sample-epoch.
        total[4] += seconds
        total[5] += epochs * samples
  return [{"experiment": e, "model": m, "kind": k, "scale": s,
           "seconds_per_epoch": f"{t[0] / t[1]:.4g}",
           "seconds_per_sample_epoch": f"{t[4] / t[5]:.4g}" if t[5] else "",
           "rows": str(t[2]), "machines": "; ".join(sorted(x for x in t[3] if x))}
          for (e, m, k, s), t in sorted(groups.items())]


def write_rates(out: pathlib.Path) -> pathlib.Path:
  path = out / RATES_FILE
  write_csv(path, rates(out), lead=RATES_COLUMNS, last=())
  return path


def read_rates(out: pathlib.Path) -> runs_lib.Rates:
  table, per_sample = {}, {}
  for row in read_csv(out / RATES_FILE):
    key = (row["experiment"], row["model"], row["kind"], row["scale"])
    table[key] = float(row["seconds_per_epoch"])
    if row.get("seconds_per_sample_epoch"):
      per_sample[key] = float(row["seconds_per_sample_epoch"])
  return runs_lib.Rates(table, per_sample)


# ----------------------------------------------------------------------------
# Adopting a workdir made by hand, and the one-time import of docs/paper_scale.

def adopt(source: pathlib.Path, out: pathlib.Path, machine_: Optional[str] = None
          ) -> List[str]:
  """Merges an experiment workdir into the CSVs of the figures whose plan it matches.

  The workdir's config.json gives its experiment, models and settings_id; it matches a
  figure at a scale for a model when that plan's run has the same settings_id.

  Returns:
    Lines: each figure / scale / model matched and what was written, or why none matched.
  """
  config = _json(source / "config.json")
  experiment = config.get("experiment")
  if experiment not in tasks_lib.EXPERIMENTS:
    return [f"--adopt: {source.name}/config.json names no experiment of "
            f"{list(tasks_lib.EXPERIMENTS)}. Received: experiment={experiment!r}"]
  wanted = runs_lib.config_settings_id(source / "config.json")
  spec = tasks_lib.EXPERIMENTS[experiment]
  models = config.get(spec.model_field)
  models = [models] if isinstance(models, str) else list(models or [])
  machine_ = machine_ or machine()
  lines, tried = [], []
  for name, figure in figures_lib.FIGURES.items():
    if figure.experiment != experiment:
      continue
    for scale in figures_lib.SCALES:
      for model in models:
        if model not in figure.models:
          continue
        run, tasks = runs_lib.run_for(figure, scale, model, out, None)
        tried.append(f"{name}/{scale}/{model} {run.settings_id}")
        if run.settings_id != wanted:
          continue
        run.tasks = tasks
        _, line = merge_figure(name, run, [t.name for t in tasks], [source], out, None,
                               machine_, label="adopted")
        lines.append(f"--adopt: matched {name} at the {scale} scale for {model}; {line}")
  if not lines:
    return [f"--adopt: {source.name} (settings_id {wanted}) matches no figure's plan; the "
            f"plans of {experiment}: {', '.join(tried)}."]
  write_rates(out)
  return lines


def status(rows: Iterable[Mapping[str, str]]) -> Tuple[int, int]:
  """(tasks done, tasks planned) of one figure CSV (`task_done`, `plan_tasks`)."""
  rows = [r for r in rows if r.get("kind") not in EXTRA_KINDS]
  planned = max((int(r["plan_tasks"]) for r in rows if r.get("plan_tasks")), default=0)
  return len({r["plan_task"] for r in rows if r.get("task_done") == "1"}), planned
