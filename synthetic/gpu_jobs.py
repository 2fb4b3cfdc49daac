"""The GPU campaign's jobs and what is left of them: :data:`JOBS` in the queue's order, each job's plan read from its
experiment's ``--dry-run`` (:func:`plan`, :class:`Plan`: runs done / to do, the estimated time, the time a phase
needs to be started), the queue table of ``python -m synthetic.gpu_queue --dry-run`` (:func:`show_queue`) and the
device calls that would run what is left (:func:`next_calls`). Running the jobs is :mod:`synthetic.gpu_queue`.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
ARMS_TRAINED = "SDT (Alg. 1),SDT + LoRA (Alg. 1),Oracle masks,SDT (Alg. 1) long,Oracle masks long"


@dataclass(frozen=True)
class Job:
    """One experiment command of the queue; ``args`` give exactly the configuration of its results file."""

    name: str
    module: str  # python -m <module>
    args: Tuple[str, ...]
    shards: int = 1  # processes on the one GPU for the base grid and for each lr-extension round
    needs: Tuple[str, ...] = ()  # modules that must import on the device
    what: str = ""
    proxy: str = ""  # a results file of the same preset whose recorded run times estimate this job's before it has any
    triton: bool = False  # its kernels are Triton's, compiled (and autotuned) by every process on a cold cache

    @property
    def startup_s(self) -> float:
        """A process's start before its first run ends: imports and data, CUDA set-up for a mamba-ssm job, kernel
        compiles for a Triton one."""
        return MAMBA_COLD_START_S if self.triton else MAMBA_START_S if "mamba_ssm" in self.needs else STARTUP_S

    def command(self, *extra: str) -> List[str]:
        return [sys.executable, "-m", self.module, *self.args, *extra]


# A Mamba-II (Triton) process's start on a machine whose Triton cache is cold: the shards compile (and autotune) the
# SSD kernels side by side. Measured: 14 Mamba-II shards started with 253 s left (runs of <= 158 s
# recorded) were all killed at the deadline before one run ended (notes/gpu_logs/gpu_queue_2026-12-07_0226); on a
# fresh machine a 16-shard phase of 13 runs took 297 s (2026-12-07 00:5x), on the same machine once those kernels
# were cached ~140 s. A warm cache only makes this conservative: a phase that might have fit is skipped, and a
# later job uses the time.
MAMBA_COLD_START_S = 180.0
# Mamba-I and the hybrid call the prebuilt CUDA kernels of the mamba-ssm and causal-conv1d wheels: nothing compiles.
# Measured on H100s (2026-12-07): Mamba-I pair 1's second lr-extension round, 8 runs in 8 shards, took 27 s from the
# queue's start of the phase to the end of its merge (notes/gpu_logs/gpu_queue_2026-12-07_2211), and on a machine that
# had run no mamba-ssm job yet, pair 2's 12-shard base-grid phase (22 runs, longest shard 75 s of training) and its
# first extension round (22 runs, longest shard 60 s) took 206 s together, merges and re-plans included (_2303). With
# 180 s the queue skipped pair 2's second round (8 runs) with 288 s left; the next call ran it in 49 s (_2311).
MAMBA_START_S = 60.0
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
        triton=True, what="Mamba-II paper preset on mamba-ssm's Triton SSD, 3 seeds"),
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

    costs = costs_by_method(ResultsFile(path).runs())
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
    print("(est.: the job's recorded wall times, a run's share of its call x base-grid runs to do and a whole call "
          "per lr-extension item, divided by its shards; runs of a method with no record are not counted. A call "
          "needs: the time left at which the job is still started, its margin or a process's start-up + its longest "
          f"recorded run left, + 30 s, + {FINISH_S:.0f} s to merge and pack before the call's end (the queue ends "
          "within --budget: give the device call's limit ~15 s more); a call's --budget also pays for its own start "
          "before the first job: ~30 s of torch and wheel checks and installs, then ~5-20 s for each job's dry run)")
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
