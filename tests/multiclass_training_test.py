"""Tests of training with C > 1 logits: softmax cross-entropy, one-hot targets, argmax accuracy.

Checked against NumPy: the targets and errors of `train_step.targets_of`; the loss and accuracy
`train` reports at initialization (logsumexp and argmax recomputed in float64); and the weights
after full-batch steps of a linear softmax model, recomputed with the closed-form gradient
X^T (softmax(X W + b) - T) / N and heavy-ball momentum. A `Linearized` linear model is the
model itself, so its training (through the primal cache and without) must give the same weights.
"""

from tests import test_util  # pylint: disable=unused-import  (quiet TF)

from absl.testing import absltest
from absl.testing import parameterized
import keras
import numpy as np

import ntk_tf
from ntk_tf import train_step

_C = 4


def _data(n: int = 24, d: int = 5, seed: int = 0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d))  # [N, d] float64
  classes = np.argmax(x[:, :_C] + 0.3 * rng.normal(size=(n, _C)), axis=1)  # [N] in 0..C-1
  return x, classes


def _linear_softmax(d: int = 5, seed: int = 0) -> keras.Model:
  """f(x) = x W + b, `[N, d] -> [N, C]`, float64, random b so the first step has every term."""
  floatx = keras.config.floatx()
  keras.config.set_floatx("float64")
  try:
    inputs = keras.Input((d,))
    dense = keras.layers.Dense(_C, name="logits",
                               kernel_initializer=keras.initializers.RandomNormal(seed=seed),
                               bias_initializer=keras.initializers.RandomNormal(seed=seed + 1))
    return keras.Model(inputs, dense(inputs))
  finally:
    keras.config.set_floatx(floatx)


def _softmax_ce_and_acc(logits: np.ndarray, classes: np.ndarray):
  f = logits.astype(np.float64)
  top = f.max(axis=1, keepdims=True)
  lse = (top + np.log(np.exp(f - top).sum(axis=1, keepdims=True))).ravel()  # [N]
  loss = np.mean(lse - f[np.arange(len(f)), classes])
  return loss, np.mean(np.argmax(f, axis=1) == classes)


def _numpy_sgd(w, b, x, classes, *, steps, lr, momentum):
  """Full-batch heavy-ball SGD on the mean softmax cross-entropy of f = x w + b (Keras' form)."""
  t = np.eye(_C)[classes]  # [N, C]
  mw, mb = np.zeros_like(w), np.zeros_like(b)
  for _ in range(steps):
    f = x @ w + b
    p = np.exp(f - f.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)  # softmax, [N, C]
    gw, gb = x.T @ (p - t) / len(x), (p - t).mean(axis=0)
    mw, mb = momentum * mw - lr * gw, momentum * mb - lr * gb
    w, b = w + mw, b + mb
  return w, b


