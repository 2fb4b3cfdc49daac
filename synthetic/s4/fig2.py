"""Figure 2 of Galim et al. (ICML 2025, Sec. 6.1), three ways: the paper, the official code, this toolkit.

MSE vs trainable % per method, from data only (no training):

- ``paper``: the values read off the paper's Figure 2 (``paper_reference_read_off_figure_2`` of the
  official runs file; a range "8->26 %" is drawn at its two ends);
- ``official_code``: the official code's own runs (``figures/official_s4_runs.json``, a copy of
  ``runs.json``), best ``best_mse`` over learning rates per trainable %, as the official
  notebook ``S4/analysis/s4_plot.ipynb`` does;
- ``preset_seed123``: :mod:`synthetic.s4_official` at seed 123, best over learning rates;
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
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from synthetic.plots import plot_fig2_three_ways
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
    """Per group: the record with the smallest ``best_mse`` over learning rates (the official notebook's rule)."""
    best: Dict[tuple, Dict] = {}
    for r in records:
        if r.get("status", "ok") != "ok" or r.get("best_mse") is None:
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
    return json.loads(path.read_text()) if path.exists() else None


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
    preset = _load(Path(preset_path))
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
    default = _load(Path(default_path))
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


def plot(data: Dict, out_stem) -> List[str]:
    """The figure (:func:`synthetic.plots.plot_fig2_three_ways`) and the points drawn (``<out_stem>.json``)."""
    paths = plot_fig2_three_ways(data, out_stem) + [str(out_stem) + ".json"]
    Path(paths[2]).write_text(json.dumps(data, indent=1) + "\n")
    return paths


def three_ways(official_runs="figures/official_s4_runs.json", preset="figures/s4_regression_official.jsonl",
               default="figures/s4_regression_paper.jsonl", out="figures/s4_fig2_three_ways") -> List[str]:
    return plot(collect(official_runs, preset, default), out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m synthetic.s4_fig2", description=__doc__.split("\n\n")[0])
    p.add_argument("--official-runs", default="figures/official_s4_runs.json")
    p.add_argument("--preset", default="figures/s4_regression_official.jsonl")
    p.add_argument("--default", default="figures/s4_regression_paper.jsonl")
    p.add_argument("--out", default="figures/s4_fig2_three_ways")
    a = p.parse_args(argv)
    try:  # before drawing: the inputs exist, read, and are what their option says
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
    for path in three_ways(a.official_runs, a.preset, a.default, a.out):
        print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
