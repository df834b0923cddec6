"""Tests for the reproduction (ntk_tf/reproduce) and its binary.

The planner, in process: the task keys, splitting over jobs, a committed task counted
as done, settings_id (stable, blind to paths, changed by a setting). End to end, as
subprocesses on the synthetic data of tests/test_util (no ../shared/data): every
figure at the smoke scale, killed by SIGTERM while it runs, resumed, rerun (no new
training), rendered twice (the same bytes), its CSVs committed to a fresh folder (the
plan counts them done, the run trains nothing), a workdir adopted. And the repository's
docs/paper: rendered from its CSVs, it is what is committed.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from unittest import mock

from absl.testing import absltest

from tests import test_util
from ntk_tf.experiments import workdir as workdir_lib
from ntk_tf.reproduce import figures
from ntk_tf.reproduce import markdown
from ntk_tf.reproduce import pages
from ntk_tf.reproduce import plan as plan_lib
from ntk_tf.reproduce import program
from ntk_tf.reproduce import runner
from ntk_tf.reproduce import runs
from ntk_tf.reproduce import tables

_ROOT = runner.repository_root()
_PAPER_DOCS = _ROOT / "docs" / "paper"


def _plan(names, scale, models, workdir, out, jobs=2, **kwargs):
  return plan_lib.make_plan(names, scale, models, pathlib.Path(workdir), pathlib.Path(out),
                            jobs, **kwargs)


def _reproduce(*args, wait=True):
  """`python -m binaries.reproduce args` from the repository root (a Popen if not wait)."""
  command = [sys.executable, "-m", "binaries.reproduce", *args]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  if not wait:
    return subprocess.Popen(command, cwd=_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  return subprocess.run(command, cwd=_ROOT, env=env, capture_output=True, text=True)


def _in_process(args, lines):
  """program.reproduce with the flags in `args` ("--name=value"), its lines into `lines`."""
  values = dict(a[2:].split("=", 1) for a in args)
  return program.reproduce(
      figures=values.get("figure"), models=values.get("models"),
      scale=values.get("scale", "paper"), workdir=values.get("workdir"),
      jobs=int(values["jobs"]) if "jobs" in values else None, adopt=values.get("adopt"),
      out=values["out"], data_dir=values.get("data_dir"), log=lines.append)


def _fresh_root(name):
  """A new folder `name`<random> in the test's tmpdir (two runs of this module at once
  do not share it) and synthetic data in it: (root, data)."""
  root = pathlib.Path(tempfile.mkdtemp(prefix=f"{name}_", dir=absltest.get_default_test_tmpdir()))
  return root, test_util.write_synthetic_data(root / "data")


def _result_files(workdir):
  return {str(p.relative_to(workdir)): (p.stat().st_mtime, json.loads(p.read_text())
                                        .get("fingerprint"))
          for p in pathlib.Path(workdir).glob("*/*/*/part*/results/*.json")}


def _processes_naming(text):
  """Pids of processes whose command line holds `text` (Linux /proc)."""
  pids = []
  for proc in pathlib.Path("/proc").glob("[0-9]*"):
    try:
      if text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode():
        pids.append(int(proc.name))
    except OSError:
      continue
  return pids


class PlanTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.workdir = pathlib.Path(self.create_tempdir().full_path)
    self.out = pathlib.Path(self.create_tempdir().full_path)

  def test_eigenfunction_tasks_are_the_keys_the_experiment_writes(self):
    plan = _plan(["fig2"], "smoke", ["mlp"], self.workdir, self.out)
    (run,) = plan.runs
    self.assertEqual([t.name for t in run.tasks],
                     ["mlp_phi0001_network", "mlp_phi0001_linearized", "mlp_phi0016_network",
                      "mlp_phi0016_linearized", "mlp_cifar2_network"])
    self.assertEqual(run.dir, self.workdir / "eigenfunctions" / "smoke" / "mlp")
    paper = _plan(["fig2"], "paper", ["mlp"], self.workdir, self.out).runs[0]
    self.assertLen(paper.tasks, 10 * 2 + 1)  # PAPER_INDICES x kinds + the CIFAR2 line
    self.assertEqual(paper.tasks[-1].epochs, 200)  # App. A: CIFAR2 for 200 epochs
    self.assertEqual(paper.tasks[0].epochs, 100)

  def test_figures_sharing_a_run_merge_their_tasks(self):
    plan = _plan(["fig7", "fig15"], "paper", ["mlp"], self.workdir, self.out)
    (run,) = plan.runs
    self.assertEqual([t.name for t in run.tasks],
                     ["mlp_phi20", "mlp_phi100", "mlp_phi500", "mlp_phi800"])
    self.assertEqual(plan.figures[("fig7", "mlp")][1], ["mlp_phi500"])
    self.assertLen(run.tasks[0].rows, 2 + 1)  # epochs 0 and 100, then the summary

  def test_paper_parts_split_the_units_over_jobs(self):
    for jobs in (1, 2, 3):
      (run,) = _plan(["fig2"], "paper", ["lenet"], self.workdir, self.out, jobs).runs
      self.assertLen(run.parts, jobs)
      names = [t.name for p in run.parts for t in p.tasks]
      self.assertCountEqual(names, [t.name for t in run.tasks])
      units = [{t.unit for t in p.tasks} for p in run.parts]
      self.assertLen(set().union(*units), sum(len(u) for u in units))  # disjoint
      for part in run.parts:
        selection = dict(part.overrides)
        self.assertEqual(set(selection["indices"]),
                         {t.unit for t in part.tasks if t.unit != "baseline"})
        self.assertEqual(selection["baseline"], "baseline" in {t.unit for t in part.tasks})
        self.assertEqual(selection["gram.cache_dir"], str(self.workdir / "gram_cache"))
        self.assertEqual(part.dir, run.dir / f"part{part.index}")
      loads = [p.estimate_s for p in run.parts]
      self.assertLessEqual(max(loads) - min(loads), max(loads) / 2)

  def test_sample_size_tasks_are_estimated_per_sample_from_another_run(self):
    # Fig. 5 has no rate of its own: each task is the eigenfunction run's seconds per
    # sample-epoch (written by tables.rates) times its n and its 200 epochs.
    rows = [{"task": "mlp_phi0001_network", "model": "mlp", "kind": "network",
             "experiment": "eigenfunctions", "scale": "paper", "settings_id": "x",
             "num_train": "50000", "epochs": "100", "seconds": "1000"}]
    tables.write_csv(tables.csv_path(self.out, "fig2", "mlp"), rows)
    tables.write_rates(self.out)
    self.assertEqual(tables.read_csv(self.out / "rates.csv")[0]["seconds_per_sample_epoch"],
                     "0.0002")  # 1000 s / (100 epochs x 50,000 samples)
    plan = _plan(["fig5"], "paper", ["mlp"], self.workdir, self.out, jobs=1)
    (run,) = plan.runs
    network = [t for t in run.tasks if t.rows[0][1] == "network"]
    for task in network:
      seconds, note = plan.rates.task_seconds(run, task)
      self.assertAlmostEqual(seconds, 0.0002 * task.samples * 200)
      self.assertEqual(note, "scaled per sample from the eigenfunctions network rate")
    linearized = next(t for t in run.tasks if t.rows[0][1] == "linearized")
    self.assertEqual(plan.rates.task_seconds(run, linearized)[1], "a guess: no measured rate")
    self.assertIn("(scaled per sample from the eigenfunctions network rate)",
                  plan_lib.describe(plan))

  def test_sample_size_tasks_use_their_own_per_sample_rate_first(self):
    # Once Fig. 5 has rows of its own, their seconds per sample-epoch (2,000 s over
    # 200 epochs x 10,000 samples + 2,000 s over 200 x 40,000 = 4000 / 1e7) set the
    # estimate; their per-epoch rate (20 s, an average over n) and the eigenfunction
    # run's per-sample rate (0.0002) do not.
    eigen = [{"task": "mlp_phi0001_network", "model": "mlp", "kind": "network",
              "experiment": "eigenfunctions", "scale": "paper", "settings_id": "x",
              "num_train": "50000", "epochs": "100", "seconds": "1000"}]
    own = [{"task": f"mlp_n{n}_network", "model": "mlp", "kind": "network",
            "experiment": "cifar2_sample_size", "scale": "paper", "settings_id": "y",
            "num_train": str(n), "epochs": "200", "seconds": "2000"} for n in (10000, 40000)]
    tables.write_csv(tables.csv_path(self.out, "fig2", "mlp"), eigen)
    tables.write_csv(tables.csv_path(self.out, "fig5", "mlp"), own)
    tables.write_rates(self.out)
    plan = _plan(["fig5"], "paper", ["mlp"], self.workdir, self.out, jobs=1)
    (run,) = plan.runs
    network = [t for t in run.tasks if t.rows[0][1] == "network"]
    self.assertGreater(len({t.samples for t in network}), 1)
    for task in network:
      seconds, note = plan.rates.task_seconds(run, task)
      self.assertAlmostEqual(seconds, 4000 / 1e7 * task.samples * 200)
      self.assertIsNone(note)

  def test_smoke_runs_are_one_part(self):
    (run,) = _plan(["fig2"], "smoke", ["mlp"], self.workdir, self.out, jobs=2).runs
    self.assertLen(run.parts, 1)
    forced = _plan(["fig2"], "smoke", ["mlp"], self.workdir, self.out, jobs=2,
                   min_part_seconds=0).runs[0]
    self.assertLen(forced.parts, 2)

  def test_start_over_is_passed_to_every_part(self):
    plan = _plan(["fig2"], "paper", ["mlp"], self.workdir, self.out, jobs=2)
    for part in plan.runs[0].parts:
      self.assertNotIn("--start_over", plan_lib.command(plan.runs[0], part))
      args = plan_lib.command(plan.runs[0], part, start_over=True)
      self.assertEqual(args[-1], "--start_over")
      self.assertEqual(args[-2], f"--workdir={part.dir}")

  def test_a_refused_part_says_to_start_over(self):
    log = self.workdir / "log.txt"
    refusal = workdir_lib.conflict(self.workdir, {"epochs": 100},
                                   workdir_lib.Fingerprint("f", {"epochs": 3}), "2 tasks")
    log.write_text("training...\n" * 2000 + f"eigenfunctions: error: {refusal}\n")
    line = runner.failure_line(1, log)
    self.assertTrue(line.startswith(f"failed (exit 1); see {log}: its folder holds work made "
                                    "with other settings"), line)
    self.assertIn("rerun reproduce with --start_over", line)
    log.write_text("Traceback: something else\n")
    self.assertEqual(runner.failure_line(1, log), f"failed (exit 1); see {log}")
    self.assertEqual(runner.failure_line(2, self.workdir / "absent.txt"),
                     f"failed (exit 2); see {self.workdir / 'absent.txt'}")

  def test_late_linearization_is_one_part(self):
    (run,) = _plan(["fig8"], "paper", ["mlp"], self.workdir, self.out, jobs=2).runs
    self.assertLen(run.parts, 1)
    self.assertEqual(dict(run.parts[0].overrides)["model"], "mlp")

  def test_committed_rows_with_the_same_settings_are_done(self):
    (run,) = _plan(["fig2"], "paper", ["mlp"], self.workdir, self.out).runs
    done = ["mlp_phi0001_network", "mlp_phi0001_linearized", "mlp_cifar2_network"]
    rows = [{"task": name, "model": "mlp", "kind": "network", "settings_id": run.settings_id}
            for name in done]
    rows.append({"task": "mlp_phi0002_network", "model": "mlp", "kind": "network",
                 "settings_id": "0" * 16})  # other settings: not done
    tables.write_csv(self.out / "fig2_mlp.csv", rows)
    (run,) = _plan(["fig2"], "paper", ["mlp"], self.workdir, self.out).runs
    self.assertEqual(run.done, {name: "committed" for name in done})
    selections = [dict(p.overrides) for p in run.parts]
    self.assertNotIn(1, [j for s in selections for j in s["indices"]])
    self.assertIn(2, [j for s in selections for j in s["indices"]])
    self.assertFalse(any(s["baseline"] for s in selections))

  def test_a_baseline_left_alone_is_run_without_an_index(self):
    (run,) = _plan(["fig2"], "paper", ["mlp"], self.workdir, self.out).runs
    rows = [{"task": t.name, "model": "mlp", "kind": "network", "settings_id": run.settings_id}
            for t in run.tasks if t.name != "mlp_cifar2_network"]
    tables.write_csv(self.out / "fig2_mlp.csv", rows)
    (run,) = _plan(["fig2"], "paper", ["mlp"], self.workdir, self.out).runs
    (part,) = run.parts
    self.assertEqual([t.name for t in part.tasks], ["mlp_cifar2_network"])
    selection = dict(part.overrides)
    self.assertEqual(selection["indices"], ())  # No eigenfunction task retrained.
    self.assertTrue(selection["baseline"])
    self.assertIn("--config.indices=()", plan_lib.command(run, part))

  def test_committed_rows_without_what_the_figure_plots_are_todo(self):
    (run,) = _plan(["fig7"], "paper", ["mlp"], self.workdir, self.out).runs
    keys = run.tasks[0].keys
    rows = [{"task": k, "model": "mlp", "kind": "summary" if k.endswith("summary") else "epoch",
             "settings_id": run.settings_id} for k in keys]
    tables.write_csv(self.out / "fig7_mlp.csv", rows)
    self.assertEqual(_plan(["fig7"], "paper", ["mlp"], self.workdir, self.out).runs[0].done, {})
    for row in rows:
      row["alpha"] = "[1.0,2.0]" if row["kind"] == "epoch" else ""
    tables.write_csv(self.out / "fig7_mlp.csv", rows)
    self.assertEqual(_plan(["fig7"], "paper", ["mlp"], self.workdir, self.out).runs[0].done,
                     {"mlp_phi500": "committed"})

  def test_a_started_unit_stays_in_its_part(self):
    (run,) = _plan(["fig2"], "paper", ["lenet"], self.workdir, self.out).runs
    part1 = run.dir / "part1"
    part1.mkdir(parents=True)
    config = run.config((("indices", (500, 1000)), ("kinds", ("network", "linearized")),
                         ("baseline", False)))
    (part1 / "config.json").write_text(json.dumps(config.to_dict()))
    (run,) = _plan(["fig2"], "paper", ["lenet"], self.workdir, self.out).runs
    by_index = {p.index: {t.unit for t in p.tasks} for p in run.parts}
    self.assertIn(500, by_index[1])

  def test_settings_id_ignores_locations_and_task_selection(self):
    first = _plan(["fig2"], "paper", ["mlp"], self.workdir, self.out, data_dir="/a").runs[0]
    other = pathlib.Path(self.create_tempdir().full_path)
    second = _plan(["fig2"], "paper", ["mlp"], other, other, jobs=1, data_dir="/b").runs[0]
    self.assertEqual(first.settings_id, second.settings_id)
    self.assertRegex(first.settings_id, r"^[0-9a-f]{16}$")
    config = first.config((("indices", (3,)), ("progress", True), ("allow_download", True)))
    self.assertEqual(runs.settings_id(config), first.settings_id)
    config.epochs = 5
    self.assertNotEqual(runs.settings_id(config), first.settings_id)
    adam = _plan(["fig11"], "paper", ["mlp"], self.workdir, self.out).runs[0]
    self.assertNotEqual(adam.settings_id, first.settings_id)

  def test_paper_scale_plans_resnet18_only_when_named(self):
    plan = _plan(["fig2"], "paper", None, self.workdir, self.out)
    self.assertEqual(sorted(r.model for r in plan.runs), ["lenet", "mlp"])
    self.assertTrue(any("ResNet18" in n and "GPU" in n for n in plan.notes))
    named = _plan(["fig2"], "paper", ["resnet18"], self.workdir, self.out)
    self.assertEqual([r.model for r in named.runs], ["resnet18"])

  def test_dry_run_lists_every_task_with_an_estimate(self):
    text = plan_lib.describe(_plan(["fig5"], "paper", ["mlp"], self.workdir, self.out))
    self.assertIn("mlp_n050000_s4_linearized: todo, about", text)
    self.assertIn("a guess", text)
    self.assertIn("0 of 70 tasks done", text)

  def test_bad_names_are_one_line_errors_naming_the_value(self):
    with self.assertRaisesRegex(ValueError, "fig99"):
      figures.parse_figures("fig2,fig99")
    with self.assertRaisesRegex(ValueError, "vgg"):
      figures.parse_models("mlp,vgg")
    with self.assertRaisesRegex(ValueError, "huge"):
      figures.check_scale("huge")
    self.assertEqual(figures.parse_figures("all"), figures.NAMES)

  def test_spearman_against_a_hand_computed_value(self):
    # Ranks x = 1, 2, 3, 4; y = 2, 1, 4, 3: 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 24 / 60.
    self.assertAlmostEqual(markdown.spearman([1, 2, 3, 4], [10, 5, 30, 20]), 0.6)
    self.assertEqual(list(markdown.ranks([3.0, float("nan"), 3.0, 1.0])), [2.5, 4.0, 2.5, 1.0])


  def test_figure_time_counts_each_task_once(self):
    # Two tasks with wall time (100 s, 20 s), one adopted row with only its training's
    # 500 s, one without either, and an extra row that is no task: 100 + 20 + 500.
    rows = [{"kind": "network", "seconds": "90", "wall_seconds": "100"},
            {"kind": "linearized", "seconds": "15", "wall_seconds": "20"},
            {"kind": "network", "seconds": "500", "wall_seconds": ""},
            {"kind": "network", "seconds": "", "wall_seconds": ""},
            {"kind": next(iter(tables.EXTRA_KINDS)), "seconds": "7", "wall_seconds": "7"}]
    self.assertEqual(pages.figure_seconds(rows), (605.0, 120.0, 620.0, 2, 4))
    self.assertIn("the 2 of 4 rows that record it", pages._time_text(rows))


class ThetaZeroStepTest(absltest.TestCase):
  """Two parts sharing a Theta_0: it is computed first, alone, on both slots."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    root, data = _fresh_root("theta0_step")
    cls.plan = _plan(["fig2"], "smoke", ["mlp"], root / "runs", root / "pages", jobs=2,
                     data_dir=str(data), min_part_seconds=0)
    (cls.shared,) = cls.plan.runs
    cls.lines = []
    cls.code = runner.run_plan(cls.plan, log=cls.lines.append)

  def _logs(self):
    """The runner's lines and the end of each log (the message of a failed check)."""
    logs = [self.shared.dir / "theta0" / "log.txt"]
    logs += [p.dir / "log.txt" for p in self.shared.parts]
    return "\n".join(self.lines + [f"--- {p}:\n{p.read_text()[-3000:] if p.exists() else ''}"
                                   for p in logs])

  def test_the_step_runs_first_on_both_slots_then_the_parts(self):
    self.assertEqual(self.code, 0, self._logs())
    self.assertLen(self.shared.parts, 2)
    step = f"{self.shared.name}/theta0"
    started = [l for l in self.lines if l.startswith("reproduce: started")]
    self.assertEqual(started[0], f"reproduce: started {step} (Theta_0 and its eigenvectors "
                     "for 2 parts, on 2 core(s))")
    finished = self.lines.index(f"reproduce: {step} finished")
    self.assertTrue(all(self.lines.index(l) > finished for l in started[1:]), self.lines)
    self.assertLen(started, 3)

  def test_the_step_computes_the_spectrum_and_the_parts_read_it(self):
    step_log = (self.shared.dir / "theta0" / "log.txt").read_text()
    self.assertIn("Theta_0 and its top 16 eigenpairs of mlp are in", step_log)
    self.assertFalse((self.shared.dir / "theta0" / "results").exists()
                     and any((self.shared.dir / "theta0" / "results").iterdir()))
    for part in self.shared.parts:
      text = (part.dir / "log.txt").read_text()
      cached = re.search(r"(\d+)/(\d+) blocks cached", text)
      self.assertIsNotNone(cached, self._logs())
      self.assertEqual(cached.group(1), cached.group(2))  # nothing left to compute
      self.assertIn("mlp: reusing the eigenpairs in", text, self._logs())
      self.assertEqual({p.stem for p in (part.dir / "results").glob("*.json")},
                       {k for t in part.tasks for k in t.keys})

  def test_each_part_starts_when_the_step_starts(self):
    starts = [json.loads((p.dir / tables.RUNNER_FILE).read_text())["starts"]
              for p in self.shared.parts]
    self.assertEqual([len(s) for s in starts], [1, 1])
    self.assertEqual(starts[0], starts[1])


