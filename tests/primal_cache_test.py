"""Tests of ntk_tf.primal_cache against per-example Jacobians and the uncached training step.

Reference (independent of forward mode): f(x_i; theta_star) and the rows
J_i = d f(x_i) / d theta of one GradientTape per example in float64, so
f_lin = f0 + J (theta - theta_origin) and, for a loss sum_i g_i f_lin_i, the
gradient J^T g. Models: the MLP and LeNet of the paper, and one taking every
rule of the cache (a Conv2D with tanh inside, max pooling, BatchNorm, a
ReLU layer and a nested model under a local ForwardAccumulator, Add, a
frozen Dense and a parameter-free branch of the input meeting a varying one
in a Concatenate). Training with the cache is compared with training without
it, and a run stopped and resumed with the cache with an uninterrupted one.
"""

from tests import test_util  # pylint: disable=unused-import  (quiet TF)
from tests import ntk_reference

from unittest import mock  # pylint: disable=g-importing-member

from absl.testing import absltest
from absl.testing import parameterized
import keras
import numpy as np
import tensorflow as tf

import ntk_tf
from ntk_tf import primal_cache
from ntk_tf import train_step
from ntk_tf import training


def _mixed() -> keras.Model:
  inputs = keras.Input((6, 6, 2))
  h = keras.layers.Conv2D(3, 3, padding="same", activation="tanh")(inputs)  # [N, 6, 6, 3]
  h = keras.layers.MaxPooling2D(2)(h)  # [N, 3, 3, 3]
  h = keras.layers.BatchNormalization()(h)
  inner = keras.Sequential([keras.Input((3, 3, 3)), keras.layers.Conv2D(3, 1),
                            keras.layers.Activation("gelu")])
  h = keras.layers.Add()([h, inner(h)])  # [N, 3, 3, 3]
  h = keras.layers.ReLU()(keras.layers.Flatten()(h))  # [N, 27]
  h = keras.layers.Dense(5, activation="relu")(h)  # [N, 5]
  free = keras.layers.Flatten()(keras.layers.AveragePooling2D(3)(inputs))  # [N, 8], no parameter
  frozen = keras.layers.Dense(2, trainable=False)(keras.layers.Flatten()(inputs))  # [N, 2]
  h = keras.layers.Concatenate()([h, free, frozen])  # [N, 15]
  return keras.Model(inputs, keras.layers.Dense(1)(h))


def _network(name: str, dtype: str) -> keras.Model:
  keras.utils.set_random_seed(0)
  with ntk_reference.floatx(dtype):
    if name == "mixed":
      model = _mixed()
      ntk_reference.randomize_batch_norm(model, seed=1)
    elif name == "mlp":
      model = ntk_tf.models.mlp((4, 4, 2), width=8, seed=0)
    else:
      model = ntk_tf.models.get(name, input_shape=(8, 8, 3), seed=0)
  return model


def _inputs(model: keras.Model, n: int, seed: int = 0) -> np.ndarray:
  shape = tuple(model.inputs[0].shape[1:])
  return np.random.default_rng(seed).normal(size=(n,) + shape).astype(model.compute_dtype)


def _moved(lin: ntk_tf.Linearized, seed: int = 1) -> np.ndarray:
  """Moves theta away from theta_origin at random; returns delta = theta - theta_origin `[P]`."""
  rng = np.random.default_rng(seed)
  deltas = []
  for v in lin.theta:
    delta = 0.1 * rng.normal(size=v.shape)
    v.assign(v.numpy() + delta.astype(v.dtype))
    deltas.append(delta)
  origin = np.concatenate([o.numpy().ravel() for o in lin.theta_origin])
  return np.concatenate([t.numpy().ravel() for t in lin.theta]).astype(np.float64) - origin


