"""Tests for ntk_tf.ntk.auto: the FLOP rule by hand, each branch against the float64 reference."""

from absl.testing import absltest
from absl.testing import parameterized
import keras
import numpy as np

from tests import test_util  # pylint: disable=unused-import
from tests import ntk_reference
import ntk_tf
from ntk_tf.ntk import auto
from ntk_tf.ntk import gram
from ntk_tf.ntk import jacobian_block
from ntk_tf.ntk import structured
from ntk_tf.ntk.implementation import NtkImplementation


def _dense_model():
  """Dense 3 -> 2 -> 1 (biases): P = 8 + 3 = 11, F = 2 * 3 * 2 + 2 * 2 * 1 = 16."""
  inputs = keras.Input((3,))
  return keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dense(2)(inputs)))


class AutoTest(parameterized.TestCase):

  def test_rule_by_hand(self):
    n = 4
    flops = auto.implementation_flops(_dense_model(), (3,), n)
    # Per layer min(structured, jacobian), see structured.LayerPlan:
    #   Dense 3 -> 2: structured 2*16*(3+1+2) + 16 = 208; jacobian 16 + 64 + 96 + 192 = 368.
    #   Dense 2 -> 1: structured 2*16*(2+1+1) + 16 = 144; jacobian 8 + 32 + 32 + 64 = 136.
    self.assertEqual(flops[NtkImplementation.STRUCTURED], 3 * n * 16 + 208 + 136)
    self.assertEqual(flops[NtkImplementation.JACOBIAN], 3 * n * 16 + 2 * n * n * 11)
    self.assertEqual(flops[NtkImplementation.NTK_VECTOR_PRODUCTS], 6 * n * n * 16)
    with self.assertRaisesRegex(ValueError, "Received: n=0"):
      auto.implementation_flops(_dense_model(), (3,), 0)

  @parameterized.parameters(
      # (model, nominal block, expected choice, its BlockFn type)
      ("mlp", 256, NtkImplementation.STRUCTURED, structured.StructuredNtk),
      ("lenet", 4, NtkImplementation.JACOBIAN, jacobian_block.JacobianBlockFn),
      ("dense", 4, NtkImplementation.STRUCTURED, structured.StructuredNtk))
  def test_every_branch_matches_the_reference(self, name, nominal_block, expected, block_type):
    if name == "dense":
      with ntk_reference.floatx("float64"):
        twin = _dense_model()
      model, x = twin, np.random.default_rng(0).normal(size=(5, 3))
    else:
      model, twin = ntk_reference.model_and_twin(name, "relu", seed=4)
      x = ntk_reference.inputs(5)
    input_shape = tuple(model.inputs[0].shape[1:])
    flops = auto.implementation_flops(model, input_shape, nominal_block)
    choice = auto.choose_implementation(model, input_shape, nominal_block)
    self.assertEqual(choice, expected)
    self.assertEqual(choice, min(auto.CANDIDATES, key=lambda m: (flops[m],
                                                                auto.CANDIDATES.index(m))))
    self.assertIsInstance(
        gram.make_block_fn(model, "auto", "float64", 2, nominal_block=nominal_block), block_type)
    theta = ntk_tf.ntk_gram(model, x, block_size=2, implementation="auto", dtype="float64",
                            nominal_block=nominal_block, progress=False)
    self.assertLessEqual(ntk_reference.rel_error(theta, ntk_reference.brute_force_gram(twin, x)),
                         1e-10)

  @parameterized.parameters("mlp", "lenet", "dense")
  def test_ntk_vector_products_never_beat_jacobian(self, name):
    # The module docstring's bound: 6 n^2 F - (3 n F + 2 n^2 P) >= n F (4 n - 3).
    if name == "dense":
      model = _dense_model()
    else:
      model = ntk_tf.models.get(name, input_shape=ntk_reference.SHAPE)
    input_shape = tuple(model.inputs[0].shape[1:])
    forward = structured.ModelPlan(model).forward_flops()
    for n in (1, 2, 16, 256):
      flops = auto.implementation_flops(model, input_shape, n)
      gap = (flops[NtkImplementation.NTK_VECTOR_PRODUCTS] - flops[NtkImplementation.JACOBIAN])
      self.assertGreaterEqual(gap, n * forward * (4 * n - 3))


if __name__ == "__main__":
  absltest.main()
