"""NAD experiment: learning linear predictors along the NTK's neural anisotropy directions.

    M = E_x[d^2 f / dtheta dx] = U diag(s) V^T,   NADs v_j = rows of V^T     (Theorem 1)
    alpha(g_{v_j}) = ||M v_j||^2 = s_j^2                                      (Eq. 4)
    D(v_j): x = eps y v_j + w,  w ~ N(0, sigma (I - v_j v_j^T)),  y ~ U{-1, 1}  (Eq. 5)

For each chosen index j the network (from theta0, the weights the NADs come from) and
its linearization at theta0 are trained on D(v_j) and tested on fresh samples of D(v_j).
M is taken at the origin x = 0 (App. C.2) unless `nad_sample_size` > 0, which averages
over that many x ~ N(0, I) as in Theorem 1.

Outputs in the workdir (besides config.json, settings.json):
  results.csv            one row per index j: s_j, alpha (recomputed by nad_alignment),
                         network_* and linear_* test accuracy / final train loss
  alignment_curve.csv    j, singular value s_j, alpha_j = s_j^2 for all computed NADs
  nads.npz               the singular values and directions (cached, reused on rerun)
  fig4_accuracy.png      test accuracy against NAD index, network and linearization (Fig. 4 left)
  fig4_alignment.png     alpha(g_{v_j}) against j (Fig. 4 right)
  fig10_nads.png         the first NADs in the spatial domain and |2-D DFT| (Fig. 10)

Paper: Sec. 3.2, Fig. 4, App. C, Fig. 10.
"""

import dataclasses
import json
import pathlib
from typing import Any, Dict, List, Mapping, Optional, Tuple

from absl import logging
import numpy as np

import ntk_tf
from ntk_tf import atomic
from ntk_tf import validation
from ntk_tf.experiments import fields
from ntk_tf.experiments import pipeline
from ntk_tf.experiments import plots
from ntk_tf.experiments import workdir as workdir_lib

NAD_METHODS = tuple(m.value for m in ntk_tf.NadMethod)


def _input_shape(shape: Any, label: str) -> Tuple[int, int, int]:
  if (not isinstance(shape, (list, tuple)) or len(shape) != 3
      or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in shape)):
    raise ValueError(f"{label} must be (H, W, C) positive ints. Received: input_shape={shape!r}")
  return tuple(int(s) for s in shape)


def _num_nads(value: Any, label: str, d: int, method: str) -> int:
  """k, at most d = H * W * C (None: all d); "lanczos" needs k < d."""
  num = d
  if value is not None:
    num = fields.at_most(value, label, maximum=d, bound="d = H*W*C = {maximum}")
  if method == "lanczos" and num >= d:
    raise ValueError(f"config.nad_method 'lanczos' needs num_nads < d = {d}. "
                     f"Received: num_nads={value}")
  return num


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
  """The validated settings of one NAD run (see configs/nads.py)."""
  common: pipeline.Common = fields.block(pipeline.Common)
  model: pipeline.ModelSpec = fields.block(pipeline.read_model)
  input_shape: Tuple[int, int, int] = fields.setting(_input_shape)
  nad_method: str = fields.setting(validation.check_choice, choices=NAD_METHODS)
  num_nads: int = fields.setting(_num_nads, d=lambda s: int(np.prod(s.input_shape)),
                                 method=lambda s: s.nad_method)
  nad_sample_size: int = fields.setting(validation.check_non_negative_int)
  nad_indices: Tuple[int, ...] = fields.setting(fields.int_set, low=1,
                                                high=lambda s: s.num_nads)
  num_images: int = fields.setting(fields.at_most, maximum=lambda s: s.num_nads,
                                   bound="the {maximum} NADs computed")
  train_size: int = fields.setting(validation.check_positive_int)
  test_size: int = fields.setting(validation.check_positive_int)
  eps: float = fields.setting(fields.positive_number)
  sigma: float = fields.setting(fields.positive_number)
  data_seed: int = fields.setting(validation.check_non_negative_int)
  train_seed: int = fields.setting(validation.check_non_negative_int)


describe_outputs = pipeline.describe_outputs  # What the binary prints.


def settings_from_config(config: Mapping[str, Any]) -> Settings:
  """Validates every field (ValueError naming it) before any folder is made."""
  return fields.read(Settings, config)


def _nad_settings(settings: Settings) -> Dict[str, Any]:
  return {"model": dataclasses.asdict(settings.model), "input_shape": list(settings.input_shape),
          "num_nads": settings.num_nads, "nad_method": settings.nad_method,
          "nad_sample_size": settings.nad_sample_size, "data_seed": settings.data_seed}