class ScheduleTest(absltest.TestCase):
  """Which parts the runner starts first (processes not started: `runner._start` recorded)."""

  def _first_launch(self, names, jobs):
    root = pathlib.Path(self.create_tempdir().full_path)
    plan = _plan(names, "smoke", ["mlp"], root / "runs", root / "pages", jobs=jobs,
                 min_part_seconds=0)
    started = []

    def fake_start(job, slots, *args, **kwargs):
      del args, kwargs
      job.slots = tuple(slots)
      started.append(job)

    with mock.patch.object(runner, "_start", fake_start):
      queue = [runner._Job(r, p) for r in plan.runs for p in r.parts]
      schedule = runner._Schedule(queue, jobs, True, False, False, lambda line: None)
      schedule.launch()
    return [(j.name.split("/")[0], j.prepare, j.slots) for j in started]

  def test_theta0_takes_only_the_cores_no_other_run_can_use(self):
    # Fig. 2's parts share Theta_0; Fig. 4's NAD parts need none and take the second core.
    started = self._first_launch(["fig2", "fig4"], jobs=2)
    self.assertEqual(started, [("eigenfunctions", True, (0,)), ("nads", False, (1,))])

  def test_the_last_part_takes_the_cores_left(self):
    # Fig. 8's run is one part (its linearizations need the network's checkpoints).
    self.assertEqual(self._first_launch(["fig8"], jobs=2),
                     [("late_linearization", False, (0, 1))])
    # Fig. 4's two parts: one core each.
    self.assertEqual(self._first_launch(["fig4"], jobs=2),
                     [("nads", False, (0,)), ("nads", False, (1,))])

  def test_theta0_takes_every_core_when_nothing_else_can_start(self):
    self.assertEqual(self._first_launch(["fig2"], jobs=3), [("eigenfunctions", True, (0, 1, 2))])


