"""ntk_tf: empirical neural tangent kernels and linearized networks in TensorFlow/Keras.

The public surface; each object lives in its own module.
"""

from ntk_tf import data
from ntk_tf import models
from ntk_tf.alignment import alignment
from ntk_tf.alignment import energy_concentration
from ntk_tf.eigen import eigen
from ntk_tf.gram import NtkImplementation
from ntk_tf.gram import ntk_gram
from ntk_tf.gram_store import GramStore
from ntk_tf.jacobian import jacobian
from ntk_tf.linearize import Linearized
from ntk_tf.linearize import linearize
from ntk_tf.nads import NadMethod
from ntk_tf.nads import nad_alignment
from ntk_tf.nads import nads
from ntk_tf.nads import separable_dataset
from ntk_tf.precision import as_float64_model
from ntk_tf.recipe import PAPER_ADAM
from ntk_tf.recipe import PAPER_CIFAR2
from ntk_tf.recipe import PAPER_SGD
from ntk_tf.recipe import Recipe
from ntk_tf.tasks import eigenfunction_labels
from ntk_tf.training import TrainResult
from ntk_tf.training import train

__version__ = "0.1.0"

__all__ = [
    "GramStore",
    "Linearized",
    "NadMethod",
    "NtkImplementation",
    "PAPER_ADAM",
    "PAPER_CIFAR2",
    "PAPER_SGD",
    "Recipe",
    "TrainResult",
    "alignment",
    "as_float64_model",
    "data",
    "eigen",
    "eigenfunction_labels",
    "energy_concentration",
    "jacobian",
    "linearize",
    "models",
    "nad_alignment",
    "nads",
    "ntk_gram",
    "separable_dataset",
    "train",
]
