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

Outputs: results.csv (one row per run), fig8_training.png, fig9_pretraining.png,
runs/<name>/metrics.csv (per-epoch history of each run; resumable state).

Paper: Sec. 4.3, Figs. 8, 9.
"""

import pathlib
from typing import Any, Dict, List

import numpy as np

import ntk_tf
from ntk_tf.experiments import runs
from ntk_tf.experiments import tasks
from ntk_tf.experiments import workdir as workdir_lib

EXPERIMENT = "late_linearization"


def validate_config(config: Any) -> ntk_tf.Recipe:
  """Checks every field before any work; returns the recipe. Raises ValueError naming the value."""
  recipe = runs.check_common(config, models_field="model")
  runs.check_dataset_sizes(config)
  runs.check_non_negative_int(config.data_seed, "data_seed")
  j = runs.check_positive_int(config.eigenfunction_index, "eigenfunction_index")
  if config.train_size is not None and config.test_size is not None:
    n_all = config.train_size + config.test_size
    if j > n_all:
      raise ValueError(f"config.eigenfunction_index must be <= train_size + test_size = {n_all} "
                       f"(the eigenvectors live on those samples). Received: eigenfunction_index={j}")
  runs.check_int_list(config.pretrain_epochs, "pretrain_epochs", low=0, high=recipe.epochs)
  runs.check_gram(config.gram)
  return recipe


def _linear_epochs(config: Any) -> List[int]:
  """Pretraining epochs t of the linear_t runs; t = 0 (Fig. 8's linearization at init) always."""
  return sorted(set(config.pretrain_epochs) | {0})


def run(config: Any, workdir: pathlib.Path) -> List[Dict[str, Any]]:
  """Trains the network and the linearizations on sign(phi_j); writes results.csv and Figs. 8, 9.

  Resumable: every training resumes from its own state; finished runs are skipped.

  Args:
    config: see configs/late_linearization.py.
    workdir: output folder.
  Returns:
    The rows of results.csv (one per run).
  """
  recipe = validate_config(config)
  workdir = workdir_lib.prepare(workdir, config)
  store = workdir_lib.ResultStore(workdir)
  progress = bool(config.get("progress", False))
  dataset = runs.load_dataset(config)
  model = runs.build_model(config, config.model, dataset.input_shape)
  j = config.eigenfunction_index
  task = tasks.eigenfunction_task(
      model, dataset, [j], workdir / "eigen_init", block_size=config.gram.block_size,
      implementation=config.gram.implementation, dtype=config.gram.dtype, progress=progress)[j]
  base = {"model": config.model, "activation": config.activation,
          "model_seed": config.model_seed, "train_seed": config.train_seed,
          "model_kwargs": runs.model_kwargs(config, config.model),
          "data_seed": config.data_seed, "dataset": config.dataset,
          "train_size": config.train_size, "test_size": config.test_size,
          "eigenfunction_index": j, "recipe": recipe.to_dict(), "gram": config.gram.to_dict()}
  data = dict(x_train=dataset.x_train, y_train01=task.y_train01, x_test=dataset.x_test,
              y_test01=task.y_test01)
  runs_dir = workdir / "runs"
  task_info = {"eigenfunction_index": j, "eigenvalue": task.eigenvalue, "overlap": task.overlap}

  def train(name: str, net, kind: str, pretrain_epoch: float, checkpoints=()) -> None:
    fp = workdir_lib.fingerprint({**base, "run": name})
    runs.fresh_dir(runs_dir / name, fp)
    result = runs.train_run(net, data["x_train"], data["y_train01"], data["x_test"],
                              data["y_test01"], recipe=recipe, seed=config.train_seed,
                              train_dir=runs_dir / name, checkpoint_epochs=checkpoints,
                              progress=progress)
    row = {"run": name, "kind": kind, "pretrain_epoch": pretrain_epoch, **task_info,
           **runs.history_summary(result)}
    store.put(name, row, fp)

  keys = ["network"] + [f"linear_t{t:04d}" for t in _linear_epochs(config)] + ["linear_star"]
  # (i) the network, with the checkpoints the linear runs expand around.
  net_checkpoints = sorted(set(_linear_epochs(config)) | {recipe.epochs})
  if store.get("network", workdir_lib.fingerprint({**base, "run": "network"})) is None:
    train("network", runs.clone_with_weights(model), "network", np.nan, net_checkpoints)
  # (ii) and Fig. 9: linearizations at theta_t.
  for t in _linear_epochs(config):
    name = f"linear_t{t:04d}"
    if store.get(name, workdir_lib.fingerprint({**base, "run": name})) is None:
      theta_t_model = runs.load_checkpoint(model, runs_dir / "network", t)
      train(name, ntk_tf.linearize(theta_t_model), "linear_pretrained", t)
  # (iii) the unbiased linearization around the trained theta_star, starting at theta0.
  if store.get("linear_star", workdir_lib.fingerprint({**base, "run": "linear_star"})) is None:
    theta_star = runs.load_checkpoint(model, runs_dir / "network", recipe.epochs)
    lin = ntk_tf.linearize(runs.clone_with_weights(model), expansion_point=theta_star,
                           offset=False)
    train("linear_star", lin, "linear_star_unbiased", np.nan)
  rows = store.rows(keys)
  plot_all(config, rows, workdir)
  return rows


def _history(workdir: pathlib.Path, name: str) -> Dict[str, np.ndarray]:
  import pandas as pd  # pylint: disable=g-import-not-at-top
  frame = pd.read_csv(workdir / "runs" / name / "metrics.csv")
  return {c: frame[c].to_numpy() for c in frame.columns}


def plot_all(config: Any, rows: List[Dict[str, Any]], workdir: pathlib.Path) -> None:
  """fig8_training.png (loss and accuracy over epochs) and fig9_pretraining.png."""
  plt = runs.pyplot()
  j = config.eigenfunction_index
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
  for name, label in (("network", f"{config.model}"), ("linear_t0000", "linearized at theta0"),
                      ("linear_star", "unbiased lin. at theta_star")):
    h = _history(workdir, name)
    ax_loss.semilogy(h["epoch"], h["train_loss"], label=label)
    ax_acc.plot(h["epoch"], h["test_acc"], label=label)
  ax_loss.set_xlabel("epoch")
  ax_loss.set_ylabel("training loss")
  ax_acc.set_xlabel("epoch")
  ax_acc.set_ylabel("test accuracy")
  ax_loss.set_title(f"sign(phi_{j}): training loss (Fig. 8)")
  ax_acc.set_title(f"sign(phi_{j}): test accuracy (Fig. 8)")
  ax_acc.legend(fontsize=7)
  runs.save_figure(fig, workdir / "fig8_training.png")

  lin = sorted((r["pretrain_epoch"], r["test_acc"]) for r in rows
               if r["kind"] == "linear_pretrained")
  net = [r for r in rows if r["kind"] == "network"][0]
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot(*zip(*lin), "o-", label="linearized at theta_t")
  ax.axhline(net["test_acc"], ls="--", color="k", label=f"{config.model} (non-linear)")
  ax.set_xlabel("pretraining epochs t")
  ax.set_ylabel("test accuracy")
  ax.set_title(f"sign(phi_{j}): linearization after pretraining (Fig. 9)")
  ax.legend(fontsize=7)
  runs.save_figure(fig, workdir / "fig9_pretraining.png")
