"""Contraction engines of the structured NTK: sum the layer terms of one [Na, Nb] block.

    Theta = sum_products (A_a A_b^T + offset) * (D_a D_b^T)
          + sum_positional sum_{p,q} (X_a[p] . X_b[q]) (D_a[p] . D_b[q])
          + G_a G_b^T

(offset 1 for a product term whose layer has a bias.) Two engines behind one
interface, `Contraction(features_a, features_b, diagonal) -> [Na, Nb]`:

  NumpyContraction  host BLAS (SciPy SYRK/GEMM) on NumPy features, into reused
                    buffers; diagonal blocks are exactly symmetric.
  XlaContraction    the jit-compiled ops of `ops.structured_blocks` on padded
                    TF features; diagonal blocks are symmetrized.

Both are exact float32/float64 products; only the summation order differs.
`make_contraction` picks one from an `implementation.MatmulEngine`.
`OutputContraction` (host BLAS) computes the "full" and "diagonal" output
kernels of a model with O logits, `[Na, Nb, O, O]` and `[Na, Nb, O]`.
"""

from collections import OrderedDict
from typing import Sequence, Tuple

import numpy as np
from scipy.linalg import blas as scipy_blas
import tensorflow as tf

from ntk_tf.ntk import implementation as implementation_lib
from ntk_tf.ntk.structured.features import BlockFeatures
from ops import structured_blocks

_WORKSPACES = 2  # Gram-buffer shapes kept by the NumPy engine (see `_workspace`).


class Contraction:
  """Sums the layer terms of a block; `on_host` says it wants NumPy features."""

  on_host: bool = False

  def __init__(self, product_offsets: Sequence[float], accumulate_dtype: str):
    self.product_offsets = list(product_offsets)  # One per product term: 1.0 adds the bias.
    self.accumulate_dtype = accumulate_dtype

  def __call__(self, a: BlockFeatures, b: BlockFeatures, diagonal: bool) -> np.ndarray:
    raise NotImplementedError


