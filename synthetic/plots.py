"""Every figure of the synthetic experiments (Galim et al., ICML 2025, Sec. 6: Fig. 2 and its Mamba counterpart).

One look across the figures, from one palette (:mod:`synthetic.palette`: method -> colour and marker):

- **colour = method** everywhere (colour-blind-safe, one hue per method); a figure with one source of points
  also gives each method its own marker; a figure comparing sources (``synthetic.s4.fig2``) uses the marker
  for the source, with its own legend;
- **hollow = the best lr is at an edge of its lr grid** (the optimum may lie outside the lrs tried, so the
  point is an upper bound); **diverged** runs (loss NaN/inf) are left out of the means: both explained in the
  legend;
- one-budget methods (a single point) are drawn above the others' lines, and those at the same trainable %
  side by side a few points apart (:func:`dodges`; the data are unchanged), so no marker hides another;
- **the y range shows the differences between methods**: it is fitted to the methods' points and the Frozen
  baseline; a reference point far outside it (Full fine-tuning far below, a theory construction's 1e-26, the
  paper's exact 0) is drawn as an annotated arrow at the axis edge (:func:`edge_arrow`), never by stretching
  the axis; a log axis when the values drawn span a decade or more (:func:`choose_yscale`);
- **titles name the experiment, the preset and the device** (:func:`run_title`, from the records);
- the same figure sizes, fonts (:data:`FONTS`) and marker sizes everywhere.

Drawing functions (``draw_*``) return a :class:`matplotlib.figure.Figure` (no pyplot: the caller's backend
is left alone, e.g. in notebooks); the ``plot_*`` wrappers save it as ``<stem>.png`` and ``<stem>.pdf``
(:func:`save`, PDF bytes reproducible on redraw) and return the paths. matplotlib is imported inside the
functions, so importing this module needs no matplotlib.

- :func:`plot_mse_vs_params(rows, out_stem, ...) <plot_mse_vs_params>`: best-of-grid mean MSE vs trainable %
  per method, min–max over seeds as error bars (rows of :func:`synthetic.results.best_of_grid`);
- :func:`plot_loss_curves(records, rows, path, note) <plot_loss_curves>`: Mamba training loss, SDT vs LoRA
  (S6+Proj), each budget at its best lr; :func:`plot_mamba(records, rows, mse_stem, curves_path, ...)
  <plot_mamba>`: both Mamba figures with the run description (:func:`mamba_note`) under them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from synthetic.palette import METHOD_COLORS, REFERENCE_COLORS, method_style

__all__ = ["METHOD_STYLE", "FONTS", "method_style", "choose_yscale", "wrote", "save", "save_json", "run_title",
           "edge_arrow", "focus_limits", "draw_mse_vs_params", "plot_mse_vs_params", "draw_loss_curves", "plot_loss_curves",
           "mamba_note", "plot_mamba", "HOLLOW_LABEL", "DIVERGED_LABEL", "seeds_text", "dodges"]

METHOD_STYLE: Dict[str, Dict[str, str]] = {m: method_style(m) for m in METHOD_COLORS}  # the palette, as a table
REFERENCE_METHODS = ("Full",)  # drawn, but the y range is not stretched for them (an arrow at the edge instead)

FONTS = {"title": 10, "label": 9, "tick": 8, "legend": 7, "note": 6, "annot": 7}
MS = 6  # marker size of a measured point
LW = 1.4
CAPSIZE = 2.5
DPI = 150
SINGLE_SIZE = (9.0, 4.8)  # one panel with its legend on the right
HOLLOW_LABEL = "hollow marker: best lr at the edge of the lrs tried\n(the optimum may lie beyond: an upper bound)"
DIVERGED_LABEL = "diverged: runs whose loss became NaN/inf\n(too high an lr); left out of the means"
W_PAD = 0.3  # space between a broken axis' two parts (font sizes)
FULL_BREAK = (65.0, 95.0)  # x-axis broken when every point is at <= 65 % except some at >= 95 % (Full)
LOG_RATIO = 10.0  # a log axis when max / min of the values drawn is at least this
STRETCH = 3.0  # a reference point within this factor of the methods' range widens it; beyond: an arrow
DODGE = 7.0  # points between one-budget methods drawn side by side at the same trainable % (markers stay apart)
ONE_POINT_Z = 3.5  # one-budget methods above the lines of the others (a single marker is easily hidden)


def run_title(experiment: str, records: Sequence[dict], what: str = "") -> str:
    """'<experiment>, <preset> preset, <device(s)>[<newline><what>]' from the records' ``preset`` (or their config's)
    and ``device`` fields, e.g. 'Mamba regression, paper preset, NVIDIA H100 80GB HBM3 + NVIDIA H200'."""
    presets = sorted({str(r.get("preset") or (r.get("config") or {}).get("preset")) for r in records} - {"None"})
    devices = sorted({"CPU" if str(r.get("device")).lower() == "cpu" else str(r.get("device")) for r in records
                      if r.get("device")})
    parts = [experiment] + ([" / ".join(presets) + " preset"] if presets else []) + (
        [" + ".join(devices)] if devices else [])
    return ", ".join(parts) + (f"\n{what}" if what else "")


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


def hollow_handle():
    """The legend entry that says what a hollow marker means."""
    from matplotlib.lines import Line2D

    return Line2D([], [], ls="none", marker="o", ms=MS + 1, mfc="white", mec="k", mew=1.2, label=HOLLOW_LABEL)


def text_handle(label: str):
    """A legend entry that is only text (an explanation, e.g. :data:`DIVERGED_LABEL`)."""
    from matplotlib.lines import Line2D

    return Line2D([], [], ls="none", marker="", label=label)


def focus_limits(core: Iterable[Optional[float]], refs: Iterable[Optional[float]] = (),
                 stretch: float = STRETCH) -> Optional[tuple]:
    """(bottom, top) of a log axis fitted to the ``core`` values (the methods compared, the baseline) with a
    margin of a factor 1.5; a ``refs`` value (Full, a theory point) widens it only when it lies within a factor
    ``stretch`` of the core range, else it is left out (drawn by :func:`edge_arrow`). None: no positive value."""
    v = _positive(core)
    if not v:
        return _log_limits(refs)
    lo, hi = min(v), max(v)
    for r in _positive(refs):
        lo, hi = (r if lo / stretch <= r < lo else lo), (r if hi < r <= hi * stretch else hi)
    return lo / 1.5, hi * 1.5


def edge_arrow(ax, x: float, text: str, *, side: str = "bottom", color: str = "k", marker: Optional[str] = None,
               ms: float = MS, dx: float = 0.0) -> None:
    """A point outside the y range: its marker (if any) on the axis' ``side`` edge ("bottom" / "top") at ``x``,
    and an arrow pointing to it from ``text`` (its name and value), inside the axes; ``dx``: the text's
    horizontal offset in points (to keep it off the data)."""
    from matplotlib.transforms import blended_transform_factory

    if not ax.get_autoscalex_on() and not _in_view(ax, x):
        return
    if ax.get_autoscalex_on() and ax.get_xscale() == "linear":  # a plain axis: widen it to hold the point (a broken axis' parts stay as set)
        lo, hi = ax.get_xlim()
        pad = 0.04 * max(hi - lo, 1e-9)
        ax.set_xlim(min(lo, x - pad), max(hi, x + pad))
    tr = blended_transform_factory(ax.transData, ax.transAxes)
    y0, up = (0.0, 1) if side == "bottom" else (1.0, -1)
    if marker:
        ax.plot([x], [y0], transform=tr, ls="none", marker=marker, ms=ms, color=color, clip_on=False, zorder=5)
    ha = "center" if dx == 0 else ("left" if dx > 0 else "right")
    ax.annotate(text, xy=(x, y0), xycoords=tr, xytext=(dx, up * 34), textcoords="offset points", ha=ha,
                va="bottom" if up > 0 else "top", fontsize=FONTS["annot"], color=color, zorder=6,
                arrowprops=dict(arrowstyle="-|>", color=color, lw=1.0, shrinkA=1, shrinkB=ms / 2 + 1))


def _outside(y: Optional[float], limits: Optional[tuple]) -> Optional[str]:
    """"bottom" / "top" when ``y`` lies below / above the log axis ``limits`` (or is ≤ 0 on it), else None."""
    if limits is None or y is None:
        return None
    return "bottom" if not y > limits[0] else ("top" if y > limits[1] else None)


def _series(ax, x, y, err, *, color, marker, ms, ls, label=None, edge=(), alpha=1.0, zorder=3.0,
            dx: float = 0.0) -> None:
    """One method's points (errorbars when ``err``), hollow where ``edge[i]``; ``dx``: drawn that many points to
    the right (a dodge: two points at the same x both stay visible; the data are unchanged)."""
    from matplotlib.transforms import ScaledTranslation

    tr = ax.transData + ScaledTranslation(dx / 72.0, 0.0, ax.figure.dpi_scale_trans) if dx else ax.transData
    kw = dict(color=color, marker=marker, ms=ms, ls=ls, lw=LW, zorder=zorder, label=label, alpha=alpha, transform=tr)
    if err is not None:
        ax.errorbar(x, y, yerr=err, capsize=CAPSIZE, elinewidth=0.8, **kw)
    else:
        ax.plot(x, y, **kw)
    hx = [(xi, yi) for xi, yi, e in zip(x, y, edge) if e]
    if hx:  # hollow: the optimum may lie outside the lrs tried
        ax.plot([p[0] for p in hx], [p[1] for p in hx], ls="none", marker=marker, ms=ms + 1, mfc="white", mec=color,
                mew=1.2, zorder=zorder + 1, alpha=alpha, transform=tr)


def _short(y: float) -> str:
    return "0" if y == 0 else f"{y:.3g}"


def seeds_text(n: int) -> str:
    """'1 seed', '3 seeds'."""
    return f"{n} seed{'' if n == 1 else 's'}"


def dodges(points: Dict[str, float], step: float = DODGE) -> Dict[str, float]:
    """Horizontal offsets (points) for one-point series: those at the same x (to 3 significant digits) are set
    side by side, ``step`` apart, centred on x; a series alone at its x gets 0. ``points``: name -> x."""
    groups: Dict[str, List[str]] = defaultdict(list)
    for name, x in points.items():
        groups[f"{x:.3g}"].append(name)
    return {n: (i - (len(g) - 1) / 2) * step for g in groups.values() for i, n in enumerate(g)}


def wrote(path) -> None:
    """The line printed (stdout) for every figure and summary file a command writes: ``wrote <path>``. (A sweep
    says the same of its results file, :func:`synthetic.runner.run_sweep`.)"""
    print(f"wrote {path}", flush=True)


def save(fig, out_stem) -> List[str]:
    """Write ``<out_stem>.png`` (``DPI``) and ``<out_stem>.pdf`` (no creation date: same bytes on redraw), each
    atomically (:func:`synthetic.atomic.atomic_write`), and say so (:func:`wrote`)."""
    from synthetic.atomic import atomic_write

    out_stem = str(out_stem)
    Path(out_stem).parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem + ".png", out_stem + ".pdf"]
    atomic_write(paths[0], lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))
    atomic_write(paths[1], lambda tmp: fig.savefig(tmp, metadata={"CreationDate": None}, format="pdf"))
    for path in paths:
        wrote(path)
    return paths


def save_json(path, data, indent: Optional[int] = 1) -> str:
    """``data`` as JSON at ``path`` (:func:`synthetic.atomic.write_json_atomic`: strict JSON, atomic), and say so
    (:func:`wrote`). Returns the path as a string."""
    from synthetic.atomic import write_json_atomic

    write_json_atomic(path, data, indent=indent)
    wrote(path)
    return str(path)


def _note(fig, note: str) -> None:
    if note:
        fig.text(0.01, 0.005, note, fontsize=FONTS["note"], va="bottom", ha="left", wrap=True)


# --------------------------------------------------------------------------------- MSE vs params
def draw_mse_vs_params(rows: Sequence[Dict[str, Any]], *, method_key: str = "method",
                       method_order: Optional[Sequence[str]] = None, title: str = "",
                       xlabel: str = "trainable parameters (% of frozen model)",
                       ylabel: str = "MSE (mean over seeds; bars: min–max)",
                       extra_points: Sequence[Dict[str, Any]] = (), logy: Optional[bool] = None,
                       note: str = "", hline_methods: Sequence[str] = ("Frozen",),
                       reference_methods: Sequence[str] = REFERENCE_METHODS):
    """MSE (best-of-grid mean, min–max over seeds as error bars) vs trainable % per method.

    rows: output of :func:`synthetic.results.best_of_grid`. extra_points: dicts ``{"x", "y", "label"}`` (optional
    ``"short"``: the text by its arrow) drawn as black stars (e.g. a theory construction's budget and MSE).
    hline_methods: one-budget methods (default Frozen) drawn as dashed horizontal lines. The y range is fitted
    to the other methods and the lines (:func:`focus_limits`); ``reference_methods`` (Full) and the extra points
    widen it only when close to it, else they sit on its edge with an annotated arrow. logy: None decides from
    the values in range (:func:`choose_yscale`), True / False force a log / linear axis. Points whose best lr
    is still at an edge of its grid (row ``lr_at_edge``) are hollow; diverged runs are counted in the legend;
    both explained there. The x-axis is broken before 100 % when every other point is at ≤ 65 %. Returns the
    Figure.
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
    spread = lambda m: [v for r in pts_of[m] for v in (r["mean"], r.get("min"), r.get("max"))]  # noqa: E731
    core = [v for m in order if m not in reference_methods and m not in hline for v in spread(m)]
    lines = [pts_of[m][0]["mean"] for m in hline]
    refs = [r["mean"] for m in order if m in reference_methods for r in pts_of[m]] + [p["y"] for p in extra_points]
    scale = choose_yscale(core + lines + refs) if logy is None else ("log" if logy else "linear")
    limits = focus_limits(core, lines + refs) if scale == "log" else None
    # a linear axis is clipped above the other points when a one-budget line (e.g. Frozen) lies far above
    # them (its value is written in the plot instead); on a log axis it is part of the range
    others = [v for v in core + refs if v is not None]
    off_scale = [m for m in hline if scale != "log" and others and pts_of[m][0]["mean"] > 1.5 * max(others)]
    xs = [r["trainable_pct"] for m in order if m not in hline for r in pts_of[m]] + [p["x"] for p in extra_points]
    fig = Figure(figsize=SINGLE_SIZE)
    (axes,) = _panel_axes(fig, [_x_ranges(xs)])
    for ax in axes:
        _set_yscale(ax, scale, limits)
        if off_scale:
            ax.set_ylim(bottom=min(0.0, min(others)) - 0.04 * max(others), top=1.15 * max(others))
    n_edge, n_div_all, drawn, arrows = 0, 0, [], []  # drawn: legend labels in drawing order
    dx = dodges({m: pts_of[m][0]["trainable_pct"] for m in order
                 if m not in hline and len(pts_of[m]) == 1 and _outside(pts_of[m][0]["mean"], limits) is None})
    for k, ax in enumerate(axes):
        for m in order:
            st, pts = method_style(m), pts_of[m]
            n_div = sum(r.get("n_diverged", 0) for r in by_method[m])
            n_runs = sum(r.get("n_runs", 0) for r in by_method[m])
            n_seeds = max((r.get("n_seeds", 0) for r in pts), default=0)
            label = f"{m} ({seeds_text(n_seeds)}" + (
                f"; {n_div} of {n_runs} runs diverged)" if n_div and n_runs else f"; {n_div} diverged)" if n_div
                else ")")
            n_div_all += n_div if k == 0 else 0
            if not pts:
                ax.plot([], [], color=st["color"], marker=st["marker"], label=label + " [no finite runs]")
                drawn.append(label + " [no finite runs]")
                continue
            if m in hline:
                r = pts[0]
                vmin, vmax = f"{r['min']:.3g}", f"{r['max']:.3g}"  # equal when the seeds share the frozen model
                minmax = "" if vmin == vmax else f"min {vmin}, max {vmax}, "
                lab = f"{m}: {r['mean']:.3g} ({minmax}{seeds_text(r['n_seeds'])})"
                if m in off_scale:
                    lab += ", off scale"
                    if k == 0:
                        ax.annotate(f"{m} = {r['mean']:.3g} (off scale)", xy=(0.02, 0.97), xycoords="axes fraction",
                                    va="top", fontsize=FONTS["annot"], color=st["color"])
                if _outside(r["mean"], limits):  # far above the methods: an arrow at the top edge
                    lab += " (above the axis)"
                    lo, hi = ax.get_xlim()
                    if k == 0:
                        arrows.append((ax, lo + 0.75 * (hi - lo), f"{m}\n{_short(r['mean'])}",
                                       _outside(r["mean"], limits), {"color": st["color"], "marker": None}))
                ax.axhline(r["mean"], ls="--", lw=LW, color=st["color"], label=lab)
                drawn.append(lab)
                continue
            inside = [r for r in pts if _outside(r["mean"], limits) is None]
            arrows += [(ax, r["trainable_pct"], f"{m}\n{_short(r['mean'])}", _outside(r["mean"], limits), st)
                       for r in pts if _outside(r["mean"], limits)]
            err = [[r["mean"] - r["min"] for r in inside], [r["max"] - r["mean"] for r in inside]]
            edge = [bool(r.get("lr_at_edge")) for r in inside]
            _series(ax, [r["trainable_pct"] for r in inside], [r["mean"] for r in inside], err, color=st["color"],
                    marker=st["marker"], ms=MS, ls="-", label=label, edge=edge, dx=dx.get(m, 0.0),
                    zorder=ONE_POINT_Z if len(pts) == 1 else 3.0)
            drawn.append(label)
            n_edge += sum(edge) if k == 0 else 0
        for p in extra_points:
            color = p.get("color", REFERENCE_COLORS["Theorem 1 construction"])
            side = _outside(p["y"], limits)
            ax.plot([] if side else [p["x"]], [] if side else [p["y"]], color=color, marker="*", ms=13, ls="none",
                    label=p["label"])
            drawn.append(p["label"])
            if side:
                arrows.append((ax, p["x"], p.get("short", f"{p['label'].split(':')[0]}\n{_short(p['y'])}"), side,
                               {"color": color, "marker": "*"}))
    _style_axes(axes[0], xlabel, ylabel, title)
    for ax in axes[1:]:
        _style_axes(ax)
    for ax, x, text, side, st in arrows:  # after the axes' limits are final
        edge_arrow(ax, x, text, side=side, color=st["color"], marker=st["marker"], ms=13 if st["marker"] == "*" else MS)
    handles, labels = axes[0].get_legend_handles_labels()  # lines first, then error bars: back to draw order
    handles = [h for _, h in sorted(zip(labels, handles), key=lambda lh: drawn.index(lh[0]))]
    if n_edge:
        handles.append(hollow_handle())
    if n_div_all:
        handles.append(text_handle(DIVERGED_LABEL))
    axes[-1].legend(handles=handles, fontsize=FONTS["legend"], loc="upper left", bbox_to_anchor=(1.04, 1.0),
                    borderaxespad=0.0, frameon=False)
    _note(fig, note)
    fig.tight_layout(rect=(0, 0.05 if note else 0, 1, 1), w_pad=W_PAD)
    return fig


def plot_mse_vs_params(rows: Sequence[Dict[str, Any]], out_stem, **options) -> List[str]:
    """:func:`draw_mse_vs_params` (``options``: its keyword arguments) saved as ``<out_stem>.png`` and ``.pdf``;
    returns their paths."""
    return save(draw_mse_vs_params(rows, **options), out_stem)


# ----------------------------------------------------------------------------------- Mamba figures
LOSS_CURVE_METHODS = {"SDT": "-", "LoRA (S6+Proj)": "--"}  # method -> line style


def _shade(color: str, t: float) -> tuple:
    """``color`` mixed with white: t = 0 light (50 % white), t = 1 the colour itself."""
    from matplotlib.colors import to_rgb

    w = 0.5 * (1.0 - t)
    return tuple(c * (1 - w) + w for c in to_rgb(color))


def draw_loss_curves(records: Sequence[dict], rows: Sequence[dict], note: str = "",
                     experiment: str = "Mamba regression"):
    """The figure of :func:`plot_loss_curves` (``experiment``: the title's first words); returns the Figure."""
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
                run_title(experiment, records, "training loss: SDT vs. LoRA (S6+Proj), best lr per budget"))
    if ax.get_legend_handles_labels()[0]:  # no runs drawn: no (empty) legend
        ax.legend(fontsize=FONTS["legend"], loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  frameon=False, title="colour: method; darker = larger budget", title_fontsize=FONTS["legend"])
    _note(fig, note)
    fig.tight_layout(rect=(0, 0.05 if note else 0, 1, 1))
    return fig


