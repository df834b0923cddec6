"""Tests of ntk_tf.onednn: the ops oneDNN gets wrong, and the routing around them.

Reference: the same computation in float64, which TensorFlow never runs
through oneDNN. The suite runs this file twice (tests/BUILD): with
TF_ENABLE_ONEDNN_OPTS=0 and =1, so the oneDNN path is tested on any x86 CPU.
The unrouted ops corrupt the heap, so they run in a subprocess.
"""

import os
import subprocess
import sys
import textwrap

from tests import test_util  # pylint: disable=unused-import  (quiet TF)
from tests import ntk_reference

from absl.testing import absltest
from absl.testing import parameterized
import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.util import _pywrap_util_port  # TF's own IsMklEnabled, to check ours

import ntk_tf
from ntk_tf import onednn

_RTOL = {"float32": 1e-5, "float64": 1e-12}

# (kernel 1x1, stride 2) geometries whose oneDNN kernel gradient was seen to
# crash or be wrong: (padding, C_in, C_out, N, H).
_BROKEN_GEOMETRIES = (
    ("same", 3, 4, 1, 16),
    ("valid", 3, 8, 1, 16),
    ("same", 4, 8, 1, 32),  # ResNet18 width 4, first projection
    ("same", 8, 16, 1, 16),  # ResNet18 width 4 and 8
    ("same", 8, 16, 3, 16),
    ("valid", 2, 8, 1, 16),
)

# An unrouted 1x1 stride-2 kernel gradient, repeated: `{padding}`, `{c_in}`, ... filled in.
_UNROUTED_FILTER_GRADIENT = textwrap.dedent("""
    import numpy as np, tensorflow as tf
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(({n}, {h}, {h}, {c_in})), rng.standard_normal((1, 1, {c_in}, {c_out}))
    @tf.function
    def kernel_gradient(x, w):
      with tf.GradientTape() as tape:
        tape.watch(w)
        y = tf.reduce_sum(tf.sin(tf.nn.conv2d(x, w, 2, "{padding}")))
      return tape.gradient(y, w)
    expected = kernel_gradient(tf.constant(x), tf.constant(w)).numpy()
    for _ in range(20):
      got = kernel_gradient(tf.constant(x, tf.float32), tf.constant(w, tf.float32)).numpy()
      assert np.linalg.norm(got - expected) <= 1e-5 * np.linalg.norm(expected), "wrong"
    """)

# The second: Pad on the channel axis, then a VALID conv (fused by oneDNN).
_UNROUTED_CHANNEL_PAD = textwrap.dedent("""
    import numpy as np, tensorflow as tf
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 8, 8, 2)), rng.standard_normal((3, 3, 2, 4))
    def conv(x, w):
      x8 = tf.pad(x, [[0, 0], [0, 0], [0, 0], [0, 6]])  # [N, H, W, 8]
      w8 = tf.pad(w, [[0, 0], [0, 0], [0, 6], [0, 0]])  # [3, 3, 8, C]
      return tf.nn.relu(tf.nn.conv2d(x8, w8, 1, "VALID"))
    expected = conv(tf.constant(x), tf.constant(w)).numpy()
    got = tf.function(conv)(tf.constant(x, tf.float32), tf.constant(w, tf.float32)).numpy()
    assert np.linalg.norm(got - expected) <= 1e-5 * np.linalg.norm(expected), "wrong"
    """)


