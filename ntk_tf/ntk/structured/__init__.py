"""Structured empirical NTK: per-layer contributions without full Jacobians.

    Theta(x_a, x_b) = sum_l Theta_l(x_a, x_b),
    Theta_l(x_a, x_b) = < d f(x_a) / d theta_l , d f(x_b) / d theta_l >.

For every layer l with trainable parameters, one batched forward pass records
its input A (activations) and pre-activation output z, and one batched
backward pass of sum_i f(x_i) gives the per-example output cotangents
D_i = d f(x_i) / d z_i (examples are independent in inference mode, and the
model has one logit). Then, with `.` the inner product over features:

  Dense  z = A W + b:            Theta_W = (A_a A_b^T) * (D_a D_b^T),  Theta_b = D_a D_b^T
  Conv2D z = conv(A, W) + b:     Theta_W = sum_{p,q} (X_a[p] . X_b[q]) (D_a[p] . D_b[q])
                                 (X = input patches, p, q = output positions),
                                 or G_a G_b^T with g_i = sum_p X_i[p]^T D_i[p]
  BatchNorm (inference) y = gamma * xhat + beta:
                                 g_gamma,i = sum_pos xhat_i * D_i,  g_beta,i = sum_pos D_i
  other layers with trainable weights: per-example gradients of f with respect
                                 to that layer's variables by `tape.jacobian`
                                 (the reference path, restricted to the layer;
                                 a while loop instead of pfor when the graph has
                                 a grouped conv, which pfor differentiates wrongly).
                                 This covers every layer configuration without a
                                 rule: grouped, depthwise and separable convs,
                                 BatchNormalization of a non-last axis, layers
                                 called more than once.

Each Dense / Conv2D kernel takes the cheaper, by the FLOP estimate in
`flop_report`, of (a) the structured product ("structured") and (b) forming
per-example gradients and contracting them ("jacobian"). Biases and BatchNorm
parameters are always per-example gradients (they have few parameters).

A model with O > 1 logits [N, O] (the output kernels of `ntk_tf.ntk.output_kernel`,
which call O "K") gets one backward pass per logit, so O cotangents D_i,o
per layer. "trace" = sum_o Theta_oo holds them side by side, so every term
above sums over o unchanged, e.g. (A_a A_b^T) * (sum_o D_a,o D_b,o^T).
"full" keeps them apart: for a Dense layer
Theta_W[i, j, o, r] = (A_i . A_j)(D_i,o . D_j,r), one [Na O, Nb O] cotangent
Gram times the [Na, Nb] inputs Gram, not O^2 one-logit Grams
(`engines.OutputContraction`); "diagonal" is its o = r entries. "pseudo" is
one logit.

Modules, one job each:
  plan         LayerPlan / ModelPlan: per-layer forms, FLOP and memory counts
  keras_graph  the one place that uses Keras' private functional-graph APIs
  geometry     Conv2D paddings, patch indices, patches, per-example kernel gradients
  features     per-block features (one batched forward/backward pass), cached
  engines      the NumPy (host BLAS) and XLA contractions behind one interface
  ntk          StructuredNtk (the BlockFn) and its make_block_fn

Shape convention: N examples, P output positions, K = kh*kw*C_in (patch
length; for Dense, the input width), C = output channels; `_a`, `_b` name the
two example blocks of a Gram block [Na, Nb].

Reference: Novak et al. 2022, "Fast finite width neural tangent kernel" (the
factorization of a Dense / conv layer's NTK; not in the paper, whose App. B
computes Grams with neural_tangents' empirical_kernel_fn).
"""

from ntk_tf.ntk.structured.geometry import conv_gradient
from ntk_tf.ntk.structured.geometry import conv_paddings
from ntk_tf.ntk.structured.geometry import host_conv_gradient
from ntk_tf.ntk.structured.geometry import host_patches
from ntk_tf.ntk.structured.geometry import patch_indices
from ntk_tf.ntk.structured.ntk import OUTPUT_KERNELS
from ntk_tf.ntk.structured.ntk import StructuredNtk
from ntk_tf.ntk.structured.ntk import make_block_fn
from ntk_tf.ntk.structured.plan import CHOICES
from ntk_tf.ntk.structured.plan import JACOBIAN
from ntk_tf.ntk.structured.plan import LayerPlan
from ntk_tf.ntk.structured.plan import ModelPlan
from ntk_tf.ntk.structured.plan import REFERENCE
from ntk_tf.ntk.structured.plan import STRUCTURED
from ntk_tf.ntk.structured.plan import contraction_flops
from ntk_tf.ntk.structured.plan import flop_report
