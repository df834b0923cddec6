"""Tests for ntk_tf.experiments.workdir: resumable results and config bookkeeping."""

import json
import os
import pathlib

from absl.testing import absltest

from ntk_tf import atomic
from ntk_tf import validation
from ntk_tf.experiments import workdir


class WorkdirTest(absltest.TestCase):

  def test_fingerprint_is_order_independent_and_value_sensitive(self):
    self.assertEqual(workdir.fingerprint({"a": 1, "b": [1, 2]}),
                     workdir.fingerprint({"b": [1, 2], "a": 1}))
    self.assertNotEqual(workdir.fingerprint({"a": 1}), workdir.fingerprint({"a": 2}))

  def test_store_skips_only_same_fingerprint(self):
    root = self.create_tempdir().full_path
    store = workdir.ResultStore(root)
    store.put("j1", {"acc": 0.5}, "f1")
    self.assertEqual(store.get("j1", "f1")["acc"], 0.5)
    self.assertIsNone(store.get("j2", "f1"))
    with open(os.path.join(root, "results.csv")) as f:
      lines = f.read().splitlines()
    self.assertLen(lines, 2)
    self.assertIn("acc", lines[0])

  def test_other_settings_refuse_naming_the_change_and_the_tasks(self):
    root = self.create_tempdir().full_path
    store = workdir.ResultStore(root)
    old = {"recipe": {"epochs": 2, "lr": 0.1}, "seed": 0}
    for seed in (0, 1):
      store.put(f"t{seed}", {"acc": 0.5}, workdir.fingerprint({**old, "seed": seed}))
    store.put("other", {"acc": 0.7}, workdir.fingerprint({"recipe": {"epochs": 9}}))
    before = sorted((p.name, p.read_bytes()) for p in pathlib.Path(root, "results").iterdir())
    new = workdir.fingerprint({"recipe": {"epochs": 3, "lr": 0.1}, "seed": 0})
    with self.assertRaises(validation.ConflictError) as raised:
      store.get("t0", new)
    message = str(raised.exception)
    self.assertIn("recipe.epochs: 2 -> 3", message)
    self.assertIn("finished tasks made with them: t0, t1.", message)  # not "other"
    self.assertIn("--start_over", message)
    self.assertNotIn("\n", message)
    after = sorted((p.name, p.read_bytes()) for p in pathlib.Path(root, "results").iterdir())
    self.assertEqual(after, before)  # Nothing replaced.
    # A row without its settings (an older workdir) still refuses, saying so.
    store.put("legacy", {"acc": 0.1}, "f0")
    with self.assertRaisesRegex(validation.ConflictError, "settings it was made with are not "
                                "recorded.*legacy"):
      store.get("legacy", new)

  def test_start_over_moves_another_configs_work_and_keeps_a_resumable_one(self):
    root = pathlib.Path(self.create_tempdir().full_path) / "run"
    self.assertIsNone(workdir.start_over(root, {"epochs": 3}))  # Absent: nothing to move.
    workdir.prepare(root, {"epochs": 2})
    workdir.ResultStore(root).put("t", {"acc": 0.5}, "f")
    self.assertIsNone(workdir.start_over(root, {"epochs": 2}))  # Its own work: resumed.
    workdir.prepare(root, {"epochs": 3})  # A refused rerun: config.1.json holds the old one.
    earlier = workdir.start_over(root, {"epochs": 3})
    self.assertEqual(earlier, root / "earlier.1")
    self.assertEqual(sorted(p.name for p in root.iterdir()), ["earlier.1"])
    self.assertEqual(json.loads((earlier / "results" / "t.json").read_text())["acc"], 0.5)
    workdir.prepare(root, {"epochs": 3})
    self.assertIsNone(workdir.start_over(root, {"epochs": 3}))  # Rerun of the start-over.
    self.assertEqual(workdir.start_over(root, {"epochs": 4}), root / "earlier.2")
    self.assertEqual(sorted(p.name for p in root.iterdir()), ["earlier.1", "earlier.2"])

  def test_rows_record_the_machine_that_made_them(self):
    from ntk_tf import onednn  # pylint: disable=g-import-not-at-top
    store = workdir.ResultStore(self.create_tempdir().full_path)
    store.put("a", {"x": 1})
    store.put("b", {"x": 2, "machine": "named by the row"})
    rows = {r["task"]: r for r in store.rows()}
    self.assertEqual(rows["a"]["machine"], onednn.machine())
    self.assertRegex(rows["a"]["machine"], r"^\S+ \d+ cores (no-)?avx2 (no-)?avx512 oneDNN (on|off)$")
    self.assertEqual(rows["b"]["machine"], "named by the row")

  def test_bad_key(self):
    store = workdir.ResultStore(self.create_tempdir().full_path)
    with self.assertRaisesRegex(ValueError, "key='../x'"):
      store.put("../x", {})

  def test_prepare_keeps_previous_config(self):
    root = self.create_tempdir().full_path
    workdir.prepare(root, {"epochs": 1})
    workdir.prepare(root, {"epochs": 1})
    self.assertFalse(os.path.exists(os.path.join(root, "config.1.json")))
    workdir.prepare(root, {"epochs": 2})
    with open(os.path.join(root, "config.1.json")) as f:
      self.assertEqual(json.load(f), {"epochs": 1})
    with open(os.path.join(root, "config.json")) as f:
      self.assertEqual(json.load(f), {"epochs": 2})

  def test_atomic_write_leaves_no_temp_files(self):
    root = self.create_tempdir().full_path
    atomic.write_json(os.path.join(root, "x.json"), {"a": 1})
    self.assertEqual(os.listdir(root), ["x.json"])

  def test_resolve_workdir_uses_bazel_working_directory(self):
    os.environ["BUILD_WORKING_DIRECTORY"] = "/some/where"
    try:
      self.assertEqual(str(workdir.resolve_workdir("runs/a")), "/some/where/runs/a")
    finally:
      del os.environ["BUILD_WORKING_DIRECTORY"]
    with self.assertRaisesRegex(ValueError, "workdir=''"):
      workdir.resolve_workdir("")


if __name__ == "__main__":
  absltest.main()
