"""binaries/engine_defaults: every experiment binary runs with oneDNN on unless the user chose.

The check is made against TensorFlow itself. TF logs "oneDNN custom operations are on"
when it loads with its oneDNN kernels on (tensorflow/core/util/port.cc), and logs
nothing when they are off.
"""

import ast
import os
import pathlib
import platform
import subprocess
import sys
import unittest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BINARIES = ROOT / "binaries"
# Benchmarks measure the engines as the environment gives them, and say which.
NOT_EXPERIMENTS = {"__init__.py", "engine_defaults.py", "bench_gram.py", "bench_train.py"}
ON_MESSAGE = "oneDNN custom operations are on"
X86_LINUX = sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")


def _env(**overrides):
  env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
  env.update(PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="0", CUDA_VISIBLE_DEVICES="")
  env.update(overrides)
  return env


def _run(args, **overrides) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable] + args, cwd=ROOT, env=_env(**overrides),
                        capture_output=True, text=True, timeout=300, check=False)


def _help(**overrides) -> subprocess.CompletedProcess:
  """`python -m binaries.nads --helpshort`: loads the binary (and TF), prints its usage."""
  result = _run(["-m", "binaries.nads", "--helpshort"], **overrides)
  if not result.stdout.startswith("NADs:"):  # absl exits 1 after printing the usage
    raise AssertionError(f"no usage from binaries.nads (exit {result.returncode}): "
                         f"{result.stderr[-2000:]}")
  return result


class EngineDefaultsTest(unittest.TestCase):

  def test_every_experiment_binary_imports_it_first(self):
    binaries = sorted(p for p in BINARIES.glob("*.py") if p.name not in NOT_EXPERIMENTS)
    self.assertGreaterEqual(len(binaries), 8, [p.name for p in binaries])
    for path in binaries:
      tree = ast.parse(path.read_text())
      imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
      first = imports[0]
      names = [alias.name for alias in first.names]
      self.assertTrue(isinstance(first, ast.ImportFrom) and first.module == "binaries"
                      and names == ["engine_defaults"],
                      f"{path.name}: first import is {ast.unparse(first)!r}, not "
                      "'from binaries import engine_defaults'")

  def test_binary_runs_with_onednn_on_when_unset(self):
    result = _help()
    self.assertEqual(ON_MESSAGE in result.stderr, X86_LINUX, result.stderr[-2000:])

  def test_user_setting_is_kept(self):
    result = _help(TF_ENABLE_ONEDNN_OPTS="0")
    self.assertNotIn(ON_MESSAGE, result.stderr)

  def test_no_effect_once_tensorflow_is_loaded(self):
    code = ("import os, tensorflow, binaries.engine_defaults as e; "
            "print(e.apply(), os.environ.get('TF_ENABLE_ONEDNN_OPTS'))")
    result = _run(["-c", code])
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    self.assertEqual(result.stdout.split(), ["False", "None"])

  def test_sets_the_variable_before_tensorflow(self):
    code = ("import os, binaries.engine_defaults; "
            "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'))")
    result = _run(["-c", code])
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    self.assertEqual(result.stdout.strip(), "1" if X86_LINUX else "None")


if __name__ == "__main__":
  unittest.main()
