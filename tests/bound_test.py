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


if __name__ == "__main__":
  absltest.main()
