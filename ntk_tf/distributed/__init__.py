"""Gram matrices on many devices and many machines, on TensorFlow's distributed engine.

  device_block  one Gram block as one tf.function (runs on any device or worker)
  runner        the runner protocol: where blocks and row passes run
  local_runner  blocks round robin over local devices
  cluster_runner blocks as closures on the workers of a PS cluster
  gram_job      a Gram computed by a runner into a resumable GramStore
  cluster       TF_CONFIG / --cluster=local:N -> ParameterServerStrategy
  local_cluster a localhost cluster of tf.distribute.Server processes
  sharded_passes alignment (Lemma 1) and Theta v with x sharded over a runner's places
"""

from ntk_tf.distributed.device_block import DeviceBlock
from ntk_tf.distributed.gram_job import RunnerGramStore
from ntk_tf.distributed.gram_job import compute_gram
from ntk_tf.distributed.cluster_runner import ClusterRunner
from ntk_tf.distributed.local_runner import LocalRunner
from ntk_tf.distributed.local_runner import local_devices
from ntk_tf.distributed.sharded_passes import ShardedNtkOperator
from ntk_tf.distributed.sharded_passes import sharded_alignment
