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
start-up (``Job.startup_s``: kernel compiles for mamba-ssm jobs) plus the longest recorded run of what is left, + 30 s;
otherwise it is skipped and a later job with shorter runs may run.
A job whose packages (``mamba_ssm``, ``causal_conv1d``) do not import is skipped with a message, never run on a
fallback backend.

Calls on a warm machine: each call runs on a fresh copy of the caller's tree, which may not hold what the previous
call wrote yet. So every call keeps the results files it changed under ``out/gpu_queue_state/`` (ignored, so it
stays on the machine while it is held), and the next call first folds into its results files the records it
finds there and they lack (by run key; ``--no-restore`` skips this). Nothing is run twice, and the last call's
archive holds everything. The snapshot, the archive and that kept state are :mod:`synthetic.gpu_archive`.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from synthetic.checks import check_out_dir
from synthetic.gpu_archive import LandError, land, pack, restore_state, save_state, snapshot
from synthetic.parallel import shard_main
from synthetic.provenance import git_commit

ROOT = Path(__file__).resolve().parent.parent
ARMS_TRAINED = "SDT (Alg. 1),SDT + LoRA (Alg. 1),Oracle masks,SDT (Alg. 1) long,Oracle masks long"


@dataclass(frozen=True)
class Job:
    """One experiment command of the queue; ``args`` give exactly the configuration of its results file."""

    name: str
    module: str  # python -m <module>
    args: Tuple[str, ...]
    shards: int = 1  # processes for the base grid (the lr-extension rounds run in one)
    needs: Tuple[str, ...] = ()  # modules that must import on the device
    what: str = ""
    proxy: str = ""  # a results file of the same preset whose recorded run times estimate this job's before it has any

    @property
    def startup_s(self) -> float:
        """A process's start before its first run ends (imports, data; kernel compiles for a mamba-ssm job)."""
        return MAMBA_COLD_START_S if "mamba_ssm" in self.needs else STARTUP_S

    def command(self, *extra: str) -> List[str]:
        return [sys.executable, "-m", self.module, *self.args, *extra]


# A mamba-ssm process's start on a machine whose Triton cache is cold: the shards compile (and autotune) the SSD /
# selective-scan kernels side by side. Measured: 14 Mamba-II shards started with 253 s left (runs of <= 158 s
# recorded) were all killed at the deadline before one run ended (notes/gpu_logs/gpu_queue_2026-12-07_0226); on a
# fresh machine a 16-shard phase of 13 runs took 297 s (2026-12-07 00:5x), on the same machine once those kernels
# were cached ~140 s. A warm cache only makes this conservative: a phase that might have fit is skipped, and a
# later job uses the time.
MAMBA_COLD_START_S = 180.0
STARTUP_S = 20.0  # any other job's start (imports, data)


def _mamba_paper(model_seed: int) -> Job:
    return Job(f"mamba-model-seed{model_seed}", "synthetic.mamba_regression",
               ("--preset", "paper", "--backend", "mamba_ssm", "--model-seed", str(model_seed), "--seeds", "0,1",
                "--out", f"figures/mamba_model_seed{model_seed}"), shards=12, needs=("mamba_ssm", "causal_conv1d"),
               what=f"Mamba-I paper preset, six core methods, frozen/target pair {model_seed}, data seeds 0, 1",
               proxy="figures/mamba_regression_paper.jsonl")  # frozen/target pair 0: same preset and methods


def _theorem1(activation: str, precision: str, arms: str, suffix: str = "", proxy: str = "") -> Job:
    return Job(f"theorem1-{activation}-{precision}{suffix}", "synthetic.s4_theorem1",
               ("--preset", "paper", "--activation", activation, "--precision", precision, "--no-compile",
                "--seeds", "0,1,2", "--arms", arms), shards=4,
               what=f"Theorem 1 study at paper size, {activation}, {precision}"
                    f"{', arm ' + arms if suffix else ''}: 3 seeds, lr grids grown", proxy=proxy)


