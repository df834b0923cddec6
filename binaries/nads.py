r"""NADs: linear predictors along neural anisotropy directions (Sec. 3.2, Figs. 4, 10).

  bazel run //binaries:nads -- --config=configs/nads.py:smoke --workdir=/tmp/ntk_tf/nads

The config variants and the exact paper commands are in configs/nads.py.
"""

from ntk_tf.experiments import cli
from ntk_tf.experiments import nads

_FLAGS = cli.define_flags("nads", download=False)  # Synthetic data.


def main(argv):
  path, _ = cli.run_experiment(nads, _FLAGS, argv)
  print(f"Results: {path / 'results.csv'}; figures: {path}/*.png")


if __name__ == "__main__":
  cli.main(main)
