"""Every figure and table of the paper: which experiment makes it, at which scale, and its claim.

`FIGURES[name]` is a `FigureSpec`: the experiment binary (binaries/<experiment>.py),
the config variant and overrides of each scale ("smoke", "quick", "paper"), the
models it is run for, the models the paper shows, the paper's claim in one
sentence and the numbers the paper prints (Table 1 only; the figures print none).

Figures that share a run: Figs. 2, 3, 13 and 14 are one eigenfunction run (Fig. 3
shows ResNet18's metrics, Figs. 13 and 14 the MLP's and LeNet's); Figs. 4 and 10
one NAD run; Fig. 6 and Table 1 one kernel-rotation run on CIFAR2; Figs. 7, 15
and 16 the kernel-rotation run on sign(phi_j) with different j; Figs. 8 and 9 one
late-linearization run.

A scale's overrides are `--config.<field>=<value>` pairs. Those of a task-selecting
field (`plan.EXPERIMENTS[...].task_fields`, e.g. eigenfunction_indices) choose the
figure's tasks within the run; the others are the run's settings.

Paper: Secs. 3-4, App. A-E.
"""

import dataclasses
from typing import Any, Mapping, Optional, Tuple

SCALES = ("smoke", "quick", "paper")
MODELS = ("mlp", "lenet", "resnet18")
# The models run when --models is not given, at every scale. ResNet18 needs a GPU or a
# cluster at the paper's scale (its Theta_0 on 60,000 CIFAR-10 images took the authors
# 32 hours on 4 V100s, App. B) and is slow on a CPU even narrowed to width 4 at the
# smoke scale; it runs when named.
DEFAULT_MODELS = ("mlp", "lenet")
GPU_MODELS = ("resnet18",)
GPU_NOTE = ("needs a GPU or a cluster at the paper's scale (App. B: its Theta_0 on the "
            "60,000 CIFAR-10 images took the authors 32 hours on 4 V100s)")

Overrides = Tuple[Tuple[str, Any], ...]


@dataclasses.dataclass(frozen=True)
class Scale:
  """The config of a figure at one scale.

  Attributes:
    variant: the config variant, `configs/<experiment>.py:<variant>`.
    overrides: `--config.<field>=<value>` pairs beyond the variant.
    label: the run's folder name under `<workdir>/<experiment>/` (default: the variant);
      figures whose runs share a label share the run.
  """
  variant: str
  overrides: Overrides = ()
  label: str = ""

  @property
  def name(self) -> str:
    return self.label or self.variant


@dataclasses.dataclass(frozen=True)
class FigureSpec:
  """One figure or table of the paper (see the module docstring)."""
  name: str
  title: str
  section: str
  experiment: str
  scales: Mapping[str, Scale]
  models: Tuple[str, ...]  # the models we run it for
  paper_models: Tuple[str, ...]  # the models the paper shows
  claim: str  # the paper's claim, one sentence
  page: str  # how pages.py draws it (pages.RENDERERS)
  paper_numbers: Optional[Mapping[str, Mapping[str, float]]] = None
  notes: Tuple[str, ...] = ()  # deviations from the paper that hold at every scale

  @property
  def paper_needs_gpu(self) -> bool:
    """Whether the paper shows a model that needs a GPU or a cluster at the paper's scale."""
    return any(m in GPU_MODELS for m in self.paper_models)


# At the smoke scale a ResNet18 is narrow (width 4 instead of 64).
SMOKE_MODEL_OVERRIDES = {"resnet18": (("model_kwargs", {"resnet18": {"width": 4}}),)}

_EIGEN = {"smoke": Scale("smoke"), "quick": Scale("quick"), "paper": Scale("paper")}
_EIGEN_ADAM = {"smoke": Scale("smoke", (("optimizer", "adam"),), "smoke_adam"),
               "quick": Scale("quick", (("optimizer", "adam"),), "quick_adam"),
               "paper": Scale("paper_adam")}
_EIGEN_MNIST = {"smoke": Scale("smoke", (("dataset", "mnist"),), "smoke_mnist"),
                "quick": Scale("quick", (("dataset", "mnist"),), "quick_mnist"),
                "paper": Scale("paper_mnist")}
