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
