"""Tests for `structured.geometry.conv_gradient` and the Grams built on it.

Per-example kernel gradients against two independent float64 computations:
a per-example GradientTape gradient of sum(conv(x_i) * D_i) (undilated
kernels: TF's CPU conv gradients take no dilation) and the definition
g_i[a, b, :, :] = sum_{oh, ow} x_pad_i[oh s + a d, ow s + b d, :]^T D_i[oh, ow, :]
as a NumPy loop over kernel offsets. The NumPy engine's Grams, every
jacobian-form conv's gradients by conv_gradient or all by NumPy
(`geometry.MIN_TF_GRADIENT_MACS` 0 or huge), against per-example GradientTape
Grams. Run with oneDNN off and on (tests/BUILD twins): oneDNN computes the
float32 conv gradients and gets a 1x1 stride-2 one wrong (ntk_tf/onednn.py).
"""

from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import keras
import numpy as np
import tensorflow as tf

from tests import test_util  # pylint: disable=unused-import
from tests import ntk_reference as brute
import ntk_tf
from ntk_tf import onednn
from ntk_tf.ntk import structured
from ntk_tf.ntk.structured import geometry

_TOL = {"float32": 2e-5, "float64": 1e-12}


def _conv(kernel, strides, padding, dilation, c_in, filters, dtype):
  """A built Conv2D (no bias) with Gaussian weights in `dtype`."""
  layer = keras.layers.Conv2D(filters, kernel, strides=strides, padding=padding,
                              dilation_rate=dilation, use_bias=False, dtype=dtype)
  layer.build((None, None, None, c_in))
  layer.kernel.assign(np.random.default_rng(0).normal(size=layer.kernel.shape))
  return layer


def _case(kernel, strides, padding, dilation, size, n, c_in=3, filters=5, dtype="float64"):
  """(layer, inputs [N, H, W, C_in], cotangents [N, H', W', C]) in `dtype`."""
  layer = _conv(kernel, strides, padding, dilation, c_in, filters, dtype)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(n, size, size, c_in))
  out_shape = layer.compute_output_shape((n, size, size, c_in))
  cot = rng.normal(size=out_shape)
  return layer, x.astype(dtype), cot.astype(dtype)


def _tape_gradients(layer, x, cot) -> np.ndarray:
  """[N, K*C]: per example, the GradientTape gradient of sum(conv(x_i) * D_i) in float64."""
  rows = []
  kernel = tf.Variable(np.asarray(layer.kernel, np.float64))
  for i in range(x.shape[0]):
    with tf.GradientTape() as tape:
      z = tf.nn.conv2d(tf.constant(x[i:i + 1], tf.float64), kernel, layer.strides,
                       layer.padding.upper())  # [1, H', W', C]
      total = tf.reduce_sum(z * cot[i:i + 1])
    rows.append(tape.gradient(total, kernel).numpy().ravel())  # [K*C]
  return np.stack(rows)


def _loop_gradients(layer, x, cot) -> np.ndarray:
  """[N, K*C]: the definition, a loop over kernel offsets (float64, NumPy only)."""
  (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.strides, layer.dilation_rate
  n, out_h, out_w, c = cot.shape
  h, w = x.shape[1:3]
  if layer.padding == "same":  # TF 'same': total padding split, the larger half after.
    pad_h = max((out_h - 1) * sh + (kh - 1) * dh + 1 - h, 0)
    pad_w = max((out_w - 1) * sw + (kw - 1) * dw + 1 - w, 0)
  else:
    pad_h = pad_w = 0
  padded = np.pad(np.asarray(x, np.float64),
                  ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2),
                   (0, 0)))
  grads = np.zeros((n, kh, kw, x.shape[-1], c))
  for a in range(kh):
    for b in range(kw):
      window = padded[:, a * dh:a * dh + (out_h - 1) * sh + 1:sh,
                      b * dw:b * dw + (out_w - 1) * sw + 1:sw]  # [N, H', W', C_in]
      grads[:, a, b] = np.einsum("nhwk,nhwc->nkc", window, cot)
  return grads.reshape(n, -1)


def _conv_gradient(layer, x, cot) -> np.ndarray:
  paddings, index = geometry.patch_indices(layer, x.shape[1:3])
  n, out_h, out_w, c = cot.shape
  fn = tf.function(lambda inputs, d: geometry.conv_gradient(layer, inputs, d, paddings, index))
  return fn(tf.constant(x), tf.constant(cot.reshape(n, out_h * out_w, c))).numpy()


