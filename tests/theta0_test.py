"""Tests of the shared Theta_0 store (ntk_tf/experiments/theta0.py).

Every Gram is checked against per-example gradients taken with
tf.GradientTape (`ntk_reference.brute_force_gram`), or against a
store's own earlier bytes where the point is that nothing is recomputed.
"""

import json
import os
import pathlib
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl.testing import absltest
import ml_collections
import numpy as np

from tests import ntk_reference  # pylint: disable=g-bad-import-order
from tests import test_util
from configs import gram as gram_config
import ntk_tf
from ntk_tf.distributed import gram_job
from ntk_tf.distributed import local_runner
from ntk_tf.experiments import fields
from ntk_tf.experiments import gram_experiment
from ntk_tf.experiments import pipeline
from ntk_tf.experiments import theta0

_SPEC = pipeline.ModelSpec("mlp", "relu", {"width": 4}, 0)


def _x(n: int = 12) -> np.ndarray:
  return np.random.default_rng(3).standard_normal((n, 3, 3, 1)).astype(np.float32)  # [N, ...]


def _manifest(store) -> dict:
  return json.loads((store.path / "manifest.json").read_text())


class Theta0StoreTest(absltest.TestCase):

  def test_reopens_with_the_settings_it_was_made_with(self):
    model = _SPEC.build((3, 3, 1))
    x = _x()
    cache = self.create_tempdir().full_path
    store = theta0.store(model, _SPEC, x, pipeline.GramSpec(3, "jacobian", "float32", cache))
    reopened = theta0.store(model, _SPEC, x, pipeline.GramSpec(8, "auto", "float32", cache))
    self.assertEqual(reopened.path, store.path)
    self.assertEqual(reopened.block_size, 3)
    np.testing.assert_array_equal(reopened.matrix, store.matrix)
    float64 = theta0.store(model, _SPEC, x, pipeline.GramSpec(8, "auto", "float64", cache))
    self.assertNotEqual(float64.path, store.path)
    np.testing.assert_allclose(float64.matrix, ntk_reference.brute_force_gram(model, x), rtol=1e-5)

  def test_rows_is_a_slice_of_the_full_store_equal_to_a_fresh_gram(self):
    model = _SPEC.build((3, 3, 1))
    x = _x()
    cache = self.create_tempdir().full_path
    gram = pipeline.GramSpec(4, "jacobian", "float32", cache)
    full = theta0.store(model, _SPEC, x, gram)
    # The train rows (the first 8, whole blocks of 4): bit for bit a fresh Gram of the subset.
    train_rows = np.arange(8)
    fresh = ntk_tf.GramStore(self.create_tempdir().full_path, model, x[train_rows], block_size=4,
                             dtype="float32", implementation="jacobian").compute(progress=False)
    with mock.patch.object(ntk_tf.GramStore, "_compute_missing",
                           side_effect=AssertionError("a new Gram was computed")):
      sliced = theta0.rows(model, _SPEC, x, train_rows, gram)
    self.assertEqual(sliced.dtype, np.float32)
    np.testing.assert_array_equal(sliced, fresh.matrix)
    # Any rows, any order: the same entries of the full Gram.
    rows = np.array([10, 2, 7, 5])
    expected = ntk_reference.brute_force_gram(model, x)[np.ix_(rows, rows)]
    np.testing.assert_allclose(theta0.rows(model, _SPEC, x, rows, gram), expected,
                               rtol=2e-5, atol=1e-6)
    self.assertLen(list(pathlib.Path(cache).iterdir()), 1)  # one store, no new ones
    np.testing.assert_array_equal(full.matrix[np.ix_(rows, rows)],
                                  theta0.rows(model, _SPEC, x, rows, gram))
    for bad in ([], [0, 0], [12], [-1]):
      with self.assertRaisesRegex(ValueError, "rows must be distinct ints"):
        theta0.rows(model, _SPEC, x, bad, gram)

  def test_a_cluster_without_a_connection_is_refused_before_any_work(self):
    model = _SPEC.build((3, 3, 1))
    gram = pipeline.GramSpec(4, "auto", "float32", self.create_tempdir().full_path,
                             cluster="local:2")
    with self.assertRaisesRegex(ValueError, r"gram.cluster='local:2'.*cluster.connect"):
      theta0.store(model, _SPEC, _x(), gram)

  def test_a_half_made_gram_job_store_is_resumed_by_the_gram_job(self):
    model = _SPEC.build((3, 3, 1))
    x = _x()
    cache = self.create_tempdir().full_path
    folder = theta0.path(model, _SPEC, x, "float32", cache)
    real_result = local_runner.LocalRunner.result
    calls = []

    def dies_at_the_third_block(runner, handle):
      calls.append(1)
      if len(calls) == 3:
        raise KeyboardInterrupt("killed")
      return real_result(runner, handle)

    with mock.patch.object(local_runner.LocalRunner, "result", dies_at_the_third_block):
      with self.assertRaises(KeyboardInterrupt):
        gram_job.compute_gram(folder, model, x, block_size=4, implementation="structured",
                              commit_interval_s=0.0, progress=False)
    submitted = []
    real_submit = local_runner.LocalRunner.submit

    def counting_submit(runner, i0, j0):
      submitted.append((i0, j0))
      return real_submit(runner, i0, j0)

    with mock.patch.object(local_runner.LocalRunner, "submit", counting_submit), \
        mock.patch.object(ntk_tf.GramStore, "_missing_blocks",
                          side_effect=AssertionError("resumed by another engine")):
      store = theta0.store(model, _SPEC, x, pipeline.GramSpec(8, "auto", "float32", cache))
    self.assertEqual(store.path, folder)
    self.assertLen(submitted, 6 - 2)  # 3 row blocks: 6 blocks, 2 committed before the kill
    self.assertEqual(_manifest(store)["options"], {"matmul_engine": "xla"})
    np.testing.assert_allclose(store.matrix, ntk_reference.brute_force_gram(model, x), rtol=1e-5, atol=1e-6)

  def test_the_gram_binary_writes_the_store_the_experiments_read(self):
    config = gram_config.get_config("smoke")
    config.data_dir = test_util.write_synthetic_data(self.create_tempdir().full_path)
    config.cache_dir = self.create_tempdir().full_path
    config.progress = False
    settings = gram_experiment.settings_from_config(config)
    workdir = pathlib.Path(self.create_tempdir().full_path)
    info = gram_experiment.run(settings, workdir)
    self.assertTrue(info["matrix"].startswith(config.cache_dir), info["matrix"])
    self.assertFalse((workdir / "gram.npy").exists())
    dataset = settings.data.load()
    model = settings.model.build(dataset.input_shape)
    gram = pipeline.GramSpec(256, "auto", "float32", config.cache_dir)
    with mock.patch.object(ntk_tf.GramStore, "_compute_missing",
                           side_effect=AssertionError("recomputed")):
      store = theta0.store(model, settings.model, dataset.all_x(), gram)
    self.assertEqual(str(store.matrix_path), info["matrix"])
    x_all = dataset.all_x()
    np.testing.assert_allclose(store.matrix, ntk_reference.brute_force_gram(model, x_all),
                               rtol=1e-4, atol=1e-4)

  def test_bad_cluster_and_implementation_are_refused_by_name(self):
    config = ml_collections.ConfigDict({"gram": {
        "block_size": 4, "implementation": "auto", "dtype": "float32", "cache_dir": None,
        "cluster": "local:0"}})
    with self.assertRaisesRegex(ValueError, r"config.gram.cluster.*'local:0'"):
      fields.read(pipeline.GramSpec, config.gram, label="config.gram")
    config.gram.cluster = "local:2"
    self.assertEqual(fields.read(pipeline.GramSpec, config.gram, label="config.gram").cluster,
                     "local:2")
    model = _SPEC.build((3, 3, 1))
    with self.assertRaisesRegex(ValueError, r"implementation='ntk_vector_products'"):
      theta0.device_implementation(model, "ntk_vector_products")
    self.assertIn(theta0.device_implementation(model, "auto"), ("structured", "jacobian"))


if __name__ == "__main__":
  absltest.main()
