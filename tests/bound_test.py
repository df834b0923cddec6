"""benchmarks.bound: FLOPs per pair by hand, the bound's formula, the page from its CSV."""

import tempfile

from absl.testing import absltest

from benchmarks import bound
from tests import test_util  # pylint: disable=unused-import (quiet TensorFlow)
import ntk_tf


class BoundTest(absltest.TestCase):

  def test_mlp_pair_flops(self):
    # Dense 3072 -> 100 -> 100 -> 1: 2 (a + b) each.
    model = ntk_tf.models.get("mlp", input_shape=(32, 32, 3), seed=0)
    self.assertEqual(bound.pair_flops(model), 2 * (3072 + 100) + 2 * (100 + 100) + 2 * (100 + 1))

  def test_lenet_pair_flops(self):
    # Two 5x5 convs (2 P each: 5*5*3*6 + 6 and 5*5*6*16 + 16 weights), then Dense
    # 8*8*16 -> 120 -> 84 -> 1.
    model = ntk_tf.models.get("lenet", input_shape=(32, 32, 3), seed=0)
    convs = 2 * (5 * 5 * 3 * 6 + 6) + 2 * (5 * 5 * 6 * 16 + 16)
    dense = 2 * (1024 + 120) + 2 * (120 + 84) + 2 * (84 + 1)
    self.assertEqual(bound.pair_flops(model), convs + dense)

  def test_mlp_step_flops(self):
    # Dense 3072 -> 100 -> 100 -> 1 at batch 128: 2 a b forward; weight and input
    # gradients the same again, but no input gradient for the first layer.
    model = ntk_tf.models.get("mlp", input_shape=(32, 32, 3), seed=0)
    per_example = 2 * (2 * 3072 * 100) + 3 * (2 * 100 * 100) + 3 * (2 * 100 * 1)
    self.assertEqual(bound.step_flops(model, 128), 128 * per_example)

  def test_lenet_step_flops(self):
    # 'same' 5x5 convs: 32 x 32 outputs of 5*5*3 -> 6, 16 x 16 outputs of 5*5*6 -> 16.
    model = ntk_tf.models.get("lenet", input_shape=(32, 32, 3), seed=0)
    conv_0 = 2 * 32 * 32 * (5 * 5 * 3) * 6
    conv_1 = 2 * 16 * 16 * (5 * 5 * 6) * 16
    dense = 2 * 1024 * 120 + 2 * 120 * 84 + 2 * 84 * 1
    self.assertEqual(bound.step_flops(model, 4), 4 * (2 * conv_0 + 3 * conv_1 + 3 * dense))

  def test_step_flops_refuses_an_uncounted_layer(self):
    import keras  # pylint: disable=g-import-not-at-top
    inputs = keras.Input((4, 4, 2))
    hidden = keras.layers.BatchNormalization(name="bn")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(hidden)))
    with self.assertRaisesRegex(ValueError, "'bn' \\(BatchNormalization\\)"):
      bound.step_flops(model, 1)

  def test_bound_formula(self):
    # N (N + 1) / 2 pairs of 1,000 FLOPs at 1 GFLOP/s.
    self.assertAlmostEqual(bound.gram_bound_s(999, 1000, 1.0), 999 * 1000 / 2 * 1000 / 1e9)

  def test_gemm_rates_positive(self):
    rates = bound.gemm_rates(n=64, repeats=1)
    self.assertEqual(set(rates), {"numpy", "tensorflow"})
    self.assertTrue(all(r > 0 for r in rates.values()))

  def test_render_reads_only_the_csv(self):
    row = {c: "x" for c in bound.COLUMNS}
    row.update(n="4000", flops_per_pair="6946", model="mlp", ratio="1.40")
    with tempfile.TemporaryDirectory() as tmp:
      path = f"{tmp}/perf.csv"
      bound.append_rows(path, [row])
      bound.append_rows(path, [dict(row, model="lenet")])
      page = bound.render(path)
      self.assertEqual(page, bound.render(path))
    self.assertIn("| x | mlp | 4,000 | 6,946 | x / x | x | x | 1.40 | x | x | x | x |", page)
    self.assertEqual(page.count("| lenet |"), 1)
    self.assertNotIn("Training step", page)

  def test_render_adds_the_step_table(self):
    row = {c: "x" for c in bound.COLUMNS}
    row.update(n="4000", flops_per_pair="6946")
    step = {c: "y" for c in bound.STEP_COLUMNS}
    step.update(model="lenet", batch="128", ratio="2.50")
    with tempfile.TemporaryDirectory() as tmp:
      bound.append_rows(f"{tmp}/perf.csv", [row])
      bound.result_rows.append_rows(f"{tmp}/step.csv", [step], bound.STEP_COLUMNS)
      page = bound.render(f"{tmp}/perf.csv", f"{tmp}/step.csv")
    self.assertIn("## Training step", page)
    self.assertIn("| y | lenet | 128 | y | y / y | y | y | 2.50 | y | y | y | y |", page)


if __name__ == "__main__":
  absltest.main()
