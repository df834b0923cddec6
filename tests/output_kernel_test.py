"""Output kernels of K-logit models (`ntk_tf.ntk.output_kernel`) against brute force.

The reference is `ntk_reference.loop_output_jacobian`: one GradientTape per
example and per output of the float64 twin, J [N, K, P]; each kernel is then
a NumPy einsum of it (full `iap,jbp->ijab`, diagonal `iap,jap->ija`, trace its
sum, pseudo the Gram of sum_a J[:, a] / sqrt K). Nothing of ntk_tf's NTK code
is used to compute an expected value.
"""

import os

from absl.testing import absltest
from absl.testing import parameterized
import keras
import numpy as np

import ntk_tf
from ntk_tf.ntk import block_size as block_size_lib
from ntk_tf.ntk import gram
from ntk_tf.ntk import jacobian_block
from ntk_tf.ntk import ntk_vector_products
from ntk_tf.ntk import output_kernel
from ntk_tf.ntk import structured
from tests import ntk_reference

_K = 3
_N1, _N2 = 6, 4
_BLOCK = 4  # Row blocks 0:4 and 4:6: a diagonal block, a mirrored one, a partial one.
_IMPLEMENTATIONS = ("jacobian", "structured", "ntk_vector_products", "auto")
_NOT_SQUARE = ("full", "diagonal")  # GramStore refuses them: they are not [N, N].
_KERNELS = output_kernel.OUTPUT_KERNELS
# Small models: the MLP (Dense only) and LeNet (Conv2D, pooling, Dense).
_MODELS = {"mlp": dict(width=8), "lenet": dict()}
_SHAPE = ntk_reference.SHAPE


def _models(name, outputs=_K, seed=0):
  """The float32 model and its independent float64 twin, with `outputs` logits."""
  kwargs = dict(input_shape=_SHAPE, activation="tanh", seed=seed, outputs=outputs,
                **_MODELS[name])
  model = ntk_tf.models.get(name, **kwargs)
  return model, ntk_reference.float64_twin(name, model, **kwargs)


def _expected(jac_x1, jac_x2):
  """{output kernel: brute-force Gram} from J(x1) [N1, K, P] and J(x2) [N2, K, P]."""
  k = jac_x1.shape[1]
  diagonal = np.einsum("iap,jap->ija", jac_x1, jac_x2)  # [N1, N2, K]
  pseudo_x1 = jac_x1.sum(axis=1) / np.sqrt(k)  # [N1, P]: d/dtheta (1/sqrt K) sum_a f_a
  pseudo_x2 = jac_x2.sum(axis=1) / np.sqrt(k)  # [N2, P]
  return {"full": np.einsum("iap,jbp->ijab", jac_x1, jac_x2),  # [N1, N2, K, K]
          "diagonal": diagonal, "trace": diagonal.sum(axis=-1),  # [N1, N2]
          "pseudo": pseudo_x1 @ pseudo_x2.T}  # [N1, N2]


_REFERENCE = {}  # name -> (model, twin, x1, x2, {kernel: (symmetric, non-symmetric)})


def _reference(name):
  if name not in _REFERENCE:
    model, twin = _models(name)
    x1, x2 = ntk_reference.inputs(_N1, seed=1), ntk_reference.inputs(_N2, seed=2)
    jac_x1 = ntk_reference.loop_output_jacobian(twin, x1.astype(np.float64))  # [N1, K, P]
    jac_x2 = ntk_reference.loop_output_jacobian(twin, x2.astype(np.float64))  # [N2, K, P]
    square, rectangular = _expected(jac_x1, jac_x1), _expected(jac_x1, jac_x2)
    _REFERENCE[name] = (model, twin, x1, x2,
                        {kernel: (square[kernel], rectangular[kernel]) for kernel in _KERNELS},
                        jac_x1)
  return _REFERENCE[name]


def _shape(kernel, n1, n2):
  return {"full": (n1, n2, _K, _K), "diagonal": (n1, n2, _K)}.get(kernel, (n1, n2))


