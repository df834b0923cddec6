# Sourced by scripts/test.sh and scripts/main.sh: prefer ../shared/data (lossless CIFAR-10 and
# MNIST, see its README) as the local data folder when it exists and nothing else was set.
_NTK_TF_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${NTK_TF_DATA_DIR:-}" ] && [ -f "$_NTK_TF_ROOT/../shared/data/cifar10.npz" ]; then
  export NTK_TF_DATA_DIR="$(cd "$_NTK_TF_ROOT/../shared/data" && pwd)"
fi
# Cached Bazel test results must not outlive a change of the installed packages: the setup
# stamp (a hash of requirements.lock and pyproject.toml) goes into every test's environment
# (.bazelrc: --test_env=NTK_TF_VENV_STAMP) and the venv toolchain's repository rule.
if [ -f "$_NTK_TF_ROOT/.venv/.ntk_tf_setup_stamp" ]; then
  export NTK_TF_VENV_STAMP="$(cat "$_NTK_TF_ROOT/.venv/.ntk_tf_setup_stamp")"
fi
