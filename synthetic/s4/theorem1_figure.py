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
from typing import Dict, List

from synthetic.atomic import write_json_atomic
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
                         f"{' (' + r['lr_at_edge'] + ')' if r['lr_at_edge'] else ''} | {sel} |")
    return "\n".join(lines)


def write_summary(out: str, preset: str) -> List[str]:
    """Summarise every variant file of ``preset`` in ``out``; write the JSON and the figure; print the table."""
    rows_by_variant = {}
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
        if recs:
            rows_by_variant[v] = summarise(list(recs.values()))
    rows_by_variant = {k: v for k, v in rows_by_variant.items() if v}
    if not rows_by_variant:
        exit_error(f"{out}: no theorem1_training_{preset}_*.jsonl results (run python -m synthetic.s4_theorem1)")
    stem = _stem(out, preset)
    write_json_atomic(stem.with_suffix(".json"), {"preset": preset, "variants": rows_by_variant})
    print(table(rows_by_variant))
    return [str(stem.with_suffix(".json"))] + plot(rows_by_variant, stem, preset)


def plot(rows_by_variant: Dict[str, List[Dict]], stem: Path, preset: str) -> List[str]:
    """Rows: variants; columns: (a) vs (b) over budgets, (c) the exact start vs noise, (d) loss curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(rows_by_variant)
    fig, axes = plt.subplots(len(variants), 3, figsize=(15, 4.2 * len(variants)), squeeze=False)
    for i, v in enumerate(variants):
        rows = rows_by_variant[v]
        floor = _mean(r["exact_mse64_mean"] for r in rows)
        frozen = _mean(r["start_mse_mean"] for r in rows if _base(r["arm"]) in ("SDT (Alg. 1)", "SDT + LoRA (Alg. 1)"))
        ax = axes[i][0]
        for arm, mk in (("SDT (Alg. 1)", "o-"), ("SDT + LoRA (Alg. 1)", "s-"), ("Oracle masks", "^-")):
            pts = sorted(((r["trainable_pct"], r) for r in rows if _base(r["arm"]) == arm and r["best_mse_mean"] is not None),
                         key=lambda p: p[0])
            if pts:
                ax.errorbar([p for p, _ in pts], [r["best_mse_mean"] for _, r in pts],
                            yerr=[[r["best_mse_mean"] - r["best_mse_min"] for _, r in pts],
                                  [r["best_mse_max"] - r["best_mse_mean"] for _, r in pts]], fmt=mk, label=arm,
                            capsize=3)
        ax.set(title=f"{v}: (a) Algorithm 1 vs (b) the construction's masks", xlabel="trainable %", ylabel="best MSE")
        ax = axes[i][1]
        for arm in sorted({r["arm"] for r in rows if _base(r["arm"]) == "Oracle start"}):
            pts = sorted(((r["budget"]["noise"], r) for r in rows if r["arm"] == arm), key=lambda p: p[0])
            xs = [max(s, 1e-4) for s, _ in pts]  # noise 0 drawn at 1e-4 (log axis)
            tag = arm[len("Oracle start"):].strip()
            ax.plot(xs, [r["start_mse_mean"] for _, r in pts], "x--", label=f"at start (after the noise) {tag}")
            ax.plot(xs, [r["best_mse_mean"] for _, r in pts], "o-", label=f"best {tag}")
            ax.plot(xs, [r["final_mse_mean"] for _, r in pts], "s-", label=f"final {tag}")
            ax.set_xscale("log")
        ax.set(title=f"{v}: (c) start at the exact solution + noise (0 at 1e-4)", xlabel="relative noise",
               ylabel="MSE")
        ax = axes[i][2]
        for r in rows:
            if _base(r["arm"]) in ("SDT (Alg. 1)", "Oracle masks", "SDT (Alg. 1) long", "Oracle masks long") \
                    and r["curve"] and r["budget_label"] == _theorem_label(rows):
                ax.plot([p[0] for p in r["curve"]], [p[1] for p in r["curve"]], label=f"{r['arm']} (lr {r['lr']:g})")
        ax.set(title=f"{v}: (d) loss curves at the theorem's budget", xlabel="iteration", ylabel="batch MSE")
        for ax in axes[i]:
            ax.set_yscale("log")
            if floor is not None:
                ax.axhline(max(floor, 1e-30), color="k", ls=":", lw=1, label=f"construction (float64) {floor:.1e}")
            if frozen is not None:
                ax.axhline(frozen, color="gray", ls="--", lw=1, label=f"frozen {frozen:.3g}")
            ax.legend(fontsize=7)
    fig.suptitle(f"Theorem 1 vs training ({preset}): why SDT does not reach zero", fontsize=12)
    fig.tight_layout()
    paths = []
    for ext in ("png", "pdf"):
        fig.savefig(stem.with_suffix(f".{ext}"), dpi=110)
        paths.append(str(stem.with_suffix(f".{ext}")))
    plt.close(fig)
    return paths


def _theorem_label(rows: List[Dict]) -> str:
    """The budget label of the theorem's budget (the long arms train only at it)."""
    for r in rows:
        if _base(r["arm"]).endswith(" long"):
            return r["budget_label"]
    return ""


def _base(arm: str) -> str:
    """The arm's name without a precision tag ("Oracle start [fp32]" -> "Oracle start")."""
    return arm.split(" [")[0]
