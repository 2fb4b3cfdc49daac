"""Summary table, JSON and figure of the Theorem 1 training study (:mod:`synthetic.s4.theorem1_study`).

From the per-variant results files (``theorem1_training_<preset>_{linear,relu}.jsonl``): per (variant, arm, budget)
the best learning rate by mean best MSE over seeds (``synthetic.results.best_of_grid`` with the study's lr policy),
with min-max over seeds, the mean final MSE (last 2 % of the curve), the start MSE (Algorithm 1 arms start at the
frozen model: the frozen MSE), the selection's agreement with the construction, and the exact solution's float64
MSE (the floor). Written to ``theorem1_training.{json,png,pdf}`` for the paper preset and
``theorem1_training_<preset>.*`` for the others.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Dict, List, Tuple

from synthetic.plots import save_json
from synthetic.results import LrPolicy, ResultsFile, ResultsFileError, best_of_grid, edge_label, exit_error

VARIANT_FILES = ("linear", "relu")
VARIANT_OF = {"identity": "linear", "relu": "relu"}  # a record's activation -> its variant (file name)


def _stem(out: str, preset: str) -> Path:
    return Path(out) / ("theorem1_training" if preset == "paper" else f"theorem1_training_{preset}")


def _mean(vals):
    vals = [v for v in vals if v is not None]
    return statistics.fmean(vals) if vals else None


def summarise(records: List[Dict]) -> List[Dict]:
    """One row per (arm, budget) of one variant's run records (see the module docstring)."""
    if not records:
        return []
    policy = LrPolicy.from_config(_ns(records[0]["study_config"]))
    precisions = {r.get("precision") for r in records}
    records = [dict(r, arm=f"{r['arm']} [{r.get('precision')}]" if len(precisions) > 1 else r["arm"])
               for r in records]  # a file with runs at two matmul precisions keeps them apart
    rows = best_of_grid(records, group_keys=("arm", "budget_label"), lr_policy=policy)
    out = []
    for row in rows:
        mine = [r for r in records if r["arm"] == row["arm"] and r["budget_label"] == row["budget_label"]]
        at_lr = [r for r in mine if r["lr"] == row["lr"] and r.get("status") == "ok"]
        sel = [r["selection"] for r in mine if r.get("selection")]
        out.append({
            "arm": row["arm"], "budget": mine[0]["budget"], "budget_label": row["budget_label"],
            "trainable_pct": row["trainable_pct"], "iters": mine[0]["iters"], "lr": row["lr"],
            "lr_at_edge": edge_label(row) or None, "lrs_tried": row["lrs_tried"], "n_seeds": row["n_seeds"],
            "lrs_tied": row["lrs_tied"],
            "best_mse_mean": row["mean"], "best_mse_min": row["min"], "best_mse_max": row["max"],
            "final_mse_mean": _mean(r.get("final_mse") for r in at_lr),
            "start_mse_mean": _mean(r.get("start_mse") for r in at_lr),
            "exact_mse64_mean": _mean(r.get("exact_mse64") for r in mine),
            "selection_valid_layout": _mean(s["valid_layout"] for s in sel) if sel else None,
            "selection_jaccard": _mean(s["jaccard"] for s in sel) if sel else None,
            "selection_overlap": _mean(s["pairwise_overlap"] for s in sel) if sel else None,
            "curve": _best_curve(at_lr),
        })
    return out


def _ns(d: Dict):
    from types import SimpleNamespace

    return SimpleNamespace(**d)


def _best_curve(recs: List[Dict]):
    """The mean loss curve over seeds at the chosen lr ([[iteration, loss], ...])."""
    curves = [r["loss_curve"] for r in recs if r.get("loss_curve")]
    if not curves:
        return []
    n = min(len(c) for c in curves)
    return [[curves[0][i][0], statistics.fmean(c[i][1] for c in curves)] for i in range(n)]


