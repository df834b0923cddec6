"""Kernel rotation: energy concentration and alignment of Theta_t during training (Sec. 4.2).

For each model and target (CIFAR2, or sign(phi_j) of Theta_0), the network is trained
with the paper recipe and, at every epoch t of `measure_epochs` (0 = initialization):

    Theta_t        Gram of the NTK at the checkpoint theta_t on the n training samples   [n, n]
    Phi_t          its top-K eigenvectors                                                [n, K]
    E_t(y)       = ||Phi_t^T y||^2 / ||y||^2   energy concentration of the labels y in {-1, 1}
    E_t(b)         the same for b = (y + 1) / 2 in {0, 1}, the encoding of the authors' code
                   (their `binarize_labels`); the paper does not say which one Table 1 uses
    alpha_t(f)   = ||E_x[f(x) grad f_t(x)]||^2 = f^T Theta_t f / n^2                  (Lemma 1)

What needs which (Sec. 4.2, App. B):
  * E_t(y) (Fig. 6, Table 1) needs the eigenvectors of Theta_t, hence its Gram, at every
    measured epoch (`energy_concentration`, on for task "cifar2"). At epoch 0 of task
    "eigenfunction" that Gram is the train block of the shared Theta_0 store, read as a
    slice (`theta0.rows`), not computed again.
  * alpha_t(phi_j) (Figs. 7, 15, 16) needs no Gram: App. B computes it "directly using a
    weighted average of the Jacobian" (Lemma 1), `ntk_tf.alignment`, label columns
    chunked to `alignment_memory_budget_bytes` (`alignment_route` "jacobian", the
    default). `alignment_route` "gram" takes f^T Theta_t f / n^2 from the Gram instead
    (our option; equal to rounding).
  * task "cifar2" takes its phi_j from the train Gram at init, so it needs that Gram.

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
  <model>/<target>/eigvals_epoch_XXXX.csv     the top-K eigenvalues of Theta_t (with energy)
  table1.md                   the Table 1 layout (energy init / end, test accuracy) per model
  energy_concentration.png    Fig. 6 (with energy);  alignment_<model>_<target>.png   Figs. 7, 15, 16
Without `energy_concentration` the columns energy_top_k, eigval_*, energy_init and
energy_end are NaN / absent.

Paper: Sec. 4.2, Figs. 6, 7, 15, 16, Table 1 (App. E.2, E.3).
"""

import dataclasses
import functools
import math
import pathlib
import shutil
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from absl import logging
import keras
import numpy as np

import ntk_tf
from ntk_tf import atomic
from ntk_tf import data as data_lib
from ntk_tf import validation
from ntk_tf.distributed import cluster as cluster_lib
from ntk_tf.distributed import cluster_runner
from ntk_tf.distributed import sharded_passes
from ntk_tf.experiments import fields
from ntk_tf.experiments import pipeline
from ntk_tf.experiments import plots
from ntk_tf.experiments import spectrum as spectrum_lib
from ntk_tf.experiments import theta0 as theta0_lib
from ntk_tf.experiments import workdir as workdir_lib

TASKS = ("cifar2", "eigenfunction")
ALIGNMENT_ROUTES = ("jacobian", "gram")


def _task(value: Any, label: str, dataset: str) -> str:
  task = validation.check_choice(value, label, TASKS)
  if task == "cifar2" and dataset not in ("cifar2", "mnist2"):
    raise ValueError(f"{label} 'cifar2' needs a binary dataset ('cifar2' or 'mnist2'). "
                     f"Received: dataset={dataset!r}")
  return task


def _measure_epochs(value: Any, label: str, last: int) -> Tuple[int, ...]:
  epochs = fields.int_set(value, label, low=0, high=last)
  if epochs[0] != 0 or epochs[-1] != last:
    raise ValueError(f"{label} must contain 0 (init) and the last epoch {last} (end, "
                     f"Table 1). Received: measure_epochs={list(epochs)}")
  return epochs


