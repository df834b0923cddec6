"""ntk_tf: empirical neural tangent kernels and linearized networks in TensorFlow/Keras.

The public surface; each object lives in its own module.
"""

from ntk_tf import data
from ntk_tf import models
from ntk_tf.nads import NadMethod
from ntk_tf.nads import nad_alignment
from ntk_tf.nads import nads
from ntk_tf.nads import separable_dataset

__version__ = "0.1.0"

__all__ = ["data", "models", "NadMethod", "nad_alignment", "nads",
           "separable_dataset"]
