"""Runs a plan's parts as subprocesses, at most `jobs` at a time; then merges and renders.

Each part is `<python> -m binaries.<experiment> --config=configs/<experiment>.py:<variant>
--config.<field>=<value> ... --workdir=<part>` run from the repository root, its output
appended to <part>/log.txt, pinned to one core (slot k -> core k, where the machine has
that many). The experiments resume themselves, so a part killed and started again
continues where it stopped.

Order: longest part first; the last part to start also takes every core left free
(TensorFlow sizes its threads by the cores a process may use: two cores train LeNet
about 1.4x faster than one, and a single-part run such as late_linearization would
otherwise leave the second core idle throughout). A part whose Theta_0 another part of
the same `gram_key` is computing waits until that part trains (its `ready_glob` exists)
or ends. Where several parts of a run would wait so and its binary can compute Theta_0
alone (the experiment's `prepare` overrides), that runs first, in <run>/theta0, on every
free core that no other run's part can take; its time counts in each waiting part's
first row (`wall_seconds`).

Progress: every `progress_s` seconds one line, tasks done of all and the time left by
the measured rates. SIGINT / SIGTERM stop every part (SIGTERM, then SIGKILL after
`STOP_WAIT_S`) and `run` returns 130 / 143 after one line saying how to resume.
"""

import ctypes
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from ntk_tf.experiments import signals
from ntk_tf.experiments import workdir as workdir_lib
from ntk_tf.reproduce import plan as plan_lib
from ntk_tf.reproduce import runs as runs_lib
from ntk_tf.reproduce import tables

STOP_WAIT_S = 10.0
PREPARE_DIR = "theta0"  # <run>/theta0: the workdir of a run's shared Theta_0 step
_PR_SET_PDEATHSIG = 1


def repository_root() -> pathlib.Path:
  """The folder holding binaries/ and configs/ (found from this package's location)."""
  return pathlib.Path(__file__).absolute().parent.parent.parent


def _child_setup(cores: Optional[Set[int]]) -> Callable[[], None]:
  """In the child before exec: its own process group, die with the parent (Linux), pin to
  `cores` where given."""

  def setup():
    os.setpgrp()
    try:
      ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
      pass
    if cores is not None and hasattr(os, "sched_setaffinity"):
      os.sched_setaffinity(0, cores)

  return setup


def _cores() -> List[int]:
  if hasattr(os, "sched_getaffinity"):
    return sorted(os.sched_getaffinity(0))
  return list(range(os.cpu_count() or 1))


@dataclasses.dataclass
class _Job:
  run: runs_lib.Run
  part: runs_lib.Part
  process: Optional[subprocess.Popen] = None
  slots: Tuple[int, ...] = ()
  log: Optional[object] = None
  prepare: bool = False  # the run's Theta_0 step (`_prepare_job`), not a part

  @property
  def name(self) -> str:
    return f"{self.run.name}/" + (PREPARE_DIR if self.prepare else f"part{self.part.index}")


def _prepare_job(job: _Job, queue: Sequence[_Job]) -> Optional[_Job]:
  """The Theta_0 step of `job`'s run: its first part's selection plus the experiment's
  `prepare` overrides, in <run>/theta0. None where the binary has no such mode or fewer
  than two of the run's parts are queued (one part computes Theta_0 itself)."""
  waiting = [j for j in queue if j.run is job.run]
  if not job.run.spec.prepare or len(waiting) < 2:
    return None
  part = runs_lib.Part(index=job.part.index, dir=job.run.dir / PREPARE_DIR, tasks=(),
                       overrides=job.part.overrides + job.run.spec.prepare, estimate_s=0.0)
  return _Job(job.run, part, prepare=True)


def _startable_elsewhere(queue: Sequence[_Job], key: str, ready: Set[str],
                         busy_keys: Set[str]) -> int:
  """Queued parts of other Theta_0s (or none) that could start now."""
  return sum(1 for j in queue if j.run.gram_key != key and (
      not j.run.gram_key or j.run.gram_key in ready or j.run.gram_key not in busy_keys))


