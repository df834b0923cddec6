"""The non-linear advantage depends on the sample size: paper Sec. 4.1, Fig. 5.

Variants (`--config=configs/cifar2_sample_size.py:<variant>`):
  smoke  a narrow MLP, 2 training sizes x 2 seeds, 2 epochs; well under a minute on a CPU.
  quick  MLP and LeNet, n in {500, 1000, 2000, 5000}, 2 seeds, 20 epochs, 2,000 test
         images; tens of minutes on 2 CPU cores.
  paper  Fig. 5: MLP, LeNet and ResNet18 on CIFAR2, n from 500 to the whole train split
         (50,000), 5 seeds, the CIFAR2 recipe of App. A (SGD, 200 epochs), the whole
         test split. The paper does not list its grid of n; ours is about evenly
         spaced in log n. Meant for a GPU.

Commands (from the repository root):
  bazel run //binaries:cifar2_sample_size -- --config=configs/cifar2_sample_size.py:quick --workdir=runs/cifar2_quick
  bazel run //binaries:cifar2_sample_size -- --config=configs/cifar2_sample_size.py:paper --workdir=runs/cifar2_paper

Any value can be overridden, e.g. `--config.train_sizes="(500,5000)" --config.seeds="(0,1)"
--config.epochs=50`. The training recipe comes from ntk_tf/recipe.py (PAPER_CIFAR2);
`epochs`, `learning_rate` and `batch_size` override it only when set.
"""

import ml_collections
from ml_collections import config_dict

from configs import common

VARIANTS = ("smoke", "quick", "paper")


def get_config(variant: str = "smoke") -> ml_collections.ConfigDict:
  """The config of `variant` (one of VARIANTS)."""
  c = common.base("cifar2_sample_size", variant, VARIANTS)
  c.update(common.models(seed=None))  # theta0 by each run's seed
  c.update(common.dataset("cifar2"))  # "cifar2" | "mnist2" (classes 0-4 vs 5-9)
  # Our choice of n (the paper does not list its grid): about evenly spaced in log n.
  c.train_sizes = (500, 1000, 2000, 5000, 10000, 20000, 50000)
  c.test_size = config_dict.placeholder(int)  # None: the whole test split (10,000)
  c.seeds = (0, 1, 2, 3, 4)  # "average over five different random seeds" (Fig. 5)
  c.kinds = ("network", "linearized")
  # Training (App. A: ntk_tf.recipe.PAPER_CIFAR2, 200 epochs); each run's seed orders its batches.
  c.update(common.training("PAPER_CIFAR2", seed=None))
  # Saturation: the first epoch after which test accuracy stays within this of its final value.
  # Ours: Fig. 5 reports accuracy "when the test accuracy has saturated" without a rule.
  c.saturation_tolerance = 0.01
  c.progress = False

  if variant == "smoke":
    common.smoke_model(c)
    common.smoke_training(c)
    c.train_sizes = (32, 64)
    c.test_size = 32
    c.seeds = (0, 1)
  elif variant == "quick":
    c.models = ("mlp", "lenet")
    c.train_sizes = (500, 1000, 2000, 5000)
    c.test_size = 2000
    c.seeds = (0, 1)
    c.epochs = 20
  return c
