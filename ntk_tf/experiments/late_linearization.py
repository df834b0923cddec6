"""Late linearization: networks vs linearizations at init, at theta_t and around theta_star.

Task: sign(phi_j) of Theta_0 (paper: j = 400) on a supporting dataset. Runs, all with the
same recipe and shuffling seed, every linear model's weights theta starting at theta0:

  network           f(x; theta), trained from theta0 (checkpoints at every pretrain epoch)
  unbiased_t{t}     (theta - theta0)^T grad f(x; theta_t): the kernel Theta_t of the network's
                    checkpoint after t epochs, no offset (Fig. 9, the default form)
  offset_t{t}       f(x; theta_t) + (theta - theta0)^T grad f(x; theta_t): the same kernel,
                    starting from the pretrained function (our variant, `FORMS`);
                    offset_t0000 is the linearization at init of Eq. 1 (Fig. 8)
  linear_star       the unbiased linearization around the trained theta_star (Sec. 4.3):
                    f_hat(x; theta) = (theta - theta0)^T grad f(x; theta_star), from theta0

Which form Fig. 9 uses. Sec. 4.3 defines the pretrained-kernel model of Fig. 8 as "an
unbiased linearization around the solution of the ResNet18 theta*, i.e. f_hat_theta(x) =
(theta - theta0)^T grad f_theta*(x)", and Fig. 9 ("linearized networks with kernels
extracted after different epochs of pretraining") varies only the epoch the kernel is
taken at. The unbiased form isolates the kernel; the offset form also inherits the
pretrained network's fit f(x; theta_t). Both are trained (`Settings.forms`) and drawn.
The unbiased point at t = 0 is J(x; theta0)(theta - theta0), Eq. 1 without f(x; theta0);
the offset point at t = 0 is Eq. 1 itself, "the linearized model at initialization".

BatchNorm (App. B): "we fix the batch normalization parameters to their initialization
values when performing the linearization". Every linear model is
`ntk_tf.linearize(model0, expansion_point=theta_t)` with its default
`batch_norm="initial"`: theta counted from theta0, the BN weights (gamma, beta, moving
statistics) of the expansion point taken from theta0.

Fig. 8: training loss and test accuracy over epochs of network, offset_t0000 and linear_star.
Fig. 9: final test accuracy of unbiased_t{t} and offset_t{t} against t, the network's dashed.

Outputs: config.json, settings.json, results.csv (one row per run), fig8_training.png, fig9_pretraining.png,
runs/<name>/metrics.csv (per-epoch history of each run; resumable state).

Paper: Sec. 4.3, Figs. 8, 9; App. B (BatchNorm).
"""

import dataclasses
import math
import pathlib
from typing import Any, Dict, List, Mapping, Tuple

import keras
import numpy as np

import ntk_tf
from ntk_tf import data as data_lib
from ntk_tf import validation
from ntk_tf.experiments import fields
from ntk_tf.experiments import pipeline
from ntk_tf.experiments import plots
from ntk_tf.experiments import spectrum as spectrum_lib
from ntk_tf.experiments import workdir as workdir_lib


# The forms of the linearization at theta_t (module docstring): "unbiased" (the paper's,
# Sec. 4.3) and "offset" (f(x; theta_t) added).
FORMS = ("unbiased", "offset")


def _pretrain_epochs(value: Any, label: str, last: int) -> Tuple[int, ...]:
  """The epochs t of the Fig. 9 runs, 0 (Fig. 8's init) always included."""
  epochs = fields.int_set(value, label, low=0, high=last)
  return tuple(sorted(set(epochs) | {0}))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
  """The validated settings of one late-linearization run (configs/late_linearization.py)."""
  common: pipeline.Common = fields.block(pipeline.Common)
  model: pipeline.ModelSpec = fields.block(pipeline.read_model)
  data: pipeline.DataSpec = fields.block(pipeline.DataSpec, datasets=data_lib.DATASET_NAMES)
  gram: pipeline.GramSpec = fields.block(pipeline.GramSpec, key="gram")
  eigenfunction_index: int = fields.setting(
      fields.at_most, maximum=lambda s: s.data.num_train + s.data.num_test,
      bound="train_size + test_size = {maximum} (the eigenvectors live on those samples)")
  pretrain_epochs: Tuple[int, ...] = fields.setting(_pretrain_epochs,
                                                    last=lambda s: s.common.recipe.epochs)
  # Of Fig. 9's linear models, each of FORMS; the first is the paper's.
  forms: Tuple[str, ...] = fields.setting(fields.names, key="late_linearization_forms",
                                          allowed=FORMS)
  train_seed: int = fields.setting(validation.check_non_negative_int)


