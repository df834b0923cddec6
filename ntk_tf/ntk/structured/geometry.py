"""Conv2D geometry for the structured NTK: paddings, patch indices, input patches, gradients.

Shapes: inputs [N, H, W, C_in]; output positions P = H' * W'; patch length
K = kh * kw * C_in ordered as the kernel's (kh, kw, C_in); C output channels.
A conv's output at position p is X[p] . W with X[p] [K] the input patch.

Per-example kernel gradients g_i = sum_p X_i[p]^T D_i[p] have two engines:
`conv_gradient` (TF ops, in the features' traced function) and
`host_conv_gradient` (NumPy on the host); `gradient_on_host` picks one per layer.
"""

from typing import Tuple

import numpy as np
import tensorflow as tf

from ntk_tf import onednn


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> Tuple[int, int]:
  """TF/Keras 'same' padding (before, after) of one spatial axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
  return total // 2, total - total // 2


def conv_paddings(layer, input_hw: Tuple[int, int]) -> Tuple:
  """Returns the [N, H, W, C] paddings of a Conv2D's input ('same' or 'valid')."""
  (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.strides, layer.dilation_rate
  h, w = input_hw
  if layer.padding == "same":
    pad_h, pad_w = _same_padding(h, kh, sh, dh), _same_padding(w, kw, sw, dw)
  elif layer.padding == "valid":
    pad_h, pad_w = (0, 0), (0, 0)
  else:
    raise NotImplementedError(f"Conv2D padding must be 'same' or 'valid'. "
                              f"Received: padding={layer.padding!r} in layer {layer.name!r}")
  return ((0, 0), pad_h, pad_w, (0, 0))


def patch_indices(layer, input_hw: Tuple[int, int]) -> Tuple[Tuple, np.ndarray]:
  """Returns (paddings, index [P * kh * kw]) that gather a conv's input patches.

  The padded input, flattened to [N, Hp * Wp, C_in], gathered at `index` and
  reshaped to [N, P, kh * kw * C_in], holds the patch of every output position
  p = (oh, ow) in the kernel's (kh, kw, C_in) order: row oh * sh + i * dh,
  column ow * sw + j * dw of the padded input for kernel offset (i, j).
  """
  (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.strides, layer.dilation_rate
  paddings = conv_paddings(layer, input_hw)
  hp, wp = (size + sum(pad) for size, pad in zip(input_hw, paddings[1:3]))
  out_h = (hp - (kh - 1) * dh - 1) // sh + 1
  out_w = (wp - (kw - 1) * dw - 1) // sw + 1
  rows = (np.arange(out_h)[:, None, None, None] * sh + np.arange(kh)[None, None, :, None] * dh)
  cols = (np.arange(out_w)[None, :, None, None] * sw + np.arange(kw)[None, None, None, :] * dw)
  index = (rows * wp + cols).reshape(-1).astype(np.int32)  # [out_h * out_w * kh * kw]
  return paddings, index


def conv_patches(layer, inputs: tf.Tensor, paddings, index: np.ndarray) -> tf.Tensor:
  """Returns the conv's input patches [N, P, K] (K ordered as the kernel's kh, kw, C_in).

  One gather from the padded input at `patch_indices`; exact (a copy).
  """
  n, c_in = tf.shape(inputs)[0], inputs.shape[-1]
  padded = tf.pad(inputs, paddings) if any(map(sum, paddings)) else inputs  # [N, Hp, Wp, C_in]
  flat = tf.reshape(padded, [n, -1, c_in])  # [N, Hp * Wp, C_in]
  patches = tf.gather(flat, index, axis=1)  # [N, P * kh * kw, C_in]
  kh, kw = layer.kernel_size
  return tf.reshape(patches, [n, -1, kh * kw * c_in])  # [N, P, K]


# Multiply-adds per example (P K C) from which `conv_gradient`'s loop of one conv
# gradient per example, each paying TF's per-op overhead, is worth it against NumPy's
# batched BLAS: LeNet's small convs run faster in NumPy, ResNet18's convs (its stem
# included) in TF (`benchmarks/structured_conv_engines.py` times both).
MIN_TF_GRADIENT_MACS = 1 << 20


# C_in * C up to which the grouped route (`grouped_route`) beats both the per-example loop
# and NumPy: N groups of few channels are one efficient oneDNN call, while many channels
# per group run faster one example at a time (`benchmarks/structured_conv_engines.py` on
# an AVX-512 Xeon, N = 256: LeNet's convs (C_in C = 18, 96) 3.9x NumPy's speed; ResNet18's
# stem (192) 2.2x the loop's; its stage-0 convs (4,096) 0.85x the loop's).
MAX_GROUPED_CHANNEL_PAIRS = 1024


def grouped_route(layer) -> bool:
  """Whether `conv_gradient` forms all N gradients in one grouped conv gradient.

  Float32 kernels larger than 1x1, without dilation, with C_in C <=
  MAX_GROUPED_CHANNEL_PAIRS, where TF's oneDNN kernels are on: Eigen's CPU conv
  gradient (oneDNN off, or float64) takes no groups.
  """
  c_in, c = (int(d) for d in layer.kernel.shape[2:])
  return (onednn.enabled() and layer.compute_dtype == "float32"
          and tuple(layer.kernel_size) != (1, 1) and tuple(layer.dilation_rate) == (1, 1)
          and c_in * c <= MAX_GROUPED_CHANNEL_PAIRS)


def gradient_on_host(layer, positions: int) -> bool:
  """Whether the NumPy engine forms this conv's per-example kernel gradients on the host.

  True (`host_conv_gradient`) for kernels larger than 1x1 with fewer than
  MIN_TF_GRADIENT_MACS multiply-adds P K C per example, unless `grouped_route`; else False
  (`conv_gradient`: one grouped conv gradient, a loop of conv gradients large enough to
  pay their per-example overhead, or one batched matmul for 1x1 kernels).
  """
  if tuple(layer.kernel_size) == (1, 1) or grouped_route(layer):
    return False
  macs = positions * int(np.prod(layer.kernel.shape))  # P K C
  return macs < MIN_TF_GRADIENT_MACS


def conv_gradient(layer, inputs: tf.Tensor, cot: tf.Tensor, paddings,
                  index: np.ndarray) -> tf.Tensor:
  """Returns the per-example kernel gradients g_i = sum_p X_i[p]^T D_i[p] [N, K*C] with TF ops.

  Three exact routes, by kernel:
    kh x kw > 1, no dilation, few channels, oneDNN on (`grouped_route`): one grouped
      `Conv2DBackpropFilter` of the N examples side by side along channels,
      input [1, H, W, N C_in] and cotangents [1, H', W', N C] with N groups, so
      the filter gradient [kh, kw, C_in, N C] holds each example's own;
    other kh x kw > 1 without dilation: one `Conv2DBackpropFilter` per example
      (a loop over examples): the gradient of the conv's kernel at batch 1, which
      never forms the [N, P, K] patches;
    1x1 or dilated: the gathered patches (`conv_patches`, at `patch_indices`'
      paddings and index) and one batched matmul. (TF's CPU conv gradients
      take no dilation without oneDNN, and oneDNN's filter gradient of a 1x1
      stride-2 conv is wrong in float32: ntk_tf/onednn.py. A 1x1 patch is the
      input pixel, so its patches are no larger than the input.)
  Runs in float32 and float64.

  Args:
    layer: the Conv2D.
    inputs: [N, H, W, C_in] its inputs.
    cot: [N, P, C] the cotangents of its pre-activation output.
    paddings, index: the layer's `patch_indices`.
  Returns:
    [N, K*C], flattened like the kernel [kh, kw, C_in, C] (as
    `ops.structured_blocks.positional_gradient`).
  """
  n = tf.shape(inputs)[0]
  kernel_shape = [int(d) for d in layer.kernel.shape]  # [kh, kw, C_in, C]
  if tuple(layer.kernel_size) == (1, 1) or tuple(layer.dilation_rate) != (1, 1):
    patches = conv_patches(layer, inputs, paddings, index)  # [N, P, K]
    grads = tf.matmul(patches, cot, transpose_a=True)  # [N, K, C]
    return tf.reshape(grads, [n, -1])  # [N, K*C]
  out_h = (inputs.shape[1] + sum(paddings[1]) - kernel_shape[0]) // layer.strides[0] + 1
  out_w = (inputs.shape[2] + sum(paddings[2]) - kernel_shape[1]) // layer.strides[1] + 1
  if grouped_route(layer):
    return _grouped_gradient(layer, inputs, cot, kernel_shape, (out_h, out_w))
  cot_maps = tf.reshape(cot, [n, 1, out_h, out_w, kernel_shape[3]])  # [N, 1, H', W', C]

  def example_gradient(pair):
    example, example_cot = pair  # [1, H, W, C_in], [1, H', W', C]
    return tf.raw_ops.Conv2DBackpropFilter(
        input=example, filter_sizes=kernel_shape, out_backprop=example_cot,
        strides=[1, *layer.strides, 1], padding=layer.padding.upper())  # [kh, kw, C_in, C]
  grads = tf.map_fn(example_gradient, (inputs[:, None], cot_maps),
                    fn_output_signature=inputs.dtype)  # [N, kh, kw, C_in, C]
  return tf.reshape(grads, [n, -1])  # [N, K*C]


def _grouped_gradient(layer, inputs: tf.Tensor, cot: tf.Tensor, kernel_shape,
                      out_shape: Tuple[int, int]) -> tf.Tensor:
  """`conv_gradient`'s grouped route: N groups of C_in -> C channels, `[N, K*C]`."""
  n = tf.shape(inputs)[0]
  (kh, kw, c_in, c), (height, width) = kernel_shape, inputs.shape[1:3]
  side_by_side = tf.reshape(tf.transpose(inputs, [1, 2, 0, 3]),
                            [1, height, width, n * c_in])  # [1, H, W, N C_in]
  cot_maps = tf.reshape(tf.transpose(tf.reshape(cot, [n, *out_shape, c]), [1, 2, 0, 3]),
                        [1, *out_shape, n * c])  # [1, H', W', N C]
  grads = tf.raw_ops.Conv2DBackpropFilter(
      input=side_by_side, filter_sizes=tf.stack([kh, kw, c_in, n * c]), out_backprop=cot_maps,
      strides=[1, *layer.strides, 1], padding=layer.padding.upper())  # [kh, kw, C_in, N C]
  grads = tf.transpose(tf.reshape(grads, [kh, kw, c_in, n, c]), [3, 0, 1, 2, 4])
  return tf.reshape(grads, [n, kh * kw * c_in * c])  # [N, K*C]


def host_patches(layer, inputs: np.ndarray) -> np.ndarray:
  """Returns the conv's input patches [N, P, K] on the host (NumPy), as `conv_patches`.

  Strided windows of the padded input, copied once into [N, H', W', kh, kw, C_in].
  """
  (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.strides, layer.dilation_rate
  paddings = conv_paddings(layer, inputs.shape[1:3])
  padded = np.pad(inputs, paddings) if any(map(sum, paddings)) else inputs  # [N, Hp, Wp, C_in]
  span_h, span_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
  windows = np.lib.stride_tricks.sliding_window_view(padded, (span_h, span_w), axis=(1, 2))
  windows = windows[:, ::sh, ::sw, :, ::dh, ::dw]  # [N, H', W', C_in, kh, kw] (a view)
  n, out_h, out_w, c_in = windows.shape[:4]
  patches = np.ascontiguousarray(windows.transpose(0, 1, 2, 4, 5, 3))  # [N, H', W', kh, kw, C_in]
  return patches.reshape(n, out_h * out_w, kh * kw * c_in)  # [N, P, K]


def host_conv_gradient(layer, inputs: np.ndarray, cot: np.ndarray,
                       chunk_bytes: int = 32 << 20) -> np.ndarray:
  """Returns the per-example kernel gradients g_i = sum_p X_i[p]^T D_i[p] [N, K*C] on the host.

  Patches are formed for chunks of examples of at most `chunk_bytes` each, so
  they stay small and their buffer is reused instead of page-faulted anew.

  Args:
    layer: the Conv2D.
    inputs: [N, H, W, C_in] its inputs.
    cot: [N, P, C] the cotangents of its pre-activation output.
    chunk_bytes: patch bytes per chunk.
  Returns:
    [N, K*C], flattened like the kernel [kh, kw, C_in, C] (as
    `ops.structured_blocks.positional_gradient`).
  """
  n, p, c = cot.shape
  k = int(np.prod(layer.kernel.shape[:-1]))
  grads = np.empty((n, c, k), cot.dtype)  # [N, C, K]
  step = max(1, chunk_bytes // (p * k * cot.itemsize))
  for i in range(0, n, step):
    patches = host_patches(layer, inputs[i:i + step])  # [n_i, P, K]
    # D^T X ([C, P] x [P, K] per example): the layout BLAS batches well.
    np.matmul(cot[i:i + step].transpose(0, 2, 1), patches, out=grads[i:i + step])
  return np.ascontiguousarray(grads.transpose(0, 2, 1)).reshape(n, k * c)  # [N, K*C]
