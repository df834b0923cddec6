"""The report's paper numbers (Table 1, App. B) quoted exactly from the paper's text.

Needs shared/paper.txt beside the source tree, so it is tagged "requires-data"
(tests/BUILD) and excluded with the other shared-folder tests where none is found.
"""

import pathlib
import re

from absl.testing import absltest

from ntk_tf.experiments import report

_PAPER_CANDIDATES = [p / "shared" / "paper.txt" for p in pathlib.Path(__file__).resolve().parents]


class ReportPaperTest(absltest.TestCase):

  def test_paper_values_are_quoted_exactly(self):
    paper = next((p for p in _PAPER_CANDIDATES if p.is_file()), None)
    self.assertIsNotNone(paper, f"shared/paper.txt not found beside the tree: {_PAPER_CANDIDATES}")
    text = paper.read_text()
    for label, field in report.TABLE1_ROWS:
      values = " ".join(report.PAPER_TABLE1[m][field] for m in ("mlp", "lenet", "resnet18"))
      self.assertIn(f"{label} {values}", text)
    self.assertTrue(re.search(r"inner product of approximately\s+0\.78", text), "0.78")
    self.assertIn("computed on 12, 000 training samples", text)
    self.assertIn("topK = 50", text)


if __name__ == "__main__":
  absltest.main()
