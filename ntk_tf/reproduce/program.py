"""The one call of binaries/reproduce.py: plan, run, merge into the CSVs, render.

    reproduce(figures="fig2", models="mlp,lenet", scale="paper", workdir="runs/paper")

Relative paths are taken from where `bazel run` was called (BUILD_WORKING_DIRECTORY),
else from the current folder; the default `out` is docs/paper of the repository there.
"""

import os
import pathlib
from typing import Callable, Optional

from ntk_tf.reproduce import figures as figures_lib
from ntk_tf.reproduce import legacy
from ntk_tf.reproduce import pages
from ntk_tf.reproduce import plan as plan_lib
from ntk_tf.reproduce import runner
from ntk_tf.reproduce import tables

DEFAULT_OUT = "docs/paper"


def resolve(path: str) -> pathlib.Path:
  """An absolute path; a relative one from BUILD_WORKING_DIRECTORY (bazel run), else the cwd."""
  resolved = pathlib.Path(path).expanduser()
  if not resolved.is_absolute():
    resolved = pathlib.Path(os.environ.get("BUILD_WORKING_DIRECTORY", os.getcwd())) / resolved
  return resolved


def _folder(path: pathlib.Path, flag: str) -> pathlib.Path:
  existing = next(p for p in (path, *path.parents) if p.exists())
  if not existing.is_dir():
    raise ValueError(f"--{flag} must be a folder, but {existing} is not one. "
                     f"Received: --{flag}={path}")
  return path


def reproduce(*, figures: Optional[str] = None, models: Optional[str] = None,
              scale: str = "paper", workdir: Optional[str] = None, jobs: Optional[int] = None,
              dry_run: bool = False, render: bool = False, adopt: Optional[str] = None,
              import_legacy: Optional[str] = None, out: str = DEFAULT_OUT,
              data_dir: Optional[str] = None, download: bool = False, start_over: bool = False,
              resume_command: str = "the same command", progress_s: float = 30.0,
              log: Callable[[str], None] = print) -> int:
  """Does what the flags of binaries/reproduce.py ask; returns the exit status.

  --render: pages from the CSVs in `out` only. --adopt=DIR: DIR's rows into the CSVs of
  the figures its settings match, then render. --import_legacy=DIR: the one-time import
  of docs/paper_scale. Otherwise: the plan of `figures` at `scale` for `models` in
  `workdir` (--dry-run prints it), its parts run, their rows merged into `out`, render.

  Raises:
    ValueError: a bad value, named (the binary prints it as a one-line usage error).
  """
  out_dir = _folder(resolve(out), "out")
  if render:
    written = pages.render(out_dir)
    log(f"reproduce: rendered {len(written)} files in {out}")
    return 0
  if adopt:
    source = resolve(adopt)
    if not (source / "config.json").is_file():
      raise ValueError(f"--adopt must be an experiment workdir (with config.json). "
                       f"Received: --adopt={adopt}")
    lines = tables.adopt(source, out_dir)
    for line in lines:
      log(line)
    pages.render(out_dir)
    return 0 if any("matched" in line for line in lines) else 1
  if import_legacy:
    for line in legacy.import_legacy(resolve(import_legacy), out_dir):
      log(line)
    pages.render(out_dir)
    return 0
  if not figures:
    raise ValueError("--figure is required (a name, a comma list or 'all') unless --render, "
                     "--adopt or --import_legacy is given. Received: --figure=None")
  if not workdir:
    raise ValueError("--workdir is required to plan or run. Received: --workdir=None")
  names = figures_lib.parse_figures(figures)
  chosen = figures_lib.parse_models(models)
  figures_lib.check_scale(scale)
  jobs = jobs if jobs is not None else len(runner._cores())  # pylint: disable=protected-access
  if jobs < 1:
    raise ValueError(f"--jobs must be >= 1. Received: --jobs={jobs}")
  if data_dir is not None:
    data_dir = str(_folder(resolve(data_dir), "data_dir"))
  root = _folder(resolve(workdir), "workdir")
  plan = plan_lib.make_plan(names, scale, chosen, root, out_dir, jobs, data_dir=data_dir)
  shown = pathlib.Path(os.environ.get("BUILD_WORKING_DIRECTORY", os.getcwd()))
  if dry_run:
    log(plan_lib.describe(plan, shown))
    return 0
  for note in plan.notes:
    log(note)
  done, total = plan.tasks_done()
  parts = sum(len(r.parts) for r in plan.runs)
  log(f"reproduce: {done} of {total} tasks done; {parts} part(s) to run on {jobs} job(s).")
  code = runner.run_plan(plan, download=download, start_over=start_over, progress_s=progress_s,
                         resume_command=resume_command, log=log)
  if code >= 128:
    return code
  for line in tables.merge_plan(plan):
    log(f"reproduce: {line}")
  pages.render(out_dir)
  log(f"reproduce: pages in {out}")
  return code


def energy_variants(*, models: str = "mlp,lenet", out: str = DEFAULT_OUT,
                    data_dir: Optional[str] = None, variants: Optional[str] = None,
                    eigvecs_60k: Optional[str] = None, train_size: int = 12_000,
                    top_k: int = 50, log: Callable[[str], None] = print) -> None:
  """Table 1's energy at init under each convention (`experiments.label_energy`), per model.

  Files the rows into <out>/table1_<model>.csv (`tables.add_extra_rows`) and renders
  the pages. `eigvecs_60k` is a comma list of `model=path` (a saved eigendecomposition
  of that model's 60,000-sample CIFAR-10 Gram, key `eigvecs`) for the `theta0_60k`
  variant, skipped for a model without one.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ntk_tf import data as data_lib  # pylint: disable=g-import-not-at-top
  from ntk_tf.experiments import label_energy  # pylint: disable=g-import-not-at-top
  out_path = resolve(out)
  names = [m for m in models.split(",") if m]
  unknown = sorted(set(names) - {"mlp", "lenet", "resnet18"})
  if unknown or not names:
    raise ValueError(f"models must be a comma list of mlp, lenet, resnet18. Received: "
                     f"models={models!r}")
  chosen = tuple(label_energy.VARIANTS if not variants else variants.split(","))
  items = [item for item in (eigvecs_60k or "").split(",") if item]
  if any("=" not in item for item in items):
    raise ValueError(f"eigvecs_60k must be a comma list of model=path. Received: "
                     f"eigvecs_60k={eigvecs_60k!r}")
  paths = dict(item.split("=", 1) for item in items)
  labels_60k = None  # The 60,000 CIFAR2 labels, loaded once for every model that needs them.
  for model in names:
    extra = {}
    if model in paths and "theta0_60k" in chosen:
      if labels_60k is None:
        full = data_lib.load("cifar2", data_dir=data_dir)
        labels_60k = np.concatenate([full.y_train, full.y_test])
        del full
      with np.load(resolve(paths[model])) as saved:
        extra = dict(eigvecs_60k=saved["eigvecs"][:, :top_k], labels_60k=labels_60k)
    rows = label_energy.energy_variants(model, data_dir, train_size=train_size, k=top_k,
                                        variants=chosen, **extra)
    path = tables.add_extra_rows(out_path, "table1", model, "energy_variant",
                                 label_energy.csv_rows(rows))
    log(f"{path}: " + ", ".join(f"{r['variant']} {100 * r['energy_init']:.1f}%" for r in rows))
  pages.render(out_path)
  log(f"pages in {out}")
