"""Kernel rotation: energy concentration and alignment of Theta_t during training (Sec. 4.2).

For each model and target (CIFAR2, or sign(phi_j) of Theta_0), the network is trained
with the paper recipe and, at every epoch t of `measure_epochs` (0 = initialization):

    Theta_t        Gram of the NTK at the checkpoint theta_t on the n training samples   [n, n]
    Phi_t          its top-K eigenvectors                                                [n, K]
    E_t(y)       = ||Phi_t^T y||^2 / ||y||^2   energy concentration of the labels y in {-1, 1}
    alpha_t(f)   = ||E_x[f(x) grad f_t(x)]||^2 = f^T Theta_t f / n^2                  (Lemma 1)

alpha_t is evaluated for the first J eigenfunctions phi_j of Theta_0, each scaled to
E_x[phi_j^2] = 1 on the training samples (so alpha_0(phi_j) = lambda_j / n for the
eigenvectors of the train Gram itself), and for the labels y. The phi_j are:
  * task "eigenfunction": the eigenvectors of Theta_0 on train + test samples (the ones that
    define the tasks, App. B), restricted to the training rows;
  * task "cifar2": the eigenvectors of Theta_0 on the training samples.

"Single axis" (Fig. 7): ratio_j = alpha_T(phi_j) / alpha_0(phi_j); the trained-on
eigenfunction's ratio is compared with the median and the maximum of the others.

Outputs in the workdir (besides config.json, settings.json):
  results.csv                 one row per (model, target, epoch) and one summary row per run
  <model>/<target>/alignment_epoch_XXXX.csv   j, phi alignment alpha_t(phi_j)  (a CSV per epoch)
  <model>/<target>/eigvals_epoch_XXXX.csv     the top-K eigenvalues of Theta_t
  table1.md                   the Table 1 layout (energy init / end, test accuracy) per model
  energy_concentration.png    Fig. 6;  alignment_<model>_<target>.png   Figs. 7, 15, 16

Paper: Sec. 4.2, Figs. 6, 7, 15, 16, Table 1 (App. E.2, E.3).
"""

import dataclasses
import math
import pathlib
import shutil
from typing import Any, Dict, List, Mapping, Optional, Tuple

from absl import logging
import numpy as np

import ntk_tf
from ntk_tf.experiments import pipeline
from ntk_tf.experiments import plots
from ntk_tf.experiments import spectrum as spectrum_lib
from ntk_tf.experiments import workdir as workdir_lib

TASKS = ("cifar2", "eigenfunction")


@dataclasses.dataclass(frozen=True)
class Settings:
  """The validated settings of one kernel-rotation run (see configs/kernel_rotation.py)."""
  common: pipeline.Common
  task: str  # "cifar2" | "eigenfunction"
  models: Tuple[pipeline.ModelSpec, ...]
  data: pipeline.DataSpec
  gram: pipeline.GramSpec
  eigenfunction_indices: Tuple[int, ...]
  measure_epochs: Tuple[int, ...]
  top_k: int
  num_alignment: int
  keep_grams: bool
  train_seed: int

  @property
  def targets(self) -> List[str]:
    if self.task == "cifar2":
      return ["cifar2"]
    return [f"phi{j}" for j in self.eigenfunction_indices]


def settings_from_config(config: Mapping[str, Any]) -> Settings:
  """Validates every field (ValueError naming it) before any folder is made or data read."""
  common = pipeline.check_common(config, "PAPER_CIFAR2")
  recipe = common.recipe
  models = pipeline.check_models(config)
  task = pipeline.check_choice(config.task, "task", TASKS)
  data = pipeline.check_data(config)
  if task == "cifar2" and data.dataset not in ("cifar2", "mnist2"):
    raise ValueError(f"config.task 'cifar2' needs a binary dataset ('cifar2' or 'mnist2'). "
                     f"Received: dataset={data.dataset!r}")
  epochs = pipeline.check_ints(config.measure_epochs, "measure_epochs", low=0, high=recipe.epochs)
  if epochs[0] != 0 or epochs[-1] != recipe.epochs:
    raise ValueError(f"config.measure_epochs must contain 0 (init) and the last epoch "
                     f"{recipe.epochs} (end, Table 1). Received: measure_epochs={list(epochs)}")
  top_k = pipeline.check_positive_int(config.top_k, "top_k")
  if top_k > data.num_train:
    raise ValueError(f"config.top_k must be <= train_size={data.num_train}. Received: top_k={top_k}")
  num_alignment = pipeline.check_positive_int(config.num_alignment, "num_alignment")
  limit = data.num_train + data.num_test if task == "eigenfunction" else data.num_train
  if num_alignment > limit:
    raise ValueError(f"config.num_alignment (J) must be <= {limit} (the samples its eigenvectors "
                     f"live on). Received: num_alignment={num_alignment}")
  indices = ()
  if task == "eigenfunction":
    indices = pipeline.check_ints(config.eigenfunction_indices, "eigenfunction_indices", low=1,
                                  high=num_alignment)
  return Settings(common=common, models=models, data=data, gram=pipeline.check_gram(config),
                  task=task, eigenfunction_indices=indices, measure_epochs=epochs, top_k=top_k,
                  num_alignment=num_alignment, keep_grams=bool(config.keep_grams),
                  train_seed=pipeline.check_non_negative_int(config.train_seed, "train_seed"))


