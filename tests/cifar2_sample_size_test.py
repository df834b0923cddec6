"""Tests for the CIFAR2 sample-size study (ntk_tf.experiments.cifar2_sample_size) and its binary.

The smoke runs use a real CIFAR-10 subset where the data exists, else the
synthetic CIFAR-shaped files of tests/test_util.
Independent checks: the saturation epoch against hand-worked sequences, the
per-seed summary against NumPy means of the per-run table, and every row's
reported metrics against its stored per-epoch history at the saturation epoch.
"""

import json
import os
import pathlib
from unittest import mock

from absl import app
from absl import flags
from absl.testing import absltest
from absl.testing import flagsaver
from absl.testing import parameterized
import numpy as np
import pandas as pd

from tests import test_util  # pylint: disable=g-bad-import-order
from binaries import cifar2_sample_size as cifar2_main
from configs import cifar2_sample_size as cifar2_config
import ntk_tf
from ntk_tf.experiments import cifar2_sample_size
from ntk_tf.experiments import pipeline

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _table(path):
  return pd.read_csv(path).drop(columns=["seconds"])


class SaturationEpochTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("rises_then_flat", [0.5, 0.6, 0.70, 0.705, 0.70], 0.01, 2),
      ("flat_from_start", [0.7, 0.7, 0.7], 0.01, 0),
      ("late_jump", [0.7, 0.7, 0.7, 0.9], 0.01, 3),
      ("dip_inside_tolerance", [0.5, 0.8, 0.795, 0.8], 0.01, 1),
      ("dip_outside_tolerance", [0.5, 0.8, 0.70, 0.8], 0.01, 3),
      ("zero_tolerance", [0.5, 0.8, 0.8], 0.0, 1),
  )
  def test_hand_worked(self, acc, tol, expected):
    self.assertEqual(cifar2_sample_size.saturation_epoch(acc, tol), expected)

  def test_rejects_empty_or_nan(self):
    with self.assertRaisesRegex(ValueError, "test_acc"):
      cifar2_sample_size.saturation_epoch([], 0.01)
    with self.assertRaisesRegex(ValueError, "test_acc"):
      cifar2_sample_size.saturation_epoch([0.5, float("nan")], 0.01)


class Cifar2SmokeTest(absltest.TestCase):

  def test_binary_main_writes_sane_outputs(self):
    out = self.create_tempdir().full_path
    config = cifar2_config.get_config("smoke")
    test_util.run_binary_main(self, cifar2_main, "configs/cifar2_sample_size.py:smoke", out)
    root = pathlib.Path(out)
    for name in ("config.json", "results.csv", "results.json", "summary.csv",
                 cifar2_sample_size.FIG5):
      self.assertTrue((root / name).is_file(), name)
    self.assertEqual((root / cifar2_sample_size.FIG5).read_bytes()[:8], _PNG_MAGIC)

    table = pd.read_csv(root / "results.csv")
    num_runs = (len(config.train_sizes) * len(config.seeds) * len(config.models)
                * len(config.kinds))
    self.assertLen(table, num_runs)
    for column in ("test_acc", "final_test_acc", "final_train_acc"):
      self.assertTrue(table[column].between(0, 1).all(), column)
    self.assertTrue((table["l2_distance"] >= 0).all())
    self.assertTrue((table["final_l2_distance"] > 0).all())
    self.assertTrue(table["saturation_epoch"].between(0, config.epochs).all())
    self.assertEqual(sorted(set(table["train_size"])), sorted(config.train_sizes))
    self.assertTrue((table["num_test"] == config.test_size).all())

    # Each row's metrics are its history's values at the saturation epoch.
    for row in json.loads((root / "results.json").read_text()):
      stored = json.loads((root / "results" / f"{row['task']}.json").read_text())
      history = stored["history"]
      self.assertLen(history, config.epochs + 1)
      e_star = row["saturation_epoch"]
      acc = np.array([h["test_acc"] for h in history])
      self.assertTrue(np.all(np.abs(acc[e_star:] - acc[-1]) <= config.saturation_tolerance))
      if e_star > 0:
        self.assertGreater(abs(acc[e_star - 1] - acc[-1]), config.saturation_tolerance)
      self.assertEqual(row["test_acc"], history[e_star]["test_acc"])
      self.assertEqual(row["l2_distance"], history[e_star]["l2_distance"])
      self.assertEqual(row["final_test_acc"], history[-1]["test_acc"])

    # The summary is the mean and spread over seeds of the table.
    summary = pd.read_csv(root / "summary.csv")
    self.assertLen(summary, len(config.train_sizes) * len(config.models) * len(config.kinds))
    for _, entry in summary.iterrows():
      runs = table[(table["model"] == entry["model"]) & (table["kind"] == entry["kind"])
                   & (table["train_size"] == entry["train_size"])]
      self.assertEqual(entry["num_seeds"], len(config.seeds))
      self.assertAlmostEqual(entry["test_acc_mean"], np.mean(runs["test_acc"]), places=9)
      self.assertAlmostEqual(entry["test_acc_std"], np.std(runs["test_acc"]), places=9)
      self.assertAlmostEqual(entry["l2_distance_mean"], np.mean(runs["l2_distance"]), places=9)

  def test_killed_then_rerun_skips_finished_runs_and_gives_the_same_table(self):
    config = test_util.smoke_config(self, cifar2_config, train_sizes=(16, 32), seeds=(0,),
                                    kinds=("network",), epochs=1)
    config.model_kwargs.mlp.width = 8
    config = cifar2_sample_size.settings_from_config(config)
    fresh = pathlib.Path(self.create_tempdir().full_path)
    cifar2_sample_size.run(config, fresh)

    resumed = pathlib.Path(self.create_tempdir().full_path)
    real_train_task = pipeline.train_task
    calls = []

    def killed_in_second(*args, **kwargs):
      calls.append(kwargs["task_dir"].name)
      if len(calls) == 2:
        raise KeyboardInterrupt("simulated kill")
      return real_train_task(*args, **kwargs)

    with mock.patch.object(pipeline, "train_task", side_effect=killed_in_second):
      with self.assertRaises(KeyboardInterrupt):
        cifar2_sample_size.run(config, resumed)
    self.assertEqual(calls, ["mlp_n000016_s0_network", "mlp_n000032_s0_network"])
    with mock.patch.object(pipeline, "train_task", side_effect=real_train_task) as rerun:
      cifar2_sample_size.run(config, resumed)
    self.assertEqual([c.kwargs["task_dir"].name for c in rerun.call_args_list],
                     ["mlp_n000032_s0_network"])
    pd.testing.assert_frame_equal(_table(resumed / "results.csv"), _table(fresh / "results.csv"))
    self.assertLen(pd.read_csv(resumed / "results.csv"), 2)


