"""Ten-class CIFAR-10: NTK regression against the trained network and its linearization.

Beyond the paper (its tasks are binary): the MLP and LeNet with C = 10 logits, trained on n
CIFAR-10 images (stratified subsamples, seeded) and evaluated on the test split. For every
(model, n, seed), from the same seeded theta0:

  network     the network trained with the recipe (softmax cross-entropy, `ntk_tf.train`);
  linearized  its linearization at theta0 (Eq. 1), trained likewise;
  ntk_<k>     NTK regression with the output kernel k of Theta_0 ("trace", "pseudo",
              "full"; `ntk_tf.ntk.output_kernel`): the linearized model trained to
              convergence by gradient flow on the MSE to the centred one-hot targets
              y_i = e_{c_i} - 1/C (`ntk_tf.predict.gradient_descent_mse`, t = None; test_loss
              is then (1/2M) sum ||f - y||^2, and no train metrics: f_train = y),

      f_test = f_0(x_test) + Theta(x_test, X) (Theta(X, X) + r I)^{-1} (Y - f_0(X)),

              with f_0 the network's outputs at theta0 and r = diag_reg times the mean
              diagonal of Theta(X, X). A "trace" or "pseudo" Gram [n, n] acts on every
              output alike; a "full" Gram [n, n, C, C] couples them ([nC, nC] solve, so it
              runs only for n <= full_max_train_size). The prediction is argmax_a f_test,a.

The Grams are computed in `gram.dtype` and solved in float64; Theta(x_test, X) in chunks of
test images so that a "full" one never needs [M, n, C, C] at once.

Workdir layout (resumable per task): config.json, settings.json, results/<task>.json,
results.csv, results.json, train/<task>/ (metrics.csv), multiclass.png.
Task keys: `<model>_n<n:06d>_s<seed>_<kind>`.
"""

import dataclasses
import pathlib
from typing import Any, Dict, List, Mapping, Tuple

from absl import logging
import keras
import numpy as np

from ntk_tf import atomic
from ntk_tf import predict
from ntk_tf import validation
from ntk_tf.experiments import fields
from ntk_tf.experiments import pipeline
from ntk_tf.experiments import plots
from ntk_tf.experiments import workdir as workdir_lib
from ntk_tf.linearize import linearize
from ntk_tf.ntk import block_size as block_size_lib
from ntk_tf.ntk import gram as gram_lib

DATASETS = ("cifar10", "mnist")
NUM_CLASSES = 10
OUTPUT_KERNELS = ("trace", "pseudo", "full")
KINDS = pipeline.KINDS + tuple(f"ntk_{k}" for k in OUTPUT_KERNELS)
FIGURE = "multiclass.png"
TABLE_FIELDS = ("task", "model", "kind", "dataset", "num_train", "num_test", "num_classes",
                "seed", "epochs", "optimizer", "diag_reg", "test_acc", "train_acc", "test_loss",
                "train_loss", "seconds")
# Bytes of Theta(x_test, X) per chunk of test images.
_CHUNK_BYTES = 1 << 29


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
  """The validated settings of one ten-class study (see configs/multiclass.py)."""
  common: pipeline.Common = fields.block(pipeline.Common)
  models: Tuple[pipeline.ModelSpec, ...] = fields.block(pipeline.read_models)
  data: pipeline.DataSpec = fields.block(pipeline.DataSpec, datasets=DATASETS)
  gram: pipeline.GramSpec = fields.block(pipeline.GramSpec, key="gram")
  train_sizes: Tuple[int, ...] = fields.setting(fields.int_set, low=NUM_CLASSES,
                                                high=lambda s: s.data.full_sizes[0])
  seeds: Tuple[int, ...] = fields.setting(fields.int_set, low=0)
  kinds: Tuple[str, ...] = fields.setting(fields.names, allowed=KINDS)
  diag_reg: float = fields.setting(fields.non_negative_number)
  full_max_train_size: int = fields.setting(validation.check_positive_int)


def settings_from_config(config: Mapping[str, Any]) -> Settings:
  """Validates every field (ValueError naming it) before any folder is made or data read."""
  return fields.read(Settings, config)


describe_outputs = pipeline.describe_rows  # What the binary prints.


def task_key(model: str, train_size: int, seed: int, kind: str) -> str:
  return f"{model}_n{train_size:06d}_s{seed}_{kind}"