class EndToEndTest(absltest.TestCase):
  """--figure=all at the smoke scale, killed, resumed, rerun, rendered, committed, adopted."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    root, cls.data = _fresh_root("reproduce_e2e")
    cls.workdir, cls.out = root / "runs", root / "pages"
    cls.args = ["--figure=all", "--scale=smoke", "--models=mlp", f"--workdir={cls.workdir}",
                f"--out={cls.out}", f"--data_dir={cls.data}", "--jobs=2"]
    started = time.time()
    process = _reproduce(*cls.args, wait=False)
    while time.time() - started < 600 and not _result_files(cls.workdir):
      time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, cls.killed_stderr = process.communicate(timeout=120)
    cls.killed_code = process.returncode
    cls.left_running = _processes_naming(str(cls.workdir))
    cls.before_resume = _result_files(cls.workdir)
    cls.resumed = _reproduce(*cls.args)
    cls.lenet = _reproduce(*[a.replace("--figure=all", "--figure=fig14,fig16").replace(
        "--models=mlp", "--models=lenet") for a in cls.args])
    cls.after = _result_files(cls.workdir)
    cls.rerun_log = []
    cls.rerun_code = _in_process(cls.args, cls.rerun_log)

  def test_a_kill_exits_nonzero_with_one_line_on_how_to_resume(self):
    self.assertEqual(self.killed_code, 128 + signal.SIGTERM, self.killed_stderr)
    last = self.killed_stderr.strip().splitlines()[-1]
    self.assertRegex(last, r"stopped by SIGTERM.*to resume, run python -m binaries.reproduce "
                           r"--figure=all")
    self.assertEqual(self.left_running, [])

  def test_the_resumed_run_keeps_what_was_done_and_finishes(self):
    self.assertEqual(self.resumed.returncode, 0, self.resumed.stderr[-3000:])
    self.assertEqual(self.lenet.returncode, 0, self.lenet.stderr[-3000:])
    for name, (mtime, fingerprint) in self.before_resume.items():
      self.assertEqual(self.after[name], (mtime, fingerprint), name)

  def test_every_figure_has_its_csv_png_and_page(self):
    for name, spec in figures.FIGURES.items():
      model = "lenet" if name in ("fig14", "fig16") else "mlp"
      rows = tables.read_csv(self.out / f"{name}_{model}.csv")
      self.assertNotEmpty(rows, name)
      for column in ("model", "kind", "dataset", "num_train", "epochs", "optimizer", "seed",
                     "settings_id", "task", "fingerprint", "machine"):
        self.assertTrue(all(r.get(column) for r in rows if r["kind"] not in tables.EXTRA_KINDS),
                        (name, column))
      self.assertEqual(tables.status(rows)[0], tables.status(rows)[1], name)
      page = (self.out / f"{name}.md").read_text()
      self.assertIn(spec.claim, page)
      self.assertIn("complete", page)
      if spec.page != "table1":
        self.assertNotEmpty(list(self.out.glob(f"{name}_{model}*.png")), name)
    self.assertIn("cores", tables.read_csv(self.out / "fig2_mlp.csv")[0]["machine"])
    self.assertTrue((self.out / "README.md").is_file())
    self.assertNotEmpty(tables.read_csv(self.out / "rates.csv"))

  def test_rows_are_the_planned_tasks_and_parts_have_the_plan_settings(self):
    plan = _plan(figures.NAMES, "smoke", ["mlp"], self.workdir, self.out, data_dir=self.data)
    for (name, model), (run, names) in plan.figures.items():
      rows = tables.read_csv(self.out / f"{name}_{model}.csv")
      planned = [k for t in run.tasks if t.name in names for k in t.keys]
      self.assertEqual([r["task"] for r in rows if r["kind"] not in tables.EXTRA_KINDS],
                       planned, name)
      self.assertEqual({r["settings_id"] for r in rows}, {run.settings_id})
      for part in run.part_dirs():
        self.assertEqual(runs.config_settings_id(part / "config.json"), run.settings_id)
    self.assertEqual(plan.tasks_done()[0], plan.tasks_done()[1])

  def test_a_rerun_trains_nothing(self):
    self.assertEqual(self.rerun_code, 0, self.rerun_log)
    self.assertIn("reproduce: 36 of 36 tasks done; 0 part(s) to run on 2 job(s).", self.rerun_log)
    self.assertEqual(_result_files(self.workdir), self.after)

  def test_render_from_the_csvs_alone_gives_the_same_bytes(self):
    # The run rendered `out` in its process; this renders a copy of its CSVs here.
    folder = pathlib.Path(self.create_tempdir().full_path)
    for path in self.out.glob("*_*.csv"):
      shutil.copy(path, folder)
    pages.render(folder)
    names = sorted(p.name for p in self.out.iterdir())
    self.assertEqual(sorted(p.name for p in folder.iterdir()), names)
    for name in names:
      self.assertEqual((folder / name).read_bytes(), (self.out / name).read_bytes(), name)

  def test_committed_rows_count_on_a_fresh_machine(self):
    fresh = pathlib.Path(self.create_tempdir().full_path)
    out = fresh / "pages"
    shutil.copytree(self.out, out)
    args = [a for a in self.args if not a.startswith(("--workdir", "--out"))]
    plan = _plan(figures.NAMES, "smoke", ["mlp"], fresh / "runs", out, data_dir=self.data)
    self.assertEqual(plan.tasks_done()[0], plan.tasks_done()[1])
    self.assertTrue(all(set(r.done.values()) == {"committed"} for r in plan.runs))
    before = {p.name: p.read_bytes() for p in out.glob("*.csv")}
    lines = []
    code = _in_process(args + [f"--workdir={fresh / 'runs'}", f"--out={out}"], lines)
    self.assertEqual(code, 0, lines)
    self.assertIn("reproduce: 36 of 36 tasks done; 0 part(s) to run on 2 job(s).", lines)
    self.assertFalse((fresh / "runs" / "eigenfunctions").exists())
    self.assertEqual({p.name: p.read_bytes() for p in out.glob("*.csv")}, before)

  def test_adopt_merges_a_workdir_into_the_figures_it_matches(self):
    part = self.workdir / "eigenfunctions" / "smoke" / "mlp" / "part0"
    out = pathlib.Path(self.create_tempdir().full_path)
    lines = []
    self.assertEqual(_in_process([f"--adopt={part}", f"--out={out}"], lines), 0, lines)
    for name in ("fig2", "fig3", "fig13"):
      self.assertTrue(any(f"matched {name} at the smoke scale for mlp" in l for l in lines),
                      lines)
      adopted = tables.read_csv(out / f"{name}_mlp.csv")
      self.assertEqual([r["task"] for r in adopted],
                       [r["task"] for r in tables.read_csv(self.out / f"{name}_mlp.csv")])
    # Each row keeps the machine its run recorded, not the adopting process's.
    recorded = json.loads(next((part / "results").glob("*.json")).read_text())["machine"]
    self.assertRegex(recorded, r" cores .*oneDNN (on|off)$")
    marked = pathlib.Path(self.create_tempdir().full_path) / "marked"
    shutil.copytree(part, marked)
    for path in (marked / "results").glob("*.json"):
      row = json.loads(path.read_text())
      path.write_text(json.dumps(dict(row, machine="another machine oneDNN off")))
    fresh_out = pathlib.Path(self.create_tempdir().full_path)
    self.assertEqual(_in_process([f"--adopt={marked}", f"--out={fresh_out}"], []), 0)
    self.assertEqual({r["machine"] for r in tables.read_csv(fresh_out / "fig2_mlp.csv")},
                     {"another machine oneDNN off"})
    changed = pathlib.Path(self.create_tempdir().full_path) / "changed"
    shutil.copytree(part, changed)
    config = json.loads((changed / "config.json").read_text())
    config["epochs"] = 3  # settings no plan has
    (changed / "config.json").write_text(json.dumps(config))
    lines = []
    self.assertEqual(_in_process([f"--adopt={changed}", f"--out={out}"], lines), 1)
    self.assertIn("matches no figure's plan", lines[0])
    with self.assertRaisesRegex(ValueError, "--adopt must be an experiment workdir"):
      _in_process([f"--adopt={self.workdir / 'gram_cache'}", f"--out={out}"], [])

  def test_adopt_takes_all_rows_of_a_task_from_one_source(self):
    # Committed rows of one Fig. 15 task: epoch rows without what the figure plots (as
    # imported legacy rows were) beside a summary row that has it. Adopting a workdir
    # that holds the whole task replaces all of them, not only the epoch rows.
    part = self.workdir / "kernel_rotation" / "smoke_eigenfunction" / "mlp" / "part0"
    out = pathlib.Path(self.create_tempdir().full_path)
    committed = tables.read_csv(self.out / "fig15_mlp.csv")
    task = committed[0]["plan_task"]
    for row in committed:
      if row["plan_task"] == task:
        row["source"] = "legacy"
        if row["kind"] == "epoch":
          row["alpha"] = ""
    tables.write_csv(out / "fig15_mlp.csv", committed)
    self.assertEqual(_in_process([f"--adopt={part}", f"--out={out}"], []), 0)
    adopted = [r for r in tables.read_csv(out / "fig15_mlp.csv") if r["plan_task"] == task]
    self.assertGreater(len(adopted), 1)
    self.assertEqual({r["source"] for r in adopted}, {"adopted"})
    self.assertEqual({r["task_done"] for r in adopted}, {"1"})

  def test_bad_flag_values_are_one_line_errors(self):
    result = _reproduce("--figure=fig99", "--workdir=runs/x", "--out=" + str(self.out))
    self.assertNotEqual(result.returncode, 0)
    last = result.stderr.strip().splitlines()[-1]
    self.assertRegex(last, r"^reproduce: error: --figure must be .*Received: --figure='fig99'$")


class CommittedPagesTest(absltest.TestCase):

  def test_render_reproduces_docs_paper_byte_for_byte(self):
    folder = pathlib.Path(self.create_tempdir().full_path)
    for path in _PAPER_DOCS.glob("*_*.csv"):
      shutil.copy(path, folder)
    pages.render(folder)
    committed = sorted(p.name for p in _PAPER_DOCS.iterdir())
    self.assertEqual(sorted(p.name for p in folder.iterdir()), committed)
    for name in committed:
      self.assertEqual((folder / name).read_bytes(), (_PAPER_DOCS / name).read_bytes(), name)

  def test_committed_rows_have_the_settings_of_todays_paper_plans(self):
    workdir = pathlib.Path(self.create_tempdir().full_path)
    plan = _plan(figures.NAMES, "paper", ["mlp", "lenet"], workdir, _PAPER_DOCS)
    for (name, model), path in tables.figure_csvs(_PAPER_DOCS).items():
      run, _ = plan.figures[(name, model)]
      ids = {r["settings_id"] for r in tables.read_csv(path)}
      self.assertEqual(ids, {run.settings_id}, path.name)
      complete = {r["plan_task"] for r in tables.read_csv(path) if r.get("task_done") == "1"}
      self.assertTrue(complete <= set(run.done), path.name)


if __name__ == "__main__":
  absltest.main()
