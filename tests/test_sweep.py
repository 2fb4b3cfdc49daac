"""Sweep machinery: atomic results file, resume keys, best-of-grid with diverged runs excluded."""

import json
import math

from synthetic.sweep import ResultsFile, best_of_grid, is_diverged, plot_mse_vs_params, run_key


def test_run_key_is_order_independent():
    assert run_key({"a": 1, "b": {"y": 2, "x": (1, 2)}}) == run_key({"b": {"x": [1, 2], "y": 2}, "a": 1})
    assert run_key({"lr": 1e-3}) != run_key({"lr": 1e-2})


def test_append_is_atomic_and_resume_skips(tmp_path):
    rf = ResultsFile(tmp_path / "r.json")
    assert rf.load() == [] and rf.completed_keys() == set()
    k = run_key({"m": "x", "seed": 0})
    rf.append({"key": k, "best_mse": float("nan"), "status": "diverged"})
    rf.append({"key": k, "best_mse": 1.0, "status": "ok"})  # duplicate key: ignored
    data = json.loads((tmp_path / "r.json").read_text())  # strict JSON, NaN written as null
    assert len(data) == 1 and data[0]["best_mse"] is None
    assert rf.completed_keys() == {k}
    assert not list(tmp_path.glob("*.tmp"))


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
