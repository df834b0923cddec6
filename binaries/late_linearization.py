r"""Late linearization (Sec. 4.3, Figs. 8, 9).

  bazel run //binaries:late_linearization -- \
      --config=configs/late_linearization.py:smoke --workdir=/tmp/ntk_tf/late_linearization

The config variants and the exact paper commands are in configs/late_linearization.py.
"""

from binaries import engine_defaults  # pylint: disable=unused-import  # first: sets oneDNN
from ntk_tf.experiments import cli
from ntk_tf.experiments import late_linearization

main = cli.experiment_main(late_linearization)

if __name__ == "__main__":
  cli.main(main)
