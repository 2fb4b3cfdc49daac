"""The Theorem 1 expressivity probe: Jacobian ranks, counts, the exact D = 2 oracle, the S6 count."""

import json
import math
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theory import capacity
from theory.capacity_probe import (ProbeConfig, budget_map, groebner_oracle, impulse_response_map, jacobian_rank,
                                   probe, s6_obstruction_instance, target_map, zero_block_bound)
from theory.layout import free_dim_formula, smallest_count_feasible_rank, target_dim_formula
from theory.tests.strategies import generator


@pytest.mark.parametrize("D, L_star, H_star", [(2, 1, 1), (3, 1, 2), (3, 2, 1), (2, 3, 1)])
def test_target_dimension_matches_the_formula(D, L_star, H_star):
    cfg = ProbeConfig(D, L_star + 1, L_star, H_star, H_star, 1)
    r, gap, _ = jacobian_rank(target_map(cfg, generator(1)))
    assert r == target_dim_formula(D, L_star, H_star)
    assert gap > 1e4  # a clean cut between structural zeros and the rest


@given(st.sampled_from([(2, 2, 1), (3, 2, 1), (4, 2, 1), (4, 4, 2), (3, 3, 2)]), st.integers(0, 10**6))
@settings(max_examples=6)
def test_jacobian_reaches_the_target_dimension_where_the_construction_exists(case, seed):
    D, L, Ls = case
    r = math.ceil(D / (L // Ls))
    row = probe(ProbeConfig(D, L, Ls, 2, 1, r), seed)
    assert row.construction and row.verdict == "sufficient (construction)"
    assert row.budget_rank >= row.target_dim


def test_jacobian_falls_short_where_the_count_is_too_small():
    """L = 3, L* = 2, D = 12, r = 1: the free-parameter count (310) is below the target dimension
    (324), so no layout of this budget reaches generic targets; the Jacobian rank agrees (< 324)."""
    cfg = ProbeConfig(12, 3, 2, 2, 1, 1)
    row = probe(cfg, 0)
    assert row.free_dim == free_dim_formula(12, 3, 2, 1, 1) < row.target_dim == target_dim_formula(12, 2, 1)
    assert row.budget_rank <= row.free_dim < row.target_dim
    assert row.verdict == "insufficient (count)"


def test_count_excludes_the_brief_rank_as_D_grows():
    """r = ⌈L/L*⌉ = 2 with L = 4, L* = 2: the count reaches the target dimension at small D and falls
    short from some D on, for good; ⌈D·L*/L⌉ stays count-feasible."""
    ok = [free_dim_formula(D, 4, 2, 1, 2) >= target_dim_formula(D, 2, 1) for D in range(2, 80)]
    first_bad = ok.index(False) + 2
    assert first_bad > 8 and not any(ok[first_bad - 2:])
    assert all(free_dim_formula(D, 4, 2, 1, math.ceil(D / 2)) >= target_dim_formula(D, 2, 1) for D in range(2, 80))
    assert smallest_count_feasible_rank(64, 4, 2, 1) > 2


def test_time_domain_twin_gives_the_same_ranks():
    """The transfer-function probe and the impulse-response probe (deep_forward on unit impulses,
    N = 2·(2n)+1 steps) agree on the Jacobian rank, for the budget and for the target."""
    cfg = ProbeConfig(2, 2, 1, 2, 1, 1)
    n = cfg.D * cfg.L_star * cfg.H_star
    N = 2 * 2 * n + 8
    r_tf, _, _ = jacobian_rank(budget_map(cfg, generator(4)))
    r_imp, _, _ = jacobian_rank(impulse_response_map(cfg, generator(4), N, "budget"), mode="rev")
    assert r_tf == r_imp
    t_tf, _, _ = jacobian_rank(target_map(cfg, generator(4)))
    t_imp, _, _ = jacobian_rank(impulse_response_map(cfg, generator(4), N, "target"), mode="rev")
    assert t_tf == t_imp


def test_zero_block_bound_of_the_layout():
    assert zero_block_bound(ProbeConfig(6, 2, 1, 2, 1, 1)) == 3
    assert zero_block_bound(ProbeConfig(8, 4, 2, 2, 1, 1)) == 4
    assert zero_block_bound(ProbeConfig(5, 5, 2, 2, 1, 1)) == 2  # groups (3, 2): blocks (2,2,1), (3,2)
    assert zero_block_bound(ProbeConfig(4, 3, 2, 2, 1, 1)) == 2  # groups (2, 1)


def test_groebner_oracle_d2():
    """Exact algebra at D = 2, L = 2, L* = 1, H* = 1: skip inside is solvable with LoRA rank 1 and not
    with the frozen W_1; skip outside with one channel per layer has no solution in any layout,
    while processing both channels in one layer (the weaker budget) has one."""
    assert groebner_oracle("inside", (0, 1), 1)
    assert not groebner_oracle("inside", (0, 1), 0)
    for layout in [(0, 1), (1, 0), (0, 0), (1, 1)]:
        assert not groebner_oracle("outside", layout, None)
    assert groebner_oracle("outside", (0, 0), 0, all_in_last=True)


def test_s6_dimension_count():
    for D, s in [(2, 1), (4, 2)]:
        o = s6_obstruction_instance(D, 1, 1, s, seed=3)
        assert o["signal_rank"] == D + s  # x and the processed block are linearly independent signals
        assert o["proj_rank"] == min(3, s)
        assert o["needed"] > o["available"] == D


def test_probe_config_refusals():
    with pytest.raises(ValueError, match="H_star"):
        ProbeConfig(2, 2, 1, 1, 2, 1)
    with pytest.raises(ValueError, match="L: must be >="):
        ProbeConfig(2, 2, 2, 2, 1, 1)
    with pytest.raises(ValueError, match="skip"):
        ProbeConfig(2, 2, 1, 2, 1, 1, "middle")
    with pytest.raises(ValueError, match="rank"):
        ProbeConfig(2, 2, 1, 2, 1, 3)
    with pytest.raises(ValueError, match="lora_rank"):
        groebner_oracle("inside", (0, 1), 2)


def test_main_writes_data_then_figure(tmp_path):
    out, fig = tmp_path / "c.json", tmp_path / "c.png"
    assert capacity.main(["--quick", "--out", str(out), "--figure", str(fig)]) == 0
    data = json.loads(out.read_text())
    assert {r["verdict"] for r in data["rows"]} >= {"sufficient (construction)", "insufficient (zero block)"}
    assert fig.stat().st_size > 1000
    fig.unlink()
    assert capacity.main(["--replot", "--out", str(out), "--figure", str(fig)]) == 0
    assert fig.exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_figure_explains_markers_and_bars_inside_the_canvas():
    """Both legends (verdict markers; candidate-rank bars) are drawn, each within the figure's canvas."""
    pytest.importorskip("matplotlib", reason="needs matplotlib (pip install -e .)")
    path = os.path.join(os.path.dirname(__file__), "..", "..", "figures", "theorem1_capacity.json")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = capacity.draw(capacity.load_results(path))
    renderer = FigureCanvasAgg(fig).get_renderer()
    titles = [lg.get_title().get_text() for lg in fig.legends]
    assert any("verdict" in t for t in titles) and any("candidate ranks" in t for t in titles)
    box = fig.bbox
    for lg in fig.legends:
        ext = lg.get_window_extent(renderer)
        assert box.x0 <= ext.x0 and ext.x1 <= box.x1 and box.y0 <= ext.y0 and ext.y1 <= box.y1, lg.get_title()
