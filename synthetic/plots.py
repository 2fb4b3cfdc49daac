"""Every figure of the synthetic experiments (Galim et al., ICML 2025, Sec. 6: Fig. 2 and its Mamba counterpart).

One look across the S4 and Mamba figures, from one style table:

- **colour and marker = method** (:data:`METHOD_STYLE`; "LoRA (S6+Proj)" on Mamba and "LoRA (SSM+Proj)" on
  Mamba-II are drawn like their S4 counterpart "LoRA (S4+Proj)"); in the three-ways figure the marker shape and line style name the *source*
  instead (:data:`SOURCE_STYLE`: the paper's points are filled stars on a dotted line);
- **hollow = the best lr is at an edge of its lr grid** (the optimum may lie outside the lrs tried, so the
  point is an upper bound); that is the only thing hollow means, with one legend entry per figure;
- **log MSE axis when the values drawn span a decade or more** (:func:`choose_yscale`: max / min ≥ 10),
  linear otherwise; a value below a log axis (an exact 0, the Theorem 1 construction's 1e-26) is drawn on the
  axis' bottom edge with its value written beside it;
- the same figure sizes, fonts (:data:`FONTS`) and marker sizes everywhere.

Drawing functions (``draw_*``) return a :class:`matplotlib.figure.Figure` (no pyplot: the caller's backend
is left alone, e.g. in notebooks); the ``plot_*`` wrappers save it as ``<stem>.png`` and ``<stem>.pdf``
(:func:`save`, PDF bytes reproducible on redraw) and return the paths. matplotlib is imported inside the
functions, so importing this module needs no matplotlib.

- :func:`plot_mse_vs_params(rows, out_stem, ...) <plot_mse_vs_params>`: best-of-grid mean MSE vs trainable %
  per method, min–max over seeds as error bars (rows of :func:`synthetic.results.best_of_grid`);
- :func:`plot_fig2_three_ways(data, out_stem) <plot_fig2_three_ways>`: deep-S4 Figure 2 from the paper, the
  official code and this toolkit (``data`` of :func:`synthetic.s4_fig2.collect`);
- :func:`plot_loss_curves(records, rows, path, note) <plot_loss_curves>`: Mamba training loss, SDT vs LoRA
  (S6+Proj), each budget at its best lr; :func:`plot_mamba(records, rows, mse_stem, curves_path, ...)
  <plot_mamba>`: both Mamba figures with the run description (:func:`mamba_note`) under them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

__all__ = ["METHOD_STYLE", "SOURCE_STYLE", "FONTS", "method_style", "choose_yscale", "save",
           "draw_mse_vs_params", "plot_mse_vs_params", "draw_fig2_three_ways", "plot_fig2_three_ways",
           "draw_loss_curves", "plot_loss_curves", "mamba_note", "plot_mamba", "HOLLOW_LABEL"]

# ------------------------------------------------------------------------------------ style table
# Kindred methods get kindred colours (LoRA/DoRA blues and oranges, prompt-based pinks, state-based teals);
# every method also has its own marker, so no two methods share colour *and* marker.
METHOD_STYLE: Dict[str, Dict[str, str]] = {
    "Frozen": {"color": "#4d4d4d", "marker": "o"},
    "LoRA (Proj)": {"color": "#1f77b4", "marker": "s"},
    "LoRA (S4+Proj)": {"color": "#ff7f0e", "marker": "D"},
    "LoRA (A&C+Proj)": {"color": "#8c564b", "marker": "d"},
    "SDT": {"color": "#2ca02c", "marker": "o"},
    "SDT + LoRA": {"color": "#d62728", "marker": "^"},
    "Prompt tuning": {"color": "#e377c2", "marker": "v"},
    "Prefix-tuning": {"color": "#bcbd22", "marker": "<"},
    "Initial-state tuning": {"color": "#17becf", "marker": ">"},
    "State-offset tuning": {"color": "#0b5e6b", "marker": "h"},
    "BitFit": {"color": "#c79a00", "marker": "X"},
    "DoRA (Proj)": {"color": "#6baed6", "marker": "p"},
    "Additional-scan": {"color": "#393b79", "marker": "H"},
    "DoRA (Lin) + DoRA (SSM)": {"color": "#08306b", "marker": "8"},  # the hybrid's Table 4 rows (synthetic.hybrid)
    "DoRA (Lin) + SDT (SSM)": {"color": "#67000d", "marker": "8"},
    "Full": {"color": "#9467bd", "marker": "P"},
}
# Counterparts drawn like the method they extend: Mamba's LoRA (S6+Proj) and Mamba-II's LoRA (SSM+Proj) like
# LoRA (S4+Proj); the hybrid's "LoRA (Attn) + X" (synthetic.hybrid) like X with LoRA on the projections.
ALIASES = {"LoRA (S6+Proj)": "LoRA (S4+Proj)", "LoRA (SSM+Proj)": "LoRA (S4+Proj)", "LoRA (Attn) + LoRA (Proj)": "LoRA (Proj)",
           "LoRA (Attn) + LoRA (SSM)": "LoRA (S4+Proj)", "LoRA (Attn) + DoRA (SSM)": "DoRA (Proj)",
           "LoRA (Attn) + SDT (SSM)": "SDT + LoRA"}
FALLBACK_COLORS = ("#7f7f7f", "#000000", "#aec7e8", "#ffbb78", "#98df8a")  # a method not in the table

# The three-ways figure (s4_fig2): marker shape and line style say where a point comes from.
SOURCE_STYLE: Dict[str, Dict[str, Any]] = {
    "paper": {"marker": "*", "ms": 11, "ls": ":"},
    "official_code": {"marker": "s", "ms": 6, "ls": "--"},
    "preset_seed123": {"marker": "o", "ms": 6, "ls": "-"},
    "preset_seeds": {"marker": "o", "ms": 6, "ls": "-"},
    "default_conventions": {"marker": "^", "ms": 6, "ls": "-."},
}
SOURCE_LABELS = {"paper": "paper (read off its Fig. 2)", "official_code": "official code (seed 123, best lr)",
                 "preset_seed123": "this toolkit, official preset (seed 123, best lr)",
                 "preset_seeds": "this toolkit, official preset (mean over seeds; bars min–max)",
                 "default_conventions": "this toolkit, own conventions (paper preset, mean; bars min–max)"}

FONTS = {"title": 10, "label": 9, "tick": 8, "legend": 7, "note": 6, "annot": 7}
MS = 6  # marker size of a measured point
LW = 1.4
CAPSIZE = 2.5
DPI = 150
SINGLE_SIZE = (9.0, 4.8)  # one panel with its legend on the right
HOLLOW_LABEL = "hollow: best lr at an edge of its lr grid\n(the optimum may lie beyond it)"
W_PAD = 0.3  # space between a broken axis' two parts (font sizes)
FULL_BREAK = (65.0, 95.0)  # x-axis broken when every point is at <= 65 % except some at >= 95 % (Full)
LOG_RATIO = 10.0  # a log axis when max / min of the values drawn is at least this


def method_style(method: str) -> Dict[str, str]:
    """``{"color", "marker"}`` of a method (:data:`METHOD_STYLE`, through :data:`ALIASES`); a method not in
    the table gets a grey-ish colour and a plain marker chosen from its name (stable across runs)."""
    m = ALIASES.get(method, method)
    if m in METHOD_STYLE:
        return dict(METHOD_STYLE[m])
    h = sum(ord(c) for c in m)
    return {"color": FALLBACK_COLORS[h % len(FALLBACK_COLORS)], "marker": "osv^"[h % 4]}


def choose_yscale(values: Iterable[Optional[float]], ratio: float = LOG_RATIO) -> str:
    """``"log"`` when the finite positive ``values`` span at least ``ratio`` (max / min ≥ ratio), else
    ``"linear"``. Zeros, negatives, None and non-finite values do not count (they cannot sit on a log axis;
    the drawing functions put them on its bottom edge)."""
    v = _positive(values)
    return "log" if v and max(v) / min(v) >= ratio else "linear"


def _positive(values: Iterable[Optional[float]]) -> List[float]:
    return [float(x) for x in values if x is not None and math.isfinite(float(x)) and float(x) > 0]


def _log_limits(values: Iterable[Optional[float]]) -> tuple:
    """(bottom, top) of a log axis holding the positive ``values`` with a margin of a factor 1.5 each side;
    None when there is no positive value."""
    v = _positive(values)
    return (min(v) / 1.5, max(v) * 1.5) if v else None


def _set_yscale(ax, scale: str, limits: Optional[tuple]) -> None:
    """Log axis: the limits (if any), and ticks at 1, 2, 5 × 10^k written as plain numbers when it spans
    ≤ 3.5 decades (a reader then reads 0.5 or 2 off the axis, not only the powers of ten)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if scale != "log":
        return
    ax.set_yscale("log")
    if limits:
        ax.set_ylim(*limits)
    if limits and limits[1] / limits[0] <= 10 ** 3.5:
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def _style_axes(ax, xlabel: str = "", ylabel: str = "", title: str = "") -> None:
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=FONTS["label"])
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=FONTS["label"])
    ax.tick_params(labelsize=FONTS["tick"])
    if title:
        ax.set_title(title, fontsize=FONTS["title"], loc="left")
    ax.grid(alpha=0.3, which="major")


