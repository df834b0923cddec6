r"""Late linearization (Sec. 4.3, Figs. 8, 9).

  bazel run //binaries:late_linearization -- \
      --config=configs/late_linearization.py:smoke --workdir=/tmp/ntk_tf/late_linearization

The config variants and the exact paper commands are in configs/late_linearization.py.
"""

from ntk_tf.experiments import cli
from ntk_tf.experiments import late_linearization

_FLAGS = cli.define_flags("late_linearization")


def main(argv):
  path, _ = cli.run_experiment(late_linearization, _FLAGS, argv)
  print(f"Results: {path / 'results.csv'}; figures: {path}/*.png")


if __name__ == "__main__":
  cli.main(main)
