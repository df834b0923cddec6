"""Theta_0, the NTK Gram at initialization, computed once and shared by every experiment.

    Theta_0[a, b] = <grad_theta f(x_a; theta0), grad_theta f(x_b; theta0)>   [N, N]
    stored at <gram.cache_dir>/<model>-<key>/gram.npy (a resumable `GramStore`)

key = sha256 of the model's architecture (name, activation, extras, input
shape, seed), the fingerprint of its weights, the fingerprint of the inputs
and the dtype (`path`). The implementation, engine and block size are not part
of the key: every path computes the same exact Gram (they agree to rounding),
so a store made by one experiment, or by the gram binary, is reused by every
other with the same model, seed, data and dtype; its rows are sliced, not
recomputed (`rows`: the 50,000 train rows of the 60,000-sample Gram).

Who computes a missing store, and with what:
  - on a cluster (`gram.cluster = "local:N"`, or TF_CONFIG naming this task the
    chief): the Gram job of `binaries/gram.py` (`distributed.gram_job`): blocks
    as closures on the workers, this process the only writer. The process must
    have connected to the cluster (`distributed.cluster.connect`) before it
    built any model; the experiment binaries do so first thing;
  - else in this process: `GramStore` with `gram.implementation` ("auto": the
    path with the fewest FLOPs, its matmul engine chosen per machine,
    `ntk_tf.ntk.engine_cache`). One CPU process gains nothing from the gram job's
    XLA engine, which is slower than NumPy's on the CPUs measured (issue 15).
  - `python -m binaries.gram --config.cache_dir=DIR` writes to the same path,
    so a Gram computed by the gram binary (e.g. on a GPU cluster) is found by
    the experiments given `gram.cache_dir=DIR` and the same model and data.
A store already there (complete or not) is reopened by the path that started
it, with its block size and implementation (its manifest): a half-made gram
job store is resumed by the gram job (a `LocalRunner` when no cluster is
given), a half-made in-process one in process. Two processes must not fill
the same store at once.

Paper: App. B (the Gram of the train and test samples together, computed once
per model).
"""

import json
import os
import pathlib
from typing import Optional, Sequence

from absl import logging
import keras
import numpy as np

import ntk_tf
from ntk_tf.distributed import cluster as cluster_lib
from ntk_tf.distributed import device_block
from ntk_tf.distributed import gram_job
from ntk_tf.distributed import cluster_runner
from ntk_tf.distributed import local_runner
from ntk_tf.experiments import pipeline
from ntk_tf.experiments import workdir as workdir_lib
from ntk_tf.ntk import auto
from ntk_tf.ntk import gram_store as gram_store_lib
from ntk_tf.ntk import implementation as implementation_lib
from ntk_tf.ntk.structured import keras_graph


def path(model: keras.Model, spec: pipeline.ModelSpec, x: np.ndarray, dtype: str,
         cache_dir: str) -> pathlib.Path:
  """The store folder of Theta_0 of `model` (built from `spec`) on `x [N, ...]` in `dtype`."""
  identity = {"model": spec.name, "activation": spec.activation, "kwargs": dict(spec.kwargs),
              "seed": spec.seed, "input_shape": list(x.shape[1:]), "dtype": dtype,
              "weights": gram_store_lib.model_fingerprint(model),
              "data": gram_store_lib.data_fingerprint(x)}
  return pathlib.Path(cache_dir) / f"{spec.name}-{workdir_lib.fingerprint(identity)}"


def device_implementation(model: keras.Model, implementation: str) -> str:
  """The gram job's implementation for `implementation` ("auto": the fewer-FLOP one).

  Raises:
    ValueError: an implementation the gram job has no device block for, named.
  """
  if implementation == implementation_lib.NtkImplementation.AUTO.value:
    if not keras_graph.is_functional(model):
      return implementation_lib.NtkImplementation.JACOBIAN.value
    return auto.choose_implementation(model, tuple(model.inputs[0].shape[1:]), 256).value
  if implementation not in device_block.IMPLEMENTATION_NAMES:
    raise ValueError(f"gram.implementation must be 'auto' or one of "
                     f"{list(device_block.IMPLEMENTATION_NAMES)} to run on a cluster. "
                     f"Received: implementation={implementation!r}")
  return implementation


def _made_by_gram_job(manifest: dict) -> bool:
  """Whether a store's manifest names the gram job's engine (`device_block.store_options`)."""
  options = manifest.get("options") or {}
  return (manifest["implementation"] in device_block.IMPLEMENTATION_NAMES
          and options == device_block.store_options(manifest["implementation"]))


