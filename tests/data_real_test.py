"""Checks of ntk_tf.data against the published facts of shared/data/README.md.

Needs the real CIFAR-10 / MNIST files: the Bazel target is tagged "requires-data",
which scripts/test.sh excludes where no data folder is found (so the suite shows
no skipped test); run it with `bazel test //tests:data_real_test` where the data is.
"""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tests import test_util
from ntk_tf import data


def _real_data_dir() -> str:
  folder = test_util.data_dir()
  if folder is None:
    raise FileNotFoundError("data_real_test needs the real data: set NTK_TF_DATA_DIR to a folder "
                            "with cifar10.npz and mnist.npz (it is excluded where there is none)")
  return folder


class RealDataTest(parameterized.TestCase):
  """Checks against the published facts of shared/data/README.md."""

  def test_cifar10_statistics_and_order(self):
    data_dir = _real_data_dir()
    ds = data.load("cifar10", data_dir=data_dir, normalize=False)
    self.assertEqual(ds.x_train.shape, (50000, 32, 32, 3))
    self.assertEqual(ds.x_test.shape, (10000, 32, 32, 3))
    np.testing.assert_allclose(ds.mean, [0.49139968, 0.48215841, 0.44653091], atol=5e-9)
    np.testing.assert_allclose(ds.std, [0.24703223, 0.24348513, 0.26158784], atol=5e-9)
    np.testing.assert_array_equal(ds.y_train[:10], [6, 9, 9, 4, 1, 1, 2, 7, 8, 3])
    np.testing.assert_array_equal(ds.x_train[0, 0, :8, 0], [59, 43, 50, 68, 98, 119, 139, 145])

  def test_cifar2_subsample_is_balanced_and_standardized(self):
    data_dir = _real_data_dir()
    ds = data.load("cifar2", data_dir=data_dir, train_size=1000, test_size=200, seed=0)
    self.assertEqual(ds.num_train, 1000)
    self.assertEqual(int((ds.y_train == 1).sum()), 500)
    self.assertEqual(int((ds.y_test == 1).sum()), 100)
    full = data.load("cifar10", data_dir=data_dir)
    np.testing.assert_allclose(full.x_train.reshape(-1, 3).mean(0, dtype=np.float64), 0.0, atol=1e-4)
    np.testing.assert_allclose(full.x_train.reshape(-1, 3).std(0, dtype=np.float64), 1.0, atol=1e-4)

  def test_mnist(self):
    data_dir = _real_data_dir()
    ds = data.load("mnist", data_dir=data_dir, normalize=False)
    self.assertEqual(ds.input_shape, (28, 28, 1))
    np.testing.assert_array_equal(np.bincount(ds.y_test),
                                  [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    np.testing.assert_allclose(ds.mean, [0.130660], atol=5e-7)


if __name__ == "__main__":
  absltest.main()
