"""CIFAR2 sample-size study (paper Sec. 4.1, Fig. 5).

  bazel run //binaries:cifar2_sample_size -- --config=configs/cifar2_sample_size.py:quick --workdir=runs/cifar2_quick

See configs/cifar2_sample_size.py for the variants and
ntk_tf/experiments/cifar2_sample_size.py for what is computed and written.
"""

from ntk_tf.experiments import cli
from ntk_tf.experiments import cifar2_sample_size

_FLAGS = cli.define_flags("cifar2_sample_size")


def main(argv):
  _, results = cli.run_experiment(cifar2_sample_size, _FLAGS, argv)
  print(f"Results ({len(results['rows'])} runs): {results['csv']} and {results['json']}")
  print(f"Mean and spread over seeds: {results['summary_csv']}")
  for figure in results["figures"]:
    print(f"Figure: {figure}")


if __name__ == "__main__":
  cli.main(main)
