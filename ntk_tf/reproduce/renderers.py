"""The figure of each page kind, drawn from one model's CSV rows: `RENDERERS[figure.page]`.

Each renderer draws its PNGs in the output folder (ntk_tf/experiments/plots.py) and
returns a `markdown.Section`: the image names, the tables and notes, and the verdict on
the paper's claim with its number.
"""

import math
import pathlib
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ntk_tf.reproduce import figures as figures_lib
from ntk_tf.reproduce import markdown as md
from ntk_tf.reproduce import tables

_PAPER_OVERLAP = 0.78  # App. B: <sign(phi_j)/sqrt(N), phi_j> of the 60,000-sample Gram


# ----------------------------------------------------------------------------
# Eigenfunctions (Figs. 2, 3, 11-14).

def _eigen_points(rows: Sequence[md.Row], kind: str, column: str) -> List[Tuple[int, float]]:
  return sorted((md.row_index(r), tables.number(r, column)) for r in rows
                if r.get("kind") == kind and md.row_index(r) is not None)


def render_eigen_accuracy(spec: figures_lib.FigureSpec, model: str, rows: Sequence[md.Row],
                          out: pathlib.Path) -> md.Section:
  from ntk_tf.experiments import plots  # pylint: disable=g-import-not-at-top
  baseline = next((r.get("target") for r in rows if md.row_index(r) is None), "cifar2") or "cifar2"
  drawn = [{"model": model, "kind": r["kind"], "index": md.row_index(r),
            "test_acc": tables.number(r, "test_acc")} for r in rows]
  image = md.drawn(plots.plot_test_accuracy(drawn, out / f"{spec.name}_{model}.png", baseline))
  network = dict(_eigen_points(rows, "network", "test_acc"))
  linear = dict(_eigen_points(rows, "linearized", "test_acc"))
  indexed = [r for r in rows if md.row_index(r) is not None]
  eigvals = {md.row_index(r): tables.number(r, "eigenvalue") for r in indexed}
  overlaps = {md.row_index(r): tables.number(r, "overlap") for r in indexed}
  body = md.table(["j", "λ_j", "test acc, network", "test acc, linearized", "overlap"],
                  [[str(j), md.g(eigvals[j]), md.fmt(network.get(j, math.nan)),
                    md.fmt(linear.get(j, math.nan)), md.fmt(overlaps[j])] for j in sorted(eigvals)])
  for r in rows:
    if md.row_index(r) is None:
      body.append(f"\n{r['kind'].capitalize()} on {baseline.upper()} (the reference line): "
                  f"test accuracy {md.fmt(tables.number(r, 'test_acc'))}, "
                  f"{r.get('epochs')} epochs.")
  mean_overlap = np.nanmean(list(overlaps.values())) if overlaps else math.nan
  body.append(f"\nMean overlap <sign(φ_j)/√N, φ_j> {md.fmt(mean_overlap)} (App. B: about "
              f"{_PAPER_OVERLAP}).")
  rho_n = md.spearman(list(network), list(network.values()))
  rho_l = md.spearman(list(linear), list(linear.values()))
  both = sorted(set(network) & set(linear))
  ahead = sum(linear[j] >= network[j] for j in both)
  holds = rho_n < 0 and rho_l < 0 and ahead * 2 > len(both)
  verdict = (f"{md.verdict_word(holds, rho_n, rho_l)}: Spearman ρ(test accuracy, j) "
             f"{md.fmt(rho_n, 2)} for the network and {md.fmt(rho_l, 2)} for the linearization; "
             f"the linearization is at least as accurate at {ahead} of {len(both)} j")
  crossing = [j for j in both if network[j] > linear[j]]
  if spec.name == "fig12":
    verdict += (f"; the network is above the linearization at j = "
                f"{', '.join(map(str, crossing))}" if crossing else
                "; the curves do not cross")
  return md.Section([image], body, verdict)


