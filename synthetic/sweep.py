"""Shared sweep machinery for the synthetic experiments (Galim et al., ICML 2025, Sec. 6 figures).

Used by ``synthetic.s4_regression`` (deep S4, Figure 2) and the Mamba experiment. Nothing here
knows about a particular model; a *run* is a dict of plain JSON values.

API
---
- :func:`run_key(config) <run_key>` -> str: a canonical, order-independent key of a run's
  identifying config (a dict of JSON values, e.g. ``{"method": "SDT", "budget": {...}, "lr": 1e-3,
  "seed": 0}``). Two dicts with equal content give the same key.
- :class:`ResultsFile(path) <ResultsFile>`: a JSON list of run records on disk.
  ``.load()`` -> list of records; ``.completed_keys()`` -> set of ``record["key"]``;
  ``.append(record)`` / ``.extend(records)`` rewrite the file atomically (write a temporary file in
  the same folder, fsync, ``os.replace``), so a kill at any moment leaves either the old or the new
  list, never a torn file. Records must carry a ``"key"`` (use :func:`run_key`).
- :func:`is_diverged(x) <is_diverged>`: True for a non-finite loss (NaN/inf) or None.
- :func:`best_of_grid(records, group_keys) <best_of_grid>` -> list of rows: for each group (e.g.
  method and budget) pick the learning rate whose mean ``best_mse`` over seeds is lowest, using
  only ``status == "ok"`` runs; each row has the group's keys plus ``lr, mean, std, min, max,
  n_seeds, n_diverged`` (diverged runs of the whole group, all learning rates), ``trainable_pct``
  and the per-seed values.
- :func:`plot_mse_vs_params(rows, out_stem, ...) <plot_mse_vs_params>`: draws best-of-grid mean
  MSE vs trainable % per method with the seed spread (min-max band and error bars), the diverged
  count in the legend, optional extra labelled points (e.g. a theory point), writes
  ``out_stem + ".png"`` and ``".pdf"``.
- :func:`environment()`: ``{"device", "torch", "commit", "date"}`` for records and benchmarks.

Example::

    rf = ResultsFile("figures/s4_regression_paper.json")
    done = rf.completed_keys()
    for cfg in grid:
        key = run_key(cfg)
        if key in done:
            continue
        rec = train(cfg)  # {"method", "trainable_pct", "best_mse", "final_mse", "lr", "seed", "status", ...}
        rf.append({**rec, "key": key})
    rows = best_of_grid(rf.load(), group_keys=("method", "budget_label"))
    plot_mse_vs_params(rows, "figures/s4_mse_vs_params_paper")
"""

from __future__ import annotations

import datetime
import json
import math
import os
import statistics
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

__all__ = ["run_key", "ResultsFile", "is_diverged", "best_of_grid", "plot_mse_vs_params",
           "environment", "git_commit"]


# ------------------------------------------------------------------------------------------ keys
def _canonical(v: Any) -> Any:
    """JSON-normal form: dict keys sorted, tuples as lists."""
    if isinstance(v, dict):
        return {str(k): _canonical(v[k]) for k in sorted(v, key=str)}
    if isinstance(v, (list, tuple)):
        return [_canonical(x) for x in v]
    return v


def run_key(config: Dict[str, Any]) -> str:
    """Canonical key of a run: compact JSON of ``config`` with sorted keys (order-independent)."""
    if not isinstance(config, dict):
        raise ValueError(f"config: expected a dict, got {type(config).__name__}")
    return json.dumps(_canonical(config), sort_keys=True, separators=(",", ":"), allow_nan=False)


def is_diverged(x: Optional[float]) -> bool:
    """True when a loss value is missing or not finite."""
    return x is None or not math.isfinite(float(x))