# The queue's order: Mamba-II, hybrid, Mamba-I over frozen/target pairs, the S4 official edge, the
# --methods all edges, the Theorem 1 study. s4-paper-all and the Theorem 1 jobs run 4 shards since 2026-12-07:
# their runs are small for an H100 (s4-paper-all's lone extension runs spend most of their ~53 s compiling), and a
# sharded tiny Theorem 1 sweep on the CPU planned the same runs as the unsharded one (best MSEs within 4.4e-6; the
# two exact-start groups whose lrs tie at the start MSE extended one lr fewer); the GPU gain is to be read from the
# queue's logs (wall per phase), not assumed.
JOBS: Tuple[Job, ...] = (
    Job("mamba2-paper", "synthetic.mamba2_regression",
        ("--preset", "paper", "--backend", "mamba_ssm", "--seeds", "0,1,2"), shards=16, needs=("mamba_ssm",),
        what="Mamba-II paper preset on mamba-ssm's Triton SSD, 3 seeds"),
    Job("hybrid-paper", "synthetic.hybrid_regression",
        ("--preset", "paper", "--backend", "mamba_ssm", "--seeds", "0,1,2"), shards=16,
        needs=("mamba_ssm", "causal_conv1d"), what="Jamba-style hybrid paper preset (fused Mamba path), 3 seeds"),
    _mamba_paper(1),
    _mamba_paper(2),
    Job("s4-official", "synthetic.s4_regression", ("--preset", "official", "--precision", "tf32"),
        what="deep S4, official conventions: lr-extension rounds until every best lr is interior or at a bound"),
    Job("s4-paper-all", "synthetic.s4_regression",
        ("--preset", "paper", "--batch", "1000", "--seeds", "0,1,2", "--methods", "all"), shards=4,
        what="deep S4 paper preset, every method: the open grid edges"),
    Job("mamba-paper-all", "synthetic.mamba_regression",
        ("--preset", "paper", "--backend", "mamba_ssm", "--seeds", "0,1,2", "--methods", "all"), shards=8,
        needs=("mamba_ssm", "causal_conv1d"), what="Mamba paper preset, every method: DoRA (Proj)'s seeds, edges"),
    _theorem1("identity", "tf32", ARMS_TRAINED),
    _theorem1("relu", "tf32", ARMS_TRAINED),
    _theorem1("identity", "fp32", "Oracle start"),
    _theorem1("relu", "fp32", "Oracle start"),
    # the linear variant's exact start under TF32 (what TF32 makes of the exact point: seeds 0, 1 ran on an H200 on
    # 2026-12-02; the third seed, then its low lr edges extended)
    _theorem1("identity", "tf32", "Oracle start", "-start"),
    # the ReLU variant's exact start under TF32: the last arm of `s4_theorem1 --preset paper --activation relu`'s
    # default grid (precision tf32) without a run, so the README's GPU cell said "partial 252/288" (added 2026-12-07)
    _theorem1("relu", "tf32", "Oracle start", "-start",
              proxy="figures/theorem1_training_paper_relu.jsonl"),  # its fp32 exact starts time these
)
JOB_NAMES = tuple(j.name for j in JOBS)

MIN_MARGIN = 20.0  # seconds kept back from a phase at the least (Plan.margin)
# The budget is the call's end: the archive is written by then. A phase's processes are killed FINISH_S before the
# end, which leaves time for its merge (killed PACK_S before the end: the shard files are packed and can be merged
# at home), the next dry run and the packing. 2026-12-07 17:04: a call given --budget 575 under a 600 s limit ran
# its last phase to the old deadline (budget + 30 s), merged and planned after it, and was killed by the limit before
# it packed: 47 Mamba-I and >= 18 Theorem 1 runs (~550 s of device time) came back as logs only.
FINISH_S = 40.0
PACK_S = 10.0
_TOTAL = re.compile(r"(\d+) base-grid runs to do, (\?|\d+) lr-extension runs next; estimated (?:~(\d+) s|unknown)")
_LONGEST = re.compile(r"longest recorded run of what is left: ~(\d+) s")
_ROW = re.compile(r"^\| [^|]+ \| \d+ / \d+ \| (\d+) / (\d+) \|")


