"""Every figure of every experiment (Figs. 2-10 and 13-16), drawn from result rows.

Figures are `matplotlib.figure.Figure`s on an Agg canvas: nothing here touches
matplotlib's global backend or pyplot state, at import or later, so importing
this module is safe in any program (notebooks, GUIs).

NAD images (Fig. 10):
    image(v)    = (v - min v) / (max v - min v)                    `[H, W, C]` in [0, 1]
    spectrum(v) = mean_c |fftshift(FFT2(v[:, :, c]))|               `[H, W]`, zero frequency
                                                                    at (H // 2, W // 2)
Shapes: a direction is `[H, W, C]`; `directions` is `[k, H, W, C]` (as from `ntk_tf.nads`).
"""

import os
import pathlib
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from absl import logging
import numpy as np

from ntk_tf.types import Array

_STYLE = {"network": dict(color="tab:blue", marker="o", label="Neural network"),
          "linearized": dict(color="tab:orange", marker="s", label="Linearized model")}


def _figure(nrows: int = 1, ncols: int = 1, figsize: Tuple[float, float] = (5, 3.5)):
  """(Figure on an Agg canvas, axes `[nrows, ncols]`)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # Heavy; only when drawing.
  from matplotlib.figure import Figure
  fig = Figure(figsize=figsize)
  FigureCanvasAgg(fig)
  return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig, path: Union[str, os.PathLike], dpi: int = 120, **kwargs) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if "bbox_inches" not in kwargs:
    fig.tight_layout()
  fig.savefig(path, dpi=dpi, **kwargs)
  logging.info("Wrote %s", path)
  return path


def _nan_if_none(value: Optional[float]) -> float:
  return np.nan if value is None else float(value)


# ----------------------------------------------------------------------------
# Eigenfunctions (Sec. 3.1): Figs. 2, 3 (11-14).

def _eigen_rows(rows, model, kind):
  return sorted((r for r in rows if r["model"] == model and r["kind"] == kind
                 and r["index"] is not None), key=lambda r: r["index"])


def plot_test_accuracy(rows: List[Dict[str, Any]], path: os.PathLike,
                       baseline: str = "cifar2") -> pathlib.Path:
  """Fig. 2: test accuracy vs eigenfunction index j, network and linearized, a panel per model."""
  model_names = list(dict.fromkeys(r["model"] for r in rows))
  fig, axes = _figure(1, len(model_names), (4 * len(model_names), 3.2))
  for ax, name in zip(axes[0], model_names):
    for kind, style in _STYLE.items():
      picked = _eigen_rows(rows, name, kind)
      if picked:
        ax.plot([r["index"] for r in picked], [r["test_acc"] for r in picked], **style)
    for r in rows:
      if r["model"] == name and r["index"] is None:
        ax.axhline(r["test_acc"], color=_STYLE[r["kind"]]["color"], linestyle="--",
                   label=f"{_STYLE[r['kind']]['label']} on {baseline.upper()}")
    ax.set(xscale="log", xlabel="Eigenfunction index j", ylabel="Test accuracy", title=name)
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  return _save(fig, path)


def plot_training_metrics(rows: List[Dict[str, Any]], path: os.PathLike) -> pathlib.Path:
  """Fig. 3 (13, 14): iterations to loss 0.01, l2 and cosine distance vs j; a row per model.

  Tasks that never reach the loss threshold are drawn as hollow markers at the
  top of the first panel (the iteration count is then unknown).
  """
  model_names = list(dict.fromkeys(r["model"] for r in rows))
  fig, axes = _figure(len(model_names), 3, (11, 3 * len(model_names)))
  columns = (("steps_to_loss", "Iterations to loss 0.01"),
             ("l2_distance", "l2 distance to theta0"),
             ("cosine_distance", "Cosine distance to theta0"))
  for row_axes, name in zip(axes, model_names):
    for ax, (column, label) in zip(row_axes, columns):
      reached = [_nan_if_none(r[column]) for r in rows
                 if r["model"] == name and r["index"] is not None]
      top = 1.05 * np.nanmax(reached) if np.isfinite(reached).any() else 1.0
      for kind, style in _STYLE.items():
        picked = _eigen_rows(rows, name, kind)
        if not picked:
          continue
        xs = np.array([r["index"] for r in picked], float)
        ys = np.array([_nan_if_none(r[column]) for r in picked], float)
        ax.plot(xs, ys, **style)
        missing = ~np.isfinite(ys)
        if column == "steps_to_loss" and missing.any():
          ax.plot(xs[missing], np.full(missing.sum(), top), linestyle="none",
                  marker=style["marker"], markerfacecolor="none", color=style["color"],
                  label=f"{style['label']}: not reached")
      ax.set(xscale="log", xlabel="Eigenfunction index j", ylabel=label, title=name)
      ax.grid(alpha=0.3)
    row_axes[0].legend(fontsize=7)
  return _save(fig, path)


# ----------------------------------------------------------------------------
# Sample size (Sec. 4.1): Fig. 5.

def plot_sample_size(summary: List[Dict[str, Any]], path: os.PathLike,
                     dataset: str = "cifar2") -> pathlib.Path:
  """Fig. 5: test accuracy (top) and l2 distance to theta0 (bottom) vs n; a column per model.

  Lines are means over seeds, shaded bands +- one standard deviation.
  """
  model_names = list(dict.fromkeys(e["model"] for e in summary))
  fig, axes = _figure(2, len(model_names), (4 * len(model_names), 6))
  for col, name in enumerate(model_names):
    for row, (metric, label) in enumerate((("test_acc", "Test accuracy"),
                                           ("l2_distance", "l2 distance to theta0"))):
      ax = axes[row][col]
      for kind, style in _STYLE.items():
        picked = [e for e in summary if e["model"] == name and e["kind"] == kind]
        if not picked:
          continue
        n = np.array([e["train_size"] for e in picked], float)
        mean = np.array([e[f"{metric}_mean"] for e in picked])
        std = np.array([e[f"{metric}_std"] for e in picked])
        ax.plot(n, mean, **style)
        ax.fill_between(n, mean - std, mean + std, color=style["color"], alpha=0.2)
      ax.set(xscale="log", xlabel="Training set size", ylabel=label,
             title=f"{name} ({dataset.upper()})")
      ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  return _save(fig, path)


_MULTICLASS_STYLE = {
    **_STYLE,
    "ntk_trace": dict(color="tab:green", marker="^", linestyle="--", label="NTK regression, trace"),
    "ntk_pseudo": dict(color="tab:purple", marker="v", linestyle="--",
                       label="NTK regression, pseudo"),
    "ntk_full": dict(color="tab:red", marker="D", linestyle="--", label="NTK regression, full"),
}


def plot_multiclass(rows: List[Dict[str, Any]], path: os.PathLike,
                    dataset: str = "cifar10") -> pathlib.Path:
  """Ten-class test accuracy against n, a line per kind (mean over seeds), a panel per model."""
  model_names = list(dict.fromkeys(r["model"] for r in rows)) or ["(no runs)"]
  fig, axes = _figure(1, len(model_names), (4.5 * len(model_names), 3.5))
  for col, name in enumerate(model_names):
    ax = axes[0][col]
    for kind, style in _MULTICLASS_STYLE.items():
      by_n: Dict[int, List[float]] = {}
      for r in rows:
        if r["model"] == name and r["kind"] == kind:
          by_n.setdefault(int(r["num_train"]), []).append(float(r["test_acc"]))
      if by_n:
        n = sorted(by_n)
        ax.plot(n, [np.mean(by_n[k]) for k in n], **style)
    ax.set(xscale="log", xlabel="Training set size", ylabel="Test accuracy (10 classes)",
           title=f"{name} ({dataset.upper()}, 10 logits)")
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  return _save(fig, path)


# ----------------------------------------------------------------------------
# Kernel rotation (Sec. 4.2): Figs. 6, 7, 15, 16.

def plot_energy(curves: Mapping[str, Sequence[Tuple[int, float]]], top_k: int,
                path: os.PathLike) -> pathlib.Path:
  """Fig. 6: energy concentration ||Phi_t^T y||^2 / ||y||^2 against epoch t, a line per run."""
  fig, axes = _figure()
  ax = axes[0][0]
  for label, points in curves.items():
    if points:
      ax.plot(*zip(*sorted(points)), marker="o", label=label)
  ax.set(xlabel="epoch t", ylabel=f"||Phi_t y||^2 / ||y||^2  (K={top_k})",
         title="Energy concentration of the labels (Fig. 6)")
  ax.legend(fontsize=7)
  return _save(fig, path, dpi=110)


def plot_alignment(alpha_init: np.ndarray, alpha_end: np.ndarray, epochs: Tuple[int, int],
                   title: str, path: os.PathLike, target_j: Optional[int] = None) -> pathlib.Path:
  """Figs. 7, 15, 16: alpha_0(phi_j) and alpha_T(phi_j) against j, the trained-on j starred."""
  fig, axes = _figure()
  ax = axes[0][0]
  j = np.arange(1, len(alpha_init) + 1)
  ax.semilogy(j, alpha_init, ".", ms=3, label=f"alpha_{epochs[0]}(phi_j)")
  ax.semilogy(j, alpha_end, ".", ms=3, label=f"alpha_{epochs[1]}(phi_j)")
  if target_j is not None:
    ax.semilogy([target_j], [alpha_end[target_j - 1]], "r*", ms=12,
                label=f"trained on phi_{target_j}")
  ax.set(xlabel="eigenfunction index j", ylabel="alignment alpha(phi_j)", title=title)
  ax.legend(fontsize=7)
  return _save(fig, path, dpi=110)


# ----------------------------------------------------------------------------
# Late linearization (Sec. 4.3): Figs. 8, 9.

def plot_late_training(histories: Mapping[str, Mapping[str, np.ndarray]], j: int,
                       path: os.PathLike) -> pathlib.Path:
  """Fig. 8: training loss and test accuracy over epochs, a line per run (label -> history)."""
  fig, axes = _figure(1, 2, (9, 3.5))
  ax_loss, ax_acc = axes[0]
  for label, h in histories.items():
    ax_loss.semilogy(h["epoch"], h["train_loss"], label=label)
    ax_acc.plot(h["epoch"], h["test_acc"], label=label)
  ax_loss.set(xlabel="epoch", ylabel="training loss",
              title=f"sign(phi_{j}): training loss (Fig. 8)")
  ax_acc.set(xlabel="epoch", ylabel="test accuracy",
             title=f"sign(phi_{j}): test accuracy (Fig. 8)")
  ax_acc.legend(fontsize=7)
  return _save(fig, path, dpi=110)


def plot_pretraining(points: Union[Sequence[Tuple[float, float]],
                                    Mapping[str, Sequence[Tuple[float, float]]]],
                     network_acc: float, model: str, j: int, path: os.PathLike) -> pathlib.Path:
  """Fig. 9: test accuracy of the linearization at theta_t against t; the network dashed.

  Args:
    points: (t, test accuracy) pairs of one curve, or {label: pairs}, a curve each
      (e.g. the unbiased and the offset form of late_linearization).
  """
  curves = dict(points) if isinstance(points, Mapping) else {"linearized at theta_t": points}
  fig, axes = _figure()
  ax = axes[0][0]
  for (label, pairs), style in zip(curves.items(), ("o-", "s:", "^-.", "v--")):
    ax.plot(*zip(*sorted(pairs)), style, label=label)
  ax.axhline(network_acc, ls="--", color="k", label=f"{model} (non-linear)")
  ax.set(xlabel="pretraining epochs t", ylabel="test accuracy",
         title=f"sign(phi_{j}): linearization after pretraining (Fig. 9)")
  ax.legend(fontsize=7)
  return _save(fig, path, dpi=110)


# ----------------------------------------------------------------------------
# NADs (Sec. 3.2, App. C): Figs. 4, 10.

def plot_nad_accuracy(rows: Sequence[Mapping[str, Any]], model: str,
                      path: os.PathLike) -> pathlib.Path:
  """Fig. 4 left: test accuracy on D(v_j) against j, network and linearization."""
  rows = sorted(rows, key=lambda r: r["j"])
  js = [r["j"] for r in rows]
  fig, axes = _figure()
  ax = axes[0][0]
  ax.plot(js, [r["network_test_acc"] for r in rows], "o-", label=f"{model} (network)")
  ax.plot(js, [r["linear_test_acc"] for r in rows], "s--", label="linearized")
  ax.set(xscale="log", xlabel="NAD index j", ylabel="test accuracy on D(v_j)",
         title="Linear predictors along NADs (Fig. 4 left)")
  ax.legend(fontsize=7)
  return _save(fig, path, dpi=110)


def plot_nad_alignment(alignment: np.ndarray, path: os.PathLike) -> pathlib.Path:
  """Fig. 4 right: alpha(g_{v_j}) = s_j^2 against j."""
  fig, axes = _figure()
  ax = axes[0][0]
  ax.loglog(np.arange(1, len(alignment) + 1), alignment)
  ax.set(xlabel="NAD index j", ylabel="alpha(g_{v_j}) = s_j^2",
         title="Alignment of x -> v_j^T x with the NTK (Fig. 4 right)")
  return _save(fig, path, dpi=110)


def _check_direction(direction: Array) -> np.ndarray:
  direction = np.asarray(direction, np.float64)
  if direction.ndim != 3:
    raise ValueError(f"direction must have shape [H, W, C]. Received: direction.shape="
                     f"{direction.shape}")
  return direction


def nad_image(direction: Array) -> np.ndarray:
  """Returns the direction rescaled to [0, 1]: (v - min v) / (max v - min v), `[H, W, C]`.

  All 0.5 for a constant direction.
  """
  direction = _check_direction(direction)
  low, high = direction.min(), direction.max()
  if high == low:
    return np.full_like(direction, 0.5)
  return (direction - low) / (high - low)


def nad_spectrum(direction: Array) -> np.ndarray:
  """Returns mean_c |fftshift(FFT2(v[:, :, c]))| `[H, W]`, zero frequency at (H // 2, W // 2)."""
  direction = _check_direction(direction)
  spectrum = np.abs(np.fft.fftshift(np.fft.fft2(direction, axes=(0, 1)), axes=(0, 1)))  # [H, W, C]
  return spectrum.mean(axis=-1)


def plot_nads(directions: Array, path: Union[str, os.PathLike], *,
              singular_values: Optional[Sequence[float]] = None,
              title: Optional[str] = None) -> pathlib.Path:
  """Fig. 10: a 2 x k grid of NAD images (top) and Fourier magnitudes (bottom).

  Args:
    directions: `[k, H, W, C]`, e.g. the first 10 NADs.
    path: output image file (.png).
    singular_values: optional `[k]`, shown above each column.
    title: optional figure title.
  Returns:
    The path written.
  Paper: App. C.2, Fig. 10 (after [25]).
  """
  directions = np.asarray(directions)
  if directions.ndim != 4 or len(directions) < 1:
    raise ValueError(f"directions must have shape [k, H, W, C] with k >= 1. "
                     f"Received: directions.shape={directions.shape}")
  k = len(directions)
  if singular_values is not None and len(singular_values) != k:
    raise ValueError(f"singular_values must have k = {k} entries. "
                     f"Received: len(singular_values)={len(singular_values)}")
  fig, axes = _figure(2, k, (1.4 * k, 3.0))
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
  return _save(fig, path, bbox_inches="tight")
