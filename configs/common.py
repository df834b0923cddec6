"""The config blocks the experiments share, each field declared once (as big_vision's common.py).

A config starts from `base(...)` and merges the blocks it reads, then sets what is its own:

    c = common.base("kernel_rotation", variant, VARIANTS)
    c.update(common.models(("mlp", "lenet", "resnet18")))
    c.update(common.dataset("cifar2"))
    c.update(common.subsample(train_size=12_000, test_size=10_000))
    c.update(common.training("PAPER_CIFAR2"))
    c.gram = common.gram()

Where a field is None by default it is a placeholder of its type, so that
`--config.<field>=<value>` can set it from the command line. `smoke_model` and
`smoke_training` shrink a variant to the size of every smoke run.
"""

from typing import Optional, Sequence

import ml_collections
from ml_collections import config_dict

# The paper's three architectures (Sec. 3; App. A).
PAPER_MODELS = ("mlp", "lenet", "resnet18")


def base(experiment: str, variant: str, variants: Sequence[str]) -> ml_collections.ConfigDict:
  """A config of `experiment` at `variant`, which must be one of `variants`."""
  if variant not in variants:
    raise ValueError(f"Unknown variant. Expected one of {tuple(variants)}. "
                     f"Received: variant={variant!r}")
  c = ml_collections.ConfigDict()
  c.experiment = experiment  # how binaries/report finds this workdir
  c.variant = variant
  return c


def models(names: Sequence[str] = PAPER_MODELS, activation: str = "relu",
           seed: Optional[int] = 0) -> ml_collections.ConfigDict:
  """The models of an experiment that trains several: `models`, their extras and theta0's seed.

  seed None: no `model_seed` field (the experiment seeds each run's theta0 itself).
  """
  c = _architecture(activation, seed)
  c.models = tuple(names)  # "mlp" | "lenet" | "resnet18"
  return c


def model(name: str, activation: str = "relu", seed: int = 0) -> ml_collections.ConfigDict:
  """The one model of an experiment: `model`, its extras and theta0's seed."""
  c = _architecture(activation, seed)
  c.model = name  # "mlp" | "lenet" | "resnet18"
  return c


def _architecture(activation: str, seed: Optional[int]) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model_kwargs = ml_collections.ConfigDict()  # by model, e.g. {"mlp": {"width": 16}}
  c.activation = activation
  if seed is not None:
    c.model_seed = seed  # theta0
  return c


def dataset(name: str) -> ml_collections.ConfigDict:
  """Which dataset of ntk_tf.data, and where its files are."""
  c = ml_collections.ConfigDict()
  c.dataset = name  # "cifar10" | "mnist" | "cifar2" | "mnist2" (classes 0-4 vs 5-9)
  c.data_dir = config_dict.placeholder(str)  # None: $NTK_TF_DATA_DIR, caches (ntk_tf.data)
  c.allow_download = False  # set by the binary's --download
  return c


def subsample(train_size: Optional[int] = None,
              test_size: Optional[int] = None) -> ml_collections.ConfigDict:
  """The samples used: stratified subsets of the splits (None: the whole split), seeded."""
  c = ml_collections.ConfigDict()
  c.train_size = config_dict.placeholder(int)
  c.test_size = config_dict.placeholder(int)
  c.train_size, c.test_size = train_size, test_size
  c.data_seed = 0  # stratified subsampling
  return c


def training(recipe: str, seed: Optional[int] = 0) -> ml_collections.ConfigDict:
  """The training recipe: a preset of ntk_tf/recipe.py (App. A), overridden where set.

  `epochs`, `learning_rate` and `batch_size` override the preset only when set
  (None keeps its value); "adam" takes ntk_tf.recipe.PAPER_ADAM with the preset's
  epochs (App. E.1). seed None: no `train_seed` field (each run's seed orders its
  minibatches).
  """
  c = ml_collections.ConfigDict()
  c.recipe = recipe  # "PAPER_SGD" (100 epochs) | "PAPER_CIFAR2" (200 epochs)
  c.optimizer = "sgd"  # "sgd" | "adam"
  c.epochs = config_dict.placeholder(int)
  c.learning_rate = config_dict.placeholder(float)
  c.batch_size = config_dict.placeholder(int)
  if seed is not None:
    c.train_seed = seed  # minibatch order
  return c


def gram() -> ml_collections.ConfigDict:
  """How Theta_0, the Gram at initialization (App. B), is computed, cached and where."""
  c = ml_collections.ConfigDict()
  c.block_size = 256
  c.dtype = "float32"
  c.implementation = "auto"
  # Theta_0 cache shared by experiments; None: $NTK_TF_CACHE_DIR/grams or ~/.cache/ntk_tf/grams.
  c.cache_dir = config_dict.placeholder(str)
  # Where a missing Theta_0 is computed: None (TF_CONFIG's cluster when set, else this
  # process) or "local:N" (N localhost workers); see ntk_tf/experiments/theta0.py.
  c.cluster = config_dict.placeholder(str)
  return c


def smoke_model(c: ml_collections.ConfigDict) -> None:
  """A smoke variant's model: one MLP of width 16."""
  if "models" in c:
    c.models = ("mlp",)
  else:
    c.model = "mlp"
  c.model_kwargs = ml_collections.ConfigDict({"mlp": {"width": 16}})


def smoke_training(c: ml_collections.ConfigDict) -> None:
  """A smoke variant's training: 2 epochs of batches of 16."""
  c.epochs = 2
  c.batch_size = 16
