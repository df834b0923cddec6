"""Smoke test of binaries/bench_train: runs main on one small model and batch (synthetic data where
the real data is absent)."""

import json
import math
import os

from tests import test_util

from absl.testing import absltest
from absl.testing import flagsaver

from binaries import bench_train


class BenchTrainTest(absltest.TestCase):

  def test_main_writes_sane_ratios(self):
    data_dir = test_util.smoke_data_dir(self)
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
    self.assertGreater(row["cached_ms"], 0)
    self.assertTrue(math.isclose(row["cached_ratio"], row["cached_ms"] / row["network_ms"]))

  def test_time_train_step_trains_like_train(self):
    # One timed step (warmup 0 still runs one) updates the weights as one ntk_tf.train step would.
    import numpy as np  # pylint: disable=g-import-not-at-top
    import ntk_tf  # pylint: disable=g-import-not-at-top
    x = np.random.default_rng(0).normal(size=(8, 3, 3, 1)).astype(np.float32)
    y = np.where(x[:, 0, 0, 0] > 0, 1, -1)
    recipe = ntk_tf.PAPER_SGD.replace(batch_size=8, epochs=1, schedule="constant")
    timed, trained = (ntk_tf.models.get("mlp", input_shape=(3, 3, 1), width=4) for _ in range(2))
    seconds = bench_train.time_train_step(timed, x, y, recipe=recipe, steps=1, warmup=0)
    self.assertGreater(seconds, 0)
    ntk_tf.train(trained, x, y, recipe=recipe.replace(epochs=2), progress=False)
    for a, b in zip(timed.get_weights(), trained.get_weights()):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


if __name__ == "__main__":
  absltest.main()
