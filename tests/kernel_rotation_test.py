"""Tests of the kernel-rotation experiment (ntk_tf/experiments/kernel_rotation.py, its binary)."""

import os
import pathlib
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app
from absl import flags
from absl.testing import absltest
from absl.testing import flagsaver
from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from binaries import kernel_rotation as kernel_rotation_main
from configs import kernel_rotation as kr_config
import ntk_tf
from ntk_tf import models
from ntk_tf.experiments import kernel_rotation
from ntk_tf.experiments import pipeline
from ntk_tf.experiments import spectrum as spectrum_lib
from tests import ntk_reference
from tests import test_util


def _per_example_jacobian(model, x):
  """`[n, P]` rows grad_theta f(x_i), one GradientTape per example (independent of ntk_tf)."""
  rows = []
  for i in range(len(x)):
    with tf.GradientTape() as tape:
      out = model(x[i:i + 1], training=False)[0, 0]
    grads = tape.gradient(out, model.trainable_variables)
    rows.append(np.concatenate([g.numpy().ravel() for g in grads]))
  return np.stack(rows).astype(np.float64)


def _parse_config_flag(spec, **overrides):
  """Sets --config=spec as the binary would parse it, then applies `overrides` to it."""
  flags.FLAGS["config"].parse(spec)
  for name, value in overrides.items():
    flags.FLAGS["config"].value[name] = value


class ValidationTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("empty_models", "models", (), "models"),
      ("unknown_model", "models", ("vgg",), "vgg"),
      ("unknown_task", "task", "mnist_digits", "mnist_digits"),
      ("epochs_without_init", "measure_epochs", (1, 2), "measure_epochs"),
      ("epochs_without_end", "measure_epochs", (0, 1), "measure_epochs"),
      ("epoch_past_end", "measure_epochs", (0, 2, 7), "7"),
      ("top_k_too_large", "top_k", 33, "top_k=33"),
      ("zero_top_k", "top_k", 0, "top_k=0"),
      ("num_alignment_too_large", "num_alignment", 33, "num_alignment=33"),
      ("bad_block_size", "gram.block_size", 0, "block_size=0"),
      ("bad_recipe", "recipe", "PAPER_FAST", "PAPER_FAST"),
      ("bad_optimizer", "optimizer", "rmsprop", "rmsprop"),
  )
  def test_bad_value_is_named(self, field, value, fragment):
    config = kr_config.get_config("smoke")
    parent, _, name = field.rpartition(".")
    (config[parent] if parent else config)[name] = value
    with self.assertRaisesRegex(ValueError, fragment):
      kernel_rotation.settings_from_config(config)

  def test_eigenfunction_index_beyond_alignment_count(self):
    config = kr_config.get_config("smoke_eigenfunction")
    config.eigenfunction_indices = (9,)  # num_alignment = 8
    with self.assertRaisesRegex(ValueError, "eigenfunction_indices"):
      kernel_rotation.settings_from_config(config)

  def test_every_variant_validates(self):
    for variant in kr_config.VARIANTS:
      kernel_rotation.settings_from_config(kr_config.get_config(variant))

  def test_binary_rejects_bad_flag_before_work(self):
    workdir = self.create_tempdir().full_path
    with flagsaver.flagsaver(workdir=workdir):
      _parse_config_flag("configs/kernel_rotation.py:smoke", top_k=1000)
      with self.assertRaisesRegex(app.UsageError, "top_k=1000"):
        kernel_rotation_main.main(["kernel_rotation"])
    self.assertEmpty(os.listdir(workdir))  # Nothing was written.


