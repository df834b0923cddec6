"""Tests for ntk_gram's default block size and its reuse of BlockFns between calls.

Values against the float64 brute-force J J^T of `tests.ntk_reference`; the
chosen block size against a linear scan of `peak_memory_bytes`.
"""

from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tests import test_util  # pylint: disable=unused-import
from tests import ntk_reference
import ntk_tf
from ntk_tf.ntk import block_size as block_size_lib
from ntk_tf.ntk import gram as gram_lib


class DefaultBlockSizeTest(parameterized.TestCase):

  @parameterized.product(name=["mlp", "lenet"],
                         implementation=["auto", "structured", "jacobian"])
  def test_default_block_size_matches_reference(self, name, implementation):
    model, twin = ntk_reference.model_and_twin(name, "relu", seed=3)
    x = ntk_reference.inputs(9)
    expected = ntk_reference.brute_force_gram(twin, x)  # [9, 9] float64
    theta = ntk_tf.ntk_gram(model, x, implementation=implementation, progress=False)
    self.assertLess(ntk_reference.rel_error(theta, expected), 1e-5)
    theta64 = ntk_tf.ntk_gram(model, x, implementation=implementation, dtype="float64",
                              progress=False)
    self.assertLess(ntk_reference.rel_error(theta64, expected), 1e-12)

  @parameterized.parameters("auto", "structured", "jacobian", "ntk_vector_products")
  def test_largest_block_size_is_largest_that_fits(self, implementation):
    model, _ = ntk_reference.model_and_twin("lenet", "relu", seed=0)
    peak = lambda b: block_size_lib.peak_memory_bytes(model, b, implementation)
    budget = (peak(7) + peak(8)) // 2
    scan = max(b for b in range(1, 40) if peak(b) <= budget)  # Linear scan.
    self.assertEqual(block_size_lib.largest_block_size(model, implementation, "float32", 40,
                                                       budget), scan)
    self.assertEqual(block_size_lib.largest_block_size(model, implementation, "float32", 5,
                                                       budget), min(5, scan))

  @parameterized.parameters((9, 4, None), (8, 4, None), (10, 3, None), (3000, 3000, None),
                            (3001, 3000, None), (8000, 3000, None), (23, 100, 7), (30, 100, 8))
  def test_default_block_size_splits_n_evenly(self, n, cap, budget_block):
    """B = ceil(n / r) for the fewest r row blocks whose size fits the budget and the cap.

    Found by scanning r upward with peak_memory_bytes directly, not through
    largest_block_size; budget_block None means no budget limit.
    """
    model, _ = ntk_reference.model_and_twin("lenet", "relu", seed=0)
    peak = lambda b: block_size_lib.peak_memory_bytes(model, b, "auto")
    budget = 1 << 62 if budget_block is None else (peak(budget_block) + peak(budget_block + 1)) // 2
    rows = next(r for r in range(1, n + 1)
                if -(-n // r) <= cap and peak(-(-n // r)) <= budget)  # Linear scan.
    with mock.patch.object(block_size_lib, "DEFAULT_MAX_BLOCK", cap):
      block = block_size_lib.default_block_size(model, "auto", "float32", n, budget)
    self.assertEqual(block, -(-n // rows))
    self.assertEqual(-(-n // block), rows)  # The blocks are as few as the limits allow ...
    self.assertGreaterEqual(n - (rows - 1) * block, block - rows + 1)  # ... and even.

  def test_default_blocks_give_the_reference_gram(self):
    model, twin = ntk_reference.model_and_twin("mlp", "relu", seed=7)
    x = ntk_reference.inputs(11)
    with mock.patch.object(block_size_lib, "DEFAULT_MAX_BLOCK", 4):
      self.assertEqual(gram_lib.prepare(model, x, None, None, "float32", implementation="auto",
                                        cap_block_size=True)[2], 4)  # 11 -> 4, 4, 3.
      theta = ntk_tf.ntk_gram(model, x, dtype="float64", progress=False)
    self.assertLess(ntk_reference.rel_error(theta, ntk_reference.brute_force_gram(twin, x)),
                    1e-12)

  def test_default_block_size_rejects_bad_n(self):
    model, _ = ntk_reference.model_and_twin("mlp", "relu", seed=0)
    with self.assertRaisesRegex(ValueError, "n=0"):
      block_size_lib.default_block_size(model, "auto", "float32", 0)

  def test_default_block_is_the_whole_gram_when_it_fits(self):
    model, _ = ntk_reference.model_and_twin("mlp", "relu", seed=0)
    x = ntk_reference.inputs(12)
    _, _, block, _ = gram_lib.prepare(model, x, None, None, "float32",
                                      implementation="auto", cap_block_size=True)
    self.assertEqual(block, 12)
    _, _, block, _ = gram_lib.prepare(model, x, None, None, "float32",
                                      implementation="auto", cap_block_size=True,
                                      memory_budget_bytes=block_size_lib.peak_memory_bytes(
                                          model, 5, "auto"))
    self.assertEqual(block, 4)  # 5 fits; 12 rows need 3 blocks of <= 5, split evenly: 4, 4, 4.


class BlockFnReuseTest(absltest.TestCase):

  def test_changed_weights_reach_a_reused_block_fn(self):
    model, _ = ntk_reference.model_and_twin("mlp", "relu", seed=4)
    x = ntk_reference.inputs(6)
    gram_lib.clear_block_fn_cache()
    ntk_tf.ntk_gram(model, x, implementation="auto", progress=False)
    model.set_weights([1.5 * w for w in model.get_weights()])  # Same model, new weights.
    twin = ntk_reference.float64_twin("mlp", model, input_shape=ntk_reference.SHAPE,
                                      activation="relu", seed=4)
    theta = ntk_tf.ntk_gram(model, x, implementation="auto", progress=False)
    self.assertLess(ntk_reference.rel_error(theta, ntk_reference.brute_force_gram(twin, x)),
                    1e-5)

  def test_block_fn_is_reused_and_cache_emptied(self):
    model, _ = ntk_reference.model_and_twin("lenet", "relu", seed=5)
    x = ntk_reference.inputs(5)
    gram_lib.clear_block_fn_cache()
    ntk_tf.ntk_gram(model, x, implementation="structured", progress=False)
    kept = list(gram_lib._reused.values())  # pylint: disable=protected-access
    self.assertLen(kept, 1)
    self.assertEqual(len(kept[0].cache), 0)  # No features held past the call.
    ntk_tf.ntk_gram(model, x, implementation="structured", progress=False)
    self.assertIs(list(gram_lib._reused.values())[0], kept[0])  # pylint: disable=protected-access
    gram_lib.clear_block_fn_cache()
    self.assertEmpty(gram_lib._reused)  # pylint: disable=protected-access

  def test_float64_gram_of_float32_model_is_not_kept(self):
    model, _ = ntk_reference.model_and_twin("mlp", "relu", seed=6)
    gram_lib.clear_block_fn_cache()
    ntk_tf.ntk_gram(model, ntk_reference.inputs(4), implementation="structured",
                    dtype="float64", progress=False)
    self.assertEmpty(gram_lib._reused)  # pylint: disable=protected-access  (a cast copy)


if __name__ == "__main__":
  absltest.main()
