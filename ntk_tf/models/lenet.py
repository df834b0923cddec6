"""LeNet5 of App. A, with 'same' padding and one output logit (K with `outputs=K`).

    Conv(6, 5x5) act AvgPool(2) Conv(16, 5x5) act AvgPool(2)
    Flatten Dense(120) act Dense(84) act Dense(1)

Shapes: input `[N, H, W, C]`, output `[N, 1]`. For CIFAR-10 (32x32x3):
456 + 2,416 + 123,000 + 10,164 + 85 = 136,121 parameters.
"""

from typing import Sequence

import keras

from ntk_tf import validation
from ntk_tf.models import common


def lenet(input_shape: Sequence[int] = (32, 32, 3), *, activation: str = "relu",
          seed: int = 0, outputs: int = 1) -> keras.Model:
  """Builds LeNet5 ('same' padding, average pooling) with `outputs` logits (default 1)."""
  outputs = validation.check_positive_int(outputs, "outputs")
  shape = common.check_input_shape(input_shape, min_spatial=4, model="lenet")
  common.check_activation(activation)
  seeds = common.SeedStream(seed)
  inputs = keras.Input(shape=shape, name="image")
  h = inputs
  for i, filters in enumerate((6, 16)):
    h = keras.layers.Conv2D(filters, 5, padding="same", kernel_initializer=seeds.glorot(),
                            name=f"conv_{i}")(h)  # [N, H', W', filters]
    h = keras.layers.Activation(activation, name=f"conv_act_{i}")(h)
    h = keras.layers.AveragePooling2D(2, name=f"pool_{i}")(h)  # [N, H'/2, W'/2, filters]
  h = keras.layers.Flatten(name="flatten")(h)
  for i, units in enumerate((120, 84)):
    h = keras.layers.Dense(units, kernel_initializer=seeds.glorot(), name=f"dense_{i}")(h)
    h = keras.layers.Activation(activation, name=f"dense_act_{i}")(h)
  logit = keras.layers.Dense(outputs, kernel_initializer=seeds.glorot(), name="logit")(h)  # [N, K]
  return keras.Model(inputs, logit, name="lenet")