def _run_without_onednn(script: str) -> subprocess.CompletedProcess:
  """Runs `script` in a fresh process with oneDNN off (the unrouted ops are exact there)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0")
  return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                        text=True, timeout=300, check=False)


def _conv_model(padding: str, c_in: int, c_out: int, h: int, dtype: str) -> keras.Model:
  with ntk_reference.floatx(dtype):
    inputs = keras.Input((h, h, c_in))
    z = keras.layers.Conv2D(c_out, 1, strides=2, padding=padding, use_bias=False,
                            kernel_initializer=keras.initializers.RandomNormal(seed=1))(inputs)
    return keras.Model(inputs, z)  # [N, ceil(H/2), ceil(H/2), C_out]


def _kernel_gradient(model: keras.Model, x: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
  """d <conv(x, W), cotangent> / dW, `[1, 1, C_in, C_out]`, in a tf.function (the graph path)."""
  kernel = model.trainable_variables[0]

  @tf.function
  def gradient(x, cotangent):
    with tf.GradientTape() as tape:
      z = model(x)  # [N, H', W', C_out]
      inner = tf.reduce_sum(z * cotangent)
    return tape.gradient(inner, kernel)
  return gradient(tf.constant(x, model.dtype), tf.constant(cotangent, model.dtype)).numpy()


class DetectionTest(absltest.TestCase):

  def test_enabled_agrees_with_tensorflow(self):
    self.assertEqual(onednn.enabled(), bool(_pywrap_util_port.IsMklEnabled()))

  def test_environment_decides(self):
    for value, expected in (("1", True), ("TRUE", True), ("0", False), ("false", False)):
      with absltest.mock.patch.dict(os.environ, {"TF_ENABLE_ONEDNN_OPTS": value}):
        self.assertEqual(onednn.enabled(), expected, msg=value)


class FilterGradientTest(parameterized.TestCase):
  """Bug 1: oneDNN's 1x1 stride-2 Conv2DBackpropFilter, small batch, even size."""

  @parameterized.parameters(*_BROKEN_GEOMETRIES)
  def test_routed_kernel_gradient_matches_float64(self, padding, c_in, c_out, n, h):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h, h, c_in))  # [N, H, W, C_in]
    model32 = onednn.protect(_conv_model(padding, c_in, c_out, h, "float32"))
    model64 = _conv_model(padding, c_in, c_out, h, "float64")
    model64.set_weights([w.astype("float64") for w in model32.get_weights()])
    cotangent = rng.standard_normal(model64(x).shape)  # [N, H', W', C_out]
    expected = _kernel_gradient(model64, x, cotangent)
    for _ in range(5):  # the unrouted kernel fails intermittently
      got = _kernel_gradient(model32, x, cotangent)
      self.assertLess(ntk_reference.rel_error(got, expected), _RTOL["float32"])

  @parameterized.product(padding=("same", "valid"), strides=((2, 2), (2, 3), (3, 1)))
  def test_routed_forward_matches_plain_conv(self, padding, strides):
    x = tf.constant(np.random.default_rng(0).standard_normal((3, 15, 16, 4)), tf.float32)
    layer = keras.layers.Conv2D(8, 1, strides=strides, padding=padding)
    plain = layer(x).numpy()  # [3, H', W', 8]
    layer.convolution_op = onednn.subsampled_convolution_op(layer)
    np.testing.assert_allclose(layer(x).numpy(), plain, rtol=1e-6, atol=1e-6)

  def test_protect_only_with_onednn(self):
    model = onednn.protect(ntk_tf.models.get("resnet18", input_shape=(16, 16, 3), width=2))
    protected = sorted(layer.name for layer in model.layers if "convolution_op" in vars(layer))
    if onednn.enabled():
      self.assertEqual(protected, ["stage1_block0_proj", "stage2_block0_proj", "stage3_block0_proj"])
    else:
      self.assertEqual(protected, [])  # bit-for-bit plain Keras

  @parameterized.parameters(*_BROKEN_GEOMETRIES)
  def test_unrouted_kernel_gradient_exact_without_onednn(self, padding, c_in, c_out, n, h):
    """The plain op is exact where oneDNN is off (checked in a oneDNN-off process in both twins).

    With oneDNN on it crashes or is wrong only sometimes (heap corruption), so
    no test asserts that; `ntk_tf/onednn.py` records what was seen.
    """
    result = _run_without_onednn(_UNROUTED_FILTER_GRADIENT.format(
        padding=padding.upper(), c_in=c_in, c_out=c_out, n=n, h=h))
    self.assertEqual(result.returncode, 0, msg=result.stderr[-2000:])


class ChannelPadTest(absltest.TestCase):
  """Bug 2: Pad on the channel axis + Conv2D(VALID), fused by oneDNN."""

  def test_channel_pad_conv_exact_without_onednn(self):
    result = _run_without_onednn(_UNROUTED_CHANNEL_PAD)
    self.assertEqual(result.returncode, 0, msg=result.stderr[-2000:])

  def test_two_channel_valid_conv_auto_matches_reference(self):
    inputs = keras.Input((8, 8, 2))
    h = keras.layers.Conv2D(4, 3, padding="valid", activation="relu",
                            kernel_initializer=keras.initializers.GlorotUniform(seed=0))(inputs)
    logit = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed=1))(
        keras.layers.Flatten()(h))
    model = keras.Model(inputs, logit)
    x = np.random.default_rng(0).standard_normal((5, 8, 8, 2)).astype("float32")
    expected = ntk_tf.ntk_gram(model, x, implementation="jacobian")
    got = ntk_tf.ntk_gram(model, x, implementation="auto")
    self.assertLess(ntk_reference.rel_error(got, expected), 1e-5)


class ResNetTest(absltest.TestCase):
  """Width-4 ResNet18 (1x1 stride-2 projections with 4-16 channels) in float32 vs float64."""

  def test_gram_matches_float64(self):
    model = ntk_tf.models.get("resnet18", width=4)
    x = np.random.default_rng(0).standard_normal((3, 32, 32, 3)).astype("float32")
    gram64 = ntk_tf.ntk_gram(model, x, implementation="jacobian", dtype="float64")
    for implementation in ("jacobian", "auto"):
      gram32 = ntk_tf.ntk_gram(model, x, implementation=implementation)
      self.assertLess(ntk_reference.rel_error(gram32, gram64), 1e-4, msg=implementation)

  def test_training_gradient_matches_float64(self):
    model = ntk_tf.models.get("resnet18", input_shape=(16, 16, 3), width=4)
    model64 = ntk_tf.as_float64_model(model)
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 3))  # batch 2: bug seen for N <= 3

    def gradients(m, dtype):  # the batch gradient of a training step, `[P]`
      with tf.GradientTape() as tape:
        loss = tf.reduce_sum(m(tf.constant(x, dtype), training=True))
      return np.concatenate([g.numpy().ravel() for g in tape.gradient(loss, m.trainable_weights)])
    self.assertLess(ntk_reference.rel_error(gradients(model, "float32"),
                                            gradients(model64, "float64")), 1e-4)

  def test_linearized_gram_matches_network_gram(self):
    model = ntk_tf.models.get("resnet18", input_shape=(16, 16, 3), width=4)
    lin = ntk_tf.linearize(model)  # a clone: protected by Linearized itself
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype("float32")
    gram_lin = ntk_tf.ntk_gram(lin, x, implementation="jacobian")
    # Linearized's theta is every trainable weight (BatchNorm gamma/beta too), as the Gram's.
    jac = ntk_tf.jacobian(model, x)  # [N, P]
    expected = jac @ jac.T  # [N, N]
    self.assertLess(ntk_reference.rel_error(gram_lin, expected), 1e-4)


if __name__ == "__main__":
  absltest.main()
