"""Tests for ntk_tf.experiments.workdir: resumable results and config bookkeeping."""

import json
import os

from absl.testing import absltest

from ntk_tf import atomic
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
    self.assertIsNone(store.get("j1", "other"))
    self.assertIsNone(store.get("j2", "f1"))
    with open(os.path.join(root, "results.csv")) as f:
      lines = f.read().splitlines()
    self.assertLen(lines, 2)
    self.assertIn("acc", lines[0])

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
