"""Tests of the binaries' front end (ntk_tf/experiments/cli.py): usage errors before any folder."""

import contextlib
import errno
import io
import os
import pathlib
import stat

from tests import test_util  # pylint: disable=unused-import  (quiet TF)

from absl import app
from absl.testing import absltest
from absl.testing import parameterized

from configs import cifar2_sample_size as cifar2_config
from configs import eigenfunctions as eigenfunctions_config
from configs import kernel_rotation as kernel_rotation_config
from configs import late_linearization as late_linearization_config
from configs import nads as nads_config
from ntk_tf.data import sources
from ntk_tf.experiments import cifar2_sample_size
from ntk_tf.experiments import cli
from ntk_tf.experiments import eigenfunctions
from ntk_tf.experiments import kernel_rotation
from ntk_tf.experiments import late_linearization
from ntk_tf.experiments import nads

_EXPERIMENTS = {
    "cifar2_sample_size": (cifar2_sample_size, cifar2_config, "models"),
    "eigenfunctions": (eigenfunctions, eigenfunctions_config, "models"),
    "kernel_rotation": (kernel_rotation, kernel_rotation_config, "models"),
    "late_linearization": (late_linearization, late_linearization_config, "model"),
    "nads": (nads, nads_config, "model"),
}
_WITH_DATA = [n for n in _EXPERIMENTS if n != "nads"]


class _Holder:
  def __init__(self, value):
    self.value = value


def _run(name, workdir, **overrides):
  experiment, config_module, _ = _EXPERIMENTS[name]
  config = config_module.get_config("smoke")
  for key, value in overrides.items():
    config[key] = value
  holders = cli.ExperimentFlags(_Holder(config), _Holder(str(workdir)), None)
  return cli.run_experiment(experiment, holders, ["binary"])


def _first_model(name):
  _, config_module, field = _EXPERIMENTS[name]
  value = config_module.get_config("smoke")[field]
  return value if isinstance(value, str) else value[0].split(",")[0]


