"""Configuration of the hybrid regression: :class:`HybridRegressionConfig` behind ``python -m
synthetic.hybrid_regression``, its presets, the command line (:func:`synthetic.cli.parse_options`; the option checks
shared with the Mamba experiment, :func:`synthetic.mamba.config.check_config`), the hybrid's own rules,
the run grid and the fields of a run's key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from synthetic.hybrid.model import ATTENTION_KERNELS, NORMS, check_heads, layer_kinds
from synthetic.hybrid.peft import METHODS
from synthetic.cli import SweepConfig, key_config, option, parse_options, redefault
from synthetic.mamba.config import budget_label, lr_policy, check_config, lr_outermost_grid
from synthetic.runner import parse_shard

METHOD_ORDER = ("Frozen", "LoRA (Attn) + LoRA (Proj)", "LoRA (Attn) + LoRA (SSM)", "LoRA (Attn) + DoRA (SSM)",
                "LoRA (Attn) + SDT (SSM)", "DoRA (Lin) + DoRA (SSM)", "DoRA (Lin) + SDT (SSM)", "Full")
RUN_ORDER = ("Frozen", "LoRA (Attn) + SDT (SSM)", "LoRA (Attn) + DoRA (SSM)", "DoRA (Lin) + SDT (SSM)",
             "DoRA (Lin) + DoRA (SSM)", "LoRA (Attn) + LoRA (SSM)", "LoRA (Attn) + LoRA (Proj)", "Full")
DESCRIPTION = "Hybrid (Jamba-style attention + Mamba): PEFT of both module kinds, regression to a smaller target."


@dataclass(frozen=True)
class HybridRegressionConfig(SweepConfig):
    """Every field is a CLI option (``--d-model 64``; tuples as comma lists: ``--lrs 1e-3,3e-3``)."""

    backend: str = option("auto", "Mamba blocks: mamba_ssm | reference | auto (mamba_ssm on a CUDA device where it "
                          "is installed)")
    fused: bool = option(True, "use mamba_inner_fn when causal-conv1d is installed (mamba_ssm backend)")
    d_model: int = option(16, "model width (channels of the residual stream)")
    expand: int = option(2, "Mamba's expansion factor (d_inner = expand x d_model)")
    n_heads: int = option(2, "attention heads (a divisor of d_model)")
    norm: str = option("rmsnorm", "pre-norm of every layer: rmsnorm (Jamba) | none")
    attention_kernel: str = option("sdpa", "sdpa (torch scaled_dot_product_attention, causal) | explicit (softmax "
                                   "twin)")
    frozen_layers: int = option(4, "layers of the frozen model (a multiple of --frozen-attn-period)")
    frozen_attn_period: int = option(4, "one attention layer per period: ratio 1 : period - 1 (Jamba: 8)")
    frozen_attn_offset: int = option(2, "layer i is attention iff i %% period == offset (Jamba: 4 of 8)"
                                     .replace("%%", "%"))
    frozen_d_state: int = option(8, "states per channel of the frozen model's Mamba layers")
    target_layers: int = option(2, "layers of the target model")
    target_attn_period: int = option(2, "the target's attention period")
    target_attn_offset: int = option(1, "the target's attention offset")
    target_d_state: int = option(4, "states per channel of the target's Mamba layers")
    batch: int = option(8, "sequences per training batch")
    seq_len: int = option(32, "sequence length")
    iters: int = option(150, "AdamW iterations per run")
    eval_every: int = option(25, "iterations between evaluations")
    eval_batches: int = option(2, "batches of the evaluation MSE")
    warmup_iters: int = option(10, "iterations of Algorithm 1's warm-up of the Mamba blocks' S6 parameters (SDT's "
                               "selection)")
    warmup_lr: float = option(1e-2, "learning rate of Algorithm 1's warm-up")
    weight_decay: float = option(0.01, "AdamW's decoupled weight decay (>= 0)")
    lrs: Tuple[float, ...] = redefault("lrs", (3e-2, 1e-2), "base learning-rate grid, swept in this order; grown "
                                       "at its edges")
    seeds: Tuple[int, ...] = redefault("seeds", (0, 1, 2), "seeds of the data and the adapters' initialisation, "
                                       "comma-separated (the models are drawn from --model-seed)")
    model_seed: int = option(0, "seeds the frozen and target hybrids (shared by all runs)")
    lin_lora_rank: int = option(1, "rank of the linear-projection adapter (LoRA on the attention's q,k,v,o; DoRA on "
                                "every linear map)", key=False, old=("--lin-rank",))
    proj_lora_ranks: Tuple[int, ...] = option((1, 2), "LoRA (Proj) ranks on Mamba's in_proj, out_proj", key=False,
                                              old=("--proj-ranks",))
    ssm_lora_ranks: Tuple[int, ...] = option((1, 2), "LoRA / DoRA (SSM) ranks on the S6 module (<= frozen_d_state)",
                                             key=False, old=("--ssm-ranks",))
    sdt: Tuple[int, ...] = option((4, 8), "SDT budgets: channels per Mamba layer (<= d_inner; every state of a "
                                  "chosen channel is updated)", key=False, old=("--sdt-channels",))
    methods: Tuple[str, ...] = redefault("methods", METHOD_ORDER)


PRESETS: Dict[str, Dict] = {
    # 3 seeds, ~4-6 minutes on 2 CPU cores with the reference scan (4 layers: M M A M; target M A)
    "cpu": {},
    # the GPU configuration: Jamba's own layout (8 layers, attention at 4 of 8: 1 attention : 7 Mamba); a wide base lr
    # grid (the CPU preset's best lrs were 3e-2..1.2e-1), since base-grid runs spread over shards, lr extensions do not
    "paper": dict(
        d_model=64, n_heads=4, frozen_layers=8, frozen_attn_period=8, frozen_attn_offset=4,
        frozen_d_state=16, target_layers=2, target_attn_period=2, target_attn_offset=1, target_d_state=8,
        batch=32, seq_len=128, iters=300, eval_every=25, eval_batches=4, warmup_iters=30, lrs=(3e-2, 1e-2, 1e-1),
        seeds=(0, 1), lin_lora_rank=2, proj_lora_ranks=(1, 2, 4), ssm_lora_ranks=(1, 2, 4), sdt=(8, 16, 32),
        out="figures"),
    # seconds; for tests
    "tiny": dict(
        d_model=8, n_heads=2, frozen_layers=2, frozen_attn_period=2, frozen_attn_offset=1,
        frozen_d_state=4, target_layers=2, target_attn_period=2, target_attn_offset=0, target_d_state=2, batch=2,
        seq_len=8, iters=6, eval_every=3, eval_batches=1, warmup_iters=2, lrs=(1e-2,), seeds=(0,),
        proj_lora_ranks=(1,), ssm_lora_ranks=(1,), sdt=(4,)),
}


def make(preset: str = "cpu", **over) -> HybridRegressionConfig:
    """The config of ``preset`` (its values over the class defaults) with ``over`` on top; not validated."""
    return HybridRegressionConfig(**{**PRESETS[preset], "preset": preset, **over})


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
    rules = (("lin_lora_rank", (cfg.lin_lora_rank,), cfg.d_model, "d_model (the attention projections' side)"),
             ("proj_lora_ranks", cfg.proj_lora_ranks, cfg.d_model, "d_model (the smaller side of in_proj and "
                                                                   "out_proj)"),
             ("ssm_lora_ranks", cfg.ssm_lora_ranks, cfg.frozen_d_state, "frozen_d_state (A_log's smaller side; "
                                                                        "dt_proj's rank is clamped to dt_rank)"),
             ("sdt", cfg.sdt, d_inner, "d_inner = expand x d_model"))
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


def validate(cfg: HybridRegressionConfig) -> HybridRegressionConfig:
    """Every rule of the command line (ValueError naming the option); ``--methods all`` expanded first."""
    if cfg.methods == ("all",):
        cfg = dataclasses.replace(cfg, methods=tuple(METHODS))
    check_config(cfg)
    check_options(cfg)
    lr_policy(cfg)
    return cfg


def parse_args(argv: Optional[Sequence[str]] = None) -> HybridRegressionConfig:
    """Config from the command line (preset ``cpu`` unless ``--preset`` names another)."""
    return parse_options(HybridRegressionConfig, PRESETS, argv, prog="python -m synthetic hybrid",
                         description=DESCRIPTION, validate=validate)[0]


# ------------------------------------------------------------------------------------ the grid
def run_grid(cfg: HybridRegressionConfig) -> List[dict]:
    """All runs: per seed, lr outermost, the central comparison (SDT vs DoRA on the SSM modules) first."""
    return lr_outermost_grid(cfg, METHODS, RUN_ORDER)


def out_paths(cfg: HybridRegressionConfig) -> Dict[str, Path]:
    out = Path(cfg.out)
    return {"json": out / f"hybrid_regression_{cfg.preset}.jsonl", "mse": out / f"hybrid_mse_vs_params_{cfg.preset}"}


def config_dict(cfg: HybridRegressionConfig) -> dict:
    """What a run computes, for its key: the model, data and training fields (a run key holds its own method, budget,
    lr and seed, so growing a budget list or the lr grid keeps the runs done); field metadata."""
    return key_config(cfg)


__all__ = ["HybridRegressionConfig", "PRESETS", "METHOD_ORDER", "check_options", "parse_args", "validate", "run_grid",
           "out_paths", "config_dict", "budget_label", "lr_policy"]
