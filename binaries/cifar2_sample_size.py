"""CIFAR2 sample-size study (paper Sec. 4.1, Fig. 5).

  bazel run //binaries:cifar2_sample_size -- --config=configs/cifar2_sample_size.py:quick --workdir=runs/cifar2_quick

See configs/cifar2_sample_size.py for the variants and
ntk_tf/experiments/cifar2_sample_size.py for what is computed and written.
"""

from binaries import engine_defaults  # pylint: disable=unused-import  # first: sets oneDNN
from ntk_tf.experiments import cifar2_sample_size
from ntk_tf.experiments import cli

main = cli.experiment_main(cifar2_sample_size)

if __name__ == "__main__":
  cli.main(main)
