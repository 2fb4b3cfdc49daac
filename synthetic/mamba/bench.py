"""Training speed of SDT + LoRA vs. LoRA on a Mamba-130M-shaped stack (Galim et al., ICML 2025, Table 2).

The paper reports, on Mamba-130M, 330 s (SDT + LoRA) vs. 410 s (LoRA) per epoch (ratio ≈ 0.80). Here: a
Mamba-130M-sized random residual stack (d_model 768, 24 blocks, H 16, expand 2; no embedding / LM head:
inputs are random hidden states), batch 4, fp32, one AdamW step on an MSE loss, timed per configuration
after warm-up, with configurations interleaved over rounds (median and per-round ratios reported) so
drift hits all alike. Two tables:

1. ``official``: the configurations of the official code (furiosa-ai/ssm-peft,
   ``mamba-peft/cfg/exps/sdlora/glue/*/`` and ``cfg/peft/``):
   - LoRA baselines (alpha = r, dropout 0.1, x_proj as its three blocks W_Δ↓, W_B, W_C):
     r2 on out_proj + x_proj + dt_proj; r3 on out_proj + x_proj; r5 on out_proj + dt_proj;
   - SDLoRA: LoRA r8 (alpha 8, dropout 0.1) on out_proj + SDT on A_log, W_B, W_C with
     ``D − round(0.99·D)`` channels (15 of 1536) and ``H − round(0.75·H)`` A_log states (4 of 16) per
     channel (``sd_lora/*/n0.75_d0.99.json``; the 0.9 / 0.95 variants differ only in A_log states).
   Unfused rows run as the official code does: activation-side LoRA ``W x + s·B A drop(x)`` (dropout
   on the LoRA input path only) around mamba-ssm's unfused block. Fused rows (``mamba_inner_fn``,
   needs causal-conv1d) cannot take an activation-side LoRA, so they run with dropout 0 and merged
   weights ``W + s·B A`` (``"lora_dropout": 0.0`` in the row says so).
2. ``equal_budget``: the methods at an equal trainable budget — LoRA r8 on every linear map vs. SDT (1 % of channels,
   whole rows) + LoRA on in/out_proj at the largest rank within LoRA's trainable count; merged weights.

Which SDT channels/states are chosen does not change the step cost, so they are the first ones
(the selection warm-up is a one-off cost, not timed). ``--profile`` runs one step of each
configuration under ``torch.profiler`` and writes the top kernels by device time and the kernels
that differ between configurations into the JSON and ``bench_mamba_profile.txt``.

    python -m synthetic.bench --mamba            # delegates here
    python -m synthetic.bench --mamba --preset paper --profile --out figures   # -> figures/bench_mamba.json
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from synthetic.atomic import write_json_atomic
from synthetic.cli import check_overwrite, option, parse_options
from synthetic.mamba.config import check_config
from ssm_peft.selection import official_counts
from synthetic.mamba.backends import get_backend
from synthetic.mamba.peft import PROJ_NAMES, MambaPeftConfig, PeftMambaStack, trainable_count
from synthetic.mamba.ref import block_weights
from synthetic.results import environment

LORA_ALL_LINEAR = PROJ_NAMES + ("x_proj.weight", "dt_proj.weight")
PATHS = ("unfused", "fused")
TABLES = ("official", "equal_budget")
PAPER_TABLE2 = {"SDT + LoRA s/epoch": 330, "LoRA s/epoch": 410, "ratio": 330 / 410}

# The official LoRA baselines of Table 2 (cfg/exps/sdlora/glue/*/{0,1,2}_*.yaml -> cfg/peft/lora/r*/...).
OFFICIAL_LORA: Dict[str, Tuple[Tuple[str, ...], int]] = {
    "LoRA r2 out_proj+x_proj+dt_proj (official)": (("out_proj.weight", "x_proj.weight", "dt_proj.weight"), 2),
    "LoRA r3 out_proj+x_proj (official)": (("out_proj.weight", "x_proj.weight"), 3),
    "LoRA r5 out_proj+dt_proj (official)": (("out_proj.weight", "dt_proj.weight"), 5),
}
SDLORA_OFFICIAL = "SDLoRA: SDT + LoRA r8 out_proj (official)"


@dataclass(frozen=True)
class MambaBenchConfig:
    """Every field is an option of ``python -m synthetic.bench --mamba``."""

    preset: str = option("cpu", "named configuration: its values are the defaults shown here; options override them")
    backend: str = option("auto", "mamba_ssm | reference | auto (mamba_ssm if CUDA and the package are present)")
    fused: bool = option(True, "also time the fused path (mamba_inner_fn) when causal-conv1d is installed")
    unfused: bool = option(True, "time the unfused path")
    tables: Tuple[str, ...] = option(TABLES, "tables to time: official (Table 2's configurations), equal_budget")
    device: str = option("auto", "auto (CUDA if available), cpu, or cuda[:i]")
    d_model: int = option(768, "model width")
    n_layers: int = option(24, "Mamba blocks")
    d_state: int = option(16, "states per channel")
    expand: int = option(2, "expansion factor (d_inner = expand x d_model)")
    batch: int = option(4, "sequences per step")
    seq_len: int = option(1024, "sequence length")
    lora_rank: int = option(8, "equal-budget table: LoRA rank on every linear map")
    channel_frac: float = option(0.01, "equal-budget table: SDT channels per layer, as a fraction of d_inner")
    official_channel_freeze: float = option(0.99, "official SDLoRA: fraction of channels frozen")
    official_state_freeze: float = option(0.75, "official SDLoRA: fraction of A_log states frozen per channel")
    official_sdlora_rank: int = option(8, "official SDLoRA: LoRA rank on out_proj")
    lora_dropout: float = option(0.1, "official LoRA dropout (unfused rows)")
    warmup_steps: int = option(3, "untimed steps first (compilation, caches)")
    steps: int = option(10, "timed steps per configuration per round")
    rounds: int = option(5, "rounds (configurations interleaved per round)")
    profile: bool = option(False, "profile one step per configuration (torch.profiler) into bench_mamba_profile.txt")
    profile_top: int = option(15, "events per configuration in the profile")
    out: str = option("figures", "folder of bench_mamba.json")
    force: bool = option(False, "replace a bench_mamba.json of another configuration")


_TINY = dict(d_model=16, n_layers=2, d_state=4, batch=2, seq_len=16, lora_rank=2, channel_frac=0.25,
             official_channel_freeze=0.75, warmup_steps=1, steps=2, rounds=2)
PRESETS: Dict[str, Dict] = {
    "cpu": dict(_TINY, out="out"),  # seconds on a CPU (the reference backend); not the paper's sizes
    "paper": {},  # Table 2's official configuration (Mamba-130M shape, batch 4 x 1024): a GPU
    "tiny": dict(_TINY, out="out"),
}


def _count(layer_weights, c: MambaPeftConfig, d_state: int, dt_rank: int) -> int:
    chans, states = _first_selection(c, layer_weights[0]["A_log"].shape[1], 1)
    return trainable_count(PeftMambaStack(layer_weights[:1], d_state=d_state, dt_rank=dt_rank, config=c,
                                          channels=chans, states=states))


def _first_selection(c: MambaPeftConfig, H: int, n_layers: int):
    """SDT channels 0..k-1 and A_log states 0..s-1 in every layer (the step cost does not depend on which)."""
    if not c.sdt_channels:
        return None, None
    chans = [list(range(c.sdt_channels))] * n_layers
    states = [[list(range(c.sdt_states))] * c.sdt_channels] * n_layers if c.sdt_states else None
    return chans, states


def equal_budget_configs(layer_weights, cfg: MambaBenchConfig, d_state: int, dt_rank: int) -> Dict[str, MambaPeftConfig]:
    """LoRA at rank ``cfg.lora_rank`` and SDT + LoRA at the largest proj rank within LoRA's count."""
    D = layer_weights[0]["A_log"].shape[0]
    channels = max(1, math.ceil(cfg.channel_frac * D))
    lora = MambaPeftConfig(lora=LORA_ALL_LINEAR, lora_rank=cfg.lora_rank)
    n_lora = _count(layer_weights, lora, d_state, dt_rank)
    best = None
    for r in range(1, 4 * cfg.lora_rank + 1):
        c = MambaPeftConfig(lora=PROJ_NAMES, lora_rank=r, sdt_channels=channels)
        if _count(layer_weights, c, d_state, dt_rank) <= n_lora:
            best = c
    if best is None:
        raise ValueError("SDT + LoRA: even rank 1 exceeds LoRA's budget; lower channel_frac")
    return {"LoRA": lora, "SDT + LoRA": best}


