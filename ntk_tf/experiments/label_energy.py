"""Table 1's energy at initialization under each candidate convention of the paper.

    E(y) = ||Phi_K^T y||^2 / ||y||^2,   Phi_K = top-K eigenvectors of Theta_0 (K = 50)

Table 1 (App. E.2) gives 26.0% (MLP) and 25.8% (LeNet) at initialization on 12,000
CIFAR2 training samples; the paper does not say how y is encoded, how the inputs are
scaled, or how the networks are parameterized and initialized. Each variant changes one
of these against the baseline (+-1 labels, standardized inputs, the Gram of the 12,000
training samples, ntk_tf's Glorot-initialized standard parameterization):

  pm1           the baseline
  01            labels in {0, 1} (the authors' public code trains on them)
  centered      +-1 labels minus their mean
  raw_inputs    inputs x / 255, not standardized per channel
  flax_init     Flax's default initializers: LeCun-normal kernels (truncated normal,
                variance 1 / fan_in), zero biases
  ntk_param     the NTK parameterization: h = W x / sqrt(fan_in) + b with W ~ N(0, 1),
                b = 0; its Gram is sum_l Theta_l / fan_in_l over the kernels plus the
                biases' Theta_b, each Theta_l the Gram of layer l alone in the standard
                model with weights W / sqrt(fan_in)
  theta0_60k    the Gram of all 60,000 CIFAR-10 images (App. B) and the labels of all of
                them (needs that Gram's top eigenvectors, `eigvecs_60k`)
"""

import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

from absl import logging
import keras
import numpy as np

import ntk_tf

VARIANTS = ("pm1", "01", "centered", "raw_inputs", "flax_init", "ntk_param", "theta0_60k")
# What each variant changes, in the words of Table 1's page.
CONVENTIONS = {
    "pm1": "baseline: y in {-1, 1}, standardized inputs, Glorot init, Gram of the 12,000",
    "01": "labels in {0, 1}",
    "centered": "labels y - mean(y)",
    "raw_inputs": "inputs x / 255, not standardized",
    "flax_init": "Flax's default init (LeCun-normal kernels, zero biases)",
    "ntk_param": "NTK parameterization",
    "theta0_60k": "Gram of all 60,000 CIFAR-10 images, their +-1 labels",
}
PAPER_ENERGY_INIT = {"mlp": 0.260, "lenet": 0.258, "resnet18": 0.227}


def top_eigvecs(gram: np.ndarray, k: int) -> np.ndarray:
  """`[N, k]` top eigenvectors of a Gram (`ntk_tf.eigen`)."""
  return ntk_tf.eigen(gram, k)[1]


def _kernels(model: keras.Model) -> List[Any]:
  return [layer for layer in model.layers
          if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))]


def flax_init(model: keras.Model, seed: int = 0) -> keras.Model:
  """`model` re-initialized as Flax does by default: LeCun-normal kernels, zero biases."""
  rng = np.random.default_rng(seed)
  for layer in _kernels(model):
    kernel = layer.kernel.numpy()
    fan_in = int(np.prod(kernel.shape[:-1]))
    # Truncated at 2 standard deviations, rescaled so that the variance is 1 / fan_in.
    std = np.sqrt(1.0 / fan_in) / 0.87962566103423978
    draw = rng.standard_normal(kernel.shape)
    while np.any(np.abs(draw) > 2):
      bad = np.abs(draw) > 2
      draw[bad] = rng.standard_normal(int(bad.sum()))
    layer.kernel.assign((draw * std).astype(kernel.dtype))
    if layer.use_bias:
      layer.bias.assign(np.zeros(layer.bias.shape, layer.bias.dtype))
  return model


def ntk_param_gram(model: keras.Model, x: np.ndarray, seed: int = 0) -> np.ndarray:
  """The NTK-parameterization Gram of `model`'s architecture (see the module docstring)."""
  rng = np.random.default_rng(seed)
  layers = _kernels(model)
  fan_ins = []
  for layer in layers:  # Standard-model weights W / sqrt(fan_in), W ~ N(0, 1); b = 0.
    shape = layer.kernel.shape
    fan_in = int(np.prod(shape[:-1]))
    fan_ins.append(fan_in)
    layer.kernel.assign((rng.standard_normal(shape) / np.sqrt(fan_in)).astype("float32"))
    if layer.use_bias:
      layer.bias.assign(np.zeros(layer.bias.shape, "float32"))
  gram = np.zeros((len(x), len(x)), np.float64)
  for index, (layer, fan_in) in enumerate(zip(layers, fan_ins)):
    for name, scale in (("kernel", 1.0 / fan_in), ("bias", 1.0)):
      if name == "bias" and not layer.use_bias:
        continue
      # A fresh copy with only this weight trainable: its Gram is Theta_w alone.
      copy = keras.models.clone_model(model)
      copy.set_weights(model.get_weights())
      for other in copy.weights:
        other.trainable = other is getattr(_kernels(copy)[index], name)
      gram += scale * ntk_tf.ntk_gram(copy, x, progress=False)
  return gram


