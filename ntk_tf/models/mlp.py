"""MLP of App. A: two hidden layers of 100 units and one output logit (K with `outputs=K`).

    f(x) = W3 act(W2 act(W1 vec(x) + b1) + b2) + b3,   f: R^{H x W x C} -> R

Shapes: input `[N, H, W, C]` (flattened to `[N, H*W*C]`), output `[N, 1]`.
Parameters: d*100 + 100 + 100*100 + 100 + 100 + 1 (317,501 for CIFAR-10).
"""

from typing import Sequence

import keras

from ntk_tf import validation
from ntk_tf.models import common


def mlp(input_shape: Sequence[int] = (32, 32, 3), *, activation: str = "relu",
        seed: int = 0, width: int = 100, depth: int = 2, outputs: int = 1) -> keras.Model:
  """Builds the paper's MLP (width 100, two hidden layers) with `outputs` logits (default 1)."""
  shape = common.check_input_shape(input_shape, model="mlp")
  common.check_activation(activation)
  width = validation.check_positive_int(width, "width")
  depth = validation.check_positive_int(depth, "depth")
  outputs = validation.check_positive_int(outputs, "outputs")
  seeds = common.SeedStream(seed)
  inputs = keras.Input(shape=shape, name="image")
  h = keras.layers.Flatten(name="flatten")(inputs)  # [N, H*W*C]
  for i in range(depth):
    h = keras.layers.Dense(width, kernel_initializer=seeds.glorot(), name=f"dense_{i}")(h)
    h = keras.layers.Activation(activation, name=f"act_{i}")(h)  # [N, width]
  logit = keras.layers.Dense(outputs, kernel_initializer=seeds.glorot(), name="logit")(h)  # [N, K]
  return keras.Model(inputs, logit, name="mlp")
