"""Every NtkImplementation through `ntk_gram` equals the reference "jacobian" Gram.

The grid: MLP, LeNet and a narrow ResNet18 (BatchNorm), relu
and gelu, square (x2=None) and rectangular, N not divisible by the block size,
float64, relative error <= 1e-10 against both the "jacobian" path and an
independent loop of per-example GradientTape gradients; plus a model with layer
types the structured path does not know.
"""

from absl.testing import absltest
from absl.testing import parameterized
import keras
import numpy as np

from tests import test_util  # pylint: disable=unused-import
from tests import ntk_reference
import ntk_tf
from ntk_tf.ntk import implementation as implementation_lib

_FAST = tuple(name for name in implementation_lib.IMPLEMENTATION_NAMES if name != "jacobian")


def _unknown_layers_model():
  """LayerNormalization and DepthwiseConv2D: layer types with no structured rule."""
  inputs = keras.Input(ntk_reference.SHAPE)
  h = keras.layers.DepthwiseConv2D(3, padding="same")(inputs)
  h = keras.layers.Activation("gelu")(h)
  h = keras.layers.Flatten()(h)
  h = keras.layers.Dense(6)(h)
  h = keras.layers.LayerNormalization()(h)
  return keras.Model(inputs, keras.layers.Dense(1)(h))


class ImplementationsTest(parameterized.TestCase):

  @parameterized.product(name=list(ntk_reference.SMALL_MODELS), activation=["relu", "gelu"])
  def test_all_implementations_match_reference(self, name, activation):
    model, twin = ntk_reference.model_and_twin(name, activation, seed=2)
    x = ntk_reference.inputs(7)
    jac = ntk_reference.loop_jacobian(twin, x)  # [7, P]
    loop_square, loop_rect = jac @ jac.T, jac @ jac[:5].T  # [7, 7], [7, 5]
    gram = lambda impl, x2=None: ntk_tf.ntk_gram(model, x, x2, block_size=3, dtype="float64",
                                                 implementation=impl, progress=False)
    ref_square, ref_rect = gram("jacobian"), gram("jacobian", x[:5])
    self.assertLessEqual(ntk_reference.rel_error(ref_square, loop_square), 1e-10)
    for impl in _FAST:
      with self.subTest(implementation=impl):
        square, rect = gram(impl), gram(impl, x[:5])
        self.assertEqual(square.dtype, np.float64)
        self.assertEqual(rect.shape, (7, 5))
        self.assertLessEqual(ntk_reference.rel_error(square, ref_square), 1e-10)
        self.assertLessEqual(ntk_reference.rel_error(rect, ref_rect), 1e-10)
        self.assertLessEqual(ntk_reference.rel_error(rect, loop_rect), 1e-10)

  def test_unknown_layer_types_fall_back(self):
    old_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
      model = _unknown_layers_model()
    finally:
      keras.config.set_dtype_policy(old_policy)
    self.assertTrue(all(v.dtype == "float64" for v in model.weights))
    x = ntk_reference.inputs(5)
    jac = ntk_reference.loop_jacobian(model, x)
    for impl in ("jacobian",) + _FAST:
      with self.subTest(implementation=impl):
        theta = ntk_tf.ntk_gram(model, x, block_size=2, dtype="float64", implementation=impl,
                                progress=False)
        self.assertLessEqual(ntk_reference.rel_error(theta, jac @ jac.T), 1e-10)


if __name__ == "__main__":
  absltest.main()
