"""Tracked files are written for users: no diary words, no paths of one machine.

README and docs are for users and results are generated (STYLE rule 22): no file
reads as a lab notebook (the words of `_DIARY`), names an absolute path of the
computer it was written on, or points at the computer it runs on (`_THIS_MACHINE`);
README stays at most 250 lines.
"""

import pathlib
import re
import subprocess

from absl.testing import absltest
from absl.testing import parameterized

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_SELF = pathlib.Path(__file__).resolve()

# Built from pieces so that this file does not match itself.
_DIARY = re.compile(r"\b" + "sess" + r"ions?\b", re.I)
_THIS_MACHINE = re.compile(r"\bthis " + "mach" + r"ine\b", re.I)
# Absolute paths of a developer's machine: home and work folders.
_MACHINE_PATH = re.compile(r"(?<![\w.])/(?:" + "|".join(("wo" + "rk", "ro" + "ot", "ho" + "me"))
                           + r")/")
_TEXT_SUFFIXES = {".py", ".md", ".txt", ".sh", ".bzl", ".toml", ".cfg", ".csv", ".json", ""}


def tracked_files():
  """The repository's tracked text files (git ls-files; every file where git is absent)."""
  try:
    names = subprocess.run(["git", "-C", str(_ROOT), "ls-files"], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    paths = [_ROOT / n for n in names]
  except (OSError, subprocess.CalledProcessError):
    skip = {".git", ".venv", "runs", "__pycache__"}
    paths = [p for p in _ROOT.rglob("*")
             if not (set(p.relative_to(_ROOT).parts) & skip) and not p.name.startswith("bazel-")]
  return [p for p in paths if p.is_file() and p.suffix in _TEXT_SUFFIXES and p != _SELF]


def offenders(pattern: re.Pattern):
  found = []
  for path in tracked_files():
    try:
      text = path.read_text()
    except (UnicodeDecodeError, OSError):
      continue
    for number, line in enumerate(text.splitlines(), 1):
      if pattern.search(line):
        found.append(f"{path.relative_to(_ROOT)}:{number}: {line.strip()[:100]}")
  return found


class DocsTest(parameterized.TestCase):

  def test_finds_tracked_files(self):
    names = {p.relative_to(_ROOT).as_posix() for p in tracked_files()}
    self.assertContainsSubset({"README.md", "ntk_tf/__init__.py", "tests/BUILD"}, names)

  @parameterized.named_parameters(("diary_words", _DIARY), ("this_machine", _THIS_MACHINE),
                                  ("machine_paths", _MACHINE_PATH))
  def test_no_offending_lines(self, pattern):
    self.assertEqual(offenders(pattern), [])

  def test_patterns_catch_offences(self):
    self.assertTrue(_DIARY.search("measured in the third Sess" + "ion"))
    self.assertTrue(_THIS_MACHINE.search("on This mach" + "ine"))
    self.assertTrue(_MACHINE_PATH.search("--workdir=/wo" + "rk/runs/x"))
    self.assertFalse(_MACHINE_PATH.search("--workdir=runs/x"))
    self.assertFalse(_MACHINE_PATH.search("see docs/wo" + "rk/ and ~/x"))

  def test_readme_is_short(self):
    self.assertLessEqual(len((_ROOT / "README.md").read_text().splitlines()), 250)


if __name__ == "__main__":
  absltest.main()