def plot_loss_curves(records: Sequence[dict], rows: Sequence[dict], path, note: str = "",
                     experiment: str = "Mamba regression") -> List[str]:
    """Training loss over iterations: SDT (solid) vs LoRA (S6+Proj) (dashed), each budget at its best lr,
    the lowest seed's run; colour = method, darker = larger budget. ``path``: ``<stem>.png`` (a ``.pdf``
    beside it too); returns both paths."""
    path = Path(path)
    return save(draw_loss_curves(records, rows, note, experiment),
                path.with_suffix("") if path.suffix == ".png" else path)


def mamba_note(records: Sequence[dict]) -> str:
    """The run description written under the Mamba figures: backend, devices, sizes, iterations, commits."""
    r0 = records[0]
    cfg = r0.get("config", {})
    devices = ", ".join(sorted({str(r.get("device")) for r in records}))
    pairs = sorted({int(r.get("model_seed", cfg.get("model_seed", 0)) or 0) for r in records})
    return (f"backend {r0.get('backend')} (mamba-ssm {r0.get('mamba_ssm_version')}), {devices}; "
            f"frozen/target pair (model seed) {', '.join(map(str, pairs))}; "
            f"frozen {cfg.get('frozen_layers')}x Mamba(d_model {cfg.get('d_model')}, H {cfg.get('frozen_d_state')}), "
            f"target {cfg.get('target_layers')}x (H {cfg.get('target_d_state')}); {cfg.get('iters')} AdamW iters, "
            f"best lr per point; commits {', '.join(sorted({str(r.get('commit')) for r in records}))}")


def plot_mamba(records: Sequence[dict], rows: Sequence[dict], mse_stem, curves_path,
               method_order: Optional[Sequence[str]] = None, partial: str = "") -> List[str]:
    """Both Mamba figures (MSE vs trainable %, loss curves) from a results file's records and their
    best-of-grid ``rows``; returns the paths written. ``partial``: the note of an incomplete sweep, in the titles."""
    note = mamba_note(records)
    extra = {r["method"] for r in records} - {"Frozen", "LoRA (Proj)", "LoRA (S6+Proj)", "SDT", "SDT + LoRA", "Full"}
    name = "Mamba regression" + (", all PEFT methods" if extra else "") + (f" ({partial})" if partial else "")
    return (plot_mse_vs_params(rows, str(mse_stem), method_order=method_order, note=note,
                               title=run_title(name, records, "MSE vs. trainable parameters"))
            + plot_loss_curves(records, rows, curves_path, note, name))
