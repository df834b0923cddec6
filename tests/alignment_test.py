"""Tests for ntk_tf.alignment (Lemma 1) and energy_concentration (Sec. 4.2)."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tests import test_util  # pylint: disable=unused-import
from tests import ntk_reference
import ntk_tf

_SHAPE = (8, 8, 3)


class AlignmentTest(parameterized.TestCase):

  @parameterized.parameters(("mlp", {}), ("lenet", {}))
  def test_matches_brute_force_gram(self, name, extra):
    kwargs = dict(input_shape=_SHAPE, activation="gelu", seed=2, **extra)
    model = ntk_tf.models.get(name, **kwargs)
    twin = ntk_reference.float64_twin(name, model, **kwargs)
    n = 11
    x = np.random.RandomState(0).randn(n, *_SHAPE).astype(np.float32)
    jac = ntk_reference.loop_jacobian(twin, x)  # [N, P]
    theta = jac @ jac.T  # [N, N] brute-force Gram
    labels = np.random.RandomState(1).randn(n, 3)  # [N, m]
    with self.subTest("y [N, m]"):
      alphas = ntk_tf.alignment(model, x, labels, batch_size=4, dtype="float64")
      expected = np.einsum("im,ij,jm->m", labels, theta, labels) / n**2  # y^T Theta y / N^2
      self.assertEqual(alphas.shape, (3,))
      np.testing.assert_allclose(alphas, expected, rtol=1e-10)
    with self.subTest("y [N]"):
      alpha = ntk_tf.alignment(model, x, labels[:, 0], batch_size=4, dtype="float64")
      self.assertIsInstance(alpha, np.ndarray)
      self.assertEqual(alpha.shape, ())
      self.assertEqual(alpha.dtype, np.float64)
      self.assertAlmostEqual(float(alpha) / expected[0], 1.0, delta=1e-10)
    with self.subTest("eigenvectors: alpha(phi_j) = lambda_j / N^2"):
      eigvals, eigvecs = np.linalg.eigh(theta)  # unit eigenvectors (NumPy)
      alphas = ntk_tf.alignment(model, x, eigvecs[:, -3:], dtype="float64")
      np.testing.assert_allclose(alphas, eigvals[-3:] / n**2, rtol=1e-8)
    with self.subTest("float32"):
      alphas = ntk_tf.alignment(model, x, labels)
      np.testing.assert_allclose(alphas, expected, rtol=1e-4)

  def test_bad_labels(self):
    model = ntk_tf.models.get("mlp", input_shape=_SHAPE)
    x = np.zeros((4, *_SHAPE), np.float32)
    with self.assertRaisesRegex(ValueError, r"y.shape=\(5,\)"):
      ntk_tf.alignment(model, x, np.ones(5))
    with self.assertRaisesRegex(ValueError, "batch_size=0"):
      ntk_tf.alignment(model, x, np.ones(4), batch_size=0)


class EnergyConcentrationTest(absltest.TestCase):

  def test_closed_form(self):
    basis, _ = np.linalg.qr(np.random.RandomState(0).randn(6, 6))
    # y = 3 phi_1 + 4 phi_3: E_1 = 9/25, E_2 = 9/25, E_3 = 1.
    y = 3 * basis[:, 0] + 4 * basis[:, 2]
    for k, want in ((1, 9 / 25), (2, 9 / 25), (3, 1.0)):
      energy = ntk_tf.energy_concentration(basis, y, k)
      self.assertIsInstance(energy, np.ndarray)
      self.assertEqual(energy.shape, ())
      self.assertAlmostEqual(float(energy), want)
    both = ntk_tf.energy_concentration(basis, np.stack([y, basis[:, 1]], 1), 2)
    self.assertEqual(both.shape, (2,))
    np.testing.assert_allclose(both, [9 / 25, 1.0])

  def test_k_out_of_range(self):
    with self.assertRaisesRegex(ValueError, "k=7"):
      ntk_tf.energy_concentration(np.eye(6), np.ones(6), 7)
    with self.assertRaisesRegex(ValueError, "k=0"):
      ntk_tf.energy_concentration(np.eye(6), np.ones(6), 0)
    with self.assertRaisesRegex(ValueError, "k=None"):
      ntk_tf.energy_concentration(np.eye(6), np.ones(6), None)


if __name__ == "__main__":
  absltest.main()