_SMALL = {"smoke": Scale("smoke"), "quick": Scale("small"), "paper": Scale("paper")}
_SAMPLE_SIZE = {"smoke": Scale("smoke"), "quick": Scale("quick"), "paper": Scale("paper")}
# kernel_rotation on sign(phi_j): its `small` variant is CIFAR2, so quick sets the task.
_QUICK_EIGENFUNCTION = (("task", "eigenfunction"), ("dataset", "cifar10"),
                        ("energy_concentration", False), ("measure_epochs", (0, 20)))


def _rotation(smoke: Tuple[int, ...], quick: Tuple[int, ...],
              paper: Tuple[int, ...]) -> Mapping[str, Scale]:
  """The kernel-rotation run on sign(phi_j), j in the given indices at each scale."""
  return {"smoke": Scale("smoke_eigenfunction", (("eigenfunction_indices", smoke),)),
          "quick": Scale("small", _QUICK_EIGENFUNCTION + (("eigenfunction_indices", quick),),
                         "small_eigenfunction"),
          "paper": Scale("paper_eigenfunction", (("eigenfunction_indices", paper),))}


_EIGEN_NOTE = ("The index grid j is ours (configs/eigenfunctions.py PAPER_INDICES): the paper "
               "plots j up to 1,000 without listing its indices.")
_ROTATION_NOTE = ("alpha is phi^T Theta_t phi / n^2 (Lemma 1, by the Jacobian as in App. B); "
                  "the paper plots it on an unnormalized scale, so only the shape compares.")
_LATE_NOTE = ("The paper shows ResNet18; the MLP and LeNet runs are the same protocol on other "
              "architectures, not the paper's figure.")

# Table 1 (App. E.2), quoted from the paper: energy concentration on the top 50
# eigenvectors at init and at the end, and the CIFAR2 test accuracy, in %.
PAPER_TABLE1 = {
    "mlp": {"energy_init": 26.0, "energy_end": 63.6, "test_acc": 67.6},
    "lenet": {"energy_init": 25.8, "energy_end": 83.0, "test_acc": 75.0},
    "resnet18": {"energy_init": 22.7, "energy_end": 96.7, "test_acc": 81.4},
}

