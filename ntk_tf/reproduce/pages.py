"""The results pages, drawn from the committed CSVs alone: PNGs, <figure>.md, README.md.

`render(out)` reads <out>/<figure>_<model>.csv (tables.py) and writes, for every figure
of figures.FIGURES,

  <figure>_<model>[_<part>].png   the figure (ntk_tf/experiments/plots.py), one per model
  <figure>.md                     the paper's claim; whether it holds in our run, with a
                                  number; our figure and numbers (the paper's beside them
                                  where it gives any); the settings, machine features and
                                  time; what deviates and why; the command
  README.md                       the index: every figure, its status, time and command
  rates.csv                       measured seconds per epoch (tables.rates)

It reads no workdir. The same CSVs give the same bytes: PNGs are drawn on an Agg canvas
at the fixed sizes and dpi of plots.py and stripped of the text chunk naming the
software version; pages hold no dates and no paths outside this folder.

Which function draws a figure is `RENDERERS[figure.page]`.
"""

import dataclasses
import math
import pathlib
import struct
import zlib
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ntk_tf.reproduce import figures as figures_lib
from ntk_tf.reproduce import plan as plan_lib
from ntk_tf.reproduce import tables

Row = Mapping[str, str]
_MODEL_NAMES = {"mlp": "MLP", "lenet": "LeNet", "resnet18": "ResNet18"}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PAPER_OVERLAP = 0.78  # App. B: <sign(phi_j)/sqrt(N), phi_j> of the 60,000-sample Gram


@dataclasses.dataclass
class Section:
  """What a renderer makes of one model's rows."""
  images: List[str]  # PNG file names in the output folder
  body: List[str]  # Markdown lines: tables, notes
  verdict: str  # whether the claim holds, with the number


# ----------------------------------------------------------------------------
# Helpers: numbers, PNGs, tables.

def ranks(values: Sequence[float]) -> np.ndarray:
  """Average ranks (1-based) of `values`; NaN ranks above every number (e.g. "never")."""
  x = np.asarray(values, np.float64)
  x = np.where(np.isnan(x), np.inf, x)
  order = np.argsort(x, kind="stable")
  result = np.empty(len(x))
  sorted_x = x[order]
  start = 0
  while start < len(x):
    stop = start
    while stop + 1 < len(x) and sorted_x[stop + 1] == sorted_x[start]:
      stop += 1
    result[order[start:stop + 1]] = (start + stop) / 2 + 1
    start = stop + 1
  return result


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
  """Spearman's rank correlation (Pearson's of the average ranks); NaN below 3 points."""
  if len(x) < 3:
    return math.nan
  rx, ry = ranks(x), ranks(y)
  if rx.std() == 0 or ry.std() == 0:
    return math.nan
  return float(np.corrcoef(rx, ry)[0, 1])


def _fmt(value: float, digits: int = 3) -> str:
  return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _g(value: float) -> str:
  return "—" if value is None or math.isnan(value) else f"{value:.4g}"


def _pct(value: float) -> str:
  return "—" if math.isnan(value) else f"{100 * value:.1f}%"


def verdict_word(holds: bool, *numbers: float) -> str:
  """"holds" / "does not hold", or "cannot tell yet" where a number is NaN (too few points)."""
  if any(math.isnan(v) for v in numbers):
    return "cannot tell yet (too few points)"
  return "holds" if holds else "does not hold"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  return lines + ["| " + " | ".join(r) + " |" for r in rows]


def strip_software_chunk(path: pathlib.Path) -> None:
  """Removes the PNG text chunk naming the software (matplotlib's version) from `path`."""
  data = path.read_bytes()
  if data[:8] != _PNG_MAGIC:
    raise ValueError(f"Not a PNG file. Received: path={path.name}")
  out, offset = [data[:8]], 8
  while offset < len(data):
    (length,) = struct.unpack(">I", data[offset:offset + 4])
    kind = data[offset + 4:offset + 8]
    chunk = data[offset:offset + 12 + length]
    body = data[offset + 8:offset + 8 + length]
    if not (kind in (b"tEXt", b"iTXt", b"zTXt") and body.split(b"\0", 1)[0] == b"Software"):
      out.append(chunk)
    offset += 12 + length
  path.write_bytes(b"".join(out))


def _drawn(path: pathlib.Path) -> str:
  strip_software_chunk(path)
  return path.name


def _model(name: str) -> str:
  return _MODEL_NAMES.get(name, name)


def _by_kind(rows: Sequence[Row], kind: str) -> List[Row]:
  return [r for r in rows if r.get("kind") == kind]


def _index(row: Row) -> Optional[int]:
  text = row.get("index", "")
  return int(float(text)) if text else None


