"""NAD experiment: learning linear predictors along the NTK's neural anisotropy directions.

    M = E_x[d^2 f / dtheta dx] = U diag(s) V^T,   NADs v_j = rows of V^T     (Theorem 1)
    alpha(g_{v_j}) = ||M v_j||^2 = s_j^2                                      (Eq. 4)
    D(v_j): x = eps y v_j + w,  w ~ N(0, sigma (I - v_j v_j^T)),  y ~ U{-1, 1}  (Eq. 5)

For each chosen index j the network (from theta0, the weights the NADs come from) and
its linearization at theta0 are trained on D(v_j) and tested on fresh samples of D(v_j).
M is taken at the origin x = 0 (App. C.2) unless `nad_sample_size` > 0, which averages
over that many x ~ N(0, I) as in Theorem 1.

Outputs in the workdir:
  results.csv            one row per index j: s_j, alpha (recomputed by nad_alignment),
                         network_* and linear_* test accuracy / final train loss
  alignment_curve.csv    j, singular value s_j, alpha_j = s_j^2 for all computed NADs
  nads.npz               the singular values and directions (cached, reused on rerun)
  fig4_accuracy.png      test accuracy against NAD index, network and linearization (Fig. 4 left)
  fig4_alignment.png     alpha(g_{v_j}) against j (Fig. 4 right)
  fig10_nads.png         the first NADs in the spatial domain and |2-D DFT| (Fig. 10)

Paper: Sec. 3.2, Fig. 4, App. C, Fig. 10.
"""

import json
import pathlib
from typing import Any, Dict, List, Tuple

from absl import logging
import numpy as np

import ntk_tf
from ntk_tf import data as data_lib
from ntk_tf import nad_plots
from ntk_tf.experiments import runs
from ntk_tf.experiments import workdir as workdir_lib

EXPERIMENT = "nads"
NAD_METHODS = ("dense", "gram", "lanczos")


def _input_size(config: Any) -> int:
  return int(np.prod(config.input_shape))


def _num_nads(config: Any) -> int:
  """How many NADs to compute: config.num_nads, or all d = H * W * C when None."""
  return _input_size(config) if config.num_nads is None else int(config.num_nads)


def validate_config(config: Any) -> ntk_tf.Recipe:
  """Checks every field before any work; returns the recipe. Raises ValueError naming the value."""
  recipe = runs.check_common(config, models_field="model")
  shape = list(config.input_shape)
  if len(shape) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in shape):
    raise ValueError(f"config.input_shape must be (H, W, C) positive ints. "
                     f"Received: input_shape={config.input_shape!r}")
  d = _input_size(config)
  if config.num_nads is not None:
    runs.check_positive_int(config.num_nads, "num_nads")
    if config.num_nads > d:
      raise ValueError(f"config.num_nads must be <= d = H*W*C = {d}. Received: num_nads={config.num_nads}")
  num = _num_nads(config)
  runs.check_int_list(config.nad_indices, "nad_indices", low=1, high=num)
  num_images = runs.check_positive_int(config.num_images, "num_images")
  if num_images > num:
    raise ValueError(f"config.num_images must be <= the {num} NADs computed. "
                     f"Received: num_images={num_images}")
  runs.check_choice(config.nad_method, "nad_method", NAD_METHODS)
  if config.nad_method == "lanczos" and num >= d:
    raise ValueError(f"nad_method 'lanczos' needs num_nads < d = {d}. Received: num_nads={config.num_nads}")
  runs.check_non_negative_int(config.nad_sample_size, "nad_sample_size")
  runs.check_positive_int(config.train_size, "train_size")
  runs.check_positive_int(config.test_size, "test_size")
  runs.check_non_negative_int(config.data_seed, "data_seed")
  for name in ("eps", "sigma"):
    value = config[name]
    if (isinstance(value, bool) or not isinstance(value, (int, float))
        or not np.isfinite(value) or value <= 0):
      raise ValueError(f"config.{name} must be a positive number. Received: {name}={value!r}")
  return recipe


def _nad_settings(config: Any) -> Dict[str, Any]:
  return {"model": config.model, "activation": config.activation,
          "model_seed": config.model_seed, "train_seed": config.train_seed,
          "model_kwargs": runs.model_kwargs(config, config.model),
          "input_shape": list(config.input_shape), "num_nads": _num_nads(config),
          "nad_method": config.nad_method, "nad_sample_size": config.nad_sample_size,
          "data_seed": config.data_seed}


def compute_nads(config: Any, model, workdir: pathlib.Path) -> Tuple[np.ndarray, np.ndarray]:
  """The NADs of `model` (cached in nads.npz with the fingerprint of their settings)."""
  cache, meta = workdir / "nads.npz", workdir / "nads.json"
  fp = workdir_lib.fingerprint(_nad_settings(config))
  if cache.is_file() and meta.is_file() and json.loads(meta.read_text()).get("fingerprint") == fp:
    with np.load(cache) as saved:
      return saved["singular_values"], saved["directions"]
  x = None
  if config.nad_sample_size > 0:  # Theorem 1: x ~ N(0, I).
    rng = np.random.default_rng([config.data_seed, 7])
    x = rng.standard_normal((config.nad_sample_size,) + tuple(config.input_shape)).astype(np.float32)
  logging.info("Computing %d NADs of %s (%s).", _num_nads(config), config.model, config.nad_method)
  singular_values, directions = ntk_tf.nads(model, num=_num_nads(config), x=x,
                                              method=config.nad_method)
  np.savez(cache, singular_values=singular_values, directions=directions)
  workdir_lib.atomic_write_json(meta, {"fingerprint": fp})
  return np.asarray(singular_values), np.asarray(directions)


