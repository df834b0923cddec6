"""Builds a paper model by name."""

from typing import Callable, Dict, Sequence

import keras

from ntk_tf import validation
from ntk_tf.models.common import ACTIVATIONS
from ntk_tf.models.lenet import lenet
from ntk_tf.models.mlp import mlp
from ntk_tf.models.resnet import resnet18

_BUILDERS: Dict[str, Callable[..., keras.Model]] = {
    "mlp": mlp,
    "lenet": lenet,
    "resnet18": resnet18,
}
MODEL_NAMES = tuple(_BUILDERS)


def get(name: str, *, input_shape: Sequence[int] = (32, 32, 3), activation: str = "relu",
        seed: int = 0, **kwargs) -> keras.Model:
  """Returns the model `name` ("mlp" | "lenet" | "resnet18"), one output logit by default.

  Args:
    name: architecture name.
    input_shape: `(H, W, C)`, e.g. (32, 32, 3) for CIFAR-10, (28, 28, 1) for MNIST.
    activation: "relu", "gelu" or "tanh".
    seed: weight seed; the same arguments give bit-identical weights.
    **kwargs: architecture extras: `outputs` (K logits, default 1; the paper's models have
      one), `width` for "mlp" and "resnet18", `depth` for "mlp".
  """
  validation.check_choice(name, "name", MODEL_NAMES)
  return _BUILDERS[name](input_shape, activation=activation, seed=seed, **kwargs)


__all__ = ["ACTIVATIONS", "MODEL_NAMES", "get"]