def _x_ranges(xs: Iterable[float]) -> Optional[tuple]:
    """``(main_xlim, full_xlim)`` for a broken x-axis when every x is ≤ FULL_BREAK[0] except some ≥ FULL_BREAK[1]
    (full fine-tuning at 100 % would otherwise leave half the plot empty); None for one plain axis."""
    xs = [float(x) for x in xs]
    near = [x for x in xs if x < FULL_BREAK[1]]
    far = [x for x in xs if x >= FULL_BREAK[1]]
    if not near or not far or max(near) > FULL_BREAK[0]:
        return None
    hi = max(max(near), 1.0) * 1.06
    return (-0.03 * hi, hi), (min(far) - 5.0, max(far) + 5.0)


def _panel_axes(fig, ranges: Sequence[Optional[tuple]]) -> List[list]:
    """Axes for panels side by side sharing one y-axis: per panel one axes, or [main, full] with a break
    between them where its ``ranges`` entry (of :func:`_x_ranges`) is not None. One gridspec for all (so
    ``tight_layout`` can place them); a narrow empty column separates panels."""
    widths: List[float] = []
    cols: List[list] = []
    for i, r in enumerate(ranges):
        if i:
            widths.append(0.5)  # gap between panels
        cols.append(list(range(len(widths), len(widths) + (1 if r is None else 2))))
        widths += [7.0] if r is None else [7.0, 1.0]
    gs = fig.add_gridspec(1, len(widths), width_ratios=widths)  # spacing: tight_layout(w_pad=W_PAD)
    out, first = [], None
    for r, c in zip(ranges, cols):
        axes = [fig.add_subplot(gs[0, j], sharey=first) for j in c]
        first = first or axes[0]
        if r is not None:
            main, full = axes
            main.set_xlim(*r[0])
            full.set_xlim(*r[1])
            full.set_xticks([100.0] if r[1][0] < 100 < r[1][1] else [sum(r[1]) / 2])
            main.spines["right"].set_visible(False)
            full.spines["left"].set_visible(False)
            full.tick_params(axis="y", which="both", left=False, labelleft=False)
            kw = dict(marker=[(-1, -2), (1, 2)], ms=7, ls="none", color="k", mec="k", mew=1, clip_on=False)
            main.plot([1, 1], [0, 1], transform=main.transAxes, **kw)  # the break marks
            full.plot([0, 0], [0, 1], transform=full.transAxes, **kw)
        out.append(axes)
    return out


