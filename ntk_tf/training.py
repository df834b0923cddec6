"""Training a network or its linearization with the paper's recipe, and its metrics.

    loss(theta) = mean_i BCE(sigmoid(f(x_i; theta)), (1 + y_i) / 2),   y_i in {-1, +1},

for a model with one logit (the paper's), or for C > 1 logits the softmax cross-entropy

    loss(theta) = mean_i [logsumexp(f(x_i; theta)) - f_{c_i}(x_i; theta)],   c_i in {0..C-1},

minimized with the optimizer of a `Recipe` (App. A: SGD, momentum 0.9, a decaying
learning rate; its linear shape is our choice, see recipe.py). `train` treats a `keras.Model` and
a `ntk_tf.Linearized` identically: it updates `model.trainable_weights`, calls
the model with `training=True` (a network's BatchNorm then updates its moving
statistics; a linearized model ignores the flag) and evaluates with
`training=False`.

Metrics (Sec. 3.1, Fig. 3), one row per epoch (row 0 = initialization):
  train_loss, train_acc  the full training set, evaluated in inference mode
                         at the end of the epoch (not a running minibatch
                         mean; that one is `batch_loss`).
  test_acc, test_loss    the test set, likewise (NaN without a test set).
  steps to 0.01          the optimizer step count at the end of the first
                         epoch whose `train_loss` is <= 0.01 (so it has the
                         resolution of one epoch); None if never reached.
  l2_distance            ||theta_t - theta_0||_2,
  cosine_distance        1 - <theta_t, theta_0> / (||theta_t|| ||theta_0||),
                         theta = all trainable weights flattened into one
                         vector of P numbers.
Accuracy predicts label +1 when the logit is > 0 (one logit; labels are +-1, as everywhere
in ntk_tf), or the class argmax_a f_a (C logits).

Outputs under `workdir`: `metrics.csv` (the history), `tensorboard/`
(scalars per epoch, x axis = step), `checkpoints/epoch_XXXX.weights.h5` at the
requested epochs (0 = initialization), and `state/`, the state after the last
finished epoch. If `state/` exists when `train` starts, the run resumes from
it (same recipe, seed and data size are required) and ends with the same
weights as an uninterrupted run. Every file is replaced atomically
(`ntk_tf.atomic`; `state/` as a whole folder), so a run killed at any point
resumes to the bit-identical result of an uninterrupted one.

Divergence: `train` refuses NaN/inf weights and raises FloatingPointError
(naming the epoch, step and loss) at the end of an epoch whose loss became
NaN/inf; the state of the last finite epoch stays on disk.

Determinism: epoch e visits the samples in the order
`np.random.default_rng([seed, e]).permutation(N)`; the weights come from the
model passed in. Two runs with the same seed on the same machine give identical
weights on CPU (on GPU, also call `tf.config.experimental.enable_op_determinism()`).

Shapes: x `[N, ...]`, y `[N]` in {-1, +1} with logits `[N, 1]`, or class labels y `[N]` in
{0, ..., C - 1} with logits `[N, C]`.
"""

import csv
import dataclasses
import io
import json
import math
import pathlib
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from absl import logging
import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from ntk_tf import atomic
from ntk_tf import primal_cache as primal_cache_lib
from ntk_tf import train_step as train_step_lib
from ntk_tf.recipe import PAPER_SGD
from ntk_tf.recipe import Recipe
from ntk_tf.types import Array
from ntk_tf.validation import check_finite_weights

# Bytes of inputs per `make_train_loop` call: the steps of an epoch run in
# calls of K = _SLAB_BYTES // (bytes per batch) steps (at least 1).
_SLAB_BYTES = 64 << 20

HISTORY_FIELDS = ("epoch", "step", "learning_rate", "batch_loss", "train_loss", "train_acc",
                  "test_loss", "test_acc", "l2_distance", "cosine_distance", "seconds")


# ----------------------------------------------------------------------------
# Pure metric functions.

