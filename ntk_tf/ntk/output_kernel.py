"""Output kernels: the NTK of a model with K output logits, and how it is reduced.

For f: x -> R^K and J_a(x) = d f_a(x) / d theta [P] (a = 0..K-1):

    "full"      Theta[i, j, a, b] = J_a(x1_i) . J_b(x2_j)          [N1, N2, K, K]
    "diagonal"  Theta[i, j, a]    = J_a(x1_i) . J_a(x2_j)          [N1, N2, K]
    "trace"     Theta[i, j]       = sum_a J_a(x1_i) . J_a(x2_j)    [N1, N2]
    "pseudo"    Theta[i, j]       = J_s(x1_i) . J_s(x2_j)          [N1, N2],
                                    s = (1 / sqrt K) sum_a f_a

"pseudo" is the pseudo-NTK of Mohamadi, Bae & Sutherland (ICML 2023, "A Fast,
Well-Founded Approximation to the Empirical Neural Tangent Kernel"): it costs
one logit, because it is the one-logit NTK of the model followed by a fixed,
non-trainable sum (`pseudo_ntk_model`), and equals trace / K plus the
off-diagonal terms (1 / K) sum_{a != b} J_a . J_b.

A one-logit model (K = 1) has one kernel: every choice, None included, gives
the `[N1, N2]` Gram of that logit (for "full" and "diagonal" the K axes of
length 1 are dropped, so the result is the same array under every choice).
A K > 1 model needs a choice; None refuses it by name (`resolve`).

Implementations (`ntk_tf.ntk.gram.ntk_gram`), each computing every kernel:
jacobian from Jacobians [B, K, P]; structured from per-layer factors with K
cotangents per layer ("trace": side by side, any engine; "full"/"diagonal":
one [B K, B K] cotangent GEMM per layer against the layer's [B, B] inputs
Gram, host BLAS); ntk_vector_products by K products per column; auto by its
one-logit rule. A make_block_fn given a kernel it does not compute refuses
it naming the implementation and the kernel (`check_supported`); "pseudo" is
never passed to one (`resolve`).

Symmetry of a square Gram (x2 = x1): Theta[j, i] is Theta[i, j] with the example
axes swapped and, for "full", the output axes swapped too,
Theta[j, i, b, a] = Theta[i, j, a, b] (`transpose_block`).
"""

from typing import Optional, Tuple
import weakref

import keras
import numpy as np

from ntk_tf import validation

FULL = "full"
DIAGONAL = "diagonal"
TRACE = "trace"
PSEUDO = "pseudo"
# Every output_kernel value, in the order errors list them.
OUTPUT_KERNELS: Tuple[str, ...] = (FULL, DIAGONAL, TRACE, PSEUDO)


def check_output_kernel(output_kernel: Optional[str]) -> Optional[str]:
  """Returns `output_kernel` if it is None or one of OUTPUT_KERNELS, else raises naming it."""
  if output_kernel is not None and output_kernel not in OUTPUT_KERNELS:
    raise ValueError(f"output_kernel must be one of {OUTPUT_KERNELS} or None. "
                     f"Received: output_kernel={output_kernel!r}")
  return output_kernel


def logit_count(model: keras.Model, x_example: Optional[np.ndarray] = None) -> int:
  """Returns K, the width of the model's one output `[N, K]` (`[N]` counts as K = 1).

  Read from the symbolic output of a functional model, else from running the
  model on `x_example` `[1, ...]` (inference mode).
  """
  outputs = getattr(model, "outputs", None)
  if not outputs:
    if x_example is None:
      raise ValueError(f"model {model.name!r} has no symbolic outputs: pass one example to "
                       f"count its logits. Received: x_example=None")
    outputs = [model(x_example, training=False)]
  validation.check_logits(model, outputs)
  shape = tuple(outputs[0].shape)
  return 1 if len(shape) == 1 else int(shape[1])


