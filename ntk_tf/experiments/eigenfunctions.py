"""Learning NTK eigenfunctions (paper Sec. 3.1; Figs. 2, 3, 11, 12, 13, 14).

For each model (MLP, LeNet, ResNet18) at its seeded initialization theta0:

  1. Theta0 = J(X) J(X)^T, the NTK Gram on X = train and test samples together
     (App. B), computed block by block into a resumable `GramStore`;
  2. its top-k eigenpairs Theta0 phi_j = lambda_j phi_j (k = 1000 in the paper),
     phi_j a unit column of `[N, k]`, lambda_1 >= lambda_2 >= ...;
  3. for each index j, the binary task y = sign(phi_j) on the same samples,
     keeping the dataset's split: train rows for training, test rows for testing;
  4. the network and its linearization (Eq. 1), trained from the same theta0
     with the paper recipe (SGD, App. A; Adam, App. E.1), and their test
     accuracy, iterations to training loss 0.01, l2 and cosine distance of
     theta from theta0 (Fig. 3), with the inner product <sign(phi_j)/sqrt(N), phi_j>
     of the binarized and real eigenvector (App. B: about 0.78);
  5. as the reference line of Fig. 2, the network trained on the semantic
     binary task of the same samples (CIFAR2 / MNIST2: classes 0-4 vs 5-9).

Workdir layout (every step resumable; a rerun skips what is done):
  config.json                      the config of the run
  gram/<model>-<fp>/               the GramStore of Theta0 (gram.npy + manifest)
  eigen/<model>-<fp>/              eigvals.npy [k], eigvecs.npy [N, k], meta.json
  train/<task>/                    per-task metrics.csv (per epoch) and TensorBoard logs
  results/<task>.json              one finished task each (with its per-epoch history)
  results.csv, results.json        the table of this config's tasks
  fig2_test_accuracy.png           test accuracy vs j, network and linearized, one panel per model
  fig3_training_metrics.png        iterations to loss 0.01, l2 and cosine distance vs j

Task keys: `<model>_phi<j:04d>_<kind>` and `<model>_<baseline>_<kind>`
(baseline = "cifar2" or "mnist2"), kind = "network" | "linearized".
"""

import json
import math
import pathlib
from typing import Any, Dict, List, Mapping, Tuple

from absl import logging
import numpy as np

from ntk_tf import data as data_lib
from ntk_tf import gram as gram_lib
from ntk_tf import models
from ntk_tf import recipe as recipe_lib
from ntk_tf.data import sources
from ntk_tf.eigen import METHODS as EIGEN_METHODS
from ntk_tf.eigen import eigen
from ntk_tf.experiments import common
from ntk_tf.experiments import workdir as workdir_lib
from ntk_tf.gram_store import GramStore
from ntk_tf.tasks import eigenfunction_labels

DATASETS = ("cifar10", "mnist")
BASELINE_OF = {"cifar10": "cifar2", "mnist": "mnist2"}
FIG2 = "fig2_test_accuracy.png"
FIG3 = "fig3_training_metrics.png"
TABLE_FIELDS = ("task", "model", "kind", "target", "index", "eigenvalue", "inner_product",
                "positive_fraction", "num_train", "num_test", "test_acc", "train_acc",
                "train_loss", "steps_to_loss", "l2_distance", "cosine_distance", "epochs",
                "optimizer", "seconds")


def _split_sizes(config: Mapping[str, Any]) -> Tuple[int, int]:
  """(N_train, N_test) the config selects, known before loading any data."""
  _, _, full_train, full_test = sources.RAW_SPECS[config["dataset"]]
  train = config.get("train_size") or full_train
  test = config.get("test_size") or full_test
  return int(train), int(test)