FIGURES = {
    "fig2": FigureSpec(
        name="fig2", title="Test accuracy on the NTK eigenfunctions", section="Sec. 3.1",
        experiment="eigenfunctions", scales=_EIGEN, models=MODELS, paper_models=MODELS,
        claim=("The test accuracy of networks and of their linearizations trained on "
               "sign(phi_j) falls as the eigenvalue index j grows, and the linearization "
               "is the better learner."),
        page="eigen_accuracy", notes=(_EIGEN_NOTE,)),
    "fig3": FigureSpec(
        name="fig3", title="Training metrics on the NTK eigenfunctions (ResNet18)",
        section="Sec. 3.1", experiment="eigenfunctions", scales=_EIGEN, models=MODELS,
        paper_models=("resnet18",),
        claim=("The network takes more iterations to reach training loss 0.01 on "
               "sign(phi_j), and ends further from theta0 in l2 and cosine distance, as j "
               "grows."),
        page="eigen_metrics", notes=(_EIGEN_NOTE,)),
    "fig4": FigureSpec(
        name="fig4", title="Linear predictors along the NADs", section="Sec. 3.2",
        experiment="nads", scales=_SMALL, models=MODELS, paper_models=("lenet", "resnet18"),
        claim=("Networks learn the linear predictors sign(v_j^T x) along the first NADs "
               "better than along later ones, in the order of their kernel alignment "
               "alpha(g_{v_j}) = s_j^2, and beat their linearizations on them."),
        page="nad_accuracy",
        notes=("GeLU activations (App. C.2). The NAD index grid is ours (configs/nads.py): "
               "the paper plots all d = 3,072 without listing its indices.",)),
    "fig5": FigureSpec(
        name="fig5", title="The non-linear advantage against the training-set size",
        section="Sec. 4.1", experiment="cifar2_sample_size", scales=_SAMPLE_SIZE,
        models=MODELS, paper_models=MODELS,
        claim=("The network's lead over its linearization on CIFAR2 appears mostly with "
               "large training sets, while on small ones both stay close to theta0."),
        page="sample_size",
        notes=("The grid of n is ours, about evenly spaced in log n (configs/"
               "cifar2_sample_size.py); accuracy is read at the saturation epoch, our rule "
               "for the paper's 'when the test accuracy has saturated'.",)),
    "fig6": FigureSpec(
        name="fig6", title="Energy concentration of the CIFAR2 labels during training",
        section="Sec. 4.2", experiment="kernel_rotation", scales=_SMALL, models=MODELS,
        paper_models=("lenet",),
        claim=("Training concentrates the energy of the labels on the top K = 50 "
               "eigenvectors of Theta_t: ||Phi_t y||^2 / ||y||^2 grows during training."),
        page="energy",
        notes=("The measured epochs are those of configs/kernel_rotation.py; the paper "
               "plots the curve without listing them.",)),
    "fig7": FigureSpec(
        name="fig7", title="Single-axis rotation: alignment after training on sign(phi_500)",
        section="Sec. 4.2", experiment="kernel_rotation",
        scales=_rotation((3,), (100,), (500,)), models=MODELS, paper_models=("resnet18",),
        claim=("After training on sign(phi_500), alpha(phi_500) grows far more than "
               "alpha(phi_j) of any other of the first 1,000 eigenfunctions of Theta_0."),
        page="alignment", notes=(_ROTATION_NOTE,)),
    "fig8": FigureSpec(
        name="fig8", title="Training with the pretrained kernel", section="Sec. 4.3",
        experiment="late_linearization", scales=_SMALL, models=MODELS,
        paper_models=("resnet18",),
        claim=("The network fits sign(phi_400) much faster than its linearization at "
               "theta0; the unbiased linearization around the trained theta* fits fast too "
               "but generalizes worse than the one at theta0."),
        page="late_training", notes=(_LATE_NOTE,)),
    "fig9": FigureSpec(
        name="fig9", title="Linearizations after pretraining", section="Sec. 4.3",
        experiment="late_linearization", scales=_SMALL, models=MODELS,
        paper_models=("resnet18",),
        claim=("The test accuracy of linearizations whose kernel is taken after t epochs "
               "of pretraining on sign(phi_400) falls rapidly with t."),
        page="pretraining",
        notes=(_LATE_NOTE, "The pretraining epochs are ours (configs/late_linearization.py)."
               " Both forms are drawn: the paper's unbiased one and ours with the offset "
               "f(x; theta_t).")),
    "fig10": FigureSpec(
        name="fig10", title="The first 10 NADs", section="App. C.2", experiment="nads",
        scales=_SMALL, models=MODELS, paper_models=("lenet", "resnet18"),
        claim=("The first NADs of a randomly initialized GeLU network (Theorem 1, M at "
               "x = 0) are structured images, shown with the magnitude of their 2-D DFT."),
        page="nad_images"),
    "fig11": FigureSpec(
        name="fig11", title="Test accuracy on the NTK eigenfunctions with Adam",
        section="App. E.1", experiment="eigenfunctions", scales=_EIGEN_ADAM, models=MODELS,
        paper_models=MODELS,
        claim=("With Adam instead of SGD, accuracy still falls with j for every model and "
               "the linearizations keep a clear advantage."),
        page="eigen_accuracy",
        notes=(_EIGEN_NOTE, "Adam's learning rate 1e-3 is ours (ntk_tf/recipe.py): the "
               "paper gives none.")),
    "fig12": FigureSpec(
        name="fig12", title="Test accuracy on the NTK eigenfunctions of MNIST",
        section="App. E.1", experiment="eigenfunctions", scales=_EIGEN_MNIST,
        models=("mlp", "lenet"), paper_models=("mlp", "lenet"),
        claim=("On MNIST accuracy falls with j as on CIFAR-10, and for LeNet the network's "
               "and the linearization's curves cross around phi_500."),
        page="eigen_accuracy", notes=(_EIGEN_NOTE,)),
    "fig13": FigureSpec(
        name="fig13", title="Training metrics on the NTK eigenfunctions (MLP)",
        section="App. E.1.1", experiment="eigenfunctions", scales=_EIGEN, models=("mlp",),
        paper_models=("mlp",),
        claim=("For the MLP too, the iterations to loss 0.01 and the distance to theta0 "
               "grow with the eigenfunction index."),
        page="eigen_metrics", notes=(_EIGEN_NOTE,)),
    "fig14": FigureSpec(
        name="fig14", title="Training metrics on the NTK eigenfunctions (LeNet)",
        section="App. E.1.1", experiment="eigenfunctions", scales=_EIGEN, models=("lenet",),
        paper_models=("lenet",),
        claim=("For LeNet too, the iterations to loss 0.01 and the distance to theta0 grow "
               "with the eigenfunction index."),
        page="eigen_metrics", notes=(_EIGEN_NOTE,)),
    "fig15": FigureSpec(
        name="fig15", title="Single-axis rotation of the MLP (phi_20, phi_100, phi_800)",
        section="App. E.3", experiment="kernel_rotation",
        scales=_rotation((2, 5, 7), (20, 50, 150), (20, 100, 800)), models=("mlp",),
        paper_models=("mlp",),
        claim=("Trained on phi_20, phi_100 or phi_800, the MLP's alignment spikes at the "
               "trained-on eigenfunction."),
        page="alignment", notes=(_ROTATION_NOTE,)),
    "fig16": FigureSpec(
        name="fig16", title="Single-axis rotation of LeNet (phi_20, phi_100, phi_800)",
        section="App. E.3", experiment="kernel_rotation",
        scales=_rotation((2, 5, 7), (20, 50, 150), (20, 100, 800)), models=("lenet",),
        paper_models=("lenet",),
        claim=("Trained on phi_20, phi_100 or phi_800, LeNet's alignment spikes at the "
               "trained-on eigenfunction."),
        page="alignment", notes=(_ROTATION_NOTE,)),
    "table1": FigureSpec(
        name="table1", title="Energy concentration at init and at the end (Table 1)",
        section="App. E.2", experiment="kernel_rotation", scales=_SMALL, models=MODELS,
        paper_models=MODELS,
        claim=("Training raises the energy concentration of the CIFAR2 labels on the top "
               "50 eigenvectors of Theta_t, from 26.0% / 25.8% / 22.7% at init to "
               "63.6% / 83.0% / 96.7% at the end (MLP / LeNet / ResNet18)."),
        page="table1", paper_numbers=PAPER_TABLE1,
        notes=("Labels: the paper defines E with y in {-1, +1} (Sec. 4.1); the authors' "
               "code trains on {0, 1}. Both encodings are reported.",)),
}
NAMES = tuple(FIGURES)


