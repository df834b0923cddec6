"""The eigenfunction tasks of the experiments: labels sign(phi_j) of NTK eigenvectors at init.

    Theta_0 = J(X) J(X)^T          Gram at initialization on X = train then test samples (App. B)
    Theta_0 phi_j = lambda_j phi_j  top-k eigenpairs, j = 1..k (1-based)
    task j: y_i = sign(phi_j[i])    labels in {0, 1} for BCE, split back into train / test rows

One place for the shared pipeline "Gram at init -> eigenvectors -> sign(phi_j) labels"
used by the eigenfunction, kernel-rotation and late-linearization experiments.

Shapes: X `[N, H, W, C]` with N = N_train + N_test (train rows first, `Dataset.all_x()`),
eigenvalues `[k]` descending, eigenvectors `[N, k]` unit columns.

Caching under `workdir`: `gram/` is a resumable `ntk_tf.GramStore`; `eigen_k<k>.npz` holds
(eigvals, eigvecs) with the fingerprints of the weights and data they came from, and is
recomputed if either differs.
"""

import dataclasses
import json
import os
import pathlib
import shutil
from typing import Dict, Optional, Sequence

from absl import logging
import keras
import numpy as np

import ntk_tf
from ntk_tf import data as data_lib
from ntk_tf.experiments import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class EigenBasis:
  """Top-k eigenpairs of the Gram of Theta_0 on all samples of a dataset.

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
    y_train01: `[N_train]` float32 labels in {0, 1}.
    y_test01: `[N_test]` float32 labels in {0, 1}.
    phi_train: `[N_train]` phi_j on the train rows (as in the eigenvector, not rescaled).
  """
  j: int
  eigenvalue: float
  overlap: float
  y_train01: np.ndarray
  y_test01: np.ndarray
  phi_train: np.ndarray


def _fingerprints(model: keras.Model, x: np.ndarray) -> Dict[str, str]:
  from ntk_tf import gram_store  # pylint: disable=g-import-not-at-top
  return {"model": gram_store.model_fingerprint(model), "data": gram_store.data_fingerprint(x)}


def eigen_basis(model: keras.Model, dataset: data_lib.Dataset, k: int,
                workdir: os.PathLike, *, block_size: int = 256, implementation: str = "auto",
                dtype: str = "float32", progress: bool = True) -> EigenBasis:
  """Returns the top-k eigenpairs of Theta_0 on `dataset.all_x()` (cached in `workdir`).

      Theta_0[a, b] = <grad f(x_a; theta0), grad f(x_b; theta0)>,  a, b over train then test

  Args:
    model: the network at initialization theta0, one logit.
    dataset: supplies X = all_x() `[N, ...]` and the train/test split.
    k: number of eigenpairs, 1 <= k <= N.
    workdir: folder of this (model, dataset) pair: `gram/` and `eigen_k<k>.npz`.
    block_size, implementation, dtype: of the Gram (`ntk_tf.GramStore`).
    progress: show the Gram progress.
  Returns:
    An EigenBasis.
  Paper: Sec. 3.1, App. B (Gram of train and test samples together).
  """
  x_all = dataset.all_x()  # [N, H, W, C]
  n = x_all.shape[0]
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
    raise ValueError(f"k must be an int in [1, N={n}] (N = train + test samples). Received: k={k!r}")
  root = pathlib.Path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  cache = root / f"eigen_k{k}.npz"
  meta_path = root / f"eigen_k{k}.json"
  fingerprints = _fingerprints(model, x_all)
  if cache.is_file() and meta_path.is_file() and json.loads(meta_path.read_text()) == fingerprints:
    with np.load(cache) as saved:
      return EigenBasis(saved["eigvals"], saved["eigvecs"], dataset.is_train)
  # A Gram left by other weights or data is cleared (GramStore refuses to mix them).
  stamp = root / "gram_fingerprints.json"
  if (root / "gram").exists() and (
      not stamp.is_file() or json.loads(stamp.read_text()) != fingerprints):
    shutil.rmtree(root / "gram")
  workdir_lib.atomic_write_json(stamp, fingerprints)
  store = ntk_tf.GramStore(root / "gram", model, x_all, block_size=block_size, dtype=dtype,
                           implementation=implementation)
  store.compute(progress=progress)
  logging.info("Eigendecomposition of the [%d, %d] Gram, top %d.", n, n, k)
  eigvals, eigvecs = ntk_tf.eigen(store, k)
  np.savez(cache, eigvals=eigvals, eigvecs=eigvecs)
  workdir_lib.atomic_write_json(meta_path, fingerprints)
  return EigenBasis(np.asarray(eigvals), np.asarray(eigvecs), dataset.is_train)


def task_from_basis(basis: EigenBasis, j: int) -> EigenfunctionTask:
  """The task sign(phi_j) of an EigenBasis, split into train / test labels."""
  labels01, overlap = ntk_tf.eigenfunction_labels(basis.eigvecs, j)  # [N]
  return EigenfunctionTask(
      j=int(j), eigenvalue=float(basis.eigvals[j - 1]), overlap=float(overlap),
      y_train01=labels01[basis.is_train], y_test01=labels01[~basis.is_train],
      phi_train=np.asarray(basis.eigvecs[basis.is_train, j - 1]))


def eigenfunction_task(model: keras.Model, dataset: data_lib.Dataset, j_list: Sequence[int],
                       workdir: os.PathLike, *, num_eigen: Optional[int] = None,
                       **gram_kwargs) -> Dict[int, EigenfunctionTask]:
  """Returns the tasks sign(phi_j) for every j in `j_list` (Gram and eigenvectors cached).

      y_j(x) = sign(phi_j(x)),  phi_j the j-th eigenvector of Theta_0 on train + test

  Args:
    model: the network at initialization.
    dataset: the supporting samples (e.g. a CIFAR-10 subset).
    j_list: 1-based indices, each <= the number of computed eigenvectors.
    workdir: cache folder of this (model, dataset) pair.
    num_eigen: how many eigenvectors to compute (default max(j_list)).
    **gram_kwargs: block_size, implementation, dtype, progress of `eigen_basis`.
  Returns:
    {j: EigenfunctionTask}.
  Paper: Sec. 3.1 (Fig. 2), Sec. 4.2 (Fig. 7), Sec. 4.3 (Figs. 8, 9).
  """
  j_list = [int(j) for j in j_list]
  if not j_list or min(j_list) < 1:
    raise ValueError(f"j_list must be non-empty 1-based indices. Received: j_list={j_list}")
  k = max(j_list) if num_eigen is None else int(num_eigen)
  if max(j_list) > k:
    raise ValueError(f"Every j must be <= num_eigen={k}. Received: j_list={j_list}")
  basis = eigen_basis(model, dataset, k, workdir, **gram_kwargs)
  return {j: task_from_basis(basis, j) for j in j_list}
