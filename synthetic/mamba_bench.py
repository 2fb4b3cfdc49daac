"""Training speed of SDT + LoRA vs. LoRA at an equal trainable budget (Galim et al., ICML 2025, Table 2).

The paper reports, on Mamba-130M, 330 s (SDT + LoRA) vs. 410 s (LoRA) per epoch (ratio ≈ 0.80). Here: a
Mamba-130M-sized random residual stack (d_model 768, 24 blocks, H 16, expand 2; no embedding / LM head:
inputs are random hidden states), one AdamW step on an MSE loss, timed per method after warm-up, with
methods interleaved over rounds (median reported) so drift hits both alike.

- LoRA: rank ``r`` on every linear map of each block (in_proj, out_proj, x_proj, dt_proj).
- SDT + LoRA: SDT on S6 in ``channels = ceil(channel_frac · D)`` channels per block (the paper's Mamba runs
  freeze 99% of channels) plus LoRA on in_proj, out_proj with the largest rank that keeps the total
  trainable count ≤ LoRA's (so the budgets are equal to within one rank step).
Both are built with :mod:`synthetic.mamba_peft` (effective weights, adapters in the compute path).
Which SDT channels are chosen does not change the step cost, so they are the first ones (Algorithm 1's
warm-up is a one-off cost, not timed).

    python -m synthetic.bench --mamba            # delegates here
    python -m synthetic.mamba_bench --preset paper --out figures     # -> figures/bench_mamba.json
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from .mamba_peft import PROJ_NAMES, MambaPeftConfig, PeftMambaStack, get_backend, mamba_ssm_available, trainable_count
from .mamba_regression import parse_config
from .mamba_ref import block_weights
from .sweep import environment

LORA_ALL_LINEAR = PROJ_NAMES + ("x_proj.weight", "dt_proj.weight")


@dataclass(frozen=True)
class MambaBenchConfig:
    preset: str = "paper"
    backend: str = "auto"
    fused: bool = True
    device: str = "auto"
    d_model: int = 768
    n_layers: int = 24
    d_state: int = 16
    expand: int = 2
    batch: int = 4
    seq_len: int = 1024
    lora_rank: int = 8
    channel_frac: float = 0.01
    warmup_steps: int = 3
    steps: int = 10  # timed steps per method per round
    rounds: int = 3
    out: str = "figures"


PRESETS: Dict[str, MambaBenchConfig] = {
    "paper": MambaBenchConfig(),
    "tiny": MambaBenchConfig(preset="tiny", d_model=16, n_layers=2, d_state=4, batch=2, seq_len=16, lora_rank=2,
                             channel_frac=0.25, warmup_steps=1, steps=2, rounds=1),
}


def equal_budget_configs(layer_weights, cfg: MambaBenchConfig, d_state: int, dt_rank: int) -> Dict[str, MambaPeftConfig]:
    """LoRA at rank ``cfg.lora_rank`` and SDT + LoRA at the largest proj rank within LoRA's count."""
    D = layer_weights[0]["A_log"].shape[0]
    channels = max(1, math.ceil(cfg.channel_frac * D))
    lora = MambaPeftConfig(lora=LORA_ALL_LINEAR, lora_rank=cfg.lora_rank)

    def count(c):
        return trainable_count(PeftMambaStack(layer_weights[:1], d_state=d_state, dt_rank=dt_rank, config=c,
                                              channels=[list(range(c.sdt_channels))] if c.sdt_channels else None))

    n_lora = count(lora)
    best = None
    for r in range(1, 4 * cfg.lora_rank + 1):
        c = MambaPeftConfig(lora=PROJ_NAMES, lora_rank=r, sdt_channels=channels)
        if count(c) <= n_lora:
            best = c
    if best is None:
        raise ValueError("SDT + LoRA: even rank 1 exceeds LoRA's budget; lower channel_frac")
    return {"LoRA": lora, "SDT + LoRA": best}


