"""DeviceBlock and compute_gram against independent Grams; the gram binary's smoke run.

Independent computations:
  - per-example gradients by one GradientTape per example, Theta = G G^T in
    NumPy (float64), on a tiny MLP and a tiny LeNet;
  - the existing exact reference `ntk_tf.ntk_gram` (same implementation, XLA
    engine), which the device block must match bit for bit in float64 and to
    rounding in float32.
Resumption: a job whose runner fails after some blocks, rerun, computes only
the missing blocks and gives the bytes of an uninterrupted run.
"""

import json
import os
import pathlib
import subprocess
import sys

from absl.testing import absltest
from absl.testing import flagsaver
from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from tests import test_util  # pylint: disable=g-bad-import-order
import ntk_tf
from binaries import gram as gram_main
from ntk_tf import models
from configs import gram as gram_config
from ntk_tf.distributed import cluster
from ntk_tf.distributed import device_block
from ntk_tf.distributed import gram_job
from ntk_tf.distributed import cluster_runner
from ntk_tf.distributed import local_runner
from ntk_tf import validation
from ntk_tf.experiments import gram_experiment

_SHAPES = {"mlp": (6, 6, 1), "lenet": (12, 12, 1)}
_KWARGS = {"mlp": {"width": 8}, "lenet": {}}


def _model(name: str, dtype: str = "float64"):
  model = models.get(name, input_shape=_SHAPES[name], seed=3, **_KWARGS[name])
  return ntk_tf.precision.cast_model(model, dtype)


def _inputs(name: str, n: int) -> np.ndarray:
  return np.random.default_rng(0).normal(size=(n,) + _SHAPES[name]).astype("float32")


def _brute_force_gram(model, x: np.ndarray) -> np.ndarray:
  """Theta = G G^T with G [N, P] from one GradientTape per example (float64)."""
  rows = []
  for x_i in x.astype("float64"):
    with tf.GradientTape() as tape:
      logit = tf.reduce_sum(model(x_i[None], training=False))
    grads = tape.gradient(logit, model.trainable_variables)
    rows.append(np.concatenate([g.numpy().ravel() for g in grads]))  # [P]
  jac = np.stack(rows)  # [N, P]
  return jac @ jac.T  # [N, N]


class _FailingRunner(local_runner.LocalRunner):
  """A LocalRunner that raises after `fail_after` results (a killed job), counting submits."""

  def __init__(self, *args, fail_after=None, **kwargs):
    super().__init__(*args, **kwargs)
    self.fail_after = fail_after
    self.submitted = 0
    self.returned = 0

  def submit(self, i0, j0):
    self.submitted += 1
    return super().submit(i0, j0)

  def result(self, handle):
    if self.fail_after is not None and self.returned >= self.fail_after:
      raise KeyboardInterrupt("killed")
    self.returned += 1
    return super().result(handle)


