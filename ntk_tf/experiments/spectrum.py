"""The spectrum of Theta_0 and the eigenfunction tasks sign(phi_j) of the experiments.

    Theta_0 = J(X) J(X)^T           Gram at initialization on X = train then test samples (App. B)
    Theta_0 phi_j = lambda_j phi_j   top-k eigenpairs, j = 1..k (1-based), lambda descending
    task j: y = sign(phi_j)          +-1 labels, split back into train / test rows

The one place for "Gram at init -> eigenpairs -> sign(phi_j) tasks", used by the
eigenfunction, kernel-rotation and late-linearization experiments.

Shapes: X `[N, H, W, C]` with N = N_train + N_test (train rows first,
`Dataset.all_x()`), eigenvalues `[k]`, eigenvectors `[N, k]` unit columns.

Cache: the Gram is the shared content-addressed store of `theta0.store`;
the eigenpairs sit beside it in that folder as `eigen_k<k>_<method>_s<seed>.npz`,
so they too are computed once per (model, seed, data, dtype, k, method, seed): a process
that needs them while another computes them waits on `eigen_....lock` (an exclusive flock),
then reads the other's file. A top-k solve keeps its state in `eigen_....partial/` while
it runs, so a killed one resumes where it stopped (`ntk_tf.topk_eigen`).
"""

import contextlib
import dataclasses
import fcntl
import os
import pathlib
import shutil
from typing import Iterator, Sequence

from absl import logging
import keras
import numpy as np

import ntk_tf
from ntk_tf import atomic
from ntk_tf import data as data_lib
from ntk_tf.experiments import pipeline
from ntk_tf.experiments import theta0 as theta0_lib
from ntk_tf.tasks import eigenfunction_signs


@dataclasses.dataclass(frozen=True)
class Spectrum:
  """Top-k eigenpairs of Theta_0 on all samples of a dataset.

  Attributes:
    eigvals: `[k]` descending (eigenvalues of the Gram, not divided by N).
    eigvecs: `[N, k]` unit columns, sign convention of `ntk_tf.eigen`.
    is_train: `[N]` bool, True for the train rows (the first N_train).
  """
  eigvals: np.ndarray
  eigvecs: np.ndarray
  is_train: np.ndarray

  @property
  def k(self) -> int:
    return int(self.eigvals.shape[0])


@dataclasses.dataclass(frozen=True)
class EigenfunctionTask:
  """The binary task x -> sign(phi_j(x)) on a dataset's train / test split.

  Attributes:
    j: 1-based eigenfunction index.
    eigenvalue: lambda_j of the Gram.
    overlap: <sign(phi_j)/sqrt(N), phi_j> over all N samples (App. B: ~0.78).
    y_train: `[N_train]` float32 labels in {-1, +1}.
    y_test: `[N_test]` float32 labels in {-1, +1}.
  """
  j: int
  eigenvalue: float
  overlap: float
  y_train: np.ndarray
  y_test: np.ndarray


def spectrum(model: keras.Model, spec: pipeline.ModelSpec, dataset: data_lib.Dataset, k: int,
             gram: pipeline.GramSpec, *, method: str = "auto", seed: int = 0,
             progress: bool = False) -> Spectrum:
  """Returns the top-k eigenpairs of Theta_0 on `dataset.all_x()` (Gram and eigenpairs cached).

      Theta_0[a, b] = <grad f(x_a; theta0), grad f(x_b; theta0)>,  a, b over train then test

  Args:
    model: the network at initialization theta0, one logit.
    spec: the model's spec (part of the cache key).
    dataset: supplies X = all_x() `[N, ...]` and the train/test split.
    k: number of eigenpairs, 1 <= k <= N.
    gram: block size, implementation, dtype and cache folder of the Gram.
    method, seed: of `ntk_tf.eigen`.
    progress: show the Gram progress.
  Paper: Sec. 3.1, App. B.
  """
  x_all = dataset.all_x()  # [N, H, W, C]
  n = x_all.shape[0]
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
    raise ValueError(f"k must be an int in [1, N={n}] (N = train + test samples). Received: k={k!r}")
  store = theta0_lib.store(model, spec, x_all, gram, progress=progress)
  cache = store.path / f"eigen_k{k}_{method}_s{seed}.npz"
  # One process computes them; another that needs the same eigenpairs meanwhile waits for
  # its cache file instead of running the same eigensolve beside it.
  with _computing(cache, spec.name):
    if cache.is_file():
      logging.info("%s: reusing the eigenpairs in %s", spec.name, cache)
      with np.load(cache) as saved:
        return Spectrum(saved["eigvals"], saved["eigvecs"], dataset.is_train)
    logging.info("%s: top %d eigenpairs of the [%d, %d] Gram (%s)", spec.name, k, n, n, method)
    partial = cache.with_suffix(".partial")  # The solver's state: a killed solve resumes.
    eigvals, eigvecs = ntk_tf.eigen(store, k, method=method, seed=seed, checkpoint=partial)
    atomic.write_numpy(cache, np.savez, eigvals=eigvals, eigvecs=eigvecs)
    shutil.rmtree(partial, ignore_errors=True)
  return Spectrum(np.asarray(eigvals), np.asarray(eigvecs), dataset.is_train)


@contextlib.contextmanager
def _computing(cache: pathlib.Path, name: str) -> Iterator[None]:
  """Holds an exclusive `fcntl.flock` on `<cache>.lock` inside the block (waits, logging so)."""
  fd = os.open(cache.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o666)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      logging.info("%s: another process is computing %s; waiting for it.", name, cache.name)
      fcntl.flock(fd, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)


def eigenfunction_task(basis: Spectrum, j: int) -> EigenfunctionTask:
  """The task sign(phi_j) of a Spectrum, split into train / test labels. Paper: Sec. 3.1."""
  labels, overlap = eigenfunction_signs(basis.eigvecs, j)  # [N] in {-1, +1}
  return EigenfunctionTask(j=int(j), eigenvalue=float(basis.eigvals[j - 1]),
                           overlap=float(overlap), y_train=labels[basis.is_train],
                           y_test=labels[~basis.is_train])


def eigenfunction_tasks(basis: Spectrum, indices: Sequence[int]) -> dict:
  """{j: EigenfunctionTask} for 1-based `indices`, each <= basis.k."""
  bad = [j for j in indices if not 1 <= j <= basis.k]
  if bad:
    raise ValueError(f"Eigenfunction indices must lie in [1, k={basis.k}]. Received: {list(indices)}")
  return {int(j): eigenfunction_task(basis, j) for j in indices}
