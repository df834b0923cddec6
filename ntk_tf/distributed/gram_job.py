"""A model's Gram computed by a `Runner` into a `GramStore`: resumable, with progress and ETA.

    Theta(x, x) = J(x) J(x)^T   [N, N],   stored as `<path>/gram.npy`
    with x_test: x = concat(x_train, x_test), so Theta(x_train, x_test) is the
    block [:N_train, N_train:] of the stored matrix (App. B: the Gram of the
    train and test samples together)

Blocks are those of `gram.iter_blocks(N, N, B, symmetric=True)` (upper
triangle, mirrored). The caller's process is the only writer: it submits up to
`runner.slots` handles of up to `runner.row_blocks` blocks of one block row
each, takes their results in submission order, and
`GramStore`'s own loop writes each into the store's memory map and commits
(flush, then log lines with checksums) every `commit_interval_s`
(`ntk_tf.ntk.gram_store_format`). Workers
hold no state, so a killed writer loses only uncommitted blocks: rerunning the
same job reopens the store and submits only the missing ones.

Every block is computed whole by `device_block.DeviceBlock` (XLA engine), so
the matrix is the same bytes whatever runner, device count or worker count
computed it, on identical hardware and thread settings.

Paper: App. B (the Grams of 60,000 images, computed block by block).
"""

import collections
import os
from typing import Iterator, Optional, Tuple, Union

import keras
import numpy as np

from ntk_tf import precision
from ntk_tf import types
from ntk_tf.distributed import device_block
from ntk_tf.distributed import local_runner
from ntk_tf.distributed import runner as runner_lib
from ntk_tf.ntk import gram as gram_lib
from ntk_tf.ntk import gram_store as gram_store_lib
from ntk_tf.ntk import implementation as implementation_lib


class RunnerGramStore(gram_store_lib.GramStore):
  """A `GramStore` whose missing blocks are computed by a `Runner` (see the module docstring).

  Its identity holds the implementation with `matmul_engine="xla"`
  (`device_block.store_options`): a store made by `GramStore.compute` with
  another engine is refused, not mixed.
  """

  def __init__(self, path: Union[str, os.PathLike], model: keras.Model, x: types.Inputs,
               runner: runner_lib.Runner, *, block_size: int, dtype: types.DType,
               implementation: Union[str, implementation_lib.NtkImplementation],
               commit_interval_s: float = 5.0, lock: str = "wait", overwrite: bool = False):
    self.runner = runner
    super().__init__(path, model, x, block_size=block_size, dtype=dtype,
                     implementation=implementation, commit_interval_s=commit_interval_s,
                     lock=lock, overwrite=overwrite,
                     **device_block.store_options(implementation))

  def _missing_blocks(self) -> Iterator[Tuple[int, np.ndarray]]:
    """The missing blocks from the runner, in submission order.

    Consecutive missing blocks of one block row (`iter_blocks` is row-major, each
    row's diagonal block first) go to the runner together, up to
    `runner.row_blocks` of them per handle (`Runner.submit_row`), with
    `runner.slots` handles in flight. `GramStore._compute_missing` writes and
    commits them (flush the matrix, then append the blocks' log lines); only
    the source of the blocks differs.
    """
    todo = collections.deque(index for index in range(len(self._blocks))
                             if index not in self._done)
    in_flight = collections.deque()  # (indices, handle), oldest first.
    self.runner.start(self._x, self.block_size, key=self._identity["data_fingerprint"])
    while todo or in_flight:
      while todo and len(in_flight) < self.runner.slots:
        row = [todo.popleft()]
        i0 = self._blocks[row[0]][0]
        while (todo and len(row) < self.runner.row_blocks
               and self._blocks[todo[0]][0] == i0 and self._blocks[todo[0]][2] != i0):
          row.append(todo.popleft())
        in_flight.append((row, self.runner.submit_row(i0, [self._blocks[k][2] for k in row])))
      row, handle = in_flight.popleft()
      for index, padded in zip(row, self.runner.row_results(handle)):
        i0, i1, j0, j1 = block = self._blocks[index]
        tile = padded[:i1 - i0, :j1 - j0]  # the padded [B, B], cropped
        gram_lib.check_finite_block(tile, block)
        yield index, tile


def compute_gram(path: Union[str, os.PathLike], model: keras.Model, x: types.Inputs,
                 runner: Optional[runner_lib.Runner] = None, *,
                 x_test: Optional[types.Inputs] = None, block_size: int = 256,
                 dtype: types.DType = "float32",
                 implementation: Union[str, implementation_lib.NtkImplementation] = "structured",
                 commit_interval_s: float = 5.0, overwrite: bool = False,
                 progress: bool = True) -> RunnerGramStore:
  """Computes the Gram Theta(x, x) of `model` into the store at `path`; returns it, complete.

      Theta(x, x) = J(x) J(x)^T  [N, N]  (x = concat(x, x_test) when x_test is given)

  A rerun of the same job resumes the store (see the module docstring); a store
  of another job (model, weights, data, block size, dtype, implementation)
  raises ValueError naming the field, unless `overwrite`.

  Args:
    path: the store directory (its matrix is `<path>/gram.npy`).
    model: Keras model with one output logit (inference mode).
    x: `[N, ...]` inputs (the train samples when `x_test` is given).
    runner: where blocks run (None: a `LocalRunner` on the default device).
    x_test: optional `[N_test, ...]` inputs appended to x: the stored matrix
      then holds Theta(x, x_test) as its block `[:N, N:]`.
    block_size: B, examples per block (> 0).
    dtype: "float32" or "float64".
    implementation: "structured" or "jacobian" (`device_block.IMPLEMENTATION_NAMES`).
    commit_interval_s: seconds between commits (>= 0).
    overwrite: empty a store made for another job instead of refusing it.
    progress: show blocks done, rate and ETA.

  Returns:
    The complete `RunnerGramStore` (`store.matrix`: `[N (+ N_test), ...]` memory map).

  Paper: App. B.
  """
  x = np.asarray(x)
  if x_test is not None:
    x = np.concatenate([x, np.asarray(x_test, x.dtype)])  # [N + N_test, ...]
  dtype = precision.canonical_dtype(dtype)
  own_runner = runner is None
  if own_runner:
    runner = local_runner.LocalRunner(model, implementation, dtype)
  try:
    store = RunnerGramStore(path, model, x, runner, block_size=block_size, dtype=dtype,
                            implementation=implementation,
                            commit_interval_s=commit_interval_s, overwrite=overwrite)
    return store.compute(progress=progress)
  finally:
    if own_runner:
      runner.close()
