"""The one sweep loop of ``synthetic/``: every experiment (deep S4, its official-convention preset, Mamba)
plugs into :func:`run_sweep` and owns only what its runs are and how to train them.

An experiment (:class:`Experiment`) hands the runner
- its run groups (:class:`Group`: seed, method, budget, the base learning-rate grid), in execution order;
- ``key(seed, method, budget, lr)``: the run key that identifies a run's result (resume, duplicates);
- ``train(runs)``: train a list of runs of one seed together and return one record per run;
- ``max_runs_per_call`` / ``pad_calls``: how many runs one ``train`` call may take, and whether a short
  call is filled up to that size by repeating its last run (one compiled graph per size; the padding
  runs are not recorded);
- optionally ``pack_key(run)``: runs of consecutive groups with the same (not None) pack key are trained
  together, up to ``max_runs_per_call`` per call (packing runs of different methods and budgets into one
  step); None keeps a group's runs to themselves.

The runner owns the rest, the same way for every experiment: resume by key (runs whose key is in the
results file or one of its shard files are skipped), execution order, the time budget, learning-rate
grid growth (:class:`synthetic.results.LrPolicy`: rounds of :func:`synthetic.results.lr_extension_plan`
after the base grid until every best lr is interior or at a bound), progress bars, atomic appends
(:class:`synthetic.results.ResultsFile`), the fields every record shares (``key``, ``kind``,
``experiment``, ``preset``, ``lr_source``; schema in :mod:`synthetic.results`), a closing ``kind: "sweep"``
record with the wall time, ``shard=(i, n)`` (:func:`shard_groups`: the base-grid groups with a run missing from
the results file, dealt ``j % n == i``, into the shard's own file; once the base grid is complete in the results
file, i.e. merged, a shard takes its share (:func:`deal_round`) of the next lr-extension round, planned from the results
file alone so every shard plans the same round, and stops: merging and relaunching the shards runs the next round,
as one process would),
:func:`merge_shards` and torchrun launches (both in :mod:`synthetic.parallel`); ``--dry-run``'s plan is
:mod:`synthetic.dry_run`. The groups, runs and the planning of an lr-extension round are
:mod:`synthetic.sweep_plan` (re-exported here).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from synthetic.parallel import (Dist, distributed, done_keys, is_main_process, merge_shards,  # noqa: F401 (re-exported)
                                parse_shard, shard_files, shard_path)
from synthetic.progress import progress
from synthetic.provenance import utc_now_us
from synthetic.results import LockHeld, ResultsFile, ResultsFileError, environment, exit_error, utc_now
from synthetic.sweep_plan import (Experiment, Group, Run, call_costs, current_runs, deal_round,  # noqa: F401
                                  extension_todo, fill_ahead, pair_key, trains_alone)  # (re-exported)

__all__ = ["Group", "Run", "Experiment", "SweepStats", "run_sweep", "shard_groups", "current_runs", "extension_todo",
           "trains_alone", "deal_round", "call_costs", "fill_ahead",  # these from synthetic.sweep_plan
           # re-exported from synthetic.parallel
           "Dist", "distributed", "is_main_process", "merge_shards", "shard_path", "shard_files", "parse_shard"]


@dataclass
class SweepStats:
    groups: int = 0
    groups_run: int = 0
    groups_skipped: int = 0
    calls: int = 0
    runs: int = 0
    extension_rounds: int = 0
    extension_runs: int = 0
    stopped: bool = False
    wall_s: float = 0.0
    results: Optional[Path] = None
    per_method: Dict[str, int] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ the loop
def identity(exp: Experiment) -> Dict[str, Any]:
    """The record fields every record of ``exp``'s results file has: ``experiment`` and ``preset``, plus the
    experiment's own ``identity`` (e.g. the Theorem 1 study's ``activation``) where it defines one."""
    return {"experiment": exp.name, "preset": exp.preset, **dict(getattr(exp, "identity", None) or {})}


def check_identity(exp: Experiment, records: Sequence[Dict[str, Any]]) -> None:
    """Raise :class:`ResultsFileError` naming the file and line if a record belongs to another experiment, preset
    or variant than ``exp`` (a file of another experiment is never resumed, extended or summarised as ``exp``'s)."""
    want = identity(exp)
    lines = getattr(records, "lines", None) or [None] * len(records)
    for r, line in zip(records, lines):
        fields = ("experiment", "preset") if r.get("kind") == "sweep" else tuple(want)
        bad = {k: r.get(k) for k in fields if r.get(k) != want[k]}
        if bad:
            where = f"{getattr(records, 'path', None) or exp.results_path}" + (f", line {line}" if line else "")
            has = ", ".join(f"{k} {v!r}" for k, v in bad.items())
            asked = ", ".join(f"{k} {want[k]!r}" for k in bad)
            raise ResultsFileError(f"{where}: a record of {has}, not {asked}: the file belongs to another "
                                   "experiment, preset or variant; pass another --out")


def _calls(runs: Sequence[Run], size: Optional[int], pad: bool) -> List[Tuple[List[Run], int]]:
    """Split the runs of one group into train calls of at most ``size`` runs; with ``pad`` each call is
    filled to exactly ``size`` by repeating its last run. Returns (runs to train, number to record)."""
    if not size:
        return [(list(runs), len(runs))] if runs else []
    out = []
    for i in range(0, len(runs), size):
        chunk = list(runs[i:i + size])
        out.append((chunk + [chunk[-1]] * (size - len(chunk)) if pad else chunk, len(chunk)))
    return out


class _Sweep:
    """One invocation of :func:`run_sweep`: its state (what is done, the output file, the runs waiting to share a
    step, the statistics) and its steps (train, pack, hand out work, merge)."""

    def __init__(self, exp: Experiment, time_budget: float, shard: Optional[Tuple[int, int]], log, ctx: Optional[Dist]):
        self.exp, self.time_budget, self.shard, self.log, self.ctx = exp, time_budget, shard, log, ctx
        self.t0 = time.monotonic()
        self.longest_call_s = 0.0  # the longest train() so far (out_of_time: would the next one fit?)
        self.main = ResultsFile(exp.results_path)
        if ctx is not None:
            self.out = ResultsFile(shard_path(exp.results_path, ctx.rank, ctx.world))
            self.tag = f"rank {ctx.rank}/{ctx.world}: "
        else:
            self.out = ResultsFile(shard_path(exp.results_path, *shard)) if shard else self.main
            self.tag = ""
        # one writer per file, from before what is done is read until the last record is written: a second
        # process on the same --out is refused (or waits, SYNTHETIC_LOCK=wait) instead of retraining these runs
        self.locks = []
        try:
            for rf in [self.out] + ([self.main] if ctx is not None and ctx.rank == 0 else []):
                self.locks.append(rf.lock().acquire())
            recs = self.main.read()
            check_identity(exp, recs)
            for f in shard_files(exp.results_path):
                check_identity(exp, ResultsFile(f).read())
            self.done = done_keys(exp.results_path, recs)
            self.main_records = recs  # what a shard's base-grid share is dealt from (shard_groups)
        except BaseException:
            self.release()
            raise
        if ctx is not None:
            ctx.barrier()  # every rank has read what is done before any writes
        self.pack_key = getattr(exp, "pack_key", None)
        self.pending: List[Run] = []  # runs waiting to share a step (one pack key)
        self.st = SweepStats(results=self.main.path if ctx is not None else self.out.path)

    def release(self) -> None:
        for lk in reversed(self.locks):
            lk.release()
        self.locks = []

    def out_of_time(self) -> bool:
        """Whether the next training would end past the time budget: the time spent plus the longest :meth:`train`
        so far (the first always runs). An lr-extension group (a few runs, a fresh compile) can take longer than a
        base-grid run's recorded mean, so this, not a margin, keeps a sweep inside a device call's budget."""
        return (bool(self.time_budget) and self.st.calls > 0
                and time.monotonic() - self.t0 + self.longest_call_s > self.time_budget)

    def train(self, runs: List[Run]) -> None:
        """Train ``runs`` in calls of the experiment's size; stamp the shared fields; append atomically."""
        exp, st = self.exp, self.st
        t = time.monotonic()
        for chunk, n_keep in _calls(runs, exp.max_runs_per_call, exp.pad_calls):
            recs = exp.train(chunk)
            if len(recs) != len(chunk):
                raise RuntimeError(f"{exp.name}: train returned {len(recs)} records for {len(chunk)} runs")
            stamped = []
            for run, rec in zip(chunk[:n_keep], recs[:n_keep]):
                k = exp.key(run.seed, run.method, run.budget, run.lr)
                stamped.append({"key": k, "kind": "run", "experiment": exp.name, "preset": exp.preset,
                                **rec, "lr_source": run.source})
                self.done.add(k)
                st.per_method[run.method] = st.per_method.get(run.method, 0) + 1
            self.out.extend(stamped)
            st.calls += 1
            st.runs += n_keep
        self.longest_call_s = max(self.longest_call_s, time.monotonic() - t)

    def flush(self) -> None:
        if self.pending:
            runs = list(self.pending)
            self.pending.clear()
            self.train(runs)

    def submit(self, runs: List[Run]) -> None:
        """Train ``runs`` (one group), or hold them to share a step with the next groups of the same pack key."""
        pk = self.pack_key(runs[0]) if self.pack_key else None
        if pk is None:
            self.flush()
            self.train(runs)
            return
        if self.pending and self.pack_key(self.pending[0]) != pk:
            self.flush()
        self.pending.extend(runs)
        size = self.exp.max_runs_per_call or len(self.pending)
        while len(self.pending) >= size:
            chunk = self.pending[:size]
            del self.pending[:size]
            self.train(chunk)

    def items(self, seq: Sequence, counter: str):
        """The items this process takes: all of them, or under torchrun the indices the shared counter gives it."""
        if self.ctx is None:
            yield from progress(seq, total=len(seq), desc=f"{self.exp.name} {self.exp.preset} {counter}")
            return
        while True:
            j = self.ctx.next_index(f"{self.exp.results_path}:{counter}")
            if j >= len(seq):
                return
            yield seq[j]

    def end_of_round(self, name: str) -> None:
        """Train what waits, agree on stopping (torchrun: any rank out of time stops all), merge the ranks' files."""
        if not self.st.stopped:
            self.flush()
        self.pending.clear()
        if self.ctx is not None:
            self.st.stopped = self.ctx.any(f"{self.exp.results_path}:stopped-{name}", self.st.stopped)
        self.merge()

    def merge(self) -> None:
        """Under torchrun: after a barrier, rank 0 folds the ranks' files into the results file."""
        if self.ctx is not None:
            self.ctx.barrier()
            if self.ctx.rank == 0:
                merge_shards(self.exp.results_path, log=lambda s: self.log(self.tag + s), lock_shards=False)
            self.ctx.barrier()

    def base_grid(self, groups: Sequence[Group]) -> None:
        st = self.st
        for g in self.items(groups, "base"):
            keys = [self.exp.key(g.seed, g.method, g.budget, lr) for lr in g.lrs]
            if all(k in self.done for k in keys):
                st.groups_skipped += 1
                continue
            if self.out_of_time():
                st.stopped = True
                break
            # the whole group (its records already in the file are not written twice): a group's runs are
            # trained as they were when it first ran, whatever was cut short before
            self.submit([Run(g.seed, g.method, g.budget, lr) for lr in g.lrs])
            st.groups_run += 1
        self.end_of_round("base")
        self.log(f"{self.tag}base grid: {len(groups)} groups, {st.groups_run} run, {st.groups_skipped} already done, "
                 f"wall {time.monotonic() - self.t0:.1f}s")

    def round_plan(self, records: Sequence[Dict[str, Any]], all_groups: Sequence[Group]) -> List[Tuple]:
        """The next lr-extension round from ``records``: one plan for the one-process rounds and for every shard's share
        of a round, so both run the same runs. Runs that share steps come first, seed-major (runs of one seed share
        steps); then the runs that train alone, by (method, budget) with their seeds back to back, because one
        (method, budget) is one compiled graph: deep S4's seeds 1 and 2 then reuse seed 0's compile (3.7 s a call
        instead of ~35 s on an H100, 2026-12-07; 0.06 s instead of 48 s on a CPU), where seed-major compiled each."""
        exp = self.exp
        todo = extension_todo(exp, records, all_groups)
        first: Dict[str, int] = {}
        for seed, m, budget, _ in todo:
            first.setdefault(pair_key(m, budget), len(first))

        def order(t):
            seed, m, budget, _ = t
            s = exp.seeds.index(seed) if seed in exp.seeds else 0
            if trains_alone(exp, seed, m, budget):
                return 1, first[pair_key(m, budget)], s
            return 0, s, 0

        todo.sort(key=order)
        return fill_ahead(exp, todo, records)

    def extension_rounds(self, all_groups: Sequence[Group]) -> None:
        """Rounds of lr-grid growth (planned by one process: rank 0 under torchrun) until no group needs a run."""
        exp, st, ctx = self.exp, self.st, self.ctx
        planned: set = set()
        while not st.stopped:
            todo = self.round_plan(self.main.load(), all_groups) if ctx is None or ctx.rank == 0 else None
            if ctx is not None:
                todo = ctx.broadcast(todo)
            if not todo:
                return
            keys = {exp.key(s, m, b, lr) for s, m, b, lrs in todo for lr in lrs}
            if keys & planned:  # their records should be in the file by now: stop rather than loop
                raise RuntimeError(f"lr extension: runs planned twice; their records are not in {self.main.path}")
            planned |= keys
            st.extension_rounds += 1
            n0 = st.runs
            for seed, method, budget, lrs in self.items(todo, f"extension {st.extension_rounds}"):
                if self.out_of_time():
                    st.stopped = True
                    break
                self.submit([Run(seed, method, budget, lr, "extension") for lr in lrs])
            self.end_of_round(f"extension-{st.extension_rounds}")
            st.extension_runs += st.runs - n0

    def extension_share(self, all_groups: Sequence[Group], shard: Tuple[int, int]) -> None:
        """A shard's part of the next lr-extension round, once the base grid is complete in the results file (the
        shards merged): its share (:func:`deal_round`) of the round planned from the results file (the same plan in
        every shard); runs already in a shard file are skipped. One round: the next needs every shard's runs merged."""
        exp, st = self.exp, self.st
        main_recs = self.main.load()
        in_main = {r.get("key") for r in main_recs}
        if not all(exp.key(g.seed, g.method, g.budget, lr) in in_main for g in all_groups for lr in g.lrs):
            return  # the base grid is not merged yet: which lrs a round adds depends on every shard's runs
        shares = deal_round(exp, self.round_plan(main_recs, all_groups), shard[1], current_runs(exp, main_recs))
        mine = shares[shard[0]]
        if not mine:
            return
        st.extension_rounds = 1
        n0 = st.runs
        for seed, method, budget, lrs in progress(mine, total=len(mine), desc=f"{exp.name} {exp.preset} extension"):
            runs = [Run(seed, method, budget, lr, "extension") for lr in lrs
                    if exp.key(seed, method, budget, lr) not in self.done]
            if not runs:
                continue
            if self.out_of_time():
                st.stopped = True
                break
            self.submit(runs)
        self.end_of_round("extension-share")
        st.extension_runs += st.runs - n0

    def record(self) -> None:
        """A ``kind: "sweep"`` record with this invocation's wall time and counts (none if nothing ran)."""
        st, ctx, shard = self.st, self.ctx, self.shard
        if not st.runs:
            return
        env = environment()
        # microseconds and the shard / rank in the key: processes of one sweep (and relaunched shards) end within
        # one second, and a merge keeps one record per key
        where = (f"@shard{shard[0]}of{shard[1]}" if shard else "") + (f"@rank{ctx.rank}" if ctx else "")
        self.out.append({"key": f"sweep@{utc_now_us()}{where}", "kind": "sweep",
                         "experiment": self.exp.name, "preset": self.exp.preset,
                         "wall_s": st.wall_s, "groups": st.groups, "groups_run": st.groups_run,
                         "groups_skipped": st.groups_skipped, "runs": st.runs, "calls": st.calls,
                         "extension_rounds": st.extension_rounds, "extension_runs": st.extension_runs,
                         "stopped": st.stopped, "shard": f"{shard[0]}/{shard[1]}" if shard else None,
                         "rank": ctx.rank if ctx else None, "world_size": ctx.world if ctx else 1,
                         "device": env["device"], "torch": env["torch"], "commit": env["commit"], "date": utc_now()})


def run_sweep(exp: Experiment, *, time_budget: float = 0.0, shard: Optional[Tuple[int, int]] = None,
              log: Callable[[str], None] = print, dist: Any = "auto") -> SweepStats:
    """Train every run of ``exp`` not yet in its results file, then grow the lr grids (see the module
    docstring). Returns what was done; the records are in ``exp.results_path`` (or the shard's file).

    Under ``torchrun`` (``dist``: :func:`distributed`'s process group; "auto" detects it) the ranks take the next
    run group from a counter on the group's store, each appends to its own file (``<results>.shard<r>of<n>.json``),
    and after a barrier rank 0 merges them into the results file; lr-extension rounds are planned by rank 0 from
    the merged records and handed out the same way. The records do not depend on the number of ranks.
    """
    ctx: Optional[Dist] = distributed() if dist == "auto" else dist
    if ctx is not None and shard is not None:
        raise ValueError("--shard: not with torchrun (the ranks share the work already)")
    try:
        sw = _Sweep(exp, time_budget, shard, log, ctx)
    except (LockHeld, ResultsFileError) as e:  # a results file in use, broken, or another experiment's
        exit_error(str(e))
    try:
        return _run(sw, exp, time_budget, shard, log, ctx)
    except ResultsFileError as e:
        exit_error(str(e))
    finally:
        sw.release()


def shard_groups(exp: Experiment, all_groups: Sequence[Group], shard: Optional[Tuple[int, int]],
                 records: Sequence[Dict[str, Any]]) -> List[Group]:
    """The base-grid groups a process takes: all of them without a shard; with ``shard=(i, n)`` the groups that
    have a run missing from the results file's ``records``, dealt round-robin (the ``j``-th of them goes to shard
    ``j % n``). Dealing what is left, not the whole grid, gives every shard of a phase a share however earlier
    phases left the grid (dealt over the whole grid, the last 14 Mamba-II runs fell 0-2 per shard: two phases
    instead of one). Only the results file is read, never a shard file: the shard files change while the shards
    run, the results file only at ``--merge``, so every shard launched between two merges deals the same way
    (runs already in a shard file are skipped by the sweep, as before)."""
    if shard is None:
        return list(all_groups)
    in_main = {r.get("key") for r in records}
    left = [g for g in all_groups if not all(exp.key(g.seed, g.method, g.budget, lr) in in_main for lr in g.lrs)]
    return [g for j, g in enumerate(left) if j % shard[1] == shard[0]]


def _run(sw: "_Sweep", exp: Experiment, time_budget: float, shard, log, ctx) -> SweepStats:
    all_groups = exp.groups()
    groups = shard_groups(exp, all_groups, shard, sw.main_records)
    sw.st.groups = len(groups)
    where = f" (shard {shard[0]}/{shard[1]} of the groups with runs left, of {len(all_groups)})" if shard else ""
    log(f"{sw.tag}{exp.describe()}; {len(groups)} run groups{where} -> {sw.out.path}")
    sw.base_grid(groups)
    if shard is None:
        sw.extension_rounds(all_groups)
    elif not sw.st.stopped:  # a shard: its part of the next round, once the merged base grid is complete
        sw.extension_share(all_groups, shard)
    st = sw.st
    st.wall_s = time.monotonic() - sw.t0
    if st.stopped:
        log(f"{sw.tag}time budget {time_budget:.0f}s: the next call (the longest so far took {sw.longest_call_s:.0f}s) "
            f"would end past it; stopping (rerun the same command to resume)")
    if shard is not None:
        log("shard done; fold the shard files in with --merge, then run the shards again (or one process without "
            "--shard) for the next lr-extension round where a best lr is at an edge")
    log(f"{sw.tag}sweep: {st.runs} runs in {st.calls} calls ({st.extension_rounds} lr-extension rounds, "
        f"{st.extension_runs} extension runs), wall {st.wall_s:.1f}s")
    sw.record()
    if st.runs:
        log(f"{sw.tag}wrote {sw.out.path} ({st.runs} runs appended)")
    sw.merge()
    return st
