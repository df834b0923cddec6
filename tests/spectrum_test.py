"""Tests of the spectrum and eigenfunction tasks (ntk_tf/experiments/spectrum.py) and Theta_0 cache."""

import fcntl
import os
import pathlib
import sys
import threading
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl.testing import absltest
import numpy as np
import tensorflow as tf

import ntk_tf
from ntk_tf import data as data_lib
from ntk_tf.experiments import pipeline
from ntk_tf.experiments import spectrum
from ntk_tf.ntk import gram as gram_lib

eigen_lib = sys.modules["ntk_tf.eigen"]  # ntk_tf.eigen the attribute is the function.


def _dataset(n_train: int, n_test: int) -> data_lib.Dataset:
  rng = np.random.default_rng(0)
  x = rng.standard_normal((n_train + n_test, 4, 4, 1)).astype(np.float32)
  y = rng.integers(0, 10, n_train + n_test)
  return data_lib.Dataset("toy", x[:n_train], y[:n_train], x[n_train:], y[n_train:],
                          np.arange(n_train), np.arange(n_test), np.zeros(1), np.ones(1))


def _gram_by_tape(model, x) -> np.ndarray:
  """J J^T from per-example GradientTape gradients (independent of ntk_tf.ntk_gram)."""
  rows = []
  for i in range(len(x)):
    with tf.GradientTape() as tape:
      out = model(x[i:i + 1], training=False)[0, 0]
    rows.append(np.concatenate([g.numpy().ravel()
                                for g in tape.gradient(out, model.trainable_variables)]))
  jac = np.stack(rows).astype(np.float64)  # [N, P]
  return jac @ jac.T


class SpectrumTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.cache = self.create_tempdir().full_path
    self.gram = pipeline.GramSpec(block_size=8, implementation="auto", dtype="float32",
                                  cache_dir=self.cache)

  def _spec(self, seed=3, activation="relu", width=8):
    return pipeline.ModelSpec("mlp", activation, {"width": width}, seed)

  def test_tasks_are_signs_of_gram_eigenvectors(self):
    dataset = _dataset(12, 6)
    spec = self._spec()
    model = spec.build((4, 4, 1))
    basis = spectrum.spectrum(model, spec, dataset, 4, self.gram)
    gram = _gram_by_tape(model, dataset.all_x())
    eigvals = np.linalg.eigvalsh(gram)[::-1]
    for j, task in spectrum.eigenfunction_tasks(basis, [1, 4]).items():
      self.assertAlmostEqual(task.eigenvalue, eigvals[j - 1], delta=1e-4 * eigvals[0])
      phi = basis.eigvecs[:, j - 1]
      np.testing.assert_allclose(gram @ phi, task.eigenvalue * phi, atol=1e-4 * eigvals[0])
      labels = np.where(phi > 0, 1.0, -1.0)  # sign(phi_j), +-1
      np.testing.assert_array_equal(task.y_train, labels[:12])
      np.testing.assert_array_equal(task.y_test, labels[12:])
      want_overlap = np.abs(phi).sum() / (np.sqrt(18) * np.linalg.norm(phi))
      self.assertAlmostEqual(task.overlap, want_overlap, places=6)

  def test_cache_is_shared_and_keyed_by_model_and_data(self):
    dataset = _dataset(8, 4)
    spec = self._spec(seed=0, width=4)
    first = spectrum.spectrum(spec.build((4, 4, 1)), spec, dataset, 3, self.gram)
    # Another experiment (other block size, same model, seed, data and dtype) reuses it.
    other_blocks = pipeline.GramSpec(4, "jacobian", "float32", self.cache)
    with mock.patch.object(ntk_tf, "eigen", side_effect=AssertionError("recomputed")), \
        mock.patch.object(gram_lib, "compute_block", side_effect=AssertionError("block")):
      again = spectrum.spectrum(spec.build((4, 4, 1)), spec, dataset, 3, other_blocks)
    np.testing.assert_array_equal(first.eigvecs, again.eigvecs)
    self.assertLen(os.listdir(self.cache), 1)
    # Other weights (seed), another activation (same weights) or other data: a new Gram.
    for other_spec, other_data in ((self._spec(seed=1, width=4), dataset),
                                   (self._spec(seed=0, activation="tanh", width=4), dataset),
                                   (spec, _dataset(10, 4))):
      changed = spectrum.spectrum(other_spec.build((4, 4, 1)), other_spec, other_data, 3,
                                  self.gram)
      self.assertFalse(np.allclose(first.eigvals, changed.eigvals))
    self.assertLen(os.listdir(self.cache), 4)

  def test_a_second_process_waits_for_the_eigenpairs_being_computed(self):
    dataset = _dataset(8, 4)
    spec = self._spec(seed=0, width=4)
    first = spectrum.spectrum(spec.build((4, 4, 1)), spec, dataset, 3, self.gram)
    (cache,) = pathlib.Path(self.cache).glob("*/eigen_k3_*.npz")
    saved = cache.read_bytes()
    cache.unlink()  # As if another process were still computing them, holding the lock:
    fd = os.open(cache.with_suffix(".lock"), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    result = {}

    def second():
      with mock.patch.object(ntk_tf, "eigen", side_effect=AssertionError("recomputed")):
        result["basis"] = spectrum.spectrum(spec.build((4, 4, 1)), spec, dataset, 3, self.gram)

    waiter = threading.Thread(target=second)
    waiter.start()
    waiter.join(timeout=3.0)
    self.assertTrue(waiter.is_alive())  # Blocked on the lock, not computing.
    cache.write_bytes(saved)  # The holder finishes: its file, then its lock released.
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    waiter.join(timeout=60.0)
    self.assertFalse(waiter.is_alive())
    np.testing.assert_array_equal(result["basis"].eigvecs, first.eigvecs)

  def test_a_killed_eigensolve_resumes_and_its_state_is_removed(self):
    # N = 80, k = 4, b = 32: the basis (N - b = 48 columns) fills in one product, then a
    # thick restart saves the solver's state; the 4th product is killed, and the rerun
    # starts from the state of pass 3.
    dataset = _dataset(60, 20)
    spec = self._spec(seed=0, width=4)
    products = [0]
    real_product = eigen_lib._upper_tiles_product

    def product(matrix, v):
      products[0] += 1
      if products[0] == 4:
        raise KeyboardInterrupt  # As a kill would.
      return real_product(matrix, v)
    with mock.patch.object(eigen_lib, "_upper_tiles_product", side_effect=product):
      with self.assertRaises(KeyboardInterrupt):
        spectrum.spectrum(spec.build((4, 4, 1)), spec, dataset, 4, self.gram,
                          method="block_lanczos")
      (partial,) = pathlib.Path(self.cache).glob("*/eigen_k4_block_lanczos_s0.partial")
      self.assertTrue((partial / "state.npz").is_file())
      with self.assertLogs("absl", level="INFO") as logs:
        resumed = spectrum.spectrum(spec.build((4, 4, 1)), spec, dataset, 4, self.gram,
                                    method="block_lanczos")
    self.assertRegex("\n".join(logs.output), "resuming from .* at pass 3, restart 3")
    self.assertFalse(partial.exists())
    self.assertTrue(partial.with_suffix(".npz").is_file())
    # The same bits as a solve never stopped, in another cache.
    fresh = spectrum.spectrum(spec.build((4, 4, 1)), spec, dataset, 4,
                              pipeline.GramSpec(8, "auto", "float32",
                                                self.create_tempdir().full_path),
                              method="block_lanczos")
    np.testing.assert_array_equal(resumed.eigvals, fresh.eigvals)
    np.testing.assert_array_equal(resumed.eigvecs, fresh.eigvecs)

  def test_bad_indices_are_named(self):
    dataset = _dataset(4, 2)
    spec = self._spec(seed=0, width=4)
    model = spec.build((4, 4, 1))
    with self.assertRaisesRegex(ValueError, "k=7"):
      spectrum.spectrum(model, spec, dataset, 7, self.gram)
    basis = spectrum.spectrum(model, spec, dataset, 2, self.gram)
    with self.assertRaisesRegex(ValueError, r"\[1, k=2\].*\[0, 3\]"):
      spectrum.eigenfunction_tasks(basis, [0, 3])


if __name__ == "__main__":
  absltest.main()