class OutputKernelValuesTest(parameterized.TestCase):

  @parameterized.product(name=tuple(_MODELS), implementation=_IMPLEMENTATIONS)
  def test_float64_matches_brute_force(self, name, implementation):
    _, twin, x1, x2, expected, _ = _reference(name)
    for kernel in _KERNELS:
      for x_b, which in ((None, 0), (x2, 1)):
        theta = gram.ntk_gram(twin, x1, x_b, block_size=_BLOCK, implementation=implementation,
                              dtype="float64", output_kernel=kernel, progress=False)
        want = expected[kernel][which]
        self.assertEqual(theta.shape, want.shape, msg=(kernel, which))
        self.assertEqual(theta.dtype, np.float64)
        self.assertLessEqual(ntk_reference.rel_error(theta, want), 1e-10, msg=(kernel, which))

  @parameterized.parameters(*_IMPLEMENTATIONS)
  def test_float32_matches_brute_force(self, implementation):
    model, _, x1, x2, expected, _ = _reference("mlp")
    for kernel in _KERNELS:
      theta = gram.ntk_gram(model, x1, x2, block_size=_BLOCK, implementation=implementation,
                            dtype="float32", output_kernel=kernel, progress=False)
      self.assertEqual(theta.dtype, np.float32)
      self.assertLessEqual(ntk_reference.rel_error(theta, expected[kernel][1]), 2e-5, msg=kernel)

  @parameterized.product(choices=("structured", "jacobian"), matmul_engine=("numpy", "xla"))
  def test_structured_every_layer_form(self, choices, matmul_engine):
    # Conv kernels as positional terms (structured) or per-example gradients (jacobian);
    # "trace" runs on either engine, "full"/"diagonal" on the host whatever the engine.
    _, twin, x1, x2, expected, _ = _reference("lenet")
    for kernel in ("full", "diagonal", "trace"):
      theta = gram.ntk_gram(twin, x1, x2, block_size=_BLOCK, implementation="structured",
                            dtype="float64", output_kernel=kernel, choices=choices,
                            matmul_engine=matmul_engine, progress=False)
      self.assertLessEqual(ntk_reference.rel_error(theta, expected[kernel][1]), 1e-10,
                           msg=kernel)

  def test_symmetric_full_mirrors_output_axes(self):
    _, twin, x1, _, _, _ = _reference("mlp")
    theta = gram.ntk_gram(twin, x1, block_size=_BLOCK, implementation="jacobian",
                          dtype="float64", output_kernel="full", progress=False)
    # Theta[j, i, b, a] = Theta[i, j, a, b], exactly: the lower blocks are mirrored copies.
    np.testing.assert_array_equal(theta, theta.transpose(1, 0, 3, 2))
    self.assertGreater(np.max(np.abs(theta - theta.transpose(1, 0, 2, 3))), 1e-3)

  @parameterized.parameters(*_IMPLEMENTATIONS)
  def test_one_logit_same_gram_under_every_choice(self, implementation):
    model, twin = _models("mlp", outputs=1)
    x1, x2 = ntk_reference.inputs(_N1, seed=1), ntk_reference.inputs(_N2, seed=2)
    jac_x1 = ntk_reference.loop_jacobian(twin, x1.astype(np.float64))  # [N1, P]
    jac_x2 = ntk_reference.loop_jacobian(twin, x2.astype(np.float64))  # [N2, P]
    for x_b, want in ((None, jac_x1 @ jac_x1.T), (x2, jac_x1 @ jac_x2.T)):
      plain = gram.ntk_gram(twin, x1, x_b, block_size=_BLOCK, implementation=implementation,
                            dtype="float64", progress=False)
      self.assertLessEqual(ntk_reference.rel_error(plain, want), 1e-10)
      for kernel in _KERNELS:
        theta = gram.ntk_gram(twin, x1, x_b, block_size=_BLOCK, implementation=implementation,
                              dtype="float64", output_kernel=kernel, progress=False)
        self.assertEqual(theta.shape, want.shape, msg=kernel)
        np.testing.assert_array_equal(theta, plain, err_msg=kernel)

  def test_pseudo_is_the_one_logit_gram_of_the_scaled_sum(self):
    _, twin, x1, x2, _, _ = _reference("mlp")
    inputs = keras.Input(_SHAPE, dtype="float64")
    summed = keras.ops.sum(twin(inputs), axis=-1, keepdims=True) / np.sqrt(_K)  # [N, 1]
    with ntk_reference.floatx("float64"):
      scaled_sum = keras.Model(inputs, summed)
    jac_x1 = ntk_reference.loop_jacobian(scaled_sum, x1.astype(np.float64))
    jac_x2 = ntk_reference.loop_jacobian(scaled_sum, x2.astype(np.float64))
    theta = gram.ntk_gram(twin, x1, x2, implementation="structured", dtype="float64",
                          output_kernel="pseudo", progress=False)
    self.assertLessEqual(ntk_reference.rel_error(theta, jac_x1 @ jac_x2.T), 1e-10)

  def test_flatten_full(self):
    theta = np.random.RandomState(0).randn(2, 3, 4, 4)  # [N1, N2, K, K]
    flat = output_kernel.flatten_full_gram(theta)
    self.assertEqual(flat.shape, (8, 12))
    for i in range(2):
      for j in range(3):
        for a in range(4):
          for b in range(4):
            self.assertEqual(flat[i * 4 + a, j * 4 + b], theta[i, j, a, b])
    with self.assertRaisesRegex(ValueError, r"Received: theta.shape=\(2, 3, 4\)"):
      output_kernel.flatten_full_gram(theta[..., 0])

  def test_flattened_full_gram_is_the_stacked_jacobian_gram(self):
    _, twin, x1, _, _, jac_x1 = _reference("lenet")
    theta = gram.ntk_gram(twin, x1, block_size=_BLOCK, implementation="jacobian",
                          dtype="float64", output_kernel="full", progress=False)
    stacked = jac_x1.reshape(_N1 * _K, -1)  # [N K, P], row i K + a = J_a(x_i)
    flat = ntk_tf.flatten_full_gram(theta)
    self.assertLessEqual(ntk_reference.rel_error(flat, stacked @ stacked.T), 1e-10)
    self.assertGreater(np.linalg.eigvalsh(flat).min(), -1e-8 * np.abs(flat).max())


class OutputKernelErrorsTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.model, _ = _models("mlp")
    self.x = ntk_reference.inputs(3)

  @parameterized.parameters(*_IMPLEMENTATIONS)
  def test_unknown_output_kernel_named(self, implementation):
    with self.assertRaisesRegex(ValueError, r"output_kernel must be one of \('full', "
                                r"'diagonal', 'trace', 'pseudo'\).*Received: "
                                r"output_kernel='fulll'"):
      gram.ntk_gram(self.model, self.x, implementation=implementation, output_kernel="fulll",
                    progress=False)

  @parameterized.parameters(*_IMPLEMENTATIONS)
  def test_k_logits_without_output_kernel_refused_in_one_line(self, implementation):
    for call in (lambda: gram.ntk_gram(self.model, self.x, implementation=implementation,
                                       progress=False),
                 lambda: gram.make_block_fn(self.model, implementation, "float32", 4)):
      with self.assertRaisesRegex(ValueError, r"K=3 output logits.*'full', 'diagonal', "
                                  r"'trace', 'pseudo'.*Received: output_kernel=None") as caught:
        call()
      self.assertNotIn("\n", str(caught.exception))

  def test_block_fns_refuse_pseudo_and_unknown_kernels_by_name(self):
    # "pseudo" is one logit on the pseudo-NTK model: only ntk_gram / gram.make_block_fn run it.
    makers = {"jacobian": jacobian_block.make_block_fn, "structured": structured.make_block_fn,
              "ntk_vector_products": ntk_vector_products.make_block_fn}
    for implementation, make_block_fn in makers.items():
      with self.assertRaisesRegex(ValueError, rf"Received: implementation='{implementation}', "
                                  r"output_kernel='pseudo'"):
        make_block_fn(self.model, "float32", output_kernel="pseudo")
      with self.assertRaisesRegex(ValueError, r"Received: output_kernel='sum'"):
        make_block_fn(self.model, "float32", output_kernel="sum")
    self.assertEqual(gram.make_block_fn(self.model, "jacobian", "float32", 4,
                                        output_kernel="pseudo")(self.x).shape, (3, 3))

  def test_gram_store_refuses_non_square_kernels_by_name(self):
    for kernel in _NOT_SQUARE:
      with self.assertRaisesRegex(ValueError, rf"Received: output_kernel='{kernel}'"):
        ntk_tf.GramStore(self.create_tempdir().full_path, self.model, self.x,
                         output_kernel=kernel)

  def test_ntk_operator_refuses_non_square_kernels_by_name(self):
    for kernel in _NOT_SQUARE:
      with self.assertRaisesRegex(ValueError, rf"Received: output_kernel='{kernel}'"):
        ntk_tf.NtkOperator(self.model, self.x, output_kernel=kernel)