def alignment_from_gram(gram: np.ndarray, functions: np.ndarray) -> np.ndarray:
  """Returns alpha(f_c) = f_c^T Theta f_c / n^2 for every column, f_c scaled to E_x[f_c^2] = 1.

      f_c <- f_c sqrt(n) / ||f_c||,   alpha(f_c) = f_c^T Theta f_c / n^2    (Lemma 1)

  Args:
    gram: `[n, n]` symmetric Gram Theta on the samples (array or memory map).
    functions: `[n, m]` function values on the samples (nonzero columns).
  Returns:
    `[m]` float64.
  """
  functions = np.asarray(functions, np.float64)
  n = functions.shape[0]
  norms = np.linalg.norm(functions, axis=0)  # [m]
  if np.any(norms == 0):
    raise ValueError(f"functions must have nonzero columns. Received zero columns at "
                     f"{np.flatnonzero(norms == 0)[:5].tolist()}")
  scaled = functions * (math.sqrt(n) / norms)  # [n, m], mean square 1
  theta_f = np.empty_like(scaled)  # [n, m]
  for r0 in range(0, n, 2048):  # Row chunks stream a memory-mapped Gram.
    theta_f[r0:r0 + 2048] = np.asarray(gram[r0:r0 + 2048], np.float64) @ scaled
  return np.einsum("nm,nm->m", scaled, theta_f) / n**2  # [m]


def single_axis(alpha_init: np.ndarray, alpha_end: np.ndarray,
                target_index: int) -> Dict[str, float]:
  """The growth ratio alpha_T / alpha_0 of the target eigenfunction against the others (Fig. 7).

  Args:
    alpha_init, alpha_end: `[J]` alignments of phi_1..phi_J at init and at the end.
    target_index: 1-based index of the trained-on eigenfunction, <= J.
  Returns:
    ratio_target, ratio_others_median, ratio_others_max, target_rank (1 = largest ratio).
  """
  ratios = np.asarray(alpha_end, np.float64) / np.asarray(alpha_init, np.float64)  # [J]
  others = np.delete(ratios, target_index - 1)
  target = ratios[target_index - 1]
  return {"ratio_target": float(target),
          "ratio_others_median": float(np.median(others)) if others.size else math.nan,
          "ratio_others_max": float(np.max(others)) if others.size else math.nan,
          "target_rank": int(1 + np.sum(ratios > target))}


def _write_column_csv(path: pathlib.Path, name: str, values: np.ndarray) -> None:
  lines = [f"j,{name}"] + [f"{j},{v:.10g}" for j, v in enumerate(values, start=1)]
  workdir_lib.atomic_write_text(path, "\n".join(lines) + "\n")


def _read_column_csv(path: pathlib.Path) -> np.ndarray:
  return np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)[:, 1]


