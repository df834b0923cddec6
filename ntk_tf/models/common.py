"""Shared helpers for the model builders: argument checks and seeded initializers.

Every weight of every model is drawn from an initializer with its own explicit
seed, derived from the model seed and the layer's position, so a model is a
pure function of `(name, input_shape, activation, seed)`: building it twice
gives bit-identical weights, independent of Keras' global random state.
"""

from typing import Sequence, Tuple

import keras

from ntk_tf import validation

ACTIVATIONS = ("relu", "gelu", "tanh")


class SeedStream:
  """Hands out distinct integer seeds for successive initializers of one model."""

  def __init__(self, seed: int):
    self._base = validation.check_non_negative_int(seed, "seed") * 1_000_003
    self._count = 0

  def next(self) -> int:
    self._count += 1
    return (self._base + self._count) % (2**31 - 1)

  def glorot(self) -> keras.initializers.Initializer:
    """Glorot-uniform (Keras' default for Dense and Conv kernels), seeded."""
    return keras.initializers.GlorotUniform(seed=self.next())

  def he(self) -> keras.initializers.Initializer:
    """He-normal (fan-in), seeded; used for ResNet convolutions."""
    return keras.initializers.HeNormal(seed=self.next())


def check_activation(activation: str) -> str:
  """Returns `activation` if it is one of `ACTIVATIONS`, else raises ValueError naming it."""
  return validation.check_choice(activation, "activation", ACTIVATIONS)


def check_input_shape(input_shape: Sequence[int], *, min_spatial: int = 1,
                      model: str = "") -> Tuple[int, ...]:
  """Validates an image input shape (H, W, C) and returns it as a tuple."""
  try:
    shape = tuple(int(s) for s in input_shape)
  except (TypeError, ValueError):
    raise ValueError(
        f"input_shape must be a sequence of positive ints (H, W, C). "
        f"Received: input_shape={input_shape!r}") from None
  if len(shape) != 3 or any(s <= 0 for s in shape):
    raise ValueError(
        f"input_shape must be (H, W, C) with positive entries. "
        f"Received: input_shape={input_shape!r}")
  if min(shape[:2]) < min_spatial:
    raise ValueError(
        f"{model} needs spatial size >= {min_spatial}. Received: input_shape={input_shape!r}")
  return shape
