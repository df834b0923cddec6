"""Computes the NTK Gram of one model at one checkpoint into a workdir (paper App. B).

  python -m binaries.gram --config=configs/gram.py:smoke --workdir=/tmp/gram
  python -m binaries.gram --config=configs/gram.py:smoke --cluster=local:2 --workdir=/tmp/gram2

Without --cluster: the cluster of TF_CONFIG when it is set (worker and ps tasks
serve, the chief coordinates), else one process. See configs/gram.py and
ntk_tf/experiments/gram_experiment.py.
"""

from binaries import engine_defaults  # pylint: disable=unused-import  # first: sets oneDNN

from absl import app
from absl import flags
from absl import logging

from ntk_tf.distributed import cluster
from ntk_tf.experiments import cli
from ntk_tf.experiments import gram_experiment
from ntk_tf.experiments import workdir

_FLAGS = cli.define_flags("gram", download=False)
_CLUSTER = flags.DEFINE_string("cluster", None,
                               "local:N: start N localhost workers and a parameter server.")


def _valid_cluster(value) -> bool:
  try:
    return cluster.check_cluster(value) == (value or None)
  except ValueError:
    return False


flags.register_validator("cluster", _valid_cluster,
                         "--cluster must be local:N with N >= 1 workers")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {list(argv[1:])}")
  config = _FLAGS.config.value
  if not _CLUSTER.value:
    cluster.serve_if_server(config.get("worker_threads"))  # TF_CONFIG worker/ps: never returns.
  if not _FLAGS.workdir.value:
    raise app.UsageError("--workdir is required.")
  settings, path = cli.read_settings(gram_experiment, config, _FLAGS.workdir.value)
  cli.start_over_if_asked(_FLAGS, path, config)
  logging.info("Config:\n%s", config)
  with workdir.removed_if_unused(path), workdir.kept_on_conflict(path):
    info = gram_experiment.run(settings, path, _CLUSTER.value)
  print(f"Gram [{info['n']}, {info['n']}] ({info['n_train']} train + {info['n_test']} test) "
        f"on {info['where']} in {info['seconds']:.1f} s: {info['matrix']}")


if __name__ == "__main__":
  cli.main(main, require_workdir=False)  # A TF_CONFIG worker or ps task needs no --workdir.
