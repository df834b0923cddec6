"""The one-time import of the paper-scale results joined by hand before `reproduce`.

`reproduce --import_legacy=DIR` converts the CSVs that docs/paper_scale held into
<out>/<figure>_<model>.csv rows with source "legacy"; a run or an adoption replaces
them task by task (`tables.merge_figure`).
"""

import pathlib
from typing import List

from ntk_tf.reproduce import figures as figures_lib
from ntk_tf.reproduce import runs as runs_lib
from ntk_tf.reproduce import tables


# The paper-scale results made by hand before this tool, on a 2-core x86_64 CPU with
# AVX-512 (oneDNN on): file -> the figures it serves, with the model.
LEGACY_FILES = {
    "fig2_fig3_mlp_results.csv": (("fig2", "fig3", "fig13"), "mlp"),
    "fig2_fig3_lenet_results.csv": (("fig2", "fig3", "fig14"), "lenet"),
    "fig7_mlp_results.csv": (("fig7",), "mlp"),
    "fig7_lenet_results.csv": (("fig7",), "lenet"),
    "fig15_mlp_results.csv": (("fig15",), "mlp"),
    "fig16_lenet_results.csv": (("fig16",), "lenet"),
}
LEGACY_MACHINE = "x86_64 2 cores avx2 avx512 oneDNN on"
# Their settings (configs/eigenfunctions.py:paper, configs/kernel_rotation.py:
# paper_eigenfunction): all CIFAR-10, 100 epochs of SGD (the CIFAR2 line 200).
LEGACY_SETTINGS = {"dataset": "cifar10", "num_train": 50_000, "num_test": 10_000,
                   "optimizer": "sgd", "seed": 0}


def import_legacy(folder: pathlib.Path, out: pathlib.Path) -> List[str]:
  """Converts the hand-joined CSVs of docs/paper_scale into <out>/<figure>_<model>.csv.

  Each row gets the settings_id of the paper plan of its figure and model, the legacy
  machine, source "legacy" and no fingerprint or wall time (not recorded). The 1,000
  alphas of Figs. 7, 15, 16 were not kept: those rows lack `alpha`, so their tasks stay
  to do.
  """
  lines = []
  for filename, (names, model) in LEGACY_FILES.items():
    legacy = tables.read_csv(folder / filename)
    if not legacy:
      lines.append(f"{filename}: absent or empty; skipped.")
      continue
    by_task = {r["task"]: r for r in legacy}
    for name in names:
      run, tasks = runs_lib.run_for(figures_lib.FIGURES[name], "paper", model, out, None)
      rows = []
      for task in tasks:
        for key, kind in task.rows:
          if key not in by_task:
            continue
          raw = {k: v for k, v in by_task[key].items() if v != ""}
          epochs = raw.get("epochs") or (200 if key.endswith("_cifar2_network") else 100)
          row = {**{k: tables.cell(v) for k, v in LEGACY_SETTINGS.items()}, **raw,
                 "kind": raw.get("kind", kind), "model": model, "epochs": str(epochs),
                 "experiment": run.experiment, "scale": "paper",
                 "settings_id": run.settings_id, "config": run.settings,
                 "machine": LEGACY_MACHINE, "source": f"legacy {filename}",
                 "fingerprint": raw.get("fingerprint", ""), "plan_task": task.name,
                 "plan_tasks": str(len(tasks))}
          rows.append(row)
      config = run.config()
      for task in tasks:
        mine = [r for r in rows if r["plan_task"] == task.name]
        ok = len(mine) == len(task.rows) and all(
            runs_lib.has_required(run, config, r, r["task"], r["kind"]) for r in mine)
        for row in mine:
          row["task_done"] = "1" if ok else "0"
      tables.write_csv(tables.csv_path(out, name, model), rows)
      lines.append(f"{filename} -> {name}_{model}.csv: {len(rows)} rows.")
  tables.write_rates(out)
  return lines
