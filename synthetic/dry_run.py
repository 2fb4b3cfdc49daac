"""``--dry-run``: what :func:`synthetic.runner.run_sweep` would do now, without training. Per method the base-grid
groups and runs done / to do, the next lr-extension round (once the base grid is complete) and an estimated time from
the wall times recorded in the results file (:func:`run_costs`: what each recorded run cost its train call, for the
base grid; :func:`synthetic.sweep_plan.call_costs`: a whole call per lr-extension item).
:func:`synthetic.gpu_queue` reads the same plan for every GPU job.
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter, OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

from synthetic.results import ResultsFileError, ResultsFile, exit_error
from synthetic.runner import check_identity, done_keys, shard_groups
from synthetic.sweep_plan import Experiment, call_costs, current_runs, extension_todo, is_seconds

__all__ = ["plan", "format_plan", "print_plan", "run_costs"]


def run_costs(runs: Sequence[Dict[str, Any]]) -> List[Tuple[str, float, bool]]:
    """(method, seconds, alone) per run record: what the run cost its train call, and whether the call recorded it
    alone. Where records carry the call's wall time (``group_wall_s``, deep S4), the call's time over the records that
    share it, i.e. the runs the call recorded: a call padded to R runs for one compiled graph (an lr-extension run
    alone, the last runs of a group) cost its whole time, though records written before 2026-12-07 divided it by R in
    ``wall_s``. Otherwise ``wall_s`` (alone: False, unknown)."""
    share = Counter(r["group_wall_s"] for r in runs if is_seconds(r.get("group_wall_s")))
    out = []
    for r in runs:
        g = r.get("group_wall_s")
        if is_seconds(g):
            out.append((r["method"], float(g) / share[g], share[g] == 1))
        elif is_seconds(r.get("wall_s")):
            out.append((r["method"], float(r["wall_s"]), False))
    return out


def costs_by_method(runs: Sequence[Dict[str, Any]]) -> Dict[str, List[float]]:
    """:func:`run_costs` per method: every run's cost."""
    walls: Dict[str, List[float]] = {}
    for method, w, _ in run_costs(runs):
        walls.setdefault(method, []).append(w)
    return walls


