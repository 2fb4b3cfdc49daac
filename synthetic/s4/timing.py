"""Timing one deep-S4 training step (the benchmarks' shared measurement): :func:`bench_method` times a method's
iterations on a trainer (compile and warm-up excluded, CUDA synchronised), :func:`cpu_info` names the CPU.
Used by ``synthetic.s4.bench`` (per method) and ``synthetic.s4.bench_scaling`` (per convolution form)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Dict, Optional

import torch

from synthetic.s4 import methods as s4m, model as sm, train as s4t


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_state(trainer, cfg, method, budget, frozen, target, seed, R, selection):
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
        state = make_state(trainer, cfg, method, budget, frozen, target, seed, R, sel)
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


def cpu_info() -> Dict:
    """CPU model (``/proc/cpuinfo``), logical cores, torch threads."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
