"""synthetic.plots, synthetic.palette and the three-ways figure: log MSE axis only where the values span a decade,
a y range fitted to the methods (references far outside as arrows at the edge), one legend entry for hollow and
one for diverged, one distinct colour per method across figures, files written."""

from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="needs matplotlib (pip install -e .)")

from synthetic import plots  # noqa: E402
from synthetic import palette  # noqa: E402
from synthetic.results import best_of_grid  # noqa: E402
from synthetic.s4 import fig2 as s4_fig2  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _rows(values_by_method, edge_method=None):
    """best_of_grid rows from {method: [(trainable %, mse), ...]}, lrs 1e-3, 1e-2, 1e-1: the best lr is the
    middle one, except for ``edge_method`` (the highest: at its grid's edge)."""
    factors = {False: (2.0, 1.0, 3.0), True: (2.0, 1.5, 1.0)}
    return best_of_grid([{"method": m, "budget_label": str(pct), "lr": lr, "seed": 0, "trainable_pct": pct,
                          "best_mse": f * mse, "status": "ok"}
                         for m, pts in values_by_method.items() for pct, mse in pts
                         for lr, f in zip((1e-3, 1e-2, 1e-1), factors[m == edge_method])])


def _legend_texts(fig):
    return [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()] + \
        [t.get_text() for lg in fig.legends for t in lg.get_texts()]


def test_choose_yscale_is_log_from_a_decade_on():
    assert plots.choose_yscale([0.5, 4.9]) == "linear"
    assert plots.choose_yscale([0.5, 5.0]) == "log"
    assert plots.choose_yscale([0.0, 1e-26, 0.4, 2.0]) == "log"  # 1e-26 is positive: it counts
    assert plots.choose_yscale([0.0, None, float("nan"), 1.0, 2.0]) == "linear"  # zeros, None, NaN do not
    assert plots.choose_yscale([]) == "linear"


def test_mse_axis_is_log_for_data_spanning_a_decade_and_linear_otherwise():
    wide = _rows({"LoRA (Proj)": [(5.0, 2.0), (10.0, 1.5)], "Full": [(100.0, 0.05)]})
    narrow = _rows({"LoRA (Proj)": [(5.0, 2.0), (10.0, 1.5)], "SDT": [(7.0, 1.0)]})
    assert plots.draw_mse_vs_params(wide).axes[0].get_yscale() == "log"
    assert plots.draw_mse_vs_params(narrow).axes[0].get_yscale() == "linear"
    assert plots.draw_mse_vs_params(narrow, logy=True).axes[0].get_yscale() == "log"


def test_one_legend_entry_explains_hollow_and_only_edge_points_are_hollow():
    rows = _rows({"LoRA (Proj)": [(5.0, 2.0), (10.0, 1.5)], "SDT": [(7.0, 1.0), (14.0, 0.8)]}, edge_method="SDT")
    assert {r["method"]: r["lr_at_edge"] for r in rows} == {"LoRA (Proj)": None, "SDT": "high"}
    fig = plots.draw_mse_vs_params(rows, extra_points=[{"x": 40.0, "y": 1e-26, "label": "theory"}])
    texts = _legend_texts(fig)
    assert sum("hollow" in t for t in texts) == 1
    hollow = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_markerfacecolor() == "white"]
    assert sum(len(ln.get_xdata()) for ln in hollow) == 2  # SDT's two points, nothing else
    no_edge = plots.draw_mse_vs_params(_rows({"LoRA (Proj)": [(5.0, 2.0)]}))
    assert not any("hollow" in t for t in _legend_texts(no_edge))