@dataclass
class Plan:
    """A job's state from its ``--dry-run``: base-grid runs done / in all, extension runs next, estimated seconds."""

    done: int
    total: int
    todo: int
    extension: Optional[int]  # None: decided after the base grid
    est_s: Optional[float]
    error: str = ""
    longest_s: Optional[float] = None  # the longest recorded run of a method with runs left
    todo_by_method: Dict[str, int] = field(default_factory=dict)  # base-grid runs to do per method
    est_from: str = ""  # where est_s comes from when not the job's own records (Job.proxy)

    @property
    def finished(self) -> bool:
        return not self.error and self.todo == 0 and self.extension == 0

    @property
    def mean_run_s(self) -> Optional[float]:
        """The recorded mean wall time per run of what is to do (under the load it ran with); None without records."""
        runs = self.todo + (self.extension or 0)
        return self.est_s / runs if self.est_s and runs else None

    def margin(self, cap: float) -> float:
        """Seconds to keep back for the run in progress: twice the job's recorded mean wall time per run, at least
        ``MIN_MARGIN``, at most ``cap`` (``--margin``); ``cap`` where the plan has no estimate. A job of short runs
        (deep S4: ~3 s) then still starts with 80 s left, where one fixed margin of 150 s skipped it."""
        return cap if self.mean_run_s is None else min(cap, max(MIN_MARGIN, 2 * self.mean_run_s))

    def run_s(self, cap: float) -> float:
        """The run a phase must see end: the longest recorded run of what is left, else the mean; ``cap``
        (``--margin``) for a job with no record yet."""
        return self.longest_s or self.mean_run_s or cap

    def needs_s(self, cap: float, startup: float = 0.0) -> float:
        """The time left a phase needs to be started (:meth:`Queue.work_left`, to the kill deadline): its margin, or a
        process's start-up plus one run where that is longer (a phase starts a run in every shard, and what still runs
        at the deadline is killed), + 30 s: the shards' ``--time-budget`` is then at least 30 s."""
        return max(self.margin(cap), startup + self.run_s(cap)) + 30

    def why(self, cap: float, startup: float = 0.0) -> str:
        return (f"the {self.needs_s(cap, startup):.0f}s it needs (margin {self.margin(cap):.0f}s, or start-up "
                f"{startup:.0f}s + run {self.run_s(cap):.0f}s; + 30s)")


def parse_plan(text: str) -> Plan:
    """Read an experiment's ``--dry-run`` output (its table rows and its closing total line)."""
    done = total = 0
    todo_by_method: Dict[str, int] = {}
    for line in text.splitlines():
        m = _ROW.match(line)
        if m:
            done, total = done + int(m[1]), total + int(m[2])
            todo_by_method[line.split("|")[1].strip()] = int(m[2]) - int(m[1])
    m = None
    for m in _TOTAL.finditer(text):
        pass
    if m is None:
        tail = text.strip().splitlines()[-1:] or ["no output"]
        return Plan(done, total, 0, 0, None, error=f"no plan in the dry-run output: {tail[0][:200]}")
    ext = None if m[2] == "?" else int(m[2])
    longest = _LONGEST.search(text)
    return Plan(done, total, int(m[1]), ext, float(m[3]) if m[3] else None,
                longest_s=float(longest[1]) if longest else None, todo_by_method=todo_by_method)


def proxy_estimate(p: Plan, path: Path) -> Plan:
    """``p`` with its estimate and longest run taken from another results file's run records (:attr:`Job.proxy`: the
    same preset and methods, e.g. another frozen/target pair) where the job has no records of its own: the mean
    recorded cost per run of each method x its base-grid runs to do. Unchanged if ``p`` has an estimate, the file is
    missing, or a method with runs to do has no record there."""
    if p.error or p.est_s is not None or not p.todo_by_method or not path.is_file():
        return p
    from synthetic.dry_run import costs_by_method
    from synthetic.results import ResultsFile

    costs, _ = costs_by_method(ResultsFile(path).runs())
    left = {m: n for m, n in p.todo_by_method.items() if n}
    if not left or any(m not in costs for m in left):
        return p
    est = sum(n * sum(costs[m]) / len(costs[m]) for m, n in left.items())
    return replace(p, est_s=est, longest_s=max(max(costs[m]) for m in left),
                   est_from=path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path))


