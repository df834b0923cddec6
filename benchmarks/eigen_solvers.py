r"""Times eigen(K, k) methods side by side against dense eigh on one saved Gram.

    bazel run //benchmarks:eigen_solvers -- --gram=/tmp/mlp_gram_8000.npy --k=1000

Reports, per method and repeat: seconds, the max eigenvalue error relative to
lambda_1, and sign(phi_j) agreement with dense eigh (worst j and the fraction
over all j <= k), after the same sign convention. Dense is the reference
(numpy.linalg.eigh in float64). Timings belong to the machine that ran them:
record them in README with its load and BLAS.
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

import ntk_tf.eigen  # pylint: disable=unused-import
eigen_module = sys.modules["ntk_tf.eigen"]

_GRAM = flags.DEFINE_string("gram", None, "Path of a saved [N, N] Gram (.npy).")
_K = flags.DEFINE_integer("k", 1000, "Number of eigenpairs.", lower_bound=1)
_METHODS = flags.DEFINE_list("methods", ["auto"], "Top-k methods timed besides dense.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Runs per method; the best time is reported.",
                                lower_bound=1)
_DENSE_REPEATS = flags.DEFINE_integer("dense_repeats", None,
                                      "Runs of dense (default --repeats).", lower_bound=1)
_MMAP = flags.DEFINE_bool("mmap", False, "Read the Gram as a memory map.")
flags.mark_flag_as_required("gram")


def compare(eigvals, eigvecs, ref_vals, ref_vecs):
  """Returns (max |lambda - lambda_ref| / lambda_ref_1, worst j, its agreement, mean agreement)."""
  k = eigvals.shape[0]
  value_error = float(np.max(np.abs(eigvals - ref_vals[:k])) / ref_vals[0])
  agree = np.mean(np.sign(eigvecs) == np.sign(ref_vecs[:, :k]), axis=0)  # [k]
  worst = int(np.argmin(agree))
  return value_error, worst + 1, float(agree[worst]), float(agree.mean())


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  gram = np.load(_GRAM.value, mmap_mode="r" if _MMAP.value else None)
  k = _K.value
  results = []
  ref_vals = ref_vecs = None
  for method in ["dense"] + list(_METHODS.value):
    repeats = _DENSE_REPEATS.value or _REPEATS.value if method == "dense" else _REPEATS.value
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      eigvals, eigvecs = eigen_module.eigen(gram, k, method=method)
      times.append(time.perf_counter() - start)
      logging.info("%s: %.1f s", method, times[-1])
    if method == "dense":
      ref_vals, ref_vecs = eigvals, eigvecs
    row = dict(method=method, n=gram.shape[0], k=k, seconds=times, best_s=min(times))
    row.update(zip(("value_error", "worst_j", "worst_sign_agreement", "mean_sign_agreement"),
                   compare(eigvals, eigvecs, ref_vals, ref_vecs)))
    row["load_average"] = os.getloadavg()
    results.append(row)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  app.run(main)