# ---------------------------------------------------------------------------------- results file
def _json_safe(v: Any) -> Any:
    """Replace non-finite floats by None so the file stays strict JSON."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


class ResultsFile:
    """A JSON list of run records, appended to atomically (see the module docstring)."""

    def __init__(self, path):
        self.path = Path(path)

    def load(self) -> List[Dict[str, Any]]:
        if not self.path.exists():
            return []
        with open(self.path) as f:
            data = json.load(f)
        if not isinstance(data, list):
            raise ValueError(f"{self.path}: expected a JSON list of run records")
        return data

    def completed_keys(self) -> set:
        return {r["key"] for r in self.load() if "key" in r}

    def _write(self, records: List[Dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(_json_safe(records), f, indent=1, allow_nan=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def extend(self, records: Iterable[Dict[str, Any]]) -> None:
        new = list(records)
        for r in new:
            if "key" not in r:
                raise ValueError("record: needs a 'key' (use run_key(config))")
        if not new:
            return
        existing = self.load()
        keys = {r.get("key") for r in existing}
        self._write(existing + [r for r in new if r["key"] not in keys])

    def append(self, record: Dict[str, Any]) -> None:
        self.extend([record])


# ---------------------------------------------------------------------------------- aggregation
def _freeze(v: Any) -> Any:
    return json.dumps(_canonical(v), sort_keys=True) if isinstance(v, (dict, list, tuple)) else v


def best_of_grid(records: Sequence[Dict[str, Any]], group_keys: Sequence[str] = ("method", "budget_label"),
                 lr_key: str = "lr", value_key: str = "best_mse") -> List[Dict[str, Any]]:
    """Best learning rate per group by mean ``value_key`` over seeds, ok runs only.

    Returns one row per group (sorted by method then trainable %), with ``lr`` (the chosen one),
    ``mean, std, min, max`` of ``value_key`` over that lr's ok seeds, ``values`` (per seed),
    ``n_seeds``, ``n_diverged`` (diverged runs in the group, any lr), ``n_runs`` and
    ``trainable_pct`` (from the records; the mean if it varies). Groups with no ok run get
    ``mean = None``.
    """
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
        row.update(trainable_pct=(sum(pct) / len(pct)) if pct else None, n_diverged=n_div, n_runs=len(recs))
        if by_lr:
            lr, vals = min(by_lr.items(), key=lambda kv: (statistics.fmean(kv[1]), str(kv[0])))
            row.update(lr=lr, mean=statistics.fmean(vals), std=statistics.pstdev(vals) if len(vals) > 1 else 0.0,
                       min=min(vals), max=max(vals), values=vals, n_seeds=len(vals),
                       lr_means={str(k): statistics.fmean(v) for k, v in by_lr.items()})
        else:
            row.update(lr=None, mean=None, std=None, min=None, max=None, values=[], n_seeds=0, lr_means={})
        rows.append(row)
    rows.sort(key=lambda r: (str(r.get(group_keys[0])), r["trainable_pct"] if r["trainable_pct"] is not None else -1))
    return rows


# ---------------------------------------------------------------------------------------- plots
def plot_mse_vs_params(rows: Sequence[Dict[str, Any]], out_stem, *, method_key: str = "method",
                       method_order: Optional[Sequence[str]] = None, title: str = "",
                       xlabel: str = "trainable parameters (% of frozen model)", ylabel: str = "MSE",
                       extra_points: Sequence[Dict[str, Any]] = (), logy: bool = False,
                       note: str = "", hline_methods: Sequence[str] = ()) -> List[str]:
    """MSE (best-of-grid mean, min-max seed band) vs trainable % per method.

    rows: output of :func:`best_of_grid`. extra_points: dicts ``{"x", "y", "label"}`` drawn as
    stars (e.g. a theory construction's budget and MSE). hline_methods: methods with one budget
    (e.g. "Frozen") drawn as dashed horizontal lines; if such a line lies far above every other
    point, the y-axis is clipped and the line's value is written on the plot instead. Writes ``<out_stem>.png`` and ``.pdf`` and
    returns their paths.
    """
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone (notebooks)

    by_method: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_method[r[method_key]].append(r)
    order = list(method_order or []) + sorted(m for m in by_method if m not in (method_order or []))
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    markers = "osD^vP*Xh"
    hlines = []
    for i, m in enumerate(o for o in order if o in by_method):
        if m in hline_methods:
            vals = [r for r in by_method[m] if r.get("mean") is not None]
            if vals:
                hlines.append((m, vals[0], markers[i % len(markers)]))
            continue
        pts = sorted((r for r in by_method[m] if r.get("mean") is not None), key=lambda r: r["trainable_pct"])
        n_div = sum(r.get("n_diverged", 0) for r in by_method[m])
        n_seeds = max((r.get("n_seeds", 0) for r in pts), default=0)
        label = f"{m} ({n_seeds} seeds" + (f", {n_div} diverged)" if n_div else ")")
        if not pts:
            ax.plot([], [], label=label + " [no finite runs]")
            continue
        x = [r["trainable_pct"] for r in pts]
        y = [r["mean"] for r in pts]
        lo = [r["mean"] - r["min"] for r in pts]
        hi = [r["max"] - r["mean"] for r in pts]
        line = ax.errorbar(x, y, yerr=[lo, hi], marker=markers[i % len(markers)], ms=5, capsize=3, label=label)
        if len(pts) > 1:
            ax.fill_between(x, [r["min"] for r in pts], [r["max"] for r in pts], alpha=0.15,
                            color=line[0].get_color())
    ys = [v for line in ax.get_lines() for v in line.get_ydata()] + [p["y"] for p in extra_points]
    top = max(ys) if ys else 1.0
    for m, r, mk in hlines:
        lab = f"{m}: {r['mean']:.3g} (min {r['min']:.3g}, max {r['max']:.3g}, {r['n_seeds']} seeds)"
        if ys and r["mean"] > 1.5 * top:
            ax.set_ylim(bottom=min(0.0, min(ys)) - 0.04 * top, top=1.15 * top)
            ax.plot([], [], ls="--", color="gray", label=lab + ", off scale")
            ax.annotate(f"{m} = {r['mean']:.3g} (off scale)", xy=(0.02, 0.97), xycoords="axes fraction",
                        va="top", fontsize=8, color="gray")
        else:
            ax.axhline(r["mean"], ls="--", color="gray", label=lab)
    for p in extra_points:
        ax.plot([p["x"]], [p["y"]], marker="*", ms=14, ls="none", color=p.get("color", "k"), label=p["label"])
    if logy:
        ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    if note:
        fig.text(0.01, 0.005, note, fontsize=6, va="bottom", ha="left", wrap=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    out_stem = str(out_stem)
    Path(out_stem).parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem + ".png", out_stem + ".pdf"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1], metadata={"CreationDate": None})  # reproducible bytes on redraw
    return paths


# ---------------------------------------------------------------------------------- environment
def git_commit(root=None) -> str:
    """Short commit of the repository, else ``$GIT_COMMIT`` (for copies without .git), else ``"unknown"``."""
    root = root or Path(__file__).resolve().parent.parent
    try:
        c = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                           timeout=10).stdout.strip()
    except Exception:
        c = ""
    return c or os.environ.get("GIT_COMMIT", "") or "unknown"


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (records carry the date they were produced)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def environment() -> Dict[str, str]:
    """Device name, torch version, commit and UTC date for records and benchmarks."""
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"device": dev, "torch": torch.__version__, "commit": git_commit(),
            "date": utc_now()}