def plan(job: Job, env: Optional[Dict[str, str]] = None, timeout: float = 300) -> Plan:
    p = subprocess.run(job.command("--dry-run"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    out = p.stdout + p.stderr
    if p.returncode != 0:
        return Plan(0, 0, 0, 0, None, error=f"dry run exit {p.returncode}: {out.strip().splitlines()[-1:]}")
    pl = parse_plan(out)
    return proxy_estimate(pl, ROOT / job.proxy) if job.proxy else pl


def show_queue(jobs: Sequence[Job], env: Optional[Dict[str, str]] = None,
               margin: float = 150.0) -> List[Tuple[Job, Plan]]:
    rows = [(j, plan(j, env)) for j in jobs]
    print("| job | what | base-grid runs done / all | to do | lr-extension next | est. device time | "
          "a call needs |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for j, p in rows:
        if p.error:
            print(f"| {j.name} | {j.what} | - | - | - | {p.error} | - |")
            continue
        ext = "after the grid" if p.extension is None else str(p.extension)
        est = "unknown" if p.est_s is None else f"~{p.est_s / max(1, j.shards):.0f} s"  # rounds are sharded too
        est += f" (from {p.est_from})" if p.est_from else ""
        needs = "-" if p.finished else f"{p.needs_s(margin, j.startup_s) + FINISH_S:.0f} s"
        print(f"| {j.name} | {j.what} | {p.done} / {p.total} | {p.todo} | {ext} | {est} | {needs} |")
    left = [j.name for j, p in rows if not p.finished]
    print(f"{len(left)} of {len(rows)} jobs with work left" + (f": {', '.join(left)}" if left else ": nothing to do"))
    print("(est.: the job's recorded wall time per run x runs to do, divided by its shards; runs of a method "
          "with no record are not counted. A call needs: the time left at which the job is still started, its "
          f"margin or a process's start-up + its longest recorded run left, + 30 s, + {FINISH_S:.0f} s to merge and "
          "pack before the call's end (the queue ends within --budget: give the device call's limit ~15 s more); "
          "a call's --budget also pays "
          "for its own start before the first job: ~30 s of torch and wheel checks and installs, then ~5-20 s for "
          "each job's dry run)")
    for line in next_calls(rows):
        print(line)
    return rows


def _by_estimate(jp: Tuple[Job, "Plan"]) -> Tuple[float, int]:
    """Shortest estimated device time first (no estimate: last), then queue order."""
    j, p = jp
    return (math.inf if p.est_s is None else p.est_s / max(1, j.shards), JOBS.index(j) if j in JOBS else 0)


def _jobs_line(jobs: Sequence[Tuple[Job, "Plan"]]) -> str:
    est = sum(p.est_s / max(1, j.shards) for j, p in jobs if p.est_s is not None)
    later = " + the lr extensions decided after their grids" if any(p.extension is None for _, p in jobs) else ""
    return f"--jobs {','.join(j.name for j, _ in sorted(jobs, key=_by_estimate))} (~{est:.0f} s of runs{later})"


def next_calls(rows: Sequence[Tuple[Job, "Plan"]]) -> List[str]:
    """The device calls that would run what is left, as lines to print: a call carries one wheel with the tracked
    files (both do not fit its 64 MiB), so the jobs that need causal-conv1d go in a second call right after the
    first, on the machine the first left warm with mamba-ssm installed (docs/gpu.md). Within a call the jobs with
    the shortest estimate come first, so that one long job does not take the time of several short ones."""
    left = [(j, p) for j, p in rows if not p.error and not p.finished]
    if not left:
        return []
    first = [jp for jp in left if "causal_conv1d" not in jp[0].needs]
    second = [jp for jp in left if "causal_conv1d" in jp[0].needs]
    out = ["Next calls (GIT_COMMIT=<sha> python -m synthetic.gpu_queue --budget 580 --wheels <folder> --jobs ...; "
           "what one call does not finish, the next resumes):"]
    if second or any("mamba_ssm" in j.needs for j, _ in first):
        wheel = "the mamba-ssm wheel (.whl)" + ("; the second call needs it installed" if second else "")
    else:
        wheel = "no wheel"
    if first:
        out.append(f"  1. carry {wheel}: {_jobs_line(first)}")
    elif second:
        out.append(f"  1. carry {wheel}, --budget 60 and no --jobs: it installs mamba-ssm (the jobs left need "
                   "causal-conv1d as well and are skipped)")
    if second:
        out.append("  2. carry the causal-conv1d wheel (.whl2), within the 30 s the first call's machine stays warm: "
                   + _jobs_line(second))
    return out


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


def select(names: str) -> List[Job]:
    """The jobs named in ``names`` (comma-separated), in the order given (a call's own priorities: e.g. short jobs
    before one that would take the rest of the budget), each once; every job, in queue order, where ``names`` is
    empty. ValueError naming --jobs for an unknown name, or a list that names no job (',')."""
    if not names:
        return list(JOBS)
    want = [n.strip() for n in names.split(",") if n.strip()]
    bad = [n for n in want if n not in JOB_NAMES]
    if bad or not want:
        raise ValueError(f"--jobs: {'unknown job(s) ' + ', '.join(bad) if bad else f'{names!r} names no job'}; "
                         f"the jobs are {', '.join(JOB_NAMES)}")
    by_name = {j.name: j for j in JOBS}
    return [by_name[n] for n in dict.fromkeys(want)]


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
