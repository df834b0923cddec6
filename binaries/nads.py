r"""NADs: linear predictors along neural anisotropy directions (Sec. 3.2, Figs. 4, 10).

  bazel run //binaries:nads -- --config=configs/nads.py:smoke --workdir=/tmp/ntk_tf/nads

The config variants and the exact paper commands are in configs/nads.py.
"""

from binaries import engine_defaults  # pylint: disable=unused-import  # first: sets oneDNN
from ntk_tf.experiments import cli
from ntk_tf.experiments import nads

main = cli.experiment_main(nads)

if __name__ == "__main__":
  cli.main(main)
