"""What a sweep runs and how its lr-extension rounds are planned: the run groups and runs (:class:`Group`,
:class:`Run`), what an experiment hands the sweep loop (:class:`Experiment`), the run records of its configuration
(:func:`current_runs`), the next round's ``(seed, method, budget, lrs)`` items (:func:`extension_todo`), the padding
of compiled calls put to use (:func:`fill_ahead`) and a round dealt to shards by recorded call cost
(:func:`deal_round`). The loop that trains them is :mod:`synthetic.runner`, which re-exports these names.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

from synthetic.results import LrPolicy, lr_extension_plan, lrs_past, run_key

__all__ = ["Group", "Run", "Experiment", "current_runs", "extension_todo", "trains_alone", "fill_ahead", "call_costs",
           "deal_round", "budget_key", "pair_key", "is_seconds"]


@dataclass(frozen=True)
class Group:
    """The runs of one (seed, method, budget) over the base lr grid.

    lrs: the base grid, in the order the experiment wants them trained; an untrained method (Frozen)
    has one run with its placeholder lr (``None`` or ``0.0``, whatever its key used) and ``grows=False``.
    grows: whether this (method, budget)'s lr grid is extended at its edges.
    """

    seed: int
    method: str
    budget: Mapping[str, Any]
    lrs: Tuple[Any, ...]
    grows: bool = True


@dataclass(frozen=True)
class Run:
    """One run to train: a group's run at learning rate ``lr``; ``source`` is ``"grid"`` or ``"extension"``."""

    seed: int
    method: str
    budget: Mapping[str, Any]
    lr: Any
    source: str = "grid"


class Experiment(Protocol):
    """What an experiment hands :func:`synthetic.runner.run_sweep` (see that module's docstring)."""

    name: str  # the records' "experiment" field: "s4", "s4_official", "mamba"
    preset: str
    seeds: Sequence[int]
    base_lrs: Sequence[float]
    lr_policy: LrPolicy
    results_path: Path
    max_runs_per_call: Optional[int]  # None: any number of runs in one train call
    pad_calls: bool

    def groups(self) -> List[Group]: ...

    def key(self, seed: int, method: str, budget: Mapping[str, Any], lr: Any) -> str: ...

    def train(self, runs: Sequence[Run]) -> List[Dict[str, Any]]: ...

    def describe(self) -> str: ...


def budget_key(budget: Mapping[str, Any]) -> str:
    """A budget compared by content (JSON lists and tuples alike)."""
    return run_key(dict(budget))


def pair_key(method: str, budget: Mapping[str, Any]) -> str:
    """One (method, budget): one lr grid, and in a compiled experiment one graph."""
    return run_key({"m": method, "b": dict(budget)})


def is_seconds(v: Any) -> bool:
    """A recorded wall time: a finite number (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def current_runs(exp: Experiment, records: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The run records of ``exp``'s configuration and seeds: those whose key is the one ``exp`` gives them
    (a file may hold runs of other configurations, e.g. an earlier ``--batch``)."""
    seeds = set(exp.seeds)
    out = []
    for r in records:
        if r.get("kind", "run") != "run" or r.get("seed") not in seeds:
            continue
        try:
            if r.get("key") == exp.key(r["seed"], r["method"], r["budget"], r.get("lr")):
                out.append(r)
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _growing(groups: Sequence[Group]) -> List[Tuple[str, Mapping[str, Any]]]:
    """The (method, budget) pairs whose lr grid may grow, in group order, once each."""
    pairs: "OrderedDict[str, Tuple[str, Mapping[str, Any]]]" = OrderedDict()
    for g in groups:
        if g.grows:
            pairs.setdefault(pair_key(g.method, g.budget), (g.method, g.budget))
    return list(pairs.values())


def extension_todo(exp: Experiment, records: Sequence[Dict[str, Any]], groups: Sequence[Group]
                   ) -> List[Tuple[int, str, Mapping[str, Any], List[Any]]]:
    """The next lr-extension round: ``(seed, method, budget, lrs)`` for every (method, budget) whose grid
    still needs runs (missing grid lrs first, then the lrs past an edge); ``[]`` when the grid is done."""
    recs = current_runs(exp, records)
    todo = []
    for method, budget in _growing(groups):
        mine = [r for r in recs if r["method"] == method and budget_key(r["budget"]) == budget_key(budget)]
        pl = lr_extension_plan(mine, exp.base_lrs, exp.seeds, exp.lr_policy)
        for seed in exp.seeds:
            lrs = [lr for s, lr in pl if s == seed]
            if lrs:
                todo.append((seed, method, budget, lrs))
    return todo


def trains_alone(exp: Experiment, seed: int, method: str, budget: Dict) -> bool:
    """Whether a run of this group shares no step with other groups' runs (no pack key for it)."""
    pack_key = getattr(exp, "pack_key", None)
    return pack_key is None or pack_key(Run(seed, method, budget, None)) is None


