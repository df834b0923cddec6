"""ntk_tf: empirical neural tangent kernels and linearized networks in TensorFlow/Keras.

The public surface; each object lives in its own module.

TensorFlow's oneDNN kernels (on by default on CPUs with AVX-512 VNNI/BF16 or
AMX) get two float32 ops wrong; `ntk_tf/onednn.py` names them and routes the
models, Jacobians, linearization and training around them.
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
from ntk_tf.ntk_vector_products import NtkOperator
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
    "data", "models",
    # Kernels (Sec. 2, App. B).
    "GramStore", "NtkImplementation", "NtkOperator", "as_float64_model", "jacobian", "ntk_gram",
    # Spectra, tasks and alignment (Sec. 3.1, 4.2, Lemma 1).
    "alignment", "eigen", "eigenfunction_labels", "energy_concentration",
    # Linearized models and training (Eq. 1, App. A).
    "Linearized", "linearize", "PAPER_ADAM", "PAPER_CIFAR2", "PAPER_SGD", "Recipe",
    "TrainResult", "train",
    # Neural anisotropy directions (Sec. 3.2, Theorem 1).
    "NadMethod", "nad_alignment", "nads", "separable_dataset",
]
