"""The paper's three architectures (App. A), each with a single output logit.

`get(name, input_shape=..., activation=..., seed=...)` builds any of them by
name; `mlp`, `lenet` and `resnet18` build them directly.
"""

from ntk_tf.models.registry import ACTIVATIONS
from ntk_tf.models.registry import MODEL_NAMES
from ntk_tf.models.registry import get
from ntk_tf.models.lenet import lenet
from ntk_tf.models.mlp import mlp
from ntk_tf.models.resnet import resnet18

__all__ = ["ACTIVATIONS", "MODEL_NAMES", "get", "lenet", "mlp", "resnet18"]