def _measure_epoch(settings: Settings, model, run_dir: pathlib.Path, x_train: np.ndarray,
                   y: np.ndarray, phi_basis: Optional[np.ndarray], epoch: int) -> Dict[str, Any]:
  """Theta_t on the training samples -> energy, alignments (files) and the row of epoch t."""
  model_t = pipeline.load_checkpoint(model, run_dir / "train", epoch)
  gram_dir = run_dir / f"gram_epoch_{epoch:04d}"
  store = ntk_tf.GramStore(gram_dir, model_t, x_train, block_size=settings.gram.block_size,
                           dtype=settings.gram.dtype, implementation=settings.gram.implementation)
  store.compute(progress=settings.common.progress)
  gram = store.matrix  # [n, n]
  eigvals, eigvecs = ntk_tf.eigen(store, settings.top_k)  # [K], [n, K]
  energy = ntk_tf.energy_concentration(eigvecs, y, settings.top_k)
  if phi_basis is None:  # cifar2: the phi_j are the eigenvectors of the train Gram at init.
    assert epoch == 0, "the init basis is computed at epoch 0"
    _, phi_basis = ntk_tf.eigen(store, settings.num_alignment)  # [n, J]
    np.save(run_dir / "phi_init_train.npy", phi_basis)
  alpha_phi = alignment_from_gram(gram, phi_basis)  # [J]
  alpha_y = float(alignment_from_gram(gram, y[:, None])[0])
  _write_column_csv(run_dir / f"alignment_epoch_{epoch:04d}.csv", "alpha", alpha_phi)
  _write_column_csv(run_dir / f"eigvals_epoch_{epoch:04d}.csv", "eigval", eigvals)
  del gram, store
  if not settings.keep_grams:
    shutil.rmtree(gram_dir, ignore_errors=True)
  return {"epoch": epoch, "energy_top_k": float(energy), "alpha_labels": alpha_y,
          "eigval_1": float(eigvals[0]), f"eigval_{settings.top_k}": float(eigvals[-1])}


def run(settings: Settings, workdir: pathlib.Path) -> List[Dict[str, Any]]:
  """Trains every (model, target), measures Theta_t at the chosen epochs, writes tables/figures.

  Resumable: training resumes from its state, finished epochs (rows) are skipped.

  Returns:
    The rows of results.csv.
  """
  workdir, store = pipeline.prepare(workdir, settings)
  recipe = settings.common.recipe
  dataset = settings.data.load()
  x_train = dataset.x_train
  first, last = settings.measure_epochs[0], settings.measure_epochs[-1]
  keys = []
  for spec in settings.models:
    model = spec.build(dataset.input_shape)
    basis = None
    if settings.task == "eigenfunction":
      k = max(settings.num_alignment, max(settings.eigenfunction_indices))
      basis = spectrum_lib.spectrum(model, spec, dataset, k, settings.gram, seed=spec.seed,
                                    progress=settings.common.progress)
    for target in settings.targets:
      run_dir = workdir / spec.name / target
      fp = workdir_lib.fingerprint({
          "model": dataclasses.asdict(spec), "target": target, "train_seed": settings.train_seed,
          "data": settings.data.identity(), "recipe": recipe.to_dict(),
          "top_k": settings.top_k, "num_alignment": settings.num_alignment,
          "gram": settings.gram.identity()})
      pipeline.fresh_dir(run_dir, fp)
      key = f"{spec.name}_{target}"
      run_keys = [f"{key}_epoch{e:04d}" for e in settings.measure_epochs] + [f"{key}_summary"]
      keys += run_keys
      if all(store.get(k, fp) is not None for k in run_keys):
        logging.info("%s: finished earlier; skipped.", key)
        continue
      if basis is None:
        y_train, y_test = dataset.y_train, dataset.y_test
        phi_basis, overlap, target_j = None, math.nan, None
      else:
        task = spectrum_lib.eigenfunction_task(basis, int(target[3:]))
        y_train, y_test = task.y_train, task.y_test
        phi_basis = basis.eigvecs[basis.is_train, :settings.num_alignment]  # [n, J]
        overlap, target_j = task.overlap, task.j
      y = np.asarray(y_train, np.float32)  # [n] in {-1, +1}
      result = pipeline.train_task(
          pipeline.clone_with_weights(model),
          pipeline.TaskData(x_train, y_train, dataset.x_test, y_test), recipe=recipe,
          seed=settings.train_seed, task_dir=run_dir / "train", fingerprint=fp,
          checkpoint_epochs=settings.measure_epochs, progress=settings.common.progress)
      for epoch in settings.measure_epochs:
        ekey = f"{key}_epoch{epoch:04d}"
        if store.get(ekey, fp) is not None:
          continue
        if phi_basis is None and epoch > 0:
          phi_basis = np.load(run_dir / "phi_init_train.npy")
        logging.info("%s: measuring Theta_%d.", key, epoch)
        row = _measure_epoch(settings, model, run_dir, x_train, y, phi_basis, epoch)
        history = result.history[epoch]
        row.update({"kind": "epoch", "model": spec.name, "target": target,
                    "train_loss": history["train_loss"], "train_acc": history["train_acc"],
                    "test_acc": history["test_acc"], "overlap": overlap})
        store.put(ekey, row, fp)
      # Summary of the run: Table 1 entries and the single-axis ratio.
      rows = {r["epoch"]: r for r in store.rows([f"{key}_epoch{e:04d}" for e in (first, last)])}
      summary = {"kind": "summary", "model": spec.name, "target": target,
                 "energy_init": rows[first]["energy_top_k"],
                 "energy_end": rows[last]["energy_top_k"],
                 "test_acc": result.final["test_acc"], "train_loss": result.final["train_loss"],
                 "alpha_labels_ratio": rows[last]["alpha_labels"] / rows[first]["alpha_labels"],
                 "overlap": overlap, "epoch": last}
      if target_j is not None:
        alpha_init = _read_column_csv(run_dir / f"alignment_epoch_{first:04d}.csv")
        alpha_end = _read_column_csv(run_dir / f"alignment_epoch_{last:04d}.csv")
        summary.update(single_axis(alpha_init, alpha_end, target_j))
      store.put(f"{key}_summary", summary, fp)
  rows = store.rows(keys)
  write_table1(settings, rows, workdir / "table1.md")
  plot_all(settings, rows, workdir)
  return rows