def centred_one_hot(classes: np.ndarray, num_classes: int) -> np.ndarray:
  """y_i = e_{c_i} - 1/C, `[N]` -> `[N, C]` float64 (each row sums to 0)."""
  return np.eye(num_classes)[np.asarray(classes)] - 1.0 / num_classes


def full_solve_bytes(train_size: int, num_classes: int) -> int:
  """Peak bytes of a "full" regression: the float32 Gram, its float64 copy and flattening."""
  return (train_size * num_classes) ** 2 * (4 + 8 + 8)


def ntk_regression(network: keras.Model, x_train: np.ndarray, y_train: np.ndarray,
                   x_test: np.ndarray, *, output_kernel: str, diag_reg: float,
                   gram: pipeline.GramSpec) -> np.ndarray:
  """f_test: the converged linearized model of `network` under MSE gradient flow, on x_test.

      f_test = f_0(x_test) + Theta(x_test, X) (Theta(X, X) + r I)^{-1} (Y - f_0(X)),
      r = diag_reg * mean(diag Theta(X, X))

  (On the training set the converged model interpolates: f_train = Y.)

  Args:
    network: a model with C logits at its expansion point theta0.
    x_train, x_test: `[n, ...]`, `[M, ...]` inputs.
    y_train: `[n, C]` regression targets.
    output_kernel: "trace", "pseudo" or "full" (`ntk_tf.ntk.output_kernel`).
    diag_reg: the ridge, relative to the mean diagonal (neural-tangents' convention).
    gram: block size, implementation and dtype of the Grams.
  Returns:
    `[M, C]` float64 outputs.
  """
  options = dict(block_size=gram.block_size, implementation=gram.implementation,
                 dtype=gram.dtype, progress=False, output_kernel=output_kernel)
  f0_train = _outputs(network, x_train)  # [n, C]
  f0_test = _outputs(network, x_test)  # [M, C]
  k_train = gram_lib.ntk_gram(network, x_train, **options)  # [n, n] or [n, n, C, C]
  predict_fn = predict.gradient_descent_mse(k_train, y_train, diag_reg=diag_reg,
                                            dtype="float64")
  del k_train  # predict_fn holds its float64 copy.
  per_test = len(x_train) * (y_train.shape[1] ** 2 if output_kernel == "full" else 1) * 4
  chunk = max(1, _CHUNK_BYTES // per_test)
  f_test = []
  for start in range(0, len(x_test), chunk):
    k_test = gram_lib.ntk_gram(network, x_test[start:start + chunk], x_train, **options)
    _, f = predict_fn(None, f0_train, f0_test[start:start + chunk], k_test)  # [m, C]
    f_test.append(f)
  return np.concatenate(f_test).astype(np.float64)


def _outputs(model: keras.Model, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
  """f(x; theta) in inference mode, `[N, C]` float64."""
  return np.concatenate([np.asarray(model(x[i:i + batch_size], training=False), np.float64)
                         for i in range(0, len(x), batch_size)])


def _accuracy(outputs: np.ndarray, classes: np.ndarray) -> float:
  return float(np.mean(np.argmax(outputs, axis=1) == classes))


def _mse(outputs: np.ndarray, targets: np.ndarray) -> float:
  """(1 / 2N) sum_i ||f_i - y_i||^2, the loss the regression minimizes."""
  return float(0.5 * np.mean(np.sum((outputs - targets) ** 2, axis=1)))


def _regression_row(network: keras.Model, kind: str, dataset,
                    settings: Settings) -> Dict[str, Any]:
  output_kernel = kind[len("ntk_"):]
  y_train = centred_one_hot(dataset.y_train, NUM_CLASSES)  # [n, C]
  y_test = centred_one_hot(dataset.y_test, NUM_CLASSES)  # [M, C]
  if output_kernel == "full":
    need = full_solve_bytes(dataset.num_train, NUM_CLASSES)
    have = block_size_lib.physical_memory_bytes()
    if need > have:
      raise MemoryError(f"A full output kernel on {dataset.num_train} images needs about "
                        f"{need / 2**30:.1f} GiB, more than the {have / 2**30:.1f} GiB here; "
                        f"lower config.full_max_train_size. Received: "
                        f"full_max_train_size={settings.full_max_train_size}")
  f_test = ntk_regression(network, dataset.x_train, y_train, dataset.x_test,
                          output_kernel=output_kernel, diag_reg=settings.diag_reg,
                          gram=settings.gram)
  # The converged model interpolates the training set (f_train = Y): no train metrics.
  return {"epochs": None, "optimizer": None, "diag_reg": settings.diag_reg,
          "test_acc": _accuracy(f_test, dataset.y_test), "train_acc": None,
          "test_loss": _mse(f_test, y_test), "train_loss": None}


def _training_row(network: keras.Model, kind: str, dataset, settings: Settings,
                  key: str, work: pathlib.Path, fingerprint: str, seed: int) -> Dict[str, Any]:
  recipe = settings.common.recipe
  model = network if kind == "network" else linearize(network)
  data = pipeline.TaskData(dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test)
  result = pipeline.train_task(model, data, recipe=recipe, seed=seed,
                               task_dir=work / "train" / key, fingerprint=fingerprint,
                               progress=settings.common.progress)
  final = result.final
  return {"epochs": recipe.epochs, "optimizer": recipe.optimizer, "diag_reg": None,
          "test_acc": final["test_acc"], "train_acc": final["train_acc"],
          "test_loss": final["test_loss"], "train_loss": final["train_loss"],
          "history": result.history}


def _fingerprint(settings: Settings, spec: pipeline.ModelSpec, kind: str, size: int,
                 seed: int) -> str:
  how = ({"recipe": settings.common.recipe.to_dict()} if kind in pipeline.KINDS else
         {"gram": settings.gram.identity(), "diag_reg": settings.diag_reg,
          "targets": "centred one-hot"})
  return workdir_lib.fingerprint({"model": dataclasses.asdict(spec), "kind": kind,
                                  "data": settings.data.identity(), "train_size": size,
                                  "seed": seed, "num_classes": NUM_CLASSES, **how})


def planned_tasks(settings: Settings) -> List[Tuple[pipeline.ModelSpec, int, int, str]]:
  """(spec, n, seed, kind) of every task, in run order; "full" only up to its size limit."""
  return [(spec, size, seed, kind)
          for size in settings.train_sizes for seed in settings.seeds
          for spec in settings.models for kind in settings.kinds
          if kind != "ntk_full" or size <= settings.full_max_train_size]


def run(settings: Settings, workdir: pathlib.Path) -> Dict[str, Any]:
  """Runs the ten-class study in `workdir` (resumable) and returns rows and output paths.

  Returns:
    {"rows": one row per task (keys `TABLE_FIELDS`), "csv", "json", "figures"}.
  """
  work, store = pipeline.prepare(workdir, settings)
  tasks = planned_tasks(settings)
  keys = [task_key(spec.name, size, seed, kind) for spec, size, seed, kind in tasks]
  loaded, dataset = None, None  # One subsample in memory at a time: (n, seed) and its data.
  for (spec, size, seed, kind), key in zip(tasks, keys):
    fp = _fingerprint(settings, spec, kind, size, seed)
    if store.get(key, fp) is not None:
      logging.info("%s: done already, skipping.", key)
      continue
    if loaded != (size, seed):
      loaded, dataset = (size, seed), settings.data.load(train_size=size, seed=seed)
    timer = pipeline.Timer()
    spec_c = dataclasses.replace(spec, kwargs={**spec.kwargs, "outputs": NUM_CLASSES})
    network = spec_c.build(dataset.input_shape, seed=seed)
    if kind in pipeline.KINDS:
      measured = _training_row(network, kind, dataset, settings, key, work, fp, seed)
    else:
      measured = _regression_row(network, kind, dataset, settings)
    row = {"model": spec.name, "kind": kind, "dataset": settings.data.dataset,
           "num_train": size, "num_test": dataset.num_test, "num_classes": NUM_CLASSES,
           "seed": seed, **measured, "seconds": timer.seconds}
    store.put(key, row, fp)
    logging.info("%s: test acc %.4f, train acc %s (%.0f s)", key, row["test_acc"],
                 row["train_acc"], row["seconds"])
  rows = [{f: r.get(f) for f in TABLE_FIELDS} for r in store.rows(keys)]
  paths = {"csv": pipeline.write_table(work / "results.csv", rows, TABLE_FIELDS),
           "json": atomic.write_json(work / "results.json", rows)}
  figure = plots.plot_multiclass(rows, work / FIGURE, settings.data.dataset)
  return {"rows": rows, **paths, "figures": [figure]}
