"""Tests for ntk_tf.atomic: permissions, no partial files, directory replacement and recovery."""

import errno
import json
import math
import os
import pathlib
import stat
from unittest import mock

from absl.testing import absltest
import numpy as np

from ntk_tf import atomic


def _mode(path) -> int:
  return stat.S_IMODE(os.stat(path).st_mode)


class AtomicTest(absltest.TestCase):

  def test_files_follow_the_umask_not_mkstemp(self):
    root = pathlib.Path(self.create_tempdir().full_path)
    old = os.umask(0o022)
    try:
      path = atomic.write_json(root / "a" / "r.json", {"x": (1, 2)})
      self.assertEqual(_mode(path), 0o644)
      os.umask(0o077)
      self.assertEqual(_mode(atomic.write_text(root / "b.txt", "hi")), 0o600)
    finally:
      os.umask(old)
    self.assertEqual(path.read_text(), '{\n  "x": [\n    1,\n    2\n  ]\n}\n')
    self.assertEqual(sorted(p.name for p in (root / "a").iterdir()), ["r.json"])

  def test_modes_without_changing_the_umask(self):
    # Setting the umask, even briefly, changes it for every thread of the process.
    root = pathlib.Path(self.create_tempdir().full_path)
    old = os.umask(0o027)
    try:
      with mock.patch.object(os, "umask", side_effect=AssertionError("umask changed")):
        self.assertEqual(_mode(atomic.write_text(root / "f.txt", "hi")), 0o640)
        self.assertEqual(_mode(atomic.write_json(root / "f.json", {})), 0o640)
    finally:
      os.umask(old)

  def test_json_writes_null_for_non_finite_floats(self):
    root = pathlib.Path(self.create_tempdir().full_path)
    obj = {"nan": math.nan, "list": [math.inf, -math.inf, np.float32("nan"), 1.5],
           "nested": {"x": np.float64("inf"), "ok": np.float32(0.25)},
           "array": np.array([1.0, np.nan]), "none": None}
    expected = {"nan": None, "list": [None, None, None, 1.5], "nested": {"x": None, "ok": 0.25},
                "array": [1.0, None], "none": None}

    def refuse(constant):  # What a strict JSON parser does with NaN / Infinity.
      raise ValueError(f"bare {constant} in JSON")

    text = atomic.write_json(root / "r.json", obj).read_text()
    self.assertEqual(json.loads(text, parse_constant=refuse), expected)
    self.assertEqual(json.loads(atomic.json_text(obj), parse_constant=refuse), expected)
    self.assertEqual(atomic.json_text({"b": 1, "a": [2]}, sort_keys=True),
                     json.dumps({"b": 1, "a": [2]}, sort_keys=True))  # Finite: as json.dumps.

  def test_write_numpy_gives_the_bytes_numpy_writes(self):
    tmp = pathlib.Path(self.create_tempdir().full_path)
    w, v = np.arange(3.0), np.eye(3, dtype=np.float32)
    np.savez(tmp / "direct.npz", eigvals=w, eigvecs=v)
    np.save(tmp / "direct.npy", w, allow_pickle=False)
    atomic.write_numpy(tmp / "atomic.npz", np.savez, eigvals=w, eigvecs=v)
    atomic.write_numpy(tmp / "atomic.npy", np.save, w, allow_pickle=False)
    for suffix in (".npz", ".npy"):
      self.assertEqual((tmp / f"atomic{suffix}").read_bytes(),
                       (tmp / f"direct{suffix}").read_bytes())
    self.assertEqual(sorted(p.name for p in tmp.iterdir()),
                     ["atomic.npy", "atomic.npz", "direct.npy", "direct.npz"])  # no temp files

  def test_failed_write_keeps_the_old_file(self):
    root = pathlib.Path(self.create_tempdir().full_path)
    atomic.write_text(root / "f", "old")
    with self.assertRaises(TypeError):
      atomic.write_bytes(root / "f", "not bytes")
    self.assertEqual((root / "f").read_text(), "old")
    self.assertEqual(sorted(p.name for p in root.iterdir()), ["f"])

  def test_a_full_disk_names_the_file_and_the_space_needed(self):
    root = pathlib.Path(self.create_tempdir().full_path)
    full = OSError(errno.ENOSPC, "No space left on device")
    with mock.patch.object(atomic.os, "fsync", side_effect=full):
      with self.assertRaises(OSError) as raised:
        atomic.write_bytes(root / "gram_info.json", b"12345")
    self.assertEqual(raised.exception.errno, errno.ENOSPC)
    message = str(raised.exception)
    self.assertIn(f"No space left to write {root / 'gram_info.json'}: it needs 5 bytes, ", message)
    self.assertRegex(message, r"\d+ bytes are free there")
    self.assertEqual(os.listdir(root), [])  # No temp file left.

  def test_replace_dir_swaps_whole_directories(self):
    root = pathlib.Path(self.create_tempdir().full_path)
    target = root / "ckpt"
    atomic.replace_dir(target, lambda d: (d / "a").write_text("1"))
    atomic.replace_dir(target, lambda d: (d / "b").write_text("2"))
    self.assertEqual(sorted(p.name for p in target.iterdir()), ["b"])
    self.assertEqual(sorted(p.name for p in root.iterdir()), ["ckpt"])

    def fail(d):
      (d / "c").write_text("3")
      raise RuntimeError("killed")
    with self.assertRaises(RuntimeError):
      atomic.replace_dir(target, fail)
    self.assertEqual(sorted(p.name for p in target.iterdir()), ["b"])
    self.assertEqual(sorted(p.name for p in root.iterdir()), ["ckpt"])

  def test_recover_dir_undoes_a_kill_between_the_renames(self):
    root = pathlib.Path(self.create_tempdir().full_path)
    target = root / "ckpt"
    atomic.replace_dir(target, lambda d: (d / "a").write_text("1"))
    # The state a kill leaves after the old directory was moved aside and before
    # the new one was renamed into place.
    os.rename(target, root / ".ckpt.old")
    (root / ".ckpt.0123.partial").mkdir()
    atomic.recover_dir(target)
    self.assertEqual((target / "a").read_text(), "1")
    self.assertEqual(sorted(p.name for p in root.iterdir()), ["ckpt"])


if __name__ == "__main__":
  absltest.main()
