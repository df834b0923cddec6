"""ResNet18 for CIFAR (App. A), with one output logit (K with `outputs=K`).

    stem:   Conv(64, 3x3) BN act                       (no max-pool)
    stages: 4 x [BasicBlock, BasicBlock], filters 64-128-256-512,
            stride 1-2-2-2 on the first block of each stage
    head:   GlobalAveragePool Dense(1)

    BasicBlock(x) = act(BN(Conv3x3(act(BN(Conv3x3(x))))) + shortcut(x)),
    shortcut = 1x1 Conv + BN when the stride or width changes, else identity.

Convolutions have no bias (BatchNorm follows each). Shapes: input
`[N, H, W, C]`, output `[N, 1]`. For CIFAR-10, 11,169,345 trainable
parameters plus 9,600 BatchNorm moving statistics (non-trainable).

`width` scales every filter count (64*width/64...), so tests can build a narrow
ResNet18 with the same topology.
"""

from typing import Sequence

import keras

from ntk_tf import onednn
from ntk_tf import validation
from ntk_tf.models import common

STAGE_FILTERS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
BLOCKS_PER_STAGE = 2


def _conv(filters, kernel, stride, seeds, name):
  return keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                             kernel_initializer=seeds.he(), name=name)


def _bn(name):
  return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


def _basic_block(x, filters, stride, activation, seeds, name):
  shortcut = x
  h = _conv(filters, 3, stride, seeds, f"{name}_conv1")(x)
  h = _bn(f"{name}_bn1")(h)
  h = keras.layers.Activation(activation, name=f"{name}_act1")(h)
  h = _conv(filters, 3, 1, seeds, f"{name}_conv2")(h)
  h = _bn(f"{name}_bn2")(h)
  if stride != 1 or x.shape[-1] != filters:
    shortcut = _conv(filters, 1, stride, seeds, f"{name}_proj")(x)
    shortcut = _bn(f"{name}_proj_bn")(shortcut)
  h = keras.layers.Add(name=f"{name}_add")([h, shortcut])
  return keras.layers.Activation(activation, name=f"{name}_out")(h)


def resnet18(input_shape: Sequence[int] = (32, 32, 3), *, activation: str = "relu",
             seed: int = 0, width: int = 64, outputs: int = 1) -> keras.Model:
  """Builds the CIFAR ResNet18 (BatchNorm, no max-pool) with `outputs` logits (default 1).

  Args:
    input_shape: `(H, W, C)`.
    activation: one of "relu", "gelu", "tanh".
    seed: weight seed; same seed, same weights.
    width: filters of the first stage (64 in the paper); stages use
      width * (1, 2, 4, 8).
  """
  shape = common.check_input_shape(input_shape, min_spatial=8, model="resnet18")
  common.check_activation(activation)
  width = validation.check_positive_int(width, "width")
  outputs = validation.check_positive_int(outputs, "outputs")
  seeds = common.SeedStream(seed)
  inputs = keras.Input(shape=shape, name="image")
  h = _conv(width, 3, 1, seeds, "stem_conv")(inputs)  # [N, H, W, width]
  h = _bn("stem_bn")(h)
  h = keras.layers.Activation(activation, name="stem_act")(h)
  for stage, (mult, stride) in enumerate(zip((1, 2, 4, 8), STAGE_STRIDES)):
    for block in range(BLOCKS_PER_STAGE):
      h = _basic_block(h, width * mult, stride if block == 0 else 1, activation, seeds,
                       name=f"stage{stage}_block{block}")
  h = keras.layers.GlobalAveragePooling2D(name="pool")(h)  # [N, 8*width]
  logit = keras.layers.Dense(outputs, kernel_initializer=seeds.glorot(), name="logit")(h)  # [N, K]
  # The 1x1 stride-2 projections need oneDNN's workaround (ntk_tf/onednn.py).
  return onednn.protect(keras.Model(inputs, logit, name="resnet18"))