class TargetsTest(parameterized.TestCase):

  def test_one_hot_rows_and_bce_targets(self):
    np.testing.assert_array_equal(train_step.targets_of(np.array([2, 0, 1]), 3),
                                  [[0, 0, 1], [1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(train_step.targets_of(np.array([-1, 1, 1]), 1), [[0], [1], [1]])

  @parameterized.parameters(
      (np.array([0, 3]), 3, r"class labels in \{0, ..., 2\}.*containing \[3\]"),
      (np.array([0.5, 1.0]), 3, r"containing \[0.5\]"),
      (np.array([0, 1]), 1, r"\{-1, \+1\} for a model with one logit.*containing \[0\]"),
      (np.zeros((2, 3)), 3, r"must be \[N\] labels.*shape=\(2, 3\)"),
  )
  def test_bad_labels_are_named(self, labels, num_outputs, message):
    with self.assertRaisesRegex(ValueError, message):
      train_step.targets_of(labels, num_outputs, "y_train")

  def test_train_names_a_label_out_of_range(self):
    x, classes = _data()
    classes[3] = _C
    with self.assertRaisesRegex(ValueError, rf"y_train must hold class labels.*\[{_C}\]"):
      ntk_tf.train(_linear_softmax(), x, classes, progress=False)


class MulticlassTrainTest(parameterized.TestCase):

  def test_initial_metrics_are_softmax_cross_entropy_and_argmax_accuracy(self):
    x, classes = _data()
    x_test, classes_test = _data(n=17, seed=1)
    model = _linear_softmax()
    recipe = ntk_tf.PAPER_SGD.replace(epochs=1, batch_size=8, eval_batch_size=5)
    result = ntk_tf.train(model, x, classes, x_test=x_test, y_test=classes_test,
                          recipe=recipe, progress=False)
    row0 = result.history[0]
    init = _linear_softmax()  # theta0 again (same seeds)
    w0, b0 = [np.asarray(v) for v in init.get_weights()]
    loss, acc = _softmax_ce_and_acc(x @ w0 + b0, classes)
    test_loss, test_acc = _softmax_ce_and_acc(x_test @ w0 + b0, classes_test)
    np.testing.assert_allclose([row0["train_loss"], row0["test_loss"]], [loss, test_loss],
                               rtol=1e-12)
    self.assertEqual((row0["train_acc"], row0["test_acc"]), (acc, test_acc))
    self.assertGreater(len({round(row0["train_acc"], 6), 0.0, 1.0}), 2)  # not a trivial 0 / 1
    final = result.history[-1]
    w1, b1 = [np.asarray(v) for v in model.get_weights()]
    loss1, acc1 = _softmax_ce_and_acc(x @ w1 + b1, classes)
    np.testing.assert_allclose(final["train_loss"], loss1, rtol=1e-12)
    self.assertEqual(final["train_acc"], acc1)

  @parameterized.parameters(("network", True), ("linearized", True), ("linearized", False))
  def test_full_batch_steps_match_numpy(self, kind, primal_cache):
    x, classes = _data()
    network = _linear_softmax()
    w0, b0 = [np.asarray(v) for v in network.get_weights()]
    model = network if kind == "network" else ntk_tf.linearize(network)
    # 0.25 and 0.5 are exact in float32, through which Keras casts both.
    recipe = ntk_tf.PAPER_SGD.replace(epochs=3, batch_size=len(x), schedule="constant",
                                      learning_rate=0.25, momentum=0.5)
    ntk_tf.train(model, x, classes, recipe=recipe, progress=False, primal_cache=primal_cache)
    w, b = _numpy_sgd(w0, b0, x, classes, steps=3, lr=0.25, momentum=0.5)
    trained = [np.asarray(v) for v in model.trainable_weights]
    if kind == "linearized":  # The trainable weights are theta; f_lin = f for a linear model.
      self.assertLen(trained, 2)
    np.testing.assert_allclose(trained[0], w, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(trained[1], b, rtol=1e-12, atol=1e-14)
    self.assertGreater(np.abs(w - w0).max(), 1e-3)  # The steps moved the weights.

  def test_trains_a_ten_logit_mlp_and_its_linearization(self):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4, 4, 1)).astype(np.float32)
    classes = rng.integers(0, 10, size=64)
    recipe = ntk_tf.PAPER_SGD.replace(epochs=30, batch_size=16, learning_rate=0.1)
    for model in (ntk_tf.models.mlp((4, 4, 1), width=32, outputs=10),
                  ntk_tf.linearize(ntk_tf.models.mlp((4, 4, 1), width=32, outputs=10))):
      history = ntk_tf.train(model, x, classes, recipe=recipe, progress=False).history
      self.assertAlmostEqual(history[0]["train_acc"], 0.1, delta=0.1)
      self.assertGreater(history[-1]["train_acc"], 0.9)  # 64 random labels, memorized
      self.assertLess(history[-1]["train_loss"], 0.5 * history[0]["train_loss"])


if __name__ == "__main__":
  absltest.main()
