"""Tests for the ten-class study (ntk_tf.experiments.multiclass) and its binary.

`ntk_regression` is checked against an independent computation: brute-force per-example,
per-output GradientTape Jacobians of a float64 twin (tests/ntk_reference), the three output
kernels built from them with einsum, and the kernel-regression solve done with
`np.linalg.solve`. The smoke run checks every row against its own files (the trained rows
against their metrics.csv, the regression rows against a recomputation).
"""

import pathlib

from absl import app
from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import pandas as pd

from tests import ntk_reference
from tests import test_util  # pylint: disable=g-bad-import-order
from binaries import multiclass as multiclass_main
from configs import multiclass as multiclass_config
import ntk_tf
from ntk_tf.experiments import multiclass
from ntk_tf.experiments import pipeline

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_K = 3


def _reference_prediction(jac_train, jac_test, y, f0_train, f0_test, output_kernel, diag_reg):
  """f_test of kernel regression, from Jacobians [N, K, P] (float64, np.linalg.solve)."""
  n, k = y.shape
  if output_kernel == "full":
    k_tt = np.einsum("iap,jbp->iajb", jac_train, jac_train).reshape(n * k, n * k)
    k_st = np.einsum("iap,jbp->iajb", jac_test, jac_train).reshape(len(jac_test) * k, n * k)
  else:
    if output_kernel == "trace":
      k_tt = np.einsum("iap,jap->ij", jac_train, jac_train)
      k_st = np.einsum("iap,jap->ij", jac_test, jac_train)
    else:  # pseudo: the NTK of (1/sqrt K) sum_a f_a
      s_train, s_test = jac_train.sum(1) / np.sqrt(k), jac_test.sum(1) / np.sqrt(k)
      k_tt, k_st = s_train @ s_train.T, s_test @ s_train.T
  ridge = diag_reg * np.trace(k_tt) / len(k_tt)
  rhs = (y - f0_train).reshape(len(k_tt), -1)  # [nK, 1] or [n, K]
  alpha = np.linalg.solve(k_tt + ridge * np.eye(len(k_tt)), rhs)
  return f0_test + (k_st @ alpha).reshape(f0_test.shape)


class RegressionTest(parameterized.TestCase):

  @parameterized.product(output_kernel=multiclass.OUTPUT_KERNELS, name=("mlp", "lenet"))
  def test_matches_brute_force_jacobians(self, output_kernel, name):
    with ntk_reference.floatx("float64"):
      model = ntk_tf.models.get(name, input_shape=ntk_reference.SHAPE, outputs=_K, seed=1)
    x_train, x_test = ntk_reference.inputs(7, seed=0), ntk_reference.inputs(5, seed=1)
    y = multiclass.centred_one_hot(np.arange(7) % _K, _K)
    gram = pipeline.GramSpec(block_size=3, implementation="auto", dtype="float64")
    got = multiclass.ntk_regression(model, x_train, y, x_test, output_kernel=output_kernel,
                                    diag_reg=1e-3, gram=gram)
    jac_train = ntk_reference.loop_output_jacobian(model, x_train)  # [7, K, P]
    jac_test = ntk_reference.loop_output_jacobian(model, x_test)
    f0_train = np.asarray(model(x_train.astype(np.float64), training=False))
    f0_test = np.asarray(model(x_test.astype(np.float64), training=False))
    want = _reference_prediction(jac_train, jac_test, y, f0_train, f0_test, output_kernel, 1e-3)
    self.assertEqual(got.shape, (5, _K))
    self.assertLess(ntk_reference.rel_error(got, want), 1e-9)
    self.assertGreater(np.abs(got - f0_test).max(), 1e-3)  # The regression moved f.

  def test_test_chunks_do_not_change_the_prediction(self):
    with ntk_reference.floatx("float64"):
      model = ntk_tf.models.mlp(ntk_reference.SHAPE, outputs=_K, width=8)
    x_train, x_test = ntk_reference.inputs(6, seed=0), ntk_reference.inputs(9, seed=1)
    y = multiclass.centred_one_hot(np.arange(6) % _K, _K)
    gram = pipeline.GramSpec(block_size=4, implementation="auto", dtype="float64")
    kwargs = dict(output_kernel="full", diag_reg=1e-3, gram=gram)
    whole = multiclass.ntk_regression(model, x_train, y, x_test, **kwargs)
    with absltest.mock.patch.object(multiclass, "_CHUNK_BYTES", 2 * 6 * _K * _K * 4):
      chunked = multiclass.ntk_regression(model, x_train, y, x_test, **kwargs)  # 2 per chunk
    np.testing.assert_allclose(chunked, whole, rtol=1e-12, atol=1e-14)

  def test_centred_one_hot(self):
    y = multiclass.centred_one_hot(np.array([2, 0]), 4)
    np.testing.assert_allclose(y, [[-0.25, -0.25, 0.75, -0.25], [0.75, -0.25, -0.25, -0.25]])


