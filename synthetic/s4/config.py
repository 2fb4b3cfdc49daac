"""Configuration of the deep-S4 experiment (paper conventions): the :class:`Config` dataclass behind
``python -m synthetic.s4_regression``, its presets, the fields that identify a run's result, and validation.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

from synthetic.cli import (check_numbers, check_out_dir, check_shard_options, check_sweep_options, dataclass_parser,
                           parse_dataclass)
from synthetic.s4.conv import CONV_FORMS
from synthetic.s4.methods import METHODS, parse_sdt

CONV_CHOICES = ("auto",) + tuple(CONV_FORMS)

# ------------------------------------------------------------------------------------ config
@dataclass
class Config:
    """Every field is a CLI option (``--field-name``); tuples are comma-separated lists."""

    preset: str = "default"
    D: int = 16  # channels
    H: int = 8  # real states of the frozen model (H/2 complex conjugate pairs)
    H_star: int = 4  # real states of the target
    L_frozen: int = 2
    L_target: int = 1
    N: int = 32  # sequence length
    batch: int = 128
    iters: int = 150
    activation: str = "relu"  # "relu" (the experiment) or "identity" (the theory's linear variant)
    weight_decay: float = 0.01
    lrs: Tuple[float, ...] = (4e-3, 1.6e-2, 6.4e-2)  # base grid; extended at an edge (below)
    lr_extend_factor: float = 4.0  # a best lr at the grid's edge adds edge×factor (or /factor); 0 = off
    lr_min: float = 1e-6  # bounds of the extension (sweep.LrPolicy)
    lr_max: float = 1.0
    seeds: Tuple[int, ...] = (0, 1, 2)
    methods: Tuple[str, ...] = ("Frozen", "LoRA (Proj)", "LoRA (S4+Proj)", "SDT", "SDT + LoRA", "Full")
    lora_ranks: Tuple[int, ...] = (1, 2, 4)  # LoRA (Proj) and the W rank of LoRA (S4+Proj)
    s4_lora_ranks: Tuple[int, ...] = (1, 1, 1)  # paired with lora_ranks for LoRA (S4+Proj)
    sdt_budgets: Tuple[str, ...] = ("2x2", "6x4", "10x4")  # channels x complex states per layer
    sdt_lora_budgets: Tuple[str, ...] = ("2x2:1", "6x4:2", "10x4:4")  # channels x states : W rank
    warmup_iters: int = 20
    warmup_lr: float = 1e-2
    magnitude_floor: float = 1e-3
    frozen_eval_batches: int = 5
    curve_points: int = 50
    device: str = "auto"
    precision: str = "tf32"  # matmuls on CUDA: "tf32", "fp32", or "fp16" (Toeplitz conv GEMMs with fp16 operands,
    # fp32 accumulation, the rest TF32; synthetic.s4.model.ToeplitzConvHalf). CPU is always fp32.
    compile: Optional[bool] = None  # None: on for CUDA, off for CPU
    conv: str = "auto"  # convolution form (synthetic.s4.conv): "toeplitz", "blocked", "fft", "chunked", "auto" (the
    # measured crossover, synthetic.s4.conv.choose_form); with --precision fp16 the Toeplitz form is used
    proj_split: int = 0  # > 1: the projection's weight gradient as that many chunks of N·B, batched, summed (GPU lever)
    runs_per_step: int = 0  # R > 0: pack up to R runs of one seed (any method of the default graph) into a step
    time_budget: float = 0.0  # seconds; stop starting new run groups after this (0 = no limit)
    out: str = "figures"
    plot_only: bool = False
    dry_run: bool = False  # print the plan (runs done / to do per method, estimated time) and exit
    shard: str = ""  # "i/n": run only base-grid groups j with j % n == i, into this shard's own results file
    merge: bool = False  # fold the shard files into the main results file (atomically), then summarise
    # Opt-in options matching the official code (furiosa-ai/ssm-peft, S4/run_s4.py); see
    # notes/s4_official_differences.md. At their defaults they are left out of run keys and
    # fingerprints (:data:`OPT_IN_DEFAULTS`), so results computed before they existed still resume.
    state_convention: str = "pairs"  # "pairs": H real states = H/2 conjugate pairs; "complex": H complex modes
    sdt_prune: str = "none"  # "usable": SDT/SDT + LoRA prune C outside the usable dims (official "ours")
    usable_channels: int = 0  # usable channels per layer for --sdt-prune usable (0 = all D)
    usable_states: int = 0  # usable states per channel for --sdt-prune usable (0 = all)
    train_skip_dt_bias: bool = False  # every trained method also trains u (skip D), log_dt and beta
    warmup_params: str = "ssm"  # SDT warm-up updates "ssm" (the S4 modules) or "all" parameters (official)
    # Budgets of the benchmark's other PEFT methods (:data:`BENCHMARK_METHODS`; ``--methods all``). Budget
    # lists, like lora_ranks: not part of a run key (each run's budget is).
    prompt_lens: Tuple[int, ...] = (4, 8, 16)  # prompt tuning: M prompt vectors at the input
    prefix_lens: Tuple[int, ...] = (2, 4, 8)  # prefix-tuning: M vectors per layer (M < H and M = H)
    dora_ranks: Tuple[int, ...] = (1, 2, 4)  # DoRA (Proj): rank of the LoRA factors of W
    additional_states: Tuple[int, ...] = (1, 2)  # Additional-scan: complex modes added per channel


PRESETS: Dict[str, Dict] = {
    "default": dict(runs_per_step=64),  # CPU: every run of a seed in one step (packing, ~2x less CPU time)
    "paper": dict(D=64, H=16, H_star=8, L_frozen=4, L_target=1, N=200, batch=4000, iters=500,
                  lrs=(1e-3, 4e-3, 1.6e-2), lora_ranks=(2, 4, 8, 12, 16), s4_lora_ranks=(1, 1, 2, 2, 2),
                  sdt_budgets=("8x2", "16x4", "24x4", "32x4", "36x8"),
                  sdt_lora_budgets=("8x4:2", "16x4:4", "24x4:8", "32x4:12", "32x8:16"),
                  prompt_lens=(16, 32, 64, 128), prefix_lens=(4, 8, 16, 32), dora_ranks=(2, 4, 8, 12, 16),
                  additional_states=(1, 2, 4, 8)),
    "tiny": dict(D=6, H=4, H_star=2, L_frozen=2, N=12, batch=16, iters=12, seeds=(0, 1),
                 lrs=(1e-2, 1e6), lora_ranks=(1, 2), s4_lora_ranks=(1, 1), sdt_budgets=("2x1", "3x2"),
                 sdt_lora_budgets=("2x1:1", "3x2:2"), warmup_iters=3, frozen_eval_batches=2, curve_points=5,
                 prompt_lens=(2,), prefix_lens=(2, 4), dora_ranks=(1,), additional_states=(1,)),
}

# Fields that do not change a run's result (kept out of the resume key).
NOT_IN_KEY = {"preset", "lrs", "lr_extend_factor", "lr_min", "lr_max", "seeds", "methods", "lora_ranks",
               "s4_lora_ranks", "sdt_budgets", "sdt_lora_budgets", "device", "compile", "conv", "proj_split", "time_budget", "out",
               "plot_only", "dry_run", "shard", "merge", "runs_per_step", "curve_points", "prompt_lens", "prefix_lens", "dora_ranks", "additional_states"}
# Opt-in fields: left out of the key (and the plot fingerprint) while at these defaults.
OPT_IN_DEFAULTS = {"state_convention": "pairs", "sdt_prune": "none", "usable_channels": 0, "usable_states": 0,
                    "train_skip_dt_bias": False, "warmup_params": "ssm"}


def key_fields(config: Dict) -> Dict:
    """The fields of a config dict that identify a run's result."""
    return {k: v for k, v in config.items()
            if k not in NOT_IN_KEY and not (k in OPT_IN_DEFAULTS and v == OPT_IN_DEFAULTS[k])}


