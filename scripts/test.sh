#!/usr/bin/env bash
# Runs the whole ntk_tf test suite through Bazel, after an idempotent set-up.
# Usage: scripts/test.sh [extra bazel test args]   (default target: //...)
# Ends with a line "N passed, N failed" (test targets) and exits non-zero if any failed.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if ! bash scripts/setup.sh; then
  echo "[test] setup failed"
  echo "0 passed, 1 failed"
  exit 1
fi
source scripts/data_dir.sh
export TF_CPP_MIN_LOG_LEVEL=2
if [ -n "${NTK_TF_DATA_DIR:-}" ]; then
  echo "[test] real data: $NTK_TF_DATA_DIR"
else
  echo "[test] no local data found (../shared/data); tests tagged requires-data are excluded"
fi
LOG="$(mktemp)"
TARGETS=("$@")
if [ ${#TARGETS[@]} = 0 ]; then TARGETS=("//..."); fi
bazel test --color=no --curses=no $([ -z "${NTK_TF_DATA_DIR:-}" ] && echo --test_tag_filters=-gpu,-requires-data) "${TARGETS[@]}" 2>&1 | tee "$LOG"
BAZEL_RC=${PIPESTATUS[0]}
.venv/bin/python3 scripts/count_tests.py "$LOG" "$ROOT/bazel-testlogs"
COUNT_RC=$?
rm -f "$LOG"
if [ "$BAZEL_RC" != 0 ] || [ "$COUNT_RC" != 0 ]; then exit 1; fi
exit 0
