"""Figure 2 of Galim et al. (ICML 2025, Sec. 6.1), three ways: the paper, the official code, this toolkit.

MSE vs trainable % per method, from data only (no training):

- ``paper``: the values read off the paper's Figure 2 (``paper_reference_read_off_figure_2`` of the
  official runs file; a range "8->26 %" is drawn at its two ends);
- ``official_code``: the official code's own runs (``figures/official_s4_runs.json``, a copy of
  ``runs.json``), best ``best_mse`` over learning rates per trainable %, as the official
  notebook ``S4/analysis/s4_plot.ipynb`` does;
- ``preset_seed123``: the ``s4_official`` experiment (:mod:`synthetic.s4.official_experiment`) at seed 123, best over learning rates;
- ``preset_seeds``: the same over every seed (best-of-grid mean, min–max band);
- ``default_conventions``: our own conventions (``figures/s4_regression_paper.jsonl``, best of grid).

Points of this toolkit whose best lr is the lowest or highest of its group's lrs (``lr_at_edge``,
:func:`synthetic.results.lr_edge`: the optimum may lie outside the grid) are drawn hollow.
A missing source is skipped and named in the figure's note and the JSON. Writes
``<out>.png``, ``.pdf`` and ``.json`` (the points drawn).

Usage::

    python -m synthetic.s4_fig2                      # figures/s4_fig2_three_ways.{png,pdf,json}
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from synthetic.cli import check_out_dir
from synthetic.results import ResultsFile, best_of_grid, lr_edge

# our default conventions' "LoRA (S4+Proj)" puts LoRA on A and C: the official preset's "LoRA (A&C+Proj)"
DEFAULT_METHOD_MAP = {"LoRA (S4+Proj)": "LoRA (A&C+Proj)"}


def paper_points(official_runs: Dict) -> List[Dict]:
    """Points of ``paper_reference_read_off_figure_2``: 'Frozen' at 0 %, 'Full' at 100 %, and
    'METHOD a->b %': [y_a, y_b] at a and b."""
    out = []
    for name, val in official_runs.get("paper_reference_read_off_figure_2", {}).items():
        m = re.fullmatch(r"(.+?) (\d+(?:\.\d+)?)->(\d+(?:\.\d+)?) %", name)
        if m:
            for x, y in zip((float(m.group(2)), float(m.group(3))), val):
                out.append({"method": m.group(1), "trainable_pct": x, "mse": float(y)})
        elif name in ("Frozen", "Full"):
            out.append({"method": name, "trainable_pct": 0.0 if name == "Frozen" else 100.0, "mse": float(val)})
        else:
            raise ValueError(f"paper_reference_read_off_figure_2: cannot read the entry {name!r}")
    return out


def best_over_lrs(records: Sequence[Dict], group_keys=("method", "trainable_pct")) -> List[Dict]:
    """Per group: the record with the smallest ``best_mse`` over learning rates (the official notebook's rule); a
    run whose ``best_mse`` is missing or not finite (the official runs file may hold NaN) is not a candidate."""
    best: Dict[tuple, Dict] = {}
    for r in records:
        if r.get("status", "ok") != "ok" or r.get("best_mse") is None or not math.isfinite(r["best_mse"]):
            continue
        k = tuple(round(r[g], 4) if isinstance(r[g], float) else r[g] for g in group_keys)
        if k not in best or r["best_mse"] < best[k]["best_mse"]:
            best[k] = r
    return [{"method": r["method"], "trainable_pct": r["trainable_pct"], "mse": r["best_mse"], "lr": r["lr"],
             **({"eval_mse": r["eval_mse"]} if "eval_mse" in r else {}),
             **({"budget_label": r["budget_label"]} if "budget_label" in r else {})} for r in best.values()]


def seed_rows(records: Sequence[Dict], method_map: Optional[Dict[str, str]] = None) -> List[Dict]:
    """Best-of-grid rows (lr chosen by the mean over seeds): mean, min, max, n_seeds per (method, budget)."""
    rows = best_of_grid(records, group_keys=("method", "budget_label"))
    out = []
    for r in rows:
        if r["mean"] is None:
            continue
        out.append({"method": (method_map or {}).get(r["method"], r["method"]), "source_method": r["method"],
                    "budget_label": r["budget_label"], "trainable_pct": r["trainable_pct"], "mse": r["mean"],
                    "min": r["min"], "max": r["max"], "n_seeds": r["n_seeds"], "lr": r["lr"],
                    "lr_at_edge": r["lr_at_edge"]})
    return out


def _load(path: Path) -> Optional[object]:
    """The official runs file (one JSON object), or None when it does not exist."""
    return json.loads(path.read_text()) if path.exists() else None


def _load_results(path: Path) -> Optional[List[Dict]]:
    """A results file's records (:class:`synthetic.results.ResultsFile`: JSON Lines, or an old JSON list), or None
    when neither exists."""
    rf = ResultsFile(path)
    return rf.load() if rf.source() is not None else None


def collect(official_runs_path, preset_path, default_path) -> Dict:
    """Every source's points (see the module docstring); ``missing`` lists the sources not found."""
    data: Dict = {"sources": {}, "missing": [], "files": {}}
    runs = _load(Path(official_runs_path))
    if runs is None:
        data["missing"] += ["paper", "official_code"]
    else:
        data["sources"]["paper"] = paper_points(runs)
        data["sources"]["official_code"] = best_over_lrs(runs["runs"])
        data["files"]["official_code"] = {"path": str(official_runs_path), "device": runs.get("device"),
                                          "date": runs.get("date")}
    preset = _load_results(Path(preset_path))
    if preset is None:
        data["missing"] += ["preset_seed123", "preset_seeds"]
    else:
        recs = [r for r in preset if r.get("kind", "run") == "run"]
        s123 = [r for r in recs if r["seed"] == 123]
        data["sources"]["preset_seed123"] = best_over_lrs(s123, group_keys=("method", "budget_label"))
        for p in data["sources"]["preset_seed123"]:
            p["lr_at_edge"] = lr_edge([r for r in s123 if (r["method"], r["budget_label"]) ==
                                       (p["method"], p["budget_label"])]).edge
        data["sources"]["preset_seeds"] = seed_rows(recs)
        walls = [r for r in preset if r.get("kind") == "sweep"]
        data["files"]["preset"] = {"path": str(preset_path), "devices": sorted({r.get("device") for r in recs}),
                                   "commits": sorted({r.get("commit") for r in recs}),
                                   "sweep_wall_s": [w["wall_s"] for w in walls]}
    default = _load_results(Path(default_path))
    if default is None:
        data["missing"].append("default_conventions")
    else:
        recs = _one_config(default)
        data["sources"]["default_conventions"] = seed_rows(recs, DEFAULT_METHOD_MAP)
        data["files"]["default_conventions"] = {"path": str(default_path),
                                                "devices": sorted({r.get("device") for r in recs})}
    return data


def _one_config(records: List[Dict]) -> List[Dict]:
    """Records of the last record's configuration (a results file may hold reruns at other settings)."""
    from synthetic.s4.experiment import fingerprint as _fingerprint

    want = _fingerprint(records[-1].get("config", {}))
    return [r for r in records if _fingerprint(r.get("config", {})) == want]


# ------------------------------------------------------------------------------------------- figure
# One message per panel; colour = method, marker and line = source (synthetic.palette.SOURCE_MARKERS).
PANELS = (("official_code", "preset_seed123"), ("paper", "preset_seeds"), ("paper", "default_conventions"))
SOURCE_OF = {"preset_seed123": "preset", "preset_seeds": "preset"}  # the palette's source names
SOURCE_LABELS = {"paper": "paper (read off its Fig. 2)", "official_code": "official code (seed 123, best lr)",
                 "preset": "this toolkit, official preset ((a) seed 123, best lr; (b) mean over seeds)",
                 "default_conventions": "this toolkit, own conventions (paper preset, mean over seeds)"}


def _titles(data: Dict) -> List[str]:
    n = lambda src: max((p.get("n_seeds", 1) for p in data["sources"].get(src) or []), default=0)  # noqa: E731
    devices = lambda key: " + ".join(  # noqa: E731
        str(d) for d in data.get("files", {}).get(key, {}).get("devices") or [] if d) or "?"
    return [f"(a) seed 123, official preset ({devices('preset')}) vs. official code\n"
            "our preset (●) reruns the official code (■)",
            f"(b) official preset ({n('preset_seeds')} seeds, {devices('preset')}) vs. the paper (★)\n"
            "SDT below LoRA, by less; nothing nears the paper's 0; Full lowest",
            f"(c) own conventions (paper preset, {n('default_conventions')} seeds) vs. the paper (★)\n"
            f"{devices('default_conventions')}: the same verdicts"]


def draw(data: Dict):
    """Three panels sharing a log MSE axis (see :data:`PANELS`): (a) the official code and our official preset
    at seed 123, (b) the official preset over seeds and (c) our own conventions, each against the paper's
    points. Colour = method, marker and line = source, hollow = best lr at an edge of its grid; bars: min–max
    over seeds; a value below the axis (the paper's SDT 0.0) is an arrow at its bottom edge. Returns the Figure."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from synthetic import plots as P
    from synthetic.palette import METHOD_COLORS, SOURCE_MARKERS, method_color

    pts = lambda src: data["sources"].get(src) or []  # noqa: E731
    drawn = [p for srcs in PANELS for src in srcs for p in pts(src)]
    core = [v for p in drawn if p["method"] != "Full" for v in (p["mse"], p.get("min"), p.get("max"))]
    limits = P.focus_limits(core, [p["mse"] for p in drawn if p["method"] == "Full"])
    fig = Figure(figsize=(16, 6.6))
    panels = P._panel_axes(fig, [P._x_ranges([p["trainable_pct"] for src in srcs for p in pts(src)])
                                 for srcs in PANELS])
    for ax in (a for axes in panels for a in axes):
        P._set_yscale(ax, "log", limits)
    methods, n_edge, arrows = set(), 0, []
    for axes, srcs, title in zip(panels, PANELS, _titles(data)):
        for k, ax in enumerate(axes):
            for src in srcs:
                st = SOURCE_MARKERS[SOURCE_OF.get(src, src)]
                by_m = defaultdict(list)
                for p in pts(src):
                    by_m[p["method"]].append(p)
                for m, ps in by_m.items():
                    methods.add(m)
                    ps = sorted(ps, key=lambda p: p["trainable_pct"])
                    ins = [p for p in ps if P._outside(p["mse"], limits) is None]
                    arrows += [(ax, p, m, st) for p in ps if P._outside(p["mse"], limits)]
                    err = ([[p["mse"] - p["min"] for p in ins], [p["max"] - p["mse"] for p in ins]]
                           if ins and "min" in ins[0] else None)
                    edge = [bool(p.get("lr_at_edge")) for p in ins]
                    P._series(ax, [p["trainable_pct"] for p in ins], [p["mse"] for p in ins], err,
                              color=method_color(m), marker=st["marker"], ms=st["ms"], ls=st["ls"], edge=edge,
                              alpha=0.8 if src == "paper" else 1.0)
                    n_edge += sum(edge) if k == 0 else 0
            P._style_axes(ax, title=title if k == 0 else "")
        axes[0].set_xlabel("trainable parameters (%)", fontsize=P.FONTS["label"])
    for ax, p, m, st in arrows:
        P.edge_arrow(ax, p["trainable_pct"], f"paper: {m} = {P._short(p['mse'])}\n(below the axis)"
                     if "min" not in p else f"{m}\n{P._short(p['mse'])}", side=P._outside(p["mse"], limits),
                     color=method_color(m), marker=st["marker"], ms=st["ms"])
    for axes in panels[1:]:
        axes[0].tick_params(axis="y", which="both", labelleft=False)
    panels[0][0].set_ylabel("MSE (best training-batch loss; bars: min–max over seeds)", fontsize=P.FONTS["label"])
    order = [m for m in METHOD_COLORS if m in methods] + sorted(m for m in methods if m not in METHOD_COLORS)
    fig.legend(handles=[Line2D([], [], color=method_color(m), lw=5, label=m) for m in order],
               loc="lower center", bbox_to_anchor=(0.5, 0.1), ncol=len(order), fontsize=P.FONTS["legend"] + 1,
               frameon=False, title="colour: method", title_fontsize=P.FONTS["legend"] + 1)
    srcs = [s for s in SOURCE_LABELS if any(data["sources"].get(k) for k in data["sources"] if SOURCE_OF.get(k, k) == s)]
    handles = [Line2D([], [], color="k", marker=SOURCE_MARKERS[s]["marker"], ms=SOURCE_MARKERS[s]["ms"] - 1,
                      ls=SOURCE_MARKERS[s]["ls"], lw=P.LW, label=SOURCE_LABELS[s]) for s in srcs]
    if n_edge:
        handles.append(P.hollow_handle())
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=P.FONTS["legend"] + 1,
               frameon=False, title="marker and line: source", title_fontsize=P.FONTS["legend"] + 1)
    if data.get("missing"):
        fig.text(0.01, 0.94, "missing (not drawn): " + ", ".join(data["missing"]), fontsize=P.FONTS["note"] + 1)
    fig.suptitle("Deep-S4 synthetic regression (Galim et al., ICML 2025, Fig. 2), three ways: the paper, the "
                 "official code, this toolkit", fontsize=P.FONTS["title"] + 1)
    fig.tight_layout(rect=(0, 0.2, 1, 0.98), w_pad=P.W_PAD)
    return fig


def plot(data: Dict, out_stem) -> List[str]:
    """The figure (:func:`draw`, ``<out_stem>.png`` and ``.pdf``) and the points drawn (``<out_stem>.json``, strict
    JSON: every point drawn is finite)."""
    from synthetic.plots import save, save_json

    return save(draw(data), out_stem) + [save_json(str(out_stem) + ".json", data)]


def three_ways(official_runs="figures/official_s4_runs.json", preset="figures/s4_regression_official.jsonl",
               default="figures/s4_regression_paper.jsonl", out="figures/s4_fig2_three_ways") -> List[str]:
    return plot(collect(official_runs, preset, default), out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m synthetic.s4_fig2", description=__doc__.split("\n\n")[0])
    p.add_argument("--official-runs", default="figures/official_s4_runs.json",
                   help="the official code's runs (a copy of its runs.json) (default: %(default)s)")
    p.add_argument("--preset", default="figures/s4_regression_official.jsonl",
                   help="results of this toolkit's official-convention preset (default: %(default)s)")
    p.add_argument("--default", default="figures/s4_regression_paper.jsonl",
                   help="results of this toolkit's own conventions, paper preset (default: %(default)s)")
    p.add_argument("--out", default="figures/s4_fig2_three_ways",
                   help="path prefix of the figure and the points drawn: writes OUT.png, OUT.pdf, OUT.json "
                        "(default: %(default)s)")
    a = p.parse_args(argv)
    try:  # before drawing: the inputs exist, read, and are what their option says; the outputs can be written
        if Path(a.out).is_dir():
            raise ValueError(f"--out: {a.out} is a folder; pass a path prefix (writes {a.out}.json/.png/.pdf)")
        check_out_dir(Path(a.out).parent)
        for opt, path in (("--official-runs", a.official_runs), ("--preset", a.preset)):
            if not Path(path).is_file():
                raise ValueError(f"{opt}: {path} not found (a figure without it would drop a source; run the "
                                 "experiment first or pass the file)")
        recs = ResultsFile(a.preset).runs()
        other = sorted({str(r.get("experiment")) for r in recs} - {"s4_official"})
        if other or not recs:
            raise ValueError(f"--preset: {a.preset} holds no official-preset runs (experiment {other or 'none'}); "
                             "pass the results of python -m synthetic.s4_regression --preset official")
        if Path(a.default).exists():
            ResultsFile(a.default).load()
        json.loads(Path(a.official_runs).read_text())
    except ValueError as e:  # json.JSONDecodeError and ResultsFileError are ValueErrors
        p.error(f"{e}")
    three_ways(a.official_runs, a.preset, a.default, a.out)  # each file it writes is printed
    return 0


if __name__ == "__main__":
    sys.exit(main())
