"""Brute-force alignment and Theta v, and the bound a sharded sum must meet (float64).

Independent of ntk_tf's NTK code: J `[N, P]` is `ntk_reference.loop_jacobian`
(one GradientTape per example on the float64 twin), and every product is NumPy.

The bound. A sharded pass and a single-process pass compute the same sums over
the N examples, J^T y = sum_i y_i g_i (g_i = grad_theta f(x_i), row i of J),
in different orders (batches summed in one chain vs. per shard, then over
shards; inside a batch by the VJP's matmuls, whose order depends on threads).
Any order of a sum of N terms is within gamma_N sum_i |y_i| |g_i| of the exact
sum (gamma_N = N u / (1 - N u), u = 2^-53 in float64), plus the rounding of
each g_i (backprop: a few layers, of the same relative order). So with
w = sum_i |y_i| |g_i| (entrywise) and eps the resulting relative error:

    |alpha_a - alpha_b| <= 2 (2 ||v|| eps ||w|| + eps^2 ||w||^2) / N^2 <= 6 eps ||w||^2 / N^2
    |(Theta v)_a,i - (Theta v)_b,i| <= 2 eps' (|J| |J|^T |v|)_i       (two sums of N terms)

since ||v|| = ||J^T y|| <= ||w||. For the tests' N <= 64 and small models,
eps is about 1e-14, so RTOL = 1e-12 of these scales leaves a margin of
over 10x; float32 sums would need RTOL ~ 1e-4.
"""

import numpy as np

RTOL = 1e-12


def alignment(jac: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """alpha_c = y_c^T (J J^T) y_c / N^2 `[m]` from J `[N, P]`, y `[N, m]`."""
  theta = jac @ jac.T  # [N, N]
  return np.einsum("im,ij,jm->m", labels, theta, labels) / jac.shape[0]**2


def alignment_scale(jac: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """||w_c||^2 / N^2 `[m]`, w_c = |J|^T |y_c| (>= alpha_c): the scale of the bound."""
  weights = np.abs(jac).T @ np.abs(labels)  # [P, m]
  return np.sum(weights**2, axis=0) / jac.shape[0]**2


def product(jac: np.ndarray, vectors: np.ndarray) -> np.ndarray:
  """Theta V = J (J^T V) `[N, k]`."""
  return jac @ (jac.T @ vectors)


def product_scale(jac: np.ndarray, vectors: np.ndarray) -> np.ndarray:
  """|J| |J|^T |V| `[N, k]`: the scale of the bound on Theta V."""
  return np.abs(jac) @ (np.abs(jac).T @ np.abs(vectors))


def assert_within(test_case, actual, expected, scale, what: str) -> None:
  """|actual - expected| <= RTOL * scale, entrywise."""
  error = np.abs(np.asarray(actual) - np.asarray(expected))
  worst = np.max(error / scale)
  test_case.assertLessEqual(worst, RTOL, f"{what}: max |diff| / scale = {worst:.3g} > {RTOL}")
