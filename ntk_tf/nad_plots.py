"""Figure 10: NADs in the spatial domain and as 2-D Fourier magnitudes.

    image(v)    = (v - min v) / (max v - min v)                    `[H, W, C]` in [0, 1]
    spectrum(v) = mean_c |fftshift(FFT2(v[:, :, c]))|               `[H, W]`, zero frequency
                                                                    at (H // 2, W // 2)

Shapes: a direction is `[H, W, C]`; `directions` is `[k, H, W, C]` (as from `ntk_tf.nads`).
Uses matplotlib's Agg backend (no display needed). App. C.2, Fig. 10 (after [25]).
"""

import pathlib
from typing import Optional, Sequence, Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from ntk_tf.types import Array


def _check_direction(direction: Array) -> np.ndarray:
  direction = np.asarray(direction, np.float64)
  if direction.ndim != 3:
    raise ValueError(f"direction must have shape [H, W, C]. Received: direction.shape="
                     f"{direction.shape}")
  return direction


def nad_image(direction: Array) -> Array:
  """Returns the direction rescaled to [0, 1] for display: (v - min v) / (max v - min v).

  Args:
    direction: `[H, W, C]`.

  Returns:
    `[H, W, C]` float64 (all 0.5 for a constant direction).
  """
  direction = _check_direction(direction)
  low, high = direction.min(), direction.max()
  if high == low:
    return np.full_like(direction, 0.5)
  return (direction - low) / (high - low)


def nad_spectrum(direction: Array) -> Array:
  """Returns mean_c |fftshift(FFT2(v[:, :, c]))|, zero frequency at (H // 2, W // 2).

  Args:
    direction: `[H, W, C]`.

  Returns:
    `[H, W]` float64.
  """
  direction = _check_direction(direction)
  spectrum = np.abs(np.fft.fftshift(np.fft.fft2(direction, axes=(0, 1)), axes=(0, 1)))  # [H, W, C]
  return spectrum.mean(axis=-1)


def plot_nads(directions: Array, path: Union[str, pathlib.Path], *,
              singular_values: Optional[Sequence[float]] = None,
              title: Optional[str] = None) -> pathlib.Path:
  """Writes a 2 x k grid: NAD images (top, light) and Fourier magnitudes (bottom, dark).

  Args:
    directions: `[k, H, W, C]`, e.g. the first 10 NADs.
    path: output image file (.png).
    singular_values: optional `[k]`, shown above each column.
    title: optional figure title.

  Returns:
    The path written.

  Fig. 10.
  """
  directions = np.asarray(directions)
  if directions.ndim != 4 or len(directions) < 1:
    raise ValueError(f"directions must have shape [k, H, W, C] with k >= 1. "
                     f"Received: directions.shape={directions.shape}")
  k = len(directions)
  if singular_values is not None and len(singular_values) != k:
    raise ValueError(f"singular_values must have k = {k} entries. "
                     f"Received: len(singular_values)={len(singular_values)}")
  fig, axes = plt.subplots(2, k, figsize=(1.4 * k, 3.0), squeeze=False)
  for j, direction in enumerate(directions):
    image = nad_image(direction)
    axes[0, j].imshow(image[..., 0] if image.shape[-1] == 1 else image,
                      cmap="gray" if image.shape[-1] == 1 else None)
    axes[1, j].imshow(nad_spectrum(direction), cmap="magma")
    label = f"v{j + 1}" if singular_values is None else f"v{j + 1}: {singular_values[j]:.2g}"
    axes[0, j].set_title(label, fontsize=7)
    for ax in axes[:, j]:
      ax.set_xticks([])
      ax.set_yticks([])
  if title:
    fig.suptitle(title, fontsize=9)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)
  return path


__all__ = ["nad_image", "nad_spectrum", "plot_nads"]