def _in_view(ax, x: float) -> bool:
    lo, hi = ax.get_xlim()
    return lo <= x <= hi


def _hollow_handle(n: int):
    from matplotlib.lines import Line2D

    return Line2D([], [], ls="none", marker="o", ms=MS + 1, mfc="white", mec="k", mew=1.2,
                  label=HOLLOW_LABEL + f", {n} point{'s' if n != 1 else ''}")


def _below_axis(ax, x: float, y: float, bottom: float, color: str, marker: str, ms: float, text: str) -> None:
    """A value below a log axis' bottom: its marker on the bottom edge and its value written beside it."""
    if not _in_view(ax, x):
        return
    ax.plot([x], [bottom], ls="none", marker=marker, ms=ms, color=color, clip_on=False, zorder=5)
    lo, hi = ax.get_xlim()
    right = (x - lo) / (hi - lo) > 0.6  # near the right edge: write the value on the left of the marker
    ax.annotate(text, xy=(x, bottom), xytext=(-7 if right else 7, 4), textcoords="offset points",
                fontsize=FONTS["annot"], color=color, va="bottom", ha="right" if right else "left")


def _series(ax, x, y, err, *, color, marker, ms, ls, label=None, edge=(), bottom=None, below_text=None) -> None:
    """One method's points (errorbars when ``err``), hollow where ``edge[i]``, values ≤ ``bottom`` (a log
    axis' bottom) drawn on the bottom edge with ``below_text(y)`` beside them."""
    low = [bottom is not None and not yi > bottom for yi in y]
    yd = [bottom if lo else yi for yi, lo in zip(y, low)]
    kw = dict(color=color, marker=marker, ms=ms, ls=ls, lw=LW, zorder=3, label=label)
    if err is not None:
        ax.errorbar(x, yd, yerr=err, capsize=CAPSIZE, elinewidth=0.8, **kw)
    else:
        ax.plot(x, yd, **kw)
    for xi, yi, lo in zip(x, y, low):
        if lo:
            _below_axis(ax, xi, yi, bottom, color, marker, ms, below_text(yi))
    hx = [(xi, yi) for xi, yi, e in zip(x, yd, edge) if e]
    if hx:  # hollow: the optimum may lie outside the lrs tried
        ax.plot([p[0] for p in hx], [p[1] for p in hx], ls="none", marker=marker, ms=ms + 1, mfc="white", mec=color,
                mew=1.2, zorder=4)


