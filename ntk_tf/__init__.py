"""ntk_tf: empirical neural tangent kernels and linearized networks in TensorFlow/Keras.

The public surface; each object lives in its own module.

Conventions shared by every module:
  * Labels are +-1: a binary target is f: R^d -> {-1, +1} (the paper's
    setting, Sec. 2), as a `[N]` array (or `[N, m]` for m targets at once).
    So `data.load("cifar2" | "mnist2")` gives +1 for classes 0-4,
    `separable_dataset` and `eigenfunction_signs` (sign(phi_j)) give +-1,
    `alignment`/`energy_concentration` take +-1 labels, and `train` takes +-1
    labels (it fits one logit by binary cross-entropy on t = (1 + y) / 2 and
    predicts +1 where the logit is > 0).
  * `batch_size` is examples per step or call; `block_size` is the side of a
    Gram tile; `k` is how many eigenpairs or directions.
  * A set of vectors keeps the example axis where it is everywhere else: a
    vector on the N samples (an eigenvector phi_j, a label vector) is a column,
    so k of them are `[N, k]` like labels `[N, m]` (`eigen`); a vector in
    input space (a NAD) is shaped like one input, so k of them are
    `[k, H, W, C]` like a batch `[N, H, W, C]` (`nads`). The returns keep
    these layouts: a transposed return cannot warn its callers, so changing
    one would break them silently.
  * Arrays are returned as NumPy arrays, 0-d where the result is one number
    (`alignment`, `energy_concentration` for labels `[N]`).

TensorFlow's oneDNN kernels (on by default on CPUs with AVX-512 VNNI/BF16 or
AMX) get two float32 ops wrong; `ntk_tf/onednn.py` names them and routes the
models, Jacobians, linearization and training around them.
"""

from ntk_tf import data
from ntk_tf import models
from ntk_tf import predict
from ntk_tf.alignment import alignment
from ntk_tf.alignment import energy_concentration
from ntk_tf.eigen import eigen
from ntk_tf.jacobian import jacobian
from ntk_tf.linearize import Linearized
from ntk_tf.linearize import linearize
from ntk_tf.nads import NadMethod
from ntk_tf.nads import nad_alignment
from ntk_tf.nads import nads
from ntk_tf.nads import separable_dataset
from ntk_tf.ntk.gram import ntk_gram
from ntk_tf.ntk.gram_store import GramStore
from ntk_tf.ntk.implementation import NtkImplementation
from ntk_tf.ntk.ntk_vector_products import NtkOperator
from ntk_tf.ntk.output_kernel import OUTPUT_KERNELS
from ntk_tf.ntk.output_kernel import flatten_full_gram
from ntk_tf.precision import as_float64_model
from ntk_tf.recipe import PAPER_ADAM
from ntk_tf.recipe import PAPER_CIFAR2
from ntk_tf.recipe import PAPER_SGD
from ntk_tf.recipe import Recipe
from ntk_tf.tasks import eigenfunction_signs
from ntk_tf.training import TrainResult
from ntk_tf.training import train

__version__ = "0.1.0"

__all__ = [
    "data", "models",
    # Kernel-regression predictions of the linearized model (nt.predict's conventions).
    "predict",
    # Kernels (Sec. 2, App. B).
    "GramStore", "NtkImplementation", "NtkOperator", "as_float64_model", "jacobian", "ntk_gram",
    # Output kernels of K-logit models (ntk_gram(..., output_kernel=...)).
    "OUTPUT_KERNELS", "flatten_full_gram",
    # Spectra, tasks and alignment (Sec. 3.1, 4.2, Lemma 1).
    "alignment", "eigen", "eigenfunction_signs", "energy_concentration",
    # Linearized models and training (Eq. 1, App. A).
    "Linearized", "linearize", "PAPER_ADAM", "PAPER_CIFAR2", "PAPER_SGD", "Recipe",
    "TrainResult", "train",
    # Neural anisotropy directions (Sec. 3.2, Theorem 1).
    "NadMethod", "nad_alignment", "nads", "separable_dataset",
]
