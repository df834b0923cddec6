"""Tests for ntk_tf.ntk.structured against per-example GradientTape Grams (float64)."""

from absl.testing import absltest
from absl.testing import parameterized
import keras
import numpy as np
import tensorflow as tf

from tests import test_util  # pylint: disable=unused-import
from tests import ntk_reference as brute
import ntk_tf
from ntk_tf.ntk import structured

SHAPE = (8, 8, 3)
_CACHE = {}


def _model_and_reference(name, activation):
  """A float64 model, inputs x [10, 8, 8, 3] and its brute-force Gram (cached)."""
  key = (name, activation)
  if key not in _CACHE:
    kwargs = {"width": 4} if name == "resnet18" else {}
    with brute.floatx("float64"):
      model = ntk_tf.models.get(name, input_shape=SHAPE, activation=activation, **kwargs)
    brute.randomize_batch_norm(model)
    x = np.random.default_rng(1).normal(size=(10,) + SHAPE)
    _CACHE[key] = (model, x, brute.brute_force_gram(model, x))
  return _CACHE[key]


class Scale(keras.layers.Layer):
  """A custom layer with a trainable per-channel scale the structured path does not know."""

  def build(self, input_shape):
    self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

  def call(self, x):
    return x * (self.scale + 0.1 * self.scale ** 2)