def _num_alignment(value: Any, label: str, limit: int) -> int:
  num = validation.check_positive_int(value, label)
  if num > limit:
    raise ValueError(f"{label} (J) must be <= {limit} (the samples its eigenvectors live on). "
                     f"Received: num_alignment={num}")
  return num


def _eigenfunction_indices(value: Any, label: str, task: str,
                           num_alignment: int) -> Tuple[int, ...]:
  """The trained-on phi_j of task "eigenfunction" (none for "cifar2")."""
  if task != "eigenfunction":
    return ()
  return fields.int_set(value, label, low=1, high=num_alignment)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
  """The validated settings of one kernel-rotation run (see configs/kernel_rotation.py)."""
  common: pipeline.Common = fields.block(pipeline.Common)
  models: Tuple[pipeline.ModelSpec, ...] = fields.block(pipeline.read_models)
  data: pipeline.DataSpec = fields.block(pipeline.DataSpec, datasets=data_lib.DATASET_NAMES)
  task: str = fields.setting(_task, dataset=lambda s: s.data.dataset)
  gram: pipeline.GramSpec = fields.block(pipeline.GramSpec, key="gram")
  measure_epochs: Tuple[int, ...] = fields.setting(_measure_epochs,
                                                   last=lambda s: s.common.recipe.epochs)
  top_k: int = fields.setting(fields.at_most, maximum=lambda s: s.data.num_train,
                              bound="train_size={maximum}")
  # J: phi_1..phi_J live on the train + test samples (task "eigenfunction") or the train ones.
  num_alignment: int = fields.setting(_num_alignment, limit=lambda s: (
      s.data.num_train + s.data.num_test if s.task == "eigenfunction" else s.data.num_train))
  eigenfunction_indices: Tuple[int, ...] = fields.setting(
      _eigenfunction_indices, task=lambda s: s.task, num_alignment=lambda s: s.num_alignment)
  # Theta_t Grams for E_t(y) at every measured epoch.
  energy_concentration: bool = fields.setting(fields.flag)
  # "jacobian" (Lemma 1, App. B) | "gram".
  alignment_route: str = fields.setting(validation.check_choice, choices=ALIGNMENT_ROUTES)
  # Examples per vector-Jacobian product of ntk_tf.alignment, and the bytes of its
  # [m_chunk, P] arrays.
  alignment_batch_size: int = fields.setting(validation.check_positive_int)
  alignment_memory_budget_bytes: int = fields.setting(validation.check_positive_int)
  keep_grams: bool = fields.setting(fields.flag)
  train_seed: int = fields.setting(validation.check_non_negative_int)

  @property
  def targets(self) -> List[str]:
    if self.task == "cifar2":
      return ["cifar2"]
    return [f"phi{j}" for j in self.eigenfunction_indices]


describe_outputs = pipeline.describe_outputs  # What the binary prints.


def settings_from_config(config: Mapping[str, Any]) -> Settings:
  """Validates every field (ValueError naming it) before any folder is made or data read."""
  return fields.read(Settings, config)


def unit_mean_square(functions: np.ndarray) -> np.ndarray:
  """Each column scaled to E_x[f_c^2] = 1: f_c sqrt(n) / ||f_c||, `[n, m]` float64."""
  functions = np.asarray(functions, np.float64)
  n = functions.shape[0]
  norms = np.linalg.norm(functions, axis=0)  # [m]
  if np.any(norms == 0):
    raise ValueError(f"functions must have nonzero columns. Received zero columns at "
                     f"{np.flatnonzero(norms == 0)[:5].tolist()}")
  return functions * (math.sqrt(n) / norms)  # [n, m], mean square 1


