"""Tests of ntk_tf.recipe and ntk_tf.training.

Metric functions are checked on hand-made histories with hand-computed values;
`train` is checked against NumPy recomputations of its reported metrics, the
closed-form learning-rate schedule, and itself across seeds and interruptions.
"""

import csv
import json
import math
import os
from unittest import mock

from tests import test_util  # pylint: disable=unused-import  (quiet TF)

from absl.testing import absltest
from absl.testing import parameterized
import keras
import numpy as np
import tensorflow as tf

import ntk_tf
from ntk_tf import recipe as recipe_lib
from ntk_tf import training

_TINY = ntk_tf.PAPER_SGD.replace(epochs=3, batch_size=16, eval_batch_size=7)


def _model(seed: int = 0) -> keras.Model:
  return ntk_tf.models.mlp((3, 3, 1), activation="tanh", width=8, seed=seed)


def _data(n: int = 40, seed: int = 0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 3, 3, 1)).astype(np.float32)
  y = np.where(x.reshape(n, -1)[:, :4].sum(axis=1) > 0, 1, -1)  # [N] in {-1, +1}
  return x, y


def _interrupted_after(epoch: int):
  """Patches `training._save_state` to raise KeyboardInterrupt once epoch `epoch` is saved."""
  save_state = training._save_state  # pylint: disable=protected-access

  def save_then_crash(state_dir, model, optimizer, theta0, history, meta):
    save_state(state_dir, model, optimizer, theta0, history, meta)
    if history[-1]["epoch"] == epoch:
      raise KeyboardInterrupt(f"simulated interruption after epoch {epoch}")

  return mock.patch.object(training, "_save_state", save_then_crash)


def _numpy_bce_and_acc(logits: np.ndarray, y: np.ndarray):
  """mean softplus(f) - t f with t = (1 + y) / 2, and accuracy of sign(f), in float64."""
  f = logits.astype(np.float64).ravel()
  t = (1 + y) / 2  # [N] in {0, 1}
  loss = np.mean(np.logaddexp(0.0, f) - t * f)
  acc = np.mean(np.where(f > 0, 1, -1) == y)
  return loss, acc


def _tensorboard_scalars(workdir: str, tag: str):
  """[(step, value)] of one scalar, read back from the event files with core TF."""
  out = []
  folder = os.path.join(workdir, "tensorboard")
  for name in sorted(os.listdir(folder)):
    for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
      for value in event.summary.value:
        if value.tag == tag:
          plugin = value.metadata.plugin_data.plugin_name
          assert plugin in ("scalars", ""), plugin
          out.append((event.step, tf.make_ndarray(value.tensor).item()))
  return out


class RecipeTest(parameterized.TestCase):

  def test_paper_values(self):
    r = ntk_tf.PAPER_SGD
    self.assertEqual((r.optimizer, r.learning_rate, r.momentum, r.schedule, r.batch_size, r.epochs),
                     ("sgd", 0.05, 0.9, "linear_decay", 128, 100))
    self.assertEqual(ntk_tf.PAPER_CIFAR2.epochs, 200)
    self.assertEqual(ntk_tf.PAPER_ADAM.optimizer, "adam")
    self.assertEqual(ntk_tf.PAPER_ADAM.batch_size, 128)

  @parameterized.parameters(
      ({"batch_size": 0}, "batch_size=0"),
      ({"optimizer": "rmsprop"}, "optimizer='rmsprop'"),
      ({"momentum": 1.0}, "momentum=1.0"),
      ({"learning_rate": -1.0}, "learning_rate=-1.0"),
      ({"epochs": 2.5}, "epochs=2.5"),
      ({"schedule": "cosine"}, "schedule='cosine'"),
      ({"lr": 0.1}, "'lr'"),
  )
  def test_bad_overrides_name_the_value(self, overrides, message):
    with self.assertRaisesRegex(ValueError, message):
      ntk_tf.PAPER_SGD.replace(**overrides)

  def test_steps_per_epoch_drops_incomplete_batch(self):
    self.assertEqual(ntk_tf.PAPER_SGD.steps_per_epoch(50000), 390)  # floor(50000 / 128)
    self.assertEqual(ntk_tf.PAPER_SGD.steps_per_epoch(40), 1)

  def test_linear_decay_schedule(self):
    schedule = training.learning_rate_schedule(ntk_tf.PAPER_SGD, total_steps=10)
    for k in (0, 3, 10):
      self.assertAlmostEqual(float(schedule(k)), 0.05 * (1 - k / 10), places=7)
    self.assertEqual(training.learning_rate_schedule(_TINY.replace(schedule="constant"), 10), 0.05)