def n_modes(cfg: "Config", H: int) -> int:
    """Complex modes per channel stored for ``H`` states: H/2 (pairs) or H (complex convention)."""
    return H // 2 if cfg.state_convention == "pairs" else H


def validate(cfg: Config) -> Config:
    """Raise ValueError naming the offending option."""
    def opt(name):
        return "--" + name.replace("_", "-")

    for name in ("D", "H", "H_star", "L_frozen", "L_target", "N", "batch", "iters", "frozen_eval_batches",
                 "curve_points"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{opt(name)}: must be an integer >= 1, got {v!r}")
    if cfg.warmup_iters < 0:
        raise ValueError(f"--warmup-iters: must be >= 0, got {cfg.warmup_iters}")
    if cfg.state_convention not in ("pairs", "complex"):
        raise ValueError(f"--state-convention: must be 'pairs' or 'complex', got {cfg.state_convention!r}")
    if cfg.sdt_prune not in ("none", "usable"):
        raise ValueError(f"--sdt-prune: must be 'none' or 'usable', got {cfg.sdt_prune!r}")
    if cfg.warmup_params not in ("ssm", "all"):
        raise ValueError(f"--warmup-params: must be 'ssm' or 'all', got {cfg.warmup_params!r}")
    for name in ("H", "H_star") if cfg.state_convention == "pairs" else ():
        if getattr(cfg, name) % 2:
            raise ValueError(f"{opt(name)}: must be even (conjugate pairs), got {getattr(cfg, name)}")
    if cfg.preset not in PRESETS:
        raise ValueError(f"--preset: must be one of {sorted(PRESETS)}, got {cfg.preset!r}")
    if cfg.activation not in ("relu", "identity"):
        raise ValueError(f"--activation: must be 'relu' or 'identity', got {cfg.activation!r}")
    if cfg.precision not in ("tf32", "fp32", "fp16"):
        raise ValueError(f"--precision: must be 'tf32', 'fp32' or 'fp16', got {cfg.precision!r}")
    if cfg.conv not in CONV_CHOICES:
        raise ValueError(f"--conv: must be one of {', '.join(CONV_CHOICES)}, got {cfg.conv!r}")
    if cfg.precision == "fp16" and cfg.conv not in ("auto", "toeplitz"):
        raise ValueError(f"--conv: --precision fp16 has only the Toeplitz form (fp16 GEMM operands); got --conv {cfg.conv}")
    check_sweep_options(cfg, METHODS, all_allowed=True)
    Hc, D = n_modes(cfg, cfg.H), cfg.D
    hname = "H/2" if cfg.state_convention == "pairs" else "H"
    if not 0 <= cfg.usable_channels <= D:
        raise ValueError(f"--usable-channels: must be in [0, D={D}] (0 = all), got {cfg.usable_channels}")
    if not 0 <= cfg.usable_states <= Hc:
        raise ValueError(f"--usable-states: must be in [0, {hname}={Hc}] (0 = all), got {cfg.usable_states}")
    uc = (cfg.usable_channels or D) if cfg.sdt_prune == "usable" else D
    us = (cfg.usable_states or Hc) if cfg.sdt_prune == "usable" else Hc
    if len(cfg.s4_lora_ranks) != len(cfg.lora_ranks):
        raise ValueError("--s4-lora-ranks: needs one entry per --lora-ranks entry")
    for r in cfg.lora_ranks:
        if not 1 <= r <= D:
            raise ValueError(f"--lora-ranks: each rank must be in [1, D={D}], got {r}")
    for r in cfg.s4_lora_ranks:
        if not 1 <= r <= min(D, Hc):
            raise ValueError(f"--s4-lora-ranks: each rank must be in [1, {hname}={Hc}], got {r}")
    for name in ("sdt_budgets", "sdt_lora_budgets"):
        for s in getattr(cfg, name):
            try:
                b = parse_sdt(s)
            except ValueError as e:
                raise ValueError(f"{opt(name)}: {e}") from None
            if not (1 <= b["channels"] <= D and 1 <= b["states"] <= Hc):
                raise ValueError(f"{opt(name)}: {s!r} needs 1 <= channels <= D={D} and 1 <= states <= {hname}={Hc}")
            if not (b["channels"] <= uc and b["states"] <= us):
                raise ValueError(f"{opt(name)}: {s!r} needs channels <= --usable-channels ({uc}) and "
                                 f"states <= --usable-states ({us}) with --sdt-prune usable")
            if name == "sdt_lora_budgets" and not 1 <= b.get("proj_rank", 0) <= D:
                raise ValueError(f"{opt(name)}: {s!r} needs a W rank in [1, D={D}] after ':'")
    if cfg.time_budget < 0:
        raise ValueError(f"--time-budget: must be >= 0, got {cfg.time_budget}")
    check_shard_options(cfg)
    check_numbers(cfg, nonnegative=("weight_decay", "magnitude_floor", "time_budget", "runs_per_step", "proj_split"),
                  positive=("warmup_lr",))
    check_out_dir(cfg.out)
    _validate_benchmark_budgets(cfg)
    return cfg


def _validate_benchmark_budgets(cfg: Config) -> None:
    """Budgets of :data:`BENCHMARK_METHODS`: positive integers, DoRA ranks <= D; ValueError naming the option."""
    for name, hi in (("prompt_lens", None), ("prefix_lens", None), ("dora_ranks", cfg.D), ("additional_states", None)):
        vals = getattr(cfg, name)
        if not vals:
            raise ValueError(f"--{name.replace('_', '-')}: needs at least one budget")
        for v in vals:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1 or (hi is not None and v > hi):
                rule = f"an integer in [1, D={hi}]" if hi is not None else "an integer >= 1"
                raise ValueError(f"--{name.replace('_', '-')}: each budget must be {rule}, got {v!r}")


def build_parser() -> argparse.ArgumentParser:
    return dataclass_parser(Config, PRESETS, prog="python -m synthetic.s4_regression",
                            description=__doc__.split("\n\n")[0], extra_presets=("official", "official-tiny"),
                            preset_help="'official' and 'official-tiny' run synthetic.s4.official_experiment")


def parse_config(argv: Optional[Sequence[str]] = None) -> Config:
    """CLI -> Config: the preset's values become the defaults, explicit options override them."""
    def expand_all(cfg):  # --methods all: every registered method, the benchmark's included
        return dataclasses.replace(cfg, methods=tuple(METHODS)) if cfg.methods == ("all",) else cfg

    return parse_dataclass(Config, PRESETS, build_parser(), "default", argv, validate, post=expand_all)
