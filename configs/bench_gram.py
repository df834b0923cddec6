"""Config of the Gram benchmark (binaries/bench_gram.py, benchmarks/gram_paths.py).

    bazel run //binaries:bench_gram -- --data_dir=$PWD/../shared/data
    bazel run //binaries:bench_gram -- --smoke   (tiny sizes, seconds)

MLP N=2000, LeNet N=1000, ResNet18 N=128 on CIFAR-10 inputs, float32; the
auto path's growth for the MLP at N = 500 ... 4000. The naive baseline is
timed on at most naive_max_n examples and scaled by (N / n)^2.
"""


def get_config(smoke: bool = False) -> dict:
  if smoke:
    return dict(cases=[("mlp", 40), ("lenet", 20)], scaling_ns=[20, 40],
                naive_max_n={"mlp": 20, "lenet": 10, "resnet18": 4},
                memory_budget=1 << 28, repeats={"mlp": 1, "lenet": 1},
                measure_memory=False, fresh_process=False)
  return dict(
      cases=[("mlp", 2000), ("lenet", 1000), ("resnet18", 128)],
      scaling_ns=[500, 1000, 2000, 4000],
      # The naive pfor Jacobian holds N x N x activations: ResNet18 needs a small subset.
      naive_max_n={"mlp": 500, "lenet": 250, "resnet18": 8},
      memory_budget=4 << 30,
      # Fast paths: best of this many timed runs (a ResNet18 Gram is the slowest case).
      repeats={"mlp": 5, "lenet": 5, "resnet18": 2},
      measure_memory=True,  # Peak memory of each path (VmHWM).
      fresh_process=True,  # Each path in its own spawned process.
  )