def _record_start(part_dir: pathlib.Path, when: Optional[float] = None) -> None:
  path = part_dir / tables.RUNNER_FILE
  record = tables._json(path)  # pylint: disable=protected-access
  record.setdefault("starts", []).append(time.time() if when is None else when)
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(json.dumps(record, indent=1) + "\n")
  os.replace(tmp, path)


def _start(job: _Job, slots: Sequence[int], pin: bool, download: bool, start_over: bool,
           record: bool = True) -> None:
  """Starts `job` on `slots` (slot k -> core k); `record`: note its start in reproduce.json."""
  job.part.dir.mkdir(parents=True, exist_ok=True)
  if record:
    _record_start(job.part.dir)
  args = [sys.executable, "-m"] + plan_lib.command(job.run, job.part, download, start_over)
  job.log = open(job.part.dir / "log.txt", "a")
  job.log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(args[1:])}\n")
  job.log.flush()
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  cores = _cores()
  job.slots = tuple(slots)
  job.process = subprocess.Popen(
      args, cwd=repository_root(), stdout=job.log, stderr=subprocess.STDOUT, env=env,
      preexec_fn=_child_setup({cores[s] for s in slots} if pin else None))


def failure_line(code: int, log_path: pathlib.Path) -> str:
  """What reproduce says of a part that exited with `code`: where its log is, and, when the
  part refused to replace work made with other settings, how to start it over."""
  line = f"failed (exit {code}); see {log_path}"
  try:
    with open(log_path, "rb") as log_file:
      log_file.seek(max(0, os.path.getsize(log_path) - 8192))
      tail = log_file.read().decode("utf-8", "replace")
  except OSError:
    return line
  if workdir_lib.START_OVER_HINT in tail:
    line += (": its folder holds work made with other settings; rerun reproduce with "
             "--start_over to move that work to earlier.<n>/ in the part's folder")
  return line


def _ready(job: _Job) -> bool:
  """Whether a running part has Theta_0 and its eigenvectors (it trains, or wrote a row)."""
  glob = job.run.spec.ready_glob
  return bool(glob and (any(job.part.dir.glob(glob)) or any(job.part.dir.glob("results/*.json"))))