def test_fig2_paper_points_are_filled_stars_and_hollow_has_one_entry():
    data = {"missing": [], "sources": {
        "paper": [{"method": "SDT", "trainable_pct": 10.0, "mse": 1.2}, {"method": "SDT", "trainable_pct": 47.0,
                                                                           "mse": 0.0}],
        "preset_seed123": [{"method": "SDT", "trainable_pct": 10.0, "mse": 1.5, "lr_at_edge": "high"},
                           {"method": "Frozen", "trainable_pct": 0.8, "mse": 12.0, "lr_at_edge": None}],
        "preset_seeds": [{"method": "SDT", "trainable_pct": 10.0, "mse": 1.4, "min": 1.2, "max": 1.7,
                          "lr_at_edge": "high"}]}}
    fig = s4_fig2.draw(data)
    assert all(ax.get_yscale() == "log" for ax in fig.axes)  # 0.0 does not count: 1.2 ... 12
    texts = _legend_texts(fig)
    assert sum("hollow" in t for t in texts) == 1
    stars = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_marker() == "*"]
    assert stars and all(ln.get_markerfacecolor() != "white" for ln in stars)
    assert any("below the axis" in t.get_text() for ax in fig.axes for t in ax.texts)  # the paper's 0.0: an arrow
    assert any("marker and line: source" == lg.get_title().get_text() for lg in fig.legends)  # its own legend


def test_same_style_for_a_method_across_s4_and_mamba():
    assert plots.method_style("LoRA (S6+Proj)") == plots.method_style("LoRA (S4+Proj)")
    styles = [(s["color"], s["marker"]) for s in plots.METHOD_STYLE.values()]
    assert len(set(styles)) == len(styles) and len({c for c, _ in styles}) == len(styles)
    fig = plots.draw_mse_vs_params(_rows({"SDT": [(5.0, 1.0), (9.0, 0.9)]}))
    (bars,) = [c for c in fig.axes[0].containers if c.get_label().startswith("SDT")]  # errorbar container
    assert bars.lines[0].get_color() == plots.METHOD_STYLE["SDT"]["color"]
    assert bars.lines[0].get_marker() == plots.METHOD_STYLE["SDT"]["marker"]


def test_palette_gives_every_method_its_own_colour_and_marker():
    colours = list(palette.METHOD_COLORS.values())
    assert len(set(c.lower() for c in colours)) == len(colours)
    assert set(palette.METHOD_MARKERS) == set(palette.METHOD_COLORS)
    assert palette.method_color("DoRA (Proj)") != palette.method_color("LoRA (Proj)")
    assert palette.method_color("LoRA (SSM+Proj)") == palette.method_color("LoRA (S4+Proj)")
    assert palette.method_color("Oracle masks") == palette.METHOD_COLORS["construction's masks"]


def test_y_range_fits_the_methods_and_far_references_are_arrows():
    rows = _rows({"Frozen": [(0.0, 9e-3)], "LoRA (Proj)": [(5.0, 5e-3), (10.0, 3e-3)], "SDT": [(7.0, 1e-3)],
                  "Full": [(100.0, 1e-5)]})
    fig = plots.draw_mse_vs_params(rows, extra_points=[{"x": 40.0, "y": 1e-26, "label": "Theorem 1: exact"}])
    bottom, top = fig.axes[0].get_ylim()
    assert 1e-4 < bottom < 1e-3 and 9e-3 < top < 5e-2  # not stretched to Full's 1e-5 or the 1e-26
    arrows = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any(t.startswith("Full") for t in arrows) and any(t.startswith("Theorem 1") for t in arrows)


def test_diverged_runs_are_explained_in_the_legend():
    recs = [{"method": "SDT", "budget_label": "b", "lr": lr, "seed": 0, "trainable_pct": 5.0, "best_mse": v,
             "status": "ok" if v is not None else "diverged"} for lr, v in ((1e-3, 2.0), (1e-2, 1.0), (1e-1, None))]
    texts = _legend_texts(plots.draw_mse_vs_params(best_of_grid(recs)))
    assert any("1 of 3 runs diverged" in t for t in texts) and any(t.startswith("diverged:") for t in texts)


def test_run_title_names_experiment_preset_and_device():
    recs = [{"preset": "paper", "device": "NVIDIA H200"}, {"config": {"preset": "paper"}, "device": "cpu"}]
    assert plots.run_title("Mamba regression", recs, "MSE") == "Mamba regression, paper preset, CPU + NVIDIA H200\nMSE"


