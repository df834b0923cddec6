"""Reruns of an experiment binary's workdir: a changed setting refuses; --start_over keeps it.

End to end through binaries/cifar2_sample_size on the smoke data, 2 tasks of 2 epochs.
"""

import json
import pathlib

from tests import test_util

from absl.testing import absltest
from absl.testing import flagsaver

from binaries import cifar2_sample_size as cifar2_main
from ntk_tf import validation

_SPEC = "configs/cifar2_sample_size.py:smoke"
_SMALL = {"train_sizes": (16,), "seeds": (0,), "test_size": 8}


def _files(root: pathlib.Path):
  """{relative path: bytes} of every file under `root`."""
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
          if p.is_file()}


class RerunTest(absltest.TestCase):

  def test_changed_setting_refuses_and_start_over_moves_the_work_aside(self):
    workdir = pathlib.Path(self.create_tempdir().full_path) / "run"
    overrides = dict(_SMALL)
    test_util.run_binary_main(self, cifar2_main, _SPEC, str(workdir), **overrides)
    everything = _files(workdir)
    finished = {k: v for k, v in everything.items() if not k.startswith("config")}
    self.assertIn("results/mlp_n000016_s0_network.json", finished)
    with self.assertRaises(validation.ConflictError) as raised:
      test_util.run_binary_main(self, cifar2_main, _SPEC, str(workdir), epochs=3, **overrides)
    message = str(raised.exception)
    self.assertIn("recipe.epochs: 2 -> 3", message)
    self.assertIn("made with them: mlp_n000016_s0_network, mlp_n000016_s0_linearized.", message)
    self.assertIn("--start_over", message)
    kept = _files(workdir)
    self.assertEqual(sorted(kept), sorted(everything))  # No config.<n>.json left either.
    changed = [k for k in everything if kept[k] != everything[k]]
    self.assertEqual(changed, [])  # Every result, history, figure and setting as it was.
    with flagsaver.flagsaver(start_over=True):
      test_util.run_binary_main(self, cifar2_main, _SPEC, str(workdir), epochs=3, **overrides)
    earlier = workdir / "earlier.1"
    moved = _files(earlier)
    self.assertEqual([k for k in everything if moved.get(k) != everything[k]], [])
    row = json.loads((workdir / "results" / "mlp_n000016_s0_network.json").read_text())
    self.assertEqual(row["epochs"], 3)
    self.assertLen(row["history"], 4)  # Epochs 0-3.


if __name__ == "__main__":
  absltest.main()