def _stop(jobs: Sequence[_Job]) -> None:
  running = [j for j in jobs if j.process is not None and j.process.poll() is None]
  for job in running:
    try:
      os.killpg(job.process.pid, signal.SIGTERM)
    except ProcessLookupError:
      pass
  deadline = time.time() + STOP_WAIT_S
  for job in running:
    try:
      job.process.wait(max(0.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      try:
        os.killpg(job.process.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
      job.process.wait()


def progress_line(plan: runs_lib.Plan, running: Sequence[_Job]) -> str:
  """Tasks done of the plan's (workdir and committed rows) and the estimated time left."""
  done = total = 0
  left = 0.0
  for run in plan.runs:
    rows = set(runs_lib.workdir_rows(run))
    for task in run.tasks:
      total += 1
      if task.name in run.done or all(k in rows for k in task.keys):
        done += 1
      else:
        left += plan.rates.task_seconds(run, task)[0]
  names = ", ".join(j.name for j in running) or "none"
  slots = max(1, min(plan.jobs, len(running) or 1))
  return (f"reproduce: {done} of {total} tasks done; about "
          f"{plan_lib.format_seconds(left / slots)} left; running: {names}")


@dataclasses.dataclass
class _Schedule:
  """The runner's state: parts queued, running and finished, and which Theta_0s are ready."""
  queue: List[_Job]
  jobs: int
  pin: bool
  download: bool
  start_over: bool
  log: Callable[[str], None]
  running: List[_Job] = dataclasses.field(default_factory=list)
  finished: List[Tuple[_Job, int]] = dataclasses.field(default_factory=list)
  ready: Set[str] = dataclasses.field(default_factory=set)
  prepared: Set[str] = dataclasses.field(default_factory=set)  # keys with a Theta_0 step
  started_early: Set[pathlib.Path] = dataclasses.field(default_factory=set)  # its parts

  def reap(self) -> None:
    """Notes the Theta_0s that became ready and the jobs that ended."""
    for job in self.running:
      if job.run.gram_key and _ready(job):
        self.ready.add(job.run.gram_key)
    for job in list(self.running):
      code = job.process.poll()
      if code is None:
        continue
      self.running.remove(job)
      job.log.close()
      self.finished.append((job, code))
      if code == 0 and job.run.gram_key:
        self.ready.add(job.run.gram_key)
      self.log(f"reproduce: {job.name} " + (
          "finished" if code == 0 else failure_line(code, job.part.dir / "log.txt")))

  def launch(self) -> None:
    """Starts queued parts (or a run's Theta_0 step) on the free slots, longest first."""
    busy_keys = {j.run.gram_key for j in self.running if j.run.gram_key}
    taken = {s for j in self.running for s in j.slots}
    free = [s for s in range(self.jobs) if s not in taken]
    for job in list(self.queue):
      if not free:
        break
      key = job.run.gram_key
      if key and key not in self.ready and key in busy_keys:
        continue  # Its Theta_0 is being computed by another part.
      if key:
        busy_keys.add(key)
      prepare = None
      if key and key not in self.ready and key not in self.prepared:
        prepare = _prepare_job(job, self.queue)
      if prepare is None:
        self.queue.remove(job)
        # The last queued part also takes the cores no part will ever need.
        slots, free = (free, []) if not self.queue else ([free[0]], free[1:])
        self._start(job, slots, record=job.part.dir not in self.started_early)
        cores = f", on {len(slots)} cores" if len(slots) > 1 else ""
        self.log(f"reproduce: started {job.name} ({len(job.part.tasks)} tasks, about "
                 f"{plan_lib.format_seconds(job.part.estimate_s)}{cores})")
        continue
      self.prepared.add(key)
      others = _startable_elsewhere(self.queue, key, self.ready, busy_keys)
      take = len(free) - min(len(free) - 1, others)
      self._start(prepare, free[:take], record=False)
      free = free[take:]
      waiting = [j.part.dir for j in self.queue if j.run is job.run]
      now = time.time()
      for part_dir in waiting:  # Their time starts now (`tables._wall_seconds`).
        part_dir.mkdir(parents=True, exist_ok=True)
        _record_start(part_dir, now)
      self.started_early.update(waiting)
      self.log(f"reproduce: started {prepare.name} (Theta_0 and its eigenvectors for "
               f"{len(waiting)} parts, on {take} core(s))")

  def _start(self, job: _Job, slots: Sequence[int], record: bool) -> None:
    _start(job, slots, self.pin, self.download, self.start_over, record=record)
    self.running.append(job)


def run_plan(plan: runs_lib.Plan, *, download: bool = False, start_over: bool = False,
             progress_s: float = 30.0, resume_command: str = "the same command",
             log: Callable[[str], None] = print) -> int:
  """Runs the plan's parts (see the module docstring). Returns 0, 1 (a part failed) or 128+signal.

  `download` and `start_over` pass --download and --start_over to every part (`plan.command`).
  """
  queue = sorted((_Job(r, p) for r in plan.runs for p in r.parts),
                 key=lambda j: (-j.part.estimate_s, j.run.name, j.part.index))
  schedule = _Schedule(queue, plan.jobs, plan.jobs <= len(_cores()), download, start_over, log)
  stopped: Dict[str, int] = {}

  def on_signal(signum, frame):
    del frame
    stopped.setdefault("signal", signum)

  previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
  last_progress = time.time()
  try:
    while (schedule.queue or schedule.running) and not stopped:
      schedule.reap()
      schedule.launch()
      if time.time() - last_progress >= progress_s:
        log(progress_line(plan, schedule.running))
        last_progress = time.time()
      time.sleep(0.2)
  finally:
    if stopped or schedule.running:
      _stop(schedule.running)
    for job in schedule.running:
      if job.log:
        job.log.close()
    for signum, handler in previous.items():
      signal.signal(signum, handler)
  if stopped:
    signum = stopped["signal"]
    sys.stderr.write(f"reproduce: stopped by {signal.Signals(signum).name}; the finished "
                     f"tasks are kept; to resume, run {resume_command}\n")
    sys.stderr.flush()
    return signals.exit_code(signum)
  return 1 if any(code != 0 for _, code in schedule.finished) else 0
