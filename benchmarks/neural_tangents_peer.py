"""The neural-tangents yardstick: the same Grams and training steps in JAX, timed.

A standalone script for a SEPARATE virtualenv holding neural-tangents 0.6.5 and
JAX 0.4.25 (never a dependency of ntk_tf; see benchmarks/README.md):

    python3 -m venv /tmp/peer && /tmp/peer/bin/pip install \
        jax==0.4.25 jaxlib==0.4.25 neural-tangents==0.6.5
    .venv/bin/python -m binaries.bench_gram --export_weights=/tmp/peer.npz \
        --data_dir=../shared/data
    /tmp/peer/bin/python benchmarks/neural_tangents_peer.py /tmp/peer.npz

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


def mlp():
  return stax.serial(stax.Flatten(),
                     stax.Dense(100, parameterization="standard"), stax.Relu(),
                     stax.Dense(100, parameterization="standard"), stax.Relu(),
                     stax.Dense(1, parameterization="standard"))


def lenet():
  conv = lambda c: stax.Conv(c, (5, 5), padding="SAME", parameterization="standard",
                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
  pool = stax.AvgPool((2, 2), strides=(2, 2), padding="VALID")
  dense = lambda c: stax.Dense(c, parameterization="standard")
  return stax.serial(conv(6), stax.Relu(), pool, conv(16), stax.Relu(), pool, stax.Flatten(),
                     dense(120), stax.Relu(), dense(84), stax.Relu(), dense(1))


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


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("export", help=".npz written by benchmarks/peer_export.py")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args()
  data = np.load(args.export)
  print(f"jax {jax.__version__}, neural-tangents {nt.__version__}, devices {jax.devices()}")
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
