"""One report of every experiment under a root folder: report.md and report.html.

Discovery (the contract between the experiment pipeline and the report): an experiment
workdir is any folder under the root holding `settings.json`, the normalized settings that
`experiments.pipeline.prepare` writes (keys `experiment`, `variant`, `common.recipe`, `data`,
...; e.g. experiment "kernel_rotation", "nads", "late_linearization", "eigenfunctions",
"cifar2_sample_size"). Its `results.csv` (normalized columns: `model`, `kind`, `test_acc`,
`overlap`, ...), its `*.md` tables and its `*.png` figures (the folder's own, not those of
nested workdirs) are collected. The report only reads and renders these; it never re-derives
an experiment's settings. Folders whose settings.json is unreadable are listed as skipped.

The report holds, per experiment: the settings it ran with, the results table, the tables
and the figures; then a side-by-side of measured and published numbers (Table 1, and the
App. B overlap ~0.78 of binarized eigenvectors) with a table of where the scale differs.
"""

import dataclasses
import datetime
import html
import json
import math
import os
import pathlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import logging

from ntk_tf import atomic
from ntk_tf.experiments import workdir as workdir_lib

# Table 1 of the paper (App. E.2), quoted from its text:
#   "MLP LeNet ResNet18 / Energy conc. (init) 26.0% 25.8% 22.7% /
#    Energy conc. (end) 63.6% 83.0% 96.7% / Test accuracy 67.6% 75.0% 81.4%"
PAPER_TABLE1 = {
    "mlp": {"energy_init": "26.0%", "energy_end": "63.6%", "test_acc": "67.6%"},
    "lenet": {"energy_init": "25.8%", "energy_end": "83.0%", "test_acc": "75.0%"},
    "resnet18": {"energy_init": "22.7%", "energy_end": "96.7%", "test_acc": "81.4%"},
}
# Its caption: "topK = 50 eigenvectors ... Theta_0 and ... Theta_200 computed on 12,000
# training samples".
PAPER_TABLE1_SCALE = {"train_size": 12_000, "epochs": 200, "top_k": 50}
# App. B: "the binarized and normal eigenvectors have an inner product of approximately 0.78"
# (Gram of the 60,000 CIFAR-10 train and test samples).
PAPER_OVERLAP = 0.78
PAPER_OVERLAP_SAMPLES = 60_000
# The normalized result column of that inner product.
OVERLAP_COLUMN = "overlap"
TABLE1_ROWS = (("Energy conc. (init)", "energy_init"), ("Energy conc. (end)", "energy_end"),
               ("Test accuracy", "test_acc"))
MAX_TABLE_ROWS = 60

_EPOCHS = "common.recipe.epochs"
_SAMPLES = "data.num_train,data.num_test"
# The paper's scale of each experiment: (setting, published value, settings.json path in ours).
PAPER_SCALE = {
    "kernel_rotation": [("training samples n", "12,000 (Table 1)", "data.num_train"),
                        ("epochs", "200 (CIFAR2) / 100 (eigenfunctions)", _EPOCHS),
                        ("top K", "50", "top_k"), ("eigenfunctions J", "1,000", "num_alignment"),
                        ("models", "MLP, LeNet, ResNet18", "models.name")],
    "late_linearization": [("model", "ResNet18", "model.name"),
                           ("task j", "400", "eigenfunction_index"),
                           ("train / test samples", "50,000 / 10,000 (Gram on 60,000)", _SAMPLES),
                           ("epochs", "100", _EPOCHS),
                           ("pretraining epochs t", "0 .. 20 (Fig. 9)", "pretrain_epochs"),
                           ("Fig. 9 linear model", "unbiased (theta - theta0)^T grad f_t (Sec. 4.3)",
                            "forms")],
    "nads": [("models", "LeNet, ResNet18 (GeLU)", "model.name"),
             ("train / test samples", "10,000 / 10,000", "train_size,test_size"),
             ("eps, sigma", "1, 1", "eps,sigma"), ("epochs", "100", _EPOCHS),
             ("M evaluated at", "x = 0 (App. C.2)", "nad_sample_size")],
    "eigenfunctions": [("train / test samples", "50,000 / 10,000 (Gram on 60,000)", _SAMPLES),
                       ("epochs", "100", _EPOCHS),
                       ("CIFAR2 line epochs", "200 (App. A)", "baseline_epochs")],
    "cifar2_sample_size": [("epochs", "200", _EPOCHS),
                           ("training set sizes", "several, up to 50,000 (Fig. 5)", "train_sizes")],
}