class DeviceBlockTest(parameterized.TestCase):

  @parameterized.product(name=("mlp", "lenet"), implementation=("jacobian", "structured"))
  def test_matches_brute_force_and_reference(self, name, implementation):
    model = _model(name)
    x = _inputs(name, 10)  # Blocks of 4: a partial last block.
    store = gram_job.compute_gram(self.create_tempdir().full_path, model, x, block_size=4,
                                  dtype="float64", implementation=implementation,
                                  progress=False)
    theta = np.array(store.matrix)  # [10, 10]
    expected = _brute_force_gram(model, x)
    np.testing.assert_allclose(theta, expected, rtol=1e-10, atol=1e-12 * np.abs(expected).max())
    reference = ntk_tf.ntk_gram(model, x, block_size=4, dtype="float64",
                                implementation=implementation, matmul_engine="xla",
                                progress=False)
    np.testing.assert_array_equal(theta, reference)

  def test_float32_close_to_float64(self):
    model = _model("lenet", "float32")
    x = _inputs("lenet", 6)
    store = gram_job.compute_gram(self.create_tempdir().full_path, model, x, block_size=4,
                                  dtype="float32", progress=False)
    expected = _brute_force_gram(_model("lenet"), x)
    np.testing.assert_allclose(store.matrix, expected, rtol=2e-4,
                               atol=2e-5 * np.abs(expected).max())

  def test_one_trace_per_block_shape(self):
    block = device_block.DeviceBlock(_model("mlp", "float32"), "structured", "float32")
    x = _inputs("mlp", 8)
    for start in (0, 4):
      block.block(tf.constant(x[start:start + 4]), tf.constant(x[4 - start:8 - start]))
      block.diagonal(tf.constant(x[start:start + 4]))
    self.assertEqual(block.block.experimental_get_tracing_count(), 1)
    self.assertEqual(block.diagonal.experimental_get_tracing_count(), 1)

  @parameterized.parameters("mlp", "lenet")
  def test_weights_as_inputs(self, name):
    # The weights given as tensors are the ones used: with other weights the result
    # is the block of a model holding them, bit for bit (the same ops).
    model, other = _model(name, "float32"), _model(name, "float32")
    other.set_weights([w * 1.5 for w in model.get_weights()])
    block = device_block.DeviceBlock(model, "structured", "float32")
    self.assertTrue(block.takes_weights)
    x = _inputs(name, 8)
    x_a, x_b = tf.constant(x[:4]), tf.constant(x[4:])
    weights = [tf.constant(w) for w in other.get_weights()]
    pair = tf.function(block.stateless_block)(x_a, x_b, weights)
    diagonal = tf.function(block.stateless_diagonal)(x_a, weights)
    expected = device_block.DeviceBlock(other, "structured", "float32")
    np.testing.assert_array_equal(pair, expected.block(x_a, x_b))
    np.testing.assert_array_equal(diagonal, expected.diagonal(x_a))
    self.assertFalse(np.array_equal(pair, block.block(x_a, x_b)))

  @parameterized.product(name=("mlp", "lenet"), implementation=("jacobian", "structured"))
  def test_row_is_its_blocks(self, name, implementation):
    # One row function, features of x_a once: each part the bytes of its own block function.
    block = device_block.DeviceBlock(_model(name, "float32"), implementation, "float32")
    x = _inputs(name, 12)
    x_a, x_b, x_c = (tf.constant(x[k:k + 4]) for k in (0, 4, 8))
    specs = [tf.TensorSpec(x_a.shape, tf.float32), tf.TensorSpec([None] + x_a.shape, tf.float32)]
    with_diagonal = tf.function(lambda a, bs: block.row(a, bs, diagonal=True),
                                input_signature=specs)
    without = tf.function(lambda a, bs: block.row(a, bs, diagonal=False))
    np.testing.assert_array_equal(
        with_diagonal(x_a, tf.stack([x_b, x_c])),
        np.concatenate([block.diagonal(x_a), block.block(x_a, x_b), block.block(x_a, x_c)], 1))
    np.testing.assert_array_equal(without(x_a, x_c[None]), block.block(x_a, x_c))
    # K' varies without a new trace; K' = 0 is the diagonal block alone.
    np.testing.assert_array_equal(with_diagonal(x_a, x_b[None][:0]), block.diagonal(x_a))
    self.assertEqual(with_diagonal.experimental_get_tracing_count(), 1)

  @parameterized.parameters("mlp", "lenet")
  def test_row_with_weights_as_inputs(self, name):
    model, other = _model(name, "float32"), _model(name, "float32")
    other.set_weights([w * 1.5 for w in model.get_weights()])
    block = device_block.DeviceBlock(model, "structured", "float32")
    x = _inputs(name, 8)
    x_a, x_b = tf.constant(x[:4]), tf.constant(x[4:])
    weights = [tf.constant(w) for w in other.get_weights()]
    row = tf.function(lambda a, bs, w: block.row(a, bs, diagonal=True, weights=w))(
        x_a, x_b[None], weights)
    expected = device_block.DeviceBlock(other, "structured", "float32")
    np.testing.assert_array_equal(
        row, np.concatenate([expected.diagonal(x_a), expected.block(x_a, x_b)], 1))

  def test_gram_job_groups_blocks_by_row(self):
    # Rows of at most row_blocks blocks, never across block rows, the diagonal first;
    # a resumed job groups only its missing blocks; the Gram is the brute-force one.
    model, x = _model("mlp"), _inputs("mlp", 18)  # blocks of 4: 5 row blocks, 15 blocks

    class RowRunner(_FailingRunner):
      row_blocks = 3
      rows_submitted = []

      def submit_row(self, i0, j0s):
        self.rows_submitted.append((i0, list(j0s)))
        return super().submit_row(i0, j0s)

    path = self.create_tempdir().full_path
    kwargs = dict(block_size=4, dtype="float64", implementation="structured",
                  commit_interval_s=0.0, progress=False)
    # Killed at the 10th block result: the first 4 rows (3 + 2 + 3 + 1 blocks) are written.
    with RowRunner(model, "structured", "float64", fail_after=9) as runner:
      with self.assertRaises(KeyboardInterrupt):
        gram_job.compute_gram(path, model, x, runner, **kwargs)
    first = list(RowRunner.rows_submitted)
    RowRunner.rows_submitted.clear()
    with RowRunner(model, "structured", "float64") as runner:
      store = gram_job.compute_gram(path, model, x, runner, **kwargs)
    self.assertEqual(first[:4], [(0, [0, 4, 8]), (0, [12, 16]), (4, [4, 8, 12]), (4, [16])])
    # The rerun submits only the rows the killed job did not return.
    self.assertEqual(RowRunner.rows_submitted, [(8, [8, 12, 16]), (12, [12, 16]), (16, [16])])
    expected = _brute_force_gram(model, x)
    np.testing.assert_allclose(store.matrix, expected, rtol=1e-10,
                               atol=1e-12 * np.abs(expected).max())

  def test_submit_row_checks_the_row(self):
    with local_runner.LocalRunner(_model("mlp"), "structured", "float64") as runner:
      runner.start(_inputs("mlp", 8), 4)
      with self.assertRaisesRegex(ValueError, r"1 to row_blocks=1 blocks. Received: j0s=\[0, 4\]"):
        runner.submit_row(0, [0, 4])
      runner.row_blocks = 2
      with self.assertRaisesRegex(ValueError, r"first block may be its diagonal block \(i0=4\)"):
        runner.submit_row(4, [0, 4])
    with self.assertRaisesRegex(ValueError, "row_blocks"):
      cluster_runner.ClusterRunner(_model("mlp"), "structured", "float64", None, 1, row_blocks=0)

  def test_jacobian_block_takes_no_weights(self):
    block = device_block.DeviceBlock(_model("mlp"), "jacobian", "float64")
    self.assertFalse(block.takes_weights)
    x = tf.constant(_inputs("mlp", 4), tf.float64)
    with self.assertRaisesRegex(ValueError, "'jacobian' DeviceBlock takes no weights"):
      block.stateless_diagonal(x, [])

  def test_rejects_other_implementations(self):
    with self.assertRaisesRegex(ValueError, "implementation='ntk_vector_products'"):
      device_block.DeviceBlock(_model("mlp"), "ntk_vector_products", "float64")

  def test_killed_job_resumes_with_the_same_bytes(self):
    model, x = _model("mlp", "float32"), _inputs("mlp", 12)
    clean = self.create_tempdir().full_path
    gram_job.compute_gram(clean, model, x, block_size=4, dtype="float32", progress=False)
    path = self.create_tempdir().full_path
    kwargs = dict(block_size=4, dtype="float32", implementation="structured",
                  commit_interval_s=0, progress=False)
    with self.assertRaises(KeyboardInterrupt):
      gram_job.compute_gram(path, model, x, _FailingRunner(model, "structured", "float32",
                                                           fail_after=2), **kwargs)
    rerun = _FailingRunner(model, "structured", "float32")
    store = gram_job.compute_gram(path, model, x, rerun, **kwargs)
    self.assertEqual(rerun.submitted, 6 - 2)  # 3 row blocks: 6 blocks, 2 committed.
    self.assertEqual(pathlib.Path(path, "gram.npy").read_bytes(),
                     pathlib.Path(clean, "gram.npy").read_bytes())
    self.assertTrue(store.is_complete)

  @parameterized.parameters("mlp", "lenet")
  def test_device_feature_cache(self, name):
    # Each example block's features are computed once on the device (5 row blocks,
    # 15 Gram blocks), and the Gram has the bytes of the uncached blocks.
    model, x = _model(name, "float32"), _inputs(name, 18)  # 5 row blocks of 4, the last partial
    grams = {}
    for cache_bytes in (1 << 30, 0):
      runner = local_runner.LocalRunner(model, "structured", "float32",
                                        feature_cache_bytes=cache_bytes)
      store = gram_job.compute_gram(self.create_tempdir().full_path, model, x, runner,
                                    block_size=4, dtype="float32", implementation="structured",
                                    progress=False)
      grams[cache_bytes] = np.array(store.matrix)
      if cache_bytes:
        self.assertEqual(runner.feature_caches[0].computed, 5)
        # A second Gram of the same inputs (the store's data key) keeps the features;
        # other inputs of the same shape clear them.
        again = gram_job.compute_gram(self.create_tempdir().full_path, model, x, runner,
                                      block_size=4, dtype="float32",
                                      implementation="structured", progress=False)
        self.assertEqual(runner.feature_caches[0].computed, 5)
        np.testing.assert_array_equal(again.matrix, grams[cache_bytes])
        gram_job.compute_gram(self.create_tempdir().full_path, model, x[::-1], runner,
                              block_size=4, dtype="float32", implementation="structured",
                              progress=False)
        self.assertEqual(runner.feature_caches[0].computed, 10)
        # The same inputs with new weights (the runner's model is this model): recomputed.
        gram_job.compute_gram(self.create_tempdir().full_path, model, x[::-1], runner,
                              block_size=4, dtype="float32", implementation="structured",
                              progress=False)
        self.assertEqual(runner.feature_caches[0].computed, 10)
        original = model.get_weights()
        model.set_weights([w * 1.25 for w in original])
        scaled = gram_job.compute_gram(self.create_tempdir().full_path, model, x[::-1], runner,
                                       block_size=4, dtype="float32",
                                       implementation="structured", progress=False)
        self.assertEqual(runner.feature_caches[0].computed, 15)
        reference = _model(name)
        reference.set_weights([w.astype("float64") for w in model.get_weights()])
        expected = _brute_force_gram(reference, x[::-1])
        np.testing.assert_allclose(scaled.matrix, expected, rtol=2e-4,
                                   atol=2e-5 * np.abs(expected).max())
        model.set_weights(original)
      else:
        self.assertIsNone(runner.feature_caches)
    np.testing.assert_array_equal(grams[1 << 30], grams[0])
    expected = _brute_force_gram(_model(name), x)
    np.testing.assert_allclose(grams[0], expected, rtol=2e-4, atol=2e-5 * np.abs(expected).max())

  def test_device_feature_cache_evicts_least_recently_used(self):
    model, x = _model("mlp", "float32"), _inputs("mlp", 16)  # 4 row blocks of 4
    runner = local_runner.LocalRunner(model, "structured", "float32")
    runner.start(x, 4)
    cache = runner.feature_caches[0]
    runner.result(runner.submit(0, 0))
    cache.max_bytes = 2 * cache.size_bytes  # two blocks' features
    # LRU of 2: (0, 4) computes 4; (0, 8) computes 8, evicting 4; (4, 8) computes 4,
    # evicting 0, and finds 8; (0, 0) computes 0 again.
    for i0, j0 in ((0, 4), (0, 8), (4, 8), (0, 0)):
      runner.result(runner.submit(i0, j0))
    self.assertEqual(cache.computed, 1 + 4)
    with self.assertRaisesRegex(ValueError, "feature_cache_bytes=-1"):
      local_runner.LocalRunner(model, "structured", "float32", feature_cache_bytes=-1)

  def test_cross_kernel_is_the_off_diagonal_block(self):
    model = _model("mlp")
    x, x_test = _inputs("mlp", 6), _inputs("mlp", 9)[6:]
    store = gram_job.compute_gram(self.create_tempdir().full_path, model, x, x_test=x_test,
                                  block_size=4, dtype="float64", progress=False)
    expected = _brute_force_gram(model, np.concatenate([x, x_test]))[:6, 6:]  # [6, 3]
    np.testing.assert_allclose(store.matrix[:6, 6:], expected, rtol=1e-10)

  def test_gram_config_checks_the_device_feature_cache(self):
    config = gram_config.get_config("smoke")
    settings = gram_experiment.settings_from_config(config)
    self.assertEqual(settings.device_feature_cache_bytes, local_runner.DEVICE_FEATURE_CACHE_BYTES)
    config.device_feature_cache_bytes = -5
    with self.assertRaisesRegex(ValueError, "device_feature_cache_bytes=-5"):
      gram_experiment.settings_from_config(config)

  def test_gram_config_checks_the_cluster_row_blocks(self):
    config = gram_config.get_config("smoke")
    self.assertEqual(gram_experiment.settings_from_config(config).cluster_row_blocks,
                     cluster_runner.ROW_BLOCKS)
    config.cluster_row_blocks = 0
    with self.assertRaisesRegex(ValueError, "cluster_row_blocks=0"):
      gram_experiment.settings_from_config(config)

  def test_gram_config_takes_the_commit_intervals_gram_store_takes(self):
    config = gram_config.get_config("smoke")
    config.commit_interval_s = 0  # GramStore: commit after every block.
    self.assertEqual(gram_experiment.settings_from_config(config).commit_interval_s, 0.0)
    config.commit_interval_s = -1.0
    with self.assertRaisesRegex(ValueError, r"commit_interval_s must be a number >= 0. "
                                r"Received: commit_interval_s=-1.0"):
      gram_experiment.settings_from_config(config)

  def test_check_cluster(self):
    self.assertEqual(cluster.check_cluster("local:2"), "local:2")
    self.assertIsNone(cluster.check_cluster(None))
    for bad in ("local:0", "local", "remote:2"):
      with self.assertRaisesRegex(ValueError, f"cluster={bad!r}"):
        cluster.check_cluster(bad)