class OutputKernelStoreAndOperatorTest(parameterized.TestCase):

  @parameterized.parameters("trace", "pseudo")
  def test_gram_store_holds_the_kernel_and_refuses_another(self, kernel):
    _, twin, x1, _, expected, _ = _reference("mlp")
    path = self.create_tempdir().full_path
    store = ntk_tf.GramStore(path, twin, x1, block_size=_BLOCK, dtype="float64",
                             implementation="jacobian", output_kernel=kernel)
    store.compute(progress=False)
    self.assertLessEqual(ntk_reference.rel_error(np.asarray(store.matrix), expected[kernel][0]),
                         1e-10)
    other = "pseudo" if kernel == "trace" else "trace"
    with self.assertRaisesRegex(ValueError, rf"output_kernel: store has '{kernel}', this job "
                                rf"has '{other}'"):
      ntk_tf.GramStore(path, twin, x1, block_size=_BLOCK, dtype="float64",
                       implementation="jacobian", output_kernel=other)
    self.assertTrue(os.path.exists(os.path.join(path, "gram.npy")))

  @parameterized.parameters("trace", "pseudo")
  def test_ntk_operator(self, kernel):
    _, twin, x1, _, expected, _ = _reference("lenet")
    operator = ntk_tf.NtkOperator(twin, x1, batch_size=4, dtype="float64",
                                  output_kernel=kernel)
    v = np.random.RandomState(3).randn(_N1, 2)
    want = expected[kernel][0] @ v  # [N, 2]
    self.assertLessEqual(ntk_reference.rel_error(operator.matvec(v[:, 0]), want[:, 0]), 1e-10)
    self.assertLessEqual(ntk_reference.rel_error(operator.matmat(v), want), 1e-10)

  def test_ntk_operator_k_logits_need_a_kernel(self):
    model, _ = _models("mlp")
    with self.assertRaisesRegex(ValueError, r"K=3 output logits.*Received: output_kernel=None"):
      ntk_tf.NtkOperator(model, ntk_reference.inputs(2))


class OutputKernelMemoryTest(absltest.TestCase):

  def test_jacobian_estimate_counts_k(self):
    model, _ = _models("mlp")
    params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)  # P
    b = 5
    one = block_size_lib.peak_memory_bytes(model, b, "jacobian", "float64")
    for kernel, width in (("full", _K * _K), ("diagonal", _K), ("trace", 1)):
      many = block_size_lib.peak_memory_bytes(model, b, "jacobian", "float64",
                                              output_kernel=kernel, outputs=_K)
      # 8 [3 B (K - 1) P + B^2 (2 W - 1)] more: K Jacobian rows, W entries per pair (x2).
      self.assertEqual(many - one, 8 * (3 * b * (_K - 1) * params + b * b * (2 * width - 1)),
                       msg=kernel)

  def test_structured_trace_estimate_counts_k(self):
    model, _ = _models("mlp")
    one = block_size_lib.peak_memory_bytes(model, 5, "structured", "float64")
    trace = block_size_lib.peak_memory_bytes(model, 5, "structured", "float64",
                                             output_kernel="trace", outputs=_K)
    self.assertGreater(trace, one)


if __name__ == "__main__":
  absltest.main()
