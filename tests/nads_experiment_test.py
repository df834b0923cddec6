"""Tests of the NAD experiment (ntk_tf/experiments/nads.py) and its binary."""

import os
import pathlib
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import pandas as pd

from binaries import nads as nads_main
from configs import nads as nads_config
from ntk_tf.experiments import nads
from ntk_tf.experiments import pipeline
from tests import test_util


class ValidationTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("index_past_d", "nad_indices", (1, 65), "65"),
      ("zero_index", "nad_indices", (0,), "nad_indices"),
      ("empty_indices", "nad_indices", (), "nad_indices"),
      ("too_many_images", "num_images", 65, "num_images=65"),
      ("num_nads_past_d", "num_nads", 65, "num_nads=65"),
      ("bad_method", "nad_method", "svd", "svd"),
      ("bad_shape", "input_shape", (8, 8), "input_shape"),
      ("zero_train", "train_size", 0, "train_size=0"),
      ("negative_sigma", "sigma", -1.0, "sigma=-1.0"),
      ("unknown_model", "model", "vgg", "vgg"),
  )
  def test_bad_value_is_named(self, field, value, fragment):
    config = nads_config.get_config("smoke")
    config[field] = value
    with self.assertRaisesRegex(ValueError, fragment):
      nads.settings_from_config(config)

  def test_index_beyond_computed_nads(self):
    config = nads_config.get_config("smoke")
    config.num_nads = 10
    config.nad_indices = (1, 11)
    with self.assertRaisesRegex(ValueError, "11"):
      nads.settings_from_config(config)

  def test_every_variant_validates(self):
    for variant in nads_config.VARIANTS:
      nads.settings_from_config(nads_config.get_config(variant))


class SmokeTest(absltest.TestCase):

  def test_binary_smoke_then_rerun(self):
    workdir = pathlib.Path(self.create_tempdir().full_path)
    test_util.run_binary_main(self, nads_main, "configs/nads.py:smoke", str(workdir))
    for name in ("config.json", "settings.json", "results.csv", "alignment_curve.csv", "nads.npz",
                 "fig4_accuracy.png", "fig4_alignment.png", "fig10_nads.png"):
      self.assertTrue((workdir / name).is_file(), name)
    table = (workdir / "results.csv").read_text()
    rows = pd.read_csv(workdir / "results.csv")
    self.assertEqual(list(rows["j"]), [1, 64])
    # Theorem 1 by two paths: s_j^2 from the SVD and ||M v_j||^2 recomputed.
    np.testing.assert_allclose(rows["alignment"], rows["alignment_recomputed"], rtol=1e-4)
    curve = np.loadtxt(workdir / "alignment_curve.csv", delimiter=",", skiprows=1)
    self.assertLen(curve, 64)
    self.assertTrue(np.all(np.diff(curve[:, 2]) <= 1e-12))  # descending
    for prefix in ("network", "linear"):
      self.assertTrue(rows[f"{prefix}_test_acc"].between(0, 1).all())
    with np.load(workdir / "nads.npz") as saved:
      directions = saved["directions"].reshape(64, -1)
    np.testing.assert_allclose(directions @ directions.T, np.eye(64), atol=1e-6)

    # Rerun: the NADs come from the cache, nothing is retrained, the table is identical.
    config = nads.settings_from_config(nads_config.get_config("smoke"))
    with mock.patch.object(pipeline, "train_task", side_effect=AssertionError("retrained")), \
        mock.patch("ntk_tf.nads", side_effect=AssertionError("NADs recomputed")):
      nads.run(config, workdir)
    self.assertEqual((workdir / "results.csv").read_text(), table)
    (workdir / "results" / "nad00064.json").unlink()  # "killed" during the last index
    nads.run(config, workdir)
    self.assertEqual((workdir / "results.csv").read_text(), table)


if __name__ == "__main__":
  absltest.main()
