"""The per-lr tables behind the findings' verdicts, from the committed results files (no training): per (method,
budget) the mean best MSE at every lr tried with the number of seeds behind it, the best lr among the lrs every seed
has run, whether it is at an edge of that grid, and the per-seed comparisons the README's verdicts quote.

    python scripts/issue20_summary.py            # all three files
    python scripts/issue20_summary.py official   # one of: official, s4, mamba
"""
import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the repository's packages

from synthetic.results import ResultsFile  # noqa: E402
from theory.report import plain  # noqa: E402

FILES = {"official": ("figures/s4_regression_official.jsonl", (123, 124, 125, 126, 127)),
         "s4": ("figures/peft_methods_s4_paper.jsonl", (0, 1, 2)),
         "mamba": ("figures/peft_methods_mamba_paper.jsonl", (0, 1, 2))}


def groups(path):
    recs = ResultsFile(path).runs()  # JSON Lines (or an old JSON list)
    g = defaultdict(list)
    for r in recs:
        g[(r["method"], r["budget_label"])].append(r)
    return g


def table(name):
    path, seeds = FILES[name]
    out = {}
    print(f"== {name}: {path}")
    print("method | budget | trainable % | best lr (all seeds) | mean best MSE (min-max) | edge | per lr: mean [seeds ok/run]")
    for (m, b), rs in groups(path).items():
        by = defaultdict(list)
        for r in rs:
            by[r["lr"]].append(r)
        cells, complete = [], {}
        for lr in sorted(by, key=lambda x: x or 0):
            ok = [r["best_mse"] for r in by[lr] if r["status"] == "ok" and r["best_mse"] is not None]
            mean = statistics.fmean(ok) if ok else None
            cells.append(f"{lr}: {mean:.4g} [{len(ok)}/{len(by[lr])}]" if mean is not None else f"{lr}: diverged [0/{len(by[lr])}]")
            if {r["seed"] for r in by[lr]} >= set(seeds) and len(ok) == len(by[lr]):
                complete[lr] = mean
        best = min(complete, key=complete.get) if complete else None
        partial = ""
        if best is None:  # no lr run for every seed (sweep cut short): best over the lrs with the most seeds
            n = max(len({r["seed"] for r in v}) for v in by.values())
            cand = {lr: statistics.fmean([r["best_mse"] for r in v]) for lr, v in by.items()
                    if len({r["seed"] for r in v}) == n and all(r["status"] == "ok" for r in v)}
            best, complete = min(cand, key=cand.get), cand
            partial = f" PARTIAL ({n} of {len(seeds)} seeds)"
        lrs_all = sorted(x for x in by if x)
        edge = "-"
        if best and lrs_all and len(lrs_all) > 1:
            edge = "low" if best == lrs_all[0] else "high" if best == lrs_all[-1] else "-"
        vals = {r["seed"]: r["best_mse"] for r in by.get(best, [])}
        pct = rs[0].get("trainable_pct")
        rng = f"({min(vals.values()):.4g}-{max(vals.values()):.4g})" if vals else ""
        print(f"{m} | {b} | {pct:.2f} | {best} | {complete.get(best, float('nan')):.4g} {rng} | {edge}{partial} | " + "; ".join(cells))
        out[(m, b)] = {"pct": pct, "lr": best, "mean": complete.get(best), "seeds": vals}
    return out


def lower_in(a, b):
    """Seeds where group a's best MSE (at its best lr) is below group b's."""
    common = sorted(set(a["seeds"]) & set(b["seeds"]))
    return f"{sum(a['seeds'][s] < b['seeds'][s] for s in common)}/{len(common)}"


def main(which):
    res = {n: table(n) for n in which}
    if "official" in res:
        t = res["official"]
        fz = t[("Frozen", "none")]
        print("official: Frozen per seed at its best lr", {s: round(v, 4) for s, v in sorted(fz["seeds"].items())})
        for k, v in t.items():
            if k[0] != "Frozen":
                print(f"official: {k} below Frozen in {lower_in(v, fz)} seeds")
    if "s4" in res:
        t = res["s4"]
        for a, b in [(("Initial-state tuning", "h0"), ("Prefix-tuning", "M=16")),
                     (("Initial-state tuning", "h0"), ("Prefix-tuning", "M=32")),
                     (("State-offset tuning", "h'"), ("Prefix-tuning", "M=16")),
                     (("Initial-state tuning", "h0"), ("Prompt tuning", "M=64")),
                     (("State-offset tuning", "h'"), ("Prompt tuning", "M=64")),
                     (("LoRA (Proj)", "r=8"), ("DoRA (Proj)", "r=8")),
                     (("LoRA (Proj)", "r=16"), ("DoRA (Proj)", "r=16"))]:
            print(f"s4: {a} below {b} in {lower_in(t[a], t[b])} seeds")
    if "mamba" in res:
        t = res["mamba"]
        for a, b in [(("State-offset tuning", "-"), ("Prefix-tuning", "prefix_len=32")),
                     (("Initial-state tuning", "-"), ("Prefix-tuning", "prefix_len=32")),
                     (("Initial-state tuning", "-"), ("Prompt tuning", "prompt_len=128")),
                     (("State-offset tuning", "-"), ("Prompt tuning", "prompt_len=128")),
                     (("DoRA (Proj)", "rank=1"), ("LoRA (S6+Proj)", "rank=1")),
                     (("BitFit", "-"), ("LoRA (Proj)", "rank=8"))]:
            print(f"mamba: {a} below {b} in {lower_in(t[a], t[b])} seeds")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python scripts/issue20_summary.py", description=plain(__doc__.split("\n\n")[0]))
    ap.add_argument("files", nargs="*", metavar="FILE",
                    help=f"which results files: any of {', '.join(FILES)} (default: all)")
    which = ap.parse_args().files
    unknown = [f for f in which if f not in FILES]
    if unknown:
        ap.error(f"unknown FILE {', '.join(unknown)}: choose from {', '.join(FILES)}")
    main(which or list(FILES))
