"""A LeNet built under keras' "mixed_float16" policy: every NTK quantity in the dtype asked for.

A float32 model is used first in the same process; then the global policy is set
to mixed_float16 (float32 weights, float16 compute) and the LeNet built under it. ntk_gram (every implementation), jacobian, GramStore and NtkOperator
must then compute in float32 / float64, compared with the float64 brute force
of `tests/ntk_reference.py` (a float16 computation is about 1e-3 off). The global
policy is restored after each test.
"""

from tests import test_util  # pylint: disable=unused-import  (quiet TF)

from absl.testing import absltest
from absl.testing import parameterized
import keras
import numpy as np

import ntk_tf
from tests import ntk_reference

_RTOL = {"float32": 1e-5, "float64": 1e-10}


class MixedPrecisionTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.x = ntk_reference.inputs(5, seed=3)  # [5, 8, 8, 3]
    # A float32 model used first in the same process.
    warm = ntk_tf.models.get("lenet", input_shape=ntk_reference.SHAPE, seed=1)
    ntk_tf.ntk_gram(warm, self.x)
    previous = keras.config.dtype_policy()
    self.addCleanup(keras.config.set_dtype_policy, previous)
    keras.mixed_precision.set_global_policy("mixed_float16")
    self.model = ntk_tf.models.get("lenet", input_shape=ntk_reference.SHAPE, seed=0)
    self.assertEqual(self.model.layers[-1].compute_dtype, "float16")
    keras.config.set_dtype_policy(previous)  # The reference is built in float64 ...
    self.twin = ntk_reference.float64_twin("lenet", self.model,
                                           input_shape=ntk_reference.SHAPE, seed=0)
    self.jac_ref = ntk_reference.loop_jacobian(self.twin, self.x)  # [N, P] float64
    self.gram_ref = self.jac_ref @ self.jac_ref.T  # [N, N]
    keras.mixed_precision.set_global_policy("mixed_float16")  # ... and ntk_tf runs under it.

  @parameterized.product(implementation=[m.value for m in ntk_tf.NtkImplementation],
                         dtype=["float32", "float64"])
  def test_ntk_gram(self, implementation, dtype):
    gram = ntk_tf.ntk_gram(self.model, self.x, dtype=dtype, implementation=implementation)
    self.assertEqual(np.asarray(gram).dtype, np.dtype(dtype))
    self.assertLess(ntk_reference.rel_error(gram, self.gram_ref), _RTOL[dtype])

  @parameterized.parameters("float32", "float64")
  def test_jacobian(self, dtype):
    jac = ntk_tf.jacobian(self.model, self.x, dtype=dtype)
    self.assertEqual(jac.dtype, np.dtype(dtype))
    self.assertLess(ntk_reference.rel_error(jac, self.jac_ref), _RTOL[dtype])

  def test_gram_store_and_ntk_operator(self):
    store = ntk_tf.GramStore(self.create_tempdir().full_path, self.model, self.x, block_size=2)
    store.compute()
    self.assertLess(ntk_reference.rel_error(store.matrix, self.gram_ref), _RTOL["float32"])
    operator = ntk_tf.NtkOperator(self.model, self.x, dtype="float64")
    v = np.arange(1.0, 6.0)  # [N]
    self.assertLess(ntk_reference.rel_error(operator.matvec(v), self.gram_ref @ v),
                    _RTOL["float64"])


if __name__ == "__main__":
  absltest.main()
