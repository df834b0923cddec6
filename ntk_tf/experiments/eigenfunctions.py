"""Learning NTK eigenfunctions (paper Sec. 3.1; Figs. 2, 3, 11, 12, 13, 14).

For each model (MLP, LeNet, ResNet18) at its seeded initialization theta0:

  1. Theta0 = J(X) J(X)^T on X = train and test samples together (App. B), from
     the shared Gram cache (`theta0.store`);
  2. its top-k eigenpairs Theta0 phi_j = lambda_j phi_j (k = 1000 in the paper);
  3. for each index j, the task y = sign(phi_j) on the same samples, keeping the
     dataset's split (`spectrum.eigenfunction_task`);
  4. the network and its linearization (Eq. 1), trained from the same theta0
     with the paper recipe (SGD, App. A; Adam, App. E.1): test accuracy,
     iterations to training loss 0.01, l2 and cosine distance of theta from
     theta0 (Fig. 3), and the overlap <sign(phi_j)/sqrt(N), phi_j> (App. B: ~0.78);
  5. as Fig. 2's reference line, the network trained on the semantic binary
     task of the same samples (CIFAR2 / MNIST2: classes 0-4 vs 5-9), for
     `baseline_epochs` epochs (App. A: "in the experiments involving CIFAR2, we
     train all models for 200 epochs"; None = the tasks' epochs).

With `spectrum_only`, only steps 1 and 2 run (for every model, whatever the indices):
the cache then holds what the training runs of the same settings read.

Workdir layout (every step resumable; a rerun skips what is done):
  config.json, settings.json       the config and its validated settings
  train/<task>/                    metrics.csv (per epoch), result.json, TensorBoard logs
  results/<task>.json              one finished task each (with its per-epoch history)
  results.csv, results.json        the table of this config's tasks
  fig2_test_accuracy.png           test accuracy vs j, network and linearized, a panel per model
  fig3_training_metrics.png        iterations to loss 0.01, l2 and cosine distance vs j

Task keys: `<model>_phi<j:04d>_<kind>` and `<model>_<baseline>_<kind>`
(baseline = "cifar2" or "mnist2"), kind = "network" | "linearized".
"""

import dataclasses
import math
import pathlib
from typing import Any, Dict, List, Mapping, Optional, Tuple

from absl import logging

from ntk_tf import atomic
from ntk_tf import data as data_lib
from ntk_tf import recipe as recipe_lib
from ntk_tf import validation
from ntk_tf.eigen import METHODS as EIGEN_METHODS
from ntk_tf.experiments import fields
from ntk_tf.experiments import pipeline
from ntk_tf.experiments import plots
from ntk_tf.experiments import spectrum as spectrum_lib
from ntk_tf.experiments import workdir as workdir_lib
from ntk_tf.linearize import linearize

DATASETS = ("cifar10", "mnist")
BASELINE_OF = {"cifar10": "cifar2", "mnist": "mnist2"}
FIG2 = "fig2_test_accuracy.png"
FIG3 = "fig3_training_metrics.png"
TABLE_FIELDS = ("task", "model", "kind", "target", "index", "eigenvalue", "overlap",
                "positive_fraction", "num_train", "num_test", "test_acc", "train_acc",
                "train_loss", "steps_to_loss", "l2_distance", "cosine_distance", "epochs",
                "optimizer", "seconds")


def _num_eigenvectors(k: Any, label: str, n: int) -> int:
  if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
    raise ValueError(f"{label} must be an int in [1, N = {n}] (N = train + test samples of the "
                     f"Gram). Received: num_eigenvectors={k!r}")
  return k


