"""Tests of ntk_tf.linearize's parameter set and BatchNorm handling (App. B).

References: `ntk_gram` of the network itself (the NTK whose eigenvectors define
the tasks), a per-example GradientTape Gram of a model holding the expected
weights (`ntk_reference.brute_force_gram`), and a NumPy forward pass of a
hand-built Dense-BatchNorm-Dense network with its BatchNorm formula written
out, differentiated by complex step (exact to rounding).
"""

from tests import test_util  # pylint: disable=unused-import  (quiet TF)
from tests import ntk_reference

from absl.testing import absltest
from absl.testing import parameterized
import keras
import numpy as np

import ntk_tf
from ntk_tf import validation

_EPSILON = 1e-3  # BatchNormalization epsilon of the hand-built model
# Trainable weights of the hand-built model (theta), and all its weights in `model.weights` order.
_THETA = ("k1", "b1", "gamma", "beta", "k2", "b2")
_ALL = ("k1", "b1", "gamma", "beta", "mean", "variance", "k2", "b2")
_BATCH_NORM = ("gamma", "beta", "mean", "variance")


def _hand_built() -> keras.Model:
  """x [N, 3] -> Dense(4) -> BatchNormalization -> tanh -> Dense(1), float64."""
  with ntk_reference.floatx("float64"):
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4)(inputs)
    normed = keras.layers.BatchNormalization(epsilon=_EPSILON)(hidden)
    outputs = keras.layers.Dense(1)(keras.layers.Activation("tanh")(normed))
    model = keras.Model(inputs, outputs)
  assert [tuple(v.shape) for v in model.weights] == [(3, 4), (4,), (4,), (4,), (4,), (4,), (4, 1), (1,)]
  return model


def _random_point(seed: int) -> dict:
  """Explicit values for every weight of the hand-built model, BatchNorm included."""
  rng = np.random.default_rng(seed)
  return {"k1": rng.normal(size=(3, 4)), "b1": rng.normal(size=4),
          "gamma": rng.uniform(0.5, 2.0, 4), "beta": rng.normal(size=4),
          "mean": rng.normal(size=4), "variance": rng.uniform(0.3, 3.0, 4),
          "k2": rng.normal(size=(4, 1)), "b2": rng.normal(size=1)}


def _as_list(point: dict) -> list:
  return [point[name] for name in _ALL]


def _numpy_forward(point: dict, x: np.ndarray) -> np.ndarray:
  """f(x) `[N]` with inference-mode BatchNorm written out (works for complex weights)."""
  hidden = x @ point["k1"] + point["b1"]  # [N, 4]
  normed = point["gamma"] * (hidden - point["mean"]) / np.sqrt(point["variance"] + _EPSILON) \
      + point["beta"]  # [N, 4]
  return (np.tanh(normed) @ point["k2"] + point["b2"])[:, 0]  # [N]


def _numpy_linearization(star: dict, direction: dict, x: np.ndarray, offset: bool) -> np.ndarray:
  """f(x; star) [offset] + J(x; star) direction, J by complex step (no cancellation)."""
  h = 1e-30
  stepped = {k: star[k] + (1j * h * direction[k] if k in direction else 0) for k in star}
  jvp = np.imag(_numpy_forward(stepped, x)) / h  # [N]
  return _numpy_forward(star, x) + jvp if offset else jvp


class OneParameterSetTest(parameterized.TestCase):
  """ntk_gram(linearize(m)) = ntk_gram(m): one parameter set for the NTK and f_lin."""

  @parameterized.parameters("mlp", "lenet", "resnet18")
  def test_gram_of_linearization_equals_gram_of_model(self, name):
    kwargs = dict(input_shape=ntk_reference.SHAPE, activation="relu", seed=1,
                  **ntk_reference.SMALL_MODELS[name])
    model = ntk_tf.as_float64_model(ntk_tf.models.get(name, **kwargs))
    ntk_reference.randomize_batch_norm(model, seed=3)  # gamma/beta and statistics non-trivial
    x = ntk_reference.inputs(5).astype(np.float64)
    gram = ntk_tf.ntk_gram(model, x, dtype="float64", progress=False)  # [5, 5]
    lin = ntk_tf.linearize(model)
    self.assertEqual(validation.parameter_count(lin),
                     validation.parameter_count(model))
    gram_lin = ntk_tf.ntk_gram(lin, x, dtype="float64", progress=False)
    self.assertLessEqual(ntk_reference.rel_error(gram_lin, gram), 1e-10)

  @parameterized.parameters("initial", "trained")
  def test_gram_at_a_later_expansion_point(self, batch_norm):
    model, checkpoint = _hand_built(), _hand_built()
    theta0, theta_t = _random_point(0), _random_point(1)
    model.set_weights(_as_list(theta0))
    checkpoint.set_weights(_as_list(theta_t))
    expected_point = dict(theta_t)
    if batch_norm == "initial":
      expected_point.update({k: theta0[k] for k in _BATCH_NORM})
    reference = _hand_built()
    reference.set_weights(_as_list(expected_point))
    # float32-representable inputs: check_inputs casts a subclassed model's inputs to float32.
    x = np.random.default_rng(2).normal(size=(6, 3)).astype(np.float32).astype(np.float64)
    expected = ntk_reference.brute_force_gram(reference, x)  # [6, 6]
    lin = ntk_tf.linearize(model, expansion_point=checkpoint, batch_norm=batch_norm)
    gram_lin = ntk_tf.ntk_gram(lin, x, dtype="float64", progress=False)
    self.assertLessEqual(ntk_reference.rel_error(gram_lin, expected), 1e-12)