class MathTest(absltest.TestCase):

  def test_alignment_from_gram_matches_jacobian_average(self):
    # alpha(f) = ||(1/n) sum_i f_i grad f(x_i)||^2 with mean(f^2) = 1, from per-example grads.
    model = models.get("mlp", input_shape=(3, 3, 1), seed=1, width=6)
    x = np.random.default_rng(0).standard_normal((10, 3, 3, 1)).astype(np.float32)
    jac = _per_example_jacobian(model, x)  # [n, P]
    gram = jac @ jac.T
    functions = np.random.default_rng(1).standard_normal((10, 3))  # [n, m]
    got = kernel_rotation.alignment_from_gram(gram, functions)
    for c in range(3):
      f = functions[:, c] * np.sqrt(10) / np.linalg.norm(functions[:, c])
      want = np.sum((f @ jac / 10)**2)
      self.assertAlmostEqual(got[c], want, delta=1e-9 * want)

  def test_lemma1_route_equals_gram_route_in_float64(self):
    # App. B's route (a weighted average of the Jacobian, no Gram) against phi^T Theta phi / n^2.
    model = ntk_tf.as_float64_model(models.get("mlp", input_shape=(3, 3, 1), seed=2, width=6))
    x = np.random.default_rng(0).standard_normal((12, 3, 3, 1))
    functions = np.random.default_rng(1).standard_normal((12, 5))  # [n, m]
    gram = ntk_tf.ntk_gram(model, x, dtype="float64", progress=False)  # [n, n]
    want = kernel_rotation.alignment_from_gram(gram, functions)
    num_params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    for budget in (4 * num_params * 8, 2 * 1024**3):  # one column per chunk, all at once
      got = kernel_rotation.alignment_from_jacobian(
          model, x, functions, batch_size=5, dtype="float64", memory_budget_bytes=budget)
      np.testing.assert_allclose(got, want, rtol=1e-10, atol=0)

  def test_single_axis(self):
    alpha0 = np.array([4.0, 2.0, 1.0, 0.5])
    alpha_t = np.array([8.0, 2.0, 10.0, 1.0])  # ratios 2, 1, 10, 2
    out = kernel_rotation.single_axis(alpha0, alpha_t, target_index=3)
    self.assertEqual(out["ratio_target"], 10.0)
    self.assertEqual(out["ratio_others_median"], 2.0)
    self.assertEqual(out["ratio_others_max"], 2.0)
    self.assertEqual(out["target_rank"], 1)
    self.assertEqual(kernel_rotation.single_axis(alpha0, alpha_t, 2)["target_rank"], 4)


