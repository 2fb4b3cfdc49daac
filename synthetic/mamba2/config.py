"""Configuration of the Mamba-II regression: the :class:`Mamba2RegressionConfig` behind
``python -m synthetic.mamba2_regression``, its presets, validation, the run grid and the fields of a run's key
(the command line is :func:`synthetic.cli.parse_options`; the shared option checks are Mamba-I's,
:func:`synthetic.mamba.config.check_config`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from synthetic.cli import SweepConfig, deprecated, key_config, option, parse_options, redefault
from synthetic.mamba.config import budget_label, check_config, lr_outermost_grid, lr_policy  # noqa: F401 (budget_label: this experiment's)
from synthetic.mamba2.peft import METHODS, mamba_ssm_available
from synthetic.runner import parse_shard

METHOD_ORDER = tuple(m for m in METHODS if m != "Full") + ("Full",)
DESCRIPTION = "Mamba-II (SSD): SDT vs LoRA on Mamba2 blocks, regression to a smaller target."


def _old_sdt_lora(option: str, s: str) -> str:
    """``--sdt-lora HxSxR`` (the old notation) -> ``HxS:R``, with a deprecation message."""
    if ":" not in s and s.count("x") == 2:
        new = s[: s.rindex("x")] + ":" + s[s.rindex("x") + 1:]
        deprecated(f"{option} {s}", f"{option} {new} (heads x states : rank)")
        return new
    return s


@dataclass(frozen=True)
class Mamba2RegressionConfig(SweepConfig):
    """Every field is a CLI option (``--d-model 64``; tuples as comma lists: ``--lrs 1e-3,3e-3``)."""

    backend: str = option("auto", "mamba_ssm (Triton SSD kernel) | reference (pure torch) | auto (mamba_ssm if "
                          "usable)")
    d_model: int = option(16, "model width (channels of the residual stream)")
    expand: int = option(2, "expansion factor (d_inner = expand x d_model)")
    headdim: int = option(8, "P: channels per head (d_inner / headdim heads)")
    ngroups: int = option(1, "G: B/C groups (must divide the number of heads)")
    frozen_layers: int = option(2, "layers of the frozen model")
    frozen_d_state: int = option(8, "states per head of the frozen model")
    target_layers: int = option(1, "layers of the target model")
    target_d_state: int = option(4, "states per head of the target model")
    chunk_size: int = option(64, "SSD chunk length (the scan's block size; the map does not depend on it)")
    batch: int = option(8, "sequences per training batch")
    seq_len: int = option(32, "sequence length")
    iters: int = option(150, "AdamW iterations per run")
    eval_every: int = option(25, "iterations between evaluations")
    eval_batches: int = option(2, "batches of the evaluation MSE")
    warmup_iters: int = option(10, "iterations of Algorithm 1's warm-up of the SSM parameters")
    warmup_lr: float = option(1e-2, "learning rate of Algorithm 1's warm-up")
    weight_decay: float = option(0.01, "AdamW's decoupled weight decay (>= 0)")
    lrs: Tuple[float, ...] = redefault("lrs", (3e-2, 1e-2), "base learning-rate grid, swept in this order (a "
                                       "truncated sweep has every point at the first lr); grown at its edges")
    seeds: Tuple[int, ...] = redefault("seeds", (0, 1, 2), "seeds of the data and the adapters' initialisation, "
                                       "comma-separated (the models are drawn from --model-seed)")
    model_seed: int = option(0, "seeds the frozen and target models (shared by all runs)")
    lora_ranks: Tuple[int, ...] = option((1, 2), "LoRA ranks (LoRA (Proj), LoRA (SSM+Proj))", key=False)
    sdt: Tuple[str, ...] = option(("4x1", "4x2", "4x4", "4x8"), "SDT budgets 'channels x states' per layer; "
                                  "Mamba-II's channels are its heads (states per group)", key=False)
    sdt_lora: Tuple[str, ...] = option(("4x1:1",), "SDT + LoRA budgets 'heads x states : rank'", key=False,
                                       normalise=_old_sdt_lora)
    dora_ranks: Tuple[int, ...] = option((1, 2), "DoRA (Proj) ranks", key=False)
    methods: Tuple[str, ...] = redefault("methods", METHOD_ORDER)


PRESETS: Dict[str, Dict] = {
    # 3 seeds, about 3-5 minutes on 2 CPU cores (4 heads of 8 channels, N = 8 -> target N = 4)
    "cpu": {},
    # the GPU configuration: d_model 64, 8 heads of 16 channels, N = 16 (frozen, 4 layers) -> N = 8 (target,
    # 1 layer), batch 64 x 256 tokens, 500 AdamW iterations, 3 seeds (the Mamba-I paper preset's sizes)
    "paper": dict(
        d_model=64, expand=2, headdim=16, ngroups=1, frozen_layers=4, frozen_d_state=16,
        target_layers=1, target_d_state=8, chunk_size=64, batch=64, seq_len=256, iters=500, eval_every=25,
        eval_batches=4, warmup_iters=50, lrs=(1e-2, 3e-2, 3e-3), seeds=(0, 1, 2), lora_ranks=(1, 2, 4, 8),
        sdt=("8x1", "8x2", "8x4", "8x8", "8x16"), sdt_lora=("8x1:1", "8x2:2", "8x4:4"), dora_ranks=(1, 2, 4, 8),
        out="figures"),
    # seconds; for tests
    "tiny": dict(
        d_model=8, headdim=4, frozen_layers=2, frozen_d_state=4, target_d_state=2, chunk_size=4,
        batch=2, seq_len=8, iters=6, eval_every=3, eval_batches=1, warmup_iters=2, lrs=(1e-2,), lora_ranks=(1,),
        sdt=("2x1",), sdt_lora=("2x1:1",), dora_ranks=(1,), seeds=(0,)),
}


def make(preset: str = "cpu", **over) -> Mamba2RegressionConfig:
    """The config of ``preset`` (its values over the class defaults) with ``over`` on top; not validated."""
    return Mamba2RegressionConfig(**{**PRESETS[preset], "preset": preset, **over})


def check_options(cfg: Mamba2RegressionConfig) -> None:
    """ValueError naming the option for shapes and budgets the model cannot take."""
    for name in ("headdim", "ngroups", "chunk_size"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"--{name.replace('_', '-')}: must be an integer >= 1, got {v!r}")
    d_inner = cfg.expand * cfg.d_model
    if d_inner % cfg.headdim:
        raise ValueError(f"--headdim: must divide d_inner = expand x d_model = {d_inner}, got {cfg.headdim}")
    nheads = d_inner // cfg.headdim
    if nheads % cfg.ngroups:
        raise ValueError(f"--ngroups: must divide the number of heads {nheads}, got {cfg.ngroups}")
    parse_shard(cfg.shard)
    if cfg.shard and (cfg.merge or cfg.plot_only):
        raise ValueError("--shard: cannot be combined with --merge or --plot-only")
    for opt, ranks in (("lora-ranks", cfg.lora_ranks), ("dora-ranks", cfg.dora_ranks)):
        if not ranks or any(isinstance(r, bool) or not 1 <= r <= cfg.d_model for r in ranks):
            raise ValueError(f"--{opt}: need ranks in [1, d_model={cfg.d_model}] (out_proj's smaller side), got {ranks}")
    for m in cfg.methods:  # every budget of the grid is built (and parsed) here, before anything runs
        for b in METHODS[m].budgets(cfg):
            if not 1 <= b.get("heads", 1) <= nheads:
                raise ValueError(f"--sdt/--sdt-lora: heads must be in [1, nheads={nheads}], got {b}")
            if not 1 <= b.get("states", 1) <= cfg.frozen_d_state:
                raise ValueError(f"--sdt/--sdt-lora: states must be in [1, frozen_d_state={cfg.frozen_d_state}], got {b}")
            if not 1 <= b.get("rank", 1) <= cfg.d_model:
                raise ValueError(f"--sdt-lora: rank must be in [1, d_model={cfg.d_model}], got {b}")


def validate(cfg: Mamba2RegressionConfig) -> Mamba2RegressionConfig:
    """Every rule of the command line (ValueError naming the option); ``--methods all`` expanded first."""
    if cfg.methods == ("all",):
        cfg = dataclasses.replace(cfg, methods=METHOD_ORDER)
    check_config(cfg)
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad:
        raise ValueError(f"--methods: unknown {bad}; choose from {list(METHODS)} or 'all'")
    check_options(cfg)
    lr_policy(cfg)
    return cfg


def parse_args(argv: Optional[Sequence[str]] = None) -> Mamba2RegressionConfig:
    """Config from the command line (preset ``cpu`` unless ``--preset`` names another)."""
    return parse_options(Mamba2RegressionConfig, PRESETS, argv, prog="python -m synthetic mamba2",
                         description=DESCRIPTION, validate=validate)[0]


def run_grid(cfg: Mamba2RegressionConfig) -> List[dict]:
    """All runs: lr outermost within a seed (a truncated sweep has every point at the first lr), the central
    comparison (SDT vs LoRA (SSM+Proj)) first."""
    return lr_outermost_grid(cfg, METHODS, ["Frozen", "SDT", "LoRA (SSM+Proj)", "SDT + LoRA", "LoRA (Proj)"])


def out_paths(cfg: Mamba2RegressionConfig) -> Dict[str, Path]:
    out = Path(cfg.out)
    return {"json": out / f"mamba2_regression_{cfg.preset}.jsonl", "mse": out / f"mamba2_mse_vs_params_{cfg.preset}"}


def config_dict(cfg: Mamba2RegressionConfig) -> dict:
    """The fields a run's result depends on (its key's ``config``; field metadata)."""
    return key_config(cfg)
