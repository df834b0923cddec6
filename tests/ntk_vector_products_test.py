"""Tests for ntk_tf.ntk.ntk_vector_products against per-example GradientTape Grams."""

from absl.testing import absltest
import numpy as np

from tests import test_util  # pylint: disable=unused-import
from tests import ntk_reference as brute
import ntk_tf
from ntk_tf.ntk import ntk_vector_products


class NtkVectorProductsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    with brute.floatx("float64"):
      cls.model = ntk_tf.models.lenet((8, 8, 3), activation="gelu")
    cls.x = np.random.default_rng(0).normal(size=(7, 8, 8, 3))
    cls.theta = brute.brute_force_gram(cls.model, cls.x)

  def test_matvec_and_matmat(self):
    op = ntk_vector_products.NtkOperator(self.model, self.x, batch_size=3, dtype="float64")
    self.assertEqual(op.shape, (7, 7))
    v = np.random.default_rng(1).normal(size=7)
    self.assertLessEqual(brute.rel_error(op.matvec(v), self.theta @ v), 1e-10)
    self.assertLessEqual(brute.rel_error(op.matmat(np.eye(7)), self.theta), 1e-10)

  def test_scipy_top_eigenvalues(self):
    from scipy.sparse import linalg
    op = ntk_vector_products.NtkOperator(self.model, self.x, batch_size=4, dtype="float64")
    top = np.sort(linalg.eigsh(op.as_linear_operator(), k=2, which="LA")[0])
    np.testing.assert_allclose(top, np.linalg.eigvalsh(self.theta)[-2:], rtol=1e-9)

  def test_block_fn_rectangular(self):
    block_fn = ntk_vector_products.make_block_fn(self.model, "float64")
    self.assertLessEqual(brute.rel_error(block_fn(self.x[:3], self.x[3:]), self.theta[:3, 3:]),
                         1e-10)
    self.assertLessEqual(brute.rel_error(block_fn(self.x[:3]), self.theta[:3, :3]), 1e-10)

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, "Received: batch_size=0"):
      ntk_vector_products.NtkOperator(self.model, self.x, batch_size=0)
    op = ntk_vector_products.NtkOperator(self.model, self.x, batch_size=4, dtype="float64")
    with self.assertRaisesRegex(ValueError, r"Received: shape=\(3,\)"):
      op.matvec(np.ones(3))


if __name__ == "__main__":
  absltest.main()
