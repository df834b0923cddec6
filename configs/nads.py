"""NADs (Sec. 3.2): linear predictors along the NTK's neural anisotropy directions.

Reproduces Fig. 4 (test accuracy of a network and its linearization on D(v_j) against the
NAD index j; the alignment alpha(g_{v_j}) = s_j^2) and Fig. 10 (the first NADs, spatial
and |2-D DFT|). Exact commands (from the repository root):

  bazel run //binaries:nads -- --config=configs/nads.py:paper --workdir=/tmp/ntk_tf/nads_lenet
  bazel run //binaries:nads -- --config=configs/nads.py:paper --config.model=resnet18 \
      --workdir=/tmp/ntk_tf/nads_resnet18
  # Beyond smoke on CPU (LeNet, 2,000 + 2,000 samples of D(v_j), 20 epochs):
  bazel run //binaries:nads -- --config=configs/nads.py:small --workdir=/tmp/ntk_tf/nads_small
  # Smoke (seconds): --config=configs/nads.py:smoke

Any value can be overridden, e.g. --config.nad_indices='(1, 10, 100)'.
"""

import ml_collections

from configs import common

VARIANTS = ("smoke", "small", "paper")


def get_config(variant: str = "smoke") -> ml_collections.ConfigDict:
  """The config of `variant` (one of VARIANTS)."""
  c = common.base("nads", variant, VARIANTS)
  # Figs. 4, 10: LeNet and ResNet18. App. C.2: GeLU avoids the degenerate mixed derivative
  # of ReLU.
  c.update(common.model("lenet", activation="gelu"))
  c.input_shape = (32, 32, 3)  # CIFAR-sized inputs; d = 32 * 32 * 3 = 3072.
  c.data_seed = 0  # the samples of D(v_j)
  c.num_nads = ml_collections.config_dict.placeholder(int)  # None: all d NADs.
  c.nad_method = "mtm"  # App. C.2 takes an SVD of M; "mtm" (eigh of M^T M, same directions) is ours
  c.nad_sample_size = 0  # App. C.2: M at the origin x = 0.
  # Our choice of j (Fig. 4 plots j over all d = 3,072 NADs without listing them): about
  # evenly spaced in log j.
  c.nad_indices = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 3072)
  c.num_images = 10  # Fig. 10: "First 10 NADs".
  c.train_size = 10_000  # App. C.1: 10,000 training and 10,000 test samples.
  c.test_size = 10_000
  c.eps = 1.0  # App. C.1: eps = 1, sigma = 1.
  c.sigma = 1.0
  c.update(common.training("PAPER_SGD"))  # App. A; "adam": ntk_tf.recipe.PAPER_ADAM.
  c.progress = True
  if variant == "small":
    c.nad_indices = (1, 3, 10, 30, 100, 300, 1000, 3000)
    c.train_size = 2000
    c.test_size = 2000
    c.epochs = 20
  elif variant == "smoke":
    common.smoke_model(c)
    common.smoke_training(c)
    c.input_shape = (8, 8, 1)  # d = 64.
    c.nad_indices = (1, 64)
    c.num_images = 4
    c.train_size = 64
    c.test_size = 64
    c.progress = False
  return c
