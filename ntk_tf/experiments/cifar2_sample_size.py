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
  config.json, settings.json, results/<task>.json, results.csv, results.json, summary.csv,
  train/<task>/metrics.csv, fig5_sample_size.png.
Task keys: `<model>_n<n:06d>_s<seed>_<kind>`.
"""

import dataclasses
import pathlib
from typing import Any, Dict, List, Mapping, Tuple

from absl import logging
import numpy as np

from ntk_tf import atomic
from ntk_tf.experiments import fields
from ntk_tf.experiments import pipeline
from ntk_tf.experiments import plots
from ntk_tf.experiments import workdir as workdir_lib
from ntk_tf.linearize import linearize

DATASETS = ("cifar2", "mnist2")
FIG5 = "fig5_sample_size.png"
TABLE_FIELDS = ("task", "model", "kind", "train_size", "seed", "num_test", "test_acc",
                "l2_distance", "cosine_distance", "saturation_epoch", "final_test_acc",
                "final_l2_distance", "final_train_acc", "final_train_loss", "steps_to_loss",
                "epochs", "optimizer", "seconds")
SUMMARY_METRICS = ("test_acc", "l2_distance", "final_test_acc", "final_l2_distance",
                   "saturation_epoch")


def _tolerance(value: Any, label: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
    raise ValueError(f"{label} must be in [0, 1]. Received: saturation_tolerance={value!r}")
  return float(value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
  """The validated settings of one sample-size study (see configs/cifar2_sample_size.py).

  `data.train_size` is None: each run subsamples `train_sizes[i]` with its own seed.
  Each model's `seed` is replaced by the run's seed.
  """
  common: pipeline.Common = fields.block(pipeline.Common)
  models: Tuple[pipeline.ModelSpec, ...] = fields.block(pipeline.read_models)
  data: pipeline.DataSpec = fields.block(pipeline.DataSpec, datasets=DATASETS)
  train_sizes: Tuple[int, ...] = fields.setting(fields.int_set, low=1,
                                                high=lambda s: s.data.full_sizes[0])
  seeds: Tuple[int, ...] = fields.setting(fields.int_set, low=0)
  kinds: Tuple[str, ...] = fields.setting(fields.names, allowed=pipeline.KINDS)
  saturation_tolerance: float = fields.setting(_tolerance)


def settings_from_config(config: Mapping[str, Any]) -> Settings:
  """Validates every field (ValueError naming it) before any folder is made or data read."""
  return fields.read(Settings, config)


def describe_outputs(workdir: pathlib.Path, results: Dict[str, Any]) -> List[str]:
  """What the binary prints: the tables and figures `run` wrote."""
  del workdir  # The paths are in `results`.
  return ([f"Results ({len(results['rows'])} runs): {results['csv']} and {results['json']}",
           f"Mean and spread over seeds: {results['summary_csv']}"]
          + [f"Figure: {figure}" for figure in results["figures"]])


def saturation_epoch(test_acc: List[float], tolerance: float) -> int:
  """The first epoch from which test accuracy stays within `tolerance` of its final value.

      e* = min { e : |acc_t - acc_T| <= tolerance for all t >= e }

  Args:
    test_acc: `[T + 1]` test accuracy per epoch, index 0 = initialization.
    tolerance: e.g. 0.01 (one percentage point).
  Returns:
    e* in [0, T].
  Paper: Fig. 5 reports accuracy and distance "when the test accuracy has saturated".
  """
  acc = np.asarray(test_acc, np.float64)  # [T + 1]
  if acc.ndim != 1 or acc.size == 0 or not np.all(np.isfinite(acc)):
    raise ValueError(f"test_acc must be a non-empty finite sequence. Received: {test_acc!r}")
  outside = np.abs(acc - acc[-1]) > tolerance  # [T + 1]
  return int(np.flatnonzero(outside)[-1] + 1) if outside.any() else 0


def task_key(model: str, train_size: int, seed: int, kind: str) -> str:
  return f"{model}_n{train_size:06d}_s{seed}_{kind}"


def run(settings: Settings, workdir: pathlib.Path) -> Dict[str, Any]:
  """Runs the sample-size study in `workdir` (resumable) and returns rows and output paths.

  Returns:
    {"rows": the per-run rows (keys `TABLE_FIELDS`), "summary": the per
     (model, kind, train_size) rows, "csv", "json", "summary_csv", "figures"}.
  """
  work, store = pipeline.prepare(workdir, settings)
  recipe = settings.common.recipe
  tol = settings.saturation_tolerance
  keys = []
  for size in settings.train_sizes:
    for seed in settings.seeds:
      pending = []
      for spec in settings.models:
        for kind in settings.kinds:
          key = task_key(spec.name, size, seed, kind)
          keys.append(key)
          fp = workdir_lib.fingerprint({
              "model": dataclasses.asdict(spec), "kind": kind,
              "data": settings.data.identity(), "train_size": size, "seed": seed,
              "recipe": recipe.to_dict(), "saturation_tolerance": tol})
          if store.get(key, fp) is None:
            pending.append((key, spec, kind, fp))
          else:
            logging.info("%s: done already, skipping.", key)
      if not pending:
        continue
      dataset = settings.data.load(train_size=size, seed=seed)
      data = pipeline.TaskData(dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test)
      for key, spec, kind, fp in pending:
        timer = pipeline.Timer()
        network = spec.build(dataset.input_shape, seed=seed)
        model = network if kind == "network" else linearize(network)
        result = pipeline.train_task(model, data, recipe=recipe, seed=seed,
                                     task_dir=work / "train" / key, fingerprint=fp,
                                     progress=settings.common.progress)
        history = result.history
        final = pipeline.summary(result)
        e_star = saturation_epoch([h["test_acc"] for h in history], tol)
        at = history[e_star]
        row = {"model": spec.name, "kind": kind, "train_size": size, "seed": seed,
               "num_test": dataset.num_test, "test_acc": at["test_acc"],
               "l2_distance": at["l2_distance"], "cosine_distance": at["cosine_distance"],
               "saturation_epoch": e_star, "final_test_acc": final["test_acc"],
               "final_l2_distance": final["l2_distance"],
               "final_train_acc": final["train_acc"], "final_train_loss": final["train_loss"],
               "steps_to_loss": final["steps_to_loss"], "epochs": recipe.epochs,
               "optimizer": recipe.optimizer, "seconds": timer.seconds, "history": history}
        store.put(key, row, fp)
        logging.info("%s: saturated at epoch %d: test acc %.4f, l2 %.4g (final %.4f, %.4g)",
                     key, e_star, row["test_acc"], row["l2_distance"], row["final_test_acc"],
                     row["final_l2_distance"])
  rows = [{f: r.get(f) for f in TABLE_FIELDS} for r in store.rows(keys)]
  summary = summarize(rows)
  paths = {"csv": pipeline.write_table(work / "results.csv", rows, TABLE_FIELDS),
           "json": atomic.write_json(work / "results.json", rows),
           "summary_csv": pipeline.write_table(work / "summary.csv", summary)}
  figure = plots.plot_sample_size(summary, work / FIG5, settings.data.dataset)
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
