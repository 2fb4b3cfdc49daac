"""Benchmark: milliseconds per training iteration of each deep-S4 fine-tuning method (Fig. 2 setup).

    python -m synthetic.bench                      # paper configuration, writes figures/bench_s4.json
    python -m synthetic.bench --runs 3             # R runs trained together (the sweep's mode)
    python -m synthetic.bench --mamba [ARGS...]    # delegates to synthetic.mamba_bench.main(ARGS)

One iteration = fresh integer batch generated on the device, target forward, loss, backward and
AdamW step (``synthetic.s4_regression.Trainer.train``). ``ms_per_iter`` is wall time per iteration
divided by the number of runs trained together (``--runs``; 1 = a single run). Frozen has no
training step: its row times a forward pass. Peak memory is ``torch.cuda.max_memory_allocated``.

Precision check (``--check-iters``): the same SDT and Full runs trained with fp32 and with TF32
matmuls from identical initial states and data; the JSON reports both best MSEs and their
relative difference, so the TF32 speed-up is shown not to change the result.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from synthetic.s4 import model as sm
from synthetic.s4 import config as s4c, methods as s4m, train as s4t
from synthetic.cli import check_out_dir, check_overwrite, write_json_atomic
from synthetic.results import environment


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _state(trainer, cfg, method, budget, frozen, target, seed, R, selection):
    state = sm.RunState.create(frozen, R, *trainer.rank_max(), generator=torch.Generator().manual_seed(seed))
    method.configure(state, budget, selection)
    return state


def bench_method(trainer: s4t.Trainer, name: str, iters: int, warm: int, R: int, seed: int = 0,
                 cache: Optional[Dict] = None) -> Dict:
    cfg, device = trainer.cfg, trainer.device
    cache = cache if cache is not None else {}
    if "models" not in cache:
        cache["models"] = trainer.models(seed)
    frozen, target = cache["models"]
    method = s4m.METHODS[name]
    budgets = method.budgets(cfg)
    budget = budgets[len(budgets) // 2]  # a mid-sized budget; the step's cost does not depend on it
    sel = None
    if method.needs_selection:
        if "selection" not in cache:
            cache["selection"] = trainer.warmup_selection(frozen, target, seed)
        sel = cache["selection"]
    g = trainer.data(seed, stream=0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if method.trains:
        state = _state(trainer, cfg, method, budget, frozen, target, seed, R, sel)
        lrs = [sorted(cfg.lrs)[(len(cfg.lrs) - 1) // 2]] * R
        trainer.train(state, lrs, warm, target, g)  # compile / warm-up
        _sync(device)
        t0 = time.perf_counter()
        trainer.train(state, lrs, iters, target, g)
        _sync(device)
        ms = (time.perf_counter() - t0) * 1e3 / iters / R
    else:
        layers = [{k: v[None] for k, v in p.items()} for p in frozen]
        trainer.evaluate(layers, target, g, warm)
        _sync(device)
        t0 = time.perf_counter()
        trainer.evaluate(layers, target, g, iters)
        _sync(device)
        ms = (time.perf_counter() - t0) * 1e3 / iters
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"method": name, "ms_per_iter": round(ms, 3), "peak_mem_gb": None if peak is None else round(peak, 3),
            "budget": s4m.budget_label(budget), "runs_per_step": R if method.trains else 1,
            "forward_only": not method.trains}


def precision_check(cfg: s4c.Config, device: torch.device, iters: int, seed: int = 0) -> List[Dict]:
    """Best MSE after ``iters`` eager iterations with fp32, TF32 and fp16-conv matmuls (same init and data)."""
    out = []
    for name in ("SDT", "Full"):
        res = {}
        for prec in ("fp32", "tf32", "fp16"):
            c = s4c.Config(**{**cfg.__dict__, "precision": prec, "compile": False, "iters": iters})
            tr = s4t.Trainer(c, device, log=lambda *a: None)
            frozen, target = tr.models(seed)
            method = s4m.METHODS[name]
            budgets = method.budgets(c)
            budget = budgets[-1]
            sel = tr.warmup_selection(frozen, target, seed) if method.needs_selection else None
            state = _state(tr, c, method, budget, frozen, target, seed, 1, sel)
            curve = tr.train(state, [sorted(c.lrs)[(len(c.lrs) - 1) // 2]], iters, target, tr.data(seed, stream=0))[0]
            res[prec] = {"best_mse": float(curve.min()), "final_mse": float(curve[-1])}
        ref = max(abs(res["fp32"]["best_mse"]), 1e-12)
        rel = {p: abs(res[p]["best_mse"] - res["fp32"]["best_mse"]) / ref for p in ("tf32", "fp16")}
        out.append({"method": name, "budget": s4m.budget_label(budget), "iters": iters, **res,
                    "rel_diff_best_mse": rel["tf32"], "rel_diff_best_mse_fp16": rel["fp16"]})
    s4t.set_precision(cfg.precision, device)  # restore the configured precision
    return out


REPORT_CONFIG = ("D", "H", "H_star", "L_frozen", "L_target", "N", "batch")  # the sizes a report is made for


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m synthetic.bench", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="paper", choices=sorted(s4c.PRESETS))
    p.add_argument("--methods", default=",".join(s4m.METHODS), help="comma-separated method names")
    p.add_argument("--iters", type=int, default=30, help="timed iterations per method")
    p.add_argument("--warm", type=int, default=5, help="untimed iterations first (compilation)")
    p.add_argument("--runs", type=int, default=1, help="runs trained together per step (R)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="tf32", choices=("tf32", "fp32", "fp16"))
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--check-iters", type=int, default=100, help="iterations of the fp32-vs-TF32 check (0: skip)")
    p.add_argument("--out", default="figures/bench_s4.json",
                   help="the report (JSON); a report of another device or configuration there is kept unless --force")
    p.add_argument("--force", action="store_true", help="replace a report of another device or configuration")
    a = p.parse_args(argv)
    for name in ("iters", "warm", "runs"):
        if getattr(a, name) < 1:
            p.error(f"--{name}: must be >= 1, got {getattr(a, name)}")
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in s4m.METHODS]
    if bad:
        p.error(f"--methods: unknown {bad}; choose from {list(s4m.METHODS)}")
    if not methods:
        p.error("--methods: nothing to benchmark (give at least one method); no report written")
    cfg = s4c.parse_config(["--preset", a.preset, "--device", a.device, "--precision", a.precision]
                           + ([] if a.compile is None else ["--compile" if a.compile else "--no-compile"]))
    device = s4t.resolve_device(cfg)
    ident = {"device": environment()["device"], "config": {k: getattr(cfg, k) for k in REPORT_CONFIG}}
    try:
        check_out_dir(Path(a.out).parent)
        check_overwrite(a.out, ident, a.force)
    except ValueError as e:
        p.error(str(e))
    cfg = s4c.Config(**{**cfg.__dict__, "lrs": tuple([sorted(cfg.lrs)[(len(cfg.lrs) - 1) // 2]] * a.runs)})
    trainer = s4t.Trainer(cfg, device)
    env = environment()
    results, cache = [], {}
    t_all = time.perf_counter()
    for name in methods:
        t0 = time.perf_counter()
        r = bench_method(trainer, name, a.iters, a.warm, a.runs, cache=cache)
        r["wall_s_incl_compile"] = round(time.perf_counter() - t0, 2)
        results.append(r)
        print(f"{name:16s} {r['ms_per_iter']:9.2f} ms/iter  peak {r['peak_mem_gb']} GiB  ({r['wall_s_incl_compile']} s)",
              flush=True)
    check = precision_check(cfg, device, a.check_iters) if a.check_iters else []
    for c in check:
        print(f"precision check {c['method']}: best MSE fp32 {c['fp32']['best_mse']:.6g}, tf32 {c['tf32']['best_mse']:.6g}, "
              f"fp16 {c['fp16']['best_mse']:.6g}; rel diff tf32 {c['rel_diff_best_mse']:.2e}, "
              f"fp16 {c['rel_diff_best_mse_fp16']:.2e}", flush=True)
    report = {"device": env["device"], "commit": env["commit"], "date": env["date"], "torch": env["torch"],
              "precision": f"{cfg.precision} matmuls, fp32 storage" if device.type == "cuda" else "fp32",
              "compiled": trainer.use_compile, "config": {k: getattr(cfg, k) for k in REPORT_CONFIG},
              "runs_per_step": a.runs, "timed_iters": a.iters, "results": results, "precision_check": check,
              "wall_s": round(time.perf_counter() - t_all, 1)}
    write_json_atomic(a.out, report)
    print("wrote", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
