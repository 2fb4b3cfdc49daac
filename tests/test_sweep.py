"""Sweep machinery: atomic results file, resume keys, best-of-grid with diverged runs excluded, adaptive lr grid."""

import json
import math

import pytest

from synthetic.results import (LrEdge, LrPolicy, ResultsFile, best_of_grid, is_diverged, lr_edge, lr_extension_plan,
                               run_key)
from synthetic.plots import plot_mse_vs_params


def test_run_key_is_order_independent():
    assert run_key({"a": 1, "b": {"y": 2, "x": (1, 2)}}) == run_key({"b": {"x": [1, 2], "y": 2}, "a": 1})
    assert run_key({"lr": 1e-3}) != run_key({"lr": 1e-2})


def test_append_is_one_line_per_record_and_resume_skips(tmp_path):
    rf = ResultsFile(tmp_path / "r.jsonl")
    assert rf.load() == [] and rf.completed_keys() == set()
    k = run_key({"m": "x", "seed": 0})
    rec = {"key": k, "kind": "run", "method": "x", "budget": {}, "lr": 0.1, "seed": 0}
    rf.append({**rec, "best_mse": float("nan"), "status": "diverged"})
    rf.append({**rec, "best_mse": 1.0, "status": "ok"})  # duplicate key: ignored
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    data = [json.loads(line) for line in lines]  # strict JSON per line, NaN written as null
    assert len(data) == 2 and data[0]["format"] == "synthetic-results" and data[1]["best_mse"] is None
    assert rf.completed_keys() == {k}
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.lock"))


def test_best_of_grid_picks_lr_by_mean_and_counts_diverged(tmp_path):
    recs = []
    for lr, vals in ((1e-3, [1.0, 1.2, 1.1]), (1e-2, [0.5, 0.7, None])):
        for s, v in enumerate(vals):
            recs.append({"method": "M", "budget_label": "r1", "lr": lr, "seed": s, "trainable_pct": 5.0,
                         "best_mse": v, "status": "ok" if v is not None else "diverged"})
    (row,) = best_of_grid(recs)
    assert row["lr"] == 1e-2 and math.isclose(row["mean"], 0.6) and row["n_seeds"] == 2
    assert row["n_diverged"] == 1 and row["min"] == 0.5 and row["max"] == 0.7
    paths = plot_mse_vs_params([row], tmp_path / "fig", extra_points=[{"x": 1, "y": 0, "label": "theory"}])
    assert all((tmp_path / p).exists() for p in paths)
    assert is_diverged(float("inf")) and is_diverged(None) and not is_diverged(0.1)


# ------------------------------------------------------------------------------ adaptive lr grid
def _group(table, method="M", budget_label="b"):
    """Records of one group from {lr: [best_mse per seed, None = diverged]}."""
    return [{"method": method, "budget_label": budget_label, "lr": lr, "seed": s, "trainable_pct": 1.0,
             "best_mse": v, "status": "ok" if v is not None else "diverged"}
            for lr, vals in table.items() for s, v in enumerate(vals)]


def test_a_tie_at_the_best_has_no_edge_and_is_broken_by_the_final_mse():
    """An exact start that no lr improves on: every lr's best MSE is the start's, so the means tie exactly. No lr
    is 'the best', so there is no edge and no lr-extension (before, the tie went to the lr first in string order,
    0.00025 here, the lowest tried, and the grid was extended down for it); the row lists the tied lrs and shows the
    one with the lowest mean final MSE. A near tie is no tie: its lowest lr is a low edge as before."""
    lrs = (2.5e-4, 1e-3, 4e-3)
    recs = [{**r, "final_mse": {2.5e-4: 5.0, 1e-3: 0.5, 4e-3: 9.0}[r["lr"]]}
            for r in _group({lr: [1e-6, 2e-6, 3e-6] for lr in lrs})]
    (row,) = best_of_grid(recs)
    assert row["lrs_tied"] == list(lrs) and row["lr"] == 1e-3 and row["lr_at_edge"] is None
    assert lr_edge(recs) == LrEdge(None, None, ()) and lr_extension_plan(recs, lrs, [0, 1, 2]) == []
    near = [dict(r, best_mse=r["best_mse"] * (0.999 if r["lr"] == 2.5e-4 else 1.0)) for r in recs]
    (row,) = best_of_grid(near)
    assert row["lrs_tied"] == [] and row["lr"] == 2.5e-4 and row["lr_at_edge"] == "low"
    assert lr_edge(near).next_lrs  # the low edge grows as before


