"""Tests for the eigenfunction experiment (ntk_tf.experiments.eigenfunctions) and its binary.

The smoke runs use a real CIFAR-10 subset and skip where the data is absent.
Independent checks: the eigenvalues and task labels are recomputed with
`np.linalg.eigh` on the stored Gram; the tables are checked for sane ranges.
"""

import json
import os
import pathlib
from unittest import mock

from absl import app
from absl import flags
from absl.testing import absltest
from absl.testing import flagsaver
import numpy as np
import pandas as pd

from tests import test_util  # pylint: disable=g-bad-import-order
from binaries import eigenfunctions as eigenfunctions_main
from configs import eigenfunctions as eigenfunctions_config
from ntk_tf import recipe
from ntk_tf.experiments import common
from ntk_tf.experiments import eigenfunctions

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny_config(data_dir):
  """The smoke config, shrunk further for the resume test (2 training tasks)."""
  config = eigenfunctions_config.get_config("smoke")
  config.data_dir = data_dir
  config.model_kwargs.mlp.width = 8
  config.train_size, config.test_size = 24, 8
  config.num_eigenvectors = 8
  config.indices = (1, 8)
  config.epochs = 1
  config.kinds = ("network",)
  config.baseline = False
  return config


def _table(path):
  return pd.read_csv(path).drop(columns=["seconds"])


class EigenfunctionsSmokeTest(absltest.TestCase):

  def test_binary_main_writes_sane_outputs(self):
    data_dir = test_util.require_data(self)
    out = self.create_tempdir().full_path
    config = eigenfunctions_config.get_config("smoke")
    with flagsaver.flagsaver(workdir=out):
      flags.FLAGS["config"].parse("configs/eigenfunctions.py:smoke")
      eigenfunctions_main._FLAGS.config.value.data_dir = data_dir  # as --config.data_dir=...
      eigenfunctions_main.main(["eigenfunctions"])
    root = pathlib.Path(out)
    for name in ("config.json", "results.csv", "results.json", eigenfunctions.FIG2,
                 eigenfunctions.FIG3):
      self.assertTrue((root / name).is_file(), name)
    for fig in (eigenfunctions.FIG2, eigenfunctions.FIG3):
      self.assertEqual((root / fig).read_bytes()[:8], _PNG_MAGIC)
    self.assertEqual(json.loads((root / "config.json").read_text())["indices"],
                     list(config.indices))

    table = pd.read_csv(root / "results.csv")
    num_tasks = len(config.indices) * len(config.kinds) + len(config.baseline_kinds)
    self.assertLen(table, num_tasks)
    self.assertLen(json.loads((root / "results.json").read_text()), num_tasks)
    for column in ("test_acc", "train_acc", "positive_fraction"):
      self.assertTrue(table[column].between(0, 1).all(), column)
    self.assertTrue((table["l2_distance"] > 0).all())
    self.assertTrue(table["cosine_distance"].between(0, 2).all())
    self.assertTrue((table["num_train"] == config.train_size).all())
    self.assertTrue((table["num_test"] == config.test_size).all())
    eig = table[table["index"].notna()].sort_values("index")
    self.assertTrue(eig["inner_product"].between(0, 1).all())
    self.assertEqual(sorted(set(eig["index"].astype(int))), sorted(config.indices))
    baseline = table[table["index"].isna()]
    self.assertEqual(list(baseline["target"]), ["cifar2"])

    # Independent check of the spectrum: eigh of the stored Gram.
    (gram_dir,) = list((root / "gram").iterdir())
    gram = np.load(gram_dir / "gram.npy").astype(np.float64)  # [N, N]
    n = config.train_size + config.test_size
    self.assertEqual(gram.shape, (n, n))
    np.testing.assert_allclose(gram, gram.T, rtol=1e-5, atol=1e-5 * np.abs(gram).max())
    ref_vals, ref_vecs = np.linalg.eigh(gram)
    ref_vals, ref_vecs = ref_vals[::-1], ref_vecs[:, ::-1]  # descending
    for _, row in eig.drop_duplicates("index").iterrows():
      j = int(row["index"])
      self.assertAlmostEqual(row["eigenvalue"], ref_vals[j - 1], delta=1e-6 * ref_vals[0])
      phi = ref_vecs[:, j - 1]  # [N], up to sign
      frac = np.mean(phi[:config.train_size] > 0)
      self.assertAlmostEqual(min(abs(row["positive_fraction"] - frac),
                                 abs(row["positive_fraction"] - (1 - frac))), 0, places=6)
      overlap = np.abs(phi).sum() / np.sqrt(n)  # <sign(phi)/sqrt(N), phi>
      self.assertAlmostEqual(row["inner_product"], overlap, places=6)

  def test_killed_then_rerun_skips_finished_tasks_and_gives_the_same_table(self):
    data_dir = test_util.require_data(self)
    config = _tiny_config(data_dir)
    fresh = pathlib.Path(self.create_tempdir().full_path)
    eigenfunctions.run(config, fresh)

    resumed = pathlib.Path(self.create_tempdir().full_path)
    real_train_task = common.train_task
    calls = []

    def killed_after_two(*args, **kwargs):
      calls.append(kwargs["task_dir"].name)
      if len(calls) == 2:
        raise KeyboardInterrupt("simulated kill")
      return real_train_task(*args, **kwargs)

    with mock.patch.object(common, "train_task", side_effect=killed_after_two):
      with self.assertRaises(KeyboardInterrupt):
        eigenfunctions.run(config, resumed)
    self.assertLen(list((resumed / "results").glob("*.json")), 1)

    with mock.patch.object(common, "train_task", side_effect=real_train_task) as rerun:
      eigenfunctions.run(config, resumed)
    rerun_tasks = [c.kwargs["task_dir"].name for c in rerun.call_args_list]
    self.assertEqual(calls, ["mlp_phi0001_network", "mlp_phi0008_network"])  # killed in the 2nd
    self.assertEqual(rerun_tasks, ["mlp_phi0008_network"])
    pd.testing.assert_frame_equal(_table(resumed / "results.csv"), _table(fresh / "results.csv"))
    self.assertLen(pd.read_csv(resumed / "results.csv"), 2)

    # A third run does no work (no training, no Gram block, no eigensolve) and keeps the table.
    with mock.patch.object(common, "train_task") as third, \
        mock.patch.object(eigenfunctions.GramStore, "compute") as gram_compute, \
        mock.patch.object(eigenfunctions, "eigen") as eigensolve:
      eigenfunctions.run(config, resumed)
    third.assert_not_called()
    gram_compute.assert_not_called()
    eigensolve.assert_not_called()
    pd.testing.assert_frame_equal(_table(resumed / "results.csv"), _table(fresh / "results.csv"))


