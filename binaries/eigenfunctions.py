"""Learning NTK eigenfunctions (paper Sec. 3.1, Figs. 2, 3, 11-14).

  bazel run //binaries:eigenfunctions -- --config=configs/eigenfunctions.py:quick --workdir=runs/quickstart

See configs/eigenfunctions.py for the variants and ntk_tf/experiments/eigenfunctions.py
for what is computed and written.
"""

from binaries import engine_defaults  # pylint: disable=unused-import  # first: sets oneDNN
from ntk_tf.experiments import cli
from ntk_tf.experiments import eigenfunctions

main = cli.experiment_main(eigenfunctions)

if __name__ == "__main__":
  cli.main(main)