# ----------------------------------------------------------------------------
# Eigenfunctions (Figs. 2, 3, 11-14).

def _eigen_points(rows: Sequence[Row], kind: str, column: str) -> List[Tuple[int, float]]:
  return sorted((_index(r), tables.number(r, column)) for r in rows
                if r.get("kind") == kind and _index(r) is not None)


def render_eigen_accuracy(spec: figures_lib.FigureSpec, model: str, rows: Sequence[Row],
                          out: pathlib.Path) -> Section:
  from ntk_tf.experiments import plots  # pylint: disable=g-import-not-at-top
  baseline = next((r.get("target") for r in rows if _index(r) is None), "cifar2") or "cifar2"
  drawn = [{"model": model, "kind": r["kind"], "index": _index(r),
            "test_acc": tables.number(r, "test_acc")} for r in rows]
  image = _drawn(plots.plot_test_accuracy(drawn, out / f"{spec.name}_{model}.png", baseline))
  network = dict(_eigen_points(rows, "network", "test_acc"))
  linear = dict(_eigen_points(rows, "linearized", "test_acc"))
  eigvals = {_index(r): tables.number(r, "eigenvalue") for r in rows if _index(r) is not None}
  overlaps = {_index(r): tables.number(r, "overlap") for r in rows if _index(r) is not None}
  body = _table(["j", "λ_j", "test acc, network", "test acc, linearized", "overlap"],
                [[str(j), _g(eigvals[j]), _fmt(network.get(j, math.nan)),
                  _fmt(linear.get(j, math.nan)), _fmt(overlaps[j])] for j in sorted(eigvals)])
  for r in rows:
    if _index(r) is None:
      body.append(f"\n{r['kind'].capitalize()} on {baseline.upper()} (the reference line): "
                  f"test accuracy {_fmt(tables.number(r, 'test_acc'))}, "
                  f"{r.get('epochs')} epochs.")
  mean_overlap = np.nanmean(list(overlaps.values())) if overlaps else math.nan
  body.append(f"\nMean overlap <sign(φ_j)/√N, φ_j> {_fmt(mean_overlap)} (App. B: about "
              f"{_PAPER_OVERLAP}).")
  rho_n = spearman(list(network), list(network.values()))
  rho_l = spearman(list(linear), list(linear.values()))
  both = sorted(set(network) & set(linear))
  ahead = sum(linear[j] >= network[j] for j in both)
  holds = rho_n < 0 and rho_l < 0 and ahead * 2 > len(both)
  verdict = (f"{verdict_word(holds, rho_n, rho_l)}: Spearman ρ(test accuracy, j) "
             f"{_fmt(rho_n, 2)} for the network and {_fmt(rho_l, 2)} for the linearization; "
             f"the linearization is at least as accurate at {ahead} of {len(both)} j")
  crossing = [j for j in both if network[j] > linear[j]]
  if spec.name == "fig12":
    verdict += (f"; the network is above the linearization at j = "
                f"{', '.join(map(str, crossing))}" if crossing else
                "; the curves do not cross")
  return Section([image], body, verdict)


def render_eigen_metrics(spec: figures_lib.FigureSpec, model: str, rows: Sequence[Row],
                         out: pathlib.Path) -> Section:
  from ntk_tf.experiments import plots  # pylint: disable=g-import-not-at-top
  columns = ("steps_to_loss", "l2_distance", "cosine_distance")
  drawn = []
  for r in rows:
    entry = {"model": model, "kind": r["kind"], "index": _index(r)}
    for c in columns:
      value = tables.number(r, c)
      entry[c] = None if math.isnan(value) else value
    drawn.append(entry)
  image = _drawn(plots.plot_training_metrics(drawn, out / f"{spec.name}_{model}.png"))
  points = {(k, c): dict(_eigen_points(rows, k, c)) for k in ("network", "linearized")
            for c in columns}
  js = sorted(set(points[("network", "l2_distance")]) | set(points[("linearized", "l2_distance")]))

  def pair(column: str, j: int, digits: int) -> str:
    values_ = [points[(k, column)].get(j, math.nan) for k in ("network", "linearized")]
    if column == "steps_to_loss":
      return " / ".join("—" if math.isnan(v) else str(int(v)) for v in values_)
    return " / ".join(_fmt(v, digits) for v in values_)

  body = _table(["j", "steps to loss 0.01, network / linearized",
                 "l2 distance, network / linearized", "cosine distance, network / linearized"],
                [[str(j), pair("steps_to_loss", j, 0), pair("l2_distance", j, 2),
                  pair("cosine_distance", j, 3)] for j in js])
  body.append("\n\"—\" in the steps column: the training loss never reached 0.01.")
  rhos = {c: spearman(list(points[("network", c)]), list(points[("network", c)].values()))
          for c in columns}
  holds = all(v > 0 for v in rhos.values())
  verdict = (f"{verdict_word(holds, *rhos.values())} for the network: Spearman ρ with j of "
             f"the steps to loss 0.01 (never = most) {_fmt(rhos['steps_to_loss'], 2)}, of the "
             f"l2 distance {_fmt(rhos['l2_distance'], 2)}, of the cosine distance "
             f"{_fmt(rhos['cosine_distance'], 2)}")
  return Section([image], body, verdict)


