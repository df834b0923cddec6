"""Tests for ops.structured_blocks: compiled equals eager equals NumPy; no retracing."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from tests import test_util  # pylint: disable=unused-import
from ops import structured_blocks


def _random(*shapes, seed=0):
  rng = np.random.default_rng(seed)
  return [tf.constant(rng.normal(size=s)) for s in shapes]


class StructuredBlocksTest(parameterized.TestCase):

  def test_gram_product_by_numpy(self):
    la, lb, ra, rb = _random((5, 7), (3, 7), (5, 2), (3, 2))
    expected = (la.numpy() @ lb.numpy().T) * (ra.numpy() @ rb.numpy().T)
    np.testing.assert_allclose(structured_blocks.gram_product(la, lb, ra, rb), expected,
                               rtol=1e-12)
    ones = lambda t: np.concatenate([t.numpy(), np.ones((len(t), 1))], axis=1)  # The bias column.
    with_bias = (ones(la) @ ones(lb).T) * (ra.numpy() @ rb.numpy().T)
    np.testing.assert_allclose(structured_blocks.gram_product(la, lb, ra, rb, 1.0), with_bias,
                               rtol=1e-12)

  def test_positional_forms_agree_with_a_loop(self):
    pa, da, pb, db = _random((3, 4, 6), (3, 4, 2), (2, 4, 6), (2, 4, 2), seed=1)
    grads = lambda p, d: np.stack([sum(np.outer(p[i, s], d[i, s]) for s in range(4)).ravel()
                                   for i in range(len(p))])  # [N, K*C]
    ga, gb = grads(pa.numpy(), da.numpy()), grads(pb.numpy(), db.numpy())
    np.testing.assert_allclose(structured_blocks.positional_gradient(pa, da), ga, rtol=1e-12)
    np.testing.assert_allclose(structured_blocks.gradient_gram(tf.constant(ga), tf.constant(gb)),
                               ga @ gb.T, rtol=1e-12)
    np.testing.assert_allclose(structured_blocks.positional_gram_product(pa, da, pb, db),
                               ga @ gb.T, rtol=1e-12)

  @parameterized.parameters("gram_product", "positional_gram_product")
  def test_compiled_equals_eager_and_does_not_retrace(self, name):
    fn = getattr(structured_blocks, name)
    shapes = ((4, 5), (4, 5), (4, 3), (4, 3)) if name == "gram_product" else \
        ((4, 2, 5), (4, 2, 3), (4, 2, 5), (4, 2, 3))
    args = _random(*shapes, seed=2)
    compiled = fn(*args)
    np.testing.assert_allclose(compiled, fn.python_function(*args), rtol=1e-12)
    traces = fn.experimental_get_tracing_count()
    fn(*_random(*shapes, seed=3))  # A new block of the same shape.
    self.assertEqual(fn.experimental_get_tracing_count(), traces)


if __name__ == "__main__":
  absltest.main()
