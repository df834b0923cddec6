"""The NTK Gram of one model at one checkpoint (paper App. B), on one or many devices/machines.

    python -m binaries.gram --config=configs/gram.py:smoke --workdir=/tmp/gram_smoke
    python -m binaries.gram --config=configs/gram.py:smoke --cluster=local:2 --workdir=/tmp/gram_b
    python -m binaries.gram --config=configs/gram.py:paper_resnet18_cifar10 --workdir=runs/gram_r18
        (on a cluster: every task runs this command with its TF_CONFIG; see docs/cluster.md)

Writes <workdir>/gram.npy: Theta(x, x) of x = the train samples then the test
samples, so Theta(x_train, x_test) = gram[:N_train, N_train:]. A rerun resumes.

Variants (`--config=configs/gram.py:<variant>`):
  smoke   a narrow MLP on 40 + 8 CIFAR-10 images, blocks of 8 (21 blocks); seconds.
  quick   the paper's MLP on 2,000 + 500 CIFAR-10 images, blocks of 256.
  paper_<model>_<dataset>  App. B: <model> in {mlp, lenet, resnet18} on all of
          <dataset> in {cifar10, mnist} (60,000 / 70,000 images, train then
          test), at initialization (model_seed 0). ResNet18 on MNIST is not in
          the paper (App. E.1, footnote 9) but is listed for completeness.

Any field can be overridden, e.g. `--config.weights=/path/model.weights.h5`
(a checkpoint instead of the seeded initialization) or `--config.local_devices=4`.
"""

import ml_collections
from ml_collections import config_dict

from configs import common

PAPER_MODELS = common.PAPER_MODELS
PAPER_DATASETS = ("cifar10", "mnist")
VARIANTS = ("smoke", "quick") + tuple(f"paper_{m}_{d}" for m in PAPER_MODELS
                                      for d in PAPER_DATASETS)


def get_config(variant: str = "smoke") -> ml_collections.ConfigDict:
  """The config of `variant` (one of VARIANTS)."""
  c = common.base("gram", variant, VARIANTS)
  # The model at its checkpoint: theta0 by model_seed, or a Keras weights file (.weights.h5).
  c.update(common.model("mlp"))
  c.weights = config_dict.placeholder(str)
  # The samples: train then test (test_size 0 or None: as the split allows, see ntk_tf.data).
  c.update(common.dataset("cifar10"))  # "cifar10" | "mnist"
  c.update(common.subsample())  # None: the whole splits
  # How the Gram is computed (ntk_tf.distributed.device_block).
  c.block_size = 256
  c.dtype = "float32"
  c.implementation = "structured"  # "structured" | "jacobian"
  c.local_devices = 1  # without a cluster: GPUs, or logical CPU devices without GPUs
  # Each local device's cache of structured block features (bytes of device memory; 0: none).
  # ResNet18's are ~1.6 GB per block of 128: on large GPUs give it tens of GB.
  c.device_feature_cache_bytes = 1 << 30
  c.worker_threads = config_dict.placeholder(int)  # --cluster=local:N workers' intra-op threads
  # On a cluster: blocks of one block row per closure (the coordinator's cost per closure,
  # ~3-4 ms on 2 cores, is paid once for them; cluster_runner.ClusterRunner).
  c.cluster_row_blocks = 8
  c.commit_interval_s = 5.0  # >= 0 (0: after every block); a killed job loses at most this
  c.progress = True
  # None: the store is the workdir. A folder: the experiments' shared Theta_0 store of this
  # model and data in it (what --config.gram.cache_dir=<folder> of an experiment reuses).
  c.cache_dir = config_dict.placeholder(str)

  if variant == "smoke":
    common.smoke_model(c)
    c.train_size, c.test_size = 40, 8  # N = 48: 6 row blocks, 21 blocks
    c.block_size = 8
    c.commit_interval_s = 1.0
  elif variant == "quick":
    c.train_size, c.test_size = 2000, 500  # N = 2,500: 55 blocks of 256
  else:
    _, model, dataset = variant.split("_")
    c.model, c.dataset = model, dataset
    # ResNet18's per-block features are large: blocks of 128 keep one block's peak
    # (ntk_tf.ntk.block_size.peak_memory_bytes) within a GPU's memory.
    c.block_size = 128 if model == "resnet18" else 256
  return c
