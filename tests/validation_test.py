"""Tests for ntk_tf.validation: each check accepts good values and names the bad one."""

import traceback
from unittest import mock
import warnings

from absl.testing import absltest
from absl.testing import parameterized
import keras
import numpy as np

from tests import test_util  # pylint: disable=unused-import
import ntk_tf
from ntk_tf import validation


def _dense_model(outputs=1, input_shape=(3,), trainable=True):
  inputs = keras.Input(input_shape)
  layer = keras.layers.Dense(outputs, trainable=trainable, name="head")
  return keras.Model(inputs, layer(keras.layers.Flatten()(inputs)), name="toy")


def _two_input_model():
  a, b = keras.Input((3,)), keras.Input((2,))
  return keras.Model([a, b], keras.layers.Dense(1)(keras.layers.Concatenate()([a, b])),
                     name="two_in")


class _Logits(keras.Model):
  """A subclassed model: Dense(`logits`), or two Dense(1) heads with `two_heads`."""

  def __init__(self, logits=1, two_heads=False):
    super().__init__(name="sub")
    self.head = keras.layers.Dense(logits)
    self.other = keras.layers.Dense(1) if two_heads else None

  def call(self, x):
    return self.head(x) if self.other is None else [self.head(x), self.other(x)]


def _built(model, width=3):
  model(np.zeros((1, width), np.float32))
  return model


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

  def test_rejects_complex_by_name(self):
    x = np.ones((2, 2, 3)) + 1j
    for model in (self.model, _built(_Logits(), width=3)):
      with warnings.catch_warnings():
        warnings.simplefilter("error")  # No NumPy ComplexWarning: refused before any cast.
        with self.assertRaisesRegex(ValueError, r"x must be real.*Received: x.dtype=complex128"):
          validation.check_inputs(model, x if model is self.model else x[:, 0])

  def test_rejects_several_input_arrays(self):
    with self.assertRaisesRegex(ValueError, r"one array \[N, ...\].*Received: x = a list of 2 "):
      validation.check_inputs(_built(_Logits()), [np.zeros((4, 3)), np.zeros((4, 2))])

  def test_uint8_warns_once_and_keeps_raw_values(self):
    x = np.arange(12, dtype=np.uint8).reshape(2, 2, 3) * np.uint8(20)  # up to 220
    with mock.patch.object(validation, "_warned", set()):
      with self.assertWarnsRegex(UserWarning, r"x is uint8: .* raw 0-255 values"):
        got = validation.check_inputs(self.model, x)
      with warnings.catch_warnings():
        warnings.simplefilter("error")
        validation.check_inputs(self.model, x, name="x2")  # Once per process.
    np.testing.assert_array_equal(got, x.astype(np.float32))

  def test_subclassed_output_checked_on_one_example(self):
    validation.check_inputs(_built(_Logits()), np.zeros((4, 3)))
    with self.assertRaisesRegex(ValueError, r"one output logit.*Received: model 'sub' with "
                                r"output shape \(1, 10\) for one example"):
      validation.check_inputs(_built(_Logits(10)), np.zeros((4, 3)))
    with self.assertRaisesRegex(ValueError, "Received: model 'sub' with 2 outputs"):
      validation.check_inputs(_built(_Logits(two_heads=True)), np.zeros((4, 3)))


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
    with self.assertRaisesRegex(ValueError, "one input.*Received: model 'two_in' with 2 inputs"):
      validation.check_single_logit(_two_input_model())
    with self.assertRaisesRegex(ValueError, "not built.*Received: model 'sub' with built=False"):
      validation.check_single_logit(_Logits())

  def test_parameter_count_counts_trainable_scalars_only(self):
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(5)(inputs)  # 4*5 + 5 = 25
    normalized = keras.layers.BatchNormalization()(hidden)  # gamma, beta: 10 (+10 statistics)
    frozen = keras.layers.Dense(3, trainable=False)(normalized)  # 18, frozen
    model = keras.Model(inputs, keras.layers.Dense(1)(frozen))  # 3 + 1 = 4
    self.assertEqual(validation.parameter_count(model), 25 + 10 + 4)


class UnsupportedModelsTest(parameterized.TestCase):
  """ntk_gram and jacobian refuse what they do not take in one line, before any trace."""

  _X = np.random.RandomState(0).randn(4, 3).astype(np.float32)

  def assert_refused(self, pattern, model, x, jacobian_pattern=None):
    """`pattern` for both, or for ntk_gram only when `jacobian_pattern` is given."""
    for fn, expected in ((lambda: ntk_tf.ntk_gram(model, x, progress=False), pattern),
                         (lambda: ntk_tf.jacobian(model, x), jacobian_pattern or pattern)):
      with self.assertRaisesRegex(ValueError, expected) as caught:
        fn()
      self.assertNotIn("\n", str(caught.exception))
      frames = [f.filename for f in traceback.extract_tb(caught.exception.__traceback__)]
      self.assertEmpty([f for f in frames if "tensorflow" in f or "keras" in f], msg=frames)

  def test_two_inputs(self):
    for x in ([self._X, self._X[:, :2]], self._X):
      self.assert_refused(r"^ntk_tf expects a model with one input.* model 'two_in' with 2 inputs",
                          _two_input_model(), x)

  def test_subclassed_ten_logits(self):
    # ntk_gram takes K logits with an output kernel (output_kernel_test); jacobian one logit.
    self.assert_refused(r"^The model 'sub' has K=10 output logits.*output_kernel.*'full', "
                        r"'diagonal', 'trace', 'pseudo'.*Received: output_kernel=None",
                        _built(_Logits(10)), self._X,
                        jacobian_pattern=r"^ntk_tf expects a model with one output logit.* "
                        r"model 'sub' with output shape \(1, 10\)")

  def test_subclassed_two_outputs(self):
    self.assert_refused("one output.* model 'sub' with 2 outputs",
                        _built(_Logits(two_heads=True)), self._X)

  def test_unbuilt_subclassed(self):
    self.assert_refused("not built.* model 'sub' with built=False", _Logits(), self._X)

  def test_functional_ten_logits(self):
    self.assert_refused(r"^The model 'toy' has K=10 output logits.*Received: output_kernel=None",
                        _dense_model(outputs=10), self._X,
                        jacobian_pattern=r"one output logit.* model 'toy' with output shape "
                        r"\(None, 10\)")

  def test_complex_inputs(self):
    for model in (_dense_model(), _built(_Logits())):
      self.assert_refused("x1? must be real.*Received: x1?.dtype=complex64", model,
                          self._X + 1j * self._X)

  def test_uint8_images_warn_and_use_raw_values(self):
    model = _dense_model(input_shape=(2, 2, 3))
    x = (np.arange(24).reshape(2, 2, 2, 3) * 10).astype(np.uint8)
    with mock.patch.object(validation, "_warned", set()):
      with self.assertWarnsRegex(UserWarning, "raw 0-255 values"):
        theta = ntk_tf.ntk_gram(model, x, progress=False)
    np.testing.assert_array_equal(theta, ntk_tf.ntk_gram(model, x.astype(np.float32),
                                                         progress=False))


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
