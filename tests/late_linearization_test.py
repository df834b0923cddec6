"""Tests of the late-linearization experiment (ntk_tf/experiments/late_linearization.py)."""

import math
import os
import pathlib
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl.testing import absltest
from absl.testing import parameterized
import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from binaries import late_linearization as late_linearization_main
from configs import late_linearization as ll_config
from ntk_tf.experiments import late_linearization
from ntk_tf.experiments import pipeline
from tests import ntk_reference
from tests import test_util


class ValidationTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("unknown_model", "model", "vgg", "vgg"),
      ("zero_index", "eigenfunction_index", 0, "eigenfunction_index=0"),
      ("index_beyond_samples", "eigenfunction_index", 49, "eigenfunction_index=49"),
      ("empty_pretrain", "pretrain_epochs", (), "pretrain_epochs"),
      ("pretrain_past_end", "pretrain_epochs", (0, 3), "pretrain_epochs"),
      ("bad_dataset", "dataset", "imagenet", "imagenet"),
      ("bad_gram_dtype", "gram.dtype", "float16", "float16"),
  )
  def test_bad_value_is_named(self, field, value, fragment):
    config = ll_config.get_config("smoke")
    parent, _, name = field.rpartition(".")
    (config[parent] if parent else config)[name] = value
    with self.assertRaisesRegex(ValueError, fragment):
      late_linearization.settings_from_config(config)

  def test_every_variant_validates(self):
    for variant in ll_config.VARIANTS:
      late_linearization.settings_from_config(ll_config.get_config(variant))


  def test_forms_field(self):
    config = ll_config.get_config("smoke")
    self.assertEqual(late_linearization.settings_from_config(config).forms, ("unbiased", "offset"))
    config.late_linearization_forms = ("offset",)
    self.assertEqual(late_linearization.settings_from_config(config).forms, ("offset",))
    config.late_linearization_forms = ("biased",)
    with self.assertRaisesRegex(ValueError, "late_linearization_forms"):
      late_linearization.settings_from_config(config)


def _bn_model(seed: int) -> keras.Model:
  """Dense -> BatchNorm -> tanh -> Dense, float64, [N, 3] -> [N, 1]."""
  keras.utils.set_random_seed(seed)
  with ntk_reference.floatx("float64"):
    inputs = keras.Input((3,))
    h = keras.layers.BatchNormalization()(keras.layers.Dense(4)(inputs))
    return keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Activation("tanh")(h)))


class LinearizeAtTest(parameterized.TestCase):
  """linearize_at against a hand-built hybrid point and per-sample tape gradients."""

  @parameterized.parameters("unbiased", "offset")
  def test_kernel_of_theta_t_with_batch_norm_at_init(self, form):
    model0 = _bn_model(0)
    rng = np.random.default_rng(1)
    # theta_t: every weight moved, BN gamma/beta and moving statistics included.
    theta_t = pipeline.clone_with_weights(
        model0, [w + rng.uniform(0.1, 0.5, w.shape) for w in model0.get_weights()])
    x = rng.normal(size=(5, 3)).astype(np.float32).astype(np.float64)  # exact in either policy
    # The point App. B expands at: theta_t's weights, BatchNorm's (all four) from theta0.
    bn_ids = {id(v) for layer in model0.layers if isinstance(layer, keras.layers.BatchNormalization)
              for v in layer.weights}
    hybrid = pipeline.clone_with_weights(model0, [
        w0 if id(v) in bn_ids else wt
        for v, w0, wt in zip(model0.weights, model0.get_weights(), theta_t.get_weights())])
    lin = late_linearization.linearize_at(model0, theta_t, form)
    # theta starts at theta0: f_lin = [f(x; hybrid)].
    f_hybrid = hybrid(x, training=False).numpy()  # [5, 1]
    start = f_hybrid if form == "offset" else np.zeros_like(f_hybrid)
    np.testing.assert_allclose(lin(x).numpy(), start, rtol=1e-12, atol=1e-14)
    # A step dtheta: f_lin moves by J(x; hybrid) dtheta, J from per-sample tape gradients.
    steps = [rng.normal(size=v.shape) for v in lin.theta]
    for v, step in zip(lin.theta, steps):
      v.assign(v + step)
    params = [v for v in hybrid.weights if v.trainable]
    self.assertLen(params, len(steps))
    moved = []
    for i in range(len(x)):
      with tf.GradientTape() as tape:
        out = hybrid(x[i:i + 1], training=False)[0, 0]
      grads = tape.gradient(out, params)
      moved.append(sum(np.sum(g.numpy() * s) for g, s in zip(grads, steps)))
    np.testing.assert_allclose(lin(x).numpy()[:, 0] - start[:, 0], moved, rtol=1e-10)

  def test_unknown_form(self):
    model0 = _bn_model(0)
    with self.assertRaisesRegex(ValueError, "form='biased'"):
      late_linearization.linearize_at(model0, model0, "biased")


class SmokeTest(absltest.TestCase):

  def test_binary_smoke_then_rerun(self):
    workdir = pathlib.Path(self.create_tempdir().full_path)
    data_dir = test_util.run_binary_main(self, late_linearization_main,
                                         "configs/late_linearization.py:smoke", str(workdir))
    for name in ("config.json", "settings.json", "results.csv", "fig8_training.png", "fig9_pretraining.png"):
      self.assertTrue((workdir / name).is_file(), name)
    table = (workdir / "results.csv").read_text()
    rows = {r["run"]: r for r in pd.read_csv(workdir / "results.csv").to_dict("records")}
    self.assertEqual(set(rows), {"network", "unbiased_t0000", "unbiased_t0001", "offset_t0000",
                                 "offset_t0001", "linear_star"})
    self.assertEqual({r["form"] for r in rows.values() if r["kind"] == "linear_pretrained"},
                     {"unbiased", "offset"})
    self.assertBetween(rows["network"]["overlap"], 0.0, 1.0)
    for row in rows.values():
      self.assertBetween(row["test_acc"], 0.0, 1.0)
      self.assertGreater(row["l2_distance"], 0.0)

    def history(name):
      return pd.read_csv(workdir / "runs" / name / "metrics.csv")

    net = history("network")
    # Closed forms at the start of each linear run (theta = theta0 there):
    # offset: f_lin = f(x; theta_t), its loss the network's after t epochs (no BatchNorm);
    # unbiased: f_lin = 0, i.e. BCE = log 2, whatever t.
    self.assertAlmostEqual(history("offset_t0000")["train_loss"][0], net["train_loss"][0], places=5)
    self.assertAlmostEqual(history("offset_t0001")["train_loss"][0], net["train_loss"][1], places=5)
    for name in ("unbiased_t0000", "unbiased_t0001", "linear_star"):
      self.assertAlmostEqual(history(name)["train_loss"][0], math.log(2.0), places=6, msg=name)
    self.assertLen(net, 3)  # init + 2 epochs

    # Rerun: nothing is retrained and the table is identical.
    config = late_linearization.settings_from_config(
        test_util.smoke_config(self, ll_config, data_dir=data_dir))
    with mock.patch.object(pipeline, "train_task", side_effect=AssertionError("retrained")):
      late_linearization.run(config, workdir)
    self.assertEqual((workdir / "results.csv").read_text(), table)
    # "Killed" before the last run finished: only it reruns, to the same table.
    (workdir / "results" / "linear_star.json").unlink()
    late_linearization.run(config, workdir)
    self.assertEqual((workdir / "results.csv").read_text(), table)


if __name__ == "__main__":
  absltest.main()