class EigenfunctionsConfigTest(absltest.TestCase):

  def test_every_variant_is_valid(self):
    for variant in eigenfunctions_config.VARIANTS:
      eigenfunctions.validate_config(eigenfunctions_config.get_config(variant))

  def test_paper_variant_has_the_paper_settings(self):
    config = eigenfunctions_config.get_config("paper")
    self.assertEqual(tuple(config.models), ("mlp", "lenet", "resnet18"))
    self.assertIsNone(config.train_size)  # all 50,000 + 10,000 CIFAR-10 images (App. B)
    self.assertIsNone(config.test_size)
    self.assertEqual(config.num_eigenvectors, 1000)
    self.assertEqual(max(config.indices), 1000)
    self.assertIsNone(config.epochs)  # the recipe's 100 epochs
    self.assertEqual(common.make_recipe(config, recipe.PAPER_SGD).epochs, 100)
    adam = eigenfunctions_config.get_config("paper_adam")
    self.assertEqual(common.make_recipe(adam, recipe.PAPER_SGD).optimizer,
                     "adam")

  def _assert_rejected(self, message, **overrides):
    config = eigenfunctions_config.get_config("smoke")
    config.data_dir = "/nonexistent"  # validation must fail before any data is read
    for key, value in overrides.items():
      config[key] = value
    with self.assertRaisesRegex(ValueError, message):
      eigenfunctions.validate_config(config)
    workdir = os.path.join(self.create_tempdir().full_path, "never_made")
    with self.assertRaisesRegex(ValueError, message):
      eigenfunctions.run(config, pathlib.Path(workdir))
    self.assertFalse(os.path.exists(workdir))

  def test_unknown_model(self):
    self._assert_rejected(r"Unknown models \['vgg'\]", models=("mlp", "vgg"))

  def test_index_larger_than_the_number_of_eigenvectors(self):
    self._assert_rejected(r"<= num_eigenvectors=16.*indices=\[1, 17\]", indices=(1, 17))

  def test_empty_index_list(self):
    self._assert_rejected(r"indices must be a non-empty list", indices=())

  def test_more_eigenvectors_than_samples(self):
    self._assert_rejected(r"num_eigenvectors=65", num_eigenvectors=65)

  def test_unknown_dataset_and_optimizer(self):
    self._assert_rejected(r"dataset=.cifar100.", dataset="cifar100")
    self._assert_rejected(r"optimizer=.rmsprop.", optimizer="rmsprop")

  def test_binary_rejects_bad_flags_before_work(self):
    out = os.path.join(self.create_tempdir().full_path, "never_made")
    with flagsaver.flagsaver(workdir=out):
      flags.FLAGS["config"].parse("configs/eigenfunctions.py:smoke")
      # As --config.models=mlp,resnet50 --config.data_dir=/nonexistent.
      eigenfunctions_main._FLAGS.config.value.models = ("mlp,resnet50",)
      eigenfunctions_main._FLAGS.config.value.data_dir = "/nonexistent"
      with self.assertRaisesRegex(app.UsageError, r"Unknown models \['resnet50'\]"):
        eigenfunctions_main.main(["eigenfunctions"])
    self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
  absltest.main()
