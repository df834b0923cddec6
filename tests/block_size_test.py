"""Tests for ntk_tf.block_size and ntk_tf.auto: formula by hand, monotonicity, rule."""

from absl.testing import absltest
import keras
import numpy as np

from tests import test_util  # pylint: disable=unused-import
import ntk_tf
from ntk_tf import auto
from ntk_tf import block_size


class BlockSizeTest(absltest.TestCase):

  def test_jacobian_peak_by_hand(self):
    # Dense 3 -> 2 -> 1 on [N, 3]: P = 8 + 3 = 11; F_act = 3 (input) + 2 + 1 = 6.
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(1)])
    model = keras.Model(model.inputs, model.outputs)
    b = 5
    self.assertEqual(block_size.peak_memory_bytes(model, b, "jacobian", "float32"),
                     4 * (2 * b * 11 + 3 * b * 6 + b * b))

  def test_budget_is_respected_and_monotone(self):
    model = ntk_tf.models.lenet((16, 16, 3))
    sizes = []
    for budget in (2**24, 2**26, 2**28):
      b = block_size.block_size_for_budget(model, (16, 16, 3), budget, "structured")
      self.assertLessEqual(block_size.peak_memory_bytes(model, b, "structured"), budget)
      if b < 4096:
        self.assertGreater(block_size.peak_memory_bytes(model, b + 1, "structured"), budget)
      sizes.append(b)
    self.assertEqual(sizes, sorted(sizes))
    with self.assertRaisesRegex(ValueError, "Received: memory_budget_bytes=10"):
      block_size.block_size_for_budget(model, (16, 16, 3), 10, "structured")

  def test_auto_rule(self):
    model = ntk_tf.models.mlp((8, 8, 3))
    flops = auto.implementation_flops(model, (8, 8, 3), 100)
    self.assertLessEqual(flops["structured"], flops["jacobian"])
    choice = auto.choose_implementation(model, (8, 8, 3), 100)
    self.assertEqual(getattr(choice, "value", choice), min(flops, key=flops.get))
    with self.assertRaisesRegex(ValueError, "Received: n=0"):
      auto.implementation_flops(model, (8, 8, 3), 0)


if __name__ == "__main__":
  absltest.main()
