"""Late linearization: networks vs linearizations at init, at theta_t and around theta_star.

Task: sign(phi_j) of Theta_0 (paper: j = 400) on a supporting dataset. Runs, all with the
same recipe and shuffling seed:

  network           f(x; theta), trained from theta0 (checkpoints at every pretrain epoch)
  linear_t{t}       f(x; theta_t) + J(x; theta_t)(theta - theta_t), theta_t the network's
                    checkpoint after t epochs (t = 0: the linearization at init, Eq. 1)
  linear_star       the unbiased linearization around the trained theta_star (Sec. 4.3):
                    f_hat(x; theta) = (theta - theta0)^T grad f(x; theta_star), from theta0

Fig. 8: training loss and test accuracy over epochs of network, linear_t0 and linear_star.
Fig. 9: final test accuracy of linear_t{t} against t, the network's as a dashed line.

Outputs: config.json, settings.json, results.csv (one row per run), fig8_training.png, fig9_pretraining.png,
runs/<name>/metrics.csv (per-epoch history of each run; resumable state).

Paper: Sec. 4.3, Figs. 8, 9.
"""

import dataclasses
import math
import pathlib
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

import ntk_tf
from ntk_tf.experiments import pipeline
from ntk_tf.experiments import plots
from ntk_tf.experiments import spectrum as spectrum_lib
from ntk_tf.experiments import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class Settings:
  """The validated settings of one late-linearization run (configs/late_linearization.py)."""
  common: pipeline.Common
  model: pipeline.ModelSpec
  data: pipeline.DataSpec
  gram: pipeline.GramSpec
  eigenfunction_index: int
  pretrain_epochs: Tuple[int, ...]  # t of the linear_t runs, 0 (Fig. 8's init) always included
  train_seed: int


def settings_from_config(config: Mapping[str, Any]) -> Settings:
  """Validates every field (ValueError naming it) before any folder is made or data read."""
  common = pipeline.check_common(config, "PAPER_SGD")
  (model,) = pipeline.check_models(config, "model")
  data = pipeline.check_data(config)
  j = pipeline.check_positive_int(config.eigenfunction_index, "eigenfunction_index")
  n_all = data.num_train + data.num_test
  if j > n_all:
    raise ValueError(f"config.eigenfunction_index must be <= train_size + test_size = {n_all} "
                     f"(the eigenvectors live on those samples). Received: eigenfunction_index={j}")
  epochs = pipeline.check_ints(config.pretrain_epochs, "pretrain_epochs", low=0,
                               high=common.recipe.epochs)
  return Settings(common=common, model=model, data=data, gram=pipeline.check_gram(config),
                  eigenfunction_index=j, pretrain_epochs=tuple(sorted(set(epochs) | {0})),
                  train_seed=pipeline.check_non_negative_int(config.train_seed, "train_seed"))


def run(settings: Settings, workdir: pathlib.Path) -> List[Dict[str, Any]]:
  """Trains the network and the linearizations on sign(phi_j); writes results.csv and Figs. 8, 9.

  Resumable: every training resumes from its own state; finished runs are skipped.

  Returns:
    The rows of results.csv (one per run).
  """
  workdir, store = pipeline.prepare(workdir, settings)
  recipe = settings.common.recipe
  spec = settings.model
  dataset = settings.data.load()
  model = spec.build(dataset.input_shape)
  j = settings.eigenfunction_index
  basis = spectrum_lib.spectrum(model, spec, dataset, j, settings.gram, seed=spec.seed,
                                progress=settings.common.progress)
  task = spectrum_lib.eigenfunction_task(basis, j)
  data = pipeline.TaskData(dataset.x_train, task.y_train, dataset.x_test, task.y_test)
  base = {"model": dataclasses.asdict(spec), "train_seed": settings.train_seed,
          "data": settings.data.identity(), "eigenfunction_index": j,
          "recipe": recipe.to_dict(), "gram_dtype": settings.gram.dtype}
  runs_dir = workdir / "runs"
  task_info = {"eigenfunction_index": j, "eigenvalue": task.eigenvalue, "overlap": task.overlap}

  def train(name: str, net, kind: str, pretrain_epoch: float, checkpoints=()) -> None:
    fp = workdir_lib.fingerprint({**base, "run": name})
    if store.get(name, fp) is not None:
      return
    result = pipeline.train_task(net, data, recipe=recipe, seed=settings.train_seed,
                                 task_dir=runs_dir / name, fingerprint=fp,
                                 checkpoint_epochs=checkpoints, progress=settings.common.progress)
    row = {"run": name, "kind": kind, "pretrain_epoch": pretrain_epoch, **task_info,
           **pipeline.summary(result)}
    store.put(name, row, fp)

  linear_names = [f"linear_t{t:04d}" for t in settings.pretrain_epochs]
  # (i) the network, with the checkpoints the linear runs expand around.
  train("network", pipeline.clone_with_weights(model), "network", math.nan,
        sorted(set(settings.pretrain_epochs) | {recipe.epochs}))
  # (ii) and Fig. 9: linearizations at theta_t.
  for t, name in zip(settings.pretrain_epochs, linear_names):
    theta_t_model = pipeline.load_checkpoint(model, runs_dir / "network", t)
    train(name, ntk_tf.linearize(theta_t_model), "linear_pretrained", t)
  # (iii) the unbiased linearization around the trained theta_star, starting at theta0.
  theta_star = pipeline.load_checkpoint(model, runs_dir / "network", recipe.epochs)
  lin = ntk_tf.linearize(pipeline.clone_with_weights(model), expansion_point=theta_star,
                         offset=False)
  train("linear_star", lin, "linear_star_unbiased", math.nan)
  rows = store.rows(["network"] + linear_names + ["linear_star"])
  plot_all(settings, rows, workdir)
  return rows


def _history(workdir: pathlib.Path, name: str) -> Dict[str, np.ndarray]:
  import pandas as pd  # pylint: disable=g-import-not-at-top
  frame = pd.read_csv(workdir / "runs" / name / "metrics.csv")
  return {c: frame[c].to_numpy() for c in frame.columns}


def plot_all(settings: Settings, rows: List[Dict[str, Any]], workdir: pathlib.Path) -> None:
  """fig8_training.png (loss and accuracy over epochs) and fig9_pretraining.png."""
  j, name = settings.eigenfunction_index, settings.model.name
  histories = {label: _history(workdir, run) for run, label in (
      ("network", name), ("linear_t0000", "linearized at theta0"),
      ("linear_star", "unbiased lin. at theta_star"))}
  plots.plot_late_training(histories, j, workdir / "fig8_training.png")
  points = [(r["pretrain_epoch"], r["test_acc"]) for r in rows if r["kind"] == "linear_pretrained"]
  network = [r for r in rows if r["kind"] == "network"][0]
  plots.plot_pretraining(points, network["test_acc"], name, j, workdir / "fig9_pretraining.png")
