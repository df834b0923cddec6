"""Sharded alignment and Theta v on 2 logical CPU devices, against brute force and one process.

Independent computation: J `[N, P]` by one GradientTape per example on the
float64 twin (`ntk_reference.loop_jacobian`), alpha = y^T (J J^T) y / N^2 and
Theta v = J (J^T v) in NumPy (`sharded_reference`). The sharded results and
the single-process ones (`ntk_tf.alignment`, `ntk_tf.NtkOperator`) are sums
of the same terms in other orders, so they are compared within the bound of
`sharded_reference` (float64, 1e-12 of |J|^T|y| scales), not bytewise; with
one shard the pass is the single-process one and the bytes must match.
"""

from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tests import test_util  # pylint: disable=g-bad-import-order,unused-import
from tests import ntk_reference
from tests import sharded_reference
import ntk_tf
from ntk_tf import validation
from ntk_tf.distributed import local_runner
from ntk_tf.distributed import sharded_passes

_N = 21  # batches of 4: a partial last batch, and shards with padding
_BATCH = 4


def setUpModule():
  local_runner.local_devices(2)  # before TensorFlow initializes its devices


def _fixture(name: str, m: int = 3):
  model, twin = ntk_reference.model_and_twin(name, "gelu", seed=5)
  x = ntk_reference.inputs(_N, seed=1)
  jac = ntk_reference.loop_jacobian(twin, x)  # [N, P] float64, brute force
  _, eigvecs = np.linalg.eigh(jac @ jac.T)
  labels = np.concatenate([eigvecs[:, -1:], np.random.RandomState(2).randn(_N, m - 1)],
                          axis=1)  # [N, m]: the top eigenvector and Gaussian labels
  return model, x, jac, labels


