"""The paper's training recipe: the one place its hyperparameters live (App. A).

    SGD, momentum 0.9, learning rate 0.05 decaying linearly to 0 over all
    steps, batch 128, binary cross-entropy on one logit (labels y = +-1, target (1 + y) / 2),
    100 epochs (200 on CIFAR2). The same recipe trains a network and its
    linearization.

The paper's (App. A, Sec. 3.1): SGD, momentum 0.9, "a decaying learning rate
starting at 0.05", batch 128, binary cross-entropy on one logit (App. B,
footnote 8), 100 epochs, 200 on CIFAR2. Ours: the shape of the decay (linear to
0; the paper does not say which decay) and the +-1 label convention.

`PAPER_SGD` is that recipe, `PAPER_CIFAR2` its 200-epoch variant and
`PAPER_ADAM` the Adam variant of App. E.1 (Fig. 11). Every value can be
overridden: `PAPER_SGD.replace(epochs=5)`.

Adam learning rate. The paper (App. E.1) says only that Adam replaced SGD and
gives no learning rate. `PAPER_ADAM` uses 1e-3 (the default of Kingma & Ba,
the usual choice when none is stated), decaying linearly to 0 like the SGD
recipe, with Adam's default betas. Caveat: the authors' public code keeps one
`max_lr` setting (0.05) for both optimizers, so their Adam runs may have used
0.05; pass `PAPER_ADAM.replace(learning_rate=0.05)` to try that.
"""

import dataclasses
from typing import Any, Dict

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("linear_decay", "constant")


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Hyperparameters of one training run (shared by a network and its linearization).

  Attributes:
    optimizer: "sgd" (heavy-ball momentum) or "adam".
    learning_rate: initial learning rate eta_0.
    momentum: SGD momentum (ignored by Adam).
    schedule: "linear_decay": eta_k = eta_0 (1 - k / T) over all T steps of
      the run, reaching 0 at the end; "constant": eta_k = eta_0.
    batch_size: minibatch size B. An epoch is floor(N / B) steps over a fresh
      permutation, the incomplete last batch is dropped (one batch of all N
      samples when N < B).
    epochs: number of passes over the training set.
    eval_batch_size: batch size of the evaluation passes (no effect on results).
    loss_threshold: the training loss whose first crossing is reported as
      `steps_to_threshold` (0.01 in Fig. 3).
  """
  optimizer: str = "sgd"
  learning_rate: float = 0.05
  momentum: float = 0.9
  schedule: str = "linear_decay"
  batch_size: int = 128
  epochs: int = 100
  eval_batch_size: int = 1000
  loss_threshold: float = 0.01

  def __post_init__(self):
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"optimizer must be one of {OPTIMIZERS}. Received: optimizer={self.optimizer!r}")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"schedule must be one of {SCHEDULES}. Received: schedule={self.schedule!r}")
    for name in ("learning_rate", "loss_threshold"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number. Received: {name}={value!r}")
    if isinstance(self.momentum, bool) or not isinstance(self.momentum, (int, float)) or not (
        0 <= self.momentum < 1):
      raise ValueError(f"momentum must be in [0, 1). Received: momentum={self.momentum!r}")
    for name in ("batch_size", "epochs", "eval_batch_size"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int. Received: {name}={value!r}")

  def replace(self, **overrides: Any) -> "Recipe":
    """Returns a copy with `overrides` applied (validated; unknown names raise)."""
    known = {f.name for f in dataclasses.fields(self)}
    unknown = sorted(set(overrides) - known)
    if unknown:
      raise ValueError(f"Unknown recipe fields {unknown}; expected some of {sorted(known)}. "
                       f"Received: {overrides!r}")
    return dataclasses.replace(self, **overrides)

  def steps_per_epoch(self, num_train: int) -> int:
    """floor(N / B), or 1 when N < B (the incomplete batch is dropped)."""
    if num_train <= 0:
      raise ValueError(f"num_train must be positive. Received: num_train={num_train}")
    return max(1, num_train // self.batch_size)

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)


# App. A: the recipe of every experiment unless stated otherwise.
PAPER_SGD = Recipe()
# App. A: "in the experiments involving CIFAR2, we train all models for 200 epochs".
PAPER_CIFAR2 = PAPER_SGD.replace(epochs=200)
# App. E.1 (Fig. 11): Adam in place of SGD; learning rate not given by the paper (see above).
PAPER_ADAM = PAPER_SGD.replace(optimizer="adam", learning_rate=1e-3)
