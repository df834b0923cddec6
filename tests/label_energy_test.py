"""Table 1's convention variants: the NTK parameterization and Flax's initializers by hand."""

import pathlib

import keras
import numpy as np
from absl.testing import absltest

from tests import ntk_reference
from tests import test_util
import ntk_tf
from ntk_tf.experiments import label_energy
from ntk_tf.reproduce import program
from ntk_tf.reproduce import tables


def _ntk_param_twin(model: keras.Model, x_shape) -> keras.Model:
  """The NTK-parameterized MLP written out: h = W x / sqrt(fan_in) + b, float64."""
  inputs = keras.Input(shape=x_shape, dtype="float64")
  h = keras.layers.Flatten(dtype="float64")(inputs)
  dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
  for i, layer in enumerate(dense):
    fan_in = layer.kernel.shape[0]
    h = keras.layers.Rescaling(1.0 / np.sqrt(fan_in), dtype="float64")(h)
    out = keras.layers.Dense(layer.units, dtype="float64")
    h = out(h)
    out.kernel.assign(layer.kernel.numpy().astype(np.float64) * np.sqrt(fan_in))  # W ~ N(0, 1)
    out.bias.assign(layer.bias.numpy().astype(np.float64))
    if i < len(dense) - 1:
      h = keras.layers.Activation("relu", dtype="float64")(h)
  return keras.Model(inputs, h)


class LabelEnergyTest(absltest.TestCase):

  def test_ntk_param_gram_matches_brute_force(self):
    x = np.random.default_rng(0).standard_normal((6, 4, 4, 2)).astype(np.float32)
    model = ntk_tf.models.get("mlp", input_shape=(4, 4, 2), width=5, seed=1)
    gram = label_energy.ntk_param_gram(model, x, seed=3)  # re-initializes `model`
    twin = _ntk_param_twin(model, (4, 4, 2))
    jac = ntk_reference.loop_jacobian(twin, x.astype(np.float64))  # [N, P]
    np.testing.assert_allclose(gram, jac @ jac.T, rtol=1e-5, atol=1e-6)

  def test_flax_init_is_truncated_lecun_normal_with_zero_biases(self):
    model = label_energy.flax_init(ntk_tf.models.get("mlp", input_shape=(16, 16, 3), seed=0))
    for layer in model.layers:
      if isinstance(layer, keras.layers.Dense):
        kernel = layer.kernel.numpy()
        std = np.sqrt(1.0 / kernel.shape[0])
        self.assertLessEqual(np.abs(kernel).max(), 2 * std / 0.87962566103423978 + 1e-7)
        if kernel.size > 1000:
          self.assertAlmostEqual(kernel.std() / std, 1.0, delta=0.05)
        np.testing.assert_array_equal(layer.bias.numpy(), 0.0)

  def test_variants_on_synthetic_data(self):
    data_dir = test_util.smoke_data_dir(self)
    variants = [v for v in label_energy.VARIANTS if v != "theta0_60k"]
    rows = label_energy.energy_variants("mlp", data_dir, train_size=40, k=5, variants=variants)
    self.assertEqual([r["variant"] for r in rows], variants)
    for r in rows:
      self.assertBetween(r["energy_init"], 0.0, 1.0)
    # pm1 by hand: NumPy's eigh of the Gram of the same 40 samples.
    data = ntk_tf.data.load("cifar2", data_dir=data_dir, train_size=40, test_size=1, seed=0)
    model = ntk_tf.models.get("mlp", input_shape=data.x_train.shape[1:], seed=0)
    gram = ntk_tf.ntk_gram(model, data.x_train, dtype="float64", progress=False)
    phi = np.linalg.eigh(gram)[1][:, ::-1][:, :5]
    y = data.y_train.astype(np.float64)
    want = np.sum((phi.T @ y) ** 2) / np.sum(y ** 2)
    self.assertAlmostEqual(rows[0]["energy_init"], want, places=4)
    self.assertIn("| mlp | pm1 |", label_energy.summary(rows))

  def test_unknown_variant(self):
    with self.assertRaisesRegex(ValueError, "typo"):
      label_energy.energy_variants("mlp", variants=("typo",))



class TablePageTest(absltest.TestCase):
  """`binaries.label_energy`'s library call: rows into table1_<model>.csv and its page."""

  def test_rows_join_table1_and_its_page(self):
    data_dir = test_util.smoke_data_dir(self)
    out = self.create_tempdir().full_path
    summary = {"task": "mlp_cifar2_summary", "model": "mlp", "kind": "summary",
               "experiment": "kernel_rotation", "scale": "smoke", "settings_id": "abc123",
               "plan_task": "mlp_cifar2", "plan_tasks": "1", "task_done": "1",
               "energy_init": "0.1", "energy_end": "0.5", "test_acc": "0.6"}
    tables.write_csv(tables.csv_path(pathlib.Path(out), "table1", "mlp"),
                     [summary])
    lines = []
    program.energy_variants(models="mlp", out=out, data_dir=data_dir, variants="pm1,01",
                            train_size=80, top_k=5, log=lines.append)
    want = label_energy.energy_variants("mlp", data_dir, train_size=80, k=5,
                                        variants=("pm1", "01"))
    rows = tables.read_csv(tables.csv_path(pathlib.Path(out), "table1", "mlp"))
    variants = [r for r in rows if r["kind"] == "energy_variant"]
    self.assertEqual([r["variant"] for r in variants], ["pm1", "01"])
    for row, expected in zip(variants, want):
      self.assertAlmostEqual(float(row["energy_init"]), expected["energy_init"], places=12)
      self.assertEqual(row["settings_id"], "abc123")  # filed under Table 1's run
    page = (pathlib.Path(out) / "table1.md").read_text()
    self.assertIn(f"| `01` | labels in {{0, 1}} | {100 * want[1]['energy_init']:.1f}% |", page)
    self.assertRegex(page, r"None of these reproduces the paper's 26.0%: the nearest, `(pm1|01)`"
                           r" \([0-9.]+%\), is [0-9.]+ points (below|above) it.")
    # A second run replaces the rows instead of adding to them.
    program.energy_variants(models="mlp", out=out, data_dir=data_dir, variants="pm1",
                            train_size=80, top_k=5, log=lines.append)
    rows = tables.read_csv(tables.csv_path(pathlib.Path(out), "table1", "mlp"))
    self.assertEqual([r["variant"] for r in rows if r["kind"] == "energy_variant"], ["pm1"])
    self.assertLen([r for r in rows if r["kind"] == "summary"], 1)

  def test_eigvecs_60k_must_name_models(self):
    with self.assertRaisesRegex(ValueError, r"eigvecs_60k='gram.npz'"):
      program.energy_variants(models="mlp", out=self.create_tempdir().full_path,
                              eigvecs_60k="gram.npz")

  def test_refused_without_table1_rows(self):
    out = self.create_tempdir().full_path
    with self.assertRaisesRegex(ValueError, r"table1_mlp.csv has no summary row"):
      program.energy_variants(models="mlp", out=out, data_dir=test_util.smoke_data_dir(self),
                              variants="pm1", train_size=80, top_k=5)


if __name__ == "__main__":
  absltest.main()