def energy_variants(model_name: str, data_dir: Optional[str] = None, *, train_size: int = 12_000,
                    k: int = 50, seed: int = 0, variants: Sequence[str] = VARIANTS,
                    eigvecs_60k: Optional[np.ndarray] = None,
                    labels_60k: Optional[np.ndarray] = None) -> List[Dict[str, Any]]:
  """One row per variant: {"model", "variant", "energy_init", "num_train", "top_k", "paper",
  "seconds"} (`seconds`: since the previous row, so a shared Gram counts once).

  The 12,000 samples are Table 1's: `ntk_tf.data.load("cifar2", train_size, seed)` as in
  configs/kernel_rotation.py:paper. `theta0_60k` needs `eigvecs_60k` `[60000, >= k]` and
  `labels_60k` `[60000]` (+-1, train then test); it is skipped without them.
  """
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown:
    raise ValueError(f"Unknown variants {unknown}; expected a subset of {VARIANTS}.")
  data = ntk_tf.data.load("cifar2", data_dir=data_dir, train_size=train_size, test_size=1,
                          seed=seed)
  y = data.y_train.astype(np.float64)  # [N] in {-1, +1}
  rows = []

  started = [time.monotonic()]

  def add(variant: str, eigvecs: np.ndarray, labels: np.ndarray) -> None:
    now = time.monotonic()
    rows.append({"model": model_name, "variant": variant, "num_train": len(labels), "top_k": k,
                 "energy_init": float(ntk_tf.energy_concentration(eigvecs, labels, k)),
                 "paper": PAPER_ENERGY_INIT.get(model_name), "seconds": now - started[0]})
    logging.info("label_energy %s %s: %.1f%% (%.0f s)", model_name, variant,
                 100 * rows[-1]["energy_init"], now - started[0])
    started[0] = now

  def build() -> keras.Model:
    return ntk_tf.models.get(model_name, input_shape=data.x_train.shape[1:], seed=seed)

  base = None
  if {"pm1", "01", "centered"} & set(variants):
    base = top_eigvecs(ntk_tf.ntk_gram(build(), data.x_train, progress=False), k)
  if "pm1" in variants:
    add("pm1", base, y)
  if "01" in variants:
    add("01", base, (y + 1) / 2)
  if "centered" in variants:
    add("centered", base, y - y.mean())
  if "raw_inputs" in variants:
    raw = ntk_tf.data.load("cifar2", data_dir=data_dir, train_size=train_size, test_size=1,
                           seed=seed, normalize=False)
    x_raw = raw.x_train.astype(np.float32) / 255.0
    add("raw_inputs", top_eigvecs(ntk_tf.ntk_gram(build(), x_raw, progress=False), k), y)
  if "flax_init" in variants:
    gram = ntk_tf.ntk_gram(flax_init(build(), seed), data.x_train, progress=False)
    add("flax_init", top_eigvecs(gram, k), y)
  if "ntk_param" in variants:
    add("ntk_param", top_eigvecs(ntk_param_gram(build(), data.x_train, seed), k), y)
  if "theta0_60k" in variants and eigvecs_60k is not None and labels_60k is not None:
    add("theta0_60k", np.asarray(eigvecs_60k)[:, :k], np.asarray(labels_60k, np.float64))
  return rows


def summary(rows: Sequence[Mapping[str, Any]]) -> str:
  """A Markdown table: variant, ours, the paper's."""
  lines = ["| model | variant | energy at init, ours | paper |", "| --- | --- | --- | --- |"]
  for r in rows:
    paper = "" if r.get("paper") is None else f"{100 * r['paper']:.1f}%"
    lines.append(f"| {r['model']} | {r['variant']} | {100 * r['energy_init']:.1f}% | {paper} |")
  return "\n".join(lines) + "\n"


def csv_rows(rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
  """`energy_variants` rows as rows of Table 1's CSV (kind "energy_variant", see
  `ntk_tf.reproduce.tables.add_extra_rows`), with each variant's `convention`."""
  return [{"task": f"energy_variant_{r['variant']}", "model": r["model"], "dataset": "cifar2",
           "num_train": r["num_train"], "variant": r["variant"],
           "convention": CONVENTIONS[r["variant"]], "top_k": r["top_k"],
           "energy_init": r["energy_init"], "paper_energy_init": r["paper"],
           "variant_seconds": r["seconds"]} for r in rows]
