r"""Kernel rotation (Sec. 4.2, Figs. 6, 7, 15, 16, Table 1).

  bazel run //binaries:kernel_rotation -- \
      --config=configs/kernel_rotation.py:smoke --workdir=/tmp/ntk_tf/kernel_rotation

The config variants and the exact paper commands are in configs/kernel_rotation.py.
"""

from binaries import engine_defaults  # pylint: disable=unused-import  # first: sets oneDNN
from ntk_tf.experiments import cli
from ntk_tf.experiments import kernel_rotation

main = cli.experiment_main(kernel_rotation)

if __name__ == "__main__":
  cli.main(main)
