"""LocalCluster's servers listen on the loopback address only (ntk_tf/distributed/local_cluster.py).

TensorFlow's gRPC servers have no authentication, and TensorFlow binds them to
every interface ("0.0.0.0") whatever host the cluster spec names. The test reads
the listening sockets' bound addresses from /proc/net/tcp and /proc/net/tcp6; it
connects to nothing but the servers' loopback addresses.
"""

import ipaddress
import socket
from typing import List

from absl.testing import absltest

from tests import test_util  # pylint: disable=unused-import  (quiet TensorFlow logs)

import tensorflow as tf

from ntk_tf.distributed import local_cluster

_TCP_LISTEN = "0A"  # The `st` column of /proc/net/tcp*: TCP_LISTEN.


def _listening_addresses(port: int) -> List[ipaddress._BaseAddress]:
  """The addresses that sockets listening on TCP `port` are bound to, from /proc/net/tcp{,6}."""
  addresses = []
  for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
    try:
      with open(table) as f:
        rows = f.read().splitlines()[1:]
    except FileNotFoundError:  # No IPv6 in this kernel.
      continue
    for row in rows:
      local, state = row.split()[1], row.split()[3]
      hex_address, hex_port = local.split(":")
      if state != _TCP_LISTEN or int(hex_port, 16) != port or len(hex_address) != width:
        continue
      # The kernel prints the address as 32-bit words in host (little-endian) order.
      raw = b"".join(bytes.fromhex(hex_address[i:i + 8])[::-1] for i in range(0, width, 8))
      address = ipaddress.ip_address(raw)
      if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
      addresses.append(address)
  return addresses


class LocalClusterTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.cluster = local_cluster.LocalCluster(1, intra_op_threads=1)
    # The coordinator (this process, the chief) starts its own server on connecting.
    cls.strategy = tf.distribute.experimental.ParameterServerStrategy(
        cls.cluster.cluster_resolver())

  @classmethod
  def tearDownClass(cls):
    cls.cluster.close()
    super().tearDownClass()

  def test_every_server_listens_on_loopback_only(self):
    for job in ("worker", "ps", "chief"):
      for address in self.cluster.spec[job]:
        port = int(address.rsplit(":", 1)[1])
        bound = _listening_addresses(port)
        self.assertNotEmpty(bound, f"{job} {address} is not listening")
        for ip in bound:
          self.assertTrue(ip.is_loopback, f"{job} {address} listens on {ip}")

  def test_cluster_computes(self):
    with self.strategy.scope():
      weight = tf.Variable(2.0)
    coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(self.strategy)
    product = coordinator.schedule(tf.function(lambda: weight * 3.0))
    self.assertEqual(product.fetch(), 6.0)

  def test_other_sockets_keep_their_address(self):
    # Only TensorFlow's servers are moved to loopback: this process's own sockets are not.
    with socket.socket() as probe:
      probe.bind(("0.0.0.0", 0))  # Bound, not listening.
      self.assertEqual(probe.getsockname()[0], "0.0.0.0")


if __name__ == "__main__":
  absltest.main()