class ConvGradientTest(parameterized.TestCase):

  @parameterized.product(kernel=[1, 3, (2, 3)], strides=[1, 2], padding=["same", "valid"],
                         size=[8, 7], dtype=["float64", "float32"])
  def test_matches_per_example_tape_gradients(self, kernel, strides, padding, size, dtype):
    layer, x, cot = _case(kernel, strides, padding, 1, size, n=3, dtype=dtype)
    layer64, x64, cot64 = _case(kernel, strides, padding, 1, size, n=3)
    expected = _tape_gradients(layer64, x64, cot64)
    np.testing.assert_allclose(_loop_gradients(layer64, x64, cot64), expected,
                               rtol=0, atol=1e-12 * np.abs(expected).max())
    actual = _conv_gradient(layer, x, cot)
    self.assertEqual(actual.dtype, np.dtype(dtype))
    self.assertLess(brute.rel_error(actual, expected), _TOL[dtype])

  @parameterized.product(dilation=[2, (1, 3)], padding=["same", "valid"],
                         dtype=["float64", "float32"])
  def test_dilated_kernels_match_the_definition(self, dilation, padding, dtype):
    layer, x, cot = _case(3, 1, padding, dilation, 9, n=2, dtype=dtype)
    expected = _loop_gradients(layer, x, cot)
    self.assertLess(brute.rel_error(_conv_gradient(layer, x, cot), expected), _TOL[dtype])

  @parameterized.product(n=[1, 3], c_in=[1, 4, 8], size=[16, 8])
  def test_onednn_affected_1x1_stride_2_is_exact(self, n, c_in, size):
    """The shapes whose float32 oneDNN filter gradient is wrong (ntk_tf/onednn.py)."""
    layer, x, cot = _case(1, 2, "same", 1, size, n=n, c_in=c_in, filters=16, dtype="float32")
    expected = _loop_gradients(layer, x, cot)
    self.assertLess(brute.rel_error(_conv_gradient(layer, x, cot), expected), _TOL["float32"])

  def test_gradient_on_host_for_small_kernels_only(self):
    small = _conv(5, 1, "same", 1, 6, 16, "float32")  # LeNet's conv_1: 256 * 150 * 16 MACs.
    small64 = _conv(5, 1, "same", 1, 6, 16, "float64")
    large = _conv(3, 1, "same", 1, 64, 64, "float32")  # ResNet18's stage 0: 1024 * 576 * 64.
    projection = _conv(1, 2, "same", 1, 64, 128, "float32")
    dilated = _conv(3, 1, "same", 2, 6, 16, "float32")
    # With oneDNN on, float32 kernels > 1x1 take the grouped route in TF, whatever their size.
    self.assertEqual(geometry.gradient_on_host(small, 256), not onednn.enabled())
    self.assertEqual(geometry.grouped_route(small), onednn.enabled())
    self.assertTrue(geometry.gradient_on_host(small64, 256))  # Eigen: no groups in float64.
    self.assertFalse(geometry.grouped_route(small64))
    self.assertFalse(geometry.grouped_route(dilated))
    self.assertFalse(geometry.grouped_route(projection))
    self.assertFalse(geometry.grouped_route(large))  # 64 x 64 channels: the per-example loop
    self.assertFalse(geometry.gradient_on_host(large, 1024))
    self.assertFalse(geometry.gradient_on_host(projection, 1))

  def test_shape_is_examples_by_kernel_size(self):
    layer, x, cot = _case((2, 3), 2, "same", 1, 7, n=4, c_in=3, filters=5)
    self.assertEqual(_conv_gradient(layer, x, cot).shape, (4, 2 * 3 * 3 * 5))


# MIN_TF_GRADIENT_MACS settings: every jacobian-form conv by conv_gradient, or by NumPy.
_ALL_TF, _ALL_HOST = 0, 1 << 62


class NumpyEngineGramTest(parameterized.TestCase):
  """Grams of the NumPy engine, every conv kernel in jacobian form, by either gradient engine."""

  @parameterized.product(name=["resnet18", "lenet"], dtype=["float32", "float64"],
                         min_macs=[_ALL_TF, _ALL_HOST])
  def test_gram_matches_float64_reference(self, name, dtype, min_macs):
    model, twin = brute.model_and_twin(name, "relu", seed=0)
    brute.randomize_batch_norm(twin)
    model.set_weights(twin.get_weights())  # Rounded to float32, then copied back:
    twin.set_weights([np.asarray(w, np.float64) for w in model.get_weights()])
    x = brute.inputs(6)
    expected = brute.brute_force_gram(twin, x.astype(np.float64))
    with mock.patch.object(geometry, "MIN_TF_GRADIENT_MACS", min_macs):
      gram = ntk_tf.ntk_gram(model, x, implementation="structured", dtype=dtype,
                             block_size=4, matmul_engine="numpy", choices="jacobian",
                             progress=False)
    self.assertLess(brute.rel_error(gram, expected), 10 * _TOL[dtype])

  @parameterized.parameters(_ALL_TF, _ALL_HOST)
  def test_rectangular_gram_matches_reference(self, min_macs):
    model, twin = brute.model_and_twin("resnet18", "relu", seed=1)
    x1, x2 = brute.inputs(5, seed=2), brute.inputs(3, seed=3)
    expected = brute.brute_force_gram(twin, x1.astype(np.float64), x2.astype(np.float64))
    with mock.patch.object(geometry, "MIN_TF_GRADIENT_MACS", min_macs):
      gram = ntk_tf.ntk_gram(model, x1, x2, implementation="structured", dtype="float32",
                             block_size=4, matmul_engine="numpy", choices="jacobian",
                             progress=False)
    self.assertLess(brute.rel_error(gram, expected), 10 * _TOL["float32"])

  def test_engines_split_by_per_example_work(self):
    """LeNet's convs (8x8 inputs) on the host by default (in TF, grouped, with oneDNN on in
    float32), all in TF with no minimum."""
    model = ntk_tf.models.get("lenet", input_shape=brute.SHAPE)
    block_fn = structured.StructuredNtk(model, choices="jacobian", matmul_engine="numpy")
    self.assertEqual([p.name for p in block_fn.features.host_plans],
                     [] if onednn.enabled() else ["conv_0", "conv_1"])
    block_fn = structured.StructuredNtk(model, "float64", choices="jacobian",
                                        matmul_engine="numpy")
    self.assertEqual([p.name for p in block_fn.features.host_plans], ["conv_0", "conv_1"])
    with mock.patch.object(geometry, "MIN_TF_GRADIENT_MACS", _ALL_TF):
      block_fn = structured.StructuredNtk(model, choices="jacobian", matmul_engine="numpy")
    self.assertEqual(block_fn.features.host_plans, [])


if __name__ == "__main__":
  absltest.main()
