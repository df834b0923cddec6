"""Tests for ntk_tf.ntk_gram and the XLA block op against brute-force J J^T."""

from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from tests import test_util  # pylint: disable=unused-import
from tests import ntk_reference
import ntk_tf
from ntk_tf.ntk import gram as gram_lib
from ntk_tf.ntk import implementation as implementation_lib
from ntk_tf.ntk import structured
from ops import gram_block


class GramValueTest(parameterized.TestCase):

  @parameterized.product(name=list(ntk_reference.SMALL_MODELS), activation=["relu", "gelu"])
  def test_float64_matches_loop(self, name, activation):
    model, twin = ntk_reference.model_and_twin(name, activation, seed=1)
    x = ntk_reference.inputs(7)
    jac = ntk_reference.loop_jacobian(twin, x)  # [7, P]
    jac1, jac2 = jac, jac[:5]
    # 7 and 5 are not multiples of block_size=3: partial last blocks.
    with self.subTest("symmetric"):
      theta = ntk_tf.ntk_gram(model, x, block_size=3, dtype="float64", progress=False)
      self.assertEqual(theta.dtype, np.float64)
      self.assertLessEqual(ntk_reference.rel_error(theta, jac1 @ jac1.T), 1e-10)
    with self.subTest("x2 given"):
      theta = ntk_tf.ntk_gram(model, x, x[:5], block_size=3, dtype="float64", progress=False)
      self.assertEqual(theta.shape, (7, 5))
      self.assertLessEqual(ntk_reference.rel_error(theta, jac1 @ jac2.T), 1e-10)

  def test_float32_matches_loop(self):
    model, twin = ntk_reference.model_and_twin("lenet", "relu", seed=1)
    x = ntk_reference.inputs(6, seed=2)
    jac = ntk_reference.loop_jacobian(twin, x)
    theta = ntk_tf.ntk_gram(model, x, block_size=4, progress=False)
    self.assertEqual(theta.dtype, np.float32)
    self.assertLessEqual(ntk_reference.rel_error(theta, jac @ jac.T), 1e-5)

  def test_symmetric_and_psd(self):
    model, _ = ntk_reference.model_and_twin("resnet18", "gelu", seed=1)
    x = ntk_reference.inputs(9, seed=3)
    theta = ntk_tf.ntk_gram(model, x, block_size=4, dtype="float64", progress=False)
    np.testing.assert_array_equal(theta, theta.T)  # Mirrored blocks: exactly symmetric.
    eigvals = np.linalg.eigvalsh(theta)
    self.assertGreaterEqual(eigvals.min(), -1e-12 * eigvals.max())

  def test_block_size_does_not_change_result(self):
    model, _ = ntk_reference.model_and_twin("mlp", "relu", seed=1)
    x = ntk_reference.inputs(10)
    whole = ntk_tf.ntk_gram(model, x, block_size=10, dtype="float64", progress=False)
    for block_size in (1, 3, 16):
      np.testing.assert_allclose(
          ntk_tf.ntk_gram(model, x, block_size=block_size, dtype="float64", progress=False),
          whole, rtol=1e-12)


class PrecisionRuleTest(parameterized.TestCase):

  @parameterized.parameters("jacobian", "structured", "ntk_vector_products", "auto")
  def test_float64_model_asked_for_float32_computes_in_float32(self, implementation):
    # The rule of ntk_gram: every path computes in `dtype` on the model cast to it, so a
    # float64 model asked for float32 gives the Gram of its float32 copy, bit for bit.
    model, twin = ntk_reference.model_and_twin("mlp", "relu", seed=1)  # twin: float64 weights.
    x = ntk_reference.inputs(5)
    gram = lambda m: ntk_tf.ntk_gram(m, x, block_size=2, implementation=implementation,
                                     dtype="float32", progress=False)
    theta_twin, theta_float32 = gram(twin), gram(model)
    self.assertEqual(theta_twin.dtype, np.float32)
    np.testing.assert_array_equal(theta_twin, theta_float32)
    jac = ntk_reference.loop_jacobian(twin, x)
    self.assertLessEqual(ntk_reference.rel_error(theta_twin, jac @ jac.T), 1e-5)


