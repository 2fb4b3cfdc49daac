"""``python -m theory.capacity``: the command around the Theorem 1 expressivity probe of
:mod:`theory.capacity_probe` (the probe's grid, the results file, the table, the figure) and the ``python -m theory``
claim that settles the probe rows without a float64 rank gap mod p.

``python -m theory.capacity`` writes ``figures/theorem1_capacity.json`` and draws
``figures/theorem1_capacity.png`` from it. The file is written after every probe row and every later stage
(``config.complete`` false until the end, with a progress bar on a terminal), so a run cut off keeps what it
computed, and rerunning the same command resumes from it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict
from typing import Dict, List, Optional, Sequence

import torch

from . import capacity_probe, exact_rank
from .capacity_probe import ProbeConfig, ProbeRow, groebner_oracle, probe, s6_obstruction_instance
from .layout import free_dim_formula, smallest_count_feasible_rank, target_dim_formula
from .report import ClaimResult, claim, plain
from .tolerances import RANK_RTOL


# ----------------------------------------------------------------------------------- table + figure
def default_configs() -> List[ProbeConfig]:
    """The table's grid: L*=1 and L*=2 (incl. non-divisible L), D growing, ranks 1..⌈D/⌊L/L*⌋⌉,
    plus skip outside at the paper's channel budget with full-rank LoRA."""
    out = []
    for (D, L, Ls) in [(4, 2, 1), (6, 2, 1), (6, 3, 1), (4, 4, 2), (6, 4, 2), (8, 4, 2), (10, 4, 2), (5, 5, 2)]:
        top = math.ceil(D / (L // Ls))
        for r in range(1, top + 1):
            out.append(ProbeConfig(D, L, Ls, 2, 1, r, "inside"))
    # L* does not divide L: in the construction's layout the one-layer group processes all 12 channels; r = 1 is excluded by count
    out += [ProbeConfig(12, 3, 2, 2, 1, r, "inside") for r in (1, 2, 3, 6, 12)]
    for (D, L, Ls) in [(4, 2, 1), (4, 4, 2), (6, 4, 2)]:
        out.append(ProbeConfig(D, L, Ls, 2, 1, D, "outside"))
    return out


def _atomic_write(path: str, write) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then ``os.replace`` it: a reader sees the old
    file or the new one, never a half-written one (the project's one helper, :func:`synthetic.atomic.atomic_write`)."""
    from synthetic.atomic import atomic_write

    atomic_write(path, write)


def _write_json(path: str, data: Dict) -> None:
    def write(tmp):
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=1)
    _atomic_write(path, write)


GRID_FIELDS = ("D", "L", "L_star", "H", "H_star", "rank", "skip")


def grid_of(data: Dict) -> Dict:
    """The configuration a results file was made from: seed, quick flag and the probed grid (from its rows)."""
    cfg = data.get("config", {})
    return {"seed": cfg.get("seed"), "quick": cfg.get("quick"),
            "grid": [[r.get(k) for k in GRID_FIELDS] for r in data.get("rows", [])]}


def load_results(path: str) -> Dict:
    """Parse a results file; ``ValueError`` naming the file and the position when it is not valid JSON
    or not a probe table (a dict with ``config`` and ``rows``)."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not a text file ({exc.reason})") from None
    except OSError as exc:
        raise ValueError(f"{path} cannot be read ({exc.strerror})") from None
    if not (isinstance(data, dict) and isinstance(data.get("rows"), list) and isinstance(data.get("config"), dict)):
        raise ValueError(f"{path} is not a probe results file (needs 'config' and 'rows')")
    return data


def _writable_file_path(path: str) -> Optional[str]:
    """Why ``path`` cannot be written as a file (None if it can): a directory, a parent that is a file, or a
    directory without write permission."""
    if os.path.isdir(path):
        return f"{path} is a directory"
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    return None


ROWS_HEAD = "skip     D  L  L*  H  H*  r  ⌈L/L*⌉ ⌈DL*/L⌉  Jac.rank  free  target  zero-blk  verdict"


def format_row(r: ProbeRow) -> str:
    return (f"{r.skip:7s} {r.D:2d} {r.L:2d} {r.L_star:3d} {r.H:2d} {r.H_star:3d} {r.rank:2d} "
            f"{r.rank_brief:7d} {r.rank_zeng_lee:8d} {r.budget_rank:9d} {r.free_dim:5d} {r.target_dim:7d} "
            f"{r.zero_block_bound:9d}  {r.verdict}")


def format_rows(rows: Sequence[ProbeRow]) -> str:
    return "\n".join([ROWS_HEAD] + [format_row(r) for r in rows])


def row_record(r: ProbeRow) -> Dict:
    """A probe row as stored in the results file."""
    return dict(asdict(r), rank_brief=r.rank_brief, rank_zeng_lee=r.rank_zeng_lee)


def _progress(it, total: int, desc: str):
    """A tqdm bar on stderr, shown only on a terminal (tqdm's ``disable=None``): logs and tests stay clean."""
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, file=sys.stderr, disable=None, dynamic_ncols=True)


def asymptotic_rows(L: int = 4, L_star: int = 2, H_star: int = 1, Ds=(4, 8, 16, 32, 64, 128)) -> List[Dict]:
    """Count-only rows for growing D: the smallest count-feasible rank vs ⌈L/L*⌉ and ⌈D·L*/L⌉."""
    out = []
    for D in Ds:
        r_brief = math.ceil(L / L_star)
        out.append({"D": D, "L": L, "L_star": L_star, "H_star": H_star,
                    "target_dim": target_dim_formula(D, L_star, H_star),
                    "free_at_brief_rank": free_dim_formula(D, L, L_star, H_star, min(r_brief, D)),
                    "rank_brief": r_brief, "rank_zeng_lee": math.ceil(D * L_star / L),
                    "min_count_feasible_rank": smallest_count_feasible_rank(D, L, L_star, H_star)})
    return out


# verdict -> (colour, marker): Okabe & Ito's colour-blind-safe hues, and a marker per verdict as well, so the
# verdicts stay apart for a reader who cannot tell two hues apart (the palette of synthetic/palette.py).
VERDICT_STYLES = {
    "sufficient (construction)": ("#009E73", "o"),
    "not excluded": ("#999999", "D"),
    "insufficient (zero block)": ("#D55E00", "X"),
    "insufficient (Jacobian)": ("#E69F00", "P"),
    "insufficient (count)": ("#882255", "s"),
    "insufficient (outside: no mixing of pass-through)": ("#CC79A7", "v"),
}
BOUND_STYLES = {"rank_brief": ("#0072B2", ":", "⌈L/L*⌉: the rank as read from the paper's text"),
                "rank_zeng_lee": ("#000000", "--", "⌈D·L*/L⌉: the construction's rank (zero-block bound)")}


def draw(data: Dict):
    """The probe's verdicts from the JSON data, as a Figure. Left: one row per (skip, D, L, L*), one mark per LoRA
    rank r, colour and marker by verdict, with the two candidate ranks ⌈L/L*⌉ and ⌈D·L*/L⌉ as short vertical bars
    on the row (each with its own legend, under the panel). Right: for growing D, the smallest rank the parameter
    count allows vs the two candidates."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone (notebooks)
    from matplotlib.lines import Line2D

    rows = data["rows"]
    keys = []
    for r in rows:
        k = (r["skip"], r["D"], r["L"], r["L_star"])
        if k not in keys:
            keys.append(k)
    fig = Figure(figsize=(13, 6.4))
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1]})
    seen = []
    for r in rows:
        y = keys.index((r["skip"], r["D"], r["L"], r["L_star"]))
        color, marker = VERDICT_STYLES.get(r["verdict"], ("k", "o"))
        if r["verdict"] not in seen:
            seen.append(r["verdict"])
        ax1.scatter([r["rank"]], [y], s=80, color=color, marker=marker, edgecolors="white", linewidths=0.5,
                    zorder=3)
    for y, (skip, D, L, Ls) in enumerate(keys):
        # upper half of the row for ⌈L/L*⌉, lower half for ⌈D·L*/L⌉: both stay visible where they coincide
        for field, value, (lo, hi) in (("rank_brief", math.ceil(L / Ls), (0.05, 0.45)),
                                       ("rank_zeng_lee", math.ceil(D * Ls / L), (-0.45, -0.05))):
            color, ls, _ = BOUND_STYLES[field]
            ax1.plot([value, value], [y + lo, y + hi], color=color, ls=ls, lw=1.8, zorder=2)
    outside = [y for y, k in enumerate(keys) if k[0] == "outside"]
    if outside and len(outside) < len(keys):
        ax1.axhline(min(outside) - 0.5, color="0.6", lw=0.8)
    ax1.set_yticks(range(len(keys)))
    ax1.set_yticklabels([f"skip {s}: D={D} L={L} L*={Ls}" for s, D, L, Ls in keys], fontsize=8)
    ax1.set_ylim(-0.6, len(keys) - 0.4)
    ax1.set_xlabel("LoRA rank r")
    H, H_star = rows[0]["H"], rows[0]["H_star"]
    ax1.set_title(f"Theorem 1 (S4, H={H}, H*={H_star}): which LoRA ranks can reach the target", fontsize=10)
    verdict_handles = [Line2D([], [], ls="", marker=VERDICT_STYLES.get(v, ("k", "o"))[1], markersize=8,
                              color=VERDICT_STYLES.get(v, ("k", "o"))[0], label=v) for v in seen]
    bound_handles = [Line2D([], [], color=c, ls=ls, lw=1.6, label=lab) for c, ls, lab in BOUND_STYLES.values()]
    # both legends under the left panel, side by side (marker = verdict; bar = candidate rank), in the space
    # tight_layout leaves below the axes (rect)
    fig.legend(handles=verdict_handles, title="marker: verdict at rank r", fontsize=7, title_fontsize=7,
               loc="lower left", bbox_to_anchor=(0.01, 0.0), ncol=2, frameon=False)
    fig.legend(handles=bound_handles, title="bars on each row: candidate ranks", fontsize=7, title_fontsize=7,
               loc="lower left", bbox_to_anchor=(0.36, 0.0), frameon=False)
    ax1.grid(alpha=0.3, axis="x")
    asym = data["asymptotic"]
    Ds = [a["D"] for a in asym]
    ax2.plot(Ds, [a["min_count_feasible_rank"] for a in asym], "o-", color="#009E73",
             label="smallest rank the parameter count allows")
    for field in ("rank_zeng_lee", "rank_brief"):
        color, ls, lab = BOUND_STYLES[field]
        ax2.plot(Ds, [a[field] for a in asym], ls=ls, marker="s" if field == "rank_zeng_lee" else "^",
                 color=color, label=lab)
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("symlog", base=2, linthresh=1)
    ax2.set_ylim(-0.3, None)
    ax2.set_xlabel("model width D")
    ax2.set_ylabel("LoRA rank")
    a0 = asym[0]
    ax2.set_title(f"rank needed as D grows (L={a0['L']}, L*={a0['L_star']}, H*={a0['H_star']})", fontsize=10)
    ax2.legend(fontsize=7, loc="upper left")
    ax2.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def plot(data: Dict, path: str) -> None:
    """:func:`draw` saved as a PNG at ``path``."""
    fig = draw(data)
    _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def quick_configs() -> List[ProbeConfig]:
    """The ``--quick`` grid (tests and smoke runs)."""
    return [ProbeConfig(4, 2, 1, 2, 1, r) for r in (1, 2)] + [ProbeConfig(4, 2, 1, 2, 1, 4, "outside")]


SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit seed (and wraps a larger one silently)
GROEBNER_CASES = [("inside", (0, 1), 1), ("inside", (0, 1), 0), ("outside", (0, 1), None), ("outside", (1, 0), None),
                  ("outside", (0, 0), None), ("outside", (1, 1), None)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m theory.capacity",
                                description=plain(capacity_probe.__doc__.split("\n\n")[0]))
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random frozen/target points, in [0, 2**63 - 1] (default 0)")
    p.add_argument("--out", default="figures/theorem1_capacity.json",
                   help="results file (JSON), written as rows come (a partial file of the same configuration is "
                        "resumed); refused if it holds results of another configuration, unless --force")
    p.add_argument("--figure", default="figures/theorem1_capacity.png", help="figure drawn from the results (PNG)")
    p.add_argument("--replot", action="store_true", help="redraw the figure from the existing JSON only")
    p.add_argument("--quick", action="store_true", help="a tiny grid (for tests and smoke runs)")
    p.add_argument("--force", action="store_true",
                   help="overwrite --out even if it holds results of another configuration")
    args = p.parse_args(argv)
    # every check before anything is computed or written
    if not 0 <= args.seed <= SEED_MAX:
        p.error(f"--seed: must be in [0, 2**63 - 1] (a torch generator seed), got {args.seed}")
    for opt, path in (("--out", args.out), ("--figure", args.figure)):
        why = _writable_file_path(path)
        if why is not None and not (opt == "--out" and args.replot and os.path.isfile(path)):
            p.error(f"{opt}: cannot write {path}: {why}")
    if os.path.abspath(args.out) == os.path.abspath(args.figure):
        p.error(f"--figure: {args.figure} is also the results file --out")
    if args.replot and not os.path.exists(args.out):
        p.error(f"--replot: no results file {args.out} (run without --replot first, or pass --out)")
    configs = quick_configs() if args.quick else default_configs()
    if args.replot or (os.path.exists(args.out) and not args.force):
        try:
            existing = load_results(args.out)
        except ValueError as exc:
            p.error(f"{'--replot' if args.replot else '--out'}: {exc}"
                    + ("" if args.replot else "; pass --force to overwrite it, or another --out"))
    if args.replot:
        data = existing
    else:
        new = {"seed": args.seed, "quick": args.quick, "grid": [[getattr(c, k) for k in GRID_FIELDS] for c in configs]}
        resume = None
        if os.path.exists(args.out) and not args.force:
            old = grid_of(existing)
            partial = existing["config"].get("complete", True) is False
            if partial and old["seed"] == args.seed and old["quick"] == args.quick \
                    and old["grid"] == new["grid"][:len(old["grid"])]:
                resume = existing
            elif old != new:
                p.error(f"--out: {args.out} holds results of another configuration ({len(old['grid'])} rows, seed "
                        f"{old['seed']}, quick={old['quick']}{', partial' if partial else ''}; this run: "
                        f"{len(new['grid'])} rows, seed {args.seed}, quick={args.quick}); pass --force to overwrite "
                        "it, or another --out")
        data = compute(configs, args.seed, args.quick, args.out, resume)
    plot(data, args.figure)
    print(f"wrote {'' if args.replot else args.out + ' and '}{args.figure}")
    return 0


def compute(configs: Sequence[ProbeConfig], seed: int, quick: bool, out: str, resume: Optional[Dict] = None) -> Dict:
    """The probe table and the later stages (exact ranks of the rows without a clean gap, asymptotic counts, the S6
    obstruction, the Gröbner oracle), printed and written to ``out`` as they come (``config.complete`` false
    until the end); ``resume``: a partial file of the same configuration, whose rows and stages are kept."""
    t0 = time.time()
    data = resume or {"config": {"seed": seed, "rank_rtol": RANK_RTOL, "H": 2, "H_star": 1, "quick": quick,
                                 "torch": torch.__version__, "exact_prime": exact_rank.P_DEFAULT,
                                 "gap_decided": GAP_DECIDED, "complete": False},
                      "rows": []}
    done = len(data["rows"])
    if done:
        print(f"resuming {out}: {done} of {len(configs)} probe rows already computed")
    print(ROWS_HEAD)
    for r in data["rows"]:
        print(format_row(ProbeRow(**{k: r[k] for k in ProbeRow.__dataclass_fields__})))
    for cfg in _progress(configs[done:], len(configs) - done, "probe rows"):
        row = probe(cfg, seed)
        print(format_row(row), flush=True)
        data["rows"].append(row_record(row))
        _write_json(out, data)
    for cfg, row in zip(configs, data["rows"]):  # settle the rows without a clean float gap exactly
        if cfg.skip == "inside" and row["budget_gap"] < GAP_DECIDED:
            if "budget_rank_mod_p" not in row:
                ex = exact_rank.exact_row(cfg, seed)
                row.update(budget_rank_mod_p=ex.budget_rank_p, target_rank_mod_p=ex.target_rank_p,
                           jacobian_excludes=ex.jacobian_excludes)
                _write_json(out, data)
            print(f"exact (GF({exact_rank.P_DEFAULT}), a lower bound on the generic rank): D={cfg.D} L={cfg.L} "
                  f"L*={cfg.L_star} r={cfg.rank}: float rank {row['budget_rank']} (gap {row['budget_gap']:.2g}) -> "
                  f"{row['budget_rank_mod_p']} >= target {target_dim_formula(cfg.D, cfg.L_star, cfg.H_star)}: Jacobian does "
                  f"{'not exclude' if row['jacobian_excludes'] is False else 'not decide'}; verdict "
                  f"'{row['verdict']}' stands", flush=True)
    data["asymptotic"] = asymptotic_rows()
    for a in data["asymptotic"]:
        print(a)
    if "s6_obstruction" not in data:
        data["s6_obstruction"] = [s6_obstruction_instance(D, 1, 1, s, seed=seed) for D, s in [(2, 1), (4, 2), (8, 4)]]
        _write_json(out, data)
    for o in data["s6_obstruction"]:
        print("S6 obstruction:", o)
    gb = data.setdefault("groebner_D2", {})
    cases = [(f"{skip} layout={lay} lora_rank={r}", (skip, lay, r), {}) for skip, lay, r in GROEBNER_CASES]
    cases.append(("outside all channels in layer 2, W_1 frozen", ("outside", (0, 0), 0), {"all_in_last": True}))
    for k, args, kw in cases:
        if k not in gb:
            gb[k] = groebner_oracle(*args, **kw)
            _write_json(out, data)
        print(f"Gröbner D=2 L=2 L*=1 {k}: {'solvable' if gb[k] else 'no solution'}", flush=True)
    data["seconds"] = data.get("seconds", 0.0) + time.time() - t0  # a resumed run adds its own time
    data["config"]["complete"] = True
    _write_json(out, data)
    return data


# the float64 probe rows of figures/theorem1_capacity.json with σ_r/σ_{r+1} < 1e3 (no clean cut); skip inside
UNDECIDED_ROWS = ((4, 4, 2, 1), (5, 5, 2, 1), (10, 4, 2, 4), (10, 4, 2, 5))  # (D, L, L*, r); H = 2, H* = 1
GAP_DECIDED = 1e3  # a float rank with σ_r/σ_{r+1} below this is not trusted; the probe settles it mod p


@claim("Theorem 1 probe: rows without a float64 rank gap, settled mod p", order=45)
def check_exact_rows(n: int, seed: int) -> ClaimResult:
    """The rows with a small gap (``n`` unused; ``seed`` draws the point mod p): float64 rank and gap
    recomputed by ``capacity_probe.probe``, exact rank over GF(p) (a certified lower bound on the generic rank),
    target rank mod p vs the target-dimension formula. Verified if every exact budget rank reaches the
    target dimension (the Jacobian test certifiably does not exclude the row; its verdict rests on the
    zero block or the construction, as the table says)."""
    ok, notes = True, []
    for D, L, Ls, r in UNDECIDED_ROWS:
        cfg = ProbeConfig(D, L, Ls, 2, 1, r)
        row = probe(cfg, 0)
        ex = exact_rank.exact_row(cfg, seed)
        ok &= ex.budget_rank_p >= ex.target_dim and ex.target_rank_p == ex.target_dim
        notes.append(f"D={D},L={L},L*={Ls},r={r}: float {row.budget_rank} (gap {row.budget_gap:.2g}) -> mod p "
                     f">= {ex.budget_rank_p} vs target {ex.target_dim}")
    return ClaimResult("Theorem 1 probe: rows without a float64 rank gap, settled mod p", len(UNDECIDED_ROWS), 0.0,
                       "verified" if ok else "FAILED", "; ".join(notes) + "; verdicts unchanged (Jacobian does "
                       "not exclude any; rank mod p at a random point is a lower bound on the generic rank)")


if __name__ == "__main__":
    raise SystemExit(main())
