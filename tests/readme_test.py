"""README's library example runs as written, on the synthetic data of the tests."""

import os
import pathlib
import re
import subprocess
import sys
import tempfile

from absl.testing import absltest

from tests import test_util

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def library_example(readme: str) -> str:
  """The first ```python block after the heading "## Using the library"."""
  section = readme.split("## Using the library", 1)[1]
  match = re.search(r"```python\n(.*?)```", section, re.S)
  if match is None:
    raise ValueError("README has no python block under '## Using the library'")
  return match.group(1)


class ReadmeExampleTest(absltest.TestCase):

  def test_example_is_short(self):
    code = library_example((_ROOT / "README.md").read_text())
    self.assertLessEqual(len(code.strip().splitlines()), 20)

  def test_example_runs(self):
    code = library_example((_ROOT / "README.md").read_text())
    data_dir = test_util.smoke_data_dir(self)
    with tempfile.TemporaryDirectory() as cwd:
      script = pathlib.Path(cwd) / "example.py"
      script.write_text(code)
      env = dict(os.environ, NTK_TF_DATA_DIR=data_dir,
                 PYTHONPATH=os.pathsep.join([str(_ROOT)] + sys.path))
      out = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=600)
      self.assertEqual(out.returncode, 0, out.stderr[-3000:])
      # The last line: the linearized model's test accuracy, and max |GramStore - ntk_gram|.
      test_acc, max_diff = (float(v) for v in out.stdout.strip().splitlines()[-1].split())
      self.assertBetween(test_acc, 0.0, 1.0)
      self.assertEqual(max_diff, 0.0)
      self.assertTrue((pathlib.Path(cwd) / "runs/example/theta0/gram.npy").is_file())


if __name__ == "__main__":
  absltest.main()