def steps_to_threshold(losses: Sequence[float], steps: Sequence[int],
                       threshold: float = 0.01) -> Optional[int]:
  """Returns the first step whose loss is <= threshold, or None (Fig. 3).

      steps_to_threshold = min { steps[k] : losses[k] <= threshold }

  Args:
    losses: `[K]` training losses, in time order.
    steps: `[K]` the step count at which each loss was measured.
    threshold: e.g. 0.01.
  """
  if len(losses) != len(steps):
    raise ValueError(f"losses and steps must have equal lengths. Received: {len(losses)} and {len(steps)}")
  for loss, step in zip(losses, steps):
    if loss <= threshold:
      return int(step)
  return None


def _flatten(theta: Sequence[Array]) -> np.ndarray:
  """All arrays of `theta` as one float64 vector, `[P]`."""
  if len(theta) == 0:
    raise ValueError("theta must hold at least one array. Received: []")
  return np.concatenate([np.asarray(t, np.float64).ravel() for t in theta])  # [P]


def _check_pair(theta_a: Sequence[Array], theta_b: Sequence[Array]) -> None:
  shapes_a = [np.shape(t) for t in theta_a]
  shapes_b = [np.shape(t) for t in theta_b]
  if shapes_a != shapes_b:
    raise ValueError(f"theta_a and theta_b must have equal shapes. Received: {shapes_a} and {shapes_b}")


def l2_distance(theta_a: Sequence[Array], theta_b: Sequence[Array]) -> float:
  """Returns ||theta_a - theta_b||_2 over all parameters flattened (Fig. 3)."""
  _check_pair(theta_a, theta_b)
  return float(np.linalg.norm(_flatten(theta_a) - _flatten(theta_b)))


def cosine_distance(theta_a: Sequence[Array], theta_b: Sequence[Array]) -> float:
  """Returns 1 - <theta_a, theta_b> / (||theta_a|| ||theta_b||) (Fig. 3); in [0, 2]."""
  _check_pair(theta_a, theta_b)
  a, b = _flatten(theta_a), _flatten(theta_b)
  norms = np.linalg.norm(a) * np.linalg.norm(b)
  if norms == 0:
    raise ValueError("cosine_distance is undefined for a zero vector. Received a zero theta.")
  return float(1.0 - np.dot(a, b) / norms)


# ----------------------------------------------------------------------------
# Optimizer and steps.

def learning_rate_schedule(recipe: Recipe, total_steps: int):
  """Returns eta(k): eta_0 (1 - k / T) for "linear_decay" (0 at k = T), eta_0 for "constant"."""
  if recipe.schedule == "constant":
    return recipe.learning_rate
  return keras.optimizers.schedules.PolynomialDecay(
      initial_learning_rate=recipe.learning_rate, decay_steps=total_steps,
      end_learning_rate=0.0, power=1.0)


def make_optimizer(recipe: Recipe, total_steps: int) -> keras.optimizers.Optimizer:
  """Returns the recipe's optimizer with its learning-rate schedule over `total_steps`."""
  lr = learning_rate_schedule(recipe, total_steps)
  if recipe.optimizer == "sgd":
    return keras.optimizers.SGD(learning_rate=lr, momentum=recipe.momentum)
  return keras.optimizers.Adam(learning_rate=lr)


def _evaluate(eval_step, x: np.ndarray, targets: np.ndarray, batch_size: int,
              dtype) -> Dict[str, float]:
  """Mean loss and accuracy over all of (x, targets)."""
  loss_sum, correct = 0.0, 0.0
  for start in range(0, len(x), batch_size):
    xb = tf.constant(x[start:start + batch_size], dtype)
    yb = tf.constant(targets[start:start + batch_size], dtype)
    l, c = eval_step(xb, yb)
    loss_sum += float(l)
    correct += float(c)
  return {"loss": loss_sum / len(x), "acc": correct / len(x)}


# ----------------------------------------------------------------------------
# Results and the state of a run.