# ----------------------------------------------------------------------------
# NADs (Figs. 4, 10).

def render_nad_accuracy(spec: figures_lib.FigureSpec, model: str, rows: Sequence[Row],
                        out: pathlib.Path) -> Section:
  from ntk_tf.experiments import plots  # pylint: disable=g-import-not-at-top
  tasks = sorted((r for r in rows if r.get("kind") == "nad"), key=lambda r: int(r["j"]))
  drawn = [{"j": int(r["j"]), "network_test_acc": tables.number(r, "network_test_acc"),
            "linear_test_acc": tables.number(r, "linear_test_acc")} for r in tasks]
  images = [_drawn(plots.plot_nad_accuracy(drawn, model, out / f"{spec.name}_{model}.png"))]
  curve = next((tables.values(r, "curve_alignment") for r in rows if r.get("kind") == "curve"),
               None)
  if curve:
    images.append(_drawn(plots.plot_nad_alignment(
        np.asarray(curve), out / f"{spec.name}_{model}_alignment.png")))
  body = _table(["j", "α(g_{v_j}) = s_j²", "test acc, network", "test acc, linearized"],
                [[r["j"], _g(tables.number(r, "alignment")),
                  _fmt(tables.number(r, "network_test_acc")),
                  _fmt(tables.number(r, "linear_test_acc"))] for r in tasks])
  js = [d["j"] for d in drawn]
  rho = spearman(js, [d["network_test_acc"] for d in drawn])
  leads = [d["network_test_acc"] - d["linear_test_acc"] for d in drawn]
  ahead = sum(v > 0 for v in leads)
  holds = rho < 0 and ahead * 2 > len(leads)
  verdict = (f"{verdict_word(holds, rho)}: Spearman ρ(network test accuracy, j) "
             f"{_fmt(rho, 2)}; the network beats its linearization at {ahead} of {len(leads)} "
             f"NADs (mean lead {_fmt(np.mean(leads) if leads else math.nan)})")
  return Section(images, body, verdict)