def save(fig, out_stem) -> List[str]:
    """Write ``<out_stem>.png`` (``DPI``) and ``<out_stem>.pdf`` (no creation date: same bytes on redraw)."""
    out_stem = str(out_stem)
    Path(out_stem).parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem + ".png", out_stem + ".pdf"]
    fig.savefig(paths[0], dpi=DPI)
    fig.savefig(paths[1], metadata={"CreationDate": None})
    return paths


def _note(fig, note: str) -> None:
    if note:
        fig.text(0.01, 0.005, note, fontsize=FONTS["note"], va="bottom", ha="left", wrap=True)


# --------------------------------------------------------------------------------- MSE vs params
def draw_mse_vs_params(rows: Sequence[Dict[str, Any]], *, method_key: str = "method",
                       method_order: Optional[Sequence[str]] = None, title: str = "",
                       xlabel: str = "trainable parameters (% of frozen model)",
                       ylabel: str = "MSE (mean over seeds; bars: min–max)",
                       extra_points: Sequence[Dict[str, Any]] = (), logy: Optional[bool] = None,
                       note: str = "", hline_methods: Sequence[str] = ("Frozen",)):
    """MSE (best-of-grid mean, min–max over seeds as error bars) vs trainable % per method.

    rows: output of :func:`synthetic.results.best_of_grid`. extra_points: dicts ``{"x", "y", "label"}`` drawn
    as stars (e.g. a theory construction's budget and MSE; below a log axis: on its bottom edge, value
    written). hline_methods: one-budget methods (default Frozen) drawn as dashed horizontal lines. logy:
    None decides from the rows' values (:func:`choose_yscale`), True / False force a log / linear axis.
    Points whose best lr is still at an edge of its grid (row ``lr_at_edge``) are hollow, with one legend
    entry. The x-axis is broken before 100 % when every other point is at ≤ 65 %. Returns the Figure.
    """
    from matplotlib.figure import Figure

    by_method: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_method[r[method_key]].append(r)
    order = [m for m in list(method_order or []) + sorted(m for m in by_method if m not in (method_order or []))
             if m in by_method]
    pts_of = {m: sorted((r for r in by_method[m] if r.get("mean") is not None), key=lambda r: r["trainable_pct"])
              for m in order}
    hline = [m for m in order if m in hline_methods and pts_of[m]]
    values = [v for m in order for r in pts_of[m] for v in (r["mean"], r.get("min"), r.get("max"))]
    scale = choose_yscale(values) if logy is None else ("log" if logy else "linear")
    limits = _log_limits(values) if scale == "log" else None
    bottom = limits[0] if limits else None
    # a linear axis is clipped above the other points when a one-budget line (e.g. Frozen) lies far above
    # them (its value is written in the plot instead); on a log axis it always fits
    others = [v for m in order if m not in hline for r in pts_of[m] for v in (r["mean"], r.get("min"), r.get("max"))
              if v is not None] + [p["y"] for p in extra_points]
    off_scale = [m for m in hline if scale != "log" and others and pts_of[m][0]["mean"] > 1.5 * max(others)]
    xs = [r["trainable_pct"] for m in order if m not in hline for r in pts_of[m]] + [p["x"] for p in extra_points]
    fig = Figure(figsize=SINGLE_SIZE)
    (axes,) = _panel_axes(fig, [_x_ranges(xs)])
    for ax in axes:
        _set_yscale(ax, scale, limits)
        if off_scale:
            ax.set_ylim(bottom=min(0.0, min(others)) - 0.04 * max(others), top=1.15 * max(others))
    n_edge, drawn = 0, []  # drawn: legend labels in drawing order
    for k, ax in enumerate(axes):
        for m in order:
            st, pts = method_style(m), pts_of[m]
            n_div = sum(r.get("n_diverged", 0) for r in by_method[m])
            n_seeds = max((r.get("n_seeds", 0) for r in pts), default=0)
            label = f"{m} ({n_seeds} seed{'s' if n_seeds != 1 else ''}" + (f", {n_div} diverged)" if n_div else ")")
            if not pts:
                ax.plot([], [], color=st["color"], marker=st["marker"], label=label + " [no finite runs]")
                drawn.append(label + " [no finite runs]")
                continue
            if m in hline:
                r = pts[0]
                lab = f"{m}: {r['mean']:.3g} (min {r['min']:.3g}, max {r['max']:.3g}, {r['n_seeds']} seeds)"
                if m in off_scale:
                    lab += ", off scale"
                    if k == 0:
                        ax.annotate(f"{m} = {r['mean']:.3g} (off scale)", xy=(0.02, 0.97), xycoords="axes fraction",
                                    va="top", fontsize=FONTS["annot"], color=st["color"])
                ax.axhline(r["mean"], ls="--", lw=LW, color=st["color"], label=lab)
                drawn.append(lab)
                continue
            err = [[r["mean"] - r["min"] for r in pts], [r["max"] - r["mean"] for r in pts]]
            edge = [bool(r.get("lr_at_edge")) for r in pts]
            _series(ax, [r["trainable_pct"] for r in pts], [r["mean"] for r in pts], err, color=st["color"],
                    marker=st["marker"], ms=MS, ls="-", label=label, edge=edge)
            drawn.append(label)
            n_edge += sum(edge) if k == 0 else 0
        for p in extra_points:
            color = p.get("color", "k")
            _series(ax, [p["x"]], [p["y"]], None, color=color, marker="*", ms=13, ls="none", label=p["label"],
                    bottom=bottom, below_text=lambda y: f"{y:.1e} (below the axis)")
            drawn.append(p["label"])
    handles, labels = axes[0].get_legend_handles_labels()  # lines first, then error bars: back to draw order
    handles = [h for _, h in sorted(zip(labels, handles), key=lambda lh: drawn.index(lh[0]))]
    if n_edge:
        handles.append(_hollow_handle(n_edge))
    _style_axes(axes[0], xlabel, ylabel, title)
    for ax in axes[1:]:
        _style_axes(ax)
    axes[-1].legend(handles=handles, fontsize=FONTS["legend"], loc="upper left", bbox_to_anchor=(1.04, 1.0),
                    borderaxespad=0.0, frameon=False)
    _note(fig, note)
    fig.tight_layout(rect=(0, 0.05 if note else 0, 1, 1), w_pad=W_PAD)
    return fig


