"""The gram binary's job: a config in, the Gram of one model at one checkpoint in a workdir.

    <workdir>/gram.npy   Theta(x, x) [N, N], x = train samples then test samples
                         (test_size > 0: Theta(x_train, x_test) = gram[:N_train, N_train:])
    <workdir>/manifest.json, blocks.log   the GramStore's (resumable: rerun the same command)
    <workdir>/config.json, gram_info.json  the config, and sizes / devices / seconds
    with cache_dir: the store (gram.npy, manifest.json, blocks.log) is instead
    the experiments' shared Theta_0 store of this model and data in cache_dir
    (`experiments.theta0.path`), so `--config.gram.cache_dir=<cache_dir>` of an
    experiment on the same model and data reuses it (gram_info.json names it)

Runs in one process on `local_devices` devices, or (`cluster`) on a
ParameterServerStrategy cluster (`ntk_tf.distributed.cluster`). Every path
computes each block with the same `device_block.DeviceBlock`, so the bytes of
gram.npy do not depend on where it ran. See configs/gram.py for the variants.

Paper: App. B (the Grams of the paper's models on CIFAR-10 and MNIST).
"""

import contextlib
import dataclasses
import pathlib
import time
from typing import Any, Mapping, Optional

from absl import logging
import keras
import numpy as np

from ntk_tf import atomic
from ntk_tf import validation
from ntk_tf.distributed import cluster as cluster_lib
from ntk_tf.distributed import cluster_runner
from ntk_tf.distributed import device_block
from ntk_tf.distributed import gram_job
from ntk_tf.distributed import local_runner
from ntk_tf.experiments import fields
from ntk_tf.experiments import pipeline
from ntk_tf.experiments import theta0
from ntk_tf.experiments import workdir as workdir_lib

DTYPES = ("float32", "float64")


def _weights_file(value: Any, label: str) -> Optional[str]:
  if value is not None and not pathlib.Path(value).is_file():
    raise ValueError(f"{label} must be a weights file or None. Received: weights={value!r}")
  return value


def _store_folder(value: Any, label: str) -> Optional[str]:
  """config.cache_dir as an absolute folder, or None (the store is the workdir)."""
  if value is not None and not isinstance(value, str):
    raise ValueError(f"{label} must be a folder path or None. Received: cache_dir={value!r}")
  return str(pathlib.Path(value).expanduser().absolute()) if value else None


@dataclasses.dataclass(frozen=True, kw_only=True)
class GramSettings:
  """A gram config, validated (see configs/gram.py for each field)."""
  model: pipeline.ModelSpec = fields.block(pipeline.read_model)
  weights: Optional[str] = fields.setting(_weights_file)
  data: pipeline.DataSpec = fields.block(pipeline.DataSpec, datasets=("cifar10", "mnist"))
  block_size: int = fields.setting(validation.check_positive_int)
  dtype: str = fields.setting(validation.check_choice, choices=DTYPES)
  implementation: str = fields.setting(validation.check_choice,
                                       choices=device_block.IMPLEMENTATION_NAMES)
  local_devices: int = fields.setting(validation.check_positive_int)
  device_feature_cache_bytes: int = fields.setting(validation.check_non_negative_int)
  cluster_row_blocks: int = fields.setting(validation.check_positive_int)
  worker_threads: Optional[int] = fields.setting(fields.optional(validation.check_positive_int))
  commit_interval_s: float = fields.setting(fields.non_negative_number)  # 0: every block
  progress: bool = fields.setting(fields.flag)
  cache_dir: Optional[str] = fields.setting(_store_folder)
  config: Mapping[str, Any] = fields.block(atomic.jsonable)


def settings_from_config(config: Mapping[str, Any]) -> GramSettings:
  """Validates `config` (configs/gram.py) into GramSettings; raises ValueError naming a bad field."""
  return fields.read(GramSettings, config)


def build_model(settings: GramSettings, input_shape) -> keras.Model:
  """The model at its checkpoint: initialized by `model_seed`, then `weights` if given."""
  model = settings.model.build(input_shape)
  if settings.weights:
    model.load_weights(settings.weights)
  return model


@contextlib.contextmanager
def _start_over_hint(in_workdir: bool):
  """A store of another job in the workdir: its ConflictError also names --start_over."""
  try:
    yield
  except validation.ConflictError as err:
    if not in_workdir:
      raise
    raise validation.ConflictError(f"{err} (The gram binary: --start_over moves the earlier "
                                   "store to earlier.<n>/ in the workdir.)") from None


def run(settings: GramSettings, workdir: pathlib.Path, cluster: Optional[str] = None) -> dict:
  """Computes (or resumes) the Gram of `settings` into `workdir`; returns gram_info.

  Args:
    settings: validated settings (`settings_from_config`).
    workdir: output folder (created).
    cluster: "local:N", or None (TF_CONFIG when set, else one process on
      `settings.local_devices` devices).
  """
  start = time.monotonic()
  devices = (local_runner.local_devices(settings.local_devices)
             if settings.local_devices > 1 else None)
  resolved = cluster_lib.resolve(cluster, settings.worker_threads)
  try:
    dataset = settings.data.load()
    x_train, x_test = dataset.x_train, dataset.x_test
    model = build_model(settings, x_train.shape[1:])
    validation.check_finite_weights(model)
    workdir_lib.prepare(workdir, settings.config)  # config.json; an earlier one kept
    if resolved is not None:
      runner = cluster_runner.ClusterRunner(model, settings.implementation, settings.dtype,
                                            resolved.strategy, resolved.num_workers,
                                            row_blocks=settings.cluster_row_blocks)
      where = f"a cluster of {runner.num_workers} workers"
    else:
      runner = local_runner.LocalRunner(model, settings.implementation, settings.dtype, devices,
                                        feature_cache_bytes=settings.device_feature_cache_bytes)
      where = f"{len(runner.devices)} local device(s)"
      if devices:
        runner.warm_up(np.zeros((settings.block_size,) + x_train.shape[1:], x_train.dtype))
    logging.info("Gram of %s on %d + %d samples, block %d, %s, %s, on %s", settings.model.name,
                 len(x_train), len(x_test), settings.block_size, settings.implementation,
                 settings.dtype, where)
    store_dir = workdir
    if settings.cache_dir:  # The experiments' Theta_0 store of this model and data.
      store_dir = theta0.path(model, settings.model, dataset.all_x(), settings.dtype,
                              settings.cache_dir)
    with runner, _start_over_hint(store_dir == workdir):
      store = gram_job.compute_gram(store_dir, model, x_train, runner,
                                    x_test=x_test if len(x_test) else None,
                                    block_size=settings.block_size, dtype=settings.dtype,
                                    implementation=settings.implementation,
                                    commit_interval_s=settings.commit_interval_s,
                                    progress=settings.progress)
  finally:
    if resolved is not None and resolved.local is not None:
      resolved.local.close()
  info = {"n_train": len(x_train), "n_test": len(x_test), "n": store.n,
          "num_blocks": store.num_blocks, "where": where, "seconds": time.monotonic() - start,
          "matrix": str(store.matrix_path)}
  atomic.write_json(workdir / "gram_info.json", info)
  return info