def low_frequency_share(direction: np.ndarray) -> float:
  """The share of mean_c |FFT2(v)| within radius min(H, W) / 4 of zero frequency."""
  from ntk_tf.experiments import plots  # pylint: disable=g-import-not-at-top
  spectrum = plots.nad_spectrum(direction)  # [H, W], zero frequency at the centre
  h, w = spectrum.shape
  rows, cols = np.mgrid[:h, :w]
  near = np.hypot(rows - h // 2, cols - w // 2) <= min(h, w) / 4
  return float(spectrum[near].sum() / spectrum.sum())


def render_nad_images(spec: figures_lib.FigureSpec, model: str, rows: Sequence[Row],
                      out: pathlib.Path) -> Section:
  from ntk_tf.experiments import plots  # pylint: disable=g-import-not-at-top
  found = sorted((r for r in rows if r.get("kind") == "image"), key=lambda r: int(r["j"]))
  if not found:
    return Section([], [], "not yet drawn: no NAD images in the CSV")
  directions = np.stack([np.asarray(tables.values(r, "direction"), np.float64).reshape(
      tables.values(r, "shape")) for r in found])  # [k, H, W, C]
  singular = [tables.number(r, "singular_value") for r in found]
  image = _drawn(plots.plot_nads(directions, out / f"{spec.name}_{model}.png",
                                 singular_values=singular,
                                 title=f"First {len(found)} NADs of {_model(model)} (Fig. 10)"))
  shares = [low_frequency_share(d) for d in directions]
  body = _table(["NAD", "s_j", "share of the Fourier magnitude within radius H/4"],
                [[f"v{r['j']}", _g(s), _fmt(f, 2)] for r, s, f in zip(found, singular, shares)])
  verdict = (f"shown (the paper states no number); the first {len(found)} NADs hold "
             f"{_fmt(float(np.mean(shares)), 2)} of their Fourier magnitude within radius "
             f"H/4 of zero frequency on average")
  return Section([image], body, verdict)


# ----------------------------------------------------------------------------
# Sample size (Fig. 5).

def render_sample_size(spec: figures_lib.FigureSpec, model: str, rows: Sequence[Row],
                       out: pathlib.Path) -> Section:
  from ntk_tf.experiments import plots  # pylint: disable=g-import-not-at-top
  groups: Dict[Tuple[str, int], Dict[int, Row]] = {}
  for r in rows:
    groups.setdefault((r["kind"], int(r["num_train"])), {})[int(r["seed"])] = r
  summary = []
  for (kind, n), by_seed in sorted(groups.items()):
    entry = {"model": model, "kind": kind, "train_size": n}
    for metric in ("test_acc", "l2_distance"):
      v = np.array([tables.number(r, metric) for r in by_seed.values()])
      entry[f"{metric}_mean"], entry[f"{metric}_std"] = float(v.mean()), float(v.std())
    summary.append(entry)
  dataset = rows[0].get("dataset", "cifar2") if rows else "cifar2"
  image = _drawn(plots.plot_sample_size(summary, out / f"{spec.name}_{model}.png", dataset))
  sizes = sorted({n for _, n in groups})

  def lead(n: int) -> Tuple[float, float, int]:
    net, lin = groups.get(("network", n), {}), groups.get(("linearized", n), {})
    seeds = sorted(set(net) & set(lin))
    diffs = np.array([tables.number(net[s], "test_acc") - tables.number(lin[s], "test_acc")
                      for s in seeds])
    return (float(diffs.mean()), float(diffs.std()), len(seeds)) if seeds else (math.nan,
                                                                                  math.nan, 0)

  def mean_std(kind: str, n: int, metric: str, digits: int) -> str:
    entry = next((e for e in summary if e["kind"] == kind and e["train_size"] == n), None)
    if entry is None:
      return "—"
    return f"{_fmt(entry[metric + '_mean'], digits)} ± {_fmt(entry[metric + '_std'], digits)}"

  body = _table(["n", "test acc, network", "test acc, linearized", "network's lead (seeds)",
                 "l2 distance, network", "l2 distance, linearized"],
                [[f"{n:,}", mean_std("network", n, "test_acc", 3),
                  mean_std("linearized", n, "test_acc", 3),
                  f"{_fmt(lead(n)[0])} ± {_fmt(lead(n)[1])} ({lead(n)[2]})",
                  mean_std("network", n, "l2_distance", 2),
                  mean_std("linearized", n, "l2_distance", 2)] for n in sizes])
  body.append("\nMean ± standard deviation over seeds, at the saturation epoch.")
  if not sizes:
    return Section([image], body, "not yet measured")
  small, large = lead(sizes[0]), lead(sizes[-1])
  holds = large[0] > 0 and large[0] > small[0]
  verdict = (f"{verdict_word(holds, large[0], small[0])}: the network's lead is "
             f"{_fmt(large[0])} ± {_fmt(large[1])} at n = {sizes[-1]:,} against "
             f"{_fmt(small[0])} ± {_fmt(small[1])} at n = {sizes[0]:,} "
             f"({large[2]} and {small[2]} seeds)")
  return Section([image], body, verdict)


# ----------------------------------------------------------------------------
# Kernel rotation (Figs. 6, 7, 15, 16, Table 1).

def _config(rows: Sequence[Row]) -> Dict:
  return next((tables.values(r, "config") for r in rows if r.get("config")), None) or {}


def render_energy(spec: figures_lib.FigureSpec, model: str, rows: Sequence[Row],
                  out: pathlib.Path) -> Section:
  from ntk_tf.experiments import plots  # pylint: disable=g-import-not-at-top
  epochs = sorted(_by_kind(rows, "epoch"), key=lambda r: int(r["epoch"]))
  top_k = _config(rows).get("top_k", 50)
  curves = {f"{_model(model)}, y in {{-1, 1}}": [(int(r["epoch"]), tables.number(r, "energy_top_k"))
                                                  for r in epochs],
            f"{_model(model)}, y in {{0, 1}}": [(int(r["epoch"]),
                                                 tables.number(r, "energy_top_k_01"))
                                                for r in epochs]}
  image = _drawn(plots.plot_energy(curves, top_k, out / f"{spec.name}_{model}.png"))
  body = _table(["epoch", "E, y in {-1, 1}", "E, y in {0, 1}", "test acc"],
                [[r["epoch"], _pct(tables.number(r, "energy_top_k")),
                  _pct(tables.number(r, "energy_top_k_01")), _fmt(tables.number(r, "test_acc"))]
                 for r in epochs])
  if len(epochs) < 2:
    return Section([image], body, "not yet measured")
  first, last = epochs[0], epochs[-1]
  rises = [tables.number(last, c) > tables.number(first, c) for c in ("energy_top_k",
                                                                        "energy_top_k_01")]
  energies = [tables.number(r, c) for r in (first, last) for c in ("energy_top_k",
                                                                   "energy_top_k_01")]
  verdict = (f"{verdict_word(all(rises), *energies)}: E grows from "
             f"{_pct(tables.number(first, 'energy_top_k'))} to "
             f"{_pct(tables.number(last, 'energy_top_k'))} with y in {{-1, 1}} and from "
             f"{_pct(tables.number(first, 'energy_top_k_01'))} to "
             f"{_pct(tables.number(last, 'energy_top_k_01'))} with y in {{0, 1}} "
             f"(epoch {first['epoch']} to {last['epoch']}, K = {top_k})")
  return Section([image], body, verdict)


def render_table1(spec: figures_lib.FigureSpec, model: str, rows: Sequence[Row],
                  out: pathlib.Path) -> Section:
  del out
  summary = next((r for r in rows if r.get("kind") == "summary"), None)
  if summary is None:
    return Section([], [], "not yet measured")
  paper = (spec.paper_numbers or {}).get(model, {})

  def paper_pct(key: str) -> str:
    return f"{paper[key]:.1f}%" if key in paper else "—"

  body = _table(["", "ours, y in {-1, 1}", "ours, y in {0, 1}", "paper"],
                [["Energy conc. (init)", _pct(tables.number(summary, "energy_init")),
                  _pct(tables.number(summary, "energy_init_01")), paper_pct("energy_init")],
                 ["Energy conc. (end)", _pct(tables.number(summary, "energy_end")),
                  _pct(tables.number(summary, "energy_end_01")), paper_pct("energy_end")],
                 ["Test accuracy", _pct(tables.number(summary, "test_acc")), "",
                  paper_pct("test_acc")]])
  init, end = tables.number(summary, "energy_init"), tables.number(summary, "energy_end")
  verdict = (f"{verdict_word(end > init, init, end)} in direction: {_pct(init)} -> "
             f"{_pct(end)} (y in {{-1, 1}}), "
             f"{_pct(tables.number(summary, 'energy_init_01'))} -> "
             f"{_pct(tables.number(summary, 'energy_end_01'))} (y in {{0, 1}}); the paper "
             f"{paper_pct('energy_init')} -> {paper_pct('energy_end')}")
  return Section([], body, verdict)


def render_alignment(spec: figures_lib.FigureSpec, model: str, rows: Sequence[Row],
                     out: pathlib.Path) -> Section:
  from ntk_tf.experiments import plots  # pylint: disable=g-import-not-at-top
  summaries = sorted(_by_kind(rows, "summary"), key=lambda r: int(r["target"][3:]))
  images, table_rows, missing = [], [], []
  ranked_first = 0
  for summary in summaries:
    target = summary["target"]
    j = int(target[3:])
    epochs = sorted((r for r in _by_kind(rows, "epoch") if r["target"] == target),
                    key=lambda r: int(r["epoch"]))
    alphas = [tables.values(r, "alpha") for r in (epochs[0], epochs[-1])] if epochs else []
    if len(alphas) == 2 and all(alphas):
      images.append(_drawn(plots.plot_alignment(
          np.asarray(alphas[0]), np.asarray(alphas[-1]),
          (int(epochs[0]["epoch"]), int(epochs[-1]["epoch"])),
          f"{_model(model)}, trained on {target} ({spec.name})",
          out / f"{spec.name}_{model}_{target}.png", j)))
    else:
      missing.append(target)
    rank = tables.number(summary, "target_rank")
    ranked_first += rank == 1
    table_rows.append([f"φ_{j}", _g(tables.number(summary, "ratio_target")),
                       f"{_g(tables.number(summary, 'ratio_others_max'))} / "
                       f"{_g(tables.number(summary, 'ratio_others_median'))}",
                       "—" if math.isnan(rank) else str(int(rank)),
                       _fmt(tables.number(summary, "test_acc"))])
  body = _table(["trained on", "α_T/α_0 of the target", "others: max / median",
                 "target's rank by ratio", "test acc"], table_rows)
  if missing:
    body.append(f"\nNot drawn for {', '.join(missing)}: the alphas of every eigenfunction per "
                f"epoch are not in the CSV (not kept by the run that made these rows); "
                f"rerun: `{page_command(spec, [model], 'paper')}`.")
  verdict = (f"{'holds' if summaries and ranked_first == len(summaries) else 'does not hold'}:"
             f" the trained-on eigenfunction's alignment grows most (rank 1 of "
             f"{_config(rows).get('num_alignment', '?')} by α_T/α_0) for {ranked_first} of "
             f"{len(summaries)} targets")
  return Section(images, body, verdict)


# ----------------------------------------------------------------------------
# Late linearization (Figs. 8, 9).

def _late_row(rows: Sequence[Row], task: str) -> Optional[Row]:
  return next((r for r in rows if r.get("task") == task), None)


def render_late_training(spec: figures_lib.FigureSpec, model: str, rows: Sequence[Row],
                         out: pathlib.Path) -> Section:
  from ntk_tf.experiments import plots  # pylint: disable=g-import-not-at-top
  runs = (("network", _model(model)), ("offset_t0000", "linearized at theta0 (Eq. 1)"),
          ("linear_star", "unbiased lin. at theta_star"))
  found = {task: _late_row(rows, task) for task, _ in runs}
  if not all(found.values()):
    return Section([], [], "not yet measured")
  histories = {label: {c: np.asarray(tables.values(found[task], f"history_{c}"))
                       for c in ("epoch", "train_loss", "test_acc")} for task, label in runs}
  j = int(float(found["network"].get("eigenfunction_index") or 0))
  image = _drawn(plots.plot_late_training(histories, j, out / f"{spec.name}_{model}.png"))

  def steps(row: Row) -> str:
    value = tables.number(row, "steps_to_loss")
    return "—" if math.isnan(value) else str(int(value))

  body = _table(["model", "final train loss", "steps to loss 0.01", "test acc"],
                [[label, _g(tables.number(found[t], "train_loss")), steps(found[t]),
                  _fmt(tables.number(found[t], "test_acc"))] for t, label in runs])
  loss = {t: tables.number(found[t], "train_loss") for t, _ in runs}
  acc = {t: tables.number(found[t], "test_acc") for t, _ in runs}
  holds = (loss["network"] < loss["offset_t0000"] and loss["linear_star"] < loss["offset_t0000"]
           and acc["linear_star"] < acc["offset_t0000"])
  verdict = (f"{'holds' if holds else 'does not hold'}: final training loss "
             f"{_g(loss['network'])} (network), {_g(loss['offset_t0000'])} (linearized at "
             f"θ0), {_g(loss['linear_star'])} (at θ*); test accuracy "
             f"{_fmt(acc['offset_t0000'])} at θ0 against {_fmt(acc['linear_star'])} at θ*")
  return Section([image], body, verdict)


def render_pretraining(spec: figures_lib.FigureSpec, model: str, rows: Sequence[Row],
                       out: pathlib.Path) -> Section:
  from ntk_tf.experiments import plots  # pylint: disable=g-import-not-at-top
  network = _late_row(rows, "network")
  linear = _by_kind(rows, "linear_pretrained")
  if network is None or not linear:
    return Section([], [], "not yet measured")
  forms = sorted({r["form"] for r in linear}, key=lambda f: (f != "unbiased", f))
  curves = {form: sorted((float(r["pretrain_epoch"]), tables.number(r, "test_acc"))
                         for r in linear if r["form"] == form) for form in forms}
  labels = {f: (f"{f} (theta - theta0)^T grad f_t" if f == "unbiased" else
                f"{f}: f_t + (theta - theta0)^T grad f_t") for f in forms}
  j = int(float(network.get("eigenfunction_index") or 0))
  image = _drawn(plots.plot_pretraining({labels[f]: curves[f] for f in forms},
                                        tables.number(network, "test_acc"), _model(model), j,
                                        out / f"{spec.name}_{model}.png"))
  epochs = sorted({t for c in curves.values() for t, _ in c})
  body = _table(["pretraining epochs t"] + [f"test acc, {f}" for f in forms],
                [[str(int(t))] + [_fmt(dict(curves[f]).get(t, math.nan)) for f in forms]
                 for t in epochs])
  body.append(f"\nThe network itself: test accuracy {_fmt(tables.number(network, 'test_acc'))}.")
  main = curves[forms[0]]
  rho = spearman([t for t, _ in main], [a for _, a in main])
  holds = rho < 0 and main[-1][1] < main[0][1]
  verdict = (f"{verdict_word(holds, rho)} for the {forms[0]} form: test accuracy "
             f"{_fmt(main[0][1])} at t = {int(main[0][0])}, {_fmt(main[-1][1])} at t = "
             f"{int(main[-1][0])}, Spearman ρ(accuracy, t) {_fmt(rho, 2)}")
  return Section([image], body, verdict)


RENDERERS: Dict[str, Callable[[figures_lib.FigureSpec, str, Sequence[Row], pathlib.Path],
                              Section]] = {
    "eigen_accuracy": render_eigen_accuracy,
    "eigen_metrics": render_eigen_metrics,
    "nad_accuracy": render_nad_accuracy,
    "nad_images": render_nad_images,
    "sample_size": render_sample_size,
    "energy": render_energy,
    "table1": render_table1,
    "alignment": render_alignment,
    "late_training": render_late_training,
    "pretraining": render_pretraining,
}


# ----------------------------------------------------------------------------
# Pages.

def page_command(spec: figures_lib.FigureSpec, models: Sequence[str], scale: str) -> str:
  models = ",".join(models)
  return (f"bazel run //binaries:reproduce -- --figure={spec.name} --models={models} "
          f"--scale={scale} --workdir=runs/{scale}")


def _settings_rows(data: Mapping[str, Sequence[Row]]) -> List[List[str]]:
  """The settings table: a row per setting, a column per model."""

  def distinct(rows: Sequence[Row], column: str) -> str:
    found = sorted({r.get(column, "") for r in rows if r.get(column, "")},
                   key=lambda v: (len(v), v))
    return ", ".join(found) or "—"

  def variant(rows: Sequence[Row]) -> str:
    config = _config(rows)
    return f"configs/{config.get('experiment')}.py:{config.get('variant')}" if config else "—"

  def sizes(rows: Sequence[Row]) -> str:
    pairs = sorted({(int(r["num_train"]), int(r["num_test"])) for r in rows
                    if r.get("num_train") and r.get("num_test")})
    return ", ".join(f"{a:,} / {b:,}" for a, b in pairs) or "—"

  models = list(data)
  table = [["scale"] + [distinct(data[m], "scale") for m in models],
           ["config"] + [variant(data[m]) for m in models],
           ["dataset"] + [distinct(data[m], "dataset") for m in models],
           ["train / test samples"] + [sizes(data[m]) for m in models],
           ["epochs"] + [distinct(data[m], "epochs") for m in models],
           ["seeds"] + [distinct(data[m], "seed") for m in models],
           ["optimizer"] + [distinct(data[m], "optimizer") for m in models],
           ["machine"] + [distinct(data[m], "machine") for m in models],
           ["rows from"] + [distinct(data[m], "source") for m in models],
           ["settings_id"] + [distinct(data[m], "settings_id") for m in models]]
  return table


def figure_seconds(rows: Sequence[Row]) -> Tuple[float, float]:
  """(sum of `seconds`, sum of `wall_seconds`) over a CSV's task rows."""
  task_rows = [r for r in rows if r.get("kind") not in tables.EXTRA_KINDS]
  seconds = [tables.number(r, "seconds") for r in task_rows]
  wall = [tables.number(r, "wall_seconds") for r in task_rows]
  return (float(np.nansum(seconds)) if seconds else 0.0,
          float(np.nansum(wall)) if wall else 0.0)


def _time_text(rows: Sequence[Row]) -> str:
  seconds, wall = figure_seconds(rows)
  parts = []
  if wall > 0:
    parts.append(f"{plan_lib.format_seconds(wall)} of wall time (all steps)")
  if seconds > 0:
    parts.append(f"{plan_lib.format_seconds(seconds)} of training (the tasks' `seconds`)")
  return "; ".join(parts) or "not recorded"


def _status(data: Mapping[str, Sequence[Row]]) -> Dict[str, Tuple[int, int]]:
  return {m: tables.status(rows) for m, rows in data.items()}


def _status_text(done: int, planned: int) -> str:
  if planned and done >= planned:
    return f"complete ({done} of {planned} tasks)"
  return f"in progress: {done} of {planned} tasks"


def render_page(spec: figures_lib.FigureSpec, data: Mapping[str, Sequence[Row]],
                out: pathlib.Path) -> str:
  """The Markdown page of one figure (and its PNGs in `out`)."""
  lines = [f"# {spec.name}: {spec.title} ({spec.section})", "",
           "<!-- Generated by `bazel run //binaries:reproduce -- --render` from "
           f"{spec.name}_<model>.csv; do not edit. -->", "",
           f"**The paper's claim.** {spec.claim}", ""]
  models = [m for m in figures_lib.MODELS if m in data]
  defaults = [m for m in figures_lib.DEFAULT_MODELS if m in spec.models]
  if not models:
    lines += ["**Status.** Not started: no rows committed.", "", "## Reproduce", "",
              "```bash", page_command(spec, defaults, "paper"), "```", ""]
    lines += _deviations(spec, data)
    return "\n".join(lines)
  sections = {m: RENDERERS[spec.page](spec, m, data[m], out) for m in models}
  status = _status(data)
  lines.append("**Does it hold in our runs?**")
  lines += [f"- {_model(m)} ({_scale(data[m])} scale): {sections[m].verdict}." for m in models]
  lines += ["", "**Status.** " + "; ".join(
      f"{_model(m)}: {_status_text(*status[m])}" for m in models) + ".", ""]
  for m in models:
    lines += [f"## {_model(m)}", ""]
    lines += [f"![{spec.name}, {_model(m)}]({image})" for image in sections[m].images]
    if sections[m].images:
      lines.append("")
    lines += sections[m].body + [""]
  lines += ["## Settings", ""]
  lines += _table([""] + [_model(m) for m in models], _settings_rows({m: data[m] for m in models}))
  lines += ["", "## Time", ""]
  lines += [f"- {_model(m)}: {_time_text(data[m])}." for m in models]
  lines.append("")
  lines += _deviations(spec, data)
  scale = _scale(data[models[0]])
  lines += ["## Reproduce", "", "```bash", page_command(spec, models, scale), "```", ""]
  return "\n".join(lines)


def _scale(rows: Sequence[Row]) -> str:
  return next((r["scale"] for r in rows if r.get("scale")), "?")


def _deviations(spec: figures_lib.FigureSpec, data: Mapping[str, Sequence[Row]]) -> List[str]:
  items = list(spec.notes)
  scales = {_scale(rows) for rows in data.values()}
  for scale in sorted(scales - {"paper"}):
    items.append(f"Rows at the {scale} scale: the config's {scale} variant (smaller data, "
                 f"fewer epochs), not the paper's settings.")
  shown = [m for m in spec.paper_models if m not in data]
  if "resnet18" in shown:
    items.append(f"ResNet18 (which the paper shows) {figures_lib.GPU_NOTE}: "
                 f"`{page_command(spec, ['resnet18'], 'paper')}` on a GPU machine.")
  extra = [m for m in figures_lib.MODELS if m in data and m not in spec.paper_models]
  if extra:
    items.append(f"{', '.join(_model(m) for m in extra)}: not in the paper's figure; the same "
                 f"protocol on another architecture.")
  if any(r.get("source", "").startswith("legacy") for rows in data.values() for r in rows):
    items.append("Rows from before this tool (source \"legacy\"): no fingerprint or wall time "
                 "was recorded, and a task resumed after a stop counts only its last stretch "
                 "in `seconds`.")
  if not items:
    return []
  return ["## Deviations from the paper", ""] + [f"- {i}" for i in items] + [""]


def render_index(pages: Mapping[str, Mapping[str, Sequence[Row]]]) -> str:
  """README.md: every figure with its status, time and command."""
  lines = ["# The paper's figures and tables, reproduced", "",
           "<!-- Generated by `bazel run //binaries:reproduce -- --render` from the CSVs in "
           "this folder; do not edit. -->", "",
           "One page per figure: the paper's claim, whether it holds in our runs, our figure "
           "and numbers, the settings, the machine and the time. Each is drawn from its "
           "committed CSVs `<figure>_<model>.csv`; `rates.csv` holds the measured seconds per "
           "epoch the plans estimate with.", ""]
  table = []
  for name, spec in figures_lib.FIGURES.items():
    data = pages[name]
    models = [m for m in figures_lib.MODELS if m in data]
    status = _status(data)
    text = "; ".join(f"{_model(m)} {status[m][0]}/{status[m][1]} ({_scale(data[m])})"
                     for m in models) or "not started"
    wall = sum(figure_seconds(data[m])[1] or figure_seconds(data[m])[0] for m in models)
    defaults = [m for m in figures_lib.DEFAULT_MODELS if m in spec.models]
    scale = _scale(data[models[0]]) if models else "paper"
    table.append([f"[{name}]({name}.md)", f"{spec.title} ({spec.section})", text,
                  plan_lib.format_seconds(wall) if wall else "—",
                  f"`{page_command(spec, models or defaults, scale)}`"])
  lines += _table(["figure", "what", "tasks done (scale)", "time", "command"], table)
  lines += ["", "Time: wall time of the rows where recorded, else the trainings' `seconds`; "
            "a page gives both.", ""]
  return "\n".join(lines)


def render(out: pathlib.Path) -> List[pathlib.Path]:
  """Rebuilds every page, PNG, the index and rates.csv in `out` from its CSVs alone."""
  out.mkdir(parents=True, exist_ok=True)
  found = tables.figure_csvs(out)
  pages = {name: {m: tables.read_csv(p) for (f, m), p in sorted(found.items()) if f == name}
           for name in figures_lib.NAMES}
  written = []
  for name, spec in figures_lib.FIGURES.items():
    path = out / f"{name}.md"
    path.write_text(render_page(spec, pages[name], out))
    written.append(path)
  index = out / "README.md"
  index.write_text(render_index(pages))
  written += [index, tables.write_rates(out)]
  return written