def alignment_from_gram(gram: np.ndarray, functions: np.ndarray) -> np.ndarray:
  """Returns alpha(f_c) = f_c^T Theta f_c / n^2 for every column, f_c scaled to E_x[f_c^2] = 1.

      f_c <- f_c sqrt(n) / ||f_c||,   alpha(f_c) = f_c^T Theta f_c / n^2    (Lemma 1)

  Args:
    gram: `[n, n]` symmetric Gram Theta on the samples (array or memory map).
    functions: `[n, m]` function values on the samples (nonzero columns).
  Returns:
    `[m]` float64.
  """
  scaled = unit_mean_square(functions)  # [n, m]
  n = scaled.shape[0]
  theta_f = np.empty_like(scaled)  # [n, m]
  for r0 in range(0, n, 2048):  # Row chunks stream a memory-mapped Gram.
    theta_f[r0:r0 + 2048] = np.asarray(gram[r0:r0 + 2048], np.float64) @ scaled
  return np.einsum("nm,nm->m", scaled, theta_f) / n**2  # [m]


def alignment_from_jacobian(model: keras.Model, x: np.ndarray, functions: np.ndarray, *,
                            batch_size: int, dtype: str, memory_budget_bytes: int) -> np.ndarray:
  """Returns alpha(f_c) = ||E_x[f_c(x) grad f(x)]||^2 per column, f_c scaled to E_x[f_c^2] = 1.

      f_c <- f_c sqrt(n) / ||f_c||,   alpha(f_c) = ||(1/n) sum_i f_c(x_i) grad f(x_i)||^2

  Lemma 1 without the Gram (App. B), `ntk_tf.alignment`; equal to `alignment_from_gram`
  on the model's Gram. In a process connected to a cluster (`distributed.cluster.connect`,
  which the experiment binaries call when gram.cluster or TF_CONFIG is set), the samples
  are sharded over its workers (`distributed.sharded_passes.sharded_alignment`).

  Args:
    model: the network at the checkpoint, one logit.
    x: `[n, ...]` the samples.
    functions: `[n, m]` function values on the samples (nonzero columns).
    batch_size, dtype, memory_budget_bytes: of `ntk_tf.alignment`.
  Returns:
    `[m]` float64.
  """
  functions = unit_mean_square(functions)
  cluster = cluster_lib.connected()
  if cluster is None:
    alpha = ntk_tf.alignment(model, x, functions, batch_size=batch_size, dtype=dtype,
                             memory_budget_bytes=memory_budget_bytes)
  else:  # The experiment's cluster (gram.cluster or TF_CONFIG): x sharded over its workers.
    with cluster_runner.ClusterRunner(model, "jacobian", dtype, cluster.strategy,
                                      cluster.num_workers) as runner:
      alpha = sharded_passes.sharded_alignment(runner, x, functions, batch_size=batch_size,
                                               memory_budget_bytes=memory_budget_bytes)
  return np.asarray(alpha, np.float64).reshape(-1)  # [m]


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
  atomic.write_text(path, "\n".join(lines) + "\n")


def _read_column_csv(path: pathlib.Path) -> np.ndarray:
  return np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)[:, 1]