class BatchNormModesTest(parameterized.TestCase):
  """App. B: BatchNorm at its initialization values ("initial") or the expansion point's."""

  @parameterized.product(batch_norm=["initial", "trained"], offset=[True, False])
  def test_matches_numpy_linearization(self, batch_norm, offset):
    model = _hand_built()
    theta0, theta_star = _random_point(0), _random_point(1)
    model.set_weights(_as_list(theta0))
    lin = ntk_tf.linearize(model, expansion_point=_as_list(theta_star), offset=offset,
                           batch_norm=batch_norm)
    rng = np.random.default_rng(5)
    direction = {k: rng.normal(size=theta0[k].shape) for k in _THETA}  # theta - theta0
    for variable, name in zip(lin.theta, _THETA):
      variable.assign(theta0[name] + direction[name])
    x = np.random.default_rng(6).normal(size=(7, 3))
    star = dict(theta_star)
    if batch_norm == "initial":  # gamma, beta, mean, variance fixed at theta0's values
      star.update({k: theta0[k] for k in _BATCH_NORM})
    expected = _numpy_linearization(star, direction, x, offset)  # [N]
    np.testing.assert_allclose(lin(x).numpy()[:, 0], expected, rtol=1e-12, atol=1e-12)
    # The other mode gives a different function: the test tells them apart.
    other = dict(theta_star) if batch_norm == "initial" else \
        {**theta_star, **{k: theta0[k] for k in _BATCH_NORM}}
    self.assertGreater(np.max(np.abs(_numpy_linearization(other, direction, x, offset) - expected)),
                       1e-3)

  def test_initial_is_default_and_modes_agree_at_theta0(self):
    model = _hand_built()
    theta0, theta_star = _random_point(0), _random_point(1)
    model.set_weights(_as_list(theta0))
    x = np.random.default_rng(6).normal(size=(7, 3))
    default = ntk_tf.linearize(model, expansion_point=_as_list(theta_star))
    initial = ntk_tf.linearize(model, expansion_point=_as_list(theta_star), batch_norm="initial")
    np.testing.assert_array_equal(default(x).numpy(), initial(x).numpy())
    # With no expansion point both modes are the model's own linearization.
    at_theta0 = [ntk_tf.linearize(model, batch_norm=mode)(x).numpy() for mode in ("initial", "trained")]
    np.testing.assert_array_equal(at_theta0[0], at_theta0[1])
    np.testing.assert_allclose(at_theta0[0][:, 0], _numpy_forward(theta0, x), rtol=1e-12)

  def test_fresh_batch_norm_is_deactivated(self):
    # At initialization (gamma 1, beta 0, mean 0, variance 1) BatchNorm is x / sqrt(1 + eps).
    model = _hand_built()
    layer = next(l for l in model.layers if isinstance(l, keras.layers.BatchNormalization))
    x = np.random.default_rng(6).normal(size=(7, 3))
    checkpoint = _random_point(1)
    lin = ntk_tf.linearize(model, expansion_point=_as_list(checkpoint), batch_norm="initial")
    star = dict(checkpoint, gamma=np.ones(4), beta=np.zeros(4), mean=np.zeros(4),
                variance=np.ones(4))
    self.assertEqual(layer.epsilon, _EPSILON)
    np.testing.assert_allclose(lin(x).numpy()[:, 0], _numpy_forward(star, x), rtol=1e-12)


if __name__ == "__main__":
  absltest.main()