def compute_nads(settings: Settings, model, workdir: pathlib.Path) -> Tuple[np.ndarray, np.ndarray]:
  """The NADs of `model`: singular values `[k]`, directions `[k, H, W, C]` (cached in nads.npz)."""
  cache, meta = workdir / "nads.npz", workdir / "nads.json"
  fp = workdir_lib.fingerprint(_nad_settings(settings))
  if cache.is_file() and meta.is_file() and json.loads(meta.read_text()).get("fingerprint") == fp:
    with np.load(cache) as saved:
      return saved["singular_values"], saved["directions"]
  x: Optional[np.ndarray] = None
  if settings.nad_sample_size > 0:  # Theorem 1: x ~ N(0, I).
    rng = np.random.default_rng([settings.data_seed, 7])
    x = rng.standard_normal((settings.nad_sample_size,) + settings.input_shape).astype(np.float32)
  logging.info("Computing %d NADs of %s (%s).", settings.num_nads, settings.model.name,
               settings.nad_method)
  singular_values, directions = ntk_tf.nads(model, k=settings.num_nads, x=x,
                                            method=settings.nad_method)
  atomic.write_numpy(cache, np.savez, singular_values=singular_values, directions=directions)
  atomic.write_json(meta, {"fingerprint": fp})
  return np.asarray(singular_values), np.asarray(directions)


def _data_seeds(settings: Settings, j: int) -> Tuple[int, int]:
  """Distinct seeds of the train and test samples of D(v_j)."""
  base = 1_000_003 * settings.data_seed + 2 * j
  return base, base + 1


def run(settings: Settings, workdir: pathlib.Path) -> List[Dict[str, Any]]:
  """Computes the NADs, trains network and linearization on D(v_j) per index, writes figures.

  Resumable: the NADs are cached, each training resumes, finished indices are skipped.

  Returns:
    The rows of results.csv (one per NAD index).
  """
  workdir, store = pipeline.prepare(workdir, settings)
  recipe = settings.common.recipe
  model = settings.model.build(settings.input_shape)
  singular_values, directions = compute_nads(settings, model, workdir)
  alignment = singular_values.astype(np.float64)**2  # [k]: alpha(g_{v_j}) = s_j^2
  lines = ["j,singular_value,alignment"] + [
      f"{j},{s:.10g},{a:.10g}" for j, (s, a) in enumerate(zip(singular_values, alignment), 1)]
  atomic.write_text(workdir / "alignment_curve.csv", "\n".join(lines) + "\n")

  base = {**_nad_settings(settings), "recipe": recipe.to_dict(),
          "train_size": settings.train_size, "test_size": settings.test_size,
          "eps": settings.eps, "sigma": settings.sigma, "train_seed": settings.train_seed}
  keys = []
  for j in settings.nad_indices:
    key = f"nad{j:05d}"
    keys.append(key)
    fp = workdir_lib.fingerprint({**base, "j": j})
    if store.get(key, fp) is not None:
      continue
    v = directions[j - 1]  # [H, W, C]
    train_seed, test_seed = _data_seeds(settings, j)
    x_train, y_train = ntk_tf.separable_dataset(v, settings.train_size, eps=settings.eps,
                                                sigma=settings.sigma, seed=train_seed)
    x_test, y_test = ntk_tf.separable_dataset(v, settings.test_size, eps=settings.eps,
                                              sigma=settings.sigma, seed=test_seed)
    data = pipeline.TaskData(x_train, y_train, x_test, y_test)  # y in {-1, +1}
    # Theorem 1 recomputed for this direction (a check of s_j^2 by another path).
    alpha_j = float(ntk_tf.nad_alignment(model, v[None])[0])
    row = {"j": j, "singular_value": float(singular_values[j - 1]),
           "alignment": float(alignment[j - 1]), "alignment_recomputed": alpha_j}
    for prefix, net in (("network", pipeline.clone_with_weights(model)),
                        ("linear", ntk_tf.linearize(model))):
      result = pipeline.train_task(net, data, recipe=recipe, seed=settings.train_seed,
                                   task_dir=workdir / "runs" / f"{key}_{prefix}", fingerprint=fp,
                                   progress=settings.common.progress)
      row.update(pipeline.summary(result, prefix))
    store.put(key, row, fp)
  rows = store.rows(keys)
  plots.plot_nad_accuracy(rows, settings.model.name, workdir / "fig4_accuracy.png")
  plots.plot_nad_alignment(alignment, workdir / "fig4_alignment.png")
  num = min(settings.num_images, len(directions))
  plots.plot_nads(directions[:num], workdir / "fig10_nads.png",
                  singular_values=singular_values[:num],
                  title=f"First NADs of {settings.model.name} ({settings.model.activation}) "
                        f"(Fig. 10)")
  return rows
