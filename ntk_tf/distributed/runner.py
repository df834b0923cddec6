"""The runner protocol: where Gram blocks and row passes run, and what they are given.

    start(x [N, ...], B);  submit(i0, j0) -> handle;  result(handle) -> Theta [B, B]
    submit_row(i0, [j0, ...]) -> handle;  row_results(handle) -> [Theta [B, B], ...]

A `Runner` is given the inputs once (`start`: zero-padded to a multiple of B
rows) and then row offsets: block (i0, j0) is the `[B, B]` block of
`device_block.DeviceBlock` on x[i0:i0+B] and x[j0:j0+B] (i0 == j0: the
diagonal block Theta(x_a, x_a), symmetrized). Blocks are assigned, never
split: every block is computed whole by the same traced function on one
device, so the bytes of a block do not depend on which device or worker
computed it (on identical hardware and thread settings). `slots` is how many
blocks the caller keeps in flight.

Two runners implement it:

  local_runner.LocalRunner      one process, D local devices, blocks round robin.
  cluster_runner.ClusterRunner  a parameter-server cluster, blocks as closures
                                scheduled on free workers.

Row passes (`distributed.sharded_passes`) use the same inputs and places:

    fns = replicate(make);  submit_rows(fns, i0, *args) -> handle;  result(handle)

`replicate(make)` builds `make(model)` (a pure-TF function of `x_rows [R, ...]`
and tensors, on the runner's placed model) once per place it runs (each
local device; one function for the cluster); `submit_rows` runs it on the
rows x[i0:i0+B] of the inputs given to `start` (B = start's block_size): on
the next device round robin, or as a closure on some worker, which reads a
resident x there and is re-run elsewhere if its worker is lost.
"""

from typing import Any, Callable, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from ntk_tf import precision


def place_model(model: keras.Model, strategy: tf.distribute.Strategy) -> keras.Model:
  """A copy of `model` whose variables `strategy` creates (mirrored, or on parameter servers).

  Same architecture (`get_config`/`from_config`) and the same weights, bit for bit,
  rebuilt under the global policy of the weights' dtype, so that the layers made
  without one in the config (the model, its inputs) compute in it too and
  `precision.cast_model` of the copy is the copy itself.
  """
  with precision.global_policy(precision.model_dtype(model)), strategy.scope():
    placed = model.__class__.from_config(model.get_config())
    placed.set_weights(model.get_weights())
  return placed


def block_tensor(x: np.ndarray, dtype: str) -> tf.Tensor:
  """A padded block `[B, ...]` as a tensor of the block's dtype (as the reference casts it)."""
  return tf.constant(np.ascontiguousarray(x, dtype=dtype))


class Runner:
  """Runs blocks; subclasses say where. `slots`: blocks the caller keeps in flight;
  `places`: devices or workers that run them at once."""

  slots: int = 1
  places: int = 1
  row_blocks: int = 1  # blocks of one block row a `submit_row` handle may hold
  block_size: Optional[int] = None  # B of the last `start`
  _start_key: Optional[str] = None  # the last start's key, and the model's weights then
  _start_weights: Optional[List[np.ndarray]] = None  # (read only when a key is given)

  def start(self, x: np.ndarray, block_size: int, key: Optional[str] = None) -> None:
    """Takes the inputs `x [N, ...]` of the blocks to come, zero-padded to a multiple of B.

    `key`: a digest of x's shape, dtype and bytes (`gram_store.data_fingerprint`),
    or None. A runner started again with the key and block size of its last
    start, and its model's weights unchanged since, may keep what it derived
    from x (features, inputs resident on workers): `_same_inputs`.
    """
    padded_rows = -(-x.shape[0] // block_size) * block_size  # ceil(N / B) * B
    weights = None if key is None else self.model.get_weights()
    last = self._start_weights
    self._same_inputs = (key is not None and key == self._start_key
                         and block_size == self.block_size
                         and last is not None and len(last) == len(weights)
                         and all(np.array_equal(a, b) for a, b in zip(weights, last)))
    self._start_key, self._start_weights = key, weights
    self.block_size = block_size
    self.x = np.concatenate([x, np.zeros((padded_rows - x.shape[0],) + x.shape[1:], x.dtype)])

  def rows(self, i0: int) -> np.ndarray:
    """The padded example block x[i0:i0+B] `[B, ...]`."""
    return self.x[i0:i0 + self.block_size]

  def submit(self, i0: int, j0: int) -> Any:
    """Starts block (i0, j0) (i0 == j0: a diagonal block); returns a handle for `result`."""
    raise NotImplementedError

  def result(self, handle: Any) -> np.ndarray:
    raise NotImplementedError

  def submit_row(self, i0: int, j0s: Sequence[int]) -> Any:
    """Starts the blocks (i0, j0) of one block row, j0 in `j0s` (at most `row_blocks`;
    only the first may be the diagonal, j0 == i0); a handle for `row_results`.

    The default submits each block; a runner that runs them as one unit overrides it.
    """
    return [self.submit(i0, j0) for j0 in checked_row(i0, j0s, self.row_blocks)]

  def row_results(self, handle: Any) -> List[np.ndarray]:
    """The blocks `[B, B]` of a `submit_row` handle, in its j0 order; waits."""
    return [self.result(block) for block in handle]

  def replicate(self, make: Callable[[keras.Model], Callable]) -> Any:
    """`make(model)` on the runner's placed model, as one `tf.function` per place it runs.

    `make(model)` returns f(x_rows [R, ...], *tensors) -> tensor, pure TF
    (graph-safe); it is called once per place so each has its own traces.
    """
    raise NotImplementedError

  def submit_rows(self, functions: Any, i0: int, *args: np.ndarray) -> Any:
    """Starts f(x[i0:i0+B], *args) (f from `replicate`, B = start's block_size); a handle."""
    raise NotImplementedError

  def close(self) -> None:
    """Releases threads or connections (the default holds none)."""

  def __enter__(self) -> "Runner":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def checked_row(i0: int, j0s: Sequence[int], row_blocks: int) -> List[int]:
  """`j0s` as ints, checked: 1 to `row_blocks` of them, the diagonal (i0) first if at all."""
  j0s = [int(j0) for j0 in j0s]
  if not 1 <= len(j0s) <= row_blocks:
    raise ValueError(f"A row holds 1 to row_blocks={row_blocks} blocks. Received: j0s={j0s}")
  if i0 in j0s[1:]:
    raise ValueError(f"Only a row's first block may be its diagonal block (i0={i0}). "
                     f"Received: j0s={j0s}")
  return j0s