def bench(cfg: MambaBenchConfig) -> dict:
    backend = get_backend(cfg.backend, fused=cfg.fused)
    dev = torch.device(("cuda" if torch.cuda.is_available() and backend.name == "mamba_ssm" else "cpu")
                       if cfg.device == "auto" else cfg.device)
    torch.manual_seed(0)
    blocks = [backend.make_block(cfg.d_model, cfg.d_state, cfg.expand, dev) for _ in range(cfg.n_layers)]
    layer_weights = [block_weights(b) for b in blocks]
    dt_rank = blocks[0].dt_rank
    del blocks
    configs = equal_budget_configs(layer_weights, cfg, cfg.d_state, dt_rank)
    models, opts = {}, {}
    for name, c in configs.items():
        chans = [list(range(c.sdt_channels))] * cfg.n_layers if c.sdt_channels else None
        models[name] = PeftMambaStack(layer_weights, d_state=cfg.d_state, dt_rank=dt_rank, config=c,
                                      channels=chans, generator=torch.Generator().manual_seed(0)).to(dev)
        opts[name] = torch.optim.AdamW([p for p in models[name].parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(cfg.batch, cfg.seq_len, cfg.d_model, generator=g).to(dev)  # (Bt, N, d_model)
    y = torch.randn(cfg.batch, cfg.seq_len, cfg.d_model, generator=g).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def step(name):
        loss = torch.mean((models[name](x, backend) - y) ** 2)
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        opts[name].step()

    times: Dict[str, List[float]] = {n: [] for n in models}
    peak: Dict[str, float] = {}
    for name in models:  # warm-up (kernel selection, allocator) and peak memory of one step
        for _ in range(cfg.warmup_steps):
            step(name)
        sync()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            step(name)
            sync()
            peak[name] = torch.cuda.max_memory_allocated() / 2**30
        else:
            peak[name] = None  # not measured on CPU
    for _ in range(cfg.rounds):
        for name in models:
            sync()
            t0 = time.perf_counter()
            for _ in range(cfg.steps):
                step(name)
            sync()
            times[name].append(1e3 * (time.perf_counter() - t0) / cfg.steps)
    env = environment()
    results = [{"method": n, "trainable_params": trainable_count(models[n]),
                "ms_per_step": statistics.median(times[n]), "ms_per_step_rounds": times[n],
                "peak_mem_gb": peak[n], "lora_rank": configs[n].lora_rank, "lora_targets": list(configs[n].lora),
                "sdt_channels_per_layer": configs[n].sdt_channels} for n in models]
    by = {r["method"]: r for r in results}
    return {
        "device": env["device"] if dev.type == "cuda" else "cpu",
        "commit": os.environ.get("GIT_COMMIT") or env["commit"], "date": env["date"], "torch": env["torch"],
        "mamba_ssm_version": backend.version, "backend": backend.name, "fused_mamba_inner_fn": backend.inner_fn is not None,
        "config": {k: v for k, v in cfg.__dict__.items() if k != "out"},
        "results": results,
        "ratio_sdt_lora_over_lora": by["SDT + LoRA"]["ms_per_step"] / by["LoRA"]["ms_per_step"],
        "paper_table2": {"SDT + LoRA s/epoch": 330, "LoRA s/epoch": 410, "ratio": 330 / 410},
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    cfg, _ = parse_config(MambaBenchConfig, PRESETS, "paper" if mamba_ssm_available() else "tiny", argv,
                          "python -m synthetic.bench --mamba", __doc__.split("\n\n")[0])
    res = bench(cfg)
    out = Path(cfg.out) / "bench_mamba.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, allow_nan=False) + "\n")
    for r in res["results"]:
        print(f"{r['method']:<12} trainable {r['trainable_params']:>9}  {r['ms_per_step']:8.2f} ms/step  "
              f"peak {r['peak_mem_gb'] if r['peak_mem_gb'] is None else round(r['peak_mem_gb'], 2)} GiB")
    print(f"ratio SDT+LoRA / LoRA = {res['ratio_sdt_lora_over_lora']:.3f} (paper Table 2: 330/410 = 0.805; "
          f"target <= 0.85) on {res['device']} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