def test_best_of_grid_leaves_an_lr_in_progress_out_of_the_comparison():
    """An lr-extension round under way: the new lr has seed 0 only, which sits below the 3-seed means. Its 1-seed
    'mean' must not win against complete lrs: the row keeps the best complete lr, flags its edge as "grid
    incomplete" and lists the partial lr; once every seed has run, the new lr is compared like any other."""
    from synthetic.results import edge_label
    recs = _group({1e-3: [3.0, 3.2, 3.4], 4e-3: [2.0, 2.4, 2.8]})
    recs += [{"method": "M", "budget_label": "b", "lr": 1.6e-2, "seed": 0, "trainable_pct": 1.0,
              "best_mse": 1.9, "status": "ok"}]
    (row,) = best_of_grid(recs)
    assert row["lr"] == 4e-3 and row["n_seeds"] == 3 and math.isclose(row["mean"], 2.4)
    assert row["lrs_in_progress"] == [1.6e-2] and row["lrs_tried"] == [1e-3, 4e-3]
    assert row["lr_at_edge"] == "high" and edge_label(row) == "high (grid incomplete)"
    done = recs + [{**recs[-1], "seed": s, "best_mse": v} for s, v in ((1, 2.6), (2, 2.9))]
    (row,) = best_of_grid(done)
    assert row["lr"] == 4e-3 and row["lrs_in_progress"] == [] and row["lr_at_edge"] is None  # 2.47 > 2.4: interior


def test_best_at_high_edge_extends_upward_by_the_factor():
    e = lr_edge(_group({1e-3: [3.0, 3.0], 4e-3: [2.0, 2.2], 1.6e-2: [1.0, 1.4]}))
    assert e == LrEdge("high", None, (0.064,))
    e = lr_edge(_group({1e-3: [1.0, 1.0], 4e-3: [2.0, 2.2]}), LrPolicy(factor=10))
    assert e.edge == "low" and e.next_lrs == (1e-4,)


def test_interior_best_needs_nothing():
    assert lr_edge(_group({1e-3: [3.0], 4e-3: [1.0], 1.6e-2: [2.0]})) == LrEdge(None, None, ())


def test_divergence_above_the_best_makes_it_interior_and_at_the_top_stops_the_grid():
    assert lr_edge(_group({1e-3: [3.0], 4e-3: [1.0], 1.6e-2: [None]})) == LrEdge(None, None, ())
    # best lr is the highest tried, but one of its seeds diverged: no step up past a divergence
    assert lr_edge(_group({1e-3: [3.0, 3.0], 4e-3: [1.0, None]})) == LrEdge("high", "diverged", ())


def test_steps_are_clamped_to_the_bounds_and_stop_there():
    pol = LrPolicy(factor=4, lr_min=1e-4, lr_max=0.5)
    assert lr_edge(_group({0.05: [2.0], 0.2: [1.0]}), pol).next_lrs == (0.5,)  # 0.8 clamped to lr_max
    assert lr_edge(_group({0.05: [2.0], 0.5: [1.0]}), pol) == LrEdge("high", "lr_max", ())
    assert lr_edge(_group({2e-4: [1.0], 1e-3: [2.0]}), pol).next_lrs == (1e-4,)
    assert lr_edge(_group({1e-4: [1.0], 1e-3: [2.0]}), pol) == LrEdge("low", "lr_min", ())
    assert lr_edge(_group({1e-3: [1.0], 4e-3: [2.0]}), LrPolicy(factor=0)) == LrEdge("low", "off", ())


def test_single_lr_extends_both_ways_and_all_diverged_steps_down():
    assert lr_edge(_group({1e-2: [1.0]})) == LrEdge("both", None, (0.0025, 0.04))
    assert lr_edge(_group({1e-2: [None], 4e-2: [None]})) == LrEdge("low", None, (0.0025,))


def test_groups_without_a_grid_are_never_extended():
    assert lr_edge(_group({None: [1.0, 2.0]})) == LrEdge(None, None, ())  # e.g. Frozen, lr None
    assert lr_edge(_group({0.0: [1.0]})) == LrEdge(None, None, ())  # Frozen in the Mamba driver, lr 0


