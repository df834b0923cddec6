"""The non-linear advantage depends on the sample size (paper Sec. 4.1, Fig. 5).

CIFAR2 (CIFAR-10 classes 0-4 -> label 1, classes 5-9 -> label 0) with training
sets of n samples, n from a list (stratified subsamples of the train split,
seeded). For every (n, seed, model) the network and its linearization (Eq. 1)
are trained from the same seeded theta0 with the CIFAR2 recipe (App. A: SGD,
200 epochs) and evaluated on the test split every epoch. Per run:

  e*              the saturation epoch: the first epoch from which the test
                  accuracy stays within `saturation_tolerance` of its final value,
                  e* = min { e : |acc_t - acc_T| <= tol for all t >= e };
  test_acc        the test accuracy at e* (Fig. 5, top);
  l2_distance     ||theta_{e*} - theta0||_2 at e* (Fig. 5, bottom);
  final_*         the same after the last epoch T.

The seed s fixes the subsample, theta0 and the minibatch order of one run.
summary.csv holds mean, standard deviation and count over seeds per
(model, kind, n).

Workdir layout (resumable per (n, seed, model, kind)):
  config.json, results/<task>.json, results.csv, results.json, summary.csv,
  train/<task>/metrics.csv, fig5_sample_size.png.
Task keys: `<model>_n<n:06d>_s<seed>_<kind>`.
"""

import pathlib
from typing import Any, Dict, List, Mapping, Tuple

from absl import logging
import numpy as np

from ntk_tf import data as data_lib
from ntk_tf import models
from ntk_tf import recipe as recipe_lib
from ntk_tf.data import sources
from ntk_tf.experiments import common
from ntk_tf.experiments import workdir as workdir_lib

DATASETS = ("cifar2", "mnist2")
_RAW_OF = {"cifar2": "cifar10", "mnist2": "mnist"}
FIG5 = "fig5_sample_size.png"
TABLE_FIELDS = ("task", "model", "kind", "train_size", "seed", "num_test", "test_acc",
                "l2_distance", "cosine_distance", "saturation_epoch", "final_test_acc",
                "final_l2_distance", "final_train_acc", "final_train_loss", "steps_to_loss",
                "epochs", "optimizer", "seconds")
SUMMARY_METRICS = ("test_acc", "l2_distance", "final_test_acc", "final_l2_distance",
                   "saturation_epoch")


def validate_config(config: Mapping[str, Any]) -> None:
  """Raises ValueError naming the first bad value; runs before any heavy work."""
  names = common.as_name_list(config["models"], "models")
  common.check_names(names, models.MODEL_NAMES, "models")
  common.check_model_kwargs(config)
  if config["dataset"] not in DATASETS:
    raise ValueError(f"dataset must be one of {DATASETS}. Received: dataset={config['dataset']!r}")
  _, _, full_train, full_test = sources.RAW_SPECS[_RAW_OF[config["dataset"]]]
  sizes = common.as_int_list(config["train_sizes"], "train_sizes")
  too_large = [n for n in sizes if n > full_train]
  if too_large:
    raise ValueError(f"train_sizes must be <= {full_train} (the {config['dataset']} train split). "
                     f"Received: train_sizes={sizes}")
  common.as_int_list(config["seeds"], "seeds", minimum=0)
  common.check_optional_size(config.get("test_size"), "test_size", full_test)
  kinds = common.as_name_list(config["kinds"], "kinds")
  common.check_names(kinds, common.KINDS, "kinds")
  common.make_recipe(config, recipe_lib.PAPER_CIFAR2)  # Validates optimizer and overrides.
  tol = config["saturation_tolerance"]
  if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol <= 1:
    raise ValueError(f"saturation_tolerance must be in [0, 1]. Received: saturation_tolerance={tol!r}")


def task_key(model: str, train_size: int, seed: int, kind: str) -> str:
  return f"{model}_n{train_size:06d}_s{seed}_{kind}"