class DispatchTest(absltest.TestCase):

  def test_every_member_has_a_make_block_fn_and_options_are_checked_by_name(self):
    model = ntk_tf.models.get("mlp", input_shape=ntk_reference.SHAPE)
    x = ntk_reference.inputs(3)
    for member in ntk_tf.NtkImplementation:
      self.assertIsNotNone(gram_lib.make_block_fn(model, member, "float32", 2))
    self.assertEqual(implementation_lib.IMPLEMENTATION_NAMES,
                     ("jacobian", "structured", "ntk_vector_products", "auto"))
    with self.assertRaisesRegex(ValueError, "Received: matmul_engine='numpy'"):
      ntk_tf.ntk_gram(model, x, implementation="ntk_vector_products", matmul_engine="numpy")
    with self.assertRaisesRegex(ValueError, "Received: tile=3"):
      ntk_tf.ntk_gram(model, x, implementation="structured", tile=3)
    with self.assertRaisesRegex(ValueError, "Received: choices='structured'"):
      ntk_tf.ntk_gram(model, x, implementation="jacobian", choices="structured")

  def test_options_reach_the_jacobian_path(self):
    model, twin = ntk_reference.model_and_twin("lenet", "relu", seed=1)
    x = ntk_reference.inputs(5)
    jac = ntk_reference.loop_jacobian(twin, x)
    for options in (dict(matmul_engine="numpy"), dict(accumulate_dtype="float64"),
                    dict(allow_tf32=True)):
      theta = ntk_tf.ntk_gram(model, x, block_size=2, progress=False, **options)
      self.assertEqual(theta.dtype, np.float32)
      self.assertLessEqual(ntk_reference.rel_error(theta, jac @ jac.T), 1e-5, msg=options)


class BlockOpTest(absltest.TestCase):

  def test_compiled_equals_eager(self):
    rng = np.random.RandomState(0)
    jac_a = tf.constant(rng.randn(6, 50))
    jac_b = tf.constant(rng.randn(6, 50))
    compiled = gram_block.gram_block(jac_a, jac_b)
    eager = gram_block.gram_block.python_function(jac_a, jac_b)  # Plain TF, no XLA.
    np.testing.assert_allclose(compiled, eager, rtol=1e-13)
    np.testing.assert_allclose(compiled, jac_a.numpy() @ jac_b.numpy().T, rtol=1e-13)

  def test_same_shape_does_not_retrace(self):
    rng = np.random.RandomState(1)
    shape = (7, 33)  # A shape no other test uses.
    gram_block.gram_block(tf.constant(rng.randn(*shape)), tf.constant(rng.randn(*shape)))
    count = gram_block.gram_block.experimental_get_tracing_count()
    gram_block.gram_block(tf.constant(rng.randn(*shape)), tf.constant(rng.randn(*shape)))
    self.assertEqual(gram_block.gram_block.experimental_get_tracing_count(), count)

  def test_partial_blocks_do_not_retrace(self):
    # N=11, block_size=4: last block has 3 rows; padding keeps one traced shape per dtype.
    model = ntk_tf.models.get("mlp", input_shape=(2, 2, 1), seed=5)
    x = np.random.RandomState(2).randn(11, 2, 2, 1).astype(np.float32)
    ntk_tf.ntk_gram(model, x[:4], block_size=4, progress=False)
    count = gram_block.gram_block.experimental_get_tracing_count()
    ntk_tf.ntk_gram(model, x, block_size=4, progress=False)
    self.assertEqual(gram_block.gram_block.experimental_get_tracing_count(), count)


class BlocksTest(parameterized.TestCase):

  @parameterized.product(n1=[1, 5, 8], n2=[3, 8], block_size=[1, 3, 8, 20])
  def test_blocks_cover_matrix_once(self, n1, n2, block_size):
    covered = np.zeros((n1, n2), int)
    for i0, i1, j0, j1 in gram_lib.iter_blocks(n1, n2, block_size, symmetric=False):
      covered[i0:i1, j0:j1] += 1
    np.testing.assert_array_equal(covered, 1)

  @parameterized.product(n=[1, 5, 8], block_size=[1, 3, 8, 20])
  def test_symmetric_blocks_cover_upper_triangle(self, n, block_size):
    covered = np.zeros((n, n), int)
    for i0, i1, j0, j1 in gram_lib.iter_blocks(n, n, block_size, symmetric=True):
      covered[i0:i1, j0:j1] += 1
      if i0 != j0:
        covered[j0:j1, i0:i1] += 1
    np.testing.assert_array_equal(covered, 1)


def _lru_misses(blocks, order, capacity: int, symmetric: bool) -> int:
  """Feature computations of blocks visited in `order` with an LRU cache of `capacity` blocks.

  Block (i0, j0) asks for the features of row block i0 ("a", i0), then (diagonal
  blocks of a symmetric Gram excepted) of column block j0, as `StructuredNtk` does.
  """
  cache, misses = [], 0
  for k in order:
    i0, _, j0, _ = blocks[k]
    keys = [("a", i0)] if symmetric and i0 == j0 else [("a", i0), ("a" if symmetric else "b", j0)]
    for key in keys:
      if key in cache:
        cache.remove(key)
      else:
        misses += 1
      cache.append(key)
      del cache[:-capacity]
  return misses


