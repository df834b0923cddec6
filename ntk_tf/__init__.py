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
from ntk_tf.precision import as_float64_model
from ntk_tf.tasks import eigenfunction_labels

__version__ = "0.1.0"

__all__ = [
    "GramStore",
    "NtkImplementation",
    "alignment",
    "as_float64_model",
    "data",
    "eigen",
    "eigenfunction_labels",
    "energy_concentration",
    "jacobian",
    "models",
    "ntk_gram",
]
