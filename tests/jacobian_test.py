"""Tests for ntk_tf.jacobian against a per-example GradientTape loop."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tests import test_util  # pylint: disable=unused-import
from tests import ntk_reference
import ntk_tf


class JacobianValueTest(parameterized.TestCase):

  @parameterized.product(name=list(ntk_reference.SMALL_MODELS), activation=["relu", "gelu"])
  def test_float64_matches_loop(self, name, activation):
    model, twin = ntk_reference.model_and_twin(name, activation, seed=3)
    x = ntk_reference.inputs(7)
    expected = ntk_reference.loop_jacobian(twin, x)  # [N, P]
    actual = ntk_tf.jacobian(model, x, dtype="float64", batch_size=3)
    self.assertEqual(actual.dtype, np.float64)
    self.assertLessEqual(ntk_reference.rel_error(actual, expected), 1e-10)

  @parameterized.product(name=list(ntk_reference.SMALL_MODELS))
  def test_float32_matches_loop(self, name):
    model, twin = ntk_reference.model_and_twin(name, "relu", seed=3)
    x = ntk_reference.inputs(5, seed=1)
    expected = ntk_reference.loop_jacobian(twin, x)
    actual = ntk_tf.jacobian(model, x)
    self.assertEqual(actual.dtype, np.float32)
    self.assertLessEqual(ntk_reference.rel_error(actual, expected), 1e-4)

  def test_linear_model_jacobian_is_input(self):
    # f(x) = w . vec(x) + b: J(x) = [vec(x), 1] exactly.
    import keras  # pylint: disable=g-import-not-at-top
    inputs = keras.Input(shape=(2, 3, 1))
    logit = keras.layers.Dense(1)(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, logit)
    x = ntk_reference.inputs(4)[:, :2, :3, :1]
    expected = np.concatenate([x.reshape(4, -1), np.ones((4, 1))], axis=1)
    np.testing.assert_allclose(ntk_tf.jacobian(model, x, dtype="float64"), expected, rtol=1e-7)

  def test_batchnorm_inference_mode_samples_do_not_interact(self):
    model, _ = ntk_reference.model_and_twin("resnet18", "relu", seed=3)
    x = ntk_reference.inputs(6)
    together = ntk_tf.jacobian(model, x, dtype="float64")
    alone = ntk_tf.jacobian(model, x[2:3], dtype="float64")
    np.testing.assert_allclose(together[2:3], alone, rtol=1e-10, atol=1e-14)


class JacobianShapeTest(parameterized.TestCase):

  @parameterized.parameters(("mlp", 1), ("mlp", 4), ("resnet18", 1))
  def test_shape(self, name, n):
    model, _ = ntk_reference.model_and_twin(name, "relu", seed=3)
    jac = ntk_tf.jacobian(model, ntk_reference.inputs(n), batch_size=3)
    self.assertEqual(jac.shape, (n, model.count_params() - sum(
        int(np.prod(v.shape)) for v in model.non_trainable_variables)))


class PrecisionTest(absltest.TestCase):

  def test_float64_copy(self):
    model, twin = ntk_reference.model_and_twin("resnet18", "gelu", seed=3)
    copy = ntk_tf.as_float64_model(model)
    self.assertTrue(all(v.dtype == "float64" for v in copy.weights))
    x = ntk_reference.inputs(3)
    out = copy(x.astype(np.float64), training=False)
    self.assertEqual(out.dtype, "float64")
    np.testing.assert_allclose(out, twin(x.astype(np.float64), training=False), rtol=1e-12)


class BadInputTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.model = ntk_tf.models.get("mlp", input_shape=ntk_reference.SHAPE)

  def test_wrong_input_shape(self):
    with self.assertRaisesRegex(ValueError, r"x.shape=\(3, 8, 8, 4\)"):
      ntk_tf.jacobian(self.model, np.zeros((3, 8, 8, 4), np.float32))

  def test_nan_input(self):
    x = ntk_reference.inputs(3)
    x[1, 0, 0, 0] = np.nan
    with self.assertRaisesRegex(ValueError, "1 NaN/inf"):
      ntk_tf.jacobian(self.model, x)

  def test_nan_weight(self):
    weights = self.model.get_weights()
    weights[0][0, 0] = np.nan
    self.model.set_weights(weights)
    with self.assertRaisesRegex(ValueError, "dense_0/kernel"):
      ntk_tf.jacobian(self.model, ntk_reference.inputs(2))

  def test_bad_dtype(self):
    with self.assertRaisesRegex(ValueError, "dtype='float16'"):
      ntk_tf.jacobian(self.model, ntk_reference.inputs(2), dtype="float16")

  def test_bad_batch_size(self):
    with self.assertRaisesRegex(ValueError, "Received: batch_size=0"):
      ntk_tf.jacobian(self.model, ntk_reference.inputs(2), batch_size=0)

  def test_multi_output_model_refused(self):
    import keras  # pylint: disable=g-import-not-at-top
    inputs = keras.Input(shape=(3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with self.assertRaisesRegex(ValueError, r"output shape \(None, 2\)"):
      ntk_tf.jacobian(model, np.zeros((2, 3), np.float32))


if __name__ == "__main__":
  absltest.main()
