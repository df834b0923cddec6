"""Whether TensorFlow's oneDNN kernels are on, and safe replacements for the ops they get wrong.

TensorFlow 2.21 on Linux x86 runs float32 convolutions, matmuls, BatchNorm and
pooling through oneDNN when `TF_ENABLE_ONEDNN_OPTS` is "1"/"true", or when it
is unset and the CPU has AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX
(`DefaultOneDnnPolicy` in tensorflow/core/util/util.cc). float64 never runs
through oneDNN. Checked against float64 with TF 2.21.0 and oneDNN on
(tests/onednn_test.py checks each case below), two float32 ops go wrong:

1. `Conv2DBackpropFilter` of a 1x1 convolution with stride 2 whose input has an
   even spatial size (the last row and column are read by no window), on a
   small batch with few channels (seen for N in {1, 3}, C_in <= 8,
   C_out <= 16, H = W in {16, 32}; N = 2, 4 and 128 and 16 -> 32 channels ran
   exact): it corrupts the heap. The process dies (segmentation
   fault, `free(): invalid size`, `double free or corruption`), or the op
   raises "could not create a primitive descriptor for the reorder primitive",
   or returns a kernel gradient with relative error ~0.4. ResNet18's
   projection shortcuts at width 4 and 8 hit it in every per-example Jacobian
   (batch 1). 3x3 stride-2, 1x1 stride-1, odd sizes and the input gradient are
   exact.
   `DepthwiseConv2dNative` 1x1 stride 2 with one input channel crashes the same
   way (not routed: ntk_tf's models have no depthwise convs).
   Route: `protect(model)` gives every 1x1 strided Conv2D layer a convolution of
   the subsampled input, `conv(x[:, ::s, ::s, :], W)` with stride 1 and 'valid'
   padding: the same function (a 1x1 window never needs padding), whose kernel
   gradient is a stride-1 `Conv2DBackpropFilter` (exact) and whose input
   gradient is a `StridedSliceGrad`.
2. `Pad` on the channel axis followed by `Conv2D(padding="VALID")` in a
   graph: oneDNN's rewrite, which folds a Pad into the VALID conv after it,
   takes the paddings as spatial, so the conv sees the unpadded channels
   ("input depth must be evenly divisible by filter depth: 2 vs 8", likewise
   3 vs 8 and 8 vs 16) or the process aborts (issue 14 saw
   `mkl_layout_pass.cc:2665 Check failed`). Spatial padding, 'same' convs
   and float64 are exact. Route: do not pad channels when
   `enabled()` (the structured NTK path's 8-channel padding is a speed-up for
   TF's Eigen kernels only).

Forward Conv2D and Conv2DBackpropInput (kernels 1, 3, 5; strides 1, 2;
dilation 2; 'same' and 'valid'; C_in 1-16; N 1 and 4), the filter gradient of
every kernel other than 1x1 stride 2, DepthwiseConv2dNative with C_in > 1,
FusedBatchNorm (training and inference), MatMul (with bias and ReLU), AvgPool,
MaxPool and mean, with their gradients, agreed with float64 to <= 5e-6
relative.

With oneDNN off, `protect` changes nothing, so results there are bit-for-bit
those of plain Keras layers.
"""

import functools
import os
import platform

import keras

# CPU flags (/proc/cpuinfo names) for which TF 2.21 turns oneDNN on by default.
_DEFAULT_ON_CPU_FLAGS = frozenset(
    ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"))


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset:
  try:
    with open("/proc/cpuinfo") as cpuinfo:
      for line in cpuinfo:
        if line.startswith("flags"):
          return frozenset(line.split(":", 1)[1].split())
  except OSError:
    pass
  return frozenset()


def enabled() -> bool:
  """Returns whether TensorFlow runs float32 ops through oneDNN in this process.

  Mirrors TF 2.21's `IsMklEnabled`: `TF_ENABLE_ONEDNN_OPTS` ("0"/"false" or
  "1"/"true", any case) decides; unset, empty or unparsable, it is on where
  the CPU has one of `_DEFAULT_ON_CPU_FLAGS` (Linux).
  """
  setting = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower()
  if setting in ("1", "true"):
    return True
  if setting in ("0", "false"):
    return False
  return bool(_DEFAULT_ON_CPU_FLAGS & _cpu_flags())


def machine() -> str:
  """The features that set a result's last digits, e.g. "x86_64 2 cores avx2 no-avx512 oneDNN off".

  Recorded with every experiment row (`experiments.workdir.ResultStore`) and shown in the
  committed CSVs (`reproduce.tables`).
  """
  flags = _cpu_flags()
  simd = " ".join(("" if f in flags else "no-") + f for f in ("avx2", "avx512f"))
  return (f"{platform.machine()} {os.cpu_count()} cores {simd.replace('avx512f', 'avx512')} "
          f"oneDNN {'on' if enabled() else 'off'}")


def is_affected_conv(layer) -> bool:
  """Whether `layer` is a float32 Conv2D whose kernel gradient oneDNN can corrupt (1x1, strided)."""
  return (isinstance(layer, keras.layers.Conv2D)
          and tuple(layer.kernel_size) == (1, 1)
          and tuple(layer.strides) != (1, 1)
          and keras.backend.standardize_dtype(layer.compute_dtype) != "float64")


def subsampled_convolution_op(layer):
  """Returns `layer`'s convolution as a stride-1 conv of its subsampled input.

      conv(x, W; stride s, 1x1) = conv(x[:, ::s_h, ::s_w, :], W; stride 1, 'valid')

  Valid for 1x1 kernels only ('same' padding of a 1x1 window is zero).
  Shapes: inputs `[N, H, W, C_in]` (channels_last) or `[N, C_in, H, W]`,
  output `[N, ceil(H/s_h), ceil(W/s_w), C_out]` (or channels_first).
  """
  if tuple(layer.kernel_size) != (1, 1):
    raise ValueError(f"subsampled_convolution_op needs a 1x1 kernel. "
                     f"Received: layer {layer.name!r} with kernel_size={layer.kernel_size}")
  stride_h, stride_w = layer.strides

  def convolution_op(inputs, kernel):
    if layer.data_format == "channels_last":
      subsampled = inputs[:, ::stride_h, ::stride_w, :]  # [N, H', W', C_in]
    else:
      subsampled = inputs[:, :, ::stride_h, ::stride_w]  # [N, C_in, H', W']
    return keras.ops.conv(subsampled, kernel, strides=1, padding="valid", dilation_rate=1,
                          data_format=layer.data_format)
  return convolution_op


def protect(model: keras.Model) -> keras.Model:
  """Routes `model`'s layers around the oneDNN bugs above when oneDNN is on; returns `model`.

  Sets, on each affected Conv2D layer (`is_affected_conv`), an instance
  `convolution_op` computing the same function with exact gradients. The layer
  keeps its class, config, weights and name, so structured derivatives and
  serialization see a plain Conv2D; a clone (`keras.models.clone_model`,
  `from_config`) is unprotected until passed here. Idempotent; a no-op when
  `enabled()` is False. Call it before the model's first traced call.
  """
  if not enabled():
    return model
  for layer in model._flatten_layers(include_self=False, recursive=True):  # pylint: disable=protected-access
    if is_affected_conv(layer) and "convolution_op" not in vars(layer):
      layer.convolution_op = subsampled_convolution_op(layer)
  return model
