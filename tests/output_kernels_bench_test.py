"""benchmarks/output_kernels: its rows, and its Grams against each other.

The Grams `measure` returns must satisfy the output kernels' own relations, checked with
NumPy on the "full" one: diagonal = its a = b entries, trace = their sum, pseudo =
sum_{a,b} / K; and the one-logit Gram is that of a separate one-logit model (its own brute
force Jacobian, tests/ntk_reference).
"""

from tests import test_util  # pylint: disable=unused-import  (quiet TF)

from absl.testing import absltest
import numpy as np

from benchmarks import output_kernels
from ntk_tf import models
from tests import ntk_reference


class OutputKernelsBenchTest(absltest.TestCase):

  def test_rows_and_grams(self):
    x = ntk_reference.inputs(6, seed=0)
    rows, grams, model = output_kernels.measure("mlp", 6, 3, x, repeats=1)
    self.assertEqual([r["output_kernel"] for r in rows], list(output_kernels.KERNELS))
    self.assertEqual(rows[0]["vs_one_logit"], 1.0)
    for r in rows:
      self.assertGreater(r["seconds"], 0)
      self.assertGreaterEqual(r["peak_mib"], 0)
      self.assertAlmostEqual(r["vs_k2_grams"], r["vs_one_logit"] / 9)
    full = grams["full"]  # [N, N, K, K]
    self.assertEqual(full.shape, (6, 6, 3, 3))
    diagonal = np.diagonal(full, axis1=2, axis2=3)
    np.testing.assert_allclose(grams["diagonal"], diagonal, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grams["trace"], diagonal.sum(-1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grams["pseudo"], full.sum((2, 3)) / 3, rtol=1e-5, atol=1e-6)
    self.assertEqual(model.outputs[0].shape[-1], 3)
    one = ntk_reference.loop_jacobian(
        models.get("mlp", input_shape=x.shape[1:], seed=0), x)  # [N, P]
    np.testing.assert_allclose(grams["one_logit"], one @ one.T, rtol=1e-4, atol=1e-5)


if __name__ == "__main__":
  absltest.main()