class SettingsTest(parameterized.TestCase):

  @parameterized.parameters(
      ("kinds", ("network", "ntk_diagonal"), r"config.kinds.*ntk_diagonal"),
      ("train_sizes", (5, 40), r"config.train_sizes.*5"),
      ("diag_reg", -1.0, r"config.diag_reg.*-1"),
      ("full_max_train_size", 0, r"config.full_max_train_size.*0"),
      ("dataset", "cifar2", r"cifar2"),
  )
  def test_bad_field_is_named(self, field, value, message):
    config = test_util.smoke_config(self, multiclass_config, **{field: value})
    with self.assertRaisesRegex(ValueError, message):
      multiclass.settings_from_config(config)

  def test_full_runs_only_up_to_its_size_limit(self):
    config = test_util.smoke_config(self, multiclass_config, train_sizes=(40, 80),
                                    full_max_train_size=40)
    tasks = multiclass.planned_tasks(multiclass.settings_from_config(config))
    full = [size for _, size, _, kind in tasks if kind == "ntk_full"]
    self.assertEqual(full, [40])
    self.assertLen(tasks, 2 * len(multiclass.KINDS) - 1)


class MulticlassSmokeTest(absltest.TestCase):

  def test_binary_main_writes_sane_outputs(self):
    out = self.create_tempdir().full_path
    config = multiclass_config.get_config("smoke")
    test_util.run_binary_main(self, multiclass_main, "configs/multiclass.py:smoke", out)
    root = pathlib.Path(out)
    for name in ("config.json", "results.csv", "results.json", multiclass.FIGURE):
      self.assertTrue((root / name).is_file(), name)
    self.assertEqual((root / multiclass.FIGURE).read_bytes()[:8], _PNG_MAGIC)
    table = pd.read_csv(root / "results.csv")
    self.assertLen(table, 2 * len(config.kinds) - 1)  # "full" at n = 40 only
    self.assertTrue(table["test_acc"].between(0, 1).all())
    self.assertTrue((table["num_classes"] == 10).all())
    self.assertTrue((table["num_test"] == config.test_size).all())
    trained = table[table["kind"].isin(["network", "linearized"])]
    regressions = table[table["kind"].str.startswith("ntk_")]
    self.assertTrue((trained["epochs"] == config.epochs).all())
    self.assertTrue(regressions["epochs"].isna().all())
    self.assertTrue((regressions["diag_reg"] == config.diag_reg).all())
    for _, row in trained.iterrows():
      metrics = pd.read_csv(root / "train" / row["task"] / "metrics.csv")
      self.assertAlmostEqual(row["test_acc"], metrics["test_acc"].iloc[-1], places=12)
      self.assertEqual(metrics["epoch"].iloc[-1], config.epochs)

  def test_rerun_skips_finished_tasks(self):
    out = self.create_tempdir().full_path
    test_util.run_binary_main(self, multiclass_main, "configs/multiclass.py:smoke", out,
                              kinds=("ntk_trace",), train_sizes=(40,))
    first = pd.read_csv(pathlib.Path(out) / "results.csv")
    with absltest.mock.patch.object(multiclass, "ntk_regression",
                                    side_effect=AssertionError("recomputed")):
      test_util.run_binary_main(self, multiclass_main, "configs/multiclass.py:smoke", out,
                                kinds=("ntk_trace",), train_sizes=(40,))
    second = pd.read_csv(pathlib.Path(out) / "results.csv")
    pd.testing.assert_frame_equal(first, second)

  def test_bad_config_is_a_usage_error(self):
    out = self.create_tempdir().full_path
    with self.assertRaisesRegex(app.UsageError, "config.kinds"):
      test_util.run_binary_main(self, multiclass_main, "configs/multiclass.py:smoke", out,
                                kinds=("nope",))


if __name__ == "__main__":
  absltest.main()
