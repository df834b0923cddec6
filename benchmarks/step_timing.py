"""The wall time of one `ntk_tf.train` step, run as `train` runs its steps.

Shared by binaries/bench_train.py (network against linearization) and
benchmarks/bound.py (the step against its FLOP bound).
"""

import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

import ntk_tf
from ntk_tf import primal_cache as primal_cache_lib
from ntk_tf import train_step
from ntk_tf import training


def time_train_step(model: keras.Model, x: np.ndarray, y: np.ndarray, *,
                    recipe: ntk_tf.Recipe = ntk_tf.PAPER_SGD, steps: int = 20,
                    warmup: int = 3,
                    primal_cache: Optional[primal_cache_lib.PrimalCache] = None) -> float:
  """Mean wall seconds of one `ntk_tf.train` step of `model` on the batch (x `[B, ...]`, y `[B]` +-1).

  The steps run as `train` runs them: `steps` consecutive steps in one call of
  `train_step.make_train_loop` (here all on the same batch). The loop is traced
  and run first on at least `warmup` steps; it trains `model` in place. With
  `primal_cache` (of a Linearized `model` on x), the steps read it at indices 0..B-1.
  """
  dtype = tf.as_dtype(model.compute_dtype)
  warmup_calls = -(-max(1, warmup) // steps)  # ceil: each call runs `steps` steps
  optimizer = training.make_optimizer(recipe, steps * (warmup_calls + 1))
  loop = train_step.make_train_loop(model, optimizer, len(x), primal_cache=primal_cache)
  xs = tf.constant(np.concatenate([x] * steps), dtype)  # [steps * B, ...]
  ts = tf.constant(np.concatenate([(np.asarray(y) > 0).reshape(-1, 1)] * steps), dtype)  # (1 + y) / 2
  indices = () if primal_cache is None else (tf.constant(np.tile(np.arange(len(x)), steps),
                                                         tf.int32),)  # [steps * B]
  for _ in range(warmup_calls):
    loop(xs, ts, *indices).numpy()
  start = time.perf_counter()
  loop(xs, ts, *indices).numpy()
  return (time.perf_counter() - start) / steps