def _per_example_jacobian(model: keras.Model, params, x: np.ndarray):
  """(f0 `[N]`, J `[N, P]`): f(x_i) and d f(x_i) / d params, one GradientTape per example."""
  f0, rows = [], []
  for i in range(len(x)):
    with tf.GradientTape() as tape:
      f_i = model(x[i:i + 1], training=False)[0, 0]
    grads = tape.gradient(f_i, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    f0.append(float(f_i))
    rows.append(np.concatenate([g.numpy().ravel() for g in grads]))
  return np.array(f0), np.stack(rows)


def _value_and_gradient(fn, lin, g: np.ndarray):
  """f_lin = fn() `[B]` and d sum_i g_i f_lin_i / d theta `[P]`."""
  with tf.GradientTape() as tape:
    f = fn()[:, 0]  # [B]
    objective = tf.reduce_sum(tf.constant(g, f.dtype) * f)
  grads = tape.gradient(objective, lin.theta)
  return f.numpy(), np.concatenate([gr.numpy().ravel() for gr in grads])


class PrimalCacheValuesTest(parameterized.TestCase):

  @parameterized.product(name=["mlp", "lenet", "mixed"], offset=[True, False])
  def test_float64_equals_per_example_jacobians(self, name, offset):
    model = _network(name, "float64")
    lin = ntk_tf.linearize(model, offset=offset)
    x = _inputs(model, 10)
    cache = primal_cache.build(lin, x, batch_size=4)  # batches of 4, 4, 2
    delta = _moved(lin)
    params = [model.weights[i] for i in lin.parameter_indices]  # theta0 = theta_star
    f0, jac = _per_example_jacobian(model, params, x)  # [N], [N, P]
    indices = np.array([7, 2, 9, 2, 0])
    g = np.random.default_rng(2).normal(size=len(indices))
    f_lin, grad = _value_and_gradient(
        lambda: cache(tf.constant(x[indices]), tf.constant(indices, tf.int32)), lin, g)
    want_f = jac[indices] @ delta + (f0[indices] if offset else 0.0)  # f0 + J delta
    self.assertLess(ntk_reference.rel_error(f_lin, want_f), 1e-12)
    self.assertLess(ntk_reference.rel_error(grad, jac[indices].T @ g), 1e-12)  # J^T g

  @parameterized.parameters("mlp", "lenet", "mixed")
  def test_float32_equals_uncached_call(self, name):
    model = _network(name, "float32")
    lin = ntk_tf.linearize(model)
    x = _inputs(model, 12)
    cache = primal_cache.build(lin, x, batch_size=5)
    _moved(lin)
    indices = np.array([11, 0, 5, 6])
    g = np.random.default_rng(3).normal(size=len(indices))
    cached = _value_and_gradient(lambda: cache(tf.constant(x[indices]), tf.constant(indices)),
                                 lin, g)
    uncached = _value_and_gradient(lambda: lin(x[indices]), lin, g)
    for got, want in zip(cached, uncached):
      self.assertEqual(got.dtype, np.float32)
      self.assertLess(ntk_reference.rel_error(got, want.astype(np.float64)), 2e-5)


class PrimalCacheSizeTest(absltest.TestCase):

  def test_bytes_per_example_of_the_mlp(self):
    model = _network("mlp", "float64")  # 32 inputs -> 8 -> 8 -> 1, relu
    cache = primal_cache.build(ntk_tf.linearize(model), _inputs(model, 3))
    # 2 relu masks of 8 bools, the inputs of the 2nd and 3rd Dense (8 floats each), f0.
    self.assertEqual(cache.bytes_per_example, 2 * 8 + (2 * 8 + 1) * 8)
    self.assertEqual(cache.nbytes, 3 * cache.bytes_per_example)
    self.assertEqual([tuple(s.shape) for s in cache.slots], [(3, 8)] * 4 + [(3, 1)])

  def test_over_budget_is_refused_naming_the_size(self):
    model = _network("lenet", "float32")
    lin = ntk_tf.linearize(model)
    x = _inputs(model, 6)
    with self.assertRaisesRegex(ValueError, r"bytes per example x 6 examples.*memory_budget_bytes=100"):
      primal_cache.build(lin, x, memory_budget_bytes=100)
    self.assertIsNone(primal_cache.for_training(lin, x, memory_budget_bytes=100))
    self.assertIsNotNone(primal_cache.for_training(lin, x))

  def test_no_cache_for_a_network(self):
    model = _network("mlp", "float32")
    self.assertIsNone(primal_cache.for_training(model, _inputs(model, 2)))
    with self.assertRaisesRegex(ValueError, "needs a ntk_tf.Linearized model"):
      primal_cache.build(model, _inputs(model, 2))


class PrimalCacheTrainingTest(absltest.TestCase):

  def test_loop_with_cache_equals_loop_without(self):
    recipe = ntk_tf.PAPER_SGD.replace(batch_size=4)
    runs = []
    for use_cache in (False, True):
      lin = ntk_tf.linearize(_network("lenet", "float64"))
      x = _inputs(lin.network, 12)
      t = (np.random.default_rng(4).random((12, 1)) > 0.5).astype(np.float64)
      optimizer = training.make_optimizer(recipe, 6)
      cache = primal_cache.build(lin, x) if use_cache else None
      loop = train_step.make_train_loop(lin, optimizer, 4, primal_cache=cache)
      order = np.random.default_rng(5).permutation(12)
      extra = (tf.constant(order, tf.int32),) if use_cache else ()
      losses = loop(tf.constant(x[order]), tf.constant(t[order]), *extra).numpy()  # 3 steps
      runs.append((losses, [v.numpy() for v in lin.theta]))
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-12)
    for cached, uncached in zip(runs[1][1], runs[0][1]):
      np.testing.assert_allclose(cached, uncached, rtol=1e-10, atol=1e-13)

  def test_train_with_and_without_cache(self):
    recipe = ntk_tf.PAPER_SGD.replace(batch_size=8, epochs=2)
    x = _inputs(_network("mlp", "float64"), 24)
    y = np.where(x.reshape(24, -1).sum(axis=1) > 0, 1, -1)
    results = []
    for use_cache in (False, True):
      lin = ntk_tf.linearize(_network("mlp", "float64"))
      result = training.train(lin, x, y, recipe=recipe, progress=False, primal_cache=use_cache)
      results.append((result.history, lin.get_weights()))
    for cached, uncached in zip(results[1][0], results[0][0]):
      for key in ("train_loss", "batch_loss", "l2_distance"):
        if key == "batch_loss" and cached["epoch"] == 0:
          continue  # NaN before training
        self.assertAlmostEqual(cached[key], uncached[key], delta=1e-12 * max(1.0, abs(uncached[key])))
    for cached, uncached in zip(results[1][1], results[0][1]):
      np.testing.assert_allclose(cached, uncached, rtol=1e-10, atol=1e-13)

  def test_resumed_run_with_cache_ends_bit_identical(self):
    recipe = ntk_tf.PAPER_SGD.replace(batch_size=8, epochs=2)
    x = _inputs(_network("mlp", "float32"), 24)
    y = np.where(x.reshape(24, -1).sum(axis=1) > 0, 1, -1)
    uninterrupted = ntk_tf.linearize(_network("mlp", "float32"))
    training.train(uninterrupted, x, y, recipe=recipe, progress=False,
                   workdir=self.create_tempdir().full_path)
    workdir = self.create_tempdir().full_path
    check = training._check_finite_losses  # pylint: disable=protected-access

    def stop_in_epoch_2(losses, epoch, *args):
      if epoch == 2:
        raise KeyboardInterrupt("stopped in epoch 2")
      return check(losses, epoch, *args)

    with mock.patch.object(training, "_check_finite_losses", stop_in_epoch_2):
      with self.assertRaises(KeyboardInterrupt):
        training.train(ntk_tf.linearize(_network("mlp", "float32")), x, y, recipe=recipe,
                       progress=False, workdir=workdir)
    resumed = ntk_tf.linearize(_network("mlp", "float32"))
    training.train(resumed, x, y, recipe=recipe, progress=False, workdir=workdir)
    for a, b in zip(resumed.get_weights(), uninterrupted.get_weights()):
      np.testing.assert_array_equal(a, b)

  def test_loop_refuses_a_missing_index_or_another_models_cache(self):
    lin = ntk_tf.linearize(_network("mlp", "float32"))
    other = ntk_tf.linearize(_network("mlp", "float32"))
    x = _inputs(lin.network, 4)
    cache = primal_cache.build(lin, x)
    optimizer = training.make_optimizer(ntk_tf.PAPER_SGD, 2)
    with self.assertRaisesRegex(ValueError, "the cache of"):
      train_step.make_train_loop(other, optimizer, 4, primal_cache=cache)
    loop = train_step.make_train_loop(lin, optimizer, 4, primal_cache=cache)
    with self.assertRaisesRegex(ValueError, "indices exactly when"):
      loop(tf.constant(x), tf.zeros((4, 1)))


if __name__ == "__main__":
  absltest.main()