@dataclasses.dataclass
class TrainResult:
  """What `train` measured.

  Attributes:
    history: one dict per epoch (keys `HISTORY_FIELDS`), row 0 = initialization.
    recipe: the recipe used.
    seed: the shuffling seed.
  """
  history: List[Dict[str, float]]
  recipe: Recipe
  seed: int

  def steps_to_loss(self, threshold: Optional[float] = None) -> Optional[int]:
    """The step count at the end of the first epoch with train_loss <= threshold (default: the recipe's)."""
    threshold = self.recipe.loss_threshold if threshold is None else threshold
    return steps_to_threshold([r["train_loss"] for r in self.history],
                              [r["step"] for r in self.history], threshold)

  @property
  def final(self) -> Dict[str, float]:
    """The last row of the history (train/test metrics and distances after training)."""
    return dict(self.history[-1])

  @property
  def l2_distance(self) -> float:
    """||theta_T - theta_0||_2."""
    return self.history[-1]["l2_distance"]

  @property
  def cosine_distance(self) -> float:
    """1 - cos(theta_T, theta_0)."""
    return self.history[-1]["cosine_distance"]


def _write_scalar(tag: str, value: float, step: int) -> None:
  """Writes a TensorBoard scalar with core TF only (`tf.summary.scalar` needs the tensorboard package)."""
  metadata = summary_pb2.SummaryMetadata()
  metadata.plugin_data.plugin_name = "scalars"  # what TensorBoard's scalar dashboard reads
  tf.summary.write(tag, tf.constant(value, tf.float32), step=step,
                   metadata=metadata.SerializeToString())


def _write_csv(path: pathlib.Path, history: List[Dict[str, float]]) -> None:
  """Atomically replaces `path` by the history as CSV (`ntk_tf.atomic`)."""
  text = io.StringIO(newline="")
  writer = csv.DictWriter(text, fieldnames=HISTORY_FIELDS)
  writer.writeheader()
  writer.writerows(history)
  atomic.write_text(path, text.getvalue())


def _savez_bytes(arrays: Sequence[np.ndarray]) -> bytes:
  """The bytes `np.savez(path, *arrays)` writes (keys arr_0, arr_1, ...)."""
  buffer = io.BytesIO()
  np.savez(buffer, *arrays)
  return buffer.getvalue()


def _save_state(state_dir: pathlib.Path, model, optimizer, theta0, history, meta) -> None:
  """Replaces `state_dir` by the state after an epoch, as a whole (`atomic.replace_dir`).

  weights.npz, optimizer.npz (with the step count, hence the learning-rate
  schedule's position), theta0.npz and state.json are written into a new
  folder, fsynced and renamed onto `state_dir`: a kill leaves the complete
  previous state or the complete new one. The minibatch order needs no state:
  epoch e's order is seeded by (seed, e).
  """
  files = {"weights.npz": _savez_bytes(model.get_weights()),
           "optimizer.npz": _savez_bytes([v.numpy() for v in optimizer.variables]),
           "theta0.npz": _savez_bytes(theta0),
           "state.json": atomic.json_text({"meta": meta, "history": history}).encode()}

  def fill(folder: pathlib.Path) -> None:
    for name, data in files.items():
      (folder / name).write_bytes(data)  # Mode 0666 & ~umask, fsynced by replace_dir.

  atomic.replace_dir(state_dir, fill)


def history_from_json(history: List[Dict[str, Any]]) -> List[Dict[str, float]]:
  """A history read back from JSON: NaN again where `atomic.json_text` wrote null (NaN, inf)."""
  return [{key: math.nan if value is None else value for key, value in row.items()}
          for row in history]


def _load_state(state_dir: pathlib.Path) -> Optional[Dict]:
  """The state `_save_state` wrote in `state_dir` (after `atomic.recover_dir`), or None."""
  atomic.recover_dir(state_dir)
  if not (state_dir / "state.json").is_file():
    return None
  saved = json.loads((state_dir / "state.json").read_text())
  saved["history"] = history_from_json(saved["history"])
  for name in ("weights", "optimizer", "theta0"):
    with np.load(state_dir / f"{name}.npz") as data:
      saved[name] = [data[f"arr_{i}"] for i in range(len(data.files))]
  return saved


def _save_weights(model: keras.Model, path: pathlib.Path) -> None:
  """`model.save_weights(path)`, atomically: a kill leaves the old file or the new one."""
  with tempfile.TemporaryDirectory() as folder:
    tmp = pathlib.Path(folder) / path.name
    model.save_weights(str(tmp))
    atomic.write_bytes(path, tmp.read_bytes())


