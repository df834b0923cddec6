"""Theta_0 of the experiments computed on a localhost cluster (ntk_tf/experiments/theta0.py).

This process connects to a cluster of 2 workers and a parameter server
(`cluster.connect("local:2")`) before it builds any model, as the experiment
binaries do. Each Gram is checked against per-example gradients taken here
with tf.GradientTape (`ntk_reference.brute_force_gram`); so is kernel_rotation's
alignment, whose samples are then sharded over the workers.
"""

import json
import os
import pathlib
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl.testing import absltest
import numpy as np

from tests import ntk_reference  # pylint: disable=g-bad-import-order
from tests import test_util
from binaries import eigenfunctions as eigenfunctions_binary
from configs import eigenfunctions as eigenfunctions_config
from ntk_tf.distributed import cluster
from ntk_tf.distributed import cluster_runner
from ntk_tf.distributed import local_runner
from ntk_tf.distributed import sharded_passes
from ntk_tf.experiments import eigenfunctions
from ntk_tf.experiments import kernel_rotation
from ntk_tf.experiments import pipeline
from ntk_tf.experiments import theta0

_SPEC = pipeline.ModelSpec("mlp", "relu", {"width": 4}, 0)


class Theta0ClusterTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.cluster = cluster.connect("local:2")  # Before any model is built.

  def test_connect_is_once_per_process(self):
    self.assertEqual(self.cluster.num_workers, 2)
    self.assertIs(cluster.connect("local:2"), self.cluster)
    self.assertIs(cluster.connected(), self.cluster)
    with self.assertRaisesRegex(ValueError, r"connected to 'local:2'.*cluster='local:3'"):
      cluster.connect("local:3")

  def test_store_on_the_cluster_then_reused_without_it(self):
    model = _SPEC.build((3, 3, 1))
    x = np.random.default_rng(3).standard_normal((12, 3, 3, 1)).astype(np.float32)
    cache = self.create_tempdir().full_path
    store = theta0.store(model, _SPEC, x, pipeline.GramSpec(4, "auto", "float32", cache,
                                                            cluster="local:2"))
    np.testing.assert_allclose(store.matrix, ntk_reference.brute_force_gram(model, x), rtol=1e-5, atol=1e-6)
    manifest = json.loads((store.path / "manifest.json").read_text())
    self.assertEqual(manifest["options"], {"matmul_engine": "xla"})  # made by the gram job
    made = np.array(store.matrix)
    with mock.patch.object(cluster_runner.ClusterRunner, "submit",
                           side_effect=AssertionError("recomputed")), \
        mock.patch.object(local_runner.LocalRunner, "submit",
                          side_effect=AssertionError("recomputed")):
      again = theta0.store(model, _SPEC, x, pipeline.GramSpec(8, "auto", "float32", cache))
    np.testing.assert_array_equal(again.matrix, made)

  def test_the_eigenfunctions_binary_gets_theta0_from_the_cluster(self):
    workdir = self.create_tempdir().full_path
    cache = self.create_tempdir().full_path
    with mock.patch.object(local_runner.LocalRunner, "submit",
                           side_effect=AssertionError("computed outside the cluster")):
      data_dir = test_util.run_binary_main(
          self, eigenfunctions_binary, "configs/eigenfunctions.py:smoke", workdir,
          **{"gram.cache_dir": cache, "gram.cluster": "local:2", "models": ("mlp",),
             "kinds": ("network",), "epochs": 1})
    self.assertTrue((pathlib.Path(workdir) / "results.csv").is_file())
    (folder,) = pathlib.Path(cache).iterdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    self.assertEqual(manifest["options"], {"matmul_engine": "xla"})
    config = eigenfunctions_config.get_config("smoke")
    config.data_dir, config.models = data_dir, ("mlp",)
    settings = eigenfunctions.settings_from_config(config)
    dataset = settings.data.load()
    (spec,) = settings.models
    model = spec.build(dataset.input_shape)
    gram = np.load(folder / "gram.npy", mmap_mode="r")
    np.testing.assert_allclose(gram, ntk_reference.brute_force_gram(model, dataset.all_x()),
                               rtol=1e-4, atol=1e-5 * float(np.max(np.abs(gram))))

  def test_kernel_rotation_alignment_is_sharded_over_the_workers(self):
    model = _SPEC.build((3, 3, 1))
    x = np.random.default_rng(4).standard_normal((20, 3, 3, 1)).astype(np.float32)
    functions = np.random.default_rng(5).standard_normal((20, 3))  # [n, m]
    with mock.patch.object(sharded_passes, "sharded_alignment",
                           wraps=sharded_passes.sharded_alignment) as spy:
      alpha = kernel_rotation.alignment_from_jacobian(model, x, functions, batch_size=8,
                                                      dtype="float32",
                                                      memory_budget_bytes=1 << 20)
    spy.assert_called_once()
    scaled = functions * np.sqrt(20) / np.linalg.norm(functions, axis=0)  # E[f^2] = 1
    theta = ntk_reference.brute_force_gram(model, x).astype(np.float64)  # [n, n]
    expected = np.einsum("nm,nk,km->m", scaled, theta, scaled) / 20**2  # f^T Theta f / n^2
    np.testing.assert_allclose(alpha, expected, rtol=1e-5)


if __name__ == "__main__":
  absltest.main()