def run_name(form: str, epoch: int) -> str:
  """The run of the linearization at theta_t, t = `epoch`, in `form`."""
  return f"{form}_t{epoch:04d}"


def linearize_at(model0: keras.Model, theta_t: keras.Model, form: str) -> ntk_tf.Linearized:
  """The linear model of Fig. 9 with the kernel of checkpoint theta_t; theta starts at theta0.

      unbiased: f_lin(x; theta) = J(x; theta_t) (theta - theta0)
      offset:   f_lin(x; theta) = f(x; theta_t) + J(x; theta_t) (theta - theta0)

  with the BatchNorm weights of theta_t replaced by theta0's (App. B,
  `ntk_tf.linearize`'s default `batch_norm="initial"`).

  Args:
    model0: the network at initialization theta0.
    theta_t: the same architecture at the checkpoint theta_t.
    form: one of FORMS.
  """
  if form not in FORMS:
    raise ValueError(f"form must be one of {FORMS}. Received: form={form!r}")
  return ntk_tf.linearize(pipeline.clone_with_weights(model0), expansion_point=theta_t,
                          offset=form == "offset", batch_norm="initial")


describe_outputs = pipeline.describe_outputs  # What the binary prints.


def settings_from_config(config: Mapping[str, Any]) -> Settings:
  """Validates every field (ValueError naming it) before any folder is made or data read."""
  return fields.read(Settings, config)


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

  def train(name: str, net, kind: str, pretrain_epoch: float, form: str,
            checkpoints=()) -> None:
    fp = workdir_lib.fingerprint({**base, "run": name})
    if store.get(name, fp) is not None:
      return
    result = pipeline.train_task(net, data, recipe=recipe, seed=settings.train_seed,
                                 task_dir=runs_dir / name, fingerprint=fp,
                                 checkpoint_epochs=checkpoints, progress=settings.common.progress)
    row = {"run": name, "kind": kind, "form": form, "pretrain_epoch": pretrain_epoch,
           **task_info, **pipeline.summary(result)}
    store.put(name, row, fp)

  # (i) the network, with the checkpoints the linear runs expand around.
  train("network", pipeline.clone_with_weights(model), "network", math.nan, "",
        sorted(set(settings.pretrain_epochs) | {recipe.epochs}))
  # (ii) Fig. 9: linearizations with the kernel at theta_t, each form; offset_t0000 is Eq. 1
  # at init (Fig. 8), trained whatever the forms.
  linear_runs = [(form, t) for form in settings.forms for t in settings.pretrain_epochs]
  if "offset" not in settings.forms:
    linear_runs.append(("offset", 0))
  for form, t in linear_runs:
    theta_t_model = pipeline.load_checkpoint(model, runs_dir / "network", t)
    train(run_name(form, t), linearize_at(model, theta_t_model, form), "linear_pretrained", t,
          form)
  # (iii) the unbiased linearization around the trained theta_star, starting at theta0.
  theta_star = pipeline.load_checkpoint(model, runs_dir / "network", recipe.epochs)
  train("linear_star", linearize_at(model, theta_star, "unbiased"), "linear_star_unbiased",
        math.nan, "unbiased")
  names = ["network"] + [run_name(form, t) for form, t in linear_runs] + ["linear_star"]
  rows = store.rows(names)
  plot_all(settings, rows, workdir)
  return rows


def _history(workdir: pathlib.Path, name: str) -> Dict[str, np.ndarray]:
  import pandas as pd  # pylint: disable=g-import-not-at-top
  frame = pd.read_csv(workdir / "runs" / name / "metrics.csv")
  return {c: frame[c].to_numpy() for c in frame.columns}


def plot_all(settings: Settings, rows: List[Dict[str, Any]], workdir: pathlib.Path) -> None:
  """fig8_training.png (loss and accuracy over epochs) and fig9_pretraining.png (every form)."""
  j, name = settings.eigenfunction_index, settings.model.name
  histories = {label: _history(workdir, run) for run, label in (
      ("network", name), (run_name("offset", 0), "linearized at theta0 (Eq. 1)"),
      ("linear_star", "unbiased lin. at theta_star"))}
  plots.plot_late_training(histories, j, workdir / "fig8_training.png")
  curves = {f"{form} (theta - theta0)^T grad f_t" if form == "unbiased" else
            f"{form}: f_t + (theta - theta0)^T grad f_t":
            [(r["pretrain_epoch"], r["test_acc"]) for r in rows
             if r["kind"] == "linear_pretrained" and r["form"] == form]
            for form in settings.forms}
  network = [r for r in rows if r["kind"] == "network"][0]
  plots.plot_pretraining(curves, network["test_acc"], name, j, workdir / "fig9_pretraining.png")