def _check_finite_losses(losses: np.ndarray, epoch: int, first_step: int,
                         recipe: Recipe) -> None:
  """Raises FloatingPointError naming the first NaN/inf minibatch loss of an epoch."""
  bad = np.flatnonzero(~np.isfinite(losses))
  if bad.size:
    k = int(bad[0])
    raise FloatingPointError(
        f"train: the loss became {losses[k]} at epoch {epoch}, step {first_step + k + 1}; "
        f"training diverged. Try a smaller learning rate. "
        f"Received: recipe.learning_rate={recipe.learning_rate}")


# ----------------------------------------------------------------------------
# Training.

def _check_settings(recipe: Recipe, seed: int, checkpoint_epochs: Sequence[int],
                    workdir: Optional[str]) -> List[int]:
  """Returns the checkpoint epochs, sorted and distinct; raises ValueError naming a bad setting."""
  if not isinstance(recipe, Recipe):
    raise ValueError(f"recipe must be a ntk_tf.Recipe. Received: recipe={recipe!r}")
  if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
    raise ValueError(f"seed must be a non-negative int. Received: seed={seed!r}")
  checkpoint_epochs = sorted(set(int(e) for e in checkpoint_epochs))
  if any(e < 0 or e > recipe.epochs for e in checkpoint_epochs):
    raise ValueError(f"checkpoint_epochs must lie in [0, {recipe.epochs}]. "
                     f"Received: checkpoint_epochs={checkpoint_epochs}")
  if checkpoint_epochs and workdir is None:
    raise ValueError(f"checkpoint_epochs needs a workdir. Received: workdir=None, "
                     f"checkpoint_epochs={checkpoint_epochs}")
  return checkpoint_epochs


def _checked_examples(x: Array, y: Optional[Array], name: str,
                      num_outputs: int) -> Tuple[np.ndarray, np.ndarray]:
  """x_<name> as an array `[N, ...]` and the targets `[N, C]` of its labels y_<name>.

  Raises ValueError if y is missing, holds a bad label (`train_step.targets_of`), or is not as
  long as x, naming it."""
  if y is None:
    raise ValueError(f"x_{name} needs its labels y_{name}. Received: y_{name}=None")
  x = np.asarray(x)
  targets = train_step_lib.targets_of(y, num_outputs, f"y_{name}")  # [N, C]
  if len(x) != len(targets):
    raise ValueError(f"x_{name} and y_{name} must have equal lengths. "
                     f"Received: {len(x)} and {len(targets)}")
  return x, targets


