"""Tests of the late-linearization experiment (ntk_tf/experiments/late_linearization.py)."""

import math
import os
import pathlib
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl.testing import absltest
from absl.testing import parameterized
import pandas as pd

from binaries import late_linearization as late_linearization_main
from configs import late_linearization as ll_config
from ntk_tf.experiments import late_linearization
from ntk_tf.experiments import pipeline
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


class SmokeTest(absltest.TestCase):

  def test_binary_smoke_then_rerun(self):
    workdir = pathlib.Path(self.create_tempdir().full_path)
    data_dir = test_util.run_binary_main(self, late_linearization_main,
                                         "configs/late_linearization.py:smoke", str(workdir))
    for name in ("config.json", "settings.json", "results.csv", "fig8_training.png", "fig9_pretraining.png"):
      self.assertTrue((workdir / name).is_file(), name)
    table = (workdir / "results.csv").read_text()
    rows = {r["run"]: r for r in pd.read_csv(workdir / "results.csv").to_dict("records")}
    self.assertEqual(set(rows), {"network", "linear_t0000", "linear_t0001", "linear_star"})
    self.assertBetween(rows["network"]["overlap"], 0.0, 1.0)
    for row in rows.values():
      self.assertBetween(row["test_acc"], 0.0, 1.0)
      self.assertGreater(row["l2_distance"], 0.0)

    def history(name):
      return pd.read_csv(workdir / "runs" / name / "metrics.csv")

    net = history("network")
    # Closed forms at the start of each linear run:
    # f_lin(x; theta_t) = f(x; theta_t): its loss is the network's after t epochs;
    # the unbiased linearization starts at f_hat = 0, i.e. BCE = log 2.
    self.assertAlmostEqual(history("linear_t0000")["train_loss"][0], net["train_loss"][0], places=5)
    self.assertAlmostEqual(history("linear_t0001")["train_loss"][0], net["train_loss"][1], places=5)
    self.assertAlmostEqual(history("linear_star")["train_loss"][0], math.log(2.0), places=6)
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
