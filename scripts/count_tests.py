"""Summarizes a `bazel test` log: test targets passed/failed, and test cases from test.xml.

Prints one line per target that did not pass, the target totals, then the closing line
"N passed, N failed, N skipped" counted over test cases (from each target's test.xml;
a target that failed without writing test cases counts as one failed case). Exits 1 if any
target failed or none ran.
"""

import pathlib
import re
import sys
import xml.etree.ElementTree as ET

_STATUS = re.compile(r"^(//\S+)\s+(?:\(cached\)\s+)?(PASSED|FAILED|TIMEOUT|FLAKY|NO STATUS|"
                     r"FAILED TO BUILD|INCOMPLETE|SKIPPED)\b")


def main(log_path: str, testlogs: str) -> int:
  statuses = {}
  for line in pathlib.Path(log_path).read_text(errors="replace").splitlines():
    m = _STATUS.match(line.strip())
    if m:
      statuses[m.group(1)] = m.group(2)
  passed = sum(s == "PASSED" for s in statuses.values())
  skipped = sum(s == "SKIPPED" for s in statuses.values())
  failed = len(statuses) - passed - skipped
  cases = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
  for target in statuses:
    xml = pathlib.Path(testlogs) / target.lstrip("/").replace(":", "/") / "test.xml"
    if not xml.is_file():
      continue
    try:
      root = ET.parse(xml).getroot()
    except ET.ParseError:
      continue
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    for suite in suites:
      for key in ("tests", "failures", "errors"):
        cases[key] += int(suite.get(key, 0) or 0)
      # absltest marks skipped cases status="notrun"; JUnit writers use <skipped/>.
      cases["skipped"] += sum(1 for case in suite.iter("testcase")
                              if case.get("status") == "notrun" or case.find("skipped") is not None)
  for target, status in sorted(statuses.items()):
    if status not in ("PASSED", "SKIPPED"):
      print(f"[test] {status}: {target}")
      if status not in ("FAILED", "TIMEOUT", "FLAKY") or not _has_cases(testlogs, target):
        cases["errors"] += 1  # A target that broke before writing its test cases.
  print(f"[test] test targets: {passed} passed, {failed} failed, {skipped} skipped")
  case_failed = cases["failures"] + cases["errors"]
  case_passed = max(cases["tests"] - cases["failures"] - cases["skipped"] - cases["errors"], 0)
  print(f"{case_passed} passed, {case_failed} failed, {cases['skipped']} skipped")
  return 0 if failed == 0 and passed > 0 else 1


def _has_cases(testlogs: str, target: str) -> bool:
  xml = pathlib.Path(testlogs) / target.lstrip("/").replace(":", "/") / "test.xml"
  return xml.is_file() and "<testcase" in xml.read_text(errors="replace")


if __name__ == "__main__":
  sys.exit(main(sys.argv[1], sys.argv[2]))
