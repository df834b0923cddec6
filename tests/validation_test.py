"""Tests for ntk_tf.validation: each check accepts good values and names the bad one."""

from absl.testing import absltest
from absl.testing import parameterized
import keras
import numpy as np

from tests import test_util  # pylint: disable=unused-import
from ntk_tf import validation


def _dense_model(outputs=1, input_shape=(3,), trainable=True):
  inputs = keras.Input(input_shape)
  layer = keras.layers.Dense(outputs, trainable=trainable, name="head")
  return keras.Model(inputs, layer(keras.layers.Flatten()(inputs)), name="toy")


class IntChecksTest(parameterized.TestCase):

  @parameterized.parameters(1, 7, np.int64(3), np.int32(1))
  def test_positive_int_accepts(self, value):
    got = validation.check_positive_int(value, "n")
    self.assertIs(type(got), int)
    self.assertEqual(got, int(value))

  @parameterized.parameters((0, "n=0"), (-2, "n=-2"), (1.0, "n=1.0"), (True, "n=True"),
                            ("3", "n='3'"), (None, "n=None"))
  def test_positive_int_rejects(self, value, text):
    with self.assertRaisesRegex(ValueError, f"n must be a positive int. Received: {text}"):
      validation.check_positive_int(value, "n")

  @parameterized.parameters(0, 5, np.int64(0))
  def test_non_negative_int_accepts(self, value):
    self.assertEqual(validation.check_non_negative_int(value, "seed"), int(value))

  @parameterized.parameters((-1, "seed=-1"), (2.0, "seed=2.0"), (False, "seed=False"))
  def test_non_negative_int_rejects(self, value, text):
    with self.assertRaisesRegex(ValueError, f"non-negative int. Received: {text}"):
      validation.check_non_negative_int(value, "seed")

  def test_k_accepts_and_none_means_n(self):
    self.assertEqual(validation.check_k(None, 9), 9)
    self.assertEqual(validation.check_k(1, 9), 1)
    self.assertEqual(validation.check_k(np.int64(9), 9), 9)

  @parameterized.parameters((0, "0"), (10, "10"), (2.5, "2.5"), (True, "True"))
  def test_k_rejects(self, value, text):
    with self.assertRaisesRegex(ValueError, rf"k must be an int in \[1, 9\]. Received: k={text}"):
      validation.check_k(value, 9)
    with self.assertRaisesRegex(ValueError, f"num_eigen must .* Received: num_eigen={text}"):
      validation.check_k(value, 9, name="num_eigen")


class ChoiceTest(absltest.TestCase):

  def test_accepts(self):
    self.assertEqual(validation.check_choice("b", "mode", ("a", "b")), "b")

  def test_rejects_listing_choices(self):
    with self.assertRaisesRegex(ValueError,
                                r"mode must be one of \('a', 'b'\). Received: mode='c'"):
      validation.check_choice("c", "mode", ["a", "b"])


class InputsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.model = _dense_model(input_shape=(2, 3))

  def test_accepts_and_casts_to_model_dtype(self):
    x = np.arange(12, dtype=np.float64).reshape(2, 2, 3)
    got = validation.check_inputs(self.model, x)
    self.assertEqual(got.dtype, np.float32)
    np.testing.assert_array_equal(got, x.astype(np.float32))
    self.assertEqual(validation.check_inputs(self.model, x, dtype="float64").dtype, np.float64)

  def test_subclassed_model_keeps_float_inputs(self):

    class Subclassed(keras.Model):

      def call(self, x):
        return x[:, :1]

    x64 = np.linspace(0.0, 1.0, 6).reshape(2, 3) + 1e-12  # Not float32-representable.
    got = validation.check_inputs(Subclassed(), x64)
    self.assertEqual(got.dtype, np.float64)
    np.testing.assert_array_equal(got, x64)
    self.assertEqual(validation.check_inputs(Subclassed(), np.ones((2, 3), np.int64)).dtype,
                     np.dtype(keras.config.floatx()))

  def test_rejects_wrong_shape(self):
    with self.assertRaisesRegex(ValueError, r"\[N, 2, 3\].*Received: x.shape=\(4, 3, 2\)"):
      validation.check_inputs(self.model, np.zeros((4, 3, 2)))

  def test_rejects_empty(self):
    with self.assertRaisesRegex(ValueError, r"at least one example. Received: x.shape=\(0, 2, 3\)"):
      validation.check_inputs(self.model, np.zeros((0, 2, 3)))

  def test_rejects_non_finite_counting_entries(self):
    x = np.zeros((2, 2, 3))
    x[0, 1, 2] = np.inf
    x[1, 0, 0] = np.nan
    with self.assertRaisesRegex(ValueError, "Received: x_train with 2 NaN/inf entries"):
      validation.check_inputs(self.model, x, name="x_train")

  def test_rejects_non_numeric(self):
    with self.assertRaisesRegex(ValueError, "Received: x.dtype=<U1"):
      validation.check_inputs(self.model, np.full((1, 2, 3), "a"))