def table(rows_by_variant: Dict[str, List[Dict]]) -> str:
    lines = ["| variant | arm | budget | trainable % | iters | best MSE mean (min-max, seeds) | final MSE | "
             "start MSE | lr (edge) | Alg. 1 valid layout / Jaccard |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for v, rows in rows_by_variant.items():
        for r in rows:
            f = lambda x: "n/a" if x is None else f"{x:.3g}"  # noqa: E731
            sel = ("-" if r["selection_valid_layout"] is None
                   else f"{r['selection_valid_layout']:.2f} / {r['selection_jaccard']:.2f}")
            lines.append(f"| {v} | {r['arm']} | {r['budget_label']} | {r['trainable_pct']:.1f} | {r['iters']} | "
                         f"{f(r['best_mse_mean'])} ({f(r['best_mse_min'])}-{f(r['best_mse_max'])}, {r['n_seeds']}) | "
                         f"{f(r['final_mse_mean'])} | {f(r['start_mse_mean'])} | {r['lr']:g}"
                         f"{' (' + r['lr_at_edge'] + ')' if r['lr_at_edge'] else ''}{_tie_note(r)} | {sel} |")
    return "\n".join(lines)


def _tie_note(r: Dict) -> str:
    """" (best MSE tied at N lrs LO-HI: lowest final MSE)" where the best MSE could not tell the lrs apart (e.g. an
    exact start no lr improves on): the lr shown is the tied one with the lowest final MSE."""
    tied = r.get("lrs_tied") or []
    return f" (best MSE tied at {len(tied)} lrs {min(tied):g}-{max(tied):g}: lowest final MSE)" if tied else ""


def summarise_files(out: str, preset: str) -> Tuple[Dict[str, List[Dict]], str]:
    """Every variant file of ``preset`` in ``out`` summarised: (rows per variant, the devices that ran them)."""
    rows_by_variant, seen = {}, set()
    for v in VARIANT_FILES:
        rf = ResultsFile(Path(out) / f"theorem1_training_{preset}_{v}.jsonl")
        try:
            loaded = rf.read()
        except ResultsFileError as e:
            exit_error(str(e))
        recs = {}
        for r, line in zip(loaded, loaded.lines):
            # the variant is the records' activation, never the file name's
            if r.get("kind") == "run" and (VARIANT_OF.get(r.get("activation")) != v or r.get("preset") != preset):
                exit_error(f"{loaded.path}, line {line}: a record of activation {r.get('activation')!r}, preset "
                           f"{r.get('preset')!r} in the file of variant {v!r}, preset {preset!r}; not drawn")
            if r.get("kind") == "run":
                recs.setdefault(r["key"], r)  # a run trained twice (e.g. a duplicated group) counts once
                seen.add("CPU" if str(r.get("device")).lower() == "cpu" else str(r.get("device")))
        if recs:
            rows_by_variant[v] = summarise(list(recs.values()))
    rows_by_variant = {k: v for k, v in rows_by_variant.items() if v}
    if not rows_by_variant:
        exit_error(f"{out}: no theorem1_training_{preset}_*.jsonl results (run python -m synthetic.s4_theorem1)")
    return rows_by_variant, " + ".join(sorted(seen - {"None"}))


def save_summary(rows_by_variant: Dict[str, List[Dict]], out: str, preset: str) -> str:
    """The summary JSON of :func:`summarise_files`' rows (``theorem1_training[_<preset>].json``); returns its path."""
    return save_json(_stem(out, preset).with_suffix(".json"), {"preset": preset, "variants": rows_by_variant})


def figure(rows_by_variant: Dict[str, List[Dict]], out: str, preset: str, devices: str = "") -> List[str]:
    """The figure (:func:`plot`) of :func:`summarise_files`' rows, beside the summary JSON."""
    return plot(rows_by_variant, _stem(out, preset), preset, devices)


# ------------------------------------------------------------------------------------------- figure
ARM_LABELS = {"SDT (Alg. 1)": "(a) SDT, Algorithm 1's selection", "SDT + LoRA (Alg. 1)": "(a) SDT + LoRA, Algorithm 1's",
              "Oracle masks": "(b) the construction's masks"}  # what the README calls each arm
NOISE_SERIES = (("start_mse_mean", "at the start (after the noise)", "x", ":"), ("best_mse_mean", "best", "o", "-"),
                ("final_mse_mean", "final (last 2 %)", "s", "--"))


def plot(rows_by_variant: Dict[str, List[Dict]], stem: Path, preset: str, devices: str = "") -> List[str]:
    """Rows: variants; columns: (a) Algorithm 1 vs (b) the construction's masks over budgets, (c) training
    started at the exact solution plus noise, (d) loss curves at the theorem's budget. Each panel's y range
    fits its curves; the construction's float64 MSE and the frozen MSE, where outside it, are arrows at its
    edge. Colour = arm (:mod:`synthetic.palette`)."""
    from matplotlib.figure import Figure

    from synthetic.plots import FONTS, save

    variants = list(rows_by_variant)
    fig = Figure(figsize=(16, 4.6 * len(variants)))
    axes = fig.subplots(len(variants), 3, squeeze=False)
    for i, v in enumerate(variants):
        rows = rows_by_variant[v]
        floor = _mean(r["exact_mse64_mean"] for r in rows)
        frozen = _mean(r["start_mse_mean"] for r in rows if _base(r["arm"]) in ("SDT (Alg. 1)", "SDT + LoRA (Alg. 1)"))
        x_construction = next((r["trainable_pct"] for r in rows if _base(r["arm"]).startswith("Oracle start")), None)
        _panel_budgets(axes[i][0], v, rows, floor, frozen, x_construction)
        _panel_noise(axes[i][1], v, rows, floor, frozen)
        _panel_curves(axes[i][2], v, rows, floor, frozen)
    what = "deep S4 (ReLU and linear variants)" if len(variants) > 1 else f"deep S4 ({variants[0]})"
    fig.suptitle(f"Theorem 1 vs training, {what}, {preset} preset{', ' + devices if devices else ''}: "
                 "why SDT does not reach the construction's zero", fontsize=FONTS["title"] + 2)
    fig.tight_layout(rect=(0, 0, 1, 0.97), h_pad=2.0)
    return save(fig, stem)


def _floor_arrows(ax, floor, frozen, x, hi, dx=0.0) -> None:
    """The construction's float64 MSE (a star on the bottom edge at ``x``, text ``dx`` points aside) and the
    frozen MSE (a dashed line; a legend entry when above the range's top ``hi``)."""
    from synthetic.palette import METHOD_COLORS, REFERENCE_COLORS
    from synthetic.plots import edge_arrow

    if floor is not None and x is not None:
        edge_arrow(ax, x, f"Theorem 1 construction (float64):\nMSE {floor:.1e}, below the axis", side="bottom",
                   color=REFERENCE_COLORS["Theorem 1 construction"], marker="*", ms=12, dx=dx)
    if frozen is not None:
        above = frozen > hi
        ax.axhline(frozen, color=METHOD_COLORS["Frozen"], ls="--", lw=1,
                   label=f"frozen model: {frozen:.3g}" + (" (above the axis)" if above else ""))


def _limits(ax, values) -> tuple:
    from synthetic.plots import _set_yscale, focus_limits

    lim = focus_limits(values)
    _set_yscale(ax, "log", lim)
    return lim


def _panel_budgets(ax, v, rows, floor, frozen, x_construction) -> None:
    from synthetic.palette import method_style
    from synthetic.plots import MS, _series, _style_axes, hollow_handle, seeds_text

    values, n_edge = [], 0
    for arm, label in ARM_LABELS.items():
        pts = sorted((r for r in rows if _base(r["arm"]) == arm and r["best_mse_mean"] is not None),
                     key=lambda r: r["trainable_pct"])
        if not pts:
            continue
        st = method_style(arm)
        edge = [bool(r["lr_at_edge"]) for r in pts]
        n_edge += sum(edge)
        values += [x for r in pts for x in (r["best_mse_min"], r["best_mse_max"])]
        _series(ax, [r["trainable_pct"] for r in pts], [r["best_mse_mean"] for r in pts],
                [[r["best_mse_mean"] - r["best_mse_min"] for r in pts], [r["best_mse_max"] - r["best_mse_mean"]
                                                                         for r in pts]],
                color=st["color"], marker=st["marker"], ms=MS, ls="-", edge=edge,
                label=f"{label} ({seeds_text(max(r['n_seeds'] for r in pts))})")
    _, hi = _limits(ax, values)
    iters = min((r["iters"] for r in rows if _base(r["arm"]) in ARM_LABELS), default=0)
    _style_axes(ax, "trainable parameters (%)", "best MSE (mean over seeds; bars: min–max)",
                f"{v}: (a) Algorithm 1's SDT vs. (b) the construction's masks, {iters:,} it")
    _floor_arrows(ax, floor, frozen, x_construction, hi, dx=-20)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + ([hollow_handle()] if n_edge else []), fontsize=FONTS_LEGEND, loc="upper right")


