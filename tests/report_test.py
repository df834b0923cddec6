"""Tests of the report (ntk_tf/experiments/report.py) and its binary."""

import json
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags
from absl.testing import absltest
from absl.testing import flagsaver

from binaries import report as report_main
from ntk_tf.experiments import report

_PNG = bytes.fromhex("89504e470d0a1a0a")  # A PNG signature is enough for discovery.


def _experiment(root: pathlib.Path, rel: str, settings: dict, csv: str, pngs=()) -> pathlib.Path:
  path = root / rel
  path.mkdir(parents=True)
  (path / "settings.json").write_text(json.dumps(settings))
  if csv:
    (path / "results.csv").write_text(csv)
  for name in pngs:
    (path / name).write_bytes(_PNG)
  return path


def _fake_root(root: pathlib.Path) -> None:
  # settings.json as experiments.pipeline.prepare writes it (normalized, resolved).
  _experiment(root, "kr", {"experiment": "kernel_rotation", "variant": "small", "task": "cifar2",
                           "data": {"num_train": 2000, "num_test": 2000}, "top_k": 50,
                           "common": {"recipe": {"epochs": 20}}, "num_alignment": 200,
                           "models": [{"name": "mlp"}, {"name": "lenet"}]},
              "kind,model,target,epoch,energy_init,energy_end,test_acc,energy_top_k\n"
              "summary,mlp,cifar2,20,0.25,0.5,0.6,\n"
              "summary,lenet,cifar2,20,0.2,0.75,0.7,\n"
              "epoch,mlp,cifar2,0,,,0.5,0.25\n",
              pngs=("energy_concentration.png",))
  _experiment(root, "eig", {"experiment": "eigenfunctions", "variant": "quick",
                            "data": {"num_train": 2000, "num_test": 500},
                            "common": {"recipe": {"epochs": 20}}},
              "model,index,overlap,test_acc\nmlp,1,0.8,0.9\nmlp,1,0.8,0.85\nmlp,2,0.7,0.8\n",
              pngs=("fig2.png",))
  _experiment(root, "eig/train_run", {"not_an_experiment": 1}, "")  # skipped


class ReportTest(absltest.TestCase):

  def test_discovery(self):
    root = pathlib.Path(self.create_tempdir().full_path)
    _fake_root(root)
    found, skipped = report.discover(root)
    self.assertEqual([e.name for e in found], ["eigenfunctions", "kernel_rotation"])
    self.assertEqual([p.relative_to(root).as_posix() for p in skipped], ["eig/train_run/settings.json"])
    self.assertEqual([f.name for f in found[0].figures], ["fig2.png"])  # not the nested folder's

  def test_side_by_side_numbers(self):
    root = pathlib.Path(self.create_tempdir().full_path)
    _fake_root(root)
    found, _ = report.discover(root)
    rows = report.table1_side_by_side(found)
    ours = {r[1]: r[2:] for r in rows if r[0].startswith("ours")}
    self.assertEqual(ours["Energy conc. (end)"], ["50.0%", "75.0%", "not run"])
    paper = {r[1]: r[2:] for r in rows if r[0] == "paper"}
    self.assertEqual(paper["Energy conc. (init)"], ["26.0%", "25.8%", "22.7%"])
    overlap = report.overlap_summary(found)
    self.assertEqual(overlap, [["eigenfunctions (eig)", "2,500", "2", "0.750", "0.700", "0.800"]])

  def test_binary_writes_markdown_and_html(self):
    root = pathlib.Path(self.create_tempdir().full_path)
    _fake_root(root)
    with flagsaver.flagsaver(workdir=str(root)):
      report_main.main(["report"])
    text = (root / "report.md").read_text()
    self.assertIn("![kernel_rotation: energy_concentration.png](kr/energy_concentration.png)", text)
    self.assertIn("| ours (kr) | Test accuracy | 60.0% | 70.0% | not run |", text)
    self.assertIn("n = 2000 training samples (paper 12,000)", text)
    self.assertIn("20 epochs (paper 200)", text)
    self.assertIn("| models | MLP, LeNet, ResNet18 | mlp, lenet |", text)  # from settings.json
    self.assertIn("~0.78", text)
    html = (root / "report.html").read_text()
    self.assertIn("<img src='kr/energy_concentration.png'", html)
    self.assertIn("<td>26.0%</td>", html)

  def test_missing_root_is_named(self):
    with self.assertRaisesRegex(ValueError, "root="):
      report.discover("/nonexistent/ntk_tf_report_root")


if __name__ == "__main__":
  absltest.main()
