"""benchmarks.spread: which runs it starts, and its page's numbers checked by hand."""

import pathlib
import tempfile
from unittest import mock

from absl.testing import absltest

from benchmarks import rows as result_rows
from benchmarks import spread


def _fake_run(workdir, onednn, seed, extra=()):
  """Writes a results.csv as the binary would: accuracy 0.5 + seed / 10 + onednn / 100."""
  del extra
  acc = 0.5 + seed / 10 + int(onednn) / 100
  rows = [{"task": "mlp_phi0002_network", "kind": "network", "index": 2, "test_acc": acc},
          {"task": "mlp_phi0010_network", "kind": "network", "index": 10, "test_acc": acc / 2},
          {"task": "mlp_cifar2_network", "kind": "network", "index": 0, "test_acc": acc}]
  result_rows.append_rows(pathlib.Path(workdir) / "results.csv", rows, rows[0].keys())


class SpreadTest(absltest.TestCase):

  def test_measure_runs_only_what_the_csv_lacks_and_render_summarizes(self):
    with tempfile.TemporaryDirectory() as tmp:
      csv_path = f"{tmp}/spread.csv"
      with mock.patch.object(spread, "run_quick", side_effect=_fake_run) as run:
        spread.measure([0, 1], ["0"], tmp, csv_path)
        spread.measure([0, 1], ["0", "1"], tmp, csv_path)  # only oneDNN on is new
      started = [(c.args[1], c.args[2]) for c in run.call_args_list]
      self.assertEqual(started, [("0", 0), ("0", 1), ("1", 0), ("1", 1)])
      self.assertLen(result_rows.read_rows(csv_path), 12)
      page = spread.render(csv_path)
    # phi_2, off: seeds 0, 1 give 0.50, 0.60; on: 0.51, 0.61; gap 0.01 at each seed.
    self.assertIn("| mlp_phi0002_network | 0.550 [0.500, 0.600] | 0.560 [0.510, 0.610] | 0.010 |",
                  page)
    self.assertIn("| mlp_phi0010_network | 0.275 [0.250, 0.300] | 0.280 [0.255, 0.305] | 0.005 |",
                  page)
    self.assertLess(page.index("phi0002"), page.index("phi0010"))
    self.assertLess(page.index("phi0010"), page.index("cifar2"))  # the reference line last
    self.assertIn("Largest spread over seeds under one setting: 0.100; largest gap between the "
                  "settings at one seed: 0.010.", page)

  def test_a_missing_setting_is_said(self):
    with tempfile.TemporaryDirectory() as tmp:
      with mock.patch.object(spread, "run_quick", side_effect=_fake_run):
        spread.measure([3], ["1"], tmp, f"{tmp}/s.csv")
      page = spread.render(f"{tmp}/s.csv")
    self.assertIn("| mlp_phi0002_network | not run | 0.810 [0.810, 0.810] | not run |", page)


if __name__ == "__main__":
  absltest.main()