def _panel_noise(ax, v, rows, floor, frozen) -> None:
    from synthetic.palette import METHOD_COLORS
    from synthetic.plots import LW, _style_axes

    arms = sorted({r["arm"] for r in rows if _base(r["arm"]) == "Oracle start"})
    noises = sorted({r["budget"]["noise"] for r in rows if r["arm"] in arms})
    color = METHOD_COLORS["construction's masks"]
    values = []
    for j, arm in enumerate(arms):
        tag = arm[len("Oracle start"):].strip()
        pts = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["budget"]["noise"])
        for k, (key, name, marker, ls) in enumerate(NOISE_SERIES):
            dodge = (k - 1) * 0.07 + (j - (len(arms) - 1) / 2) * 0.22  # side by side: no point hides another
            xs = [noises.index(r["budget"]["noise"]) + dodge for r in pts]
            ys = [r[key] for r in pts]
            values += [y for y in ys if y is not None]
            ax.plot(xs, ys, marker=marker, ls=ls, lw=LW, ms=6, color=color, alpha=1.0 if j == 0 else 0.45,
                    mfc=color if marker != "x" else None, label=f"{name} {tag}".strip())
    ax.set_xticks(range(len(noises)), ["0 (exact)" if n == 0 else f"{100 * n:g} %" for n in noises])
    _, hi = _limits(ax, values + ([frozen] if frozen else []))
    _style_axes(ax, "noise added to the exact solution (relative to each tensor's RMS)", "MSE",
                f"{v}: (c) training started at the exact solution + noise")
    _floor_arrows(ax, floor, frozen, 0, hi, dx=20)
    ax.legend(fontsize=FONTS_LEGEND, loc="upper left", title="(paler: TF32)" if len(arms) > 1 else None,
              title_fontsize=FONTS_LEGEND)