class SmokeTest(absltest.TestCase):

  def test_binary_smoke_then_rerun(self):
    workdir = pathlib.Path(self.create_tempdir().full_path)
    data_dir = test_util.run_binary_main(self, kernel_rotation_main,
                                         "configs/kernel_rotation.py:smoke", str(workdir))
    for name in ("config.json", "settings.json", "results.csv", "table1.md", "energy_concentration.png",
                 "alignment_mlp_cifar2.png", "mlp/cifar2/alignment_epoch_0000.csv",
                 "mlp/cifar2/alignment_epoch_0002.csv", "mlp/cifar2/eigvals_epoch_0002.csv"):
      self.assertTrue((workdir / name).is_file(), name)
    self.assertFalse((workdir / "mlp/cifar2/gram_epoch_0000").exists())  # keep_grams=False
    table = (workdir / "results.csv").read_text()
    rows = {r["task"]: r for r in runs_rows(workdir)}
    self.assertLen(rows, 3)
    summary = rows["mlp_cifar2_summary"]
    for key in ("energy_init", "energy_end", "test_acc"):
      self.assertBetween(summary[key], 0.0, 1.0)
    self.assertIn("| Energy conc. (init) |", (workdir / "table1.md").read_text())
    # Both label encodings against a brute-force Gram (per-example gradients, float64) of
    # the init model, and NumPy's eigh: ||Phi^T y||^2 / ||y||^2, y in {-1, 1} and {0, 1}.
    config = kernel_rotation.settings_from_config(
        test_util.smoke_config(self, kr_config, data_dir=data_dir))
    dataset = config.data.load()
    spec = config.models[0]
    init = pipeline.load_checkpoint(spec.build(dataset.input_shape),
                                    workdir / "mlp/cifar2/train", 0)
    _, vecs = np.linalg.eigh(ntk_reference.brute_force_gram(init, dataset.x_train))
    phi = vecs[:, ::-1][:, :config.top_k]  # [n, K], descending eigenvalues
    y = np.asarray(dataset.y_train, np.float64)
    self.assertEqual(set(np.unique(y)), {-1.0, 1.0})
    for field, labels in (("energy_init", y), ("energy_init_01", (y + 1) / 2)):
      expected = np.sum((phi.T @ labels) ** 2) / np.sum(labels ** 2)
      self.assertAlmostEqual(summary[field], expected, places=4, msg=field)
    self.assertNotAlmostEqual(summary["energy_init"], summary["energy_init_01"], places=2)
    self.assertIn("| Energy conc. (init), y in {0, 1} |", (workdir / "table1.md").read_text())
    # At init the phi_j are the eigenvectors of the same Gram: alpha_0(phi_j) = lambda_j / n.
    eigvals = np.loadtxt(workdir / "mlp/cifar2/eigvals_epoch_0000.csv", delimiter=",", skiprows=1)
    alpha0 = np.loadtxt(workdir / "mlp/cifar2/alignment_epoch_0000.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(alpha0[:5, 1], eigvals[:, 1] / 32, rtol=1e-4)

    # Rerun: nothing is trained or recomputed and the table is identical.
    config = kernel_rotation.settings_from_config(
        test_util.smoke_config(self, kr_config, data_dir=data_dir))
    with mock.patch.object(pipeline, "train_task", side_effect=AssertionError("retrained")):
      kernel_rotation.run(config, workdir)
    self.assertEqual((workdir / "results.csv").read_text(), table)
    # "Killed" after the first epoch row: the rest is measured again, without retraining,
    # to the same table.
    for task in ("mlp_cifar2_epoch0002", "mlp_cifar2_summary"):
      (workdir / "results" / f"{task}.json").unlink()
    with mock.patch.object(pipeline.training, "train", side_effect=AssertionError("retrained")):
      kernel_rotation.run(config, workdir)
    self.assertEqual((workdir / "results.csv").read_text(), table)

  def test_eigenfunction_smoke(self):
    workdir = pathlib.Path(self.create_tempdir().full_path)
    config = kernel_rotation.settings_from_config(
        test_util.smoke_config(self, kr_config, "smoke_eigenfunction"))
    kernel_rotation.run(config, workdir)
    rows = {r["task"]: r for r in runs_rows(workdir)}
    summary = rows["mlp_phi3_summary"]
    self.assertBetween(summary["target_rank"], 1, config.num_alignment)
    self.assertGreater(summary["ratio_target"], 0.0)
    self.assertBetween(summary["overlap"], 0.0, 1.0)
    self.assertTrue((workdir / "alignment_mlp_phi3.png").is_file())
    # The single-axis ratio recomputed from the per-epoch alignment files.
    alpha0 = np.loadtxt(workdir / "mlp/phi3/alignment_epoch_0000.csv", delimiter=",", skiprows=1)
    alpha2 = np.loadtxt(workdir / "mlp/phi3/alignment_epoch_0002.csv", delimiter=",", skiprows=1)
    self.assertAlmostEqual(summary["ratio_target"], alpha2[2, 1] / alpha0[2, 1], places=6)
    # Theta_0 on train + test comes from the shared cache, keyed by model and data.
    (gram_dir,) = pathlib.Path(config.gram.cache_dir).iterdir()
    self.assertTrue((gram_dir / "gram.npy").is_file())
    # No energy concentration (Fig. 7 needs alpha only): no Gram at the checkpoints.
    self.assertFalse(config.energy_concentration)
    self.assertEqual(config.alignment_route, "jacobian")
    self.assertTrue(np.isnan(summary["energy_init"]))

  def test_targets_share_the_basis_alignment_at_init(self):
    config = kernel_rotation.settings_from_config(test_util.smoke_config(
        self, kr_config, "smoke_eigenfunction", eigenfunction_indices=(3, 2)))
    workdir = pathlib.Path(self.create_tempdir().full_path)
    widths = []
    real_alignment = ntk_tf.alignment

    def recording(model, x, y, **kwargs):
      widths.append(np.asarray(y).reshape(len(x), -1).shape[1])
      return real_alignment(model, x, y, **kwargs)

    with mock.patch.object(ntk_tf, "alignment", side_effect=recording):
      kernel_rotation.run(config, workdir)
    j = config.num_alignment
    # phi3: epochs 0 and 2 with the basis and y; phi2: y alone at epoch 0, then all at 2.
    self.assertEqual(widths, [j + 1, j + 1, 1, j + 1])
    alpha = {t: np.loadtxt(workdir / f"mlp/{t}/alignment_epoch_0000.csv", delimiter=",",
                           skiprows=1)[:, 1] for t in ("phi3", "phi2")}
    np.testing.assert_array_equal(alpha["phi2"], alpha["phi3"])
    # alpha_0(y) of phi2 against Lemma 1 on Theta_0's train block, in float64.
    rows = {r["task"]: r for r in runs_rows(workdir)}
    dataset = config.data.load()
    spec = config.models[0]
    model = spec.build(dataset.input_shape)
    basis = spectrum_lib.spectrum(model, spec, dataset, j, config.gram, seed=spec.seed,
                                  progress=False)  # the cached Theta_0's eigenvectors
    labels = np.asarray(spectrum_lib.eigenfunction_task(basis, 2).y_train, np.float64)  # [n]
    gram = ntk_tf.ntk_gram(model, dataset.x_train, dtype="float64", implementation="jacobian",
                           progress=False)
    expected = kernel_rotation.alignment_from_gram(gram, labels[:, None])[0]
    self.assertAlmostEqual(rows["mlp_phi2_epoch0000"]["alpha_labels"] / expected, 1.0, places=5)

  def test_eigenfunction_task_grams_only_where_needed(self):
    # alpha by Lemma 1: no GramStore at any checkpoint without energy concentration.
    config = kernel_rotation.settings_from_config(
        test_util.smoke_config(self, kr_config, "smoke_eigenfunction"))
    real_store = ntk_tf.GramStore
    made = []

    def counting_store(path, *args, **kwargs):
      made.append(pathlib.Path(path).name)
      return real_store(path, *args, **kwargs)

    with mock.patch.object(ntk_tf, "GramStore", side_effect=counting_store):
      kernel_rotation.run(config, pathlib.Path(self.create_tempdir().full_path))
    self.assertLen(made, 1)  # Theta_0 on train + test only (the spectrum)
    # With energy: epoch 0 reads the train block of that Theta_0 (a slice), epoch 2 a new Gram.
    made.clear()
    config = kernel_rotation.settings_from_config(
        test_util.smoke_config(self, kr_config, "smoke_eigenfunction", energy_concentration=True))
    workdir = pathlib.Path(self.create_tempdir().full_path)
    with mock.patch.object(ntk_tf, "GramStore", side_effect=counting_store):
      kernel_rotation.run(config, workdir)
    theta0_dir = made[0]  # the shared store, opened again by the slice (nothing computed)
    self.assertEqual(made, [theta0_dir, theta0_dir, "gram_epoch_0002"])
    rows = {r["task"]: r for r in runs_rows(workdir)}
    self.assertBetween(rows["mlp_phi3_summary"]["energy_init"], 0.0, 1.0)


def runs_rows(workdir):
  import pandas as pd  # pylint: disable=g-import-not-at-top
  return pd.read_csv(workdir / "results.csv").to_dict("records")


if __name__ == "__main__":
  absltest.main()