def plot_mse_vs_params(rows: Sequence[Dict[str, Any]], out_stem, **options) -> List[str]:
    """:func:`draw_mse_vs_params` (``options``: its keyword arguments) saved as ``<out_stem>.png`` and ``.pdf``;
    returns their paths."""
    return save(draw_mse_vs_params(rows, **options), out_stem)


# ----------------------------------------------------------------------------- Figure 2 three ways
FIG2_PANELS = (("paper", "official_code", "preset_seed123"), ("paper", "preset_seeds", "default_conventions"))
FIG2_TITLES = ("(a) seed 123: paper / official code / official preset",
               "(b) over seeds: paper / official preset / own conventions")


def _row_major(handles: list, ncol: int) -> list:
    """Reorder legend handles so that matplotlib's column-major fill reads row by row."""
    nrow = -(-len(handles) // ncol)
    rows = [handles[i * ncol:(i + 1) * ncol] for i in range(nrow)]
    return [r[c] for c in range(ncol) for r in rows if c < len(r)]


def draw_fig2_three_ways(data: Dict):
    """The figure of :func:`plot_fig2_three_ways`; returns the Figure."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    drawn = [(src, p) for srcs in FIG2_PANELS for src in srcs for p in data["sources"].get(src) or []]
    values = [v for _, p in drawn for v in (p["mse"], p.get("min"), p.get("max"))]
    scale = choose_yscale(values)
    limits = _log_limits(values) if scale == "log" else None
    bottom = limits[0] if limits else None
    fig = Figure(figsize=(12, 6.3))
    panels = _panel_axes(fig, [_x_ranges([p["trainable_pct"] for src in srcs for p in data["sources"].get(src) or []])
                               for srcs in FIG2_PANELS])
    for ax in (a for axes in panels for a in axes):
        _set_yscale(ax, scale, limits)
    methods, n_edge = set(), 0
    for axes, srcs, title in zip(panels, FIG2_PANELS, FIG2_TITLES):
        for k, ax in enumerate(axes):
            for src in srcs:
                by_m = defaultdict(list)
                for p in data["sources"].get(src) or []:
                    by_m[p["method"]].append(p)
                st = SOURCE_STYLE[src]
                for m, ps in by_m.items():
                    methods.add(m)
                    ps = sorted(ps, key=lambda p: p["trainable_pct"])
                    err = ([[p["mse"] - p["min"] for p in ps], [p["max"] - p["mse"] for p in ps]]
                           if "min" in ps[0] else None)
                    edge = [bool(p.get("lr_at_edge")) for p in ps]
                    _series(ax, [p["trainable_pct"] for p in ps], [p["mse"] for p in ps], err,
                            color=method_style(m)["color"], marker=st["marker"], ms=st["ms"], ls=st["ls"], edge=edge,
                            bottom=bottom, below_text=lambda y: f"{y:g} (below the axis)")
                    n_edge += sum(edge) if k == 0 else 0
            _style_axes(ax, title=title if k == 0 else "")
        axes[0].set_xlabel("trainable parameters (%)", fontsize=FONTS["label"])
    for axes in panels[1:]:
        axes[0].tick_params(axis="y", which="both", labelleft=False)
    panels[0][0].set_ylabel("MSE (best training-batch loss)", fontsize=FONTS["label"])
    order = [m for m in METHOD_STYLE if m in methods] + sorted(m for m in methods if m not in METHOD_STYLE)
    fig.legend(handles=[Line2D([], [], color=method_style(m)["color"], lw=4, label=m) for m in order],
               loc="lower center", bbox_to_anchor=(0.5, 0.145), ncol=len(order), fontsize=FONTS["legend"] + 1,
               frameon=False, title="colour: method", title_fontsize=FONTS["legend"] + 1)
    src_handles = []
    for s in [s for s in SOURCE_STYLE if data["sources"].get(s)]:
        lab = SOURCE_LABELS[s]
        if s == "preset_seeds" and data["sources"].get("preset_seed123"):
            continue  # same look as preset_seed123: one entry for both
        if s == "preset_seed123" and data["sources"].get("preset_seeds"):
            lab = "this toolkit, official preset ((a) seed 123, best lr; (b) mean over seeds, bars min–max)"
        src_handles.append(Line2D([], [], color="k", marker=SOURCE_STYLE[s]["marker"], ms=SOURCE_STYLE[s]["ms"] - 1,
                                  ls=SOURCE_STYLE[s]["ls"], lw=LW, label=lab))
    if n_edge:
        src_handles.append(_hollow_handle(n_edge))
    fig.legend(handles=_row_major(src_handles, 2), loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=2,
               fontsize=FONTS["legend"] + 1, frameon=False, title="marker and line: source",
               title_fontsize=FONTS["legend"] + 1)
    if data.get("missing"):
        fig.text(0.01, 0.94, "missing (not drawn): " + ", ".join(data["missing"]), fontsize=FONTS["note"] + 1)
    fig.suptitle("Deep-S4 synthetic regression (Galim et al., ICML 2025, Fig. 2), three ways",
                 fontsize=FONTS["title"] + 1)
    fig.tight_layout(rect=(0, 0.235, 1, 0.98), w_pad=W_PAD)
    return fig


def plot_fig2_three_ways(data: Dict, out_stem) -> List[str]:
    """Two panels sharing a y-axis: (a) seed 123 (paper / official code / official preset), (b) over seeds
    (paper / official preset / own conventions). Colour = method, marker and line = source (the paper's
    points: stars on a dotted line), hollow = best lr at an edge of its grid. ``data``:
    :func:`synthetic.s4_fig2.collect`. Writes ``<out_stem>.png`` and ``.pdf``; returns their paths."""
    return save(draw_fig2_three_ways(data), out_stem)


# ----------------------------------------------------------------------------------- Mamba figures
LOSS_CURVE_METHODS = {"SDT": "-", "LoRA (S6+Proj)": "--"}  # method -> line style


def _shade(color: str, t: float) -> tuple:
    """``color`` mixed with white: t = 0 light (50 % white), t = 1 the colour itself."""
    from matplotlib.colors import to_rgb

    w = 0.5 * (1.0 - t)
    return tuple(c * (1 - w) + w for c in to_rgb(color))


def draw_loss_curves(records: Sequence[dict], rows: Sequence[dict], note: str = ""):
    """The figure of :func:`plot_loss_curves`; returns the Figure."""
    from matplotlib.figure import Figure

    best = {(r["method"], r["budget_label"]): r["lr"] for r in rows if r.get("lr") is not None}
    fig = Figure(figsize=SINGLE_SIZE)
    ax = fig.subplots()
    values, seeds_used = [], set()
    for m, ls in LOSS_CURVE_METHODS.items():
        seeds = [x["seed"] for x in records if x["method"] == m]
        one = {}  # one curve per budget: a results file may hold the same run twice (e.g. under two configs)
        for r in records:
            if (r["method"] == m and r.get("status") == "ok" and best.get((m, r["budget_label"])) == r["lr"]
                    and r["seed"] == min(seeds)):
                one.setdefault(r["budget_label"], r)
        recs = sorted(one.values(), key=lambda r: r["trainable_pct"])
        color = method_style(m)["color"]
        for i, r in enumerate(recs):
            seeds_used.add(r["seed"])
            y = r["loss_curve"]
            k = max(1, len(y) // 200)  # running mean over k iterations for readability
            ys = [sum(y[j:j + k]) / len(y[j:j + k]) for j in range(0, len(y), k)]
            values += ys
            ax.plot([j + k / 2 for j in range(0, len(y), k)], ys, ls=ls, lw=LW,
                    color=_shade(color, i / max(1, len(recs) - 1)),
                    label=f"{m}, {r['trainable_pct']:.2f}% (lr {r['lr']:g})")
    frozen = [r for r in records if r["method"] == "Frozen" and r.get("final_mse") is not None]
    if frozen:
        ax.axhline(frozen[0]["final_mse"], color=method_style("Frozen")["color"], lw=LW, ls=":",
                   label="Frozen (eval MSE)")
        values.append(frozen[0]["final_mse"])
    scale = choose_yscale(values)
    _set_yscale(ax, scale, _log_limits(values) if scale == "log" else None)
    seed_text = "seed " + ", ".join(str(s) for s in sorted(seeds_used)) if seeds_used else "no runs"
    _style_axes(ax, "iteration", f"training MSE ({seed_text}; running mean)",
                "Mamba regression: SDT vs. LoRA (S6+Proj), best lr per budget")
    if ax.get_legend_handles_labels()[0]:  # no runs drawn: no (empty) legend
        ax.legend(fontsize=FONTS["legend"], loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  frameon=False, title="colour: method; darker = larger budget", title_fontsize=FONTS["legend"])
    _note(fig, note)
    fig.tight_layout(rect=(0, 0.05 if note else 0, 1, 1))
    return fig


def plot_loss_curves(records: Sequence[dict], rows: Sequence[dict], path, note: str = "") -> List[str]:
    """Training loss over iterations: SDT (solid) vs LoRA (S6+Proj) (dashed), each budget at its best lr,
    the lowest seed's run; colour = method, darker = larger budget. ``path``: ``<stem>.png`` (a ``.pdf``
    beside it too); returns both paths."""
    path = Path(path)
    return save(draw_loss_curves(records, rows, note), path.with_suffix("") if path.suffix == ".png" else path)


def mamba_note(records: Sequence[dict]) -> str:
    """The run description written under the Mamba figures: backend, devices, sizes, iterations, commits."""
    r0 = records[0]
    cfg = r0.get("config", {})
    devices = ", ".join(sorted({str(r.get("device")) for r in records}))
    return (f"backend {r0.get('backend')} (mamba-ssm {r0.get('mamba_ssm_version')}), {devices}; "
            f"frozen {cfg.get('frozen_layers')}x Mamba(d_model {cfg.get('d_model')}, H {cfg.get('frozen_d_state')}), "
            f"target {cfg.get('target_layers')}x (H {cfg.get('target_d_state')}); {cfg.get('iters')} AdamW iters, "
            f"best lr per point; commits {', '.join(sorted({str(r.get('commit')) for r in records}))}")


def plot_mamba(records: Sequence[dict], rows: Sequence[dict], mse_stem, curves_path,
               method_order: Optional[Sequence[str]] = None) -> List[str]:
    """Both Mamba figures (MSE vs trainable %, loss curves) from a results file's records and their
    best-of-grid ``rows``; returns the paths written."""
    note = mamba_note(records)
    return (plot_mse_vs_params(rows, str(mse_stem), method_order=method_order, note=note,
                               title="Mamba regression: MSE vs. trainable parameters")
            + plot_loss_curves(records, rows, curves_path, note))