def store(model: keras.Model, spec: pipeline.ModelSpec, x: np.ndarray,
          gram: pipeline.GramSpec, progress: bool = False) -> ntk_tf.GramStore:
  """The complete Theta_0 = J(x) J(x)^T `[N, N]` of `model` on `x`, from the shared cache.

  Computed (or resumed) where the module docstring says when missing.

  Args:
    model: the network at theta0, one logit.
    spec: its spec (part of the key).
    x: `[N, ...]` all samples (train then test).
    gram: block size, implementation, dtype, cache folder and cluster.
    progress: show blocks done and ETA.
  Returns:
    The complete store (`store.matrix`: `[N, N]` memory map in `gram.dtype`).
  Raises:
    ValueError: a cluster asked for (gram.cluster or TF_CONFIG) but this process
      not connected to it (`ntk_tf.distributed.cluster.connect`, which must run
      before the model is built).
  """
  folder = path(model, spec, x, gram.dtype, gram.cache_dir)
  block_size, implementation = gram.block_size, gram.implementation
  made = None
  if (folder / "manifest.json").is_file():
    made = json.loads((folder / "manifest.json").read_text())
    block_size, implementation = made["block_size"], made["implementation"]
  on_cluster = bool(gram.cluster) or "TF_CONFIG" in os.environ
  if (made is None and not on_cluster) or (made is not None and not _made_by_gram_job(made)):
    result = ntk_tf.GramStore(folder, model, x, block_size=block_size, dtype=gram.dtype,
                              implementation=implementation)
    logging.info("%s: Theta_0 on %d samples in process, %d/%d blocks cached (%s)", spec.name,
                 len(x), result.num_done, result.num_blocks, folder)
    return result.compute(progress=progress)

  implementation = device_implementation(model, implementation)
  with local_runner.LocalRunner(model, implementation, gram.dtype) as local:
    opened = gram_job.RunnerGramStore(folder, model, x, local, block_size=block_size,
                                      dtype=gram.dtype, implementation=implementation)
    logging.info("%s: Theta_0 on %d samples by the gram job, %d/%d blocks cached (%s)",
                 spec.name, len(x), opened.num_done, opened.num_blocks, folder)
    if opened.is_complete or not on_cluster:  # Without a cluster: resumed in this process.
      return opened.compute(progress=progress)
  resolved = cluster_lib.connected()
  if resolved is None:
    raise ValueError(
        f"gram.cluster={gram.cluster!r} (or TF_CONFIG) needs this process connected to its "
        f"cluster before any model is built: call ntk_tf.distributed.cluster.connect"
        f"({gram.cluster!r}) first (the experiment binaries do).")
  logging.info("%s: the missing blocks on a cluster of %d workers", spec.name,
               resolved.num_workers)
  with cluster_runner.ClusterRunner(model, implementation, gram.dtype, resolved.strategy,
                                    resolved.num_workers) as runner:
    return gram_job.compute_gram(folder, model, x, runner, block_size=block_size,
                                 dtype=gram.dtype, implementation=implementation,
                                 progress=progress)


def rows(model: keras.Model, spec: pipeline.ModelSpec, x: np.ndarray, indices: Sequence[int],
         gram: pipeline.GramSpec, progress: bool = False) -> np.ndarray:
  """Theta_0 on the samples x[indices], `[n, n]`: a slice of the shared store of all of x.

      Theta_0(x[indices], x[indices]) = Theta_0(x, x)[indices][:, indices]

  The store is looked up by the fingerprint of the full sample set x
  (`store`, computed there if absent), so e.g. the 50,000 train rows of the
  60,000-sample Theta_0 are read from it, not computed again.

  Args:
    model, spec, gram, progress: as for `store`.
    x: `[N, ...]` the full sample set of the store.
    indices: `[n]` distinct row indices into x, in the order wanted.
  Returns:
    `[n, n]` array in the store's dtype.
  """
  n = len(x)
  index = np.asarray(indices)
  if (index.ndim != 1 or index.size == 0 or not np.issubdtype(index.dtype, np.integer)
      or index.min() < 0 or index.max() >= n or np.unique(index).size != index.size):
    raise ValueError(f"rows must be distinct ints in [0, N={n}). Received: rows={indices!r}")
  full = store(model, spec, x, gram, progress=progress)
  return np.asarray(full.matrix[np.ix_(index, index)])  # [n, n]