def official_configs(layer_weights, cfg: MambaBenchConfig, lora_dropout: float) -> Dict[str, MambaPeftConfig]:
    """The official LoRA baselines and SDLoRA (module docstring), with the given LoRA dropout."""
    D, H = layer_weights[0]["A_log"].shape
    out = {name: MambaPeftConfig(lora=targets, lora_rank=r, lora_alpha=float(r), lora_dropout=lora_dropout,
                                 lora_x_proj_split=True)
           for name, (targets, r) in OFFICIAL_LORA.items()}
    n_ch, n_st = official_counts(D, H, cfg.official_channel_freeze, cfg.official_state_freeze)
    r = cfg.official_sdlora_rank
    out[SDLORA_OFFICIAL] = MambaPeftConfig(lora=("out_proj.weight",), lora_rank=r, lora_alpha=float(r),
                                           lora_dropout=lora_dropout, sdt_channels=n_ch, sdt_states=n_st)
    return out


def _spread(values: Sequence[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": list(values)}


def _device_time_us(e) -> float:
    return float(getattr(e, "self_device_time_total", 0.0) or getattr(e, "self_cuda_time_total", 0.0) or 0.0)


def profile_step(step, on_cuda: bool, top: int) -> dict:
    """One ``step()`` under torch.profiler: top events by self device time (CUDA kernels) or, on
    CPU, by self CPU time; all event names, for the diff between configurations."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=acts) as prof:
        step()
        if on_cuda:
            torch.cuda.synchronize()
    avgs = prof.key_averages()
    if on_cuda:
        ev = [(e.key, _device_time_us(e), e.count) for e in avgs if _device_time_us(e) > 0]
        unit = "self device time (us)"
    else:
        ev = [(e.key, float(e.self_cpu_time_total), e.count) for e in avgs if e.self_cpu_time_total > 0]
        unit = "self CPU time (us)"
    ev.sort(key=lambda t: -t[1])
    total = sum(t for _, t, _ in ev)
    return {"unit": unit, "total_us": total, "n_events": len(ev),
            "top": [{"name": n, "us": t, "pct": 100 * t / total if total else 0.0, "count": c} for n, t, c in ev[:top]],
            "names": sorted({n for n, _, _ in ev}), "us_by_name": {n: t for n, t, _ in ev}}


def profile_diff(profiles: Dict[str, dict]) -> List[dict]:
    """Events present in some configurations' step but not in all (by name), with their time in each."""
    names = [set(p["names"]) for p in profiles.values()]
    if not names:
        return []
    common = set.intersection(*names)
    rows = []
    for n in sorted(set.union(*names) - common):
        rows.append({"name": n, "us": {k: p["us_by_name"].get(n, 0.0) for k, p in profiles.items()}})
    rows.sort(key=lambda r: -max(r["us"].values()))
    return rows


def bench(cfg: MambaBenchConfig) -> dict:
    bad = [t for t in cfg.tables if t not in TABLES]
    if bad:
        raise ValueError(f"tables: unknown {bad}; choose from {TABLES}")
    if not (cfg.fused or cfg.unfused):
        raise ValueError("fused/unfused: at least one path must be timed")
    paths = [p for p in PATHS if (p == "fused" and cfg.fused) or (p == "unfused" and cfg.unfused)]
    backend0 = get_backend(cfg.backend, fused=False)
    dev = torch.device(("cuda" if torch.cuda.is_available() and backend0.name == "mamba_ssm" else "cpu")
                       if cfg.device == "auto" else cfg.device)
    on_cuda = dev.type == "cuda"
    torch.manual_seed(0)
    blocks = [backend0.make_block(cfg.d_model, cfg.d_state, cfg.expand, dev) for _ in range(cfg.n_layers)]
    layer_weights = [block_weights(b) for b in blocks]
    dt_rank = blocks[0].dt_rank
    del blocks
    H = cfg.d_state

    # rows: (table, path, label) -> config
    rows: Dict[Tuple[str, str, str], MambaPeftConfig] = {}
    notes: List[str] = []
    backends = {}
    for path in paths:
        be = get_backend(cfg.backend, fused=(path == "fused"))
        if path == "fused" and be.inner_fn is None:
            notes.append("fused rows skipped: no mamba_inner_fn (needs the mamba_ssm backend and causal-conv1d)")
            continue
        backends[path] = be
        if "official" in cfg.tables:
            # fused: mamba_inner_fn needs weight tensors, so dropout 0 and merged LoRA weights
            for name, c in official_configs(layer_weights, cfg, cfg.lora_dropout if path == "unfused" else 0.0).items():
                rows[("official", path, name)] = c
        if "equal_budget" in cfg.tables:
            for name, c in equal_budget_configs(layer_weights, cfg, cfg.d_state, dt_rank).items():
                rows[("equal_budget", path, name)] = c
    if not rows:
        raise ValueError("no configuration to time: " + "; ".join(notes))

    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(cfg.batch, cfg.seq_len, cfg.d_model, generator=g).to(dev)  # (Bt, N, d_model)
    y = torch.randn(cfg.batch, cfg.seq_len, cfg.d_model, generator=g).to(dev)
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    models, opts = {}, {}
    for key, c in rows.items():
        chans, states = _first_selection(c, H, cfg.n_layers)
        models[key] = PeftMambaStack(layer_weights, d_state=cfg.d_state, dt_rank=dt_rank, config=c, channels=chans,
                                     states=states, generator=torch.Generator().manual_seed(0)).to(dev).train()
        opts[key] = torch.optim.AdamW([p for p in models[key].parameters() if p.requires_grad], lr=1e-4)

    def step(key):
        loss = torch.mean((models[key](x, backends[key[1]]) - y) ** 2)
        opts[key].zero_grad(set_to_none=True)
        loss.backward()
        opts[key].step()

    times: Dict[tuple, List[float]] = {k: [] for k in rows}
    peak: Dict[tuple, Optional[float]] = {}
    for key in rows:  # warm-up (kernel selection, allocator) and peak memory of one step
        for _ in range(cfg.warmup_steps):
            step(key)
        sync()
        if on_cuda:
            torch.cuda.reset_peak_memory_stats()
            step(key)
            sync()
            peak[key] = torch.cuda.max_memory_allocated() / 2**30
        else:
            peak[key] = None  # not measured on CPU
    for _ in range(cfg.rounds):
        for key in rows:  # interleaved: drift hits every configuration alike
            sync()
            t0 = time.perf_counter()
            for _ in range(cfg.steps):
                step(key)
            sync()
            times[key].append(1e3 * (time.perf_counter() - t0) / cfg.steps)

    results = []
    for key, c in rows.items():
        table, path, name = key
        fb = models[key].fused_fallback(backends[path])
        results.append({
            "table": table, "method": name, "fused": path == "fused" and fb is None, "path": path,
            "fused_fallback": fb, "trainable_params": trainable_count(models[key]),
            "ms_per_step": statistics.median(times[key]), "ms_per_step_rounds": times[key],
            "peak_mem_gb": peak[key], "lora_rank": c.lora_rank, "lora_alpha": c.lora_alpha,
            "lora_targets": list(c.lora), "lora_x_proj_split": c.lora_x_proj_split, "lora_dropout": c.lora_dropout,
            "lora_form": "activation-side" if models[key].blocks[0].activation_side() else "merged weights",
            "sdt_channels_per_layer": c.sdt_channels, "sdt_states_per_channel": c.sdt_states or (H if c.sdt_channels else 0),
        })

    ratios = {}
    for path in backends:
        if "official" in cfg.tables:
            sd = times[("official", path, SDLORA_OFFICIAL)]
            per = {}
            for name in OFFICIAL_LORA:
                lo = times[("official", path, name)]
                per[f"SDLoRA / {name}"] = _spread([a / b for a, b in zip(sd, lo)])
            mean_lora = [statistics.mean(times[("official", path, n)][i] for n in OFFICIAL_LORA) for i in range(cfg.rounds)]
            per["SDLoRA / mean of the three LoRA baselines"] = _spread([a / b for a, b in zip(sd, mean_lora)])
            ratios[f"official/{path}"] = per
        if "equal_budget" in cfg.tables:
            a, b = times[("equal_budget", path, "SDT + LoRA")], times[("equal_budget", path, "LoRA")]
            ratios[f"equal_budget/{path}"] = {"SDT + LoRA / LoRA": _spread([u / v for u, v in zip(a, b)])}

    prof = None
    if cfg.profile:
        prof = {}
        for key in rows:
            prof["/".join(key)] = profile_step(lambda: step(key), on_cuda, cfg.profile_top)
        diffs = {}
        for path in backends:
            for table in cfg.tables:
                sub = {k: v for k, v in prof.items() if k.startswith(f"{table}/{path}/")}
                diffs[f"{table}/{path}"] = profile_diff(sub)[: 3 * cfg.profile_top]
        prof = {"per_config": {k: {kk: vv for kk, vv in v.items() if kk not in ("names", "us_by_name")}
                               for k, v in prof.items()}, "differing_events": diffs}

    env = environment()
    eb = ratios.get("equal_budget/unfused") or next((v for k, v in ratios.items() if k.startswith("equal_budget")), None)
    any_backend = next(iter(backends.values()))
    return {
        "device": env["device"] if on_cuda else "cpu",
        "commit": os.environ.get("GIT_COMMIT") or env["commit"], "date": env["date"], "torch": env["torch"],
        "mamba_ssm_version": any_backend.version, "backend": any_backend.name,
        "fused_available": "fused" in backends, "notes": notes,
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out", "force")},
        "results": results,
        "ratios": ratios,
        # kept for scripts/make_notebook.py: the equal-budget ratio (unfused when timed) of medians
        "ratio_sdt_lora_over_lora": (eb["SDT + LoRA / LoRA"]["median"] if eb else None),
        "paper_table2": PAPER_TABLE2,
        "profile": prof,
    }


def profile_text(res: dict) -> str:
    """A short text table of the profile: top events per configuration and events that differ."""
    prof = res.get("profile")
    if not prof:
        return ""
    lines = [f"# Mamba bench profile, one training step each; {res['device']}, torch {res['torch']}, "
             f"mamba-ssm {res['mamba_ssm_version']}, commit {res['commit']}", ""]
    for k, p in prof["per_config"].items():
        lines.append(f"## {k}: {p['n_events']} events, total {p['total_us'] / 1e3:.2f} ms ({p['unit']})")
        for e in p["top"]:
            lines.append(f"  {e['us'] / 1e3:9.3f} ms {e['pct']:5.1f}%  x{e['count']:<4d} {e['name'][:110]}")
        lines.append("")
    for k, rows in prof["differing_events"].items():
        lines.append(f"## events not in every configuration of {k} (ms per step)")
        for r in rows:
            lines.append("  " + r["name"][:90] + ": " + ", ".join(f"{c.split('/')[-1][:24]}={v / 1e3:.3f}"
                                                                  for c, v in r["us"].items()))
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    cfg, p = parse_options(MambaBenchConfig, PRESETS, argv, prog="python -m synthetic.bench --mamba",
                           description=__doc__.split("\n\n")[0], validate=check_config)
    out = Path(cfg.out) / "bench_mamba.json"
    ident = {"device": environment()["device"] if torch.cuda.is_available() else "cpu",
             "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out", "force")}}
    try:  # before anything runs: a report of another device or configuration there is kept unless --force
        check_overwrite(out, ident, cfg.force, fields=("config",))
        res = bench(cfg)
    except ValueError as e:
        p.error(str(e))
    write_json_atomic(out, res)
    if res["profile"]:
        (Path(cfg.out) / "bench_mamba_profile.txt").write_text(profile_text(res) + "\n")
    for r in res["results"]:
        pk = "n/a" if r["peak_mem_gb"] is None else f"{r['peak_mem_gb']:.2f}"
        print(f"{r['table']:<12} {r['path']:<7} {r['method']:<44} trainable {r['trainable_params']:>9}  "
              f"{r['ms_per_step']:8.2f} ms/step  peak {pk} GiB  fused={r['fused']}")
    for k, per in res["ratios"].items():
        for name, s in per.items():
            print(f"ratio {k}: {name}: median {s['median']:.3f} (rounds {s['min']:.3f}..{s['max']:.3f}); "
                  f"paper 330/410 = {PAPER_TABLE2['ratio']:.3f}")
    for n in res["notes"]:
        print("note:", n)
    print(f"-> {out} on {res['device']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