class MetricTest(absltest.TestCase):

  def test_steps_to_threshold(self):
    losses = [0.7, 0.05, 0.01, 0.002, 0.02]
    steps = [0, 390, 780, 1170, 1560]
    self.assertEqual(training.steps_to_threshold(losses, steps, 0.01), 780)  # reached = "<="
    self.assertEqual(training.steps_to_threshold(losses, steps, 0.005), 1170)
    self.assertIsNone(training.steps_to_threshold(losses, steps, 0.001))
    self.assertEqual(training.steps_to_threshold(losses, steps, 1.0), 0)
    with self.assertRaisesRegex(ValueError, "equal lengths"):
      training.steps_to_threshold(losses, steps[:2])

  def test_distances_on_hand_made_weight_history(self):
    # theta_0 and two later points, each two arrays (flattened: 3 numbers).
    theta_0 = [np.array([1.0, 2.0]), np.array([[2.0]])]  # |theta_0| = 3
    theta_orthogonal = [np.array([2.0, 1.0]), np.array([[-2.0]])]  # <., theta_0> = 0
    theta_scaled = [np.array([3.0, 6.0]), np.array([[6.0]])]  # 3 theta_0
    self.assertAlmostEqual(training.l2_distance(theta_orthogonal, theta_0), np.sqrt(1 + 1 + 16))
    self.assertAlmostEqual(training.cosine_distance(theta_orthogonal, theta_0), 1.0)
    self.assertAlmostEqual(training.l2_distance(theta_scaled, theta_0), 6.0)
    self.assertAlmostEqual(training.cosine_distance(theta_scaled, theta_0), 0.0)
    self.assertAlmostEqual(training.cosine_distance([-t for t in theta_0], theta_0), 2.0)
    history = [{"epoch": e, "step": 5 * e, "train_loss": loss}
               for e, loss in enumerate([0.69, 0.2, 0.009, 0.001])]
    result = training.TrainResult(history=history, recipe=_TINY, seed=0)
    self.assertEqual(result.steps_to_loss(0.01), 10)
    self.assertEqual(result.steps_to_loss(), 10)  # recipe.loss_threshold = 0.01
    with self.assertRaisesRegex(ValueError, "shapes"):
      training.l2_distance(theta_0, theta_0[:1])


