"""Tests for the eigenfunction experiment (ntk_tf.experiments.eigenfunctions) and its binary.

The smoke runs use a real CIFAR-10 subset where the data exists, else the
synthetic CIFAR-shaped files of tests/test_util. Independent checks: the
eigenvalues and task labels are recomputed with `np.linalg.eigh` on the stored
Gram; the tables are checked for sane ranges.
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
import ntk_tf
from ntk_tf.experiments import eigenfunctions
from ntk_tf.experiments import pipeline

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny_settings(test_case):
  """The smoke config, shrunk further for the resume test (2 training tasks)."""
  config = test_util.smoke_config(test_case, eigenfunctions_config, train_size=24, test_size=8,
                                  num_eigenvectors=8, indices=(1, 8), epochs=1,
                                  kinds=("network",), baseline=False)
  config.model_kwargs.mlp.width = 8
  return eigenfunctions.settings_from_config(config)


def _table(path):
  return pd.read_csv(path).drop(columns=["seconds"])


class EigenfunctionsSmokeTest(absltest.TestCase):

  def test_binary_main_writes_sane_outputs(self):
    out = self.create_tempdir().full_path
    cache = pathlib.Path(self.create_tempdir().full_path)
    config = eigenfunctions_config.get_config("smoke")
    test_util.run_binary_main(self, eigenfunctions_main, "configs/eigenfunctions.py:smoke", out,
                              **{"gram.cache_dir": str(cache)})
    root = pathlib.Path(out)
    for name in ("config.json", "settings.json", "results.csv", "results.json", eigenfunctions.FIG2,
                 eigenfunctions.FIG3):
      self.assertTrue((root / name).is_file(), name)
    for fig in (eigenfunctions.FIG2, eigenfunctions.FIG3):
      self.assertEqual((root / fig).read_bytes()[:8], _PNG_MAGIC)
    self.assertEqual(json.loads((root / "config.json").read_text())["indices"],
                     list(config.indices))
    settings = json.loads((root / "settings.json").read_text())
    self.assertEqual(settings["common"]["recipe"]["epochs"], config.epochs)
    self.assertEqual(settings["data"]["num_train"], config.train_size)

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
    self.assertTrue(eig["overlap"].between(0, 1).all())
    self.assertEqual(sorted(set(eig["index"].astype(int))), sorted(config.indices))
    baseline = table[table["index"].isna()]
    self.assertEqual(list(baseline["target"]), ["cifar2"])

    # Independent check of the spectrum: eigh of the Gram in the shared cache.
    (gram_dir,) = list(cache.iterdir())
    self.assertTrue(gram_dir.name.startswith("mlp-"))
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
      self.assertAlmostEqual(row["overlap"], overlap, places=6)

  def test_killed_then_rerun_skips_finished_tasks_and_gives_the_same_table(self):
    settings = _tiny_settings(self)
    fresh = pathlib.Path(self.create_tempdir().full_path)
    eigenfunctions.run(settings, fresh)

    resumed = pathlib.Path(self.create_tempdir().full_path)
    real_train_task = pipeline.train_task
    calls = []

    def killed_after_two(*args, **kwargs):
      calls.append(kwargs["task_dir"].name)
      if len(calls) == 2:
        raise KeyboardInterrupt("simulated kill")
      return real_train_task(*args, **kwargs)

    with mock.patch.object(pipeline, "train_task", side_effect=killed_after_two):
      with self.assertRaises(KeyboardInterrupt):
        eigenfunctions.run(settings, resumed)
    self.assertLen(list((resumed / "results").glob("*.json")), 1)

    with mock.patch.object(pipeline, "train_task", side_effect=real_train_task) as rerun:
      eigenfunctions.run(settings, resumed)
    rerun_tasks = [c.kwargs["task_dir"].name for c in rerun.call_args_list]
    self.assertEqual(calls, ["mlp_phi0001_network", "mlp_phi0008_network"])  # killed in the 2nd
    self.assertEqual(rerun_tasks, ["mlp_phi0008_network"])
    pd.testing.assert_frame_equal(_table(resumed / "results.csv"), _table(fresh / "results.csv"))
    self.assertLen(pd.read_csv(resumed / "results.csv"), 2)

    # A third run does no work (no training, no Gram block, no eigensolve) and keeps the table.
    (gram,) = pathlib.Path(settings.gram.cache_dir).glob("*/gram.npy")
    written = gram.stat().st_mtime_ns
    with mock.patch.object(pipeline, "train_task") as third, \
        mock.patch.object(ntk_tf, "eigen", side_effect=AssertionError("eigensolve")):
      eigenfunctions.run(settings, resumed)
    third.assert_not_called()
    self.assertEqual(gram.stat().st_mtime_ns, written)
    pd.testing.assert_frame_equal(_table(resumed / "results.csv"), _table(fresh / "results.csv"))


  def test_baseline_line_trains_for_baseline_epochs(self):
    config = test_util.smoke_config(self, eigenfunctions_config, train_size=24, test_size=8,
                                    num_eigenvectors=8, indices=(1,), epochs=1,
                                    kinds=("network",), baseline_epochs=3)
    config.model_kwargs.mlp.width = 8
    out = pathlib.Path(self.create_tempdir().full_path)
    eigenfunctions.run(eigenfunctions.settings_from_config(config), out)
    table = pd.read_csv(out / "results.csv").set_index("target")
    self.assertEqual(table.loc["cifar2", "epochs"], 3)
    self.assertEqual(table.loc["phi0001", "epochs"], 1)
    history = pd.read_csv(out / "train" / "mlp_cifar2_network" / "metrics.csv")
    self.assertEqual(int(history["epoch"].max()), 3)


  def test_baseline_only_run_needs_no_eigenvectors(self):
    config = test_util.smoke_config(self, eigenfunctions_config, train_size=24, test_size=8,
                                    num_eigenvectors=8, indices=(), epochs=1,
                                    kinds=("network",))
    config.model_kwargs.mlp.width = 8
    out = pathlib.Path(self.create_tempdir().full_path)
    with mock.patch.object(eigenfunctions.spectrum_lib, "spectrum",
                           side_effect=AssertionError("spectrum called")):
      eigenfunctions.run(eigenfunctions.settings_from_config(config), out)
    table = pd.read_csv(out / "results.csv")
    self.assertEqual(list(table["target"]), ["cifar2"])
    self.assertEqual(sorted(p.name for p in (out / "train").iterdir()), ["mlp_cifar2_network"])

class EigenfunctionsConfigTest(absltest.TestCase):

  def test_every_variant_is_valid(self):
    for variant in eigenfunctions_config.VARIANTS:
      eigenfunctions.settings_from_config(eigenfunctions_config.get_config(variant))

  def test_paper_variant_has_the_paper_settings(self):
    config = eigenfunctions_config.get_config("paper")
    self.assertEqual(tuple(config.models), ("mlp", "lenet", "resnet18"))
    self.assertIsNone(config.train_size)  # all 50,000 + 10,000 CIFAR-10 images (App. B)
    self.assertIsNone(config.test_size)
    self.assertEqual(config.num_eigenvectors, 1000)
    self.assertEqual(max(config.indices), 1000)
    self.assertIsNone(config.epochs)  # the recipe's 100 epochs
    settings = eigenfunctions.settings_from_config(config)
    self.assertEqual(settings.common.recipe, ntk_tf.PAPER_SGD)  # App. A: 100 epochs
    self.assertEqual(settings.indices, tuple(sorted(config.indices)))
    adam = eigenfunctions.settings_from_config(eigenfunctions_config.get_config("paper_adam"))
    self.assertEqual(adam.common.recipe, ntk_tf.PAPER_ADAM)

  def test_cifar2_line_trains_200_epochs_in_paper_variants(self):
    # App. A: "in the experiments involving CIFAR2, we train all models for 200 epochs".
    for variant in ("paper", "paper_adam", "paper_mnist"):
      settings = eigenfunctions.settings_from_config(eigenfunctions_config.get_config(variant))
      self.assertEqual(settings.baseline_recipe.epochs, 200, variant)
      self.assertEqual(settings.baseline_recipe, settings.common.recipe.replace(epochs=200))
    self.assertEqual(ntk_tf.recipe.PAPER_CIFAR2.epochs, 200)
    # smoke / quick: the reference line keeps the tasks' few epochs (results unchanged).
    for variant in ("smoke", "quick"):
      settings = eigenfunctions.settings_from_config(eigenfunctions_config.get_config(variant))
      self.assertIsNone(settings.baseline_epochs)
      self.assertEqual(settings.baseline_recipe, settings.common.recipe)

  def _assert_rejected(self, message, **overrides):
    config = eigenfunctions_config.get_config("smoke")
    for key, value in overrides.items():
      config[key] = value
    with self.assertRaisesRegex(ValueError, message):
      eigenfunctions.settings_from_config(config)

  def test_unknown_model(self):
    self._assert_rejected(r"config.models holds unknown names \['vgg'\]", models=("mlp", "vgg"))

  def test_index_larger_than_the_number_of_eigenvectors(self):
    self._assert_rejected(r"config.indices must be <= num_eigenvectors=16.*indices=\[1, 17\]",
                          indices=(1, 17))

  def test_empty_index_list(self):
    self._assert_rejected(r"config.indices may be empty only with baseline=True.*indices=\(\)",
                          indices=(), baseline=False)
    config = eigenfunctions_config.get_config("smoke")
    config.indices = ()
    self.assertEqual(eigenfunctions.settings_from_config(config).indices, ())

  def test_more_eigenvectors_than_samples(self):
    self._assert_rejected(r"config.num_eigenvectors.*N = 64.*num_eigenvectors=65",
                          num_eigenvectors=65)

  def test_unknown_dataset_and_optimizer(self):
    self._assert_rejected(r"config.dataset.*dataset='cifar100'", dataset="cifar100")
    self._assert_rejected(r"config.optimizer.*optimizer='rmsprop'", optimizer="rmsprop")
    self._assert_rejected(r"config.data_dir must be an existing folder", data_dir="/nonexistent")

  def test_binary_rejects_bad_flags_before_work(self):
    out = os.path.join(self.create_tempdir().full_path, "never_made")
    with flagsaver.flagsaver(workdir=out):
      flags.FLAGS["config"].parse("configs/eigenfunctions.py:smoke")
      # As --config.models=mlp,resnet50 --config.data_dir=/nonexistent.
      flags.FLAGS["config"].value.models = ("mlp,resnet50",)
      with self.assertRaisesRegex(app.UsageError, r"unknown names \['resnet50'\]"):
        eigenfunctions_main.main(["eigenfunctions"])
    self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
  absltest.main()