def _measure_epoch(settings: Settings, model, run_dir: pathlib.Path, x_train: np.ndarray,
                   y: np.ndarray, phi_basis: Optional[np.ndarray], epoch: int,
                   theta0_train: Optional[Callable[[], np.ndarray]] = None,
                   shared_alpha0: Optional[pathlib.Path] = None) -> Dict[str, Any]:
  """Energy (Gram of Theta_t), alignments (Lemma 1 or Gram; files) and the row of epoch t.

  Args:
    theta0_train: at epoch 0, a function returning Theta_0 on the training rows (a slice
      of the shared store); None computes the Gram of the checkpoint.
    shared_alpha0: at epoch 0 of an eigenfunction task, the file of alpha_0(phi_j) that
      every target of the model shares (`_shared_alpha0_path`). If present, only
      alpha_0(y) is computed here (alone, so its last bits may differ from a joint pass);
      if not, it is written after the joint computation.
  """
  model_t = pipeline.load_checkpoint(model, run_dir / "train", epoch)
  row = {"epoch": epoch, "energy_top_k": math.nan, "alpha_labels": math.nan}
  gram_dir = run_dir / f"gram_epoch_{epoch:04d}"
  gram = None
  if settings.energy_concentration or settings.alignment_route == "gram" or phi_basis is None:
    if epoch == 0 and theta0_train is not None:
      gram = theta0_train()  # [n, n], the train block of the shared Theta_0
    else:
      store = ntk_tf.GramStore(gram_dir, model_t, x_train, block_size=settings.gram.block_size,
                               dtype=settings.gram.dtype,
                               implementation=settings.gram.implementation)
      gram = store.compute(progress=settings.common.progress).matrix  # [n, n]
  if settings.energy_concentration:
    eigvals, eigvecs = ntk_tf.eigen(gram, settings.top_k)  # [K], [n, K]
    row["energy_top_k"] = float(ntk_tf.energy_concentration(eigvecs, y, settings.top_k))
    row["energy_top_k_01"] = float(ntk_tf.energy_concentration(eigvecs, (y + 1) / 2,
                                                               settings.top_k))
    _write_column_csv(run_dir / f"eigvals_epoch_{epoch:04d}.csv", "eigval", eigvals)
    row.update({"eigval_1": float(eigvals[0]), f"eigval_{settings.top_k}": float(eigvals[-1])})
  if phi_basis is None:  # cifar2: the phi_j are the eigenvectors of the train Gram at init.
    assert epoch == 0, "the init basis is computed at epoch 0"
    _, phi_basis = ntk_tf.eigen(gram, settings.num_alignment)  # [n, J]
    np.save(run_dir / "phi_init_train.npy", phi_basis)
  functions = np.concatenate([phi_basis, y[:, None]], axis=1)  # [n, J + 1]: phi_j, then y
  if settings.alignment_route == "gram":
    alpha = alignment_from_gram(gram, functions)  # [J + 1]
  else:  # Lemma 1 (App. B): no Gram.
    measure = functools.partial(
        alignment_from_jacobian, model_t, x_train, batch_size=settings.alignment_batch_size,
        dtype=settings.gram.dtype, memory_budget_bytes=settings.alignment_memory_budget_bytes)
    shared = shared_alpha0 if epoch == 0 else None
    if shared is not None and shared.is_file():  # Theta_0 and the phi_j: as for other targets.
      alpha = np.concatenate([np.load(shared), measure(y[:, None])])  # [J + 1]
    else:
      alpha = measure(functions)  # [J + 1]
      if shared is not None:
        atomic.write_numpy(shared, np.save, alpha[:-1], allow_pickle=False)
  _write_column_csv(run_dir / f"alignment_epoch_{epoch:04d}.csv", "alpha", alpha[:-1])
  row["alpha_labels"] = float(alpha[-1])
  del gram
  if not settings.keep_grams:
    shutil.rmtree(gram_dir, ignore_errors=True)
  return row


def run(settings: Settings, workdir: pathlib.Path) -> List[Dict[str, Any]]:
  """Trains every (model, target), measures Theta_t at the chosen epochs, writes tables/figures.

  Resumable: training resumes from its state, finished epochs (rows) are skipped.

  Returns:
    The rows of results.csv.
  """
  workdir, store = pipeline.prepare(workdir, settings)
  dataset = settings.data.load()
  keys = []
  for spec in settings.models:
    model = spec.build(dataset.input_shape)
    basis = None
    if settings.task == "eigenfunction":
      k = max(settings.num_alignment, max(settings.eigenfunction_indices))
      basis = spectrum_lib.spectrum(model, spec, dataset, k, settings.gram, seed=spec.seed,
                                    progress=settings.common.progress)
    for target in settings.targets:
      keys += _run_target(settings, store, workdir / spec.name / target, spec, model, dataset,
                          basis, target)
  rows = store.rows(keys)
  write_table1(settings, rows, workdir / "table1.md")
  plot_all(settings, rows, workdir)
  return rows


