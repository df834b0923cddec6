"""Ten-class CIFAR-10: NTK regression against the trained network and its linearization.

  bazel run //binaries:multiclass -- --config=configs/multiclass.py:quick --workdir=runs/multiclass_quick

See configs/multiclass.py for the variants and ntk_tf/experiments/multiclass.py for what is
computed and written.
"""

from binaries import engine_defaults  # pylint: disable=unused-import  # first: sets oneDNN
from ntk_tf.experiments import cli
from ntk_tf.experiments import multiclass

main = cli.experiment_main(multiclass)

if __name__ == "__main__":
  cli.main(main)
