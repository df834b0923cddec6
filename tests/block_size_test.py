"""Tests for ntk_tf.ntk.block_size: peak-memory terms against hand counts and measured arrays."""

from absl.testing import absltest
from absl.testing import parameterized
import keras
import numpy as np

from tests import test_util  # pylint: disable=unused-import
from tests import ntk_reference
import ntk_tf
from ntk_tf.ntk import block_size
from ntk_tf.ntk import structured


def _conv_model():
  """Input 6x6x2 -> Conv2D(4, 3, same) -> Flatten -> Dense(1)."""
  inputs = keras.Input((6, 6, 2))
  h = keras.layers.Conv2D(4, 3, padding="same")(inputs)
  return keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(h)))


class BlockSizeTest(parameterized.TestCase):

  def test_counts_of_a_conv_model_by_hand(self):
    model_plan = structured.ModelPlan(_conv_model())
    # Layer outputs per example: input 6*6*2 = 72, conv 6*6*4 = 144, flatten 144, logit 1.
    self.assertEqual(model_plan.activation_size(), 72 + 144 + 144 + 1)
    # P = conv 3*3*2*4 + 4 = 76, Dense 144 + 1 = 145.
    self.assertEqual(model_plan.params, 76 + 145)
    # Largest conv patch tensor: 36 positions x K = 18.
    self.assertEqual(model_plan.transient_size(), 36 * 18)
    b = 5
    self.assertEqual(block_size.peak_memory_bytes(_conv_model(), b, "jacobian", "float64"),
                     8 * (3 * b * 221 + 3 * b * 361 + b * b))
    self.assertEqual(block_size.peak_memory_bytes(_conv_model(), b, "ntk_vector_products"),
                     4 * (4 * b * 361 + 4 * 221))

  @parameterized.product(engine=["numpy", "xla"], choices=[None, "structured", "jacobian"])
  def test_feature_size_is_what_the_features_hold(self, engine, choices):
    model = ntk_tf.models.get("lenet", input_shape=ntk_reference.SHAPE)
    block_fn = structured.make_block_fn(model, "float32", matmul_engine=engine, choices=choices)
    x = ntk_reference.inputs(6)
    features = block_fn.features(x)
    pieces = [t for pair in features.products + features.positional for t in pair]
    floats = sum(int(np.prod(t.shape[1:])) for t in pieces + [features.gradient])
    self.assertEqual(floats, block_fn.model_plan.feature_size())

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
    with self.assertRaisesRegex(ValueError, "Received: implementation='fast'"):
      block_size.peak_memory_bytes(model, 4, "fast")


if __name__ == "__main__":
  absltest.main()
