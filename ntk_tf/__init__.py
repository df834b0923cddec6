"""ntk_tf: empirical neural tangent kernels and linearized networks in TensorFlow/Keras.

The public surface; each object lives in its own module.
"""

from ntk_tf import data
from ntk_tf import models

__version__ = "0.1.0"

__all__ = ["data", "models"]