class ModelChecksTest(absltest.TestCase):

  def test_finite_weights(self):
    model = _dense_model()
    validation.check_finite_weights(model)
    kernel, bias = model.get_weights()
    bias[0] = np.nan
    model.set_weights([kernel, bias])
    with self.assertRaisesRegex(ValueError, "Received: variable 'head/bias'"):
      validation.check_finite_weights(model)

  def test_single_logit_accepts_n1_and_n(self):
    validation.check_single_logit(_dense_model())
    inputs = keras.Input((3,))
    flat_logit = keras.layers.Reshape(())(keras.layers.Dense(1)(inputs))  # [N]
    validation.check_single_logit(keras.Model(inputs, flat_logit))

  def test_single_logit_rejects(self):
    with self.assertRaisesRegex(ValueError, r"Received: model 'toy' with output shape \(None, 2\)"):
      validation.check_single_logit(_dense_model(outputs=2))
    inputs = keras.Input((3,))
    two_heads = keras.Model(inputs, [keras.layers.Dense(1)(inputs), keras.layers.Dense(1)(inputs)],
                            name="two")
    with self.assertRaisesRegex(ValueError, "Received: model 'two' with 2 outputs"):
      validation.check_single_logit(two_heads)
    with self.assertRaisesRegex(ValueError, "Received: model 'toy' with 0 trainable variables"):
      validation.check_single_logit(_dense_model(trainable=False))

  def test_parameter_count_counts_trainable_scalars_only(self):
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(5)(inputs)  # 4*5 + 5 = 25
    normalized = keras.layers.BatchNormalization()(hidden)  # gamma, beta: 10 (+10 statistics)
    frozen = keras.layers.Dense(3, trainable=False)(normalized)  # 18, frozen
    model = keras.Model(inputs, keras.layers.Dense(1)(frozen))  # 3 + 1 = 4
    self.assertEqual(validation.parameter_count(model), 25 + 10 + 4)


class SignConventionTest(absltest.TestCase):

  def test_columns_and_rows(self):
    columns = np.array([[0.1, -3.0], [-2.0, 1.0]])  # pivots: -2.0 (column 0), -3.0 (column 1)
    np.testing.assert_array_equal(validation.sign_convention(columns, axis=0),
                                  [[-0.1, 3.0], [2.0, -1.0]])
    rows = np.array([[0.1, -3.0], [2.0, 1.0]])  # pivots: -3.0 (row 0), 2.0 (row 1)
    np.testing.assert_array_equal(validation.sign_convention(rows, axis=1),
                                  [[-0.1, 3.0], [2.0, 1.0]])

  def test_ties_zero_and_empty(self):
    np.testing.assert_array_equal(validation.sign_convention(np.array([[-1.0], [1.0]]))[:, 0],
                                  [1.0, -1.0])  # the first of equal |entries| decides
    np.testing.assert_array_equal(validation.sign_convention(np.zeros((3, 1))), np.zeros((3, 1)))
    self.assertEqual(validation.sign_convention(np.zeros((0, 2))).shape, (0, 2))

  def test_returns_float64_copy(self):
    vectors = np.array([[-1.0], [0.5]], np.float32)
    out = validation.sign_convention(vectors)
    self.assertEqual(out.dtype, np.float64)
    self.assertEqual(vectors[0, 0], -1.0)  # input untouched


if __name__ == "__main__":
  absltest.main()
