"""Binary tasks from NTK eigenfunctions: labels sign(phi_j) (Sec. 3.1, App. B).

    y_j = sign(phi_j) in {-1, +1},   overlap_j = <sign(phi_j) / sqrt(N), phi_j / ||phi_j||>

Shapes: eigenvectors `[N, k]`, labels `[N]`. j is 1-based: j = 1 is the top
eigenvector. Entries exactly 0 get label -1 (they add 0 to the overlap).
Labels are +-1, the convention of all of ntk_tf (see `ntk_tf/__init__.py`).
"""

from typing import Tuple

import numpy as np


def eigenfunction_signs(eigvecs: np.ndarray, j: int) -> Tuple[np.ndarray, float]:
  """Returns the +-1 labels of the task sign(phi_j) and its overlap with phi_j.

      labels_i = +1 if phi_j[i] > 0 else -1
      overlap  = <sign(phi_j) / sqrt(N), phi_j / ||phi_j||>   (~0.78 in the paper)

  Args:
    eigvecs: `[N, k]` eigenvectors as columns (e.g. from `ntk_tf.eigen`).
    j: 1-based index of the eigenvector, 1 <= j <= k.

  Returns:
    (labels `[N]` float32 in {-1, +1}, overlap float in [0, 1]).

  Paper: Sec. 3.1 (eigenfunction tasks), App. B (the overlap).
  """
  eigvecs = np.asarray(eigvecs)
  if eigvecs.ndim != 2:
    raise ValueError(f"eigvecs must be [N, k]. Received: eigvecs.shape={eigvecs.shape}")
  num = eigvecs.shape[1]
  if isinstance(j, bool) or not isinstance(j, (int, np.integer)) or not 1 <= j <= num:
    raise ValueError(f"j must be an int in [1, k={num}] (1-based). Received: j={j!r}")
  phi = eigvecs[:, j - 1].astype(np.float64)  # [N]
  norm = np.linalg.norm(phi)
  if norm == 0 or not np.isfinite(norm):
    raise ValueError(f"eigenvector j={j} must be finite and nonzero. Received: norm={norm}")
  signs = np.where(phi > 0, 1.0, -1.0)  # [N]
  overlap = float(signs @ phi / (np.sqrt(phi.shape[0]) * norm))
  return signs.astype(np.float32), overlap