def run(config: Mapping[str, Any], workdir: pathlib.Path) -> Dict[str, Any]:
  """Runs the sample-size study in `workdir` (resumable) and returns rows and output paths.

  Args:
    config: see `configs/cifar2_sample_size.py`.
    workdir: output folder (created).
  Returns:
    {"rows": the per-run rows (keys `TABLE_FIELDS`), "summary": the per
     (model, kind, train_size) rows, "csv", "json", "summary_csv", "figures"}.
  """
  validate_config(config)
  work = workdir_lib.prepare(workdir, config)
  names = common.as_name_list(config["models"], "models")
  kinds = common.as_name_list(config["kinds"], "kinds")
  sizes = common.as_int_list(config["train_sizes"], "train_sizes")
  seeds = common.as_int_list(config["seeds"], "seeds", minimum=0)
  recipe = common.make_recipe(config, recipe_lib.PAPER_CIFAR2)
  store = workdir_lib.ResultStore(work)
  keys = []
  for size in sizes:
    for seed in seeds:
      pending = []
      for name in names:
        for kind in kinds:
          key = task_key(name, size, seed, kind)
          keys.append(key)
          settings = {"model": name, "activation": config["activation"],
                      "model_kwargs": common.model_kwargs(config, name), "kind": kind,
                      "dataset": config["dataset"], "train_size": size, "seed": seed,
                      "test_size": config.get("test_size"), "recipe": recipe.to_dict(),
                      "saturation_tolerance": config["saturation_tolerance"]}
          fp = workdir_lib.fingerprint(settings)
          if store.get(key, fp) is None:
            pending.append((key, name, kind, fp))
          else:
            logging.info("%s: done already, skipping.", key)
      if not pending:
        continue
      dataset = data_lib.load(config["dataset"], data_dir=config.get("data_dir"),
                              train_size=size, test_size=config.get("test_size"), seed=seed,
                              allow_download=config["allow_download"])
      y_train01 = data_lib.to_01(dataset.y_train)  # [n]
      y_test01 = data_lib.to_01(dataset.y_test)  # [M]
      for key, name, kind, fp in pending:
        logging.info("%s: training (%d epochs on %d samples).", key, recipe.epochs, size)
        network = common.build_model(config, name, dataset.input_shape, seed)
        metrics = common.train_task(network, kind, dataset.x_train, y_train01, dataset.x_test,
                                    y_test01, recipe=recipe, seed=seed,
                                    task_dir=work / "train" / key, fingerprint=fp,
                                    progress=config["progress"])
        history = metrics["history"]
        e_star = common.saturation_epoch([h["test_acc"] for h in history],
                                         config["saturation_tolerance"])
        at = history[e_star]
        row = {"model": name, "kind": kind, "train_size": size, "seed": seed,
               "num_test": dataset.num_test, "test_acc": at["test_acc"],
               "l2_distance": at["l2_distance"], "cosine_distance": at["cosine_distance"],
               "saturation_epoch": e_star, "final_test_acc": metrics["test_acc"],
               "final_l2_distance": metrics["l2_distance"],
               "final_train_acc": metrics["train_acc"], "final_train_loss": metrics["train_loss"],
               "steps_to_loss": metrics["steps_to_loss"], "epochs": recipe.epochs,
               "optimizer": recipe.optimizer, "seconds": metrics["seconds"],
               "history": history}
        store.put(key, row, fp)
        logging.info("%s: saturated at epoch %d: test acc %.4f, l2 %.4g (final %.4f, %.4g)",
                     key, e_star, row["test_acc"], row["l2_distance"], row["final_test_acc"],
                     row["final_l2_distance"])
  rows = [{f: r.get(f) for f in TABLE_FIELDS} for r in store.rows(keys)]
  summary = summarize(rows)
  paths = write_tables(work, rows, summary)
  figure = plot_sample_size(summary, work / FIG5, config["dataset"])
  return {"rows": rows, "summary": summary, **paths, "figures": [figure]}


def summarize(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """Mean, standard deviation (ddof=0) and count over seeds per (model, kind, train_size)."""
  groups: Dict[Tuple[str, str, int], List[Dict[str, Any]]] = {}
  for r in rows:
    groups.setdefault((r["model"], r["kind"], r["train_size"]), []).append(r)
  summary = []
  for (name, kind, size), members in groups.items():
    entry = {"model": name, "kind": kind, "train_size": size, "num_seeds": len(members)}
    for metric in SUMMARY_METRICS:
      values = np.array([m[metric] for m in members], np.float64)  # [S]
      entry[f"{metric}_mean"] = float(values.mean())
      entry[f"{metric}_std"] = float(values.std())
    summary.append(entry)
  return sorted(summary, key=lambda e: (e["model"], e["kind"], e["train_size"]))


def write_tables(work: pathlib.Path, rows, summary) -> Dict[str, pathlib.Path]:
  import pandas as pd  # Heavy import; only where tables are written.
  paths = {"csv": work / "results.csv", "json": work / "results.json",
           "summary_csv": work / "summary.csv"}
  workdir_lib.atomic_write_text(paths["csv"], pd.DataFrame(rows, columns=TABLE_FIELDS).to_csv(index=False))
  workdir_lib.atomic_write_json(paths["json"], rows)
  workdir_lib.atomic_write_text(paths["summary_csv"], pd.DataFrame(summary).to_csv(index=False))
  return paths


_STYLE = {"network": dict(color="tab:blue", marker="o", label="Neural network"),
          "linearized": dict(color="tab:orange", marker="s", label="Linearized model")}


def plot_sample_size(summary: List[Dict[str, Any]], path: pathlib.Path,
                     dataset: str = "cifar2") -> pathlib.Path:
  """Fig. 5: test accuracy (top) and l2 distance to theta0 (bottom) vs n; a column per model.

  Lines are means over seeds, shaded bands +- one standard deviation.
  """
  import matplotlib  # Heavy import; only where figures are drawn.
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  model_names = list(dict.fromkeys(e["model"] for e in summary))
  fig, axes = plt.subplots(2, len(model_names), figsize=(4 * len(model_names), 6), squeeze=False)
  for col, name in enumerate(model_names):
    for row, (metric, label) in enumerate((("test_acc", "Test accuracy"),
                                           ("l2_distance", "l2 distance to theta0"))):
      ax = axes[row][col]
      for kind, style in _STYLE.items():
        picked = [e for e in summary if e["model"] == name and e["kind"] == kind]
        if not picked:
          continue
        n = np.array([e["train_size"] for e in picked], float)
        mean = np.array([e[f"{metric}_mean"] for e in picked])
        std = np.array([e[f"{metric}_std"] for e in picked])
        ax.plot(n, mean, **style)
        ax.fill_between(n, mean - std, mean + std, color=style["color"], alpha=0.2)
      ax.set_xscale("log")
      ax.set_xlabel("Training set size")
      ax.set_ylabel(label)
      ax.set_title(f"{name} ({dataset.upper()})")
      ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