def parse_figures(value: str) -> Tuple[str, ...]:
  """Figure names from "fig2", "fig2,table1" or "all", in FIGURES order.

  Raises:
    ValueError: naming an unknown figure.
  """
  if value.strip() == "all":
    return NAMES
  names = [v.strip() for v in value.split(",") if v.strip()]
  bad = [n for n in names if n not in FIGURES]
  if not names or bad:
    raise ValueError(f"--figure must be 'all' or a comma list of {list(NAMES)}. "
                     f"Received: --figure={value!r}")
  return tuple(n for n in NAMES if n in names)


def parse_models(value: Optional[str]) -> Optional[Tuple[str, ...]]:
  """Model names from "mlp,lenet" (None or "": the default of each figure).

  Raises:
    ValueError: naming an unknown model.
  """
  if not value:
    return None
  names = [v.strip() for v in value.split(",") if v.strip()]
  bad = [n for n in names if n not in MODELS]
  if not names or bad:
    raise ValueError(f"--models must be a comma list of {list(MODELS)}. "
                     f"Received: --models={value!r}")
  return tuple(m for m in MODELS if m in names)


def check_scale(value: str) -> str:
  if value not in SCALES:
    raise ValueError(f"--scale must be one of {list(SCALES)}. Received: --scale={value!r}")
  return value
