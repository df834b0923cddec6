"""Type aliases shared by every ntk_tf module.

The style rule they serve: "type hints on every public signature, with named
aliases from one module" (this one).
"""

from typing import Sequence, Union

import numpy as np
import tensorflow as tf

# A batch of model inputs, `[N, H, W, C]` (or `[N, d]`), NumPy or TF.
Inputs = Union[np.ndarray, tf.Tensor]
# A host-side matrix or vector.
Array = np.ndarray
# A float dtype given as a name or a NumPy/TF dtype ("float32" | "float64").
DType = Union[str, np.dtype, tf.DType]
Shape = Sequence[int]