def fill_ahead(exp: Experiment, todo: Sequence[Tuple], records: Sequence[Dict[str, Any]]) -> List[Tuple]:
    """``todo`` (an lr-extension round's ``(seed, method, budget, lrs)`` items) with the padding of compiled calls put
    to use: where the experiment pads a short call to ``max_runs_per_call`` runs for its one compiled graph
    (``pad_calls``), an item of a group that trains alone whose lrs all lie past the lrs every seed has run (the grid
    growing at an edge) also takes the next lrs further out, one factor of the policy apart and not past its bound
    (:func:`synthetic.grid.lrs_past`), as many as the call would have padded. They cost nothing (the padding ran the
    last run again, unrecorded) and may spare the next round: deep S4's prompt, prefix and state-based groups grew one
    lr a round, each round a call per seed (2026-12-07). Missing lrs of a seed (inside the grid) are not extended;
    lrs the seed has already run are not repeated. Unchanged for any other experiment."""
    size = getattr(exp, "max_runs_per_call", None) or 0
    if size < 2 or not getattr(exp, "pad_calls", False) or not exp.lr_policy.factor:
        return list(todo)
    seeds_at: Dict[str, Dict[Any, set]] = {}
    for r in current_runs(exp, records):
        seeds_at.setdefault(pair_key(r["method"], r["budget"]), {}).setdefault(r.get("lr"), set()).add(r.get("seed"))
    out = []
    for seed, method, budget, lrs in todo:
        free = -len(lrs) % size
        at = seeds_at.get(pair_key(method, budget), {})
        full = [lr for lr, ss in at.items() if isinstance(lr, (int, float)) and lr > 0 and ss >= set(exp.seeds)]
        extra: List[float] = []
        if free and lrs and full and trains_alone(exp, seed, method, budget):
            up = min(lrs) > max(full)
            if up or max(lrs) < min(full):
                extra = [lr for lr in lrs_past(max(lrs) if up else min(lrs), exp.lr_policy, up, free)
                         if seed not in at.get(lr, ()) and lr not in lrs]
        out.append((seed, method, budget, list(lrs) + extra))
    return out


def call_costs(records: Sequence[Dict[str, Any]]) -> Dict[str, float]:
    """Per method, the mean wall time of the train calls its recorded runs came from (``group_wall_s`` where a record
    has it, else ``wall_s``): what one more call of that method costs, whether it holds a few runs or many (an
    lr-extension call holds few, and costs far more than their share of a packed call: a 5,000-iteration Theorem 1 run
    took 126-157 s alone in a call and ~64 s as a third of one, H100, 2026-12-07)."""
    walls: Dict[str, List[float]] = {}
    for r in records:
        w = r.get("group_wall_s", r.get("wall_s"))
        if is_seconds(w) and w >= 0 and r.get("method"):
            walls.setdefault(r["method"], []).append(float(w))
    return {m: sum(v) / len(v) for m, v in walls.items()}


def deal_round(exp: Experiment, todo: Sequence[Tuple], n: int,
               records: Sequence[Dict[str, Any]] = ()) -> List[List[Tuple]]:
    """An lr-extension round (:meth:`_Sweep.round_plan`'s ``(seed, method, budget, lrs)`` items) dealt to ``n``
    shards, balanced by cost: each item costs its method's :func:`call_costs` in ``records`` (the mean of all
    methods' for a method with none, 1 without records) for each call its lrs take, and the units go, costliest
    first, each to the shard with the least cost so far (ties: the lower shard); each shard keeps the round's order.
    A unit is one item, except where the experiment compiles one graph per (method, budget) (``pad_calls``): there
    the items of a (method, budget) whose runs train alone stay together, so one process compiles its graph once and
    its other seeds reuse it. Dealt item by item (``j % n``), on an H100 on 2026-12-07 deep S4's 20 lone extension
    runs each compiled afresh (55-76 s a run, where a reused graph's call is ~4 s), and the Theorem 1 ReLU round put
    its three 5,000-iteration runs (~130 s each) in one of four shards: it ran to the deadline while the others ended
    in ~83 s."""
    cost = call_costs(records)
    default = sum(cost.values()) / len(cost) if cost else 1.0
    together = bool(getattr(exp, "pad_calls", False))
    units: "OrderedDict[Any, List[int]]" = OrderedDict()
    for j, (seed, method, budget, _) in enumerate(todo):
        lone = together and trains_alone(exp, seed, method, budget)
        units.setdefault(pair_key(method, budget) if lone else ("item", j), []).append(j)
    size = getattr(exp, "max_runs_per_call", None) or 0
    calls = lambda j: -(-len(todo[j][3]) // size) if size else 1  # noqa: E731 - an item's lrs in calls of `size`
    weighed = [(sum(cost.get(todo[j][1], default) * calls(j) for j in u), u) for u in units.values()]
    load, mine = [0.0] * n, [[] for _ in range(n)]
    for w, u in sorted(weighed, key=lambda wu: -wu[0]):  # stable: equal units keep the round's order
        i = min(range(n), key=lambda k: (load[k], k))
        load[i] += w
        mine[i].extend(u)
    return [[todo[j] for j in sorted(js)] for js in mine]