def validate_config(config: Mapping[str, Any]) -> None:
  """Raises ValueError naming the first bad value; runs before any heavy work."""
  names = common.as_name_list(config["models"], "models")
  common.check_names(names, models.MODEL_NAMES, "models")
  common.check_model_kwargs(config)
  if config["dataset"] not in DATASETS:
    raise ValueError(f"dataset must be one of {DATASETS}. Received: dataset={config['dataset']!r}")
  _, _, full_train, full_test = sources.RAW_SPECS[config["dataset"]]
  common.check_optional_size(config.get("train_size"), "train_size", full_train)
  common.check_optional_size(config.get("test_size"), "test_size", full_test)
  n_train, n_test = _split_sizes(config)
  n = n_train + n_test
  k = config["num_eigenvectors"]
  if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
    raise ValueError(f"num_eigenvectors must be an int in [1, N = {n}] (N = train + test "
                     f"samples of the Gram). Received: num_eigenvectors={k!r}")
  indices = common.as_int_list(config["indices"], "indices")
  too_large = [j for j in indices if j > k]
  if too_large:
    raise ValueError(f"Eigenfunction indices must be <= num_eigenvectors={k} (1-based). "
                     f"Received: indices={indices}")
  kinds = common.as_name_list(config["kinds"], "kinds")
  common.check_names(kinds, common.KINDS, "kinds")
  common.make_recipe(config, recipe_lib.PAPER_SGD)  # Validates optimizer and overrides.
  if config["eigen_method"] not in EIGEN_METHODS:
    raise ValueError(f"eigen_method must be one of {EIGEN_METHODS}. "
                     f"Received: eigen_method={config['eigen_method']!r}")
  gram = config["gram"]
  try:
    gram_lib.resolve_implementation(gram["implementation"])
  except NotImplementedError as e:
    raise ValueError(str(e)) from None
  if gram["dtype"] not in ("float32", "float64"):
    raise ValueError(f"gram.dtype must be 'float32' or 'float64'. Received: gram.dtype={gram['dtype']!r}")
  if isinstance(gram["block_size"], bool) or not isinstance(gram["block_size"], int) or gram["block_size"] < 1:
    raise ValueError(f"gram.block_size must be a positive int. Received: gram.block_size={gram['block_size']!r}")
  baseline_kinds = common.as_name_list(config["baseline_kinds"], "baseline_kinds")
  common.check_names(baseline_kinds, common.KINDS, "baseline_kinds")
  for name in ("model_seed", "data_seed", "train_seed"):
    value = config[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ValueError(f"{name} must be a non-negative int. Received: {name}={value!r}")


def _spectrum(config: Mapping[str, Any], name: str, model, x_all: np.ndarray,
              work: pathlib.Path, gram_settings: Mapping[str, Any]
              ) -> Tuple[np.ndarray, np.ndarray, str]:
  """(eigvals [k], eigvecs [N, k], fingerprint) of Theta0 on `x_all`, cached under `work`.

  The Gram goes to `work/gram/<model>-<fp>` (a resumable GramStore, fp = the
  fingerprint of the settings that determine Theta0), the eigenpairs to
  `work/eigen/<model>-<fp'>` (fp' adds k and the eigen method).
  """
  gram_fp = workdir_lib.fingerprint(gram_settings)
  eigen_settings = {**gram_settings, "num_eigenvectors": config["num_eigenvectors"],
                    "eigen_method": config["eigen_method"]}
  fp = workdir_lib.fingerprint(eigen_settings)
  eigen_dir = work / "eigen" / f"{name}-{fp}"
  meta_path = eigen_dir / "meta.json"
  if meta_path.exists() and json.loads(meta_path.read_text()).get("fingerprint") == fp:
    logging.info("%s: reusing the eigenvectors in %s", name, eigen_dir)
    return np.load(eigen_dir / "eigvals.npy"), np.load(eigen_dir / "eigvecs.npy"), fp
  gram = config["gram"]
  store = GramStore(work / "gram" / f"{name}-{gram_fp}", model, x_all,
                    block_size=gram["block_size"], dtype=gram["dtype"],
                    implementation=gram["implementation"])
  logging.info("%s: NTK Gram on %d samples, %d/%d blocks done (%s)", name, len(x_all),
               store.num_done, store.num_blocks, store.path)
  store.compute(progress=True)  # One log line per 30 s: blocks done, rate, ETA.
  logging.info("%s: top %d eigenpairs (%s)", name, config["num_eigenvectors"],
               config["eigen_method"])
  eigvals, eigvecs = eigen(store, config["num_eigenvectors"],
                                     method=config["eigen_method"], seed=config["model_seed"])
  eigen_dir.mkdir(parents=True, exist_ok=True)
  np.save(eigen_dir / "eigvals.npy", eigvals)
  np.save(eigen_dir / "eigvecs.npy", eigvecs)
  workdir_lib.atomic_write_json(meta_path, {"fingerprint": fp, "settings": eigen_settings,
                                            "gram": str(store.path)})
  return eigvals, eigvecs, fp


def task_key(model: str, target: str, kind: str) -> str:
  return f"{model}_{target}_{kind}"


def run(config: Mapping[str, Any], workdir: pathlib.Path) -> Dict[str, Any]:
  """Runs the whole experiment in `workdir` (resumable) and returns the rows and output paths.

  Args:
    config: see `configs/eigenfunctions.py`.
    workdir: output folder (created).
  Returns:
    {"rows": list of task rows (keys `TABLE_FIELDS`), "csv": path, "json": path,
     "figures": [fig2 path, fig3 path]}.
  """
  validate_config(config)
  work = workdir_lib.prepare(workdir, config)
  names = common.as_name_list(config["models"], "models")
  kinds = common.as_name_list(config["kinds"], "kinds")
  indices = common.as_int_list(config["indices"], "indices")
  recipe = common.make_recipe(config, recipe_lib.PAPER_SGD)
  dataset = data_lib.load(config["dataset"], data_dir=config.get("data_dir"),
                          train_size=config.get("train_size"), test_size=config.get("test_size"),
                          seed=config["data_seed"], allow_download=config["allow_download"])
  x_all = dataset.all_x()  # [N, H, W, C], train rows first (App. B)
  is_train = dataset.is_train  # [N]
  baseline = BASELINE_OF[config["dataset"]]
  baseline_y01 = data_lib.to_01(data_lib.binarize(dataset.all_y()))  # [N], classes 0-4 -> 1
  store = workdir_lib.ResultStore(work)
  keys = []
  data_settings = {"dataset": config["dataset"], "train_size": dataset.num_train,
                   "test_size": dataset.num_test, "data_seed": config["data_seed"]}
  for name in names:
    model_settings = {"model": name, "activation": config["activation"],
                      "model_kwargs": common.model_kwargs(config, name),
                      "model_seed": config["model_seed"]}
    gram_settings = {**data_settings, **model_settings, "gram": common.as_dict(config["gram"])}
    theta0 = common.build_model(config, name, dataset.input_shape, config["model_seed"])
    eigvals, eigvecs, spectrum_fp = _spectrum(config, name, theta0, x_all, work, gram_settings)
    targets = [(f"phi{j:04d}", j) for j in indices]
    if config["baseline"]:
      targets.append((baseline, None))
    for target, j in targets:
      if j is None:
        labels01, inner, eigval = baseline_y01, math.nan, math.nan
        target_kinds = common.as_name_list(config["baseline_kinds"], "baseline_kinds")
      else:
        labels01, inner = eigenfunction_labels(eigvecs, j)
        eigval = float(eigvals[j - 1])
        target_kinds = kinds
      for kind in target_kinds:
        key = task_key(name, target, kind)
        keys.append(key)
        settings = {**model_settings, "spectrum": spectrum_fp, "target": target, "kind": kind,
                    "recipe": recipe.to_dict(), "train_seed": config["train_seed"]}
        fp = workdir_lib.fingerprint(settings)
        if store.get(key, fp) is not None:
          logging.info("%s: done already, skipping.", key)
          continue
        logging.info("%s: training (%d epochs).", key, recipe.epochs)
        network = common.build_model(config, name, dataset.input_shape, config["model_seed"])
        metrics = common.train_task(
            network, kind, x_all[is_train], labels01[is_train], x_all[~is_train],
            labels01[~is_train], recipe=recipe, seed=config["train_seed"],
            task_dir=work / "train" / key, fingerprint=fp, progress=config["progress"])
        row = {"model": name, "kind": kind, "target": target, "index": j,
               "eigenvalue": eigval, "inner_product": inner,
               "positive_fraction": float(np.mean(labels01[is_train])),
               "num_train": dataset.num_train, "num_test": dataset.num_test,
               "optimizer": recipe.optimizer, **metrics}
        store.put(key, row, fp)
        logging.info("%s: test acc %.4f, steps to loss %s: %s, l2 %.4g, cos %.4g", key,
                     row["test_acc"], recipe.loss_threshold, row["steps_to_loss"],
                     row["l2_distance"], row["cosine_distance"])
  rows = [{f: r.get(f) for f in TABLE_FIELDS} for r in store.rows(keys)]
  csv_path, json_path = write_table(work, rows)
  figures = [plot_test_accuracy(rows, work / FIG2, baseline),
             plot_training_metrics(rows, work / FIG3)]
  return {"rows": rows, "csv": csv_path, "json": json_path, "figures": figures}


def write_table(work: pathlib.Path, rows: List[Dict[str, Any]]) -> Tuple[pathlib.Path, pathlib.Path]:
  """Writes results.csv and results.json holding exactly `rows` (this config's tasks)."""
  import pandas as pd  # Heavy import; only where tables are written.
  csv_path, json_path = work / "results.csv", work / "results.json"
  table = pd.DataFrame(rows, columns=TABLE_FIELDS)
  table["index"] = table["index"].astype("Int64")  # j, empty for the baseline tasks
  table["steps_to_loss"] = table["steps_to_loss"].astype("Int64")  # empty: never reached
  workdir_lib.atomic_write_text(csv_path, table.to_csv(index=False))
  workdir_lib.atomic_write_json(json_path, rows)
  return csv_path, json_path


# ----------------------------------------------------------------------------
# Figures.

def _pyplot():
  import matplotlib  # Heavy import; only where figures are drawn.
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


_STYLE = {"network": dict(color="tab:blue", marker="o", label="Neural network"),
          "linearized": dict(color="tab:orange", marker="s", label="Linearized model")}


def _eigen_rows(rows, model, kind):
  picked = sorted((r for r in rows if r["model"] == model and r["kind"] == kind
                   and r["index"] is not None), key=lambda r: r["index"])
  return picked


def plot_test_accuracy(rows: List[Dict[str, Any]], path: pathlib.Path,
                       baseline: str = "cifar2") -> pathlib.Path:
  """Fig. 2: test accuracy vs eigenfunction index j, network and linearized, a panel per model."""
  plt = _pyplot()
  model_names = list(dict.fromkeys(r["model"] for r in rows))
  fig, axes = plt.subplots(1, len(model_names), figsize=(4 * len(model_names), 3.2),
                           squeeze=False)
  for ax, name in zip(axes[0], model_names):
    for kind, style in _STYLE.items():
      picked = _eigen_rows(rows, name, kind)
      if picked:
        ax.plot([r["index"] for r in picked], [r["test_acc"] for r in picked], **style)
    for r in rows:
      if r["model"] == name and r["index"] is None:
        ax.axhline(r["test_acc"], color=_STYLE[r["kind"]]["color"], linestyle="--",
                   label=f"{_STYLE[r['kind']]['label']} on {baseline.upper()}")
    ax.set_xscale("log")
    ax.set_xlabel("Eigenfunction index j")
    ax.set_ylabel("Test accuracy")
    ax.set_title(name)
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def plot_training_metrics(rows: List[Dict[str, Any]], path: pathlib.Path) -> pathlib.Path:
  """Fig. 3 (13, 14): iterations to training loss 0.01, l2 and cosine distance vs j; a row per model.

  Tasks that never reach the loss threshold are drawn as hollow markers at the
  top of the first panel (the iteration count is then unknown).
  """
  plt = _pyplot()
  model_names = list(dict.fromkeys(r["model"] for r in rows))
  fig, axes = plt.subplots(len(model_names), 3, figsize=(11, 3 * len(model_names)), squeeze=False)
  columns = (("steps_to_loss", "Iterations to loss 0.01"),
             ("l2_distance", "l2 distance to theta0"),
             ("cosine_distance", "Cosine distance to theta0"))
  for row_axes, name in zip(axes, model_names):
    for ax, (field, label) in zip(row_axes, columns):
      reached = [common.nan_if_none(r[field]) for r in rows
                 if r["model"] == name and r["index"] is not None]
      top = 1.05 * np.nanmax(reached) if np.isfinite(reached).any() else 1.0
      for kind, style in _STYLE.items():
        picked = _eigen_rows(rows, name, kind)
        if not picked:
          continue
        xs = np.array([r["index"] for r in picked], float)
        ys = np.array([common.nan_if_none(r[field]) for r in picked], float)
        ax.plot(xs, ys, **style)
        missing = ~np.isfinite(ys)
        if field == "steps_to_loss" and missing.any():
          ax.plot(xs[missing], np.full(missing.sum(), top), linestyle="none",
                  marker=style["marker"], markerfacecolor="none", color=style["color"],
                  label=f"{style['label']}: not reached")
      ax.set_xscale("log")
      ax.set_xlabel("Eigenfunction index j")
      ax.set_ylabel(label)
      ax.set_title(name)
      ax.grid(alpha=0.3)
    row_axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