def _unknown_layers_model():
  """Conv2D, LayerNorm, DepthwiseConv2D, a custom layer and a twice-used Dense."""
  with brute.floatx("float64"):
    inputs = keras.Input(SHAPE)
    h = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="conv")(inputs)
    h = keras.layers.LayerNormalization(name="layer_norm")(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", activation="tanh", name="depthwise")(h)
    h = Scale(name="scale")(h)
    h = keras.layers.Flatten()(h)
    shared = keras.layers.Dense(6, activation="tanh", name="shared")
    h = keras.layers.Dense(6, name="pre")(h)
    h = shared(shared(h))
    logit = keras.layers.Dense(1, name="logit")(h)
    model = keras.Model(inputs, logit)
  rng = np.random.default_rng(3)
  for v in model.trainable_variables:  # Move LayerNorm/Scale off their trivial init.
    v.assign(np.asarray(v) + rng.normal(0, 0.2, v.shape))
  return model


def _conv_geometry_model(kernel, strides, padding, dilation, shape=(9, 8, 2)):
  """A float64 Conv2D -> tanh -> Dense model of one conv geometry."""
  with brute.floatx("float64"):
    inputs = keras.Input(shape)
    h = keras.layers.Conv2D(3, kernel, strides=strides, padding=padding, dilation_rate=dilation,
                            activation="tanh", name="conv")(inputs)
    logit = keras.layers.Dense(1, name="logit")(keras.layers.Flatten()(h))
    return keras.Model(inputs, logit)


_GEOMETRIES = [
    dict(kernel=3, strides=1, padding="same", dilation=1),
    dict(kernel=(2, 4), strides=(2, 1), padding="same", dilation=1),
    dict(kernel=3, strides=2, padding="valid", dilation=1),
    dict(kernel=(3, 2), strides=(1, 3), padding="same", dilation=1),
    dict(kernel=3, strides=1, padding="same", dilation=2),
    dict(kernel=1, strides=2, padding="valid", dilation=1),
]


class StructuredTest(parameterized.TestCase):

  @parameterized.parameters(*_GEOMETRIES)
  def test_conv_patches_match_extract_patches(self, kernel, strides, padding, dilation):
    model = _conv_geometry_model(kernel, strides, padding, dilation)
    layer = model.get_layer("conv")
    x = np.random.default_rng(0).normal(size=(4, 9, 8, 2))
    kh, kw = layer.kernel_size
    expected = tf.image.extract_patches(  # [N, H', W', kh * kw * C_in]
        x, sizes=[1, kh, kw, 1], strides=[1, *layer.strides, 1],
        rates=[1, *layer.dilation_rate, 1], padding=padding.upper()).numpy()
    self.assertEqual(expected.shape[1:3], tuple(layer(x).shape[1:3]))
    paddings, index = structured.patch_indices(layer, (9, 8))
    actual = structured.geometry.conv_patches(layer, tf.constant(x), paddings, index).numpy()
    np.testing.assert_array_equal(actual, expected.reshape(4, -1, kh * kw * 2))
    np.testing.assert_array_equal(structured.host_patches(layer, x),
                                  expected.reshape(4, -1, kh * kw * 2))

  @parameterized.parameters(*[dict(g, choices=c) for g in _GEOMETRIES
                              for c in ("structured", "jacobian")])
  def test_conv_geometries_match_reference(self, kernel, strides, padding, dilation, choices):
    model = _conv_geometry_model(kernel, strides, padding, dilation)
    x = np.random.default_rng(1).normal(size=(5, 9, 8, 2))
    expected = brute.brute_force_gram(model, x)
    for engine in ("numpy", "xla"):  # Host and XLA per-example conv gradients.
      block_fn = structured.make_block_fn(model, "float64", choices=choices, matmul_engine=engine)
      actual = brute.gram_by_blocks(block_fn, x, None, block_size=3)
      self.assertLessEqual(brute.rel_error(actual, expected), 1e-10, msg=engine)

  @parameterized.product(name=["mlp", "lenet", "resnet18"], activation=["relu", "gelu"])
  def test_square_gram_matches_reference(self, name, activation):
    model, x, expected = _model_and_reference(name, activation)
    block_fn = structured.make_block_fn(model, "float64")
    actual = brute.gram_by_blocks(block_fn, x, block_size=4)  # 10 = 4 + 4 + 2.
    self.assertLessEqual(brute.rel_error(actual, expected), 1e-10)

  @parameterized.parameters(
      *[dict(name=n, choices=c, engine="numpy") for n in ("mlp", "lenet", "resnet18")
        for c in ("structured", "jacobian")],
      *[dict(name="lenet", choices=c, engine="xla") for c in ("structured", "jacobian")])
  def test_forced_forms_rectangular(self, name, choices, engine):
    model, x, expected = _model_and_reference(name, "relu")
    block_fn = structured.make_block_fn(model, "float64", choices=choices, matmul_engine=engine)
    actual = brute.gram_by_blocks(block_fn, x[:7], x[7:], block_size=3)
    self.assertLessEqual(brute.rel_error(actual, expected[:7, 7:]), 1e-10)

  @parameterized.product(name=["mlp", "lenet"], choices=[None, "structured"],
                         engine=["numpy", "xla"])
  def test_diagonal_blocks_are_exactly_symmetric(self, name, choices, engine):
    model, x, expected = _model_and_reference(name, "relu")
    block_fn = structured.make_block_fn(model, "float64", choices=choices, matmul_engine=engine)
    self.assertTrue(block_fn.exactly_symmetric)
    theta = block_fn(x)
    np.testing.assert_array_equal(theta, theta.T)
    self.assertLessEqual(brute.rel_error(theta, expected), 1e-10)

  def test_unknown_layers_fall_back_to_reference(self):
    model = _unknown_layers_model()
    x = np.random.default_rng(2).normal(size=(9,) + SHAPE)
    block_fn = structured.make_block_fn(model, "float64")
    kinds = {p.name: p.kind for p in block_fn.plans}
    self.assertEqual(kinds["conv"], "conv2d")
    self.assertEqual(kinds["pre"], "dense")
    for name in ("layer_norm", "depthwise", "scale", "shared"):
      self.assertEqual(kinds[name], "reference", name)
    self.assertEqual(sum(p.params for p in block_fn.plans),
                     sum(int(np.prod(v.shape)) for v in model.trainable_variables))
    expected = brute.brute_force_gram(model, x)
    actual = brute.gram_by_blocks(block_fn, x, block_size=4)
    self.assertLessEqual(brute.rel_error(actual, expected), 1e-10)

  def test_float32_and_float64_accumulation(self):
    model, x, expected = _model_and_reference("lenet", "gelu")
    model32 = keras.models.clone_model(model)  # Same architecture, float64 weights.
    model32.set_weights(model.get_weights())
    for accumulate in (None, "float64"):
      block_fn = structured.make_block_fn(model32, "float32", accumulate_dtype=accumulate)
      actual = block_fn(x)
      self.assertEqual(actual.dtype, np.float64 if accumulate else np.float32)
      self.assertLessEqual(brute.rel_error(actual, expected), 1e-5)

  def test_flop_report_choices_are_the_cheaper_form(self):
    model = ntk_tf.models.lenet((32, 32, 3))
    report = structured.flop_report(model, (32, 32, 3), 256, 256)
    self.assertEqual([r["layer"] for r in report],
                     ["conv_0", "conv_1", "dense_0", "dense_1", "logit"])
    self.assertEqual([r["params"] for r in report], [456, 2416, 123000, 10164, 85])
    for r in report:
      cheaper = "structured" if r["structured_flops"] <= r["jacobian_flops"] else "jacobian"
      self.assertEqual(r["choice"], cheaper, r)
    # Dense 1024 -> 120: structured 2 N^2 (1024 + 1 + 120) + N^2 by hand.
    self.assertEqual(report[2]["structured_flops"], 2 * 256 * 256 * 1145 + 256 * 256)
    self.assertEqual(report[0]["choice"], "jacobian")  # P^2 = 1024^2 positions pairs.

  def test_features_do_not_retrace_for_partial_blocks(self):
    model, x, _ = _model_and_reference("mlp", "relu")
    block_fn = structured.make_block_fn(model, "float64", matmul_engine="xla")
    block_fn(x[:4])
    traces = block_fn.features.traced_fn.experimental_get_tracing_count()
    block_fn(x[4:8], x[8:])  # A new full block and a partial one, padded to 4.
    self.assertEqual(block_fn.features.traced_fn.experimental_get_tracing_count(), traces)

  def test_cache_clear_recomputes_the_same_block(self):
    model, x, expected = _model_and_reference("mlp", "relu")
    block_fn = structured.make_block_fn(model, "float64", matmul_engine="numpy")
    first = block_fn(x[:4], x[4:8])
    self.assertEqual(len(block_fn.cache), 2)  # One entry per distinct block.
    block_fn.cache.clear()
    self.assertEqual((len(block_fn.cache), block_fn.cache.size_bytes), (0, 0))
    np.testing.assert_array_equal(block_fn(x[:4], x[4:8]), first)
    self.assertLessEqual(brute.rel_error(first, expected[:4, 4:8]), 1e-10)

  def test_bad_inputs_name_the_value(self):
    model, x, _ = _model_and_reference("mlp", "relu")
    with self.assertRaisesRegex(ValueError, r"Received: shape=\(2, 4, 4, 3\)"):
      structured.make_block_fn(model, "float64")(np.zeros((2, 4, 4, 3)))
    with self.assertRaisesRegex(ValueError, "Received: choice='fast'"):
      structured.make_block_fn(model, "float64", choices="fast")
    with self.assertRaisesRegex(ValueError, "Received: matmul_engine='blas'"):
      structured.make_block_fn(model, "float64", matmul_engine="blas")
    two_logits = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with self.assertRaisesRegex(ValueError, r"K=2 output logits.*Received: output_kernel=None"):
      structured.make_block_fn(two_logits, "float32")  # K > 1 needs an output kernel.


if __name__ == "__main__":
  absltest.main()