class SweepTest(parameterized.TestCase):

  @parameterized.product(n=[1, 7, 40], capacity=[0, 2, 3, 5, 12, 64], symmetric=[True, False])
  def test_order_is_a_permutation_with_fewer_feature_computations(self, n, capacity, symmetric):
    blocks = gram_lib.iter_blocks(n, n, 1, symmetric=symmetric)
    order = gram_lib.sweep_order(blocks, 1, capacity)
    self.assertCountEqual(order, range(len(blocks)))
    row_major = list(range(len(blocks)))
    if capacity < 3:
      self.assertEqual(order, row_major)
      return
    misses = _lru_misses(blocks, order, capacity, symmetric)
    self.assertLessEqual(misses, _lru_misses(blocks, row_major, capacity, symmetric))
    # Each panel of h rows computes its rows once and each of its column blocks once.
    h = capacity - 2
    panels = range(0, n, h)
    if symmetric:  # columns p..n-1 of a panel starting at row p
      bound = sum(min(h, n - p) + (n - p) for p in panels)
    else:
      bound = n + n * len(panels)
    self.assertLessEqual(misses, bound)
    if n == 40 and capacity == 12:  # a 40 x 40 triangle, a cache of 12 blocks
      self.assertLess(misses, 0.4 * _lru_misses(blocks, row_major, capacity, symmetric))

  def test_ntk_gram_computes_fewer_features_with_the_same_numbers(self):
    model, _ = ntk_reference.model_and_twin("lenet", "relu", seed=1)
    x = ntk_reference.inputs(40, seed=4)  # 10 row blocks of 4
    probe = structured.make_block_fn(model, "float64")
    probe(x[:4])
    block_bytes = probe.cache.size_bytes  # one block's features
    blocks = gram_lib.iter_blocks(40, 40, 4, symmetric=True)
    results = {}
    for cache_blocks in (20, 4):  # all 10 row blocks fit; then panels of 2 row blocks
      fn = structured.make_block_fn(
          model, "float64", feature_cache_bytes=cache_blocks * block_bytes + block_bytes // 2)
      calls = []  # one per feature computation (a cache miss)
      original = fn.features.traced_fn
      fn.features.traced_fn = lambda x_pad, original=original: calls.append(1) or original(x_pad)
      with mock.patch.object(gram_lib, "_reusable_block_fn", return_value=fn):
        results[cache_blocks] = (gram_lib.ntk_gram(model, x, block_size=4, dtype="float64",
                                                   implementation="structured", progress=False),
                                 len(calls))
    np.testing.assert_array_equal(results[4][0], results[20][0])
    self.assertEqual(results[20][1], 10)  # each row block's features once
    expected = _lru_misses(blocks, gram_lib.sweep_order(blocks, 4, 4), 4, True)
    self.assertEqual(results[4][1], expected)
    self.assertLess(expected, _lru_misses(blocks, range(len(blocks)), 4, True))


  def test_each_row_block_is_hashed_once_per_call(self):
    # 10 row blocks, 55 blocks of the triangle: without the per-call memo each of
    # the 100 block-features lookups hashes its inputs.
    model, twin = ntk_reference.model_and_twin("mlp", "relu", seed=2)
    x = ntk_reference.inputs(40, seed=5)
    fn = structured.make_block_fn(model, "float64")
    hashed = []
    real_key = structured.features.FeatureCache.key
    with mock.patch.object(gram_lib, "_reusable_block_fn", return_value=fn), \
         mock.patch.object(structured.features.FeatureCache, "key",
                           side_effect=lambda a: hashed.append(a.shape) or real_key(a)):
      theta = gram_lib.ntk_gram(model, x, block_size=4, dtype="float64",
                                implementation="structured", progress=False)
      self.assertLen(hashed, 10)
      x[:4] += 1.0  # a new call hashes afresh: changed inputs give their own Gram
      changed = gram_lib.ntk_gram(model, x, block_size=4, dtype="float64",
                                  implementation="structured", progress=False)
    self.assertLen(hashed, 20)
    np.testing.assert_allclose(changed, ntk_reference.brute_force_gram(twin, x), rtol=1e-10,
                               atol=1e-12)
    self.assertGreater(np.abs(changed - theta).max(), 1e-3)

class BadInputTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.model = ntk_tf.models.get("mlp", input_shape=ntk_reference.SHAPE)

  @parameterized.parameters(0, -3)
  def test_block_size(self, block_size):
    with self.assertRaisesRegex(ValueError, f"block_size={block_size}"):
      ntk_tf.ntk_gram(self.model, ntk_reference.inputs(3), block_size=block_size)

  def test_wrong_shape_x2(self):
    with self.assertRaisesRegex(ValueError, r"x2.shape=\(2, 4, 4, 3\)"):
      ntk_tf.ntk_gram(self.model, ntk_reference.inputs(3), np.zeros((2, 4, 4, 3), np.float32))

  def test_nan_x1(self):
    x = ntk_reference.inputs(3)
    x[0, 1, 1, 1] = np.inf
    with self.assertRaisesRegex(ValueError, "x1 must be finite"):
      ntk_tf.ntk_gram(self.model, x)

  def test_unknown_implementation(self):
    with self.assertRaisesRegex(ValueError, "implementation='fast'"):
      ntk_tf.ntk_gram(self.model, ntk_reference.inputs(3), implementation="fast")


if __name__ == "__main__":
  absltest.main()
