"""Sharded alignment and Theta v on a localhost cluster (2 workers + 1 ps), with a worker killed.

The cluster (`LocalCluster`, one intra-op thread per worker, each pinned to its
own core) runs the shard closures; x is resident on the workers. Checked against the brute force of
`sharded_reference` (per-example GradientTape gradients, float64) and the
single-process `ntk_tf.alignment` / `ntk_tf.NtkOperator` within its bound
(the sum over examples is split across shards: not bytewise). A worker
SIGKILLed mid-pass (LocalCluster restarts it, as a cluster manager would)
costs its closures in flight, which re-run on a live worker: the result is
the same bytes as an undisturbed cluster pass (same shards, same code, same
thread settings on every worker).
"""

import time
from unittest import mock

from absl.testing import absltest
import numpy as np
import tensorflow as tf

from tests import test_util  # pylint: disable=g-bad-import-order,unused-import
from tests import ntk_reference
from tests import sharded_reference
import ntk_tf
from ntk_tf.distributed import local_cluster
from ntk_tf.distributed import cluster_runner
from ntk_tf.distributed import sharded_passes

_N = 64
_BATCH = 4
_SHARDS = 8  # more shards than workers: closures queue up, so a kill finds some in flight


class _KillingRunner(cluster_runner.ClusterRunner):
  """A ClusterRunner that SIGKILLs worker 1 when the first result of a pass is asked for."""

  def __init__(self, *args, cluster: local_cluster.LocalCluster, **kwargs):
    super().__init__(*args, **kwargs)
    self.cluster = cluster
    self.kill_next = False

  def result(self, handle):
    if self.kill_next:
      self.kill_next = False
      self.cluster.kill("worker:1")
    return super().result(handle)


class ShardedPassesClusterTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # Pinned, one core per worker, as the benchmark runs them (TF's inter-op pool
    # would be one thread there, in which the shard loops deadlock: server.serve).
    cls.cluster = local_cluster.LocalCluster(2, intra_op_threads=1, pin_workers=True)
    cls.strategy = strategy = tf.distribute.experimental.ParameterServerStrategy(
        cls.cluster.cluster_resolver())
    # Variables are made after the strategy connects to the cluster (which resets
    # the eager context).
    cls.model, twin = ntk_reference.model_and_twin("lenet", "gelu", seed=7)
    cls.x = ntk_reference.inputs(_N, seed=3)
    cls.jac = ntk_reference.loop_jacobian(twin, cls.x)  # [N, P] float64, brute force
    cls.x_other = ntk_reference.inputs(_N, seed=5)  # same shape as x, other values
    cls.jac_other = ntk_reference.loop_jacobian(twin, cls.x_other)
    cls.labels = np.random.RandomState(4).randn(_N, 3)  # [N, m]
    # NumPy references now, not while LocalCluster restarts a killed worker: its
    # fork can deadlock with an OpenBLAS call running in this thread (OpenBLAS's
    # fork handler stops the BLAS threads that call waits for).
    cls.expected = sharded_reference.alignment(cls.jac, cls.labels)  # [m]
    cls.scale = sharded_reference.alignment_scale(cls.jac, cls.labels)
    cls.runner = _KillingRunner(cls.model, "jacobian", "float64", strategy, 2,
                                cluster=cls.cluster)

  @classmethod
  def tearDownClass(cls):
    cls.cluster.close()
    super().tearDownClass()

  def _alignment(self):
    return sharded_passes.sharded_alignment(self.runner, self.x, self.labels, batch_size=_BATCH,
                                            num_shards=_SHARDS)

  def test_alignment_matches_brute_force_and_one_process(self):
    expected, scale = self.expected, self.scale
    single = ntk_tf.alignment(self.model, self.x, self.labels, batch_size=_BATCH,
                              dtype="float64")
    sharded = self._alignment()
    sharded_reference.assert_within(self, sharded, expected, scale, "cluster vs brute force")
    sharded_reference.assert_within(self, sharded, single, scale, "cluster vs one process")

  def test_alignment_with_inputs_sent_per_closure(self):
    # Inputs over RESIDENT_MAX_BYTES travel with each closure instead of living on the workers.
    with mock.patch.object(cluster_runner, "RESIDENT_MAX_BYTES", 0):
      sharded = self._alignment()
    sharded_reference.assert_within(self, sharded, self.expected, self.scale,
                                    "per-closure inputs vs brute force")

  def test_matmat_matches_brute_force_and_one_process(self):
    vectors = self.labels[:, :2]  # [N, k]
    expected = sharded_reference.product(self.jac, vectors)
    scale = sharded_reference.product_scale(self.jac, vectors)
    single = ntk_tf.NtkOperator(self.model, self.x, batch_size=_BATCH,
                                dtype="float64").matmat(vectors)
    operator = sharded_passes.ShardedNtkOperator(self.runner, self.x, batch_size=_BATCH)
    sharded = operator.matmat(vectors)  # [N, k], 2 shards (one per worker)
    sharded_reference.assert_within(self, sharded, expected, scale, "cluster vs brute force")
    sharded_reference.assert_within(self, sharded, single, scale, "cluster vs one process")

  def test_gram_blocks_of_two_inputs_of_one_shape(self):
    # The second start reuses the first one's traced block functions (same
    # shapes); each Gram must come from its own resident inputs.
    block = 16
    for x, jac in ((self.x, self.jac), (self.x_other, self.jac_other)):
      self.runner.start(x, block)
      for i0, j0 in ((0, 0), (0, 32), (48, 16)):
        got = self.runner.result(self.runner.submit(i0, j0))  # [B, B]
        want = jac[i0:i0 + block] @ jac[j0:j0 + block].T  # brute force
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max(),
                                   err_msg=f"block ({i0}, {j0})")

  def test_structured_blocks_read_resident_weights(self):
    # A structured block takes the weights with the inputs: its closures capture no
    # variable (nothing read from the parameter server), and the numbers are right.
    runner = cluster_runner.ClusterRunner(self.model, "structured", "float64", self.strategy, 2)
    self.assertTrue(runner.block.takes_weights)
    block = 16
    runner.start(self.x, block)
    for i0, j0 in ((16, 16), (0, 48)):
      got = runner.result(runner.submit(i0, j0))  # [B, B]
      want = self.jac[i0:i0 + block] @ self.jac[j0:j0 + block].T  # brute force
      np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max(),
                                 err_msg=f"block ({i0}, {j0})")
    diagonal, pair, rows = runner._resident  # pylint: disable=protected-access
    iterator = runner._iterator  # pylint: disable=protected-access
    j0s, count = tf.constant([0] * runner.row_blocks), tf.constant(1)
    for concrete in (diagonal.get_concrete_function(iterator, tf.constant(0)),
                     pair.get_concrete_function(iterator, tf.constant(0), tf.constant(0)),
                     rows[True].get_concrete_function(iterator, tf.constant(0), j0s, count),
                     rows[False].get_concrete_function(iterator, tf.constant(0), j0s, count)):
      captured = [t for t in concrete.captured_inputs if t.dtype == tf.resource]
      self.assertEmpty(captured, f"{concrete.name} reads variables")
    # The control: the Jacobian runner's blocks do read the variables.
    self.runner.start(self.x, block)
    diagonal = self.runner._resident[0]  # pylint: disable=protected-access
    concrete = diagonal.get_concrete_function(self.runner._iterator, tf.constant(0))  # pylint: disable=protected-access
    self.assertNotEmpty([t for t in concrete.captured_inputs if t.dtype == tf.resource])

  def test_rows_of_blocks_and_resident_inputs_kept(self):
    # One closure per row of blocks, each block the brute-force one; a start with the
    # last key and weights keeps the resident inputs, new weights or a new key resend.
    runner = cluster_runner.ClusterRunner(self.model, "structured", "float64", self.strategy, 2,
                                          row_blocks=3)
    block = 16
    runner.start(self.x, block, key="x")
    sent = runner._iterator  # pylint: disable=protected-access
    for i0, j0s in ((0, [0, 16, 32]), (16, [32, 48]), (48, [48])):
      handle = runner.submit_row(i0, j0s)
      self.assertLen(handle, 2, "one closure per row")  # (count, closure)
      for j0, got in zip(j0s, runner.row_results(handle)):
        want = self.jac[i0:i0 + block] @ self.jac[j0:j0 + block].T  # brute force
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max(),
                                   err_msg=f"block ({i0}, {j0})")
    runner.start(self.x, block, key="x")
    self.assertIs(runner._iterator, sent)  # pylint: disable=protected-access
    got = runner.row_results(runner.submit_row(0, [48]))[0]
    want = self.jac[:block] @ self.jac[48:48 + block].T
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
    runner.start(self.x_other, block, key="x_other")
    self.assertIsNot(runner._iterator, sent)  # pylint: disable=protected-access
    sent = runner._iterator  # pylint: disable=protected-access
    runner.model.set_weights([w * 1.5 for w in runner.model.get_weights()])
    runner.start(self.x_other, block, key="x_other")
    self.assertIsNot(runner._iterator, sent)  # pylint: disable=protected-access
    with self.assertRaisesRegex(ValueError, r"row_blocks=3 blocks. Received: j0s=\[0, 16, 32, 48\]"):
      runner.submit_row(0, [0, 16, 32, 48])

  def test_server_cpu_seconds(self):
    seconds = self.cluster.cpu_seconds()
    self.assertEqual(sorted(seconds), ["ps:0", "worker:0", "worker:1"])
    before = seconds["worker:0"] + seconds["worker:1"]
    self._alignment()  # work on the workers
    after = self.cluster.cpu_seconds()
    self.assertGreater(after["worker:0"] + after["worker:1"], before)
    self.assertTrue(all(value >= 0 for value in after.values()), after)

  def test_worker_killed_mid_pass(self):  # runs last (alphabetical): it disturbs the cluster
    undisturbed = self._alignment()
    restarts = self.cluster.restarts
    self.runner.kill_next = True
    disturbed = self._alignment()
    self.assertFalse(self.runner.kill_next)  # the kill happened during the pass
    np.testing.assert_array_equal(disturbed, undisturbed)
    sharded_reference.assert_within(self, disturbed, self.expected, self.scale,
                                    "after a worker loss vs brute force")
    self._wait_for_restart(restarts)
    # Gram rows (one closure per row of blocks) in flight when worker 1 is lost.
    restarts = self.cluster.restarts
    block = 16
    self.runner.start(self.x, block)
    rows = ((0, [0, 16, 32, 48]), (16, [16, 32, 48]), (32, [32, 48]), (48, [48]))
    handles = [self.runner.submit_row(i0, j0s) for i0, j0s in rows]
    self.runner.kill_next = True
    for (i0, j0s), handle in zip(rows, handles):
      for j0, got in zip(j0s, self.runner.row_results(handle)):
        want = self.jac[i0:i0 + block] @ self.jac[j0:j0 + block].T  # brute force
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max(),
                                   err_msg=f"block ({i0}, {j0}) after a worker loss")
    self.assertFalse(self.runner.kill_next)
    self._wait_for_restart(restarts)

  def _wait_for_restart(self, restarts):
    deadline = time.monotonic() + 60  # LocalCluster restarts worker 1 on its port
    while not (self.cluster.restarts > restarts and
               local_cluster._listening(self.cluster.spec["worker"][1])):  # pylint: disable=protected-access
      self.assertLess(time.monotonic(), deadline, "worker 1 was not killed and restarted")
      time.sleep(0.1)


if __name__ == "__main__":
  absltest.main()