def resolve(output_kernel: Optional[str], k: int, model_name: str = "") -> Optional[str]:
  """Returns the kernel a model with `k` logits computes: None for one logit, else the choice.

  None means the one-logit Gram `[N1, N2]`: every choice of a K = 1 model, and
  "pseudo" (computed on `pseudo_ntk_model`). A K > 1 model with
  output_kernel=None is refused, naming K (and `model_name`) and the choices.
  """
  output_kernel = check_output_kernel(output_kernel)
  if k == 1 or output_kernel == PSEUDO:
    return None
  if output_kernel is None:
    raise ValueError(
        f"The model{f' {model_name!r}' if model_name else ''} has K={k} output logits, so "
        f"its NTK needs output_kernel= one of "
        f"{OUTPUT_KERNELS} (Theta [N1, N2, K, K], its diagonal [N1, N2, K], its trace "
        f"[N1, N2], or the pseudo-NTK of (1/sqrt K) sum_a f_a [N1, N2]). "
        f"Received: output_kernel=None for K={k}")
  return output_kernel


def check_supported(output_kernel: Optional[str], supported: Tuple[str, ...],
                    implementation: str) -> None:
  """Raises ValueError naming `implementation` and `output_kernel` unless it is supported.

  None (one logit) is always supported; "pseudo" is refused: it never
  reaches an implementation (`resolve` turns it into None on `pseudo_ntk_model`).
  """
  if output_kernel == PSEUDO:
    raise ValueError(
        f"implementation={implementation!r} takes output_kernel='pseudo' as one logit: "
        f"call ntk_gram or ntk_tf.ntk.gram.make_block_fn (they run the pseudo-NTK model, "
        f"output_kernel.pseudo_ntk_model). Received: implementation={implementation!r}, "
        f"output_kernel='pseudo'")
  if output_kernel is not None and output_kernel not in supported:
    raise ValueError(
        f"implementation={implementation!r} does not compute output_kernel={output_kernel!r}; "
        f"it computes {supported} (and 'pseudo', as one logit). "
        f"Received: implementation={implementation!r}, "
        f"output_kernel={output_kernel!r}")


class _PseudoLogit(keras.Model):
  """`s(x) = (1 / sqrt K) sum_a f_a(x)` of a subclassed model f (no layer graph)."""

  def __init__(self, model: keras.Model, k: int):
    super().__init__(name=f"{model.name}_pseudo_ntk")
    self.inner = model
    self.scale = 1.0 / np.sqrt(k)

  def call(self, x, training=False):
    logits = self.inner(x, training=training)  # [N, K]
    return keras.ops.sum(logits, axis=-1, keepdims=True) * self.scale  # [N, 1]


# The pseudo-NTK model of each model, kept while the model lives, so a repeated Gram
# reuses it (and `ntk_gram`'s kept BlockFns, which are keyed by the model they run).
_pseudo_models: "weakref.WeakKeyDictionary[keras.Model, keras.Model]" = (
    weakref.WeakKeyDictionary())


def pseudo_ntk_model(model: keras.Model, k: int) -> keras.Model:
  """Returns the one-logit model s(x) = (1 / sqrt K) sum_a f_a(x), sharing f's weights `[N, 1]`.

  For a functional model, f's graph followed by a non-trainable `Dense(1)`
  with every kernel entry 1 / sqrt K (a functional model again, so the
  structured path plans it, and `precision.cast_model` copies it), kept while
  `model` lives; for a subclassed model, a new wrapper that sums. The
  trainable variables are f's own.
  """
  kept = _pseudo_models.get(model)
  if kept is not None:
    return kept
  if not getattr(model, "outputs", None):
    wrapper = _PseudoLogit(model, k)  # Not kept: it holds `model`, the weak key.
    wrapper.built = True
    return wrapper
  summing = keras.layers.Dense(
      1, use_bias=False, trainable=False, dtype=model.outputs[0].dtype,
      name=f"{model.name}_pseudo_ntk_sum",
      kernel_initializer=keras.initializers.Constant(1.0 / np.sqrt(k)))
  logit = summing(model.outputs[0])  # [N, 1]
  wrapper = keras.Model(model.inputs, logit, name=f"{model.name}_pseudo_ntk")
  _pseudo_models[model] = wrapper
  return wrapper


