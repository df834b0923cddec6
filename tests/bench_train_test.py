"""Smoke test of binaries/bench_train: runs main on one small model and batch."""

import json
import math
import os

from tests import test_util

from absl.testing import absltest
from absl.testing import flagsaver

from binaries import bench_train


class BenchTrainTest(absltest.TestCase):

  def test_main_writes_sane_ratios(self):
    data_dir = test_util.require_data(self)
    out = os.path.join(self.create_tempdir().full_path, "bench.json")
    with flagsaver.flagsaver(models=["mlp"], data_dir=data_dir, batch_size=16, steps=2, repeats=1,
                             out=out):
      bench_train.main([])
    with open(out) as f:
      results = json.load(f)["results"]
    self.assertEqual([r["model"] for r in results], ["mlp"])
    row = results[0]
    self.assertGreater(row["network_ms"], 0)
    self.assertGreater(row["linearized_ms"], 0)
    self.assertTrue(math.isclose(row["ratio"], row["linearized_ms"] / row["network_ms"]))


if __name__ == "__main__":
  absltest.main()
