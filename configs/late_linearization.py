"""Late linearization (Sec. 4.3): the network, its linearization at theta0 / theta_t / theta_star.

Reproduces Fig. 8 (training loss and test accuracy of a ResNet18, its linearization at
theta0 and the unbiased linearization around the trained theta_star on sign(phi_400)) and
Fig. 9 (test accuracy of linearizations at theta_t after t epochs of pretraining).
Exact commands (from the repository root):

  bazel run //binaries:late_linearization -- \
      --config=configs/late_linearization.py:paper --workdir=/tmp/ntk_tf/late_linearization
  # Beyond smoke on CPU (LeNet, 2,000 + 1,000 CIFAR-10 samples, 20 epochs):
  bazel run //binaries:late_linearization -- \
      --config=configs/late_linearization.py:small --workdir=/tmp/ntk_tf/late_linearization_small
  # Smoke (seconds): --config=configs/late_linearization.py:smoke

Any value can be overridden, e.g. --config.pretrain_epochs='(0, 1, 3)'.
"""

import ml_collections

from configs import common

VARIANTS = ("smoke", "small", "paper")


def get_config(variant: str = "smoke") -> ml_collections.ConfigDict:
  """The config of `variant` (one of VARIANTS)."""
  c = common.base("late_linearization", variant, VARIANTS)
  c.update(common.model("resnet18"))  # Figs. 8, 9.
  c.update(common.dataset("cifar10"))  # App. B: eigenfunctions over all CIFAR-10 samples.
  c.update(common.subsample())  # None: the whole splits
  c.eigenfunction_index = 400  # Sec. 4.3: "x -> sign(phi_400(x))".
  # App. A: 100 epochs (Theta_100 in Fig. 8); "adam": ntk_tf.recipe.PAPER_ADAM.
  c.update(common.training("PAPER_SGD"))
  # Fig. 9 x axis (0 = linearization at init). Our choice: the paper's axis shows a few
  # epochs of pretraining without listing them.
  c.pretrain_epochs = (0, 1, 2, 5, 10, 20)
  # Forms of Fig. 9's linear models, each trained and drawn (ntk_tf/experiments/
  # late_linearization.py): "unbiased" (theta - theta0)^T grad f(x; theta_t), the form
  # Sec. 4.3 defines for the pretrained kernel, and "offset", which adds f(x; theta_t)
  # (our variant: it starts from the pretrained network's function).
  c.late_linearization_forms = ("unbiased", "offset")
  c.progress = True
  c.gram = common.gram()
  if variant == "small":
    c.model = "lenet"
    c.train_size = 2000
    c.test_size = 1000
    c.epochs = 20
    c.pretrain_epochs = (0, 1, 2, 5)
  elif variant == "smoke":
    common.smoke_model(c)
    common.smoke_training(c)
    c.train_size = 32
    c.test_size = 16
    c.eigenfunction_index = 3
    c.pretrain_epochs = (0, 1)
    c.progress = False
    c.gram.block_size = 16
  return c
