"""Ten-class CIFAR-10: NTK regression against the trained network (ntk_tf/experiments/multiclass.py).

Beyond the paper: the MLP and LeNet with 10 logits. For each training size n and seed, NTK
regression with the "trace", "pseudo" and "full" output kernels of Theta_0, the network
trained with softmax cross-entropy, and its linearization trained likewise.

Variants (`--config=configs/multiclass.py:<variant>`):
  smoke  a narrow MLP, n in {40, 80}, one seed, 2 epochs; well under a minute on a CPU.
  quick  MLP and LeNet, n in {500, 1000, 2000}, one seed, 20 epochs, 2,000 test images;
         about half an hour on 2 CPU cores.
  paper  MLP and LeNet, n in {2000, 5000, 10000}, one seed, the paper's recipe (SGD,
         100 epochs), the whole test split; "full" (a [10n, 10n] solve) only for n = 2000.

Commands (from the repository root):
  bazel run //binaries:multiclass -- --config=configs/multiclass.py:quick --workdir=runs/multiclass_quick
  bazel run //binaries:multiclass -- --config=configs/multiclass.py:paper --workdir=runs/multiclass_paper

Any value can be overridden, e.g. `--config.train_sizes="(1000,4000)"
--config.kinds="('network','ntk_trace')"`.
"""

import ml_collections
from ml_collections import config_dict

from configs import common

VARIANTS = ("smoke", "quick", "paper")


def get_config(variant: str = "smoke") -> ml_collections.ConfigDict:
  """The config of `variant` (one of VARIANTS)."""
  c = common.base("multiclass", variant, VARIANTS)
  c.update(common.models(("mlp", "lenet"), seed=None))  # theta0 by each run's seed
  c.update(common.dataset("cifar10"))  # "cifar10" | "mnist", 10 classes
  c.train_sizes = (2000, 5000, 10000)
  c.test_size = config_dict.placeholder(int)  # None: the whole test split (10,000)
  c.seeds = (0,)
  c.kinds = ("network", "linearized", "ntk_trace", "ntk_pseudo", "ntk_full")
  # Ridge of the NTK regressions, relative to the Gram's mean diagonal (neural-tangents'
  # convention): the "full" Gram [10n, 10n] of LeNet (136,886 weights) is singular for n > 13,688.
  c.diag_reg = 1e-4
  # A "full" regression holds about 20 (10 n)^2 bytes (8 GiB at n = 2,000): larger n skip it.
  c.full_max_train_size = 2000
  c.update(common.training("PAPER_SGD", seed=None))  # each run's seed orders its batches
  c.gram = common.gram()
  c.progress = False

  if variant == "smoke":
    common.smoke_model(c)
    common.smoke_training(c)
    c.train_sizes = (40, 80)
    c.test_size = 30
    c.full_max_train_size = 40
  elif variant == "quick":
    c.train_sizes = (500, 1000, 2000)
    c.test_size = 2000
    c.epochs = 20
  return c