def _indices(value: Any, label: str, k: int, baseline: bool) -> Tuple[int, ...]:
  """The 1-based j of the sign(phi_j) tasks; none (`()`) only beside the baseline."""
  if baseline and isinstance(value, (list, tuple)) and not value:
    return ()  # Only the CIFAR2 / MNIST2 reference line: no eigenfunction task.
  if isinstance(value, (list, tuple)) and not value:
    raise ValueError(f"{label} may be empty only with baseline=True (then only the reference "
                     f"line is trained). Received: indices={value!r}, baseline=False")
  indices = fields.int_set(value, label, low=1)
  if max(indices) > k:
    raise ValueError(f"{label} must be <= num_eigenvectors={k} (1-based). "
                     f"Received: indices={list(indices)}")
  return indices


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
  """The validated settings of one eigenfunction run (see configs/eigenfunctions.py)."""
  common: pipeline.Common = fields.block(pipeline.Common)
  models: Tuple[pipeline.ModelSpec, ...] = fields.block(pipeline.read_models)
  data: pipeline.DataSpec = fields.block(pipeline.DataSpec, datasets=DATASETS)
  gram: pipeline.GramSpec = fields.block(pipeline.GramSpec, key="gram")
  num_eigenvectors: int = fields.setting(_num_eigenvectors,
                                         n=lambda s: s.data.num_train + s.data.num_test)
  eigen_method: str = fields.setting(validation.check_choice, choices=EIGEN_METHODS)
  baseline: bool = fields.setting(fields.flag)
  indices: Tuple[int, ...] = fields.setting(_indices, k=lambda s: s.num_eigenvectors,
                                            baseline=lambda s: s.baseline)
  kinds: Tuple[str, ...] = fields.setting(fields.names, allowed=pipeline.KINDS)
  baseline_kinds: Tuple[str, ...] = fields.setting(fields.names, allowed=pipeline.KINDS)
  # None: the recipe's epochs.
  baseline_epochs: Optional[int] = fields.setting(fields.optional(validation.check_positive_int))
  train_seed: int = fields.setting(validation.check_non_negative_int)
  spectrum_only: bool = fields.setting(fields.flag)

  @property
  def baseline_recipe(self) -> recipe_lib.Recipe:
    """The recipe of the CIFAR2 / MNIST2 reference line: the tasks', `baseline_epochs` epochs."""
    if self.baseline_epochs is None:
      return self.common.recipe
    return self.common.recipe.replace(epochs=self.baseline_epochs)


def settings_from_config(config: Mapping[str, Any]) -> Settings:
  """Validates every field (ValueError naming it) before any folder is made or data read."""
  return fields.read(Settings, config)


def describe_outputs(workdir: pathlib.Path, results: Mapping[str, Any]) -> List[str]:
  """What the binary prints: the rows' files, or (`spectrum_only`) where the spectra are."""
  if "spectra" in results:
    return [f"Theta_0 and its top {k} eigenpairs of {name} are in {cache}"
            for name, k, cache in results["spectra"]]
  return pipeline.describe_rows(workdir, results)


def task_key(model: str, target: str, kind: str) -> str:
  return f"{model}_{target}_{kind}"


def _spectrum(spec: pipeline.ModelSpec, dataset: data_lib.Dataset,
              settings: Settings) -> spectrum_lib.Spectrum:
  """Steps 1-2 for one model: the top-k eigenpairs of its Theta_0 (cached)."""
  return spectrum_lib.spectrum(spec.build(dataset.input_shape), spec, dataset,
                               settings.num_eigenvectors, settings.gram,
                               method=settings.eigen_method, seed=spec.seed, progress=True)


