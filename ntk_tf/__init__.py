"""ntk_tf: empirical neural tangent kernels and linearized networks in TensorFlow/Keras.

The public surface; each object lives in its own module.
"""

from ntk_tf import data
from ntk_tf import models
from ntk_tf.linearize import Linearized
from ntk_tf.linearize import linearize
from ntk_tf.recipe import PAPER_ADAM
from ntk_tf.recipe import PAPER_CIFAR2
from ntk_tf.recipe import PAPER_SGD
from ntk_tf.recipe import Recipe
from ntk_tf.training import TrainResult
from ntk_tf.training import train

__version__ = "0.1.0"

__all__ = [
    "data", "models",
    "Linearized", "linearize",
    "PAPER_ADAM", "PAPER_CIFAR2", "PAPER_SGD", "Recipe",
    "TrainResult", "train",
]
