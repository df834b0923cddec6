"""Tests of the shared eigenfunction-task pipeline (ntk_tf/experiments/tasks.py)."""

import os
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl.testing import absltest
import numpy as np
import tensorflow as tf

import ntk_tf
from ntk_tf import data as data_lib
from ntk_tf import models
from ntk_tf.experiments import tasks


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


class EigenfunctionTaskTest(absltest.TestCase):

  def test_tasks_are_signs_of_gram_eigenvectors(self):
    dataset = _dataset(12, 6)
    model = models.get("mlp", input_shape=(4, 4, 1), seed=3, width=8)
    workdir = self.create_tempdir().full_path
    got = tasks.eigenfunction_task(model, dataset, [1, 4], workdir, block_size=8, progress=False)
    gram = _gram_by_tape(model, dataset.all_x())
    eigvals = np.linalg.eigvalsh(gram)[::-1]
    for j, task in got.items():
      self.assertAlmostEqual(task.eigenvalue, eigvals[j - 1], delta=1e-4 * eigvals[0])
      basis = tasks.eigen_basis(model, dataset, 4, workdir, block_size=8, progress=False)
      phi = basis.eigvecs[:, j - 1]
      np.testing.assert_allclose(gram @ phi, task.eigenvalue * phi, atol=1e-4 * eigvals[0])
      labels = (phi > 0).astype(np.float32)
      np.testing.assert_array_equal(task.y_train01, labels[:12])
      np.testing.assert_array_equal(task.y_test01, labels[12:])
      want_overlap = np.abs(phi).sum() / (np.sqrt(18) * np.linalg.norm(phi))
      self.assertAlmostEqual(task.overlap, want_overlap, places=6)

  def test_cached_basis_is_reused_and_refreshed_for_new_weights(self):
    dataset = _dataset(8, 4)
    model = models.get("mlp", input_shape=(4, 4, 1), seed=0, width=4)
    workdir = self.create_tempdir().full_path
    first = tasks.eigen_basis(model, dataset, 3, workdir, block_size=4, progress=False)
    with mock.patch.object(ntk_tf, "GramStore", side_effect=AssertionError("recomputed")):
      again = tasks.eigen_basis(model, dataset, 3, workdir, block_size=4, progress=False)
    np.testing.assert_array_equal(first.eigvecs, again.eigvecs)
    other = models.get("mlp", input_shape=(4, 4, 1), seed=1, width=4)
    changed = tasks.eigen_basis(other, dataset, 3, workdir, block_size=4, progress=False)
    self.assertFalse(np.allclose(first.eigvals, changed.eigvals))

  def test_bad_indices_are_named(self):
    dataset = _dataset(4, 2)
    model = models.get("mlp", input_shape=(4, 4, 1), seed=0, width=4)
    workdir = self.create_tempdir().full_path
    with self.assertRaisesRegex(ValueError, "k=7"):
      tasks.eigen_basis(model, dataset, 7, workdir)
    with self.assertRaisesRegex(ValueError, "j_list"):
      tasks.eigenfunction_task(model, dataset, [0], workdir)
    with self.assertRaisesRegex(ValueError, "num_eigen=2"):
      tasks.eigenfunction_task(model, dataset, [3], workdir, num_eigen=2)


if __name__ == "__main__":
  absltest.main()
