"""The GPU campaign as one resumable queue: every experiment that still needs a GPU, in priority order.

Each job is an experiment command whose results file already holds what earlier calls ran (the sweeps resume by
run key), so the queue is the same on every call: it asks each job for its plan (``--dry-run``), runs the first
jobs with work left within ``--budget`` seconds (the base grid in ``shards`` processes on the one GPU, then
``--merge``, then the lr-extension rounds, each split over the shards and merged), and packs every file it wrote
under ``figures/`` plus its log into one archive whose paths are the repository's, so bringing a call's results home
is one command::

    python -m synthetic.gpu_queue --dry-run                 # the queue: runs done / to do, estimated device time
    GIT_COMMIT=<sha> OUT=/tmp/out python -m synthetic.gpu_queue --budget 540 --wheels .whl   # on the device
    python -m synthetic.gpu_queue --land <files_at>/gpu_queue.tgz          # here, afterwards

``--budget`` is the call's end: a phase's processes are killed :data:`FINISH_S` before it (merge, dry run and
packing follow), and what came back is kept and packed after every phase. The sweeps' ``--time-budget`` stops
starting new runs; a run in progress finishes, so every phase is given the time to its kill deadline minus a margin
for the run in progress: twice the job's recorded mean run time, between 20 s and
``--margin``. A job, or a sharded phase, is started only where the time left holds that margin, and a process's
start-up (``Job.startup_s``: Triton kernel compiles for Mamba-II) plus the longest recorded run of what is left, + 30 s;
otherwise it is skipped and a later job with shorter runs may run.
A job whose packages (``mamba_ssm``, ``causal_conv1d``) do not import is skipped with a message, never run on a
fallback backend.

Calls on a warm machine: each call runs on a fresh copy of the caller's tree, which may not hold what the previous
call wrote yet. So every call keeps the results files it changed under ``out/gpu_queue_state/`` (ignored, so it
stays on the machine while it is held), and the next call first folds into its results files the records it
finds there and they lack (by run key; ``--no-restore`` skips this). Nothing is run twice, and the last call's
archive holds everything. The snapshot, the archive and that kept state are :mod:`synthetic.gpu_archive`; the
jobs, their plans and the queue table are :mod:`synthetic.gpu_jobs`.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from synthetic.checks import check_out_dir
from synthetic.gpu_archive import LandError, land, pack, restore_state, save_state, snapshot
from synthetic.gpu_jobs import (ARMS_TRAINED, FINISH_S, JOB_NAMES, JOBS, MAMBA_COLD_START_S,  # noqa: F401
                                MAMBA_START_S, MIN_MARGIN, PACK_S, ROOT, STARTUP_S, Job, Plan, next_calls, parse_plan,
                                plan, proxy_estimate, select, show_queue)
from synthetic.parallel import shard_main
from synthetic.provenance import git_commit


def importable(module: str) -> bool:
    code = f"import {module}" + ("; import selective_scan_cuda" if module == "mamba_ssm" else "")
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def install_wheels(wheels: Optional[Path], log) -> None:
    """pip-install the carried wheels of packages that do not import yet (no index, no dependencies)."""
    for module, dist in (("mamba_ssm", "mamba_ssm"), ("causal_conv1d", "causal_conv1d")):
        if importable(module):
            log(f"{module}: importable")
            continue
        found = sorted(wheels.glob(f"{dist}-*.whl")) if wheels else []
        if not found:
            log(f"{module}: not importable and no wheel in {wheels}: jobs that need it are skipped")
            continue
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(found[-1])],
                           capture_output=True, text=True)
        log(f"{module}: installed {found[-1].name} (rc {r.returncode}), importable: {importable(module)}"
            + (f"\n{r.stderr[-800:]}" if r.returncode else ""))


class Queue:
    """Runs the jobs with work left, in order, and ends within ``budget`` seconds of ``start`` (:data:`FINISH_S`).
    ``checkpoint`` is called after every phase (the caller keeps and packs what came back so far: a call killed
    from outside still returns every phase it finished)."""

    def __init__(self, budget: float, margin: float, logs: Path, env: Dict[str, str],
                 checkpoint: Callable[[], object] = lambda: None):
        self.start, self.budget, self.margin, self.logs, self.env = time.monotonic(), budget, margin, logs, env
        self.log_path = logs / "gpu_queue.log"
        self.checkpoint = checkpoint

    def left(self) -> float:
        """Seconds to the call's end."""
        return self.budget - (time.monotonic() - self.start)

    def work_left(self) -> float:
        """Seconds a phase may use: to its kill deadline, :data:`FINISH_S` before the end."""
        return self.left() - FINISH_S

    def _deadline(self, before_end: float) -> float:
        return self.start + self.budget - before_end

    def log(self, msg: str) -> None:
        line = f"[gpu_queue +{time.monotonic() - self.start:.0f}s] {msg}"
        print(line, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def _spawn(self, job: Job, tag: str, extra: Sequence[str]) -> subprocess.Popen:
        f = open(self.logs / f"{job.name}.{tag}.log", "a")
        f.write(f"$ {' '.join(job.command(*extra))}\n")
        f.flush()
        return subprocess.Popen(job.command(*extra), cwd=ROOT, env=self.env, stdout=f, stderr=subprocess.STDOUT)

    def _wait(self, procs: Sequence[Tuple[str, subprocess.Popen]], deadline: float) -> None:
        """Wait for ``procs``; kill what still runs at ``deadline`` (monotonic seconds)."""
        for tag, p in procs:
            try:
                rc = p.wait(timeout=max(0.01, deadline - time.monotonic()))  # each shard: no 1 s floor
            except subprocess.TimeoutExpired:
                p.kill()
                rc = p.wait()
                self.log(f"  {tag}: killed at the deadline (its finished runs are in its results file)")
            if rc:
                self.log(f"  {tag}: exit {rc} (see its log)")

    def _sharded(self, job: Job, tag: str, p: Plan) -> bool:
        """One sharded phase (``job.shards`` processes on the GPU, then ``--merge``); False when too little time:
        less than :meth:`Plan.needs_s` (the margin, or a process's start-up + the longest run left, + 30 s: a phase
        whose shards would all be killed before one run ends gives nothing)."""
        if self.work_left() < p.needs_s(self.margin, job.startup_s):  # needs_s >= margin + 30: shards get >= 30 s
            self.log(f"  no time for the sharded {tag}: {self.work_left():.0f}s left for a phase (the call's end "
                     f"less {FINISH_S:.0f}s to merge and pack) < {p.why(self.margin, job.startup_s)}")
            return False
        b = self.work_left() - p.margin(self.margin)
        procs = [(f"shard {i}/{job.shards}", self._spawn(job, f"shard{i}", ("--shard", f"{i}/{job.shards}",
                                                                            "--time-budget", f"{b:.0f}")))
                 for i in range(job.shards)]
        self._wait(procs, self._deadline(FINISH_S))
        self.checkpoint()  # the shard files: mergeable at home if the merge does not finish
        self._wait([("merge", self._spawn(job, "merge", ("--merge",)))], self._deadline(PACK_S))
        self.checkpoint()
        return True

    def _replan(self, job: Job) -> Optional[Plan]:
        """The job's plan after a phase; None (logged) where too little time is left for its dry run."""
        if self.left() < PACK_S + 15:
            self.log(f"  {job.name}: {self.left():.0f}s left: no time to plan its next phase")
            return None
        try:
            return plan(job, self.env, timeout=self.left() - PACK_S)
        except subprocess.TimeoutExpired:
            self.log(f"  {job.name}: its dry run did not finish before the call's end")
            return None

    def run(self, job: Job, p: Plan) -> None:
        """The base grid (sharded where the job has shards), then the lr-extension rounds: each round split over
        the shards (they plan it from the merged file alike) and merged before the next is planned; an unsharded
        job, or base-grid runs left over, in one resumable process."""
        margin = p.margin(self.margin)
        self.log(f"job {job.name}: {p.done} / {p.total} base-grid runs done, {p.todo} to do, {self.left():.0f}s left "
                 f"(margin {margin:.0f}s)")
        if p.todo and job.shards > 1:
            self._sharded(job, "base grid", p)
        after = self._replan(job)
        rounds = 0
        while job.shards > 1 and after and not after.error and after.todo == 0 and after.extension:
            before, kept = after, results_snapshot()
            if not self._sharded(job, f"lr-extension round {rounds + 1}", after):
                break
            rounds += 1
            after = self._replan(job)
            if after is None:
                return
            self.log(f"  lr-extension round {rounds}: {before.extension} runs planned, "
                     f"{'?' if after.extension is None else after.extension} next")
            # a round that grew the grid can plan as many runs next (the same groups, one lr further): what says
            # it added nothing is its results files, unchanged (2026-12-07 21:55: a round of 6 runs planned 6 next
            # and the job was stopped with 439 s left)
            if (after.done, after.extension) == (before.done, before.extension) and results_snapshot() == kept:
                self.log("  the round added nothing (see the shard logs); stopping this job")
                break
        if after is None:
            return
        b = self.work_left() - margin
        if b >= 30 and (job.shards == 1 or after.todo):  # unsharded jobs; base-grid runs the shards left
            self._wait([("sweep", self._spawn(job, "sweep", ("--time-budget", f"{b:.0f}")))],
                       self._deadline(FINISH_S))
            self.checkpoint()
            after = self._replan(job)
            if after is None:
                return
        self.log(f"  {job.name}: {after.done} / {after.total} done, {after.todo} to do, extension next "
                 f"{'?' if after.extension is None else after.extension}{' ' + after.error if after.error else ''}")


def results_snapshot(folder: Path = ROOT / "figures") -> Dict[str, Tuple[int, int]]:
    """(mtime, size) of the results files under ``folder``, shard files left out (a merge folds them in)."""
    return {k: v for k, v in snapshot(folder).items() if k.endswith(".jsonl") and shard_main(k) is None}


def tests_of(text: str) -> List[str]:
    """The ``--tests`` items (paths relative to the repository root, or pytest node ids ``path::test``); ValueError
    naming --tests for a list that names nothing (',') or a path that does not exist, before anything runs."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if text and not items:
        raise ValueError(f"--tests: {text!r} names no test module")
    missing = [t for t in items if not (ROOT / t.split("::")[0]).exists()]
    if missing:
        raise ValueError(f"--tests: no such test module {', '.join(missing)} (paths relative to {ROOT})")
    return items


def run_tests(q: Queue, modules: Sequence[str]) -> None:
    """The GPU test modules, each with its slowest tests listed and a limit so they never eat the call."""
    for m in modules:
        t = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "pytest", m, "-q", "-p", "no:cacheprovider", "--durations=5"],
                           cwd=ROOT, env=q.env, capture_output=True, text=True, timeout=max(10, min(180, q.left())))
        (q.logs / f"test_{Path(m).stem}.log").write_text(p.stdout + p.stderr)
        q.log(f"{m}: exit {p.returncode} in {time.monotonic() - t:.0f}s: {(p.stdout.strip().splitlines() or [''])[-1]}")


def land_archives(archives: Sequence[Path], dry_run: bool = False) -> int:
    """``--land``: :func:`synthetic.gpu_archive.land` into this repository, a one-line error (exit 2) for an archive
    that cannot be landed (nothing written), then what to do next."""
    from synthetic.atomic import LockHeld
    from synthetic.results import exit_error

    print(f"{'would land' if dry_run else 'landing'} {', '.join(map(str, archives))}:")
    try:
        done = land(archives, ROOT, dry_run=dry_run)
    except (LandError, LockHeld) as e:
        exit_error(str(e))
    jsonl = [k for k, v in done.items() if k.endswith(".jsonl") and shard_main(k) is None
             and any(not w.startswith("unchanged") for w in v)]
    print(f"{len(done)} files, {len(jsonl)} results files changed" + (" (dry run: nothing written)" if dry_run else ""))
    if jsonl and not dry_run:
        print("next: bash scripts/redraw_figures.sh; python -m synthetic.report; python scripts/make_notebook.py "
              "(the notebook redraws from figures/); python -m synthetic.gpu_queue --dry-run; "
              "git add figures notes/gpu_logs docs/results paper_checks.ipynb")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m synthetic.gpu_queue", description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=540, help="seconds for the whole call (default 540)")
    ap.add_argument("--margin", type=float, default=150,
                    help="at most this many seconds kept back from each phase for the run in progress (default 150; "
                         "a job keeps back twice its recorded mean run time, at least 20 s, where that is less)")
    ap.add_argument("--jobs", default="", help=f"comma-separated subset, run in the order given (default: every "
                    f"job, in queue order: {', '.join(JOB_NAMES)})")
    ap.add_argument("--wheels", type=Path, default=None, help="folder with mamba_ssm / causal_conv1d wheels to install")
    ap.add_argument("--tests", default="", help="GPU test modules to run first, comma-separated")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out/gpu_queue")),
                    help="where the archive goes (default $OUT, else out/gpu_queue)")
    ap.add_argument("--restore", action=argparse.BooleanOptionalAction, default=True,
                    help="first fold in the records an earlier call on this (warm) machine wrote and this tree "
                         "lacks (default on)")
    ap.add_argument("--dry-run", action=argparse.BooleanOptionalAction, default=False,
                    help="print the queue (runs done / to do, estimated device time) and exit; with --land, what "
                         "landing would do, writing nothing")
    ap.add_argument("--land", type=Path, nargs="+", default=None, metavar="ARCHIVE",
                    help="here, after device calls: bring their gpu_queue.tgz archives into the repository, in call "
                         "order (results files gain records and never lose one; figures and logs replace the files "
                         "here), and exit")
    a = ap.parse_args(argv)
    if a.land is not None:
        mixed = [o for o, v in (("--budget", a.budget != ap.get_default("budget")),
                                ("--margin", a.margin != ap.get_default("margin")), ("--jobs", a.jobs),
                                ("--wheels", a.wheels), ("--tests", a.tests)) if v]
        if mixed:
            ap.error(f"--land: brings archives home and runs nothing; {', '.join(mixed)} belong to a device call")
        return land_archives(a.land, a.dry_run)
    if not 0 < a.budget < math.inf:
        ap.error(f"--budget: must be a positive finite number of seconds, got {a.budget}")
    if not 0 <= a.margin < math.inf:
        ap.error(f"--margin: must be a finite number of seconds >= 0, got {a.margin}")
    if a.wheels is not None and not a.wheels.is_dir():
        ap.error(f"--wheels: {a.wheels} is not a folder")
    try:  # every option checked before anything runs (an --out that is a file failed only at the packing)
        jobs = select(a.jobs)
        tests = tests_of(a.tests)
        check_out_dir(a.out)
    except ValueError as e:
        ap.error(str(e))
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT),
               TRITON_CACHE_AUTOTUNING="1")  # the shards share Triton's autotuning results instead of each redoing it
    if a.dry_run:
        show_queue(jobs, env, a.margin)
        return 0
    logs = ROOT / "out" / "gpu_queue_logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    before = snapshot(ROOT / "figures")

    def checkpoint(quiet: bool = True) -> None:  # what came back so far: kept for the next call, packed
        save_state(before)
        pack(a.out, before, logs, quiet=quiet)

    q = Queue(a.budget, a.margin, logs, env, checkpoint)
    q.log(f"start: budget {a.budget:.0f}s, python {sys.executable}")
    if not os.environ.get("GIT_COMMIT"):  # a device's copy of the tree may carry a stale .git
        q.log(f"GIT_COMMIT is not set: records will name {git_commit()} (this copy's .git); set GIT_COMMIT=<sha> "
              "on a device call")
    q.log(subprocess.run([sys.executable, "-c", "import torch; print('torch', torch.__version__, 'cuda', "
                          "torch.cuda.is_available() and torch.cuda.get_device_name(0))"],
                         capture_output=True, text=True).stdout.strip())
    if a.restore:  # after the snapshot: what it folds in is packed with this call's results
        try:
            restore_state(q.log)
        except Exception as e:  # an unreadable kept file must not cost the call: say so and go on without it
            q.log(f"restore: skipped ({type(e).__name__}: {e})")
    install_wheels(a.wheels, q.log)
    if tests:
        run_tests(q, tests)
    try:
        for job in jobs:
            if q.work_left() < min(q.margin, MIN_MARGIN) + 30:
                q.log(f"stop: {q.left():.0f}s left")
                break
            missing = [m for m in job.needs if not importable(m)]
            if missing:
                q.log(f"job {job.name}: skipped ({', '.join(missing)} not importable)")
                continue
            p = plan(job, env)
            if p.error:
                q.log(f"job {job.name}: {p.error}")
            elif p.finished:
                continue
            elif q.work_left() < p.needs_s(q.margin, job.startup_s):  # does not fit the time left: a shorter job may
                q.log(f"job {job.name}: skipped, {q.work_left():.0f}s left for a phase < "
                      f"{p.why(q.margin, job.startup_s)}")
            else:
                q.run(job, p)
    finally:
        checkpoint(quiet=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
