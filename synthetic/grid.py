"""Best-of-grid summaries and the adaptive learning-rate grid (Galim et al., ICML 2025, Sec. 6 figures): what is
computed from the run records of a results file (:mod:`synthetic.results`). Also importable from there.

- :func:`is_diverged(x) <is_diverged>`: True for a non-finite loss (NaN/inf) or None.
- :func:`best_of_grid(records, group_keys) <best_of_grid>` -> list of rows: for each group (e.g.
  method and budget) pick the learning rate whose mean ``best_mse`` over seeds is lowest, using
  only ``status == "ok"`` runs; each row has the group's keys plus ``lr, mean, std, min, max,
  n_seeds, n_diverged`` (diverged runs of the whole group, all learning rates), ``trainable_pct``
  and the per-seed values, plus ``lr_at_edge`` / ``lr_bound_reached`` / ``lrs_tried`` (below).
- Adaptive learning-rate grid: :class:`LrPolicy(factor, lr_min, lr_max) <LrPolicy>`;
  :func:`lr_edge(group_records, policy) <lr_edge>` -> :class:`LrEdge` (is the best lr, by mean over
  seeds, the lowest or highest tried; which lr extends the grid past it; which bound stops it:
  ``lr_min``, ``lr_max``, or a divergence at the top); :func:`lr_extension_plan(group_records,
  base_lrs, seeds, policy) <lr_extension_plan>` -> the ``(seed, lr)`` runs a group still needs.
  Drivers call the plan in rounds after the base grid until no group needs a run.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from synthetic.records import canonical

__all__ = ["is_diverged", "best_of_grid", "LrPolicy", "LrEdge", "lr_edge", "lr_means", "lr_extension_plan", "lrs_past",
           "edge_label"]


def is_diverged(x: Optional[float]) -> bool:
    """True when a loss value is missing or not finite."""
    return x is None or not math.isfinite(float(x))


# ---------------------------------------------------------------------------------- aggregation
def _freeze(v: Any) -> Any:
    return json.dumps(canonical(v), sort_keys=True) if isinstance(v, (dict, list, tuple)) else v


def best_of_grid(records: Sequence[Dict[str, Any]], group_keys: Sequence[str] = ("method", "budget_label"),
                 lr_key: str = "lr", value_key: str = "best_mse",
                 lr_policy: Optional["LrPolicy"] = None, tie_key: str = "final_mse") -> List[Dict[str, Any]]:
    """Best learning rate per group by mean ``value_key`` over seeds, ok runs only.

    Returns one row per group (sorted by method then trainable %), with ``lr`` (the chosen one),
    ``mean, std, min, max`` of ``value_key`` over that lr's ok seeds, ``values`` (per seed),
    ``n_seeds``, ``n_diverged`` (diverged runs in the group, any lr), ``n_runs`` and
    ``trainable_pct`` (from the records; the mean if it varies). Groups with no ok run get
    ``mean = None``. Edge flags (:func:`lr_edge` under ``lr_policy``, default :class:`LrPolicy`):
    ``lr_at_edge`` (``"low"``/``"high"``/``"both"``/None: the chosen lr is the lowest/highest
    tried, so the optimum may lie outside the grid), ``lr_bound_reached`` (why the grid stopped
    growing there: ``"lr_min"``, ``"lr_max"``, ``"diverged"``, ``"off"``; None while it could still
    grow, e.g. a sweep cut short) and ``lrs_tried``. An lr that lacks seeds other lrs of the group have (an
    lr-extension round under way) is left out of the comparison, the mean and the edge, and listed in
    ``lrs_in_progress`` (the edge label then says "grid incomplete"): a mean over fewer seeds is another statistic.
    Lrs whose means tie exactly at the lowest (e.g. an exact start that no lr improves on: every lr's best MSE is the
    start's) are listed in ``lrs_tied``; the chosen one is the tied lr with the lowest mean ``tie_key`` over its ok
    runs (then the lowest lr), and such a group has no edge (:func:`lr_edge`). ``lrs_tied`` is ``[]`` otherwise.
    """
    policy = lr_policy if lr_policy is not None else LrPolicy()
    groups: Dict[tuple, List[Dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[tuple(_freeze(r.get(k)) for k in group_keys)].append(r)
    rows = []
    for gk, recs in groups.items():
        by_lr: Dict[Any, List[float]] = defaultdict(list)
        for r in recs:
            if r.get("status") == "ok" and not is_diverged(r.get(value_key)):
                by_lr[r.get(lr_key)].append(float(r[value_key]))
        n_div = sum(1 for r in recs if r.get("status") != "ok")
        pct = [float(r["trainable_pct"]) for r in recs if r.get("trainable_pct") is not None]
        row = {k: recs[0].get(k) for k in group_keys}
        # math.fsum: the same mean whatever the records' order (a file merged in another order redrew with
        # trainable % differing in the 16th digit, 2026-12-07)
        row.update(trainable_pct=(math.fsum(pct) / len(pct)) if pct else None, n_diverged=n_div, n_runs=len(recs))
        # an lr still missing seeds that other lrs have (an lr-extension round under way) is not compared with them:
        # its mean over fewer seeds is another statistic (seed 0 may sit below the mean); listed as in progress
        runs_at: Dict[Any, set] = defaultdict(set)
        for r in recs:
            runs_at[r.get(lr_key)].add(_freeze(r.get("seed")))
        full = max(len(v) for v in runs_at.values())
        partial = sorted((lr for lr, v in runs_at.items() if len(v) < full), key=str)
        complete = [r for r in recs if r.get(lr_key) not in partial]
        by_lr = {lr: v for lr, v in by_lr.items() if lr not in partial}
        edge = lr_edge(complete, policy, lr_key, value_key)
        lrs = {r.get(lr_key) for r in complete}
        row.update(lr_at_edge=edge.edge, lr_bound_reached=edge.bound,
                   lrs_tried=sorted(lrs) if all(_is_grid_lr(x) for x in lrs) else [], lrs_in_progress=partial)
        if by_lr:
            means = {x: statistics.fmean(v) for x, v in by_lr.items()}
            tied = tied_at_best(means)
            lr = (min(tied, key=lambda x: (_tie_mean(complete, x, lr_key, tie_key), _lr_order(x))) if tied
                  else _best_lr(means))
            vals = by_lr[lr]
            row.update(lrs_tied=sorted(tied, key=_lr_order))
            row.update(lr=lr, mean=statistics.fmean(vals), std=statistics.pstdev(vals) if len(vals) > 1 else 0.0,
                       min=min(vals), max=max(vals), values=vals, n_seeds=len(vals),
                       lr_means={str(k): statistics.fmean(v) for k, v in by_lr.items()})
        else:
            row.update(lr=None, mean=None, std=None, min=None, max=None, values=[], n_seeds=0, lr_means={}, lrs_tied=[])
        rows.append(row)
    rows.sort(key=lambda r: (str(r.get(group_keys[0])), r["trainable_pct"] if r["trainable_pct"] is not None else -1))
    return rows


# ------------------------------------------------------------------------- adaptive lr grid
@dataclass(frozen=True)
class LrPolicy:
    """How a learning-rate grid grows when its best value sits at an edge.

    factor: step beyond an edge (new lr = edge × factor above, edge / factor below); 0 turns the
    extension off (the grid is what the config lists). lr_min, lr_max: the stated bounds; a step
    that would cross one is clamped to it, and a best lr at a bound stays at the edge
    (``bound = "lr_min"`` / ``"lr_max"``).
    """

    factor: float = 4.0
    lr_min: float = 1e-6
    lr_max: float = 1.0

    @classmethod
    def from_config(cls, cfg) -> "LrPolicy":
        """The policy of an experiment config with fields ``lr_extend_factor``, ``lr_min``, ``lr_max``."""
        return cls(cfg.lr_extend_factor, cfg.lr_min, cfg.lr_max)

    def __post_init__(self):
        if not (self.factor == 0 or (math.isfinite(self.factor) and self.factor > 1)):
            raise ValueError(f"factor: must be 0 (no extension) or a finite number > 1, got {self.factor}")
        if not (0 < self.lr_min < self.lr_max and math.isfinite(self.lr_max)):
            raise ValueError(f"lr_min, lr_max: need 0 < lr_min < lr_max < inf, got {self.lr_min}, {self.lr_max}")


@dataclass(frozen=True)
class LrEdge:
    """Where a group's best learning rate sits in the lrs tried, and what to run next.

    edge: ``"low"``, ``"high"``, ``"both"`` (a single lr tried) or None (interior, or no grid).
    bound: why the grid stops growing at that edge: ``"lr_min"``, ``"lr_max"``, ``"diverged"`` (a
    run diverged at the best, highest lr: no step up past a divergence) or ``"off"`` (extension
    turned off); None while it may still grow. next_lrs: the lrs to run for every seed next (empty
    when the best is interior or every edge is at a bound).
    """

    edge: Optional[str]
    bound: Optional[str]
    next_lrs: tuple


def _round_lr(x: float) -> float:
    """12 significant digits: an extension lr (edge × factor) prints cleanly and is the same float on resume."""
    return float(f"{x:.12g}")


def lrs_past(lr: float, policy: LrPolicy, up: bool, n: int = 1) -> List[float]:
    """Up to ``n`` lrs past ``lr``, one factor of ``policy`` apart, upwards (``up``) or downwards, the last clamped to
    ``lr_max`` / ``lr_min`` and none beyond it: the lrs successive extension rounds would add at that edge. ``[]``
    with the extension off or ``lr`` at the bound."""
    out: List[float] = []
    x = lr
    while len(out) < n and policy.factor and (x < policy.lr_max if up else x > policy.lr_min):
        x = _round_lr(min(x * policy.factor, policy.lr_max) if up else max(x / policy.factor, policy.lr_min))
        out.append(x)
    return out


def _is_grid_lr(lr: Any) -> bool:
    return isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0


def lr_means(records: Sequence[Dict[str, Any]], lr_key: str = "lr", value_key: str = "best_mse"
             ) -> Dict[Any, Optional[float]]:
    """Mean ``value_key`` over the ok runs of each lr in ``records`` (one group, any seeds); None for an
    lr whose runs all diverged."""
    by_lr: Dict[Any, List[float]] = {}
    for r in records:
        vals = by_lr.setdefault(r.get(lr_key), [])
        if r.get("status") == "ok" and not is_diverged(r.get(value_key)):
            vals.append(float(r[value_key]))
    return {lr: (statistics.fmean(v) if v else None) for lr, v in by_lr.items()}


def _lr_order(lr: Any) -> tuple:
    """Sort key for lrs that may not all be numbers (numbers first, ascending)."""
    return (0, float(lr), "") if _is_grid_lr(lr) else (1, 0.0, str(lr))


def _tie_mean(records: Sequence[Dict[str, Any]], lr: Any, lr_key: str, tie_key: str) -> float:
    """Mean ``tie_key`` over the ok runs at ``lr`` (inf where none has a finite one): breaks a tie at the best."""
    vals = [float(r[tie_key]) for r in records if r.get(lr_key) == lr and r.get("status") == "ok"
            and not is_diverged(r.get(tie_key))]
    return statistics.fmean(vals) if vals else math.inf


def tied_at_best(means: Dict[Any, Optional[float]]) -> List[Any]:
    """The lrs whose mean is exactly the lowest, where two or more share it (a tie at the best); ``[]`` otherwise."""
    ok = {lr: m for lr, m in means.items() if m is not None}
    low = min(ok.values(), default=None)
    tied = [lr for lr, m in ok.items() if m == low]
    return tied if len(tied) > 1 else []


def _best_lr(means: Dict[Any, Optional[float]]) -> Any:
    ok = [(m, str(lr), lr) for lr, m in means.items() if m is not None]
    return min(ok)[2] if ok else None


def lr_edge(records: Sequence[Dict[str, Any]], policy: LrPolicy = LrPolicy(), lr_key: str = "lr",
            value_key: str = "best_mse") -> LrEdge:
    """Is the best learning rate of one group (e.g. one method and budget, all seeds) at an edge of the
    lrs tried, and which lrs extend the grid past that edge?

    The best lr is the one with the lowest mean ``value_key`` over its ok runs (as in
    :func:`best_of_grid`). At the highest lr tried it is at the ``"high"`` edge: the next lr is
    ``min(edge × factor, lr_max)``, unless a run at that lr diverged (``bound = "diverged"``) or it is
    already ``lr_max``. At the lowest it is at the ``"low"`` edge: next ``max(edge / factor, lr_min)``.
    A diverged lr above the best counts as tried, so a best just below a divergence is interior. When
    every run diverged, the grid steps down from its lowest lr. Groups whose lrs are not positive
    numbers (e.g. an untrained baseline with lr None or 0) have no grid: ``LrEdge(None, None, ())``; nor have
    groups whose lowest mean is shared exactly by two or more lrs (a tie at the best, e.g. an exact start that no
    lr improves on, says nothing about lrs past an edge; before 2026-12-07 the tie went to the lr first in string
    order, and the Theorem 1 exact-start groups were extended down for it).
    Seeds: the caller runs every lr for every seed before asking (see :func:`lr_extension_plan`).
    """
    means = lr_means(records, lr_key, value_key)
    if not means or not all(_is_grid_lr(lr) for lr in means):
        return LrEdge(None, None, ())
    if tied_at_best(means):
        return LrEdge(None, None, ())
    tried = sorted(means)
    lo, hi = tried[0], tried[-1]
    best = _best_lr(means)
    if best is None:  # every run diverged: too high everywhere
        best, edges = lo, ["low"]
    else:
        edges = [e for e, at in (("low", best == lo), ("high", best == hi)) if at]
    if not edges:
        return LrEdge(None, None, ())
    nxt, bounds = [], []
    for e in edges:
        if policy.factor == 0:
            bounds.append("off")
        elif e == "high":
            diverged = any(r.get(lr_key) == hi and r.get("status") != "ok" for r in records)
            if diverged:
                bounds.append("diverged")
            elif hi >= policy.lr_max:
                bounds.append("lr_max")
            else:
                nxt += lrs_past(hi, policy, up=True)
        elif lo <= policy.lr_min:
            bounds.append("lr_min")
        else:
            nxt += lrs_past(lo, policy, up=False)
    edge = edges[0] if len(edges) == 1 else "both"
    # a bound is reported once no edge can grow any more
    return LrEdge(edge, ",".join(bounds) if bounds and not nxt else None, tuple(nxt))


def lr_extension_plan(records: Sequence[Dict[str, Any]], base_lrs: Sequence[float], seeds: Sequence[Any],
                      policy: LrPolicy = LrPolicy(), lr_key: str = "lr", seed_key: str = "seed",
                      value_key: str = "best_mse") -> List[tuple]:
    """The ``(seed, lr)`` runs one group still needs: first every lr tried so far (the base grid and
    any extension in ``records``) for every seed; once that is complete, the extension lrs of
    :func:`lr_edge` for every seed. Empty when the group is done. ``records``: the group's records of
    the current configuration. A driver calls this in rounds until every group returns ``[]``::

        while True:
            todo = {g: lr_extension_plan(recs_of(g), cfg.lrs, cfg.seeds, policy) for g in groups}
            if not any(todo.values()):
                break
            run(todo)  # appends records
    """
    done = {(r.get(seed_key), r.get(lr_key)) for r in records}
    tried = sorted(set(base_lrs) | {r.get(lr_key) for r in records if _is_grid_lr(r.get(lr_key))})
    missing = [(s, lr) for lr in tried for s in seeds if (s, lr) not in done]
    if missing:
        return missing
    return [(s, lr) for lr in lr_edge(records, policy, lr_key, value_key).next_lrs for s in seeds]


def edge_label(row: Dict[str, Any]) -> str:
    """Summary-table text for a :func:`best_of_grid` row: ``"high (lr_max)"``, ``"low (not extended)"``, ...
    for a best lr still at an edge of its grid (with the bound that stopped it), ``""`` when interior."""
    if not row.get("lr_at_edge"):
        return ""
    if row.get("lrs_in_progress") and not row.get("lr_bound_reached"):
        return row["lr_at_edge"] + " (grid incomplete)"  # an lr has some seeds, not all yet (runs under way)
    return row["lr_at_edge"] + f" ({row.get('lr_bound_reached') or 'not extended'})"