def test_files_are_written(tmp_path):
    rows = _rows({"Frozen": [(0.0, 5.0)], "LoRA (Proj)": [(5.0, 2.0)], "Full": [(100.0, 0.01)]})
    paths = plots.plot_mse_vs_params(rows, tmp_path / "sub" / "fig")
    assert paths == [str(tmp_path / "sub" / "fig.png"), str(tmp_path / "sub" / "fig.pdf")]
    assert all((tmp_path / "sub" / p).stat().st_size > 0 for p in ("fig.png", "fig.pdf"))
    recs = [{"method": m, "budget_label": "b", "lr": 0.01, "seed": 0, "status": "ok", "trainable_pct": pct,
             "best_mse": 0.1, "final_mse": 0.2, "loss_curve": [1.0, 0.5, 0.1], "config": {}}
            for m, pct in (("SDT", 5.0), ("LoRA (S6+Proj)", 6.0), ("Frozen", 0.0))]
    out = plots.plot_mamba(recs, best_of_grid(recs), tmp_path / "mse", tmp_path / "curves.png")
    assert sorted(p.rsplit("/", 1)[1] for p in out) == ["curves.pdf", "curves.png", "mse.pdf", "mse.png"]


def test_one_budget_methods_at_the_same_x_are_drawn_side_by_side_above_the_lines():
    assert plots.dodges({"a": 6.27, "b": 6.2701, "c": 9.0}) == {"a": -plots.DODGE / 2, "b": plots.DODGE / 2, "c": 0.0}
    rows = _rows({"LoRA (Proj)": [(2.0, 2.0), (10.0, 1.5)], "Initial-state tuning": [(6.27, 1.8)],
                  "State-offset tuning": [(6.27, 1.8)]})
    fig = plots.draw_mse_vs_params(rows)
    at = []
    for c in fig.axes[0].containers:  # one errorbar container per method
        if c.get_label().startswith(("Initial", "State")):
            line = c.lines[0]
            x, y = line.get_xdata()[0], line.get_ydata()[0]
            at.append(line.get_transform().transform((x, y))[0])
            assert x == 6.27 and line.get_zorder() > 3  # the data unchanged; above the lines of the others
    a, b = at
    assert abs(a - b) == pytest.approx(plots.DODGE / 72 * fig.dpi)  # apart on the page


def test_one_seed_is_singular_and_equal_min_max_is_not_repeated():
    recs = [{"method": m, "budget_label": "b", "lr": 0.01, "seed": 0, "trainable_pct": pct, "best_mse": v,
             "status": "ok"} for m, pct, v in (("Frozen", 0.0, 5.0), ("SDT", 5.0, 1.0))]
    texts = _legend_texts(plots.draw_mse_vs_params(best_of_grid(recs)))
    assert "Frozen: 5 (1 seed), off scale" in texts and "SDT (1 seed)" in texts


def test_a_partial_sweep_says_so_in_its_figure_title(tmp_path):
    """Command.partial_note counts the base grid of the results file (built as a dry run: no model, so a GPU preset
    works on a CPU machine): '' for the committed, complete CPU sweep; with SDT's runs left out it names the runs
    done / in all (SDT's base-grid runs missing), and the figure is still drawn."""
    import dataclasses

    from synthetic.dry_run import plan
    from synthetic.mamba.experiment import MambaCommand
    from synthetic.results import ResultsFile

    cmd = MambaCommand()
    full = cmd.parse(["--preset", "cpu", "--out", str(ROOT / "figures")])
    assert cmd.partial_note(full) == ""
    counts = plan(cmd.experiment(dataclasses.replace(full, dry_run=True)))["methods"]
    total, sdt = sum(c["runs"] for c in counts.values()), counts["SDT"]["runs"]
    recs = ResultsFile(ROOT / "figures" / "mamba_regression_cpu.jsonl").load()
    ResultsFile(tmp_path / "mamba_regression_cpu.jsonl").extend([r for r in recs if r.get("method") != "SDT"])
    cfg = cmd.parse(["--preset", "cpu", "--out", str(tmp_path)])
    assert sdt > 0 and cmd.partial_note(cfg) == f"partial sweep: {total - sdt} of {total} base-grid runs done"
    cmd.main(["--preset", "cpu", "--out", str(tmp_path), "--plot-only"])
    assert (tmp_path / "mamba_mse_vs_params_cpu.png").is_file()
