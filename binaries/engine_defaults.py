"""The engines every experiment binary runs on unless the user chose: oneDNN on.

Import it first, before anything that loads TensorFlow (the binaries do):

    from binaries import engine_defaults  # pylint: disable=unused-import

TensorFlow 2.21 reads `TF_ENABLE_ONEDNN_OPTS` once. If the variable is unset, TF turns
its oneDNN kernels on only on CPUs with AVX-512 VNNI/BF16, AVX-VNNI or AMX
(`ntk_tf.onednn.enabled`). Elsewhere it uses its Eigen kernels, and those are slow
for the LeNet's convolutions, which have 3 and 6 input channels.

Measured on a 2-core AMD EPYC without AVX-512 (`benchmarks/bound.py --step`,
docs/performance.md):
- LeNet's training step at batch 128 runs 3-5x faster with oneDNN;
- the LeNet Gram's features are faster by about a quarter, its whole Gram within noise;
- the MLP's step is 5-10% slower, its Gram within noise.

So a binary sets the variable to "1" when it is unset, and only on x86-64 Linux, where
TF ships oneDNN. The ops oneDNN gets wrong are routed around in `ntk_tf/onednn.py`,
and the tests run with oneDNN both off and on (tests/onednn.bzl).

A value the user set is kept, so `TF_ENABLE_ONEDNN_OPTS=0` gives TF's Eigen kernels.
If TensorFlow is already loaded (the binary was imported by other code), the module
changes nothing: the setting would no longer take effect, and it must not leak into
that process's subprocesses.
"""

import os
import platform
import sys

ENV = "TF_ENABLE_ONEDNN_OPTS"


def apply() -> bool:
  """Sets ENV to "1" where it is unset, TF not yet loaded, on x86-64 Linux; True if it did."""
  if ENV in os.environ or "tensorflow" in sys.modules:
    return False
  if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
    return False
  os.environ[ENV] = "1"
  return True


apply()