class CliTest(parameterized.TestCase):

  @parameterized.parameters(errno.ENOSPC, errno.EACCES, errno.EROFS)
  def test_a_disk_or_permission_error_is_one_line_exit_1(self, code):
    def main(argv):
      del argv
      raise OSError(code, os.strerror(code), "/runs/a/results.csv")
    stderr = io.StringIO()
    entry = cli._entry(main)  # pylint: disable=protected-access
    with contextlib.redirect_stderr(stderr):
      self.assertEqual(entry(["binaries/nads.py"]), 1)
    self.assertEqual(stderr.getvalue(),
                     f"nads: error: [Errno {code}] {os.strerror(code)}: '/runs/a/results.csv'\n")

  def test_other_os_errors_keep_their_traceback(self):
    def main(argv):
      del argv
      raise OSError(errno.EIO, "I/O error")
    with self.assertRaises(OSError):
      cli._entry(main)(["binaries/nads.py"])  # pylint: disable=protected-access

  @parameterized.product(
      name=list(_EXPERIMENTS),
      kwargs=[({"widht": 8}, "widht"), ({"width": 0}, "width"), ({"depth": -1}, "depth")])
  def test_bad_model_kwargs_fail_before_the_workdir_exists(self, name, kwargs):
    extras, key = kwargs
    model = _first_model(name)
    if model != "mlp" and key == "depth":
      return  # Only the MLP has a depth.
    workdir = pathlib.Path(self.create_tempdir().full_path) / "run"
    with self.assertRaisesRegex(app.UsageError, f"config.model_kwargs.{model}.{key}"):
      _run(name, workdir, model_kwargs={model: extras})
    self.assertFalse(workdir.exists())

  @parameterized.parameters(*_WITH_DATA)
  def test_missing_data_dir_is_the_same_usage_error_everywhere(self, name):
    workdir = pathlib.Path(self.create_tempdir().full_path) / "run"
    with self.assertRaisesRegex(app.UsageError, "config.data_dir must be an existing folder. "
                                "Received: data_dir='/nonexistent'"):
      _run(name, workdir, data_dir="/nonexistent")
    self.assertFalse(workdir.exists())

  @parameterized.parameters(*_EXPERIMENTS)
  def test_workdir_that_is_a_file_is_a_usage_error(self, name):
    path = pathlib.Path(self.create_tempdir().full_path) / "file"
    path.write_text("x")
    with self.assertRaisesRegex(app.UsageError, "workdir must be a folder.*exists and is not"):
      _run(name, path)
    with self.assertRaisesRegex(app.UsageError, "workdir must be a folder"):
      _run(name, path / "below")

  @parameterized.parameters(*_WITH_DATA)
  def test_bad_data_file_is_one_line_and_leaves_no_workdir(self, name):
    data_dir = pathlib.Path(self.create_tempdir().full_path)
    for raw in ("cifar10", "mnist"):
      (data_dir / f"{raw}.npz").write_bytes(b"PK\x03\x04 not a whole zip file")
    workdir = pathlib.Path(self.create_tempdir().full_path) / "run"
    with self.assertRaisesRegex(sources.DataFileError, "Corrupt or unreadable dataset file "
                                f"{data_dir}/(cifar10|mnist).npz"):
      _run(name, workdir, data_dir=str(data_dir), progress=False)
    self.assertFalse(os.path.lexists(workdir), sorted(workdir.rglob("*")))

  def test_data_errors_reach_the_user_in_one_line(self):
    for error in (sources.DataFileError("Corrupt or unreadable dataset file /d/mnist.npz: x"),
                  sources.DataNotFoundError("Dataset 'mnist' not found.")):
      def main(argv, error=error):
        del argv
        raise error
      stderr = io.StringIO()
      with contextlib.redirect_stderr(stderr):
        self.assertEqual(cli._entry(main)(["binaries/nads.py"]), 1)  # pylint: disable=protected-access
      self.assertEqual(stderr.getvalue(), f"nads: error: {error}\n")

  def test_wrong_arrays_in_a_data_file_are_a_data_file_error(self):
    data_dir = pathlib.Path(self.create_tempdir().full_path)
    import numpy as np  # pylint: disable=g-import-not-at-top
    np.savez(data_dir / "mnist.npz", x_train=np.zeros((2, 28, 28), np.float32))
    with self.assertRaisesRegex(sources.DataFileError, "mnist.npz: missing arrays"):
      sources.load_raw("mnist", str(data_dir))

  @parameterized.parameters(*_EXPERIMENTS)
  def test_dangling_symlink_workdir_is_a_usage_error(self, name):
    root = pathlib.Path(self.create_tempdir().full_path)
    (root / "link").symlink_to(root / "gone")
    for workdir in (root / "link", root / "link" / "below"):
      with self.assertRaisesRegex(app.UsageError, f"{root}/link is a symbolic link to "
                                  f"{root}/gone, which does not exist"):
        _run(name, workdir)
    self.assertFalse((root / "gone").exists())

  def test_a_workdir_with_work_or_made_before_is_kept_on_error(self):
    from ntk_tf.experiments import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
    root = pathlib.Path(self.create_tempdir().full_path)
    cases = {"fresh": False, "existing": True, "with_result": True}
    for case, kept in cases.items():
      path = root / case
      if case == "existing":
        path.mkdir()
      with self.assertRaises(RuntimeError):
        with workdir_lib.removed_if_unused(path):
          path.mkdir(exist_ok=True)
          (path / "results").mkdir()
          (path / "config.json").write_text("{}")
          (path / "settings.json").write_text("{}")
          if case == "with_result":
            (path / "results" / "task.json").write_text("{}")
          raise RuntimeError("stop")
      self.assertEqual(path.exists(), kept, case)
    self.assertTrue((root / "with_result" / "results" / "task.json").exists())

  def test_data_error_names_the_config_field_the_binaries_take(self):
    with self.assertRaises(sources.DataNotFoundError) as caught:
      sources.load_raw("mnist", self.create_tempdir().full_path)
    self.assertIn("--config.data_dir=", str(caught.exception))
    self.assertIn("NTK_TF_DATA_DIR", str(caught.exception))
    self.assertNotIn("pass data_dir / --data_dir", str(caught.exception))

  def test_result_files_are_0644_under_umask_022(self):
    workdir = pathlib.Path(self.create_tempdir().full_path) / "run"
    old = os.umask(0o022)
    try:
      _run("nads", workdir, progress=False)
    finally:
      os.umask(old)
    files = [p for p in workdir.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    for expected in ("config.json", "settings.json", "results.csv"):
      self.assertIn(expected, names)
    self.assertTrue(any(p.parent.name == "results" for p in files))
    self.assertTrue(any(p.name == "recipe.json" for p in files))  # Training state folders.
    modes = {str(p.relative_to(workdir)): stat.S_IMODE(p.stat().st_mode) for p in files}
    self.assertEqual({k: oct(m) for k, m in modes.items() if m != 0o644}, {})


if __name__ == "__main__":
  absltest.main()
