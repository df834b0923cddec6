"""Tests for ntk_tf.models: parameter counts by hand, shapes, seeding, bad input."""

from absl.testing import absltest
from absl.testing import parameterized
import keras
import numpy as np

from tests import test_util  # pylint: disable=unused-import
import ntk_tf


def mlp_params(d):
  return (d * 100 + 100) + (100 * 100 + 100) + (100 + 1)


def lenet_params(h, w, c):
  conv1 = 5 * 5 * c * 6 + 6
  conv2 = 5 * 5 * 6 * 16 + 16
  flat = (h // 2 // 2) * (w // 2 // 2) * 16  # 'same' padding, two 2x2 pools.
  return conv1 + conv2 + (flat * 120 + 120) + (120 * 84 + 84) + (84 + 1)


def resnet18_params(c, width=64):
  """Trainable parameters and BN moving statistics of the CIFAR ResNet18."""
  conv = lambda k, cin, cout: k * k * cin * cout
  bn_affine = lambda ch: 2 * ch
  trainable = conv(3, c, width) + bn_affine(width)
  stats = 2 * width
  cin = width
  for mult in (1, 2, 4, 8):
    cout = width * mult
    for block in range(2):
      trainable += conv(3, cin, cout) + bn_affine(cout) + conv(3, cout, cout) + bn_affine(cout)
      stats += 4 * cout
      if cin != cout:  # Projection shortcut (first block of stages 2-4).
        trainable += conv(1, cin, cout) + bn_affine(cout)
        stats += 2 * cout
      cin = cout
  trainable += 8 * width + 1  # Dense(1) head.
  return trainable, stats


class ParamCountTest(parameterized.TestCase):

  @parameterized.product(shape=[(32, 32, 3), (28, 28, 1)])
  def test_mlp(self, shape):
    model = ntk_tf.models.get("mlp", input_shape=shape)
    self.assertEqual(model.count_params(), mlp_params(int(np.prod(shape))))

  @parameterized.product(shape=[(32, 32, 3), (28, 28, 1)])
  def test_lenet(self, shape):
    model = ntk_tf.models.get("lenet", input_shape=shape)
    self.assertEqual(model.count_params(), lenet_params(*shape))

  def test_lenet_cifar_is_about_136k(self):
    self.assertEqual(lenet_params(32, 32, 3), 136_121)

  @parameterized.product(shape=[(32, 32, 3), (28, 28, 1)])
  def test_resnet18(self, shape):
    model = ntk_tf.models.get("resnet18", input_shape=shape)
    trainable, stats = resnet18_params(shape[-1])
    n_trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    self.assertEqual(n_trainable, trainable)
    self.assertEqual(model.count_params(), trainable + stats)

  def test_resnet18_cifar_is_about_11_2m(self):
    self.assertEqual(resnet18_params(3)[0], 11_169_345)


class ShapeAndSeedTest(parameterized.TestCase):

  @parameterized.product(name=["mlp", "lenet", "resnet18"],
                         shape=[(32, 32, 3), (28, 28, 1)],
                         activation=["relu", "gelu", "tanh"])
  def test_output_shape(self, name, shape, activation):
    kwargs = {"width": 4} if name == "resnet18" else {}
    model = ntk_tf.models.get(name, input_shape=shape, activation=activation, **kwargs)
    x = np.random.default_rng(0).normal(size=(3,) + shape).astype(np.float32)
    y = model(x, training=False)
    self.assertEqual(tuple(y.shape), (3, 1))
    self.assertTrue(np.all(np.isfinite(np.asarray(y))))

  @parameterized.product(name=["mlp", "lenet", "resnet18"])
  def test_k_outputs(self, name):
    kwargs = {"width": 4} if name == "resnet18" else {}
    one = ntk_tf.models.get(name, input_shape=(8, 8, 3), seed=2, **kwargs)
    ten = ntk_tf.models.get(name, input_shape=(8, 8, 3), seed=2, outputs=10, **kwargs)
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 3)).astype(np.float32)
    self.assertEqual(tuple(ten(x, training=False).shape), (3, 10))
    # Every layer below the head is the same; the head has 10 units.
    for wa, wb in zip(one.get_weights()[:-2], ten.get_weights()[:-2]):
      np.testing.assert_array_equal(wa, wb)
    self.assertEqual(ten.get_weights()[-2].shape[-1], 10)

  @parameterized.product(name=["mlp", "lenet", "resnet18"])
  def test_same_seed_same_weights_other_seed_differs(self, name):
    kwargs = {"width": 4} if name == "resnet18" else {}
    a = ntk_tf.models.get(name, seed=3, **kwargs).get_weights()
    b = ntk_tf.models.get(name, seed=3, **kwargs).get_weights()
    c = ntk_tf.models.get(name, seed=4, **kwargs).get_weights()
    for wa, wb in zip(a, b):
      np.testing.assert_array_equal(wa, wb)
    kernels = [i for i, w in enumerate(a) if w.ndim >= 2]
    self.assertTrue(all(not np.array_equal(a[i], c[i]) for i in kernels))

  @parameterized.parameters(("mlp", {"width": 7}), ("lenet", {}), ("resnet18", {"width": 2}))
  def test_get_forwards_every_argument(self, name, extra):
    builder = {"mlp": ntk_tf.models.mlp, "lenet": ntk_tf.models.lenet,
               "resnet18": ntk_tf.models.resnet18}[name]
    model = ntk_tf.models.get(name, input_shape=(12, 12, 2), activation="tanh", seed=5, **extra)
    direct = builder((12, 12, 2), activation="tanh", seed=5, **extra)
    default = builder((12, 12, 2), **extra)  # relu, seed 0: differs from `model`
    self.assertEqual(tuple(model.input_shape), (None, 12, 12, 2))
    activations = {layer.activation.__name__ for layer in model.layers
                   if isinstance(layer, keras.layers.Activation)}
    self.assertEqual(activations, {"tanh"})
    self.assertEqual(len(model.get_weights()), len(direct.get_weights()))
    for got, want in zip(model.get_weights(), direct.get_weights()):
      np.testing.assert_array_equal(got, want)
    self.assertFalse(np.array_equal(model.get_weights()[0], default.get_weights()[0]))


class BadInputTest(parameterized.TestCase):

  def test_unknown_name(self):
    with self.assertRaisesRegex(ValueError, "name='vgg'"):
      ntk_tf.models.get("vgg")

  def test_unknown_activation(self):
    with self.assertRaisesRegex(ValueError, "activation='sigmoid'"):
      ntk_tf.models.get("mlp", activation="sigmoid")

  def test_bad_shape(self):
    with self.assertRaisesRegex(ValueError, r"input_shape=\(32, 32\)"):
      ntk_tf.models.get("lenet", input_shape=(32, 32))

  def test_bad_seed(self):
    with self.assertRaisesRegex(ValueError, "seed=-1"):
      ntk_tf.models.get("mlp", seed=-1)

  @parameterized.parameters(("mlp", "width", 0), ("mlp", "depth", -1), ("resnet18", "width", 0),
                            ("mlp", "outputs", 0), ("lenet", "outputs", -2),
                            ("resnet18", "outputs", 0))
  def test_bad_size(self, name, arg, value):
    with self.assertRaisesRegex(ValueError, f"Received: {arg}={value}"):
      ntk_tf.models.get(name, **{arg: value})


if __name__ == "__main__":
  absltest.main()
