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

Outputs in the workdir:
  results.csv                 one row per (model, target, epoch) and one summary row per run
  <model>/<target>/alignment_epoch_XXXX.csv   j, phi alignment alpha_t(phi_j)  (a CSV per epoch)
  <model>/<target>/eigvals_epoch_XXXX.csv     the top-K eigenvalues of Theta_t
  table1.md                   the Table 1 layout (energy init / end, test accuracy) per model
  energy_concentration.png    Fig. 6;  alignment_<model>_<target>.png   Figs. 7, 15, 16

Paper: Sec. 4.2, Figs. 6, 7, 15, 16, Table 1 (App. E.2, E.3).
"""

import math
import pathlib
import shutil
from typing import Any, Dict, List, Optional

from absl import logging
import numpy as np

import ntk_tf
from ntk_tf import data as data_lib
from ntk_tf.experiments import runs
from ntk_tf.experiments import tasks
from ntk_tf.experiments import workdir as workdir_lib

EXPERIMENT = "kernel_rotation"
TASKS = ("cifar2", "eigenfunction")
# The raw split sizes of the supporting datasets, for bounds checks when a size is None.
_FULL_SIZES = {"cifar10": (50_000, 10_000), "cifar2": (50_000, 10_000),
               "mnist": (60_000, 10_000), "mnist2": (60_000, 10_000)}


def validate_config(config: Any) -> ntk_tf.Recipe:
  """Checks every field before any work; returns the recipe. Raises ValueError naming the value."""
  recipe = runs.check_common(config, models_field="models")
  if isinstance(config.models, str) or not list(config.models):
    raise ValueError(f"config.models must be a non-empty list of model names. "
                     f"Received: models={config.models!r}")
  runs.check_choice(config.task, "task", TASKS)
  runs.check_dataset_sizes(config)
  if config.task == "cifar2" and config.dataset not in ("cifar2", "mnist2"):
    raise ValueError(f"task 'cifar2' needs a binary dataset ('cifar2' or 'mnist2'). "
                     f"Received: dataset={config.dataset!r}")
  runs.check_non_negative_int(config.data_seed, "data_seed")
  epochs = runs.check_int_list(config.measure_epochs, "measure_epochs", low=0, high=recipe.epochs)
  if epochs[0] != 0 or epochs[-1] != recipe.epochs:
    raise ValueError(f"config.measure_epochs must contain 0 (init) and the last epoch "
                     f"{recipe.epochs} (end, Table 1). Received: measure_epochs={epochs}")
  n_train = config.train_size or _FULL_SIZES[config.dataset][0]
  n_test = config.test_size or _FULL_SIZES[config.dataset][1]
  top_k = runs.check_positive_int(config.top_k, "top_k")
  if top_k > n_train:
    raise ValueError(f"config.top_k must be <= train_size={n_train}. Received: top_k={top_k}")
  num_alignment = runs.check_positive_int(config.num_alignment, "num_alignment")
  limit = n_train + n_test if config.task == "eigenfunction" else n_train
  if num_alignment > limit:
    raise ValueError(f"config.num_alignment (J) must be <= {limit} (the samples its eigenvectors "
                     f"live on). Received: num_alignment={num_alignment}")
  if config.task == "eigenfunction":
    runs.check_int_list(config.eigenfunction_indices, "eigenfunction_indices", low=1,
                          high=num_alignment)
  runs.check_gram(config.gram)
  return recipe


def _targets(config: Any) -> List[str]:
  if config.task == "cifar2":
    return ["cifar2"]
  return [f"phi{j}" for j in sorted(config.eigenfunction_indices)]


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


def _measure_epoch(config: Any, recipe: ntk_tf.Recipe, model, run_dir: pathlib.Path,
                   x_train: np.ndarray, y_pm1: np.ndarray, phi_basis: Optional[np.ndarray],
                   epoch: int, progress: bool) -> Dict[str, Any]:
  """Theta_t on the training samples -> energy, alignments (files) and the row of epoch t."""
  del recipe
  model_t = runs.load_checkpoint(model, run_dir / "train", epoch)
  gram_dir = run_dir / f"gram_epoch_{epoch:04d}"
  store = ntk_tf.GramStore(gram_dir, model_t, x_train, block_size=config.gram.block_size,
                           dtype=config.gram.dtype, implementation=config.gram.implementation)
  store.compute(progress=progress)
  gram = store.matrix  # [n, n]
  eigvals, eigvecs = ntk_tf.eigen(store, config.top_k)  # [K], [n, K]
  energy = ntk_tf.energy_concentration(eigvecs, y_pm1, config.top_k)
  if phi_basis is None:  # cifar2: the phi_j are the eigenvectors of the train Gram at init.
    assert epoch == 0, "the init basis is computed at epoch 0"
    _, phi_basis = ntk_tf.eigen(store, config.num_alignment)  # [n, J]
    np.save(run_dir / "phi_init_train.npy", phi_basis)
  alpha_phi = alignment_from_gram(gram, phi_basis)  # [J]
  alpha_y = float(alignment_from_gram(gram, y_pm1[:, None])[0])
  _write_column_csv(run_dir / f"alignment_epoch_{epoch:04d}.csv", "alpha", alpha_phi)
  _write_column_csv(run_dir / f"eigvals_epoch_{epoch:04d}.csv", "eigval", eigvals)
  del gram, store
  if not config.keep_grams:
    shutil.rmtree(gram_dir, ignore_errors=True)
  return {"epoch": epoch, "energy_top_k": float(energy), "alpha_labels": alpha_y,
          "eigval_1": float(eigvals[0]), f"eigval_{config.top_k}": float(eigvals[-1])}


def run(config: Any, workdir: pathlib.Path) -> List[Dict[str, Any]]:
  """Trains every (model, target), measures Theta_t at the chosen epochs, writes tables/figures.

  Resumable: training resumes from its state, finished epochs (rows) are skipped.

  Args:
    config: see configs/kernel_rotation.py.
    workdir: output folder.
  Returns:
    The rows of results.csv.
  """
  recipe = validate_config(config)
  workdir = workdir_lib.prepare(workdir, config)
  store = workdir_lib.ResultStore(workdir)
  progress = bool(config.get("progress", False))
  dataset = runs.load_dataset(config)
  x_train = dataset.x_train
  gram_kwargs = dict(block_size=config.gram.block_size, implementation=config.gram.implementation,
                     dtype=config.gram.dtype, progress=progress)
  keys = []
  for model_name in config.models:
    model = runs.build_model(config, model_name, dataset.input_shape)
    basis = None
    if config.task == "eigenfunction":
      k = max(config.num_alignment, max(config.eigenfunction_indices))
      basis = tasks.eigen_basis(model, dataset, k, workdir / model_name / "eigen_init",
                                **gram_kwargs)
    for target in _targets(config):
      run_dir = workdir / model_name / target
      settings = {"model": model_name, "target": target, "activation": config.activation,
                  "model_kwargs": runs.model_kwargs(config, model_name),
                  "model_seed": config.model_seed, "train_seed": config.train_seed,
                  "data_seed": config.data_seed, "dataset": config.dataset,
                  "train_size": config.train_size, "test_size": config.test_size,
                  "recipe": recipe.to_dict(), "top_k": config.top_k,
                  "num_alignment": config.num_alignment, "gram": config.gram.to_dict()}
      fp = workdir_lib.fingerprint(settings)
      runs.fresh_dir(run_dir, fp)
      key = f"{model_name}_{target}"
      run_keys = [f"{key}_epoch{e:04d}" for e in sorted(config.measure_epochs)] + [f"{key}_summary"]
      keys += run_keys
      if all(store.get(k, fp) is not None for k in run_keys):
        logging.info("%s: finished earlier; skipped.", key)
        continue
      if basis is None:
        y_train01 = data_lib.to_01(dataset.y_train)
        y_test01 = data_lib.to_01(dataset.y_test)
        phi_basis, overlap, target_j = None, math.nan, None
      else:
        task = tasks.task_from_basis(basis, int(target[3:]))
        y_train01, y_test01 = task.y_train01, task.y_test01
        phi_basis = basis.eigvecs[basis.is_train, :config.num_alignment]  # [n, J]
        overlap, target_j = task.overlap, task.j
      y_pm1 = 2.0 * y_train01 - 1.0  # [n] in {-1, 1}
      result = runs.train_run(
          runs.clone_with_weights(model), x_train, y_train01, dataset.x_test, y_test01,
          recipe=recipe, seed=config.train_seed, train_dir=run_dir / "train",
          checkpoint_epochs=config.measure_epochs, progress=progress)
      for epoch in sorted(config.measure_epochs):
        ekey = f"{key}_epoch{epoch:04d}"
        if store.get(ekey, fp) is not None:
          continue
        if phi_basis is None and epoch > 0:
          phi_basis = np.load(run_dir / "phi_init_train.npy")
        logging.info("%s: measuring Theta_%d.", key, epoch)
        row = _measure_epoch(config, recipe, model, run_dir, x_train, y_pm1, phi_basis, epoch,
                             progress)
        history = result.history[epoch]
        row.update({"kind": "epoch", "model": model_name, "target": target,
                    "train_loss": history["train_loss"], "train_acc": history["train_acc"],
                    "test_acc": history["test_acc"], "overlap": overlap})
        store.put(ekey, row, fp)
      # Summary of the run: Table 1 entries and the single-axis ratio.
      first, last = min(config.measure_epochs), max(config.measure_epochs)
      rows = {r["epoch"]: r for r in store.rows([f"{key}_epoch{e:04d}" for e in (first, last)])}
      summary = {"kind": "summary", "model": model_name, "target": target,
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
  write_table1(config, rows, workdir / "table1.md")
  plot_all(config, rows, workdir)
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


def write_table1(config: Any, rows: List[Dict[str, Any]], path: pathlib.Path) -> None:
  parts = [f"# Table 1 layout ({config.get('variant', '?')} config)\n",
           f"Energy concentration on the top K = {config.top_k} eigenvectors of the Gram of "
           f"Theta_t on {config.train_size or 'all'} training samples, at init (epoch 0) and "
           f"at the end (epoch {max(config.measure_epochs)}); test accuracy at the end.\n"]
  for target in _targets(config):
    table = table1_markdown(rows, target)
    if table:
      parts.append(f"\n## Target: {target}\n\n{table}")
  workdir_lib.atomic_write_text(path, "\n".join(parts))


def plot_all(config: Any, rows: List[Dict[str, Any]], workdir: pathlib.Path) -> None:
  """energy_concentration.png (Fig. 6) and alignment_<model>_<target>.png (Figs. 7, 15, 16)."""
  plt = runs.pyplot()
  epoch_rows = [r for r in rows if r.get("kind") == "epoch"]
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for model_name in config.models:
    for target in _targets(config):
      pts = sorted((r["epoch"], r["energy_top_k"]) for r in epoch_rows
                   if r["model"] == model_name and r["target"] == target)
      if pts:
        ax.plot(*zip(*pts), marker="o", label=f"{model_name} / {target}")
  ax.set_xlabel("epoch t")
  ax.set_ylabel(f"||Phi_t y||^2 / ||y||^2  (K={config.top_k})")
  ax.set_title("Energy concentration of the labels (Fig. 6)")
  ax.legend(fontsize=7)
  runs.save_figure(fig, workdir / "energy_concentration.png")

  first, last = min(config.measure_epochs), max(config.measure_epochs)
  for model_name in config.models:
    for target in _targets(config):
      run_dir = workdir / model_name / target
      alpha_init = _read_column_csv(run_dir / f"alignment_epoch_{first:04d}.csv")
      alpha_end = _read_column_csv(run_dir / f"alignment_epoch_{last:04d}.csv")
      j = np.arange(1, len(alpha_init) + 1)
      fig, ax = plt.subplots(figsize=(5, 3.5))
      ax.semilogy(j, alpha_init, ".", ms=3, label=f"alpha_{first}(phi_j)")
      ax.semilogy(j, alpha_end, ".", ms=3, label=f"alpha_{last}(phi_j)")
      if target.startswith("phi"):
        jt = int(target[3:])
        ax.semilogy([jt], [alpha_end[jt - 1]], "r*", ms=12, label=f"trained on phi_{jt}")
      ax.set_xlabel("eigenfunction index j")
      ax.set_ylabel("alignment alpha(phi_j)")
      figure = " (Figs. 7, 15, 16)" if target.startswith("phi") else ""
      ax.set_title(f"{model_name}, trained on {target}{figure}")
      ax.legend(fontsize=7)
      runs.save_figure(fig, workdir / f"alignment_{model_name}_{target}.png")
