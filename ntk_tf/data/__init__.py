"""CIFAR-10, MNIST and their binary versions, from local files or package registries."""

from ntk_tf.data.datasets import BINARY_POSITIVE_CLASSES
from ntk_tf.data.datasets import DATASET_NAMES
from ntk_tf.data.datasets import Dataset
from ntk_tf.data.datasets import binarize
from ntk_tf.data.datasets import channel_stats
from ntk_tf.data.datasets import load
from ntk_tf.data.datasets import standardize
from ntk_tf.data.datasets import stratified_subsample
from ntk_tf.data.datasets import to_01
from ntk_tf.data.sources import DATA_ERRORS
from ntk_tf.data.sources import DataFileError
from ntk_tf.data.sources import DataNotFoundError
from ntk_tf.data.sources import load_raw

__all__ = [
    "BINARY_POSITIVE_CLASSES", "DATA_ERRORS", "DATASET_NAMES", "DataFileError",
    "DataNotFoundError", "Dataset", "binarize", "channel_stats", "load", "load_raw",
    "standardize", "stratified_subsample", "to_01",
]