# ----------------------------------------------------------------------------
# Tables and figures.

def table1_markdown(rows: List[Dict[str, Any]], target: str = "cifar2") -> str:
  """The Table 1 layout: rows Energy conc. (init) / (end) / Test accuracy, a column per model."""
  summaries = [r for r in rows if r.get("kind") == "summary" and r["target"] == target]
  if not summaries:
    return ""
  header = "| | " + " | ".join(r["model"] for r in summaries) + " |"
  sep = "|---|" + "---|" * len(summaries)
  lines = [header, sep]
  for label, field in (("Energy conc. (init)", "energy_init"), ("Energy conc. (end)", "energy_end"),
                       ("Test accuracy", "test_acc")):
    lines.append(f"| {label} | " + " | ".join(f"{100 * r[field]:.1f}%" for r in summaries) + " |")
  return "\n".join(lines) + "\n"


def write_table1(settings: Settings, rows: List[Dict[str, Any]], path: pathlib.Path) -> None:
  parts = [f"# Table 1 layout ({settings.common.variant} config)\n",
           f"Energy concentration on the top K = {settings.top_k} eigenvectors of the Gram of "
           f"Theta_t on {settings.data.train_size or 'all'} training samples, at init (epoch 0) "
           f"and at the end (epoch {settings.measure_epochs[-1]}); test accuracy at the end.\n"]
  for target in settings.targets:
    table = table1_markdown(rows, target)
    if table:
      parts.append(f"\n## Target: {target}\n\n{table}")
  workdir_lib.atomic_write_text(path, "\n".join(parts))


def plot_all(settings: Settings, rows: List[Dict[str, Any]], workdir: pathlib.Path) -> None:
  """energy_concentration.png (Fig. 6) and alignment_<model>_<target>.png (Figs. 7, 15, 16)."""
  epoch_rows = [r for r in rows if r.get("kind") == "epoch"]
  curves = {f"{spec.name} / {target}": [(r["epoch"], r["energy_top_k"]) for r in epoch_rows
                                        if r["model"] == spec.name and r["target"] == target]
            for spec in settings.models for target in settings.targets}
  plots.plot_energy(curves, settings.top_k, workdir / "energy_concentration.png")
  first, last = settings.measure_epochs[0], settings.measure_epochs[-1]
  for spec in settings.models:
    for target in settings.targets:
      run_dir = workdir / spec.name / target
      target_j = int(target[3:]) if target.startswith("phi") else None
      figure = " (Figs. 7, 15, 16)" if target_j else ""
      plots.plot_alignment(_read_column_csv(run_dir / f"alignment_epoch_{first:04d}.csv"),
                           _read_column_csv(run_dir / f"alignment_epoch_{last:04d}.csv"),
                           (first, last), f"{spec.name}, trained on {target}{figure}",
                           workdir / f"alignment_{spec.name}_{target}.png", target_j)