_ROOT = pathlib.Path(__file__).resolve().parent.parent


class GramBinaryTest(absltest.TestCase):

  def test_smoke(self):
    out = self.create_tempdir().full_path
    test_util.run_binary_main(self, gram_main, "configs/gram.py:smoke", out)
    theta = np.load(pathlib.Path(out, "gram.npy"))
    info = json.loads(pathlib.Path(out, "gram_info.json").read_text())
    self.assertEqual(theta.shape, (48, 48))
    self.assertEqual((info["n_train"], info["n_test"]), (40, 8))
    np.testing.assert_array_equal(theta, theta.T)
    self.assertGreater(np.linalg.eigvalsh(theta.astype("float64")).min(),
                       -1e-4 * np.abs(theta).max())  # PSD up to float32 rounding.
    # Another block size over the finished store: refused, the store kept; --start_over.
    before = pathlib.Path(out, "gram.npy").read_bytes()
    with self.assertRaisesRegex(validation.ConflictError, r"block_size.*--start_over"):
      test_util.run_binary_main(self, gram_main, "configs/gram.py:smoke", out, block_size=5)
    self.assertEqual(pathlib.Path(out, "gram.npy").read_bytes(), before)
    with flagsaver.flagsaver(start_over=True):
      test_util.run_binary_main(self, gram_main, "configs/gram.py:smoke", out, block_size=5)
    self.assertEqual(pathlib.Path(out, "earlier.1", "gram.npy").read_bytes(), before)
    np.testing.assert_allclose(np.load(pathlib.Path(out, "gram.npy")), theta, rtol=1e-5,
                               atol=1e-6 * np.abs(theta).max())

  def test_a_config_field_typo_is_one_line_and_makes_no_workdir(self):
    out = pathlib.Path(self.create_tempdir().full_path) / "run"
    done = subprocess.run(
        [sys.executable, "-m", "binaries.gram", "--config=configs/gram.py:smoke",
         "--config.blok_size=4", f"--workdir={out}"], cwd=_ROOT, capture_output=True, text=True,
        timeout=300, env=dict(os.environ, PYTHONPATH=str(_ROOT), TF_CPP_MIN_LOG_LEVEL="2"))
    self.assertEqual(done.returncode, 1, done.stderr[-2000:])
    self.assertIn("the config has no field 'blok_size'", done.stderr)
    self.assertNotIn("Traceback", done.stderr)
    self.assertFalse(out.exists())


if __name__ == "__main__":
  absltest.main()