def run(settings: Settings, workdir: pathlib.Path) -> Dict[str, Any]:
  """Runs the whole experiment in `workdir` (resumable) and returns the rows and output paths.

  Returns:
    {"rows": list of task rows (keys `TABLE_FIELDS`), "csv": path, "json": path,
     "figures": [fig2 path, fig3 path]}; with `spectrum_only`,
    {"spectra": [(model name, k, cache folder), ...]}.
  """
  work, store = pipeline.prepare(workdir, settings)
  recipe = settings.common.recipe
  dataset = settings.data.load()
  if settings.spectrum_only:
    for spec in settings.models:
      _spectrum(spec, dataset, settings)
    return {"spectra": [(spec.name, settings.num_eigenvectors, str(settings.gram.cache_dir))
                        for spec in settings.models]}
  x_all = dataset.all_x()  # [N, H, W, C], train rows first (App. B)
  is_train = dataset.is_train  # [N]
  baseline = BASELINE_OF[settings.data.dataset]
  baseline_y = data_lib.binarize(dataset.all_y())  # [N] in {-1, +1}, classes 0-4 -> +1
  keys = []
  for spec in settings.models:
    targets = []
    if settings.indices:  # A baseline-only run needs neither Theta_0 nor its eigenvectors.
      basis = _spectrum(spec, dataset, settings)
      targets = [(f"phi{j:04d}", spectrum_lib.eigenfunction_task(basis, j))
                 for j in settings.indices]
    if settings.baseline:
      targets.append((baseline, None))
    for target, task in targets:
      task_recipe = recipe
      if task is None:
        labels, kinds = baseline_y, settings.baseline_kinds
        task_recipe = settings.baseline_recipe  # App. A: 200 epochs on CIFAR2
        info = {"index": None, "eigenvalue": math.nan, "overlap": math.nan}
        data = pipeline.TaskData(x_all[is_train], labels[is_train], x_all[~is_train],
                                 labels[~is_train])
      else:
        kinds = settings.kinds
        info = {"index": task.j, "eigenvalue": task.eigenvalue, "overlap": task.overlap}
        data = pipeline.TaskData(x_all[is_train], task.y_train, x_all[~is_train], task.y_test)
      for kind in kinds:
        key = task_key(spec.name, target, kind)
        keys.append(key)
        fp = workdir_lib.fingerprint({
            "model": dataclasses.asdict(spec), "data": settings.data.identity(),
            "gram_dtype": settings.gram.dtype, "target": target, "kind": kind,
            "num_eigenvectors": settings.num_eigenvectors, "eigen_method": settings.eigen_method,
            "recipe": task_recipe.to_dict(), "train_seed": settings.train_seed})
        if store.get(key, fp) is not None:
          logging.info("%s: done already, skipping.", key)
          continue
        timer = pipeline.Timer()
        network = spec.build(dataset.input_shape)
        model = network if kind == "network" else linearize(network)
        result = pipeline.train_task(model, data, recipe=task_recipe, seed=settings.train_seed,
                                     task_dir=work / "train" / key, fingerprint=fp,
                                     progress=settings.common.progress)
        metrics = pipeline.summary(result)
        row = {"model": spec.name, "kind": kind, "target": target, **info,
               "positive_fraction": pipeline.positive_fraction(data.y_train),
               "num_train": dataset.num_train, "num_test": dataset.num_test,
               "optimizer": task_recipe.optimizer, "epochs": task_recipe.epochs,
               **{k: metrics[k] for k in ("test_acc", "train_acc", "train_loss",
                                          "steps_to_loss", "l2_distance", "cosine_distance")},
               "seconds": timer.seconds, "history": result.history}
        store.put(key, row, fp)
        logging.info("%s: test acc %.4f, steps to loss %s: %s, l2 %.4g, cos %.4g", key,
                     row["test_acc"], task_recipe.loss_threshold, row["steps_to_loss"],
                     row["l2_distance"], row["cosine_distance"])
  rows = [{f: r.get(f) for f in TABLE_FIELDS} for r in store.rows(keys)]
  csv_path = pipeline.write_table(work / "results.csv", rows, TABLE_FIELDS,
                                  int_columns=("index", "steps_to_loss"))
  json_path = atomic.write_json(work / "results.json", rows)
  figures = [plots.plot_test_accuracy(rows, work / FIG2, baseline),
             plots.plot_training_metrics(rows, work / FIG3)]
  return {"rows": rows, "csv": csv_path, "json": json_path, "figures": figures}