class ShardRowsTest(absltest.TestCase):

  def test_shards_cover_the_batches(self):
    for n, batch, shards in ((21, 4, 2), (21, 4, 3), (8, 4, 5), (4000, 256, 2), (1, 3, 1)):
      rows = sharded_passes.shard_rows(n, batch, shards)
      self.assertEqual(rows % batch, 0)
      self.assertLessEqual(-(-n // rows), shards)  # at most S shards hold data
      self.assertGreaterEqual(rows * shards, n)  # the shards cover x
      self.assertLess((rows - batch) * shards, -(-n // batch) * batch)  # no whole batch to spare
    with self.assertRaisesRegex(ValueError, "num_shards=0"):
      sharded_passes.shard_rows(10, 2, 0)


class ShardedAlignmentTest(parameterized.TestCase):

  @parameterized.parameters("mlp", "lenet")
  def test_two_devices_match_brute_force_and_one_process(self, name):
    model, x, jac, labels = _fixture(name)
    expected = sharded_reference.alignment(jac, labels)  # [m], brute force
    scale = sharded_reference.alignment_scale(jac, labels)
    single = ntk_tf.alignment(model, x, labels, batch_size=_BATCH, dtype="float64")
    sharded_reference.assert_within(self, single, expected, scale, "one process vs brute force")
    with local_runner.LocalRunner(model, "jacobian", "float64",
                                  local_runner.local_devices(2)) as runner:
      for num_shards in (2, 3):  # 2: one shard per device; 3: round robin
        sharded = sharded_passes.sharded_alignment(runner, x, labels, batch_size=_BATCH,
                                                   num_shards=num_shards)
        self.assertEqual(sharded.shape, (3,))
        sharded_reference.assert_within(self, sharded, expected, scale, f"S={num_shards}")
        sharded_reference.assert_within(self, sharded, single, scale, f"S={num_shards}")
      alpha = sharded_passes.sharded_alignment(runner, x, labels[:, 0], batch_size=_BATCH)
      self.assertEqual(alpha.shape, ())
      sharded_reference.assert_within(self, alpha, expected[0], scale[0], "y [N]")
    with local_runner.LocalRunner(model, "jacobian", "float64") as runner:  # one device, S = 1
      one_shard = sharded_passes.sharded_alignment(runner, x, labels, batch_size=_BATCH)
    np.testing.assert_array_equal(one_shard, single)  # the same single chain of batches

  def test_jacobian_route_on_two_devices_matches_brute_force(self):
    model, x, jac, labels = _fixture("lenet")
    expected = sharded_reference.alignment(jac, labels)  # [m], brute force
    scale = sharded_reference.alignment_scale(jac, labels)
    with local_runner.LocalRunner(model, "jacobian", "float64",
                                  local_runner.local_devices(2)) as runner, \
        mock.patch.object(sharded_passes, "label_gradients_fn",
                          wraps=sharded_passes.label_gradients_fn) as spy:
      sharded = sharded_passes.sharded_alignment(runner, x, labels, batch_size=_BATCH,
                                                 route="jacobian")
    self.assertEqual({call.args[2] for call in spy.call_args_list}, {"jacobian"})
    sharded_reference.assert_within(self, sharded, expected, scale, "route jacobian")

  def test_label_chunks_are_bit_identical(self):
    model, x, jac, labels = _fixture("mlp", m=5)
    column_bytes = 4 * validation.parameter_count(model) * 8  # one column's 4 [1, P] arrays
    with local_runner.LocalRunner(model, "jacobian", "float64",
                                  local_runner.local_devices(2)) as runner:
      results = [sharded_passes.sharded_alignment(runner, x, labels, batch_size=_BATCH,
                                                  memory_budget_bytes=columns * column_bytes)
                 for columns in (1, 2, 5)]
    np.testing.assert_array_equal(results[0], results[2])
    np.testing.assert_array_equal(results[1], results[2])
    sharded_reference.assert_within(self, results[2], sharded_reference.alignment(jac, labels),
                                    sharded_reference.alignment_scale(jac, labels), "chunked")

  def test_bad_labels(self):
    model, x, _, _ = _fixture("mlp")
    with local_runner.LocalRunner(model, "jacobian", "float64") as runner:
      with self.assertRaisesRegex(ValueError, r"y.shape=\(5,\)"):
        sharded_passes.sharded_alignment(runner, x, np.ones(5))


class ShardedOperatorTest(parameterized.TestCase):

  @parameterized.parameters("mlp", "lenet")
  def test_two_devices_match_brute_force_and_one_process(self, name):
    model, x, jac, vectors = _fixture(name)
    expected = sharded_reference.product(jac, vectors)  # [N, k], brute force
    scale = sharded_reference.product_scale(jac, vectors)
    single = ntk_tf.NtkOperator(model, x, batch_size=_BATCH, dtype="float64").matmat(vectors)
    sharded_reference.assert_within(self, single, expected, scale, "one process vs brute force")
    with local_runner.LocalRunner(model, "jacobian", "float64",
                                  local_runner.local_devices(2)) as runner:
      operator = sharded_passes.ShardedNtkOperator(runner, x, batch_size=_BATCH)
      self.assertEqual(operator.shape, (_N, _N))
      sharded = operator.matmat(vectors)  # [N, k]
      sharded_reference.assert_within(self, sharded, expected, scale, "matmat vs brute force")
      sharded_reference.assert_within(self, sharded, single, scale, "matmat vs one process")
      column = operator.matvec(vectors[:, 1])  # [N]
      sharded_reference.assert_within(self, column, expected[:, 1], scale[:, 1], "matvec")
      # The runner serves another pass in between: the operator restarts it on its x.
      sharded_passes.sharded_alignment(runner, x[:8], vectors[:8], batch_size=_BATCH)
      np.testing.assert_array_equal(operator.matvec(vectors[:, 1]), column)
      with self.assertRaisesRegex(ValueError, r"shape=\(5,\)"):
        operator.matvec(np.ones(5))
      eigval = operator.as_linear_operator().matvec(vectors[:, 0]) @ vectors[:, 0]
      self.assertAlmostEqual(eigval / np.linalg.eigvalsh(jac @ jac.T)[-1], 1.0, delta=1e-10)


if __name__ == "__main__":
  absltest.main()
