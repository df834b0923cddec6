"""The neural-tangents yardstick: the same Grams and training steps in JAX, timed.

A standalone script for a SEPARATE virtualenv holding neural-tangents 0.6.5 and
JAX 0.4.25 (never a dependency of ntk_tf; see benchmarks/README.md):

    python3 -m venv /tmp/peer && /tmp/peer/bin/pip install \
        jax==0.4.25 jaxlib==0.4.25 neural-tangents==0.6.5
    .venv/bin/python -m binaries.bench_gram --export_weights=/tmp/peer.npz \
        --data_dir=../shared/data
    /tmp/peer/bin/python benchmarks/neural_tangents_peer.py /tmp/peer.npz

With `--output_kernels` it reads instead the `.npz` of `benchmarks/output_kernels.py --export`
(K-logit models, ntk_tf's "full", "diagonal", "trace" and "pseudo" Grams) and times
neural-tangents' counterparts: `trace_axes=()` (full [N, N, K, K]), `trace_axes=(),
diagonal_axes=(-1,)` (diagonal), its default `trace_axes=(-1,)` (the trace; neural-tangents
averages over the traced axis, so its Gram is ntk_tf's "trace" / K, which the check accounts
for), and the default on the model (1/sqrt K) sum_a f_a (pseudo), with the peak resident
memory of each (VmHWM, reset before each kernel).

It reads the `.npz` of `benchmarks/peer_export.py` (ntk_tf's weights, inputs
and Grams), builds the same MLP (2 x 100 ReLU, 1 logit) and LeNet ('same'
5x5 convs, 2x2 average pooling) in `neural_tangents.stax` with the 'standard'
parameterization (f = x W + b, so the Keras Dense kernel [in, out] is stax's
W and the Conv2D HWIO kernel is stax's W with NHWC inputs), checks that its
Gram equals ntk_tf's to float32 rounding, and prints, best of `--repeats`
after a warm-up:
  - the jitted `nt.empirical_ntk_fn(..., STRUCTURED_DERIVATIVES)` Gram time;
  - one jitted SGD-momentum training step (batch 128, BCE on the logit) of the
    network and of `nt.linearize(network)`, averaged over `--steps` steps.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import neural_tangents as nt
import numpy as np
from neural_tangents import stax


def mlp(outputs=1):
  return stax.serial(stax.Flatten(),
                     stax.Dense(100, parameterization="standard"), stax.Relu(),
                     stax.Dense(100, parameterization="standard"), stax.Relu(),
                     stax.Dense(outputs, parameterization="standard"))


def lenet(outputs=1):
  conv = lambda c: stax.Conv(c, (5, 5), padding="SAME", parameterization="standard",
                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
  pool = stax.AvgPool((2, 2), strides=(2, 2), padding="VALID")
  dense = lambda c: stax.Dense(c, parameterization="standard")
  return stax.serial(conv(6), stax.Relu(), pool, conv(16), stax.Relu(), pool, stax.Flatten(),
                     dense(120), stax.Relu(), dense(84), stax.Relu(), dense(outputs))


ARCHITECTURES = {"mlp": mlp, "lenet": lenet}


# Per stax layer of each architecture: the bias shape of a weighted layer, None otherwise.
# (Built here, not by stax's init_fn, which fails under NumPy 2 in JAX 0.4.25.)
LAYER_BIASES = {
    "mlp": [None, (1, -1), None, (1, -1), None, (1, -1)],
    "lenet": [(1, 1, 1, -1), None, None, (1, 1, 1, -1), None, None, None,
              (1, -1), None, (1, -1), None, (1, -1)],
}


def params_from(data, name):
  """stax params ((W, b) per weighted layer, () otherwise) from ntk_tf's Keras weights.

  Keras' trainable weights come as (kernel, bias) per layer in layer order;
  the Dense kernel [in, out] and the Conv2D kernel HWIO are stax's W as is,
  the bias [out] is reshaped to stax's broadcast shape.
  """
  params, k = [], 0
  for bias_shape in LAYER_BIASES[name]:
    if bias_shape is None:
      params.append(())
      continue
    w, b = data[f"w_{name}_{k}"], data[f"w_{name}_{k + 1}"]
    k += 2
    params.append((jax.device_put(w), jax.device_put(b.reshape(bias_shape))))
  assert f"w_{name}_{k}" not in data, f"{name}: more Keras weights than stax layers"
  return params


def best_seconds(fn, repeats):
  jax.block_until_ready(fn())  # Warm-up: compile.
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best


def sgd_step(apply_fn, lr=0.05, momentum=0.9):
  """jitted (params, velocity, x, y01) -> (params, velocity, loss): BCE, heavy-ball SGD."""

  def loss_fn(params, x, y01):
    logits = apply_fn(params, x)
    return jnp.mean(jnp.maximum(logits, 0) - logits * y01 + jnp.log1p(jnp.exp(-jnp.abs(logits))))

  @jax.jit
  def step(params, velocity, x, y01):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y01)
    velocity = jax.tree_util.tree_map(lambda v, g: momentum * v - lr * g, velocity, grads)
    params = jax.tree_util.tree_map(lambda p, v: p + v, params, velocity)
    return params, velocity, loss

  return step


def step_ms(step, params, x, y01, steps, repeats):
  velocity = jax.tree_util.tree_map(jnp.zeros_like, params)

  def run():
    p, v = params, velocity
    for _ in range(steps):
      p, v, loss = step(p, v, x, y01)
    return loss

  return 1e3 * best_seconds(run, repeats) / steps


def _peak_kib():
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def _reset_peak():
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")


def output_kernels(data, repeats):
  """Times neural-tangents' output kernels on the export of benchmarks/output_kernels.py."""
  print(f"{'model':<7}{'N':>6}{'K':>4} {'kernel':<10}{'NT s':>9}{'peak MiB':>10}"
        f"{'max|dG|/max|G|':>16}")
  for name in ARCHITECTURES:
    if f"x_{name}" not in data:
      continue
    x = jax.device_put(data[f"x_{name}"])
    k = data[f"gram_{name}_full"].shape[-1]  # [N, N, K, K]
    _, apply_fn, _ = ARCHITECTURES[name](k)
    params = params_from(data, name)
    summed = lambda p, inputs: jnp.sum(apply_fn(p, inputs), -1, keepdims=True) / np.sqrt(k)
    cases = {"full": (apply_fn, dict(trace_axes=()), 1.0),
             "diagonal": (apply_fn, dict(trace_axes=(), diagonal_axes=(-1,)), 1.0),
             "trace": (apply_fn, dict(), 1.0 / k),  # NT averages over the traced axis.
             "pseudo": (summed, dict(), 1.0)}
    for kernel, (fn, axes, scale) in cases.items():
      kernel_fn = jax.jit(nt.empirical_ntk_fn(
          fn, vmap_axes=0, implementation=nt.NtkImplementation.STRUCTURED_DERIVATIVES, **axes))
      theta = np.asarray(kernel_fn(x, None, params))
      reference = scale * data[f"gram_{name}_{kernel}"]
      error = float(np.max(np.abs(theta - reference)) / np.max(np.abs(reference)))
      del theta
      _reset_peak()
      before = _peak_kib()  # The resident size at the reset.
      seconds = best_seconds(lambda: kernel_fn(x, None, params), repeats)
      peak = (_peak_kib() - before) / 1024
      print(f"{name:<7}{len(x):>6}{k:>4} {kernel:<10}{seconds:>9.3f}{peak:>10.0f}{error:>16.2e}")
      if error > 1e-4:
        raise SystemExit(f"{name} {kernel}: the NT Gram differs from ntk_tf's beyond float32 "
                         f"rounding (max|dG|/max|G| = {error:.3g})")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("export", help=".npz written by benchmarks/peer_export.py (or by "
                      "benchmarks/output_kernels.py with --output_kernels)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--output_kernels", action="store_true",
                      help="time the K-logit output kernels instead")
  args = parser.parse_args()
  data = np.load(args.export)
  print(f"jax {jax.__version__}, neural-tangents {nt.__version__}, devices {jax.devices()}")
  if args.output_kernels:
    output_kernels(data, args.repeats)
    return
  print(f"{'model':<7}{'N':>6}{'NT Gram s':>11}{'max|dG|/max|G|':>16}"
        f"{'net step ms':>13}{'lin step ms':>13}{'lin/net':>9}")
  for name in ARCHITECTURES:
    if f"x_{name}" not in data:
      continue
    _, apply_fn, _ = ARCHITECTURES[name]()
    params = params_from(data, name)
    x = jax.device_put(data[f"x_{name}"])
    kernel_fn = jax.jit(nt.empirical_ntk_fn(
        apply_fn, vmap_axes=0, implementation=nt.NtkImplementation.STRUCTURED_DERIVATIVES))
    theta = np.asarray(kernel_fn(x, None, params))  # [N, N]
    reference = data[f"gram_{name}"]
    error = float(np.max(np.abs(theta - reference)) / np.max(np.abs(reference)))
    gram_s = best_seconds(lambda: kernel_fn(x, None, params), args.repeats)
    xb, yb = jax.device_put(data[f"xtrain_{name}"]), jax.device_put(data[f"ytrain_{name}"])
    net_ms = step_ms(sgd_step(apply_fn), params, xb, yb, args.steps, args.repeats)
    f_lin = nt.linearize(apply_fn, params)
    lin_ms = step_ms(sgd_step(f_lin), params, xb, yb, args.steps, args.repeats)
    print(f"{name:<7}{len(x):>6}{gram_s:>11.4f}{error:>16.2e}{net_ms:>13.3f}{lin_ms:>13.3f}"
          f"{lin_ms / net_ms:>9.2f}")
    if error > 1e-4:
      raise SystemExit(f"{name}: the NT Gram differs from ntk_tf's beyond float32 rounding "
                       f"(max|dG|/max|G| = {error:.3g})")


if __name__ == "__main__":
  main()