def render_eigen_metrics(spec: figures_lib.FigureSpec, model: str, rows: Sequence[md.Row],
                         out: pathlib.Path) -> md.Section:
  from ntk_tf.experiments import plots  # pylint: disable=g-import-not-at-top
  columns = ("steps_to_loss", "l2_distance", "cosine_distance")
  drawn = []
  for r in rows:
    entry = {"model": model, "kind": r["kind"], "index": md.row_index(r)}
    for c in columns:
      value = tables.number(r, c)
      entry[c] = None if math.isnan(value) else value
    drawn.append(entry)
  image = md.drawn(plots.plot_training_metrics(drawn, out / f"{spec.name}_{model}.png"))
  points = {(k, c): dict(_eigen_points(rows, k, c)) for k in ("network", "linearized")
            for c in columns}
  js = sorted(set(points[("network", "l2_distance")]) | set(points[("linearized", "l2_distance")]))

  def pair(column: str, j: int, digits: int) -> str:
    values_ = [points[(k, column)].get(j, math.nan) for k in ("network", "linearized")]
    if column == "steps_to_loss":
      return " / ".join("—" if math.isnan(v) else str(int(v)) for v in values_)
    return " / ".join(md.fmt(v, digits) for v in values_)

  body = md.table(["j", "steps to loss 0.01, network / linearized",
                   "l2 distance, network / linearized", "cosine distance, network / linearized"],
                  [[str(j), pair("steps_to_loss", j, 0), pair("l2_distance", j, 2),
                    pair("cosine_distance", j, 3)] for j in js])
  body.append("\n\"—\" in the steps column: the training loss never reached 0.01.")
  rhos = {c: md.spearman(list(points[("network", c)]), list(points[("network", c)].values()))
          for c in columns}
  holds = all(v > 0 for v in rhos.values())
  verdict = (f"{md.verdict_word(holds, *rhos.values())} for the network: Spearman ρ with j of "
             f"the steps to loss 0.01 (never = most) {md.fmt(rhos['steps_to_loss'], 2)}, of the "
             f"l2 distance {md.fmt(rhos['l2_distance'], 2)}, of the cosine distance "
             f"{md.fmt(rhos['cosine_distance'], 2)}")
  return md.Section([image], body, verdict)


# ----------------------------------------------------------------------------
# NADs (Figs. 4, 10).

def render_nad_accuracy(spec: figures_lib.FigureSpec, model: str, rows: Sequence[md.Row],
                        out: pathlib.Path) -> md.Section:
  from ntk_tf.experiments import plots  # pylint: disable=g-import-not-at-top
  tasks = sorted((r for r in rows if r.get("kind") == "nad"), key=lambda r: int(r["j"]))
  drawn = [{"j": int(r["j"]), "network_test_acc": tables.number(r, "network_test_acc"),
            "linear_test_acc": tables.number(r, "linear_test_acc")} for r in tasks]
  images = [md.drawn(plots.plot_nad_accuracy(drawn, model, out / f"{spec.name}_{model}.png"))]
  curve = next((tables.values(r, "curve_alignment") for r in rows if r.get("kind") == "curve"),
               None)
  if curve:
    images.append(md.drawn(plots.plot_nad_alignment(
        np.asarray(curve), out / f"{spec.name}_{model}_alignment.png")))
  body = md.table(["j", "α(g_{v_j}) = s_j²", "test acc, network", "test acc, linearized"],
                  [[r["j"], md.g(tables.number(r, "alignment")),
                    md.fmt(tables.number(r, "network_test_acc")),
                    md.fmt(tables.number(r, "linear_test_acc"))] for r in tasks])
  js = [d["j"] for d in drawn]
  rho = md.spearman(js, [d["network_test_acc"] for d in drawn])
  leads = [d["network_test_acc"] - d["linear_test_acc"] for d in drawn]
  ahead = sum(v > 0 for v in leads)
  holds = rho < 0 and ahead * 2 > len(leads)
  verdict = (f"{md.verdict_word(holds, rho)}: Spearman ρ(network test accuracy, j) "
             f"{md.fmt(rho, 2)}; the network beats its linearization at {ahead} of {len(leads)} "
             f"NADs (mean lead {md.fmt(np.mean(leads) if leads else math.nan)})")
  return md.Section(images, body, verdict)


