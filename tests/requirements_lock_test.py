"""requirements.lock pins every package with its sha256, and scripts/setup.sh checks them.

The install itself (pip's --require-hashes into a fresh virtualenv) needs the
network; this test checks the files that make it hash-checked.
"""

import pathlib
import re

from absl.testing import absltest

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
_HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def _requirements(path: pathlib.Path):
  """(text, ...) of each requirement of a pip requirements file, continuation lines joined."""
  joined = re.sub(r"\\\n", " ", path.read_text())
  return [line.strip() for line in joined.splitlines()
          if line.strip() and not line.lstrip().startswith("#")]


def _name(text: str) -> str:
  return re.sub(r"[-_.]+", "-", _PIN.match(text).group(1)).lower()


class RequirementsLockTest(absltest.TestCase):

  def test_every_package_pinned_with_hashes(self):
    requirements = _requirements(_ROOT / "requirements.lock")
    self.assertNotEmpty(requirements)
    for text in requirements:
      self.assertRegex(text, _PIN, msg="not pinned with ==")
      self.assertRegex(text, _HASH, msg=f"{_name(text)} has no sha256")
    names = [_name(text) for text in requirements]
    self.assertEqual(len(names), len(set(names)))
    self.assertContainsSubset({"tensorflow", "keras", "numpy", "setuptools"}, set(names))

  def test_direct_dependencies_pinned_alike(self):
    locked = {_name(t): _PIN.match(t).group(2) for t in _requirements(_ROOT / "requirements.lock")}
    for text in _requirements(_ROOT / "requirements.txt"):
      self.assertEqual(locked.get(_name(text)), _PIN.match(text).group(2), msg=text)

  def test_setup_installs_with_hash_checking(self):
    setup = re.sub(r"\\\n\s*", " ", (_ROOT / "scripts" / "setup.sh").read_text())
    installs = [line for line in setup.splitlines() if "-r requirements.lock" in line]
    self.assertLen(installs, 1)
    self.assertIn("--require-hashes", installs[0])


if __name__ == "__main__":
  absltest.main()