# ----------------------------------------------------------------------------
# A document as blocks, rendered to Markdown and to HTML.

@dataclasses.dataclass
class Block:
  kind: str  # "heading" | "paragraph" | "table" | "image" | "code"
  text: str = ""
  level: int = 1
  header: Sequence[str] = ()
  rows: Sequence[Sequence[str]] = ()


class Document:
  """An ordered list of blocks with Markdown and HTML renderers."""

  def __init__(self):
    self.blocks: List[Block] = []

  def heading(self, text: str, level: int = 2) -> None:
    self.blocks.append(Block("heading", text=text, level=level))

  def paragraph(self, text: str) -> None:
    self.blocks.append(Block("paragraph", text=text))

  def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    self.blocks.append(Block("table", header=[str(h) for h in header],
                             rows=[[_cell(v) for v in r] for r in rows]))

  def image(self, path: str, caption: str) -> None:
    self.blocks.append(Block("image", text=path, header=[caption]))

  def code(self, text: str) -> None:
    self.blocks.append(Block("code", text=text))

  def markdown(self) -> str:
    out = []
    for b in self.blocks:
      if b.kind == "heading":
        out.append("#" * b.level + " " + b.text)
      elif b.kind == "paragraph":
        out.append(b.text)
      elif b.kind == "table":
        esc = lambda s: str(s).replace("|", "\\|")
        out.append("| " + " | ".join(map(esc, b.header)) + " |\n|" + "---|" * len(b.header) + "\n"
                   + "\n".join("| " + " | ".join(map(esc, r)) + " |" for r in b.rows))
      elif b.kind == "image":
        out.append(f"![{b.header[0]}]({b.text})")
      elif b.kind == "code":
        out.append("```\n" + b.text + "\n```")
    return "\n\n".join(out) + "\n"

  def html(self, title: str) -> str:
    e = html.escape
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
           "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #bbb;"
           "padding:2px 6px}img{max-width:900px}pre{background:#f4f4f4;padding:6px;"
           "font-size:11px;overflow-x:auto}</style></head><body>"]
    for b in self.blocks:
      if b.kind == "heading":
        out.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
      elif b.kind == "paragraph":
        out.append(f"<p>{e(b.text)}</p>")
      elif b.kind == "table":
        head = "".join(f"<th>{e(h)}</th>" for h in b.header)
        body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b.rows)
        out.append(f"<table><tr>{head}</tr>{body}</table>")
      elif b.kind == "image":
        out.append(f"<figure><img src='{e(b.text)}' alt='{e(b.header[0])}'>"
                   f"<figcaption>{e(b.header[0])}</figcaption></figure>")
      elif b.kind == "code":
        out.append(f"<pre>{e(b.text)}</pre>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _cell(value: Any) -> str:
  if isinstance(value, float):
    if math.isnan(value):
      return "nan"
    return f"{value:.4g}"
  return str(value)


# ----------------------------------------------------------------------------
# Discovery.

@dataclasses.dataclass
class Experiment:
  """One experiment workdir found under the root (`settings` = its settings.json)."""
  path: pathlib.Path
  settings: Dict[str, Any]
  rows: List[Dict[str, Any]]
  columns: List[str]
  figures: List[pathlib.Path]
  tables: List[pathlib.Path]

  @property
  def name(self) -> str:
    return str(self.settings.get("experiment"))

  @property
  def variant(self) -> str:
    return str(self.settings.get("variant", "?"))

  def get(self, dotted: str) -> Any:
    """settings[a][b]... of "a.b" (a list of dicts maps to the list of their values)."""
    return _lookup(self.settings, dotted)


def _read_csv(path: pathlib.Path) -> Tuple[List[str], List[Dict[str, Any]]]:
  if not path.is_file():
    return [], []
  import pandas as pd  # pylint: disable=g-import-not-at-top
  try:
    frame = pd.read_csv(path)
  except pd.errors.EmptyDataError:
    return [], []
  return list(frame.columns), frame.to_dict("records")


def discover(root: os.PathLike) -> Tuple[List[Experiment], List[pathlib.Path]]:
  """Every experiment workdir under `root` (sorted by path), and settings.json files skipped."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise ValueError(f"The report root must be an existing folder. Received: root={str(root)!r}")
  found, skipped = [], []
  for settings_path in sorted(root.rglob("settings.json")):
    try:
      settings = json.loads(settings_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
      logging.warning("Skipping unreadable %s: %s", settings_path, e)
      skipped.append(settings_path)
      continue
    if not isinstance(settings, dict) or not settings.get("experiment"):
      skipped.append(settings_path)
      continue
    folder = settings_path.parent
    columns, rows = _read_csv(folder / "results.csv")
    found.append(Experiment(path=folder, settings=settings, rows=rows, columns=columns,
                            figures=sorted(folder.glob("*.png")),
                            tables=sorted(p for p in folder.glob("*.md") if p.name != "report.md")))
  return found, skipped


# ----------------------------------------------------------------------------
# Settings and paper comparison.

def _lookup(settings: Any, dotted: str) -> Any:
  value: Any = settings
  for part in dotted.split("."):
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
      value = [v.get(part) for v in value]
    elif isinstance(value, dict) and part in value:
      value = value[part]
    else:
      return None
  return value


def _ours(exp: "Experiment", paths: str) -> str:
  values = []
  for path in paths.split(","):
    value = exp.get(path)
    if path == "nad_sample_size" and value is not None:
      value = "x = 0" if value == 0 else f"mean over {value} x ~ N(0, I)"
    values.append("?" if value is None else (", ".join(map(str, value))
                                             if isinstance(value, list) else str(value)))
  return " / ".join(values)


def scale_table(exp: Experiment) -> Optional[Tuple[List[str], List[List[str]]]]:
  spec = PAPER_SCALE.get(exp.name)
  if spec is None:
    return None
  return ["setting", "paper", "ours"], [[s, paper, _ours(exp, path)] for s, paper, path in spec]


def table1_side_by_side(experiments: Sequence[Experiment]) -> List[List[str]]:
  """Rows (source, quantity, MLP, LeNet, ResNet18) of measured and published Table 1 values."""
  out = []
  for exp in experiments:
    if exp.name != "kernel_rotation":
      continue
    summaries = {r["model"]: r for r in exp.rows
                 if r.get("kind") == "summary" and r.get("target") == "cifar2"}
    if not summaries:
      continue
    for label, field in TABLE1_ROWS:
      measured = [f"{100 * summaries[m][field]:.1f}%" if m in summaries else "not run"
                  for m in PAPER_TABLE1]
      out.append([f"ours ({exp.path.name})", label] + measured)
  for label, field in TABLE1_ROWS:
    out.append(["paper", label] + [PAPER_TABLE1[m][field] for m in PAPER_TABLE1])
  return out


def overlap_summary(experiments: Sequence[Experiment]) -> List[List[str]]:
  """Per experiment with an overlap column: count, mean, min, max of <sign(phi_j), phi_j>.

  One value per task: rows repeating a task (e.g. one row per epoch) count once, a task
  being identified by its model and index columns (model, target / eigenfunction_index / j).
  """
  out = []
  for exp in experiments:
    column = OVERLAP_COLUMN
    if column not in exp.columns:
      continue
    per_task = {}
    for r in exp.rows:
      value = r.get(column)
      if value is None or math.isnan(float(value)):
        continue
      task = tuple(str(r.get(c)) for c in ("model", "target", "eigenfunction_index", "j", "index")
                   if c in r)
      per_task[task] = float(value)
    values = list(per_task.values())
    if not values:
      continue
    n = "?"
    train, test = exp.get("data.num_train"), exp.get("data.num_test")
    if isinstance(train, int) and isinstance(test, int):
      n = f"{train + test:,}"
    out.append([f"{exp.name} ({exp.path.name})", n, str(len(values)),
                f"{sum(values) / len(values):.3f}", f"{min(values):.3f}", f"{max(values):.3f}"])
  return out


# ----------------------------------------------------------------------------
# The report.

def _flatten(config: Any, prefix: str = "") -> List[Tuple[str, str]]:
  if isinstance(config, dict):
    items = []
    for k in sorted(config):
      items += _flatten(config[k], f"{prefix}{k}.")
    return items
  return [(prefix[:-1], atomic.json_text(config))]


def build(root: os.PathLike) -> Tuple[Document, List[Experiment]]:
  """The report document of every experiment under `root`."""
  root = pathlib.Path(root)
  experiments, skipped = discover(root)
  doc = Document()
  doc.heading("ntk_tf experiment report", 1)
  doc.paragraph(f"Root: {root}. Generated {datetime.datetime.now().isoformat(timespec='seconds')}. "
                f"{len(experiments)} experiment workdir(s) found by their settings.json.")
  doc.table(["experiment", "variant", "workdir", "result rows", "figures"],
            [[e.name, e.variant, str(e.path.relative_to(root)) or ".",
              len(e.rows), len(e.figures)] for e in experiments])
  if skipped:
    doc.paragraph("Skipped (settings.json without an 'experiment' key or unreadable): "
                  + ", ".join(str(p.relative_to(root)) for p in skipped))

  doc.heading("Measured vs published", 2)
  doc.paragraph("Table 1 (App. E.2): energy concentration of the CIFAR2 training labels on the top "
                "K eigenvectors of the NTK Gram at init and at the end of training, and the test "
                f"accuracy. Paper: K = {PAPER_TABLE1_SCALE['top_k']}, "
                f"{PAPER_TABLE1_SCALE['train_size']:,} training samples, "
                f"{PAPER_TABLE1_SCALE['epochs']} epochs.")
  doc.table(["source", "quantity", "MLP", "LeNet", "ResNet18"], table1_side_by_side(experiments))
  ours_t1 = [e for e in experiments if e.name == "kernel_rotation" and e.get("task") == "cifar2"]
  for exp in ours_t1:
    diffs = []
    if exp.get("data.num_train") != PAPER_TABLE1_SCALE["train_size"]:
      diffs.append(f"n = {exp.get('data.num_train')} training samples "
                   f"(paper {PAPER_TABLE1_SCALE['train_size']:,})")
    if exp.get(_EPOCHS) != PAPER_TABLE1_SCALE["epochs"]:
      diffs.append(f"{exp.get(_EPOCHS)} epochs (paper {PAPER_TABLE1_SCALE['epochs']})")
    if exp.get("top_k") != PAPER_TABLE1_SCALE["top_k"]:
      diffs.append(f"K = {exp.get('top_k')} (paper {PAPER_TABLE1_SCALE['top_k']})")
    doc.paragraph(f"Scale of {exp.path.name}: " + ("; ".join(diffs) if diffs else
                                                   "same n, epochs and K as the paper") + ".")
  if not ours_t1:
    doc.paragraph("No kernel_rotation run on CIFAR2 found: Table 1 has no measured values here.")
  doc.paragraph(f"App. B: inner product of binarized and normal eigenvectors, "
                f"<sign(phi_j)/sqrt(N), phi_j>; paper: approximately {PAPER_OVERLAP} "
                f"(N = {PAPER_OVERLAP_SAMPLES:,} samples).")
  overlaps = overlap_summary(experiments)
  if overlaps:
    doc.table(["experiment", "N samples", "tasks", "mean", "min", "max"],
              overlaps + [["paper (App. B)", f"{PAPER_OVERLAP_SAMPLES:,}", "?", f"~{PAPER_OVERLAP}",
                           "", ""]])
  else:
    doc.paragraph(f"No experiment reported an {OVERLAP_COLUMN!r} column.")

  for exp in experiments:
    rel = exp.path.relative_to(root)
    doc.heading(f"{exp.name} ({exp.variant}): {rel}", 2)
    scale = scale_table(exp)
    if scale:
      doc.paragraph("Scale: paper vs this run.")
      doc.table(*scale)
    doc.heading("Settings", 3)
    doc.code("\n".join(f"{k} = {v}" for k, v in _flatten(exp.settings)))
    doc.heading("Results", 3)
    if exp.rows:
      shown = exp.rows[:MAX_TABLE_ROWS]
      cols = [c for c in exp.columns if c != "fingerprint"]
      doc.table(cols, [[r.get(c, "") for c in cols] for r in shown])
      if len(exp.rows) > len(shown):
        doc.paragraph(f"({len(exp.rows) - len(shown)} more rows in {rel / 'results.csv'})")
    else:
      doc.paragraph("No results.csv yet (the run has not finished a task).")
    for table in exp.tables:
      doc.heading(table.name, 3)
      doc.code(table.read_text().strip())
    for fig in exp.figures:
      doc.image(str(fig.relative_to(root)), f"{exp.name}: {fig.name}")
  return doc, experiments


def write(root: os.PathLike) -> Tuple[pathlib.Path, pathlib.Path]:
  """Writes `<root>/report.md` and `<root>/report.html`; returns their paths."""
  root = pathlib.Path(root)
  doc, _ = build(root)
  md_path, html_path = root / "report.md", root / "report.html"
  atomic.write_text(md_path, doc.markdown())
  atomic.write_text(html_path, doc.html("ntk_tf experiment report"))
  return md_path, html_path