def _run_target(settings: Settings, store: workdir_lib.ResultStore, run_dir: pathlib.Path,
                spec: pipeline.ModelSpec, model: keras.Model, dataset: data_lib.Dataset,
                basis: Optional[spectrum_lib.Spectrum], target: str) -> List[str]:
  """Trains `model` on `target` and measures Theta_t at every measured epoch, into `store`.

  Args:
    basis: the eigenpairs of Theta_0 on train + test samples (task "eigenfunction"),
      None for task "cifar2" (its phi_j come from the train Gram at epoch 0).
  Returns:
    The keys of the run's rows: one per measured epoch, then its summary.
  """
  recipe = settings.common.recipe
  fp = workdir_lib.fingerprint({
      "model": dataclasses.asdict(spec), "target": target, "train_seed": settings.train_seed,
      "data": settings.data.identity(), "recipe": recipe.to_dict(),
      "top_k": settings.top_k, "num_alignment": settings.num_alignment,
      "gram": settings.gram.identity(), "energy": settings.energy_concentration,
      "alignment_route": settings.alignment_route})
  pipeline.fresh_dir(run_dir, fp)
  key = f"{spec.name}_{target}"
  run_keys = [f"{key}_epoch{e:04d}" for e in settings.measure_epochs] + [f"{key}_summary"]
  if all(store.get(k, fp) is not None for k in run_keys):
    logging.info("%s: finished earlier; skipped.", key)
    return run_keys
  theta0_train = None
  if basis is None:
    y_train, y_test = dataset.y_train, dataset.y_test
    phi_basis, overlap, target_j = None, math.nan, None
  else:
    task = spectrum_lib.eigenfunction_task(basis, int(target[3:]))
    y_train, y_test = task.y_train, task.y_test
    phi_basis = basis.eigvecs[basis.is_train, :settings.num_alignment]  # [n, J]
    overlap, target_j = task.overlap, task.j
    theta0_train = functools.partial(  # Theta_0 on the train rows: a slice, no new Gram
        theta0_lib.rows, model, spec, dataset.all_x(),
        np.flatnonzero(basis.is_train), settings.gram)
  y = np.asarray(y_train, np.float32)  # [n] in {-1, +1}
  result = pipeline.train_task(
      pipeline.clone_with_weights(model),
      pipeline.TaskData(dataset.x_train, y_train, dataset.x_test, y_test), recipe=recipe,
      seed=settings.train_seed, task_dir=run_dir / "train", fingerprint=fp,
      checkpoint_epochs=settings.measure_epochs, progress=settings.common.progress)
  for epoch in settings.measure_epochs:
    ekey = f"{key}_epoch{epoch:04d}"
    if store.get(ekey, fp) is not None:
      continue
    if phi_basis is None and epoch > 0:
      phi_basis = np.load(run_dir / "phi_init_train.npy")
    logging.info("%s: measuring Theta_%d.", key, epoch)
    row = _measure_epoch(settings, model, run_dir, dataset.x_train, y, phi_basis, epoch,
                         theta0_train, _shared_alpha0_path(settings, spec, run_dir.parent)
                         if basis is not None else None)
    history = result.history[epoch]
    row.update({"kind": "epoch", "model": spec.name, "target": target,
                "train_loss": history["train_loss"], "train_acc": history["train_acc"],
                "test_acc": history["test_acc"], "overlap": overlap})
    store.put(ekey, row, fp)
  names = {"model": spec.name, "target": target}
  store.put(f"{key}_summary",
            _summary_row(settings, store, run_dir, key, result, names, overlap, target_j), fp)
  return run_keys


