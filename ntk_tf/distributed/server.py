"""One task of a TensorFlow cluster: a `tf.distribute.Server` that serves until killed.

    python -m ntk_tf.distributed.server --cluster_spec='{"worker": [...], "ps": [...]}' \
        --job=worker --index=0 [--intra_op_threads=1]

Started by `local_cluster.LocalCluster` for each worker and parameter server.
(A TF_CONFIG cluster runs the gram binary itself on every task:
`cluster.serve_if_server` turns its worker and ps tasks into such servers.)
"""

import json

from absl import app
from absl import flags

from ntk_tf.distributed import cluster

_CLUSTER_SPEC = flags.DEFINE_string("cluster_spec", None, "The cluster's spec as JSON.")
_JOB = flags.DEFINE_enum("job", None, ["worker", "ps"], "This task's job.")
_INDEX = flags.DEFINE_integer("index", 0, "This task's index in its job.", lower_bound=0)
_INTRA_OP_THREADS = flags.DEFINE_integer("intra_op_threads", 0,
                                         "TF intra-op threads (0: TF's default).",
                                         lower_bound=0)
flags.mark_flags_as_required(["cluster_spec", "job"])


def main(argv):
  del argv
  cluster.serve(json.loads(_CLUSTER_SPEC.value), _JOB.value, _INDEX.value,
                _INTRA_OP_THREADS.value or None)


if __name__ == "__main__":
  app.run(main)
