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

VARIANTS = ("smoke", "small", "paper")


def get_config(variant: str = "smoke") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"Unknown variant. Expected one of {VARIANTS}. Received: variant={variant!r}")
  c = ml_collections.ConfigDict()
  c.experiment = "late_linearization"
  c.variant = variant
  c.data_dir = ml_collections.config_dict.placeholder(str)  # None: NTK_TF_DATA_DIR.
  c.allow_download = False  # set by the binary's --download
  c.model = "resnet18"  # Figs. 8, 9.
  c.model_kwargs = ml_collections.ConfigDict()
  c.activation = "relu"
  c.model_seed = 0  # theta0
  c.train_seed = 0  # minibatch order
  # None = the whole split; placeholders keep them overridable from the command line.
  c.train_size = ml_collections.config_dict.placeholder(int)
  c.test_size = ml_collections.config_dict.placeholder(int)
  c.data_seed = 0
  c.dataset = "cifar10"  # App. B: eigenfunctions over all CIFAR-10 samples.
  c.train_size = None
  c.test_size = None
  c.eigenfunction_index = 400  # Sec. 4.3: "x -> sign(phi_400(x))".
  c.recipe = "PAPER_SGD"  # App. A: 100 epochs (Theta_100 in Fig. 8).
  c.optimizer = "sgd"  # "adam": ntk_tf.recipe.PAPER_ADAM with the preset's epochs.
  # Overrides of the recipe (None keeps the value of ntk_tf/recipe.py).
  c.epochs = ml_collections.config_dict.placeholder(int)
  c.learning_rate = ml_collections.config_dict.placeholder(float)
  c.batch_size = ml_collections.config_dict.placeholder(int)
  # Fig. 9 x axis (0 = linearization at init). Our choice: the paper's axis shows a few
  # epochs of pretraining without listing them.
  c.pretrain_epochs = (0, 1, 2, 5, 10, 20)
  # Forms of Fig. 9's linear models, each trained and drawn (ntk_tf/experiments/
  # late_linearization.py): "unbiased" (theta - theta0)^T grad f(x; theta_t), the form
  # Sec. 4.3 defines for the pretrained kernel, and "offset", which adds f(x; theta_t)
  # (our variant: it starts from the pretrained network's function).
  c.late_linearization_forms = ("unbiased", "offset")
  c.progress = True
  c.gram = ml_collections.ConfigDict(
      {"block_size": 256, "implementation": "auto", "dtype": "float32"})
  # Theta_0 cache shared by experiments; None: $NTK_TF_CACHE_DIR/grams or ~/.cache/ntk_tf/grams.
  c.gram.cache_dir = ml_collections.config_dict.placeholder(str)
  # Where a missing Theta_0 is computed: None (TF_CONFIG's cluster when set, else this
  # process) or "local:N" (N localhost workers); see ntk_tf/experiments/theta0.py.
  c.gram.cluster = ml_collections.config_dict.placeholder(str)
  if variant == "small":
    c.model = "lenet"
    c.train_size = 2000
    c.test_size = 1000
    c.epochs = 20
    c.pretrain_epochs = (0, 1, 2, 5)
  elif variant == "smoke":
    c.model = "mlp"
    c.model_kwargs = ml_collections.ConfigDict({"mlp": {"width": 16}})
    c.train_size = 32
    c.test_size = 16
    c.eigenfunction_index = 3
    c.epochs = 2
    c.batch_size = 16
    c.pretrain_epochs = (0, 1)
    c.progress = False
    c.gram.block_size = 16
  return c