class NumpyContraction(Contraction):
  """Host BLAS into reused buffers (see `__call__`)."""

  on_host = True

  def __init__(self, product_offsets: Sequence[float], accumulate_dtype: str):
    super().__init__(product_offsets, accumulate_dtype)
    self._buffers: "OrderedDict[tuple, Tuple]" = OrderedDict()

  def __call__(self, a: BlockFeatures, b: BlockFeatures, diagonal: bool) -> np.ndarray:
    """Sums the layer terms [Na, Nb] with host BLAS into reused buffers.

    A diagonal block forms every product and gradient Gram as the upper
    triangle of one SYRK (half the FLOPs of a GEMM) and mirrors the sum once
    (exact: the halved diagonal is added back to itself). The Gram buffers
    (`_workspace`) are kept between calls: fresh [Na, Nb] arrays would cost a
    page fault per 4 KiB on every call.
    """
    grad_a, grad_b = a.gradient, b.gradient
    n_a, n_b = grad_a.shape[0], grad_b.shape[0]
    theta, first, second = self._workspace(n_a, n_b, grad_a.dtype, diagonal)  # [Na, Nb], F order.
    gram = _syrk_upper if diagonal else _gemm_nt
    # The lower triangles of the SYRK buffers stay zero: every update below keeps them so.
    theta.fill(0)
    for (left_a, right_a), (left_b, right_b), offset in zip(a.products, b.products,
                                                            self.product_offsets):
      inputs_gram = gram(left_a, left_b, out=first)  # [Na, Nb]
      cotangent_gram = gram(right_a, right_b, out=second)  # [Na, Nb]
      inputs_gram *= cotangent_gram
      if offset:
        inputs_gram += cotangent_gram  # The bias: (A_a . A_b + 1)(D_a . D_b).
      theta += inputs_gram
    if grad_a.shape[1]:
      theta += gram(grad_a, grad_b, out=first)  # [Na, Nb]
    if diagonal:
      theta[np.diag_indices(n_a)] *= 0.5
      result = theta + theta.T  # [Na, Na], symmetric.
    else:
      result = theta.copy(order="C")  # [Na, Nb]
    for (patches_a, cot_a), (patches_b, cot_b) in zip(a.positional, b.positional):
      (n_a, p, k), c = patches_a.shape, cot_a.shape[-1]
      n_b = patches_b.shape[0]
      patch_gram = patches_a.reshape(n_a * p, k) @ patches_b.reshape(n_b * p, k).T  # [Na P, Nb P]
      patch_gram *= cot_a.reshape(n_a * p, c) @ cot_b.reshape(n_b * p, c).T  # [Na P, Nb P]
      term = patch_gram.reshape(n_a, p, n_b, p).sum(axis=(1, 3))  # [Na, Nb]
      result += 0.5 * (term + term.T) if diagonal else term  # Summation order breaks symmetry.
    return result

  def _workspace(self, n_a: int, n_b: int, dtype,
                 diagonal: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three Fortran-order buffers, zeroed when made: theta [Na, Nb] (accumulate dtype), two Grams.

    Diagonal and off-diagonal blocks get separate buffers (a GEMM fills the
    lower triangle a SYRK buffer must keep zero); the last `_WORKSPACES` shapes
    are kept, 3 * Na * Nb floats each.
    """
    key = (n_a, n_b, np.dtype(dtype).name, diagonal)
    if key in self._buffers:
      self._buffers.move_to_end(key)
    else:
      self._buffers[key] = (np.zeros((n_a, n_b), self.accumulate_dtype, order="F"),
                            np.zeros((n_a, n_b), dtype, order="F"),
                            np.zeros((n_a, n_b), dtype, order="F"))
      while len(self._buffers) > _WORKSPACES:
        self._buffers.popitem(last=False)
    return self._buffers[key]


class XlaContraction(Contraction):
  """The compiled ops of `ops.structured_blocks` on padded features, cropped to [Na, Nb]."""

  on_host = False

  def __call__(self, a: BlockFeatures, b: BlockFeatures, diagonal: bool) -> np.ndarray:
    theta = np.zeros((a.gradient.shape[0], b.gradient.shape[0]), self.accumulate_dtype)
    for (left_a, right_a), (left_b, right_b), offset in zip(a.products, b.products,
                                                            self.product_offsets):
      theta += structured_blocks.gram_product(left_a, left_b, right_a, right_b,
                                              offset).numpy()
    if a.gradient.shape[1]:
      theta += structured_blocks.gradient_gram(a.gradient, b.gradient).numpy()
    theta = theta[:a.n, :b.n]
    for (patches_a, cot_a), (patches_b, cot_b) in zip(a.positional, b.positional):
      term = structured_blocks.positional_gram_product(patches_a, cot_a, patches_b, cot_b)
      theta += term.numpy()[:a.n, :b.n].astype(self.accumulate_dtype)
    if diagonal:
      theta = 0.5 * (theta + theta.T)  # Device matmuls need not be exactly symmetric.
    return theta


class OutputContraction(Contraction):
  """The "full" / "diagonal" output kernels of an O-logit model, by host BLAS.

  Features keep their logit axis O (`features.FeatureExtractor(separate_outputs=True)`):
  products (A [N, K], D [N, O, C]), positional (X [N, P, K], D [N, O, P, C]),
  gradients [N, O, p_G]. Rows (i, o) of the cotangents meet the inputs Gram
  of their examples only, so the O x O structure costs one [Na O, Nb O]
  cotangent GEMM per layer, not O^2 one-logit Grams:

    Theta[i, j, o, r] = sum_products (A_i . A_j + offset) (D_i,o . D_j,r)
                      + sum_positional sum_{p,q} (X_i[p] . X_j[q]) (D_i,o[p] . D_j,r[q])
                      + G_i,o . G_j,r

  Returns `[Na, Nb, O, O]` ("full") or its o = r entries `[Na, Nb, O]`
  ("diagonal": O batched [Na, Nb] cotangent GEMMs per layer instead of one
  [Na O, Nb O], so 1/O of the full kernel's cotangent FLOPs, `_diagonal`);
  diagonal blocks are symmetrized, Theta[j, i, r, o] = Theta[i, j, o, r].
  """

  on_host = True

  def __init__(self, product_offsets: Sequence[float], accumulate_dtype: str,
               diagonal_only: bool = False):
    super().__init__(product_offsets, accumulate_dtype)
    self.diagonal_only = bool(diagonal_only)

  def __call__(self, a: BlockFeatures, b: BlockFeatures, diagonal: bool) -> np.ndarray:
    if self.diagonal_only:
      return self._diagonal(a, b, diagonal)
    (n_a, o, _), n_b = a.gradient.shape, b.gradient.shape[0]
    pairs = lambda u, v: (u.reshape(n_a * o, -1) @ v.reshape(n_b * o, -1).T).reshape(
        n_a, o, n_b, o)  # [Na, O, Nb, O]: rows (i, o) against rows (j, r)
    theta = np.zeros((n_a, o, n_b, o), self.accumulate_dtype)  # [Na, O, Nb, O]
    for (left_a, right_a), (left_b, right_b), offset in zip(a.products, b.products,
                                                            self.product_offsets):
      inputs_gram = left_a @ left_b.T + offset  # [Na, Nb]
      theta += inputs_gram[:, None, :, None] * pairs(right_a, right_b)
    if a.gradient.shape[2]:
      theta += pairs(a.gradient, b.gradient)
    for (patches_a, cot_a), (patches_b, cot_b) in zip(a.positional, b.positional):
      p, c = patches_a.shape[1], cot_a.shape[-1]
      patch_gram = _patch_gram(patches_a, patches_b)  # [Na, P, Nb, P]
      cot_gram = (cot_a.reshape(n_a * o * p, c) @ cot_b.reshape(n_b * o * p, c).T).reshape(
          n_a, o, p, n_b, o, p)  # [Na, O, P, Nb, O, P]
      theta += np.einsum("ipjq,iopjrq->iojr", patch_gram, cot_gram)  # [Na, O, Nb, O]
    theta = theta.transpose(0, 2, 1, 3)  # [Na, Nb, O, O]
    if diagonal:
      theta = 0.5 * (theta + theta.transpose(1, 0, 3, 2))  # Theta[j, i, r, o] = Theta[i, j, o, r]
    return np.ascontiguousarray(theta)  # [Na, Nb, O, O]

  def _diagonal(self, a: BlockFeatures, b: BlockFeatures, diagonal: bool) -> np.ndarray:
    """The o = r entries `[Na, Nb, O]` only: per logit o, the terms above with r = o."""
    (n_a, o, _), n_b = a.gradient.shape, b.gradient.shape[0]
    per_logit = lambda u, v: np.matmul(u.transpose(1, 0, 2), v.transpose(1, 2, 0))  # [O, Na, Nb]
    theta = np.zeros((o, n_a, n_b), self.accumulate_dtype)  # [O, Na, Nb]
    for (left_a, right_a), (left_b, right_b), offset in zip(a.products, b.products,
                                                            self.product_offsets):
      inputs_gram = left_a @ left_b.T + offset  # [Na, Nb]
      theta += inputs_gram[None] * per_logit(right_a, right_b)
    if a.gradient.shape[2]:
      theta += per_logit(a.gradient, b.gradient)
    for (patches_a, cot_a), (patches_b, cot_b) in zip(a.positional, b.positional):
      p, c = patches_a.shape[1], cot_a.shape[-1]
      patch_gram = _patch_gram(patches_a, patches_b)  # [Na, P, Nb, P]
      cot_gram = np.matmul(cot_a.transpose(1, 0, 2, 3).reshape(o, n_a * p, c),
                           cot_b.transpose(1, 3, 0, 2).reshape(o, c, n_b * p)).reshape(
                               o, n_a, p, n_b, p)  # [O, Na, P, Nb, P]
      theta += np.einsum("ipjq,oipjq->oij", patch_gram, cot_gram)  # [O, Na, Nb]
    theta = theta.transpose(1, 2, 0)  # [Na, Nb, O]
    if diagonal:
      theta = 0.5 * (theta + theta.transpose(1, 0, 2))  # Theta[j, i, o] = Theta[i, j, o]
    return np.ascontiguousarray(theta)


def _patch_gram(patches_a: np.ndarray, patches_b: np.ndarray) -> np.ndarray:
  """X_a[i, p] . X_b[j, q] for patches [Na, P, K], [Nb, P, K] -> `[Na, P, Nb, P]`."""
  (n_a, p, k), n_b = patches_a.shape, patches_b.shape[0]
  return (patches_a.reshape(n_a * p, k) @ patches_b.reshape(n_b * p, k).T).reshape(n_a, p, n_b, p)


def make_contraction(engine: implementation_lib.MatmulEngine, product_offsets: Sequence[float],
                     accumulate_dtype: str) -> Contraction:
  """Returns the engine's `Contraction`; AUTO is NUMPY without a visible GPU, else XLA."""
  if engine == implementation_lib.MatmulEngine.AUTO:
    engine = (implementation_lib.MatmulEngine.XLA if tf.config.list_physical_devices("GPU")
              else implementation_lib.MatmulEngine.NUMPY)
  cls = NumpyContraction if engine == implementation_lib.MatmulEngine.NUMPY else XlaContraction
  return cls(product_offsets, accumulate_dtype)


def _syrk_upper(u: np.ndarray, _=None, *, out: np.ndarray) -> np.ndarray:
  """Writes u u^T [N, N] into the upper triangle of `out` (Fortran order) by BLAS SYRK.

  `u` [N, k] in C order is u^T in Fortran order, so SYRK with trans=1 forms
  (u^T)^T u^T without a copy. The strict lower triangle of `out` is not touched.
  """
  syrk = scipy_blas.dsyrk if u.dtype == np.float64 else scipy_blas.ssyrk
  return syrk(1.0, u.T, trans=1, c=out, overwrite_c=1)  # [N, N]


def _gemm_nt(u: np.ndarray, v: np.ndarray, *, out: np.ndarray) -> np.ndarray:
  """Writes u v^T [Nu, Nv] into `out` (Fortran order) by BLAS GEMM."""
  gemm = scipy_blas.dgemm if u.dtype == np.float64 else scipy_blas.sgemm
  return gemm(1.0, u.T, v.T, trans_a=1, c=out, overwrite_c=1)  # [Nu, Nv]