class Cifar2ConfigTest(absltest.TestCase):

  def test_every_variant_is_valid(self):
    for variant in cifar2_config.VARIANTS:
      cifar2_sample_size.settings_from_config(cifar2_config.get_config(variant))

  def test_paper_variant_has_the_paper_settings(self):
    config = cifar2_config.get_config("paper")
    self.assertEqual(tuple(config.models), ("mlp", "lenet", "resnet18"))
    self.assertLen(config.seeds, 5)
    self.assertEqual(min(config.train_sizes), 500)
    self.assertEqual(max(config.train_sizes), 50000)
    self.assertIsNone(config.test_size)
    settings = cifar2_sample_size.settings_from_config(config)
    self.assertEqual(settings.common.recipe, ntk_tf.PAPER_CIFAR2)  # App. A: 200 epochs

  def _assert_rejected(self, message, **overrides):
    config = cifar2_config.get_config("smoke")
    for key, value in overrides.items():
      config[key] = value
    with self.assertRaisesRegex(ValueError, message):
      cifar2_sample_size.settings_from_config(config)

  def test_empty_size_list(self):
    self._assert_rejected(r"config.train_sizes must be a non-empty list", train_sizes=())

  def test_size_larger_than_the_train_split(self):
    self._assert_rejected(r"config.train_sizes entries must lie in \[1, 50000\].*60000",
                          train_sizes=(500, 60000))

  def test_unknown_model_dataset_kind(self):
    self._assert_rejected(r"config.models holds unknown names \['vit'\]", models=("vit",))
    self._assert_rejected(r"config.dataset.*dataset='cifar10'", dataset="cifar10")
    self._assert_rejected(r"config.kinds holds unknown names \['kernel'\]",
                          kinds=("network", "kernel"))
    self._assert_rejected(r"config.saturation_tolerance", saturation_tolerance=2.0)

  def test_binary_rejects_bad_flags_before_work(self):
    out = os.path.join(self.create_tempdir().full_path, "never_made")
    with flagsaver.flagsaver(workdir=out):
      flags.FLAGS["config"].parse("configs/cifar2_sample_size.py:smoke")
      flags.FLAGS["config"].value.train_sizes = ()  # as --config.train_sizes="()"
      with self.assertRaisesRegex(app.UsageError, "train_sizes"):
        cifar2_main.main(["cifar2_sample_size"])
    self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
  absltest.main()
