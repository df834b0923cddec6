"""Smoke test of binaries/bench_gram.py on the smoke config, plus the benchmark's GEMM bound."""

import os

from absl.testing import absltest
from absl.testing import flagsaver
import numpy as np

from tests import test_util  # pylint: disable=unused-import
from binaries import bench_gram
from ntk_tf import benchmark
from ntk_tf import structured
import ntk_tf


class BenchGramTest(absltest.TestCase):

  def test_full_gram_matches_naive(self):
    model = ntk_tf.models.mlp((4, 4, 3))
    x = np.random.default_rng(0).normal(size=(7, 4, 4, 3)).astype(np.float32)
    block_fn = structured.make_block_fn(model, "float32")
    np.testing.assert_allclose(benchmark.full_gram(block_fn, x, 3),
                               benchmark.naive_gram(model, x), rtol=2e-5, atol=1e-5)

  def test_capped_gemm_time_scales_up_to_the_full_flops(self):
    # Measured [2, 3] x [3, 2]: 2 * 2^2 * 3 = 24 FLOPs in 1 s; 48 FLOPs take 2 s.
    self.assertEqual(benchmark.scale_to_flops(1.0, n=2, k=3, flops=48), 2.0)
    # A GEMM bound may not beat the measured matmul rate: capping k never lowers the time.
    flops = 2 * 64 * 64 * (1 << 20)  # k = 2^20, capped to k = 64 by max_bytes.
    capped = benchmark.gemm_seconds(flops, 64, repeats=1, max_bytes=64 * 4 * 64)
    self.assertLess(flops / capped, 1e13)  # The implied FLOP/s: no CPU reaches 1e13.

  def test_peak_memory_of_a_known_allocation(self):
    nbytes = 400 << 20  # np.ones writes every page: the resident set rises by nbytes.
    peak = benchmark.run_in_fresh_process(benchmark.peak_rss_of_call, np.ones, nbytes // 8)
    if peak is None:
      self.skipTest("no /proc/self/clear_refs here")
    # The kernel's RSS counters are batched per CPU (up to ~64 pages each): 1 MiB slack below.
    self.assertBetween(peak, nbytes - (1 << 20), nbytes + (32 << 20))

  def test_bench_model_in_fresh_processes(self):
    row = benchmark.bench_model("mlp", 24, input_shape=(4, 4, 3), memory_budget=1 << 26,
                                naive_max_n=12, paths=("naive", "structured"), repeats=2,
                                measure_memory=True, fresh_process=True)
    self.assertEqual(row.notes, {"naive": "extrapolated from N=12"})
    self.assertGreater(row.seconds["structured"], 0)
    self.assertGreater(row.seconds["naive"], 0)
    for path in ("naive", "structured"):
      if row.peak_bytes[path] is not None:  # None without /proc/self/clear_refs.
        self.assertGreater(row.peak_bytes[path], 0)

  def test_smoke_main_writes_table(self):
    out = self.create_tempdir().full_path
    with flagsaver.flagsaver(smoke=True, out=out, data_dir=test_util.data_dir()):
      bench_gram.main([])
    with open(os.path.join(out, "table.txt")) as f:
      table = f.read()
    self.assertIn("mlp", table)
    self.assertIn("lenet", table)
    self.assertIn("growth with N", table)
    self.assertTrue(os.path.exists(os.path.join(out, "config.json")))


if __name__ == "__main__":
  absltest.main()
