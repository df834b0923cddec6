"""Tests for ntk_tf.ntk.engine_cache: the pin, the per-machine cache, each engine's exactness."""

import json
import os
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized

from tests import test_util  # pylint: disable=unused-import
from tests import ntk_reference
import ntk_tf
from ntk_tf.ntk import engine_cache
from ntk_tf.ntk import gram as gram_lib


class EngineCacheTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.folder = self.create_tempdir().full_path
    patcher = mock.patch.dict(os.environ, {engine_cache.ENV_CACHE_DIR: self.folder})
    patcher.start()
    self.addCleanup(patcher.stop)
    os.environ.pop(engine_cache.ENV_PIN, None)
    gram_lib.clear_block_fn_cache()

  def test_nothing_pinned_or_cached_means_default(self):
    self.assertIsNone(engine_cache.matmul_engine("mlp"))

  def test_record_is_read_back_for_this_machine_only(self):
    path = engine_cache.record("mlp", "xla")
    self.assertEqual(os.path.dirname(path), self.folder)
    self.assertEqual(engine_cache.matmul_engine("mlp"), "xla")
    self.assertIsNone(engine_cache.matmul_engine("lenet"))
    with open(path) as f:
      entries = json.load(f)
    self.assertEqual(entries, {engine_cache.machine_key(): {"mlp": "xla"}})
    with open(path, "w") as f:  # The entry of another machine is not used here.
      json.dump({"other machine": {"mlp": "numpy"}}, f)
    self.assertIsNone(engine_cache.matmul_engine("mlp"))

  def test_pin_overrides_cache_and_is_validated(self):
    engine_cache.record("mlp", "xla")
    with mock.patch.dict(os.environ, {engine_cache.ENV_PIN: "numpy"}):
      self.assertEqual(engine_cache.matmul_engine("mlp"), "numpy")
    with mock.patch.dict(os.environ, {engine_cache.ENV_PIN: "gpu"}):
      with self.assertRaisesRegex(ValueError, "matmul_engine='gpu'"):
        engine_cache.matmul_engine("mlp")

  @parameterized.parameters("numpy", "xla")
  def test_pinned_engine_reaches_the_structured_block_fn(self, engine):
    model, _ = ntk_reference.model_and_twin("mlp", "relu", seed=0)
    with mock.patch.dict(os.environ, {engine_cache.ENV_PIN: engine}):
      auto_fn = gram_lib.make_block_fn(model, "auto", "float32", 8, nominal_block=256)
    self.assertEqual(getattr(auto_fn, "matmul_engine", engine), engine)

  def test_unreadable_cache_means_default(self):
    with open(engine_cache.cache_path(), "w") as f:
      f.write("not json")
    self.assertIsNone(engine_cache.matmul_engine("mlp"))

  @parameterized.product(name=["mlp", "lenet"], engine=["numpy", "xla"])
  def test_each_pinned_engine_matches_reference(self, name, engine):
    model, twin = ntk_reference.model_and_twin(name, "relu", seed=2)
    x = ntk_reference.inputs(7)
    expected = ntk_reference.brute_force_gram(twin, x)  # [7, 7] float64
    with mock.patch.dict(os.environ, {engine_cache.ENV_PIN: engine}):
      theta = ntk_tf.ntk_gram(model, x, implementation="auto", progress=False)
      theta64 = ntk_tf.ntk_gram(model, x, implementation="auto", dtype="float64",
                                progress=False)
    self.assertLess(ntk_reference.rel_error(theta, expected), 1e-5)
    self.assertLess(ntk_reference.rel_error(theta64, expected), 1e-12)


if __name__ == "__main__":
  absltest.main()