def _data_seeds(config: Any, j: int) -> Tuple[int, int]:
  """Distinct seeds of the train and test samples of D(v_j)."""
  base = 1_000_003 * config.data_seed + 2 * j
  return base, base + 1


def run(config: Any, workdir: pathlib.Path) -> List[Dict[str, Any]]:
  """Computes the NADs, trains network and linearization on D(v_j) per index, writes figures.

  Resumable: the NADs are cached, each training resumes, finished indices are skipped.

  Args:
    config: see configs/nads.py.
    workdir: output folder.
  Returns:
    The rows of results.csv (one per NAD index).
  """
  recipe = validate_config(config)
  workdir = workdir_lib.prepare(workdir, config)
  store = workdir_lib.ResultStore(workdir)
  progress = bool(config.get("progress", False))
  model = runs.build_model(config, config.model, config.input_shape)
  singular_values, directions = compute_nads(config, model, workdir)
  alignment = singular_values.astype(np.float64)**2  # [k]: alpha(g_{v_j}) = s_j^2
  lines = ["j,singular_value,alignment"] + [
      f"{j},{s:.10g},{a:.10g}" for j, (s, a) in enumerate(zip(singular_values, alignment), 1)]
  workdir_lib.atomic_write_text(workdir / "alignment_curve.csv", "\n".join(lines) + "\n")

  base = {**_nad_settings(config), "recipe": recipe.to_dict(), "train_size": config.train_size,
          "test_size": config.test_size, "eps": config.eps, "sigma": config.sigma}
  keys = []
  for j in sorted(config.nad_indices):
    key = f"nad{j:05d}"
    keys.append(key)
    fp = workdir_lib.fingerprint({**base, "j": j})
    if store.get(key, fp) is not None:
      continue
    v = directions[j - 1]  # [H, W, C]
    train_seed, test_seed = _data_seeds(config, j)
    x_train, y_train = ntk_tf.separable_dataset(v, config.train_size, eps=config.eps,
                                                sigma=config.sigma, seed=train_seed)
    x_test, y_test = ntk_tf.separable_dataset(v, config.test_size, eps=config.eps,
                                              sigma=config.sigma, seed=test_seed)
    y_train01, y_test01 = data_lib.to_01(y_train), data_lib.to_01(y_test)
    # Theorem 1 recomputed for this direction (a check of s_j^2 by another path).
    alpha_j = float(ntk_tf.nad_alignment(model, v[None])[0])
    row = {"j": j, "singular_value": float(singular_values[j - 1]),
           "alignment": float(alignment[j - 1]), "alignment_recomputed": alpha_j}
    for prefix, net in (("network", runs.clone_with_weights(model)),
                        ("linear", ntk_tf.linearize(model))):
      train_dir = runs.fresh_dir(workdir / "runs" / f"{key}_{prefix}", fp)
      result = runs.train_run(net, x_train, y_train01, x_test, y_test01, recipe=recipe,
                              seed=config.train_seed, train_dir=train_dir, progress=progress)
      row.update(runs.history_summary(result, prefix))
    store.put(key, row, fp)
  rows = store.rows(keys)
  plot_all(config, rows, singular_values, directions, workdir)
  return rows


# ----------------------------------------------------------------------------
# Figures.

def plot_all(config: Any, rows: List[Dict[str, Any]], singular_values: np.ndarray,
             directions: np.ndarray, workdir: pathlib.Path) -> None:
  """fig4_accuracy.png, fig4_alignment.png (alpha_j = s_j^2) and fig10_nads.png."""
  alignment = singular_values.astype(np.float64)**2  # [k]
  plt = runs.pyplot()
  rows = sorted(rows, key=lambda r: r["j"])
  js = [r["j"] for r in rows]
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot(js, [r["network_test_acc"] for r in rows], "o-", label=f"{config.model} (network)")
  ax.plot(js, [r["linear_test_acc"] for r in rows], "s--", label="linearized")
  ax.set_xscale("log")
  ax.set_xlabel("NAD index j")
  ax.set_ylabel("test accuracy on D(v_j)")
  ax.set_title("Linear predictors along NADs (Fig. 4 left)")
  ax.legend(fontsize=7)
  runs.save_figure(fig, workdir / "fig4_accuracy.png")

  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.loglog(np.arange(1, len(alignment) + 1), alignment)
  ax.set_xlabel("NAD index j")
  ax.set_ylabel("alpha(g_{v_j}) = s_j^2")
  ax.set_title("Alignment of x -> v_j^T x with the NTK (Fig. 4 right)")
  runs.save_figure(fig, workdir / "fig4_alignment.png")

  num = min(config.num_images, len(directions))
  nad_plots.plot_nads(directions[:num], workdir / "fig10_nads.png",
                      singular_values=singular_values[:num],
                      title=f"First NADs of {config.model} ({config.activation}) (Fig. 10)")
