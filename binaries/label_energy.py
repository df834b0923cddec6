r"""Table 1's energy at initialization under each convention the paper leaves open.

  bazel run //binaries:label_energy -- --models=mlp,lenet \
      --eigvecs_60k=mlp=runs/paper/gram_cache/<mlp key>/eigen_k1000_auto_s0.npz

E = ||Phi_50^T y||^2 / ||y||^2 on Table 1's 12,000 CIFAR2 training samples with +-1 or
{0, 1} labels, centred labels, raw inputs, Flax's initializers, the NTK
parameterization and the Gram of all 60,000 images (ntk_tf/experiments/label_energy.py).
The rows join docs/paper/table1_<model>.csv, whose page shows them; Table 1 itself
(`reproduce --figure=table1`) must have been run first.
"""

from binaries import engine_defaults  # pylint: disable=unused-import  # first: sets oneDNN

from absl import app
from absl import flags

from ntk_tf.reproduce import program

_MODELS = flags.DEFINE_string("models", "mlp,lenet", "Comma list of mlp, lenet, resnet18.")
_VARIANTS = flags.DEFINE_string("variants", None, "Comma list of variants (default: all of "
                                "ntk_tf/experiments/label_energy.py's VARIANTS).")
_EIGVECS_60K = flags.DEFINE_string(
    "eigvecs_60k", None, "Comma list of model=path of the top eigenvectors (.npz, key "
    "`eigvecs`) of that model's 60,000-sample CIFAR-10 Gram, for the theta0_60k variant.")
_TRAIN_SIZE = flags.DEFINE_integer("train_size", 12_000, "CIFAR2 training samples (Table 1: "
                                   "12,000).", lower_bound=2)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder with cifar10.npz (default: search).")
_OUT = flags.DEFINE_string("out", program.DEFAULT_OUT, "Folder of the committed CSVs and pages.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  program.energy_variants(models=_MODELS.value, out=_OUT.value, data_dir=_DATA_DIR.value,
                          variants=_VARIANTS.value, eigvecs_60k=_EIGVECS_60K.value,
                          train_size=_TRAIN_SIZE.value)


if __name__ == "__main__":
  app.run(main)
