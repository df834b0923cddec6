"""Tests of benchmarks/ (table columns, GEMM-bound FLOPs, peak memory) and a smoke run of bench_gram."""

import os

from absl.testing import absltest
from absl.testing import flagsaver
import numpy as np

from tests import test_util  # pylint: disable=unused-import
import keras

from benchmarks import gram_paths as benchmark
from benchmarks import machine
from binaries import bench_gram
import ntk_tf
from ntk_tf.ntk import structured


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

  def test_gemm_bound_flops_by_hand(self):
    # Dense 4 -> 3 (bias) -> 1 (bias), N = 5. Per layer min(structured, jacobian):
    #   structured 2 N^2 (K + 1 + C) + N^2; jacobian (2N) C + 2 N^2 C + 2 (2N) K C + 2 N^2 K C.
    #   layer 1 (K=4, C=3): structured 2*25*8 + 25 = 425, jacobian 30 + 150 + 240 + 600 = 1020.
    #   layer 2 (K=3, C=1): structured 2*25*5 + 25 = 275, jacobian 10 + 50 + 60 + 150 = 270.
    # 425 + 270 = 695 FLOPs; the N (N + 1) / 2 distinct entries of a square Gram: 348.
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dense(3)(inputs)))
    report = structured.flop_report(model, (4,), 5, 5)
    self.assertEqual(structured.contraction_flops(report), 695)
    self.assertEqual(structured.contraction_flops(report, symmetric=True), 348)

  def test_table_columns_hold_what_they_say(self):
    row = benchmark.Row(model="mlp", n=100, seconds={"naive": 8.0, "reference": 4.0,
                                                     "structured": 2.0, "auto": 0.5},
                        notes={"naive": "extrapolated from N=50"},
                        peak_bytes={"naive": 3 << 20, "reference": None, "structured": 1 << 20,
                                    "auto": 2 << 20},
                        contraction_flops=7 * 10**9, gemm_bound_seconds=0.25, block_size=64)
    line = benchmark.format_table([row]).splitlines()[1]
    cells = [c.split() for c in line.split("|")]
    self.assertEqual(cells[0], ["mlp", "100", "64"])
    self.assertEqual(cells[1], ["8.000*", "(", "1.0x)"])  # naive, extrapolated (*).
    self.assertEqual(cells[2], ["4.000", "(", "2.0x)"])  # naive / reference = 2.
    self.assertEqual(cells[3], ["2.000", "(", "4.0x)"])
    self.assertEqual(cells[4], ["0.500", "(", "16.0x)"])
    self.assertEqual(cells[5], ["7.00"])  # contraction GFLOP.
    self.assertEqual(cells[6], ["0.250"])  # GEMM bound seconds.
    self.assertEqual(cells[7], ["8.00"])  # structured / bound = 2 / 0.25.
    self.assertEqual(cells[8], ["2.00"])  # auto / bound = 0.5 / 0.25.
    self.assertEqual(cells[9], ["3/n/a/1/2"])  # peak MiB per path.

  def test_peak_memory_of_a_known_allocation(self):
    nbytes = 400 << 20  # np.ones writes every page: the resident set rises by nbytes.
    peak = benchmark.run_in_fresh_process(benchmark.peak_rss_of_call, np.ones, nbytes // 8)
    if peak is None:
      self.skipTest("no /proc/self/clear_refs here")
    # Slack below: the kernel's RSS counters are batched per CPU (up to ~64 pages each), and
    # the resident set read just before the call can include a few MiB the process frees as
    # the call starts (7 MiB seen once, on a machine short of free memory). A missed reset
    # of VmHWM or a unit error would be off by far more.
    self.assertBetween(peak, nbytes - (16 << 20), nbytes + (32 << 20))

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
    for name in machine.features():  # The machine's features beside the table.
      self.assertIn(name, table)
    self.assertTrue(os.path.exists(os.path.join(out, "config.json")))


if __name__ == "__main__":
  absltest.main()