def _shared_alpha0_path(settings: Settings, spec: pipeline.ModelSpec,
                        model_dir: pathlib.Path) -> pathlib.Path:
  """Where alpha_0(phi_j), j <= num_alignment, of `spec` is kept for all its targets.

  alpha_0 depends on theta_0, the training inputs and the phi_j only, not on the
  target, so the 1,000 columns (the costliest pass of a Fig. 7 task) are computed once
  per model. The name holds a hash of those settings, so other settings never read it.
  """
  identity = workdir_lib.fingerprint({
      "model": dataclasses.asdict(spec), "data": settings.data.identity(),
      "num_alignment": settings.num_alignment, "gram": settings.gram.identity(),
      "alignment_batch_size": settings.alignment_batch_size,
      "alignment_memory_budget_bytes": settings.alignment_memory_budget_bytes})
  return model_dir / f"alignment_theta0_basis_{identity[:16]}.npy"


def _summary_row(settings: Settings, store: workdir_lib.ResultStore, run_dir: pathlib.Path,
                 key: str, result: ntk_tf.TrainResult, names: Dict[str, str], overlap: float,
                 target_j: Optional[int]) -> Dict[str, Any]:
  """The summary row of a run (`names`: its model and target): its Table 1 entries and,
  trained on phi_j, the single-axis ratio."""
  first, last = settings.measure_epochs[0], settings.measure_epochs[-1]
  rows = {r["epoch"]: r for r in store.rows([f"{key}_epoch{e:04d}" for e in (first, last)])}
  summary = {"kind": "summary", **names, "energy_init": rows[first]["energy_top_k"],
             "energy_end": rows[last]["energy_top_k"],
             # Rows written before the {0, 1} column existed have none: NaN.
             "energy_init_01": rows[first].get("energy_top_k_01", math.nan),
             "energy_end_01": rows[last].get("energy_top_k_01", math.nan),
             "test_acc": result.final["test_acc"], "train_loss": result.final["train_loss"],
             "alpha_labels_ratio": rows[last]["alpha_labels"] / rows[first]["alpha_labels"],
             "overlap": overlap, "epoch": last}
  if target_j is not None:
    alpha_init = _read_column_csv(run_dir / f"alignment_epoch_{first:04d}.csv")
    alpha_end = _read_column_csv(run_dir / f"alignment_epoch_{last:04d}.csv")
    summary.update(single_axis(alpha_init, alpha_end, target_j))
  return summary


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
                       ("Energy conc. (init), y in {0, 1}", "energy_init_01"),
                       ("Energy conc. (end), y in {0, 1}", "energy_end_01"),
                       ("Test accuracy", "test_acc")):
    values = [r.get(field, math.nan) for r in summaries]
    lines.append(f"| {label} | " + " | ".join(
        "n/a" if v is None or math.isnan(v) else f"{100 * v:.1f}%" for v in values) + " |")
  return "\n".join(lines) + "\n"


def write_table1(settings: Settings, rows: List[Dict[str, Any]], path: pathlib.Path) -> None:
  parts = [f"# Table 1 layout ({settings.common.variant} config)\n",
           f"Energy concentration on the top K = {settings.top_k} eigenvectors of the Gram of "
           f"Theta_t on {settings.data.train_size or 'all'} training samples, at init (epoch 0) "
           f"and at the end (epoch {settings.measure_epochs[-1]}); test accuracy at the end.\n"]
  if not settings.energy_concentration:
    parts.append("\nNot measured: config.energy_concentration is False.\n")
  for target in settings.targets if settings.energy_concentration else ():
    table = table1_markdown(rows, target)
    if table:
      parts.append(f"\n## Target: {target}\n\n{table}")
  atomic.write_text(path, "\n".join(parts))


def plot_all(settings: Settings, rows: List[Dict[str, Any]], workdir: pathlib.Path) -> None:
  """energy_concentration.png (Fig. 6) and alignment_<model>_<target>.png (Figs. 7, 15, 16)."""
  epoch_rows = [r for r in rows if r.get("kind") == "epoch"]
  curves = {f"{spec.name} / {target}": [(r["epoch"], r["energy_top_k"]) for r in epoch_rows
                                        if r["model"] == spec.name and r["target"] == target]
            for spec in settings.models for target in settings.targets}
  if settings.energy_concentration:
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