def plan(exp: Experiment, shard: Optional[Tuple[int, int]] = None) -> Dict[str, Any]:
    """What :func:`run_sweep` would do now, without training: per method the groups and runs done / to do
    in the base grid, the next lr-extension round (once the base grid is complete), and an estimated time
    from the wall times recorded in the results file (None where no run of that method is there)."""
    main = ResultsFile(exp.results_path)
    try:
        records = main.read()
        check_identity(exp, records)
        done = done_keys(exp.results_path, records)
    except ResultsFileError as e:
        exit_error(str(e))
    all_groups = exp.groups()
    groups = shard_groups(exp, all_groups, shard, records)
    per: "OrderedDict[str, Dict[str, Any]]" = OrderedDict()
    for g in groups:
        row = per.setdefault(g.method, {"groups": 0, "groups_done": 0, "runs": 0, "runs_done": 0})
        keys = [exp.key(g.seed, g.method, g.budget, lr) for lr in g.lrs]
        n_done = sum(k in done for k in keys)
        row["groups"] += 1
        row["groups_done"] += n_done == len(keys)
        row["runs"] += len(keys)
        row["runs_done"] += n_done
    base_todo = sum(r["runs"] - r["runs_done"] for r in per.values())
    ext = [] if (base_todo or shard is not None) else extension_todo(exp, records, all_groups)
    cur = current_runs(exp, records)
    walls = costs_by_method(cur)
    call_s = call_costs(cur)  # what one train call of a method cost: an lr-extension item is at least one call
    ext_runs: Dict[str, int] = {}
    ext_calls: Dict[str, int] = {}  # lr-extension calls: an item's lrs in calls of the experiment's size
    size = getattr(exp, "max_runs_per_call", None) or 0
    for seed, m, budget, lrs in ext:
        ext_runs[m] = ext_runs.get(m, 0) + len(lrs)
        ext_calls[m] = ext_calls.get(m, 0) + (-(-len(lrs) // size) if size else 1)
    est_total: Optional[float] = 0.0
    longest: Optional[float] = None  # the longest recorded run of a method with runs left (a phase lasts >= one)
    for m, row in per.items():
        row["extension_runs_next"] = ext_runs.get(m, 0)
        n_base = row["runs"] - row["runs_done"]
        n = n_base + row["extension_runs_next"]
        w = walls.get(m)
        if w and ext_calls.get(m):
            # an extension item's few runs cost a whole call each, not their share of a packed base-grid call: the
            # Theorem 1 ReLU round of 2026-12-07 (24 runs, 1-2 to a call) was estimated at ~300 s by the runs' shares
            # of packed calls (76 s a shard) and took ~890 s of shard time on an H100, 455 s in the slowest shard
            row["est_s"] = statistics.fmean(w) * n_base + call_s[m] * ext_calls[m]
            longest = max(longest or 0.0, max(w), call_s[m])
        else:
            row["est_s"] = statistics.fmean(w) * n if w else (0.0 if n == 0 else None)
            if n and w:
                longest = max(longest or 0.0, max(w))
        if row["est_s"] is None:
            est_total = None
        elif est_total is not None:
            est_total += row["est_s"]
    return {"experiment": exp.name, "preset": exp.preset, "results": str(exp.results_path),
            "shard": f"{shard[0]}/{shard[1]}" if shard else None, "methods": per, "base_runs_to_do": base_todo,
            "extension_runs_next": sum(ext_runs.values()), "est_s": est_total, "longest_s": longest,
            "extension_known": not base_todo and shard is None}


def base_grid_counts(exp: Experiment) -> Dict[str, Tuple[int, int]]:
    """Per method, (runs done, runs in all) of ``exp``'s base grid in its results file (:func:`plan`)."""
    return {m: (r["runs_done"], r["runs"]) for m, r in plan(exp)["methods"].items()}


def grid_totals(counts: Dict[str, Tuple[int, int]]) -> Tuple[int, int]:
    """(runs done, runs in all) summed over the methods of :func:`base_grid_counts`."""
    return sum(d for d, _ in counts.values()), sum(n for _, n in counts.values())


def format_plan(p: Dict[str, Any]) -> str:
    """The :func:`plan` as a table, one row per method, and a closing line."""
    lines = [f"dry run: {p['experiment']} preset {p['preset']} -> {p['results']}"
             + (f" (shard {p['shard']})" if p["shard"] else ""),
             "| method | groups done / all | runs done / all | next lr-extension runs | est. time |",
             "| --- | --- | --- | --- | --- |"]
    for m, r in p["methods"].items():
        est = "-" if r["est_s"] is None else f"{r['est_s']:.0f} s"
        nxt = r["extension_runs_next"] if p["extension_known"] else "after the grid"
        lines.append(f"| {m} | {r['groups_done']} / {r['groups']} | {r['runs_done']} / {r['runs']} | {nxt} | {est} |")
    est = ("unknown (no recorded runs to time some methods)" if p["est_s"] is None else f"~{p['est_s']:.0f} s "
           "(from the wall times recorded in the results file: a run's share of its call in the base grid, "
           "a whole call for each lr-extension item)")
    nxt = p["extension_runs_next"] if p["extension_known"] else "?"
    lines.append(f"{p['base_runs_to_do']} base-grid runs to do, {nxt}"
                 f" lr-extension runs next; estimated {est}")
    if p.get("longest_s") is not None:
        lines.append(f"longest recorded run of what is left: ~{p['longest_s']:.0f} s")
    return "\n".join(lines)


def print_plan(exp: Experiment, shard: Optional[Tuple[int, int]] = None, stream=None) -> Dict[str, Any]:
    p = plan(exp, shard)
    print(format_plan(p), file=stream or sys.stdout)
    return p
