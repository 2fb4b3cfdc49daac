"""Configuration of the deep-S4 experiment (paper conventions): the :class:`Config` dataclass behind
``python -m synthetic.s4_regression``, its presets, the fields that identify a run's result, and validation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

from synthetic.cli import (SweepConfig, check_numbers, check_out_dir, check_shard_options, check_sweep_options,
                           key_of_record_config, option, parse_options, redefault)
from synthetic.s4.forms import CONV_FORMS
from synthetic.s4.methods import METHODS, parse_sdt

CONV_CHOICES = ("auto",) + tuple(CONV_FORMS)

# ------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class Config(SweepConfig):
    """Every field is a CLI option (``--field-name``); tuples are comma-separated lists. Model sizes are named as
    in every experiment; run keys and records keep the paper's symbols (``D``, ``H``, ``H_star``, ``L_frozen``,
    ``L_target``, ``N``: ``key_as``)."""

    d_model: int = option(16, "channels D (model width)", key_as="D", old=("--D",))
    frozen_d_state: int = option(8, "states H per channel of the frozen model: real states (H/2 conjugate pairs; "
                                 "H complex modes with --state-convention complex)", key_as="H", old=("--H",))
    target_d_state: int = option(4, "states H* per channel of the target", key_as="H_star", old=("--H-star",))
    frozen_layers: int = option(2, "layers L of the frozen model", key_as="L_frozen", old=("--L-frozen",))
    target_layers: int = option(1, "layers L* of the target model", key_as="L_target", old=("--L-target",))
    seq_len: int = option(32, "sequence length N", key_as="N", old=("--N",))
    batch: int = option(128, "sequences per training batch")
    iters: int = option(150, "AdamW iterations per run")
    activation: str = option("relu", "relu (the experiment) or identity (the theory's linear variant)")
    weight_decay: float = option(0.01, "AdamW's decoupled weight decay (>= 0)")
    lrs: Tuple[float, ...] = redefault("lrs", (4e-3, 1.6e-2, 6.4e-2))
    seeds: Tuple[int, ...] = redefault("seeds", (0, 1, 2), "seeds, comma-separated (each draws the frozen and target "
                                       "models, the data and the adapters)")
    methods: Tuple[str, ...] = redefault("methods", ("Frozen", "LoRA (Proj)", "LoRA (S4+Proj)", "SDT", "SDT + LoRA",
                                                     "Full"))
    lora_ranks: Tuple[int, ...] = option((1, 2, 4), "LoRA ranks on W (LoRA (Proj), and W's rank in LoRA (S4+Proj))",
                                         key=False)
    ssm_lora_ranks: Tuple[int, ...] = option((1, 1, 1), "LoRA (S4+Proj): ranks on the S4 module, one per "
                                             "--lora-ranks entry", key=False, key_as="s4_lora_ranks",
                                             old=("--s4-lora-ranks",))
    sdt: Tuple[str, ...] = option(("2x2", "6x4", "10x4"), "SDT budgets 'channels x states' per layer (states: "
                                  "complex modes)", key=False, key_as="sdt_budgets", old=("--sdt-budgets",))
    sdt_lora: Tuple[str, ...] = option(("2x2:1", "6x4:2", "10x4:4"), "SDT + LoRA budgets 'channels x states : rank' "
                                       "(LoRA rank on W)", key=False, key_as="sdt_lora_budgets",
                                       old=("--sdt-lora-budgets",))
    warmup_iters: int = option(20, "iterations of Algorithm 1's warm-up (SDT's dimension selection)")
    warmup_lr: float = option(1e-2, "learning rate of Algorithm 1's warm-up")
    magnitude_floor: float = option(1e-3, "SDT: |C B| below this marks a dimension unusable")
    frozen_eval_batches: int = option(5, "batches the untrained Frozen baseline is evaluated on")
    curve_points: int = option(50, "points of the loss curve kept in each record", key=False)
    precision: str = option("tf32", "matmuls on CUDA: tf32, fp32, or fp16 (Toeplitz conv GEMMs with fp16 operands, "
                            "fp32 accumulation, the rest TF32); CPU is always fp32")
    compile: Optional[bool] = option(None, "torch.compile the training step", key=False)
    conv: str = option("auto", "convolution form (synthetic.s4.conv): toeplitz, blocked, fft, chunked, fused (Triton "
                       "on CUDA, synthetic.s4.fused), or auto (the measured crossover; with --precision fp16 the "
                       "Toeplitz form)", key=False)
    proj_split: int = option(0, "> 1: the projection's weight gradient as that many chunks of N x batch, batched, "
                             "summed (a GPU lever)", key=False)
    runs_per_step: int = option(0, "R > 0: pack up to R runs of one seed (any method of the default graph) into a "
                                "training step", key=False)
    # Opt-in options matching the official code (furiosa-ai/ssm-peft, S4/run_s4.py); see
    # notes/s4_official_differences.md.
    state_convention: str = option("pairs", "pairs: H real states = H/2 conjugate pairs; complex: H complex modes",
                                   opt_in=True)
    sdt_prune: str = option("none", "usable: SDT/SDT + LoRA prune C outside the usable dims (official 'ours')",
                            opt_in=True)
    usable_channels: int = option(0, "usable channels per layer for --sdt-prune usable (0 = all D)", opt_in=True)
    usable_states: int = option(0, "usable states per channel for --sdt-prune usable (0 = all)", opt_in=True)
    train_skip_dt_bias: bool = option(False, "every trained method also trains u (skip D), log_dt and beta",
                                      opt_in=True)
    warmup_params: str = option("ssm", "SDT warm-up updates ssm (the S4 modules) or all parameters (official)",
                                opt_in=True)
    # Budgets of the benchmark's other PEFT methods (:data:`BENCHMARK_METHODS`; ``--methods all``).
    prompt_lens: Tuple[int, ...] = option((4, 8, 16), "prompt tuning: M prompt vectors at the input", key=False)
    prefix_lens: Tuple[int, ...] = option((2, 4, 8), "prefix-tuning: M vectors per layer (M < H and M = H)",
                                          key=False)
    dora_ranks: Tuple[int, ...] = option((1, 2, 4), "DoRA (Proj): rank of the LoRA factors of W", key=False)
    additional_states: Tuple[int, ...] = option((1, 2), "Additional-scan: complex modes added per channel", key=False)


PRESETS: Dict[str, Dict] = {
    "cpu": dict(runs_per_step=64),  # every run of a seed in one step (packing, ~2x less CPU time)
    "paper": dict(d_model=64, frozen_d_state=16, target_d_state=8, frozen_layers=4, target_layers=1, seq_len=200,
                  batch=4000, iters=500, lrs=(1e-3, 4e-3, 1.6e-2), lora_ranks=(2, 4, 8, 12, 16),
                  ssm_lora_ranks=(1, 1, 2, 2, 2), sdt=("8x2", "16x4", "24x4", "32x4", "36x8"),
                  sdt_lora=("8x4:2", "16x4:4", "24x4:8", "32x4:12", "32x8:16"),
                  prompt_lens=(16, 32, 64, 128), prefix_lens=(4, 8, 16, 32), dora_ranks=(2, 4, 8, 12, 16),
                  additional_states=(1, 2, 4, 8), out="figures"),
    "tiny": dict(d_model=6, frozen_d_state=4, target_d_state=2, frozen_layers=2, seq_len=12, batch=16, iters=12,
                 seeds=(0, 1), lrs=(1e-2, 1e6), lora_ranks=(1, 2), ssm_lora_ranks=(1, 1), sdt=("2x1", "3x2"),
                 sdt_lora=("2x1:1", "3x2:2"), warmup_iters=3, frozen_eval_batches=2, curve_points=5,
                 prompt_lens=(2,), prefix_lens=(2, 4), dora_ranks=(1,), additional_states=(1,)),
}
PRESET_ALIASES = {"default": "cpu"}  # deprecated preset name -> the preset it stands for (with a one-line message)
OPT_IN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Config) if f.metadata.get("opt_in")}


def key_fields(config: Dict) -> Dict:
    """The fields of a record's config dict that identify a run's result."""
    return key_of_record_config(Config, config)


def n_modes(cfg: "Config", H: int) -> int:
    """Complex modes per channel stored for ``H`` states: H/2 (pairs) or H (complex convention)."""
    return H // 2 if cfg.state_convention == "pairs" else H


def validate(cfg: Config) -> Config:
    """Raise ValueError naming the offending option."""
    def opt(name):
        return "--" + name.replace("_", "-")

    for name in ("d_model", "frozen_d_state", "target_d_state", "frozen_layers", "target_layers", "seq_len", "batch",
                 "iters", "frozen_eval_batches", "curve_points"):
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
    for name in ("frozen_d_state", "target_d_state") if cfg.state_convention == "pairs" else ():
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
    Hc, D = n_modes(cfg, cfg.frozen_d_state), cfg.d_model
    hname = "H/2" if cfg.state_convention == "pairs" else "H"
    if not 0 <= cfg.usable_channels <= D:
        raise ValueError(f"--usable-channels: must be in [0, D={D}] (0 = all), got {cfg.usable_channels}")
    if not 0 <= cfg.usable_states <= Hc:
        raise ValueError(f"--usable-states: must be in [0, {hname}={Hc}] (0 = all), got {cfg.usable_states}")
    uc = (cfg.usable_channels or D) if cfg.sdt_prune == "usable" else D
    us = (cfg.usable_states or Hc) if cfg.sdt_prune == "usable" else Hc
    if len(cfg.ssm_lora_ranks) != len(cfg.lora_ranks):
        raise ValueError("--ssm-lora-ranks: needs one entry per --lora-ranks entry")
    for r in cfg.lora_ranks:
        if not 1 <= r <= D:
            raise ValueError(f"--lora-ranks: each rank must be in [1, D={D}], got {r}")
    for r in cfg.ssm_lora_ranks:
        if not 1 <= r <= min(D, Hc):
            raise ValueError(f"--ssm-lora-ranks: each rank must be in [1, {hname}={Hc}], got {r}")
    for name in ("sdt", "sdt_lora"):
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
            if name == "sdt_lora" and not 1 <= b.get("proj_rank", 0) <= D:
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
    for name, hi in (("prompt_lens", None), ("prefix_lens", None), ("dora_ranks", cfg.d_model), ("additional_states", None)):
        vals = getattr(cfg, name)
        if not vals:
            raise ValueError(f"--{name.replace('_', '-')}: needs at least one budget")
        for v in vals:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1 or (hi is not None and v > hi):
                rule = f"an integer in [1, D={hi}]" if hi is not None else "an integer >= 1"
                raise ValueError(f"--{name.replace('_', '-')}: each budget must be {rule}, got {v!r}")


DESCRIPTION = "Deep S4: the regression of Figure 2, MSE vs trainable parameters (Galim et al., Sec. 6.1)."


def expand_all(cfg: Config) -> Config:
    """``--methods all``: every registered method, the benchmark's included."""
    return dataclasses.replace(cfg, methods=tuple(METHODS)) if cfg.methods == ("all",) else cfg


def parse_config(argv: Optional[Sequence[str]] = None) -> Config:
    """CLI -> Config: the preset's values become the defaults, explicit options override them."""
    return parse_options(Config, PRESETS, argv, prog="python -m synthetic s4", description=DESCRIPTION,
                         preset_aliases=PRESET_ALIASES, validate=validate, post=expand_all)[0]
