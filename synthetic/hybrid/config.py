"""Configuration of the hybrid regression: :class:`HybridRegressionConfig` behind ``python -m
synthetic.hybrid_regression``, its presets, the command line (shared with the Mamba experiment:
:func:`synthetic.mamba.config.parse_config`, :func:`synthetic.mamba.config.check_config`), the hybrid's own rules,
the run grid and the fields of a run's key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from synthetic.hybrid.model import ATTENTION_KERNELS, NORMS, check_heads, layer_kinds
from synthetic.hybrid.peft import METHODS
from synthetic.mamba.config import budget_label, lr_policy, check_config, lr_outermost_grid, parse_config
from synthetic.runner import parse_shard

METHOD_ORDER = ("Frozen", "LoRA (Attn) + LoRA (Proj)", "LoRA (Attn) + LoRA (SSM)", "LoRA (Attn) + DoRA (SSM)",
                "LoRA (Attn) + SDT (SSM)", "DoRA (Lin) + DoRA (SSM)", "DoRA (Lin) + SDT (SSM)", "Full")
RUN_ORDER = ("Frozen", "LoRA (Attn) + SDT (SSM)", "LoRA (Attn) + DoRA (SSM)", "DoRA (Lin) + SDT (SSM)",
             "DoRA (Lin) + DoRA (SSM)", "LoRA (Attn) + LoRA (SSM)", "LoRA (Attn) + LoRA (Proj)", "Full")
BUDGET_FIELDS = ("lin_rank", "proj_ranks", "ssm_ranks", "sdt_channels")  # in each run's budget, not in its key


@dataclass(frozen=True)
class HybridRegressionConfig:
    """Every field is a CLI option (``--d-model 64``; tuples as comma lists: ``--lrs 1e-3,3e-3``)."""

    preset: str = "cpu"  # named config (PRESETS); other options override its fields
    backend: str = "auto"  # Mamba blocks: mamba_ssm | reference | auto (mamba_ssm on a CUDA device where it is installed)
    fused: bool = True  # use mamba_inner_fn when causal-conv1d is installed (mamba_ssm backend)
    device: str = "auto"  # auto | cpu | cuda (auto: cuda when available)
    d_model: int = 16
    expand: int = 2  # Mamba's d_inner = expand x d_model
    n_heads: int = 2  # attention heads (a divisor of d_model)
    norm: str = "rmsnorm"  # pre-norm of every layer: rmsnorm (Jamba) | none
    attention_kernel: str = "sdpa"  # sdpa (torch scaled_dot_product_attention, causal) | explicit (softmax twin)
    frozen_layers: int = 4  # a multiple of frozen_attn_period
    frozen_attn_period: int = 4  # one attention layer per period: ratio 1 : period - 1 (Jamba: 8)
    frozen_attn_offset: int = 2  # layer i is attention iff i % period == offset (Jamba: 4 of 8)
    frozen_d_state: int = 8
    target_layers: int = 2
    target_attn_period: int = 2
    target_attn_offset: int = 1
    target_d_state: int = 4
    batch: int = 8
    seq_len: int = 32
    iters: int = 150
    eval_every: int = 25
    eval_batches: int = 2
    warmup_iters: int = 10  # Algorithm 1's warm-up of the Mamba blocks' S6 parameters (SDT's selection)
    warmup_lr: float = 1e-2
    weight_decay: float = 0.01
    lrs: Tuple[float, ...] = (3e-2, 1e-2)  # swept in this order
    lr_extend_factor: float = 4.0  # a best lr at the grid's edge adds edge x factor (or / factor); 0 = off
    lr_min: float = 1e-6
    lr_max: float = 1.0
    seeds: Tuple[int, ...] = (0, 1)
    model_seed: int = 0  # seeds the frozen and target hybrids (shared by all runs)
    lin_rank: int = 1  # rank of the linear-projection adapter (LoRA on q,k,v,o; Table 4's DoRA on every linear map)
    proj_ranks: Tuple[int, ...] = (1, 2)  # LoRA (Proj): rank on Mamba's in_proj, out_proj
    ssm_ranks: Tuple[int, ...] = (1, 2)  # LoRA / DoRA (SSM): rank on the S6 module (<= frozen_d_state)
    sdt_channels: Tuple[int, ...] = (4, 8)  # SDT: channels per Mamba layer (<= d_inner)
    methods: Tuple[str, ...] = METHOD_ORDER  # registry names, comma-separated, or "all"
    time_budget_s: float = 0.0  # stop starting new runs after this many seconds (0: no limit); rerun to resume
    threads: int = 1  # torch CPU threads on the CPU device (0 = torch default)
    out: str = "figures"
    plot_only: bool = False
    dry_run: bool = False  # print the plan (runs done / to do per method, estimated time) and exit
    shard: str = ""  # "i/n": run only base-grid groups j with j % n == i, into this shard's own results file
    merge: bool = False  # fold the shard files into the main results file (atomically), then plot


PRESETS: Dict[str, HybridRegressionConfig] = {
    # 3 seeds, ~4-6 minutes on 2 CPU cores with the reference scan (4 layers: M M A M; target M A)
    "cpu": HybridRegressionConfig(seeds=(0, 1, 2)),
    # the GPU configuration: Jamba's own layout (8 layers, attention at 4 of 8: 1 attention : 7 Mamba); a wide base lr
    # grid (the CPU preset's best lrs were 3e-2..1.2e-1), since base-grid runs spread over shards, lr extensions do not
    "paper": HybridRegressionConfig(
        preset="paper", d_model=64, n_heads=4, frozen_layers=8, frozen_attn_period=8, frozen_attn_offset=4,
        frozen_d_state=16, target_layers=2, target_attn_period=2, target_attn_offset=1, target_d_state=8,
        batch=32, seq_len=128, iters=300, eval_every=25, eval_batches=4, warmup_iters=30, lrs=(3e-2, 1e-2, 1e-1),
        seeds=(0, 1), lin_rank=2, proj_ranks=(1, 2, 4), ssm_ranks=(1, 2, 4), sdt_channels=(8, 16, 32)),
    # seconds; for tests
    "tiny": HybridRegressionConfig(
        preset="tiny", d_model=8, n_heads=2, frozen_layers=2, frozen_attn_period=2, frozen_attn_offset=1,
        frozen_d_state=4, target_layers=2, target_attn_period=2, target_attn_offset=0, target_d_state=2, batch=2,
        seq_len=8, iters=6, eval_every=3, eval_batches=1, warmup_iters=2, lrs=(1e-2,), seeds=(0,), proj_ranks=(1,),
        ssm_ranks=(1,), sdt_channels=(4,)),
}


def _layout(prefix: str, n_layers: int, period: int, offset: int) -> Tuple[str, ...]:
    """:func:`synthetic.hybrid.model.layer_kinds` with its error naming the option (``--frozen-attn-period`` ...)."""
    try:
        return layer_kinds(n_layers, period, offset)
    except ValueError as e:
        arg, rest = str(e).split(":", 1)
        opt = {"n_layers": "layers", "attn_period": "attn-period", "attn_offset": "attn-offset"}[arg]
        raise ValueError(f"--{prefix}-{opt}:{rest}") from None


def check_options(cfg: HybridRegressionConfig) -> None:
    """The hybrid's own rules (ValueError naming the option): both layouts valid, heads dividing d_model, a known
    norm and attention kernel, budgets within the model, methods in the registry, shard options consistent."""
    _layout("frozen", cfg.frozen_layers, cfg.frozen_attn_period, cfg.frozen_attn_offset)
    _layout("target", cfg.target_layers, cfg.target_attn_period, cfg.target_attn_offset)
    try:
        check_heads(cfg.d_model, cfg.n_heads)
    except ValueError as e:
        raise ValueError(f"--{e}") from None
    if cfg.backend == "mamba_ssm" and cfg.device == "cpu":
        raise ValueError("--backend: 'mamba_ssm' runs on CUDA only; with --device cpu use --backend reference or auto")
    if cfg.norm not in NORMS:
        raise ValueError(f"--norm: one of {sorted(NORMS)}, got {cfg.norm!r}")
    if cfg.attention_kernel not in ATTENTION_KERNELS:
        raise ValueError(f"--attention-kernel: one of {sorted(ATTENTION_KERNELS)}, got {cfg.attention_kernel!r}")
    d_inner = cfg.expand * cfg.d_model
    rules = (("lin_rank", (cfg.lin_rank,), cfg.d_model, "d_model (the attention projections' side)"),
             ("proj_ranks", cfg.proj_ranks, cfg.d_model, "d_model (the smaller side of in_proj and out_proj)"),
             ("ssm_ranks", cfg.ssm_ranks, cfg.frozen_d_state, "frozen_d_state (A_log's smaller side; dt_proj's "
                                                              "rank is clamped to dt_rank)"),
             ("sdt_channels", cfg.sdt_channels, d_inner, "d_inner = expand x d_model"))
    for name, vals, hi, what in rules:
        if not vals or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi for v in vals):
            raise ValueError(f"--{name.replace('_', '-')}: need integers in [1, {hi}] ({what}), got {vals!r}")
    if not cfg.methods:
        raise ValueError("--methods: need at least one method")
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad:
        raise ValueError(f"--methods: unknown {bad}; choose from {list(METHODS)} or 'all'")
    parse_shard(cfg.shard)
    if cfg.shard and (cfg.merge or cfg.plot_only):
        raise ValueError("--shard: cannot be combined with --merge or --plot-only")


def parse_args(argv: Optional[Sequence[str]] = None) -> HybridRegressionConfig:
    """Config from the CLI; the default preset is ``paper`` when CUDA is available, else ``cpu``."""
    import torch

    cfg, p = parse_config(HybridRegressionConfig, PRESETS, "paper" if torch.cuda.is_available() else "cpu", argv,
                          "python -m synthetic.hybrid_regression", __doc__.split("\n\n")[0])
    if cfg.methods == ("all",):
        cfg = dataclasses.replace(cfg, methods=tuple(METHODS))
    try:
        check_options(cfg)
        lr_policy(cfg)
    except ValueError as e:
        p.error(str(e))
    return cfg


def validate(cfg: HybridRegressionConfig) -> HybridRegressionConfig:
    """Every rule of the command line, for a config built in code (ValueError naming the option)."""
    check_config(cfg)
    check_options(cfg)
    lr_policy(cfg)
    return cfg


# ------------------------------------------------------------------------------------ the grid
def run_grid(cfg: HybridRegressionConfig) -> List[dict]:
    """All runs: per seed, lr outermost, the central comparison (SDT vs DoRA on the SSM modules) first."""
    return lr_outermost_grid(cfg, METHODS, RUN_ORDER)


def out_paths(cfg: HybridRegressionConfig) -> Dict[str, Path]:
    out = Path(cfg.out)
    return {"json": out / f"hybrid_regression_{cfg.preset}.jsonl", "mse": out / f"hybrid_mse_vs_params_{cfg.preset}"}


_NOT_IN_KEY = ("out", "plot_only", "dry_run", "time_budget_s", "threads", "preset", "device", "seeds", "lrs", "methods",
               "shard", "merge", "lr_extend_factor", "lr_min", "lr_max") + BUDGET_FIELDS


def config_dict(cfg: HybridRegressionConfig) -> dict:
    """What a run computes, for its key: the model, data and training fields (a run key holds its own method, budget,
    lr and seed, so growing a budget list or the lr grid keeps the runs done)."""
    d = dataclasses.asdict(cfg)
    for k in _NOT_IN_KEY:
        d.pop(k)
    return d


__all__ = ["HybridRegressionConfig", "PRESETS", "METHOD_ORDER", "check_options", "parse_args", "validate", "run_grid",
           "out_paths", "config_dict", "budget_label", "lr_policy"]