def output_model(model: keras.Model, output_kernel: Optional[str],
                 x_example: Optional[np.ndarray] = None) -> Tuple[keras.Model, Optional[str], Optional[int]]:
  """Returns (the model to differentiate, the kernel it computes, K) for `output_kernel`.

  The kernel is `resolve(output_kernel, K)`; the model is `model` itself, or
  its `pseudo_ntk_model` for "pseudo" with K > 1. `x_example` `[1, ...]`
  counts K for a model without symbolic outputs (`logit_count`); without one
  (and not "pseudo") such a model is returned as is with its choice and
  K = None, for the BlockFn to read K from its first block.
  """
  if not getattr(model, "outputs", None) and x_example is None and output_kernel != PSEUDO:
    # A subclassed model before any input: K is read by the BlockFn from its first block.
    return model, check_output_kernel(output_kernel), None
  k = logit_count(model, x_example)
  kernel = resolve(output_kernel, k, model.name)
  if output_kernel == PSEUDO and k > 1:
    model = pseudo_ntk_model(model, k)
  return model, kernel, k


def transpose_block(theta: np.ndarray) -> np.ndarray:
  """Returns Theta(x2, x1) from Theta(x1, x2): the example axes swapped, and the output axes.

  `[Na, Nb]` -> `[Nb, Na]`; `[Na, Nb, K]` -> `[Nb, Na, K]`;
  `[Na, Nb, K, K]` -> `[Nb, Na, K, K]` with Theta[j, i, b, a] = Theta[i, j, a, b].
  """
  if theta.ndim == 4:
    return theta.transpose(1, 0, 3, 2)  # [Nb, Na, K, K]
  if theta.ndim == 3:
    return theta.transpose(1, 0, 2)  # [Nb, Na, K]
  return theta.T  # [Nb, Na]


def gram_shape(n1: int, n2: int, output_kernel: Optional[str], k: int) -> Tuple[int, ...]:
  """Returns the shape of a Gram: `[N1, N2, K, K]` (full), `[N1, N2, K]` (diagonal), `[N1, N2]`."""
  if output_kernel == FULL:
    return (n1, n2, k, k)
  if output_kernel == DIAGONAL:
    return (n1, n2, k)
  return (n1, n2)


def entries_per_pair(output_kernel: Optional[str], k: int) -> int:
  """Returns W, the Gram entries per example pair: K^2 (full), K (diagonal), else 1."""
  return {FULL: k * k, DIAGONAL: k}.get(output_kernel, 1)


def flatten_full_gram(theta: np.ndarray) -> np.ndarray:
  """Returns a "full" Gram `[N1, N2, K, K]` as the matrix `[N1 K, N2 K]` of J(x1) J(x2)^T.

      flat[i K + a, j K + b] = Theta[i, j, a, b]

  Row i K + a is the example-output pair (x1_i, f_a), so for x2 = x1 it is the
  symmetric PSD matrix J J^T of the stacked Jacobian `J [N K, P]`, ready for
  an eigendecomposition (`ntk_tf.eigen`, `numpy.linalg.eigh`). An eigenvector
  v [N K] reads back per example and output as `v.reshape(N, K)`.
  """
  theta = np.asarray(theta)
  if theta.ndim != 4 or theta.shape[2] != theta.shape[3]:
    raise ValueError(f"flatten_full_gram needs a full output-kernel Gram [N1, N2, K, K]. "
                     f"Received: theta.shape={theta.shape}")
  n1, n2, k, _ = theta.shape
  return theta.transpose(0, 2, 1, 3).reshape(n1 * k, n2 * k)  # [N1 K, N2 K]
