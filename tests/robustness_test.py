"""Issue 14: every NTK path is exact or refuses by name on the inputs that used to go wrong.

Each case is checked against an independent computation: central finite
differences of the logit of a float64 model (`ntk_reference.finite_difference_jacobian`,
no autodiff) and the per-example GradientTape loop (`ntk_reference.brute_force_gram`).
Cases: grouped and depthwise-multiplier convolutions, BatchNormalization of a
non-last axis, multi-output / subclassed / weightless models, overflow, the
block-size cap and memory refusal, and a <8-channel "valid" conv with oneDNN
forced on and off (in subprocesses: it used to abort the process).
"""

import os
import subprocess
import sys
import textwrap
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import keras
import numpy as np

from tests import test_util  # pylint: disable=unused-import
from tests import ntk_reference
import ntk_tf
from ntk_tf.ntk import gram
from ntk_tf.ntk import implementation as implementation_lib

_SHAPE = (5, 5, 4)
_CONVS = {
    "grouped": lambda: keras.layers.Conv2D(4, 3, groups=2, activation="tanh"),
    "depthwise": lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2, activation="tanh"),
    "separable": lambda: keras.layers.SeparableConv2D(4, 3, depth_multiplier=2,
                                                      activation="tanh"),
}
_TOL = {"float32": 2e-5, "float64": 1e-7}  # float64: the finite-difference error.


def _conv_model(kind: str, dtype: str) -> keras.Model:
  """conv(kind) -> Flatten -> Dense(1), built in `dtype`, seeded."""
  keras.utils.set_random_seed(3)
  with ntk_reference.floatx(dtype):
    inputs = keras.Input(_SHAPE)
    h = _CONVS[kind]()(inputs)
    return keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(h)))


def _x(n: int, shape=_SHAPE, seed: int = 0) -> np.ndarray:
  return np.random.RandomState(seed).randn(n, *shape).astype(np.float32)


class ConvolutionTest(parameterized.TestCase):

  @parameterized.product(kind=list(_CONVS), dtype=["float32", "float64"])
  def test_exact_or_refused_by_name(self, kind, dtype):
    model64 = _conv_model(kind, "float64")
    model = _conv_model(kind, "float32")
    model.set_weights([w.astype(np.float32) for w in model64.get_weights()])
    x = _x(5)
    jac_fd = ntk_reference.finite_difference_jacobian(model64, x.astype(np.float64))  # [5, P]
    expected = jac_fd @ jac_fd.T  # [5, 5]
    self.assertLess(ntk_reference.rel_error(ntk_reference.brute_force_gram(model64, x),
                                            expected), 1e-7)
    for implementation in implementation_lib.IMPLEMENTATION_NAMES:
      with self.subTest(implementation=implementation):
        call = lambda: gram.ntk_gram(model, x, block_size=3, implementation=implementation,
                                     dtype=dtype, progress=False)
        if kind == "grouped" and implementation == "ntk_vector_products":
          with self.assertRaisesRegex(ValueError, r"groups > 1 in layers \['conv2d"):
            call()
          continue
        self.assertLess(ntk_reference.rel_error(call(), expected), _TOL[dtype])

  def test_grouped_structured_uses_exact_reference_jacobian(self):
    model = _conv_model("grouped", "float64")
    x = _x(4)
    jac_fd = ntk_reference.finite_difference_jacobian(model, x.astype(np.float64))
    theta = gram.make_block_fn(model, "structured", "float64", 4)(x.astype(np.float64))
    self.assertLess(ntk_reference.rel_error(theta, jac_fd @ jac_fd.T), 1e-7)

  def test_operator_refuses_grouped(self):
    with self.assertRaisesRegex(ValueError, "groups > 1"):
      ntk_tf.NtkOperator(_conv_model("grouped", "float32"), _x(3))