def _panel_curves(ax, v, rows, floor, frozen) -> None:
    from synthetic.palette import method_color
    from synthetic.plots import _style_axes

    label = _theorem_label(rows)
    values = []
    for r in rows:
        base = _base(r["arm"])
        long = base.endswith(" long")
        arm = base[:-len(" long")] if long else base
        if arm not in ("SDT (Alg. 1)", "Oracle masks") or not r["curve"] or r["budget_label"] != label:
            continue
        ys = [p[1] for p in r["curve"]]
        values += ys
        ax.plot([p[0] + 1 for p in r["curve"]], ys, color=method_color(arm), ls="--" if long else "-",
                lw=1.2 if long else 2.4, alpha=1.0 if long else 0.7, zorder=3 if long else 2,
                label=f"{ARM_LABELS[arm][4:]}, {r['iters']:,} it (lr {r['lr']:g})")
    ax.set_xscale("log")
    _, hi = _limits(ax, values)
    iters = sorted({r["iters"] for r in rows if r["budget_label"] == label and _base(r["arm"]) != "Oracle start"})
    _style_axes(ax, "iteration + 1 (log scale)", "training-batch MSE (mean over seeds)",
                f"{v}: (d) loss at the theorem's budget ({label}): " + " vs. ".join(f"{i:,}" for i in iters) + " it")
    _floor_arrows(ax, floor, None, 300, hi, dx=-20)
    ax.legend(fontsize=FONTS_LEGEND, loc="upper right")


FONTS_LEGEND = 7


def _theorem_label(rows: List[Dict]) -> str:
    """The budget label of the theorem's budget (the long arms train only at it)."""
    for r in rows:
        if _base(r["arm"]).endswith(" long"):
            return r["budget_label"]
    return ""


def _base(arm: str) -> str:
    """The arm's name without a precision tag ("Oracle start [fp32]" -> "Oracle start")."""
    return arm.split(" [")[0]