def low_frequency_share(direction: np.ndarray) -> float:
  """The share of mean_c |FFT2(v)| within radius min(H, W) / 4 of zero frequency."""
  from ntk_tf.experiments import plots  # pylint: disable=g-import-not-at-top
  spectrum = plots.nad_spectrum(direction)  # [H, W], zero frequency at the centre
  h, w = spectrum.shape
  rows, cols = np.mgrid[:h, :w]
  near = np.hypot(rows - h // 2, cols - w // 2) <= min(h, w) / 4
  return float(spectrum[near].sum() / spectrum.sum())


def render_nad_images(spec: figures_lib.FigureSpec, model: str, rows: Sequence[md.Row],
                      out: pathlib.Path) -> md.Section:
  from ntk_tf.experiments import plots  # pylint: disable=g-import-not-at-top
  found = sorted((r for r in rows if r.get("kind") == "image"), key=lambda r: int(r["j"]))
  if not found:
    return md.Section([], [], "not yet drawn: no NAD images in the CSV")
  directions = np.stack([np.asarray(tables.values(r, "direction"), np.float64).reshape(
      tables.values(r, "shape")) for r in found])  # [k, H, W, C]
  singular = [tables.number(r, "singular_value") for r in found]
  title = f"First {len(found)} NADs of {md.model_name(model)} (Fig. 10)"
  image = md.drawn(plots.plot_nads(directions, out / f"{spec.name}_{model}.png",
                                   singular_values=singular, title=title))
  shares = [low_frequency_share(d) for d in directions]
  body = md.table(["NAD", "s_j", "share of the Fourier magnitude within radius H/4"],
                  [[f"v{r['j']}", md.g(s), md.fmt(f, 2)]
                   for r, s, f in zip(found, singular, shares)])
  verdict = (f"shown (the paper states no number); the first {len(found)} NADs hold "
             f"{md.fmt(float(np.mean(shares)), 2)} of their Fourier magnitude within radius "
             f"H/4 of zero frequency on average")
  return md.Section([image], body, verdict)


# ----------------------------------------------------------------------------
# Sample size (Fig. 5).

def render_sample_size(spec: figures_lib.FigureSpec, model: str, rows: Sequence[md.Row],
                       out: pathlib.Path) -> md.Section:
  from ntk_tf.experiments import plots  # pylint: disable=g-import-not-at-top
  groups: Dict[Tuple[str, int], Dict[int, md.Row]] = {}
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
  image = md.drawn(plots.plot_sample_size(summary, out / f"{spec.name}_{model}.png", dataset))
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
    return f"{md.fmt(entry[metric + '_mean'], digits)} ± {md.fmt(entry[metric + '_std'], digits)}"

  body = md.table(["n", "test acc, network", "test acc, linearized", "network's lead (seeds)",
                   "l2 distance, network", "l2 distance, linearized"],
                  [[f"{n:,}", mean_std("network", n, "test_acc", 3),
                    mean_std("linearized", n, "test_acc", 3),
                    f"{md.fmt(lead(n)[0])} ± {md.fmt(lead(n)[1])} ({lead(n)[2]})",
                    mean_std("network", n, "l2_distance", 2),
                    mean_std("linearized", n, "l2_distance", 2)] for n in sizes])
  body.append("\nMean ± standard deviation over seeds, at the saturation epoch.")
  if not sizes:
    return md.Section([image], body, "not yet measured")
  if len(sizes) < 2:  # The claim compares small and large training sets.
    return md.Section([image], body, f"not yet judged: only n = {sizes[0]:,} is measured")
  small, large = lead(sizes[0]), lead(sizes[-1])
  holds = large[0] > 0 and large[0] > small[0]
  verdict = (f"{md.verdict_word(holds, large[0], small[0])}: the network's lead is "
             f"{md.fmt(large[0])} ± {md.fmt(large[1])} at n = {sizes[-1]:,} against "
             f"{md.fmt(small[0])} ± {md.fmt(small[1])} at n = {sizes[0]:,} "
             f"({large[2]} and {small[2]} seeds)")
  return md.Section([image], body, verdict)


# ----------------------------------------------------------------------------
# Kernel rotation (Figs. 6, 7, 15, 16, Table 1).

def render_energy(spec: figures_lib.FigureSpec, model: str, rows: Sequence[md.Row],
                  out: pathlib.Path) -> md.Section:
  from ntk_tf.experiments import plots  # pylint: disable=g-import-not-at-top
  epochs = sorted(md.by_kind(rows, "epoch"), key=lambda r: int(r["epoch"]))
  top_k = md.row_config(rows).get("top_k", 50)
  name = md.model_name(model)
  curves = {f"{name}, y in {{-1, 1}}": [(int(r["epoch"]), tables.number(r, "energy_top_k"))
                                       for r in epochs],
            f"{name}, y in {{0, 1}}": [(int(r["epoch"]), tables.number(r, "energy_top_k_01"))
                                      for r in epochs]}
  image = md.drawn(plots.plot_energy(curves, top_k, out / f"{spec.name}_{model}.png"))
  body = md.table(["epoch", "E, y in {-1, 1}", "E, y in {0, 1}", "test acc"],
                  [[r["epoch"], md.pct(tables.number(r, "energy_top_k")),
                    md.pct(tables.number(r, "energy_top_k_01")),
                    md.fmt(tables.number(r, "test_acc"))]
                   for r in epochs])
  if len(epochs) < 2:
    return md.Section([image], body, "not yet measured")
  first, last = epochs[0], epochs[-1]
  rises = [tables.number(last, c) > tables.number(first, c) for c in ("energy_top_k",
                                                                        "energy_top_k_01")]
  energies = [tables.number(r, c) for r in (first, last) for c in ("energy_top_k",
                                                                   "energy_top_k_01")]
  verdict = (f"{md.verdict_word(all(rises), *energies)}: E grows from "
             f"{md.pct(tables.number(first, 'energy_top_k'))} to "
             f"{md.pct(tables.number(last, 'energy_top_k'))} with y in {{-1, 1}} and from "
             f"{md.pct(tables.number(first, 'energy_top_k_01'))} to "
             f"{md.pct(tables.number(last, 'energy_top_k_01'))} with y in {{0, 1}} "
             f"(epoch {first['epoch']} to {last['epoch']}, K = {top_k})")
  return md.Section([image], body, verdict)


def render_table1(spec: figures_lib.FigureSpec, model: str, rows: Sequence[md.Row],
                  out: pathlib.Path) -> md.Section:
  del out
  summary = next((r for r in rows if r.get("kind") == "summary"), None)
  if summary is None:
    return md.Section([], [], "not yet measured")
  paper = (spec.paper_numbers or {}).get(model, {})

  def paper_pct(key: str) -> str:
    return f"{paper[key]:.1f}%" if key in paper else "—"

  body = md.table(["", "ours, y in {-1, 1}", "ours, y in {0, 1}", "paper"],
                  [["Energy conc. (init)", md.pct(tables.number(summary, "energy_init")),
                    md.pct(tables.number(summary, "energy_init_01")), paper_pct("energy_init")],
                   ["Energy conc. (end)", md.pct(tables.number(summary, "energy_end")),
                    md.pct(tables.number(summary, "energy_end_01")), paper_pct("energy_end")],
                   ["Test accuracy", md.pct(tables.number(summary, "test_acc")), "",
                    paper_pct("test_acc")]])
  body += _energy_variants(md.by_kind(rows, "energy_variant"), paper_pct("energy_init"))
  init, end = tables.number(summary, "energy_init"), tables.number(summary, "energy_end")
  verdict = (f"{md.verdict_word(end > init, init, end)} in direction: {md.pct(init)} -> "
             f"{md.pct(end)} (y in {{-1, 1}}), "
             f"{md.pct(tables.number(summary, 'energy_init_01'))} -> "
             f"{md.pct(tables.number(summary, 'energy_end_01'))} (y in {{0, 1}}); the paper "
             f"{paper_pct('energy_init')} -> {paper_pct('energy_end')}")
  return md.Section([], body, verdict)


# A convention whose energy at init is this close to the paper's (percentage points) matches.
_CONVENTION_MATCH_POINTS = 2.0


def _energy_variants(variants: Sequence[md.Row], paper: str) -> List[str]:
  """Table 1's energy at init under each candidate convention (`experiments.label_energy`)."""
  if not variants:
    return []
  energies = {r["variant"]: tables.number(r, "energy_init") for r in variants}
  target = tables.number(variants[0], "paper_energy_init")
  closest = (None if math.isnan(target)  # tables.number: NaN where the cell is empty
             else min(energies, key=lambda v: abs(energies[v] - target)))
  lines = ["", f"Energy at init under each convention the paper leaves open (K = "
           f"{variants[0]['top_k']}; `bazel run //binaries:label_energy`); the paper: {paper}.",
           ""]
  lines += md.table(["variant", "what changes", "energy at init"],
                    [[f"`{r['variant']}`", r["convention"], md.pct(energies[r["variant"]])]
                     for r in variants])
  if closest is not None:
    gap = 100 * (energies[closest] - target)
    if abs(gap) <= _CONVENTION_MATCH_POINTS:
      lines += ["", f"`{closest}` reproduces the paper ({md.pct(energies[closest])})."]
    else:
      lines += ["", f"None of these reproduces the paper's {paper}: the nearest, `{closest}` "
                f"({md.pct(energies[closest])}), is {abs(gap):.1f} points "
                f"{'below' if gap < 0 else 'above'} it."]
  return lines


def render_alignment(spec: figures_lib.FigureSpec, model: str, rows: Sequence[md.Row],
                     out: pathlib.Path) -> md.Section:
  from ntk_tf.experiments import plots  # pylint: disable=g-import-not-at-top
  summaries = sorted(md.by_kind(rows, "summary"), key=lambda r: int(r["target"][3:]))
  images, table_rows, missing = [], [], []
  ranked_first = 0
  for summary in summaries:
    target = summary["target"]
    j = int(target[3:])
    epochs = sorted((r for r in md.by_kind(rows, "epoch") if r["target"] == target),
                    key=lambda r: int(r["epoch"]))
    alphas = [tables.values(r, "alpha") for r in (epochs[0], epochs[-1])] if epochs else []
    if len(alphas) == 2 and all(alphas):
      images.append(md.drawn(plots.plot_alignment(
          np.asarray(alphas[0]), np.asarray(alphas[-1]),
          (int(epochs[0]["epoch"]), int(epochs[-1]["epoch"])),
          f"{md.model_name(model)}, trained on {target} ({spec.name})",
          out / f"{spec.name}_{model}_{target}.png", j)))
    else:
      missing.append(target)
    rank = tables.number(summary, "target_rank")
    ranked_first += rank == 1
    table_rows.append([f"φ_{j}", md.g(tables.number(summary, "ratio_target")),
                       f"{md.g(tables.number(summary, 'ratio_others_max'))} / "
                       f"{md.g(tables.number(summary, 'ratio_others_median'))}",
                       "—" if math.isnan(rank) else str(int(rank)),
                       md.fmt(tables.number(summary, "test_acc"))])
  body = md.table(["trained on", "α_T/α_0 of the target", "others: max / median",
                   "target's rank by ratio", "test acc"], table_rows)
  if missing:
    body.append(f"\nNot drawn for {', '.join(missing)}: the alphas of every eigenfunction per "
                f"epoch are not in the CSV (not kept by the run that made these rows); "
                f"rerun: `{md.page_command(spec, [model], 'paper')}`.")
  verdict = (f"{'holds' if summaries and ranked_first == len(summaries) else 'does not hold'}:"
             f" the trained-on eigenfunction's alignment grows most (rank 1 of "
             f"{md.row_config(rows).get('num_alignment', '?')} by α_T/α_0) for {ranked_first} of "
             f"{len(summaries)} targets")
  return md.Section(images, body, verdict)


# ----------------------------------------------------------------------------
# Late linearization (Figs. 8, 9).

def _late_row(rows: Sequence[md.Row], task: str) -> Optional[md.Row]:
  return next((r for r in rows if r.get("task") == task), None)


def render_late_training(spec: figures_lib.FigureSpec, model: str, rows: Sequence[md.Row],
                         out: pathlib.Path) -> md.Section:
  from ntk_tf.experiments import plots  # pylint: disable=g-import-not-at-top
  runs = (("network", md.model_name(model)), ("offset_t0000", "linearized at theta0 (Eq. 1)"),
          ("linear_star", "unbiased lin. at theta_star"))
  found = {task: _late_row(rows, task) for task, _ in runs}
  if not all(found.values()):
    return md.Section([], [], "not yet measured")
  histories = {label: {c: np.asarray(tables.values(found[task], f"history_{c}"))
                       for c in ("epoch", "train_loss", "test_acc")} for task, label in runs}
  j = int(float(found["network"].get("eigenfunction_index") or 0))
  image = md.drawn(plots.plot_late_training(histories, j, out / f"{spec.name}_{model}.png"))

  def steps(row: md.Row) -> str:
    value = tables.number(row, "steps_to_loss")
    return "—" if math.isnan(value) else str(int(value))

  body = md.table(["model", "final train loss", "steps to loss 0.01", "test acc"],
                  [[label, md.g(tables.number(found[t], "train_loss")), steps(found[t]),
                    md.fmt(tables.number(found[t], "test_acc"))] for t, label in runs])
  loss = {t: tables.number(found[t], "train_loss") for t, _ in runs}
  acc = {t: tables.number(found[t], "test_acc") for t, _ in runs}
  holds = (loss["network"] < loss["offset_t0000"] and loss["linear_star"] < loss["offset_t0000"]
           and acc["linear_star"] < acc["offset_t0000"])
  verdict = (f"{'holds' if holds else 'does not hold'}: final training loss "
             f"{md.g(loss['network'])} (network), {md.g(loss['offset_t0000'])} (linearized at "
             f"θ0), {md.g(loss['linear_star'])} (at θ*); test accuracy "
             f"{md.fmt(acc['offset_t0000'])} at θ0 against {md.fmt(acc['linear_star'])} at θ*")
  return md.Section([image], body, verdict)


def render_pretraining(spec: figures_lib.FigureSpec, model: str, rows: Sequence[md.Row],
                       out: pathlib.Path) -> md.Section:
  from ntk_tf.experiments import plots  # pylint: disable=g-import-not-at-top
  network = _late_row(rows, "network")
  linear = md.by_kind(rows, "linear_pretrained")
  if network is None or not linear:
    return md.Section([], [], "not yet measured")
  forms = sorted({r["form"] for r in linear}, key=lambda f: (f != "unbiased", f))
  curves = {form: sorted((float(r["pretrain_epoch"]), tables.number(r, "test_acc"))
                         for r in linear if r["form"] == form) for form in forms}
  labels = {f: (f"{f} (theta - theta0)^T grad f_t" if f == "unbiased" else
                f"{f}: f_t + (theta - theta0)^T grad f_t") for f in forms}
  j = int(float(network.get("eigenfunction_index") or 0))
  image = md.drawn(plots.plot_pretraining({labels[f]: curves[f] for f in forms},
                                          tables.number(network, "test_acc"),
                                          md.model_name(model), j,
                                          out / f"{spec.name}_{model}.png"))
  epochs = sorted({t for c in curves.values() for t, _ in c})
  body = md.table(["pretraining epochs t"] + [f"test acc, {f}" for f in forms],
                  [[str(int(t))] + [md.fmt(dict(curves[f]).get(t, math.nan)) for f in forms]
                   for t in epochs])
  body.append(f"\nThe network itself: test accuracy {md.fmt(tables.number(network, 'test_acc'))}.")
  main = curves[forms[0]]
  rho = md.spearman([t for t, _ in main], [a for _, a in main])
  holds = rho < 0 and main[-1][1] < main[0][1]
  verdict = (f"{md.verdict_word(holds, rho)} for the {forms[0]} form: test accuracy "
             f"{md.fmt(main[0][1])} at t = {int(main[0][0])}, {md.fmt(main[-1][1])} at t = "
             f"{int(main[-1][0])}, Spearman ρ(accuracy, t) {md.fmt(rho, 2)}")
  return md.Section([image], body, verdict)


RENDERERS: Dict[str, Callable[[figures_lib.FigureSpec, str, Sequence[md.Row], pathlib.Path],
                              md.Section]] = {
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