class FallbackAndErrorsTest(parameterized.TestCase):

  @parameterized.parameters("structured", "auto")
  def test_batch_norm_other_axis_falls_back_to_reference(self, implementation):
    with ntk_reference.floatx("float64"):
      inputs = keras.Input(_SHAPE)
      h = keras.layers.Conv2D(3, 3, activation="tanh")(inputs)
      h = keras.layers.BatchNormalization(axis=1)(h)
      model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(h)))
    ntk_reference.randomize_batch_norm(model)
    x = _x(5).astype(np.float64)
    jac_fd = ntk_reference.finite_difference_jacobian(model, x)
    theta = gram.ntk_gram(model, x, block_size=3, implementation=implementation,
                          dtype="float64", progress=False)
    self.assertLess(ntk_reference.rel_error(theta, jac_fd @ jac_fd.T), 1e-7)

  @parameterized.parameters(*implementation_lib.IMPLEMENTATION_NAMES)
  def test_two_outputs_refused_by_name(self, implementation):
    inputs = keras.Input(_SHAPE)
    flat = keras.layers.Flatten()(inputs)
    model = keras.Model(inputs, [keras.layers.Dense(1)(flat), keras.layers.Dense(1)(flat)])
    with self.assertRaisesRegex(ValueError, "with 2 outputs"):
      gram.make_block_fn(model, implementation, "float32", 4)
    with self.assertRaisesRegex(ValueError, "with 2 outputs"):
      gram.ntk_gram(model, _x(3), implementation=implementation, progress=False)

  @parameterized.parameters(*implementation_lib.IMPLEMENTATION_NAMES)
  def test_no_trainable_variables_refused_by_name(self, implementation):
    inputs = keras.Input(_SHAPE)
    model = keras.Model(inputs, keras.layers.Dense(1, trainable=False)(
        keras.layers.Flatten()(inputs)))
    with self.assertRaisesRegex(ValueError, "0 trainable variables"):
      gram.make_block_fn(model, implementation, "float32", 4)

  def test_subclassed_model(self):

    class Subclassed(keras.Model):

      def __init__(self):
        super().__init__()
        self.flatten = keras.layers.Flatten()
        self.hidden = keras.layers.Dense(5, activation="tanh")
        self.logit = keras.layers.Dense(1)

      def call(self, x):
        return self.logit(self.hidden(self.flatten(x)))

    model = Subclassed()
    x = _x(5)
    model(x)
    expected = ntk_reference.brute_force_gram(model, x)
    for implementation in ("jacobian", "auto", "ntk_vector_products"):
      theta = gram.ntk_gram(model, x, block_size=3, implementation=implementation,
                            progress=False)
      self.assertLess(ntk_reference.rel_error(theta, expected), 1e-5, msg=implementation)
    with self.assertRaisesRegex(ValueError, "of type Subclassed"):
      gram.ntk_gram(model, x, implementation="structured", progress=False)

  @parameterized.parameters(*implementation_lib.IMPLEMENTATION_NAMES)
  def test_overflow_raises_naming_block(self, implementation):
    inputs = keras.Input(_SHAPE)
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(inputs)))
    x = _x(5) * np.float32(1e25)  # Finite; |x|^2 ~ 1e50 overflows float32.
    with self.assertRaisesRegex(FloatingPointError, r"rows 0:3 and columns 0:3.*float64"):
      gram.ntk_gram(model, x, block_size=3, implementation=implementation, progress=False)


class BlockSizeTest(absltest.TestCase):

  def _model(self):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(_SHAPE)
    h = keras.layers.Dense(4, activation="tanh")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(1)(h))

  def test_block_size_capped_at_n(self):
    model, x = self._model(), _x(10)
    seen = []
    table = gram._IMPLEMENTATION_TO_BLOCK_FN  # pylint: disable=protected-access
    original = table[ntk_tf.NtkImplementation.JACOBIAN]

    def recording_block_fn(*args, **kwargs):
      fn = original(*args, **kwargs)

      def call(x_a, x_b=None):
        seen.append(x_a.shape[0])
        return fn(x_a, x_b)
      return call

    with mock.patch.dict(table, {ntk_tf.NtkImplementation.JACOBIAN: recording_block_fn}):
      theta = gram.ntk_gram(model, x, block_size=10**6, implementation="jacobian",
                            progress=False)
    self.assertEqual(seen, [10])
    self.assertLess(ntk_reference.rel_error(theta, ntk_reference.brute_force_gram(model, x)),
                    1e-5)

  def test_block_over_memory_budget_refused_by_name(self):
    model = self._model()
    with self.assertRaisesRegex(ValueError, r"block_size=8 needs about .* GiB"):
      gram.ntk_gram(model, _x(10), block_size=8, implementation="jacobian", progress=False,
                    memory_budget_bytes=1000)


_ONEDNN_SCRIPT = textwrap.dedent("""
    import sys
    import keras
    import numpy as np
    from ntk_tf.ntk import gram
    from tests import ntk_reference
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 2))
    h = keras.layers.Conv2D(3, 3, padding="valid", activation="tanh")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(h)))
    x = np.random.RandomState(0).randn(6, 8, 8, 2).astype(np.float32)
    expected = ntk_reference.brute_force_gram(model, x)
    for implementation in ("structured", "auto"):
      theta = gram.ntk_gram(model, x, block_size=4, implementation=implementation,
                            matmul_engine="numpy", progress=False)
      print(implementation, ntk_reference.rel_error(theta, expected))
""")


class OneDnnTest(parameterized.TestCase):

  @parameterized.parameters("0", "1")
  def test_few_channel_valid_conv_runs_and_is_exact(self, onednn):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=onednn, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", _ONEDNN_SCRIPT], cwd=root, env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    self.assertEqual(result.returncode, 0, msg=result.stderr[-3000:])
    errors = dict(line.split() for line in result.stdout.strip().splitlines())
    self.assertEqual(set(errors), {"structured", "auto"})
    for implementation, error in errors.items():
      self.assertLess(float(error), 1e-5, msg=implementation)


if __name__ == "__main__":
  absltest.main()