def test_extension_plan_completes_every_lr_for_every_seed_first():
    recs = _group({1e-3: [3.0, 3.0], 4e-3: [1.0, 1.2]})
    assert lr_extension_plan(recs, (1e-3, 4e-3), seeds=(0, 1)) == [(0, 0.016), (1, 0.016)]
    # an extension lr with one seed done (a sweep cut short): finish it before deciding anything new
    partial = recs + _group({0.016: [0.5]})
    assert lr_extension_plan(partial, (1e-3, 4e-3), seeds=(0, 1)) == [(1, 0.016)]
    # and a base lr missing for one seed comes first too
    assert lr_extension_plan(recs[:-1], (1e-3, 4e-3), seeds=(0, 1)) == [(1, 4e-3)]
    assert lr_extension_plan(_group({1e-3: [3.0, 3.0], 4e-3: [1.0, 1.2], 0.016: [2.0, 2.0]}),
                             (1e-3, 4e-3), seeds=(0, 1)) == []


def test_extension_rounds_reach_an_interior_optimum():
    """Driven to completion on a synthetic loss with its optimum far above the base grid."""
    def mse(lr):
        return (math.log10(lr) - math.log10(0.3)) ** 2 + 0.1

    recs = []
    base = (1e-3, 4e-3)
    for _ in range(20):
        plan = lr_extension_plan(recs, base, seeds=(0,))
        if not plan:
            break
        recs += [{"lr": lr, "seed": s, "best_mse": mse(lr), "status": "ok", "method": "M", "budget_label": "b",
                  "trainable_pct": 1.0} for s, lr in plan]
    (row,) = best_of_grid(recs)
    assert row["lr"] == 0.256 and row["lr_at_edge"] is None and row["lrs_tried"][-1] == 1.0
    assert row["lrs_tried"] == [1e-3, 4e-3, 0.016, 0.064, 0.256, 1.0]


def test_best_of_grid_flags_edges_and_the_plot_marks_them(tmp_path):
    rows = best_of_grid(_group({1e-3: [3.0], 1.0: [1.0]}, method="A")
                        + _group({1e-3: [3.0], 4e-3: [1.0], 1e-2: [2.0]}, method="B"))
    edge = {r["method"]: (r["lr_at_edge"], r["lr_bound_reached"]) for r in rows}
    assert edge == {"A": ("high", "lr_max"), "B": (None, None)}
    paths = plot_mse_vs_params(rows, tmp_path / "fig")
    assert all((tmp_path / p).stat().st_size > 0 for p in paths)


def test_policy_rejects_bad_values():
    for kw, needle in (({"factor": 1.0}, "factor"), ({"factor": -2}, "factor"), ({"lr_min": 0}, "lr_min"),
                       ({"lr_min": 1.0, "lr_max": 0.1}, "lr_max")):
        with pytest.raises(ValueError, match=needle):
            LrPolicy(**kw)


def test_progress_bar_is_tqdm_and_quiet_off_a_terminal():
    import io

    from synthetic.progress import progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    log, tty = io.StringIO(), Tty()
    assert list(progress(range(3), desc="runs", stream=log)) == [0, 1, 2] and log.getvalue() == ""
    assert list(progress(range(3), desc="runs", stream=tty)) == [0, 1, 2]
    assert "runs" in tty.getvalue() and "3/3" in tty.getvalue()


def test_best_of_grid_trainable_pct_does_not_depend_on_the_records_order():
    """The mean trainable % is the same whatever order the records come in (math.fsum): a results file merged in
    another order redrew figures/theorem1_training.json with values differing in the 16th digit (2026-12-07)."""
    import itertools
    pcts = [7.826086956521739, 7.826086956521738, 0.1, 1e-17, 7.826086956521741]
    recs = [{"method": "SDT", "budget_label": "c=8", "lr": 0.01, "seed": i, "status": "ok", "best_mse": 1.0,
             "trainable_pct": p} for i, p in enumerate(pcts)]
    seen = {best_of_grid(list(order))[0]["trainable_pct"] for order in itertools.permutations(recs)}
    assert len(seen) == 1
    assert len({sum(order) / 5 for order in itertools.permutations(pcts)}) > 1  # plain summation depends on it here