class TrainTest(parameterized.TestCase):

  def test_metrics_files_and_checkpoints(self):
    model = _model()
    theta_0 = [v.numpy() for v in model.trainable_weights]
    x, y = _data()
    x_test, y_test = _data(12, seed=1)
    workdir = self.create_tempdir().full_path
    result = ntk_tf.train(model, x, y, x_test=x_test, y_test=y_test, recipe=_TINY, seed=3,
                          workdir=workdir, checkpoint_epochs=(0, 3), progress=False)
    self.assertEqual([r["epoch"] for r in result.history], [0, 1, 2, 3])
    self.assertEqual([r["step"] for r in result.history], [0, 2, 4, 6])  # floor(40 / 16) = 2
    self.assertAlmostEqual(result.history[-1]["learning_rate"], 0.0)  # linear decay to 0
    # Reported metrics = NumPy recomputation from the final weights.
    theta_t = [v.numpy() for v in model.trainable_weights]
    flat_t = np.concatenate([t.ravel() for t in theta_t]).astype(np.float64)
    flat_0 = np.concatenate([t.ravel() for t in theta_0]).astype(np.float64)
    self.assertAlmostEqual(result.l2_distance, np.linalg.norm(flat_t - flat_0), places=5)
    self.assertAlmostEqual(
        result.cosine_distance,
        1 - flat_t @ flat_0 / (np.linalg.norm(flat_t) * np.linalg.norm(flat_0)), places=6)
    self.assertGreater(result.l2_distance, 1e-3)
    loss, acc = _numpy_bce_and_acc(model.predict(x, verbose=0), y)
    self.assertAlmostEqual(result.final["train_loss"], loss, places=5)
    self.assertAlmostEqual(result.final["train_acc"], acc)
    _, test_acc = _numpy_bce_and_acc(model.predict(x_test, verbose=0), y_test)
    self.assertAlmostEqual(result.final["test_acc"], test_acc)
    self.assertLess(result.final["train_loss"], result.history[0]["train_loss"])
    # Files.
    with open(os.path.join(workdir, "metrics.csv")) as f:
      rows = list(csv.DictReader(f))
    self.assertLen(rows, 4)
    self.assertAlmostEqual(float(rows[-1]["l2_distance"]), result.l2_distance, places=6)
    self.assertEqual(_tensorboard_scalars(workdir, "train_loss"),
                     [(r["step"], np.float32(r["train_loss"])) for r in result.history])
    restored = _model(seed=9)
    restored.load_weights(os.path.join(workdir, "checkpoints", "epoch_0000.weights.h5"))
    for a, b in zip(restored.trainable_weights, theta_0):
      np.testing.assert_array_equal(a.numpy(), b)
    self.assertTrue(os.path.isfile(os.path.join(workdir, "checkpoints", "epoch_0003.weights.h5")))

  def test_deterministic_per_seed(self):
    x, y = _data()
    finals = []
    for seed in (5, 5, 6):
      model = _model()
      ntk_tf.train(model, x, y, recipe=_TINY, seed=seed, progress=False)
      finals.append(model.get_weights())
    for a, b in zip(finals[0], finals[1]):
      np.testing.assert_array_equal(a, b)
    self.assertFalse(all(np.array_equal(a, b) for a, b in zip(finals[0], finals[2])))

  def test_resume_after_interruption_matches_uninterrupted_run(self):
    x, y = _data()
    recipe = _TINY.replace(epochs=4, optimizer="adam", learning_rate=0.01)
    full = _model()
    full_result = ntk_tf.train(full, x, y, recipe=recipe, seed=1, progress=False)

    workdir = self.create_tempdir().full_path
    with _interrupted_after(2):
      with self.assertRaises(KeyboardInterrupt):
        ntk_tf.train(_model(), x, y, recipe=recipe, seed=1, workdir=workdir, progress=False)
    resumed = _model(seed=4)  # different initial weights: all state must come from workdir
    result = ntk_tf.train(resumed, x, y, recipe=recipe, seed=1, workdir=workdir, progress=False)
    for a, b in zip(resumed.get_weights(), full.get_weights()):
      np.testing.assert_array_equal(a, b)
    self.assertEqual([r["step"] for r in result.history], [r["step"] for r in full_result.history])
    self.assertEqual(result.l2_distance, full_result.l2_distance)
    with self.assertRaisesRegex(ValueError, "different settings"):
      ntk_tf.train(_model(), x, y, recipe=recipe.replace(epochs=5), seed=1, workdir=workdir,
                   progress=False)

  def test_json_files_are_strict_and_a_resume_keeps_their_nans(self):
    # Without test data the test metrics are NaN, and so is row 0's batch loss.
    x, y = _data()
    recipe = _TINY.replace(epochs=2)
    full = ntk_tf.train(_model(), x, y, recipe=recipe, seed=1, progress=False)
    workdir = self.create_tempdir().full_path
    with _interrupted_after(1):
      with self.assertRaises(KeyboardInterrupt):
        ntk_tf.train(_model(), x, y, recipe=recipe, seed=1, workdir=workdir, progress=False)

    def refuse(constant):  # What a strict JSON parser does with NaN / Infinity.
      raise ValueError(f"bare {constant} in JSON")

    for name in ("recipe.json", os.path.join("state", "state.json")):
      with open(os.path.join(workdir, name)) as f:
        json.loads(f.read(), parse_constant=refuse)
    resumed = ntk_tf.train(_model(), x, y, recipe=recipe, seed=1, workdir=workdir,
                           progress=False)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    self.assertTrue(math.isnan(resumed.history[0]["batch_loss"]))
    np.testing.assert_equal(strip(resumed.history), strip(full.history))  # NaN == NaN here

  def test_trains_linearized_model(self):
    model = _model()
    lin = ntk_tf.linearize(model)
    frozen = [v.numpy() for v in lin.network.weights]
    x, y = _data()
    result = ntk_tf.train(lin, x, y, recipe=_TINY, progress=False)
    for a, v in zip(frozen, lin.network.weights):
      np.testing.assert_array_equal(v.numpy(), a)
    diff = np.concatenate([(t.numpy() - o.numpy()).ravel() for t, o in zip(lin.theta, lin.theta_origin)])
    self.assertGreater(result.l2_distance, 1e-3)
    self.assertAlmostEqual(result.l2_distance, np.linalg.norm(diff.astype(np.float64)), places=5)
    loss, _ = _numpy_bce_and_acc(lin.predict(x, verbose=0), y)
    self.assertAlmostEqual(result.final["train_loss"], loss, places=5)

  def test_bad_arguments(self):
    x, y = _data()
    with self.assertRaisesRegex(ValueError, r"y_train must hold labels in \{-1, \+1\}.*\[0\]"):
      ntk_tf.train(_model(), x, (y + 1) // 2, recipe=_TINY, progress=False)  # {0, 1} labels
    with self.assertRaisesRegex(ValueError, "workdir=None"):
      ntk_tf.train(_model(), x, y, recipe=_TINY, checkpoint_epochs=(1,), progress=False)
    with self.assertRaisesRegex(ValueError, "checkpoint_epochs"):
      ntk_tf.train(_model(), x, y, recipe=_TINY, checkpoint_epochs=(9,), workdir="/tmp/x",
                   progress=False)
    with self.assertRaisesRegex(ValueError, "recipe="):
      ntk_tf.train(_model(), x, y, recipe={"epochs": 1}, progress=False)

  def test_refuses_nan_weights_by_name(self):
    x, y = _data()
    model = _model()
    variable = model.trainable_weights[0]
    variable.assign(np.full(variable.shape, np.nan, np.float32))
    with self.assertRaisesRegex(ValueError, f"non-finite weights.*{variable.path}"):
      ntk_tf.train(model, x, y, recipe=_TINY, progress=False)

  def test_diverging_loss_stops_with_a_clear_error(self):
    x, y = _data()
    workdir = self.create_tempdir().full_path  # Last-layer weights ~1e38: logits overflow.
    recipe = _TINY.replace(learning_rate=1e38)
    with self.assertRaisesRegex(FloatingPointError,
                                r"loss became (nan|inf) at epoch (\d), step \d+; .*smaller "
                                r"learning rate.*learning_rate=1e\+38") as caught:
      ntk_tf.train(_model(), x, y, recipe=recipe, workdir=workdir, progress=False)
    bad_epoch = int(caught.exception.args[0].split("at epoch ")[1].split(",")[0])
    with open(os.path.join(workdir, "state", "state.json")) as f:
      history = json.load(f)["history"]
    self.assertEqual([r["epoch"] for r in history], list(range(bad_epoch)))  # Finite epochs.
    self.assertTrue(all(np.isfinite(r["train_loss"]) for r in history))


if __name__ == "__main__":
  absltest.main()