class _TrainingRun:
  """One run of `train`: its optimizer, theta_0 and history, and its files under `workdir`.

  Made from the `state/` a killed run left, if any; `run_epoch` runs an epoch's
  steps, `record` appends its row to the history and writes the files.
  """

  def __init__(self, model: keras.Model, recipe: Recipe, seed: int, workdir: Optional[str],
               checkpoint_epochs: List[int], train_set: Tuple[np.ndarray, np.ndarray],
               test_set: Optional[Tuple[np.ndarray, np.ndarray]]):
    self.model, self.recipe, self.seed, self.workdir = model, recipe, seed, workdir
    self.checkpoint_epochs = checkpoint_epochs
    self.train_set, self.test_set = train_set, test_set  # (x [N, ...], targets [N, C])
    self.dtype = tf.as_dtype(model.compute_dtype)
    x_train = train_set[0]
    num_train = len(x_train)
    self.steps_per_epoch = recipe.steps_per_epoch(num_train)
    self.batch = min(recipe.batch_size, num_train)
    self.optimizer = make_optimizer(recipe, self.steps_per_epoch * recipe.epochs)
    self.params = model.trainable_weights
    self.optimizer.build(self.params)
    example_bytes = int(np.prod(x_train.shape[1:])) * self.dtype.size
    self.steps_per_call = max(1, min(self.steps_per_epoch,
                                     _SLAB_BYTES // max(1, self.batch * example_bytes)))
    self.eval_step = train_step_lib.make_eval_step(model)
    self.meta = {"recipe": recipe.to_dict(), "seed": seed, "num_train": num_train,
                 "num_weights": len(model.weights)}
    self.work = pathlib.Path(workdir) if workdir is not None else None
    self.state_dir = self.work / "state" if self.work else None
    self.history: List[Dict[str, float]] = []
    self.theta0 = [v.numpy() for v in self.params]
    self._resume()
    self.writer = None  # TensorBoard's, with a workdir
    if self.work is not None:
      self.work.mkdir(parents=True, exist_ok=True)
      for stray in self.work.glob("**/.*.tmp"):  # Temporary files of writes killed midway.
        stray.unlink()
      atomic.write_text(self.work / "recipe.json", atomic.json_text(self.meta, indent=2))
      self.writer = tf.summary.create_file_writer(str(self.work / "tensorboard"))

  def _resume(self) -> None:
    """Restores the weights, optimizer, theta_0 and history from `state/`, if there is one."""
    saved = _load_state(self.state_dir) if self.state_dir is not None else None
    if saved is None:
      return
    if saved["meta"] != self.meta:
      raise ValueError(f"workdir {self.workdir} holds a run with different settings; use a new "
                       f"workdir. Saved: {saved['meta']}. Received: {self.meta}")
    self.model.set_weights(saved["weights"])
    for v, value in zip(self.optimizer.variables, saved["optimizer"]):
      v.assign(value)
    self.theta0 = saved["theta0"]
    self.history = saved["history"]
    logging.info("Resuming %s after epoch %d.", self.workdir, self.history[-1]["epoch"])

  def run_epoch(self, epoch: int, train_loop: Callable,
                cache: Optional[primal_cache_lib.PrimalCache], progress: bool) -> np.ndarray:
    """Runs epoch `epoch`'s steps; returns their minibatch losses `[steps_per_epoch]` float64
    (FloatingPointError at the first NaN/inf one)."""
    x_train, t_train = self.train_set
    order = np.random.default_rng([self.seed, epoch]).permutation(len(x_train))  # [N]
    bar = keras.utils.Progbar(self.steps_per_epoch, verbose=1) if progress else None
    losses = []  # [K] loss tensors per call, read once at the end of the epoch.
    for first in range(0, self.steps_per_epoch, self.steps_per_call):
      last = min(first + self.steps_per_call, self.steps_per_epoch)
      idx = order[first * self.batch:last * self.batch]  # [K*B], K = last - first steps in one call
      cache_indices = () if cache is None else (tf.constant(idx, tf.int32),)
      losses.append(train_loop(tf.constant(x_train[idx], self.dtype),
                               tf.constant(t_train[idx], self.dtype), *cache_indices))
      if bar is not None:
        bar.update(last, values=[("loss", float(np.mean(losses[-1].numpy())))])
    batch_losses = np.concatenate([l.numpy() for l in losses]).astype(np.float64)  # [steps_per_epoch]
    _check_finite_losses(batch_losses, epoch, (epoch - 1) * self.steps_per_epoch, self.recipe)
    return batch_losses

  def record(self, epoch: int, batch_loss: float, seconds: float) -> None:
    """Appends epoch `epoch`'s row (0: initialization) to the history; writes the files."""
    row = self._row(epoch, batch_loss, seconds)
    self.history.append(row)
    logging.info("epoch %d step %d: train loss %.4g acc %.4f, test acc %.4f, l2 %.4g, cos %.4g",
                 epoch, row["step"], row["train_loss"], row["train_acc"], row["test_acc"],
                 row["l2_distance"], row["cosine_distance"])
    if self.work is None:
      return
    with self.writer.as_default(step=row["step"]):
      for key in HISTORY_FIELDS[2:]:
        _write_scalar(key, row[key], row["step"])
    self.writer.flush()
    _write_csv(self.work / "metrics.csv", self.history)
    if epoch in self.checkpoint_epochs:
      _save_weights(self.model, self.work / "checkpoints" / f"epoch_{epoch:04d}.weights.h5")
    _save_state(self.state_dir, self.model, self.optimizer, self.theta0, self.history, self.meta)

  def _row(self, epoch: int, batch_loss: float, seconds: float) -> Dict[str, float]:
    """The metrics now (`HISTORY_FIELDS`); FloatingPointError if the last step diverged."""
    recipe, dtype, optimizer = self.recipe, self.dtype, self.optimizer
    x_train, t_train = self.train_set
    train_metrics = _evaluate(self.eval_step, x_train, t_train, recipe.eval_batch_size, dtype)
    if epoch > 0 and not math.isfinite(train_metrics["loss"]):  # The last step diverged.
      _check_finite_losses(np.array([train_metrics["loss"]]), epoch,
                           int(optimizer.iterations.numpy()) - 1, recipe)
    test_metrics = ({"loss": math.nan, "acc": math.nan} if self.test_set is None else
                    _evaluate(self.eval_step, *self.test_set, recipe.eval_batch_size, dtype))
    theta = [v.numpy() for v in self.params]
    step = int(optimizer.iterations.numpy())
    return {
        "epoch": epoch, "step": step, "learning_rate": float(optimizer.learning_rate),
        "batch_loss": batch_loss, "train_loss": train_metrics["loss"],
        "train_acc": train_metrics["acc"], "test_loss": test_metrics["loss"],
        "test_acc": test_metrics["acc"], "l2_distance": l2_distance(theta, self.theta0),
        "cosine_distance": cosine_distance(theta, self.theta0), "seconds": seconds,
    }


def train(model: keras.Model, x_train: Array, y_train: Array, *,
          x_test: Optional[Array] = None, y_test: Optional[Array] = None,
          recipe: Recipe = PAPER_SGD, seed: int = 0, workdir: Optional[str] = None,
          checkpoint_epochs: Sequence[int] = (), progress: bool = True,
          primal_cache: bool = True) -> TrainResult:
  """Trains `model` in place with `recipe` and returns its per-epoch metrics.

      theta_{k+1} = optimizer step on mean_{i in batch_k} loss(f(x_i; theta_k), y_i)

  Works identically for a network and its `ntk_tf.linearize`d model.

  Args:
    model: a built Keras model, `[N, ...] -> [N, C]` logits (C = 1: the paper's).
    x_train: `[N, ...]` inputs (cast to the model's compute dtype).
    y_train: `[N]` labels in {-1, +1} (C = 1), or classes in {0, ..., C - 1}.
    x_test, y_test: optional test set, `[M, ...]` and `[M]` labels likewise.
    recipe: hyperparameters (`ntk_tf.recipe.PAPER_SGD` by default).
    seed: shuffling seed.
    workdir: folder for metrics.csv, tensorboard/, checkpoints/ and the
      resumable state/; None keeps everything in memory.
    checkpoint_epochs: epochs after which to save the weights to
      `checkpoints/epoch_XXXX.weights.h5` (0 = before training); needs workdir.
    progress: show a progress bar per epoch.
    primal_cache: for a `Linearized` model, compute f(x_i; theta_star) and the
      other theta_star primals of the training set once and read them in
      each step (`ntk_tf.primal_cache`; same f_lin and gradients, to rounding);
      falls back to the model's own call where the cache exceeds its memory budget.
  Returns:
    A TrainResult; `steps_to_loss(0.01)`, `l2_distance`, `cosine_distance`
    and `final` give the Fig. 3 metrics.
  Paper: App. A (recipe), Sec. 3.1 and Fig. 3 (metrics).
  """
  checkpoint_epochs = _check_settings(recipe, seed, checkpoint_epochs, workdir)
  check_finite_weights(model)
  x_train = np.asarray(x_train)
  num_outputs = train_step_lib.num_logits(model, x_train)
  train_set = _checked_examples(x_train, y_train, "train", num_outputs)
  test_set = None if x_test is None else _checked_examples(x_test, y_test, "test", num_outputs)
  run = _TrainingRun(model, recipe, seed, workdir, checkpoint_epochs, train_set, test_set)
  # After a resume's set_weights; theta_star is frozen, so the cache holds for the whole run.
  cache = primal_cache_lib.for_training(model, train_set[0]) if primal_cache else None
  train_loop = train_step_lib.make_train_loop(model, run.optimizer, run.batch, primal_cache=cache)
  if not run.history:
    run.record(0, math.nan, 0.0)
  for epoch in range(run.history[-1]["epoch"] + 1, recipe.epochs + 1):
    start = time.time()
    batch_losses = run.run_epoch(epoch, train_loop, cache, progress)
    run.record(epoch, float(np.mean(batch_losses)), time.time() - start)
  return TrainResult(history=run.history, recipe=recipe, seed=seed)
