"""Configuration of the Mamba regression: the :class:`MambaRegressionConfig` dataclass behind
``python -m synthetic.mamba_regression``, its presets, the command line, validation, the run grid and the
fields of a run's key."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ssm_peft.selection import RULES as SDT_RULES
from synthetic.mamba.backends import BACKENDS, mamba_ssm_available
from synthetic.mamba.peft import BENCHMARK_METHODS, METHODS
from synthetic.results import LrPolicy
from synthetic.cli import (SweepConfig, check_memory, check_numbers, check_out_dir, deprecated, key_config, option, parse_options,
                           redefault)
from synthetic.runner import parse_shard


METHOD_ORDER = ("Frozen", "LoRA (Proj)", "LoRA (S6+Proj)", "SDT", "SDT + LoRA", "Full")
BENCHMARK_ORDER = tuple(BENCHMARK_METHODS)  # the benchmark's other methods (``--methods all``)
ALL_METHODS = tuple(m for m in METHODS if m != "Full") + ("Full",)  # every registry entry, Full last
BENCHMARK_BUDGET_FIELDS = ("prompt_lens", "prefix_lens", "dora_ranks", "additional_states")
DESCRIPTION = "Mamba (S6): SDT vs LoRA on Mamba blocks, regression to a smaller target (Galim et al., Sec. 6)."


def _old_sdt_lora(option: str, s: str) -> str:
    """``--sdt-lora CxR`` (channels x rank, the old notation) -> ``C:R``, with a deprecation message."""
    if ":" not in s and s.count("x") == 1:
        new = s.replace("x", ":")
        deprecated(f"{option} {s} (channels x rank)", f"{option} {new} (channels : rank; 'x' separates states)")
        return new
    return s


def _sdt_lora_key(vals: Tuple[str, ...]) -> Tuple[str, ...]:
    """Run keys hold ``--sdt-lora`` in the notation of the committed results (``CxR``)."""
    return tuple(s.replace(":", "x") for s in vals)


@dataclass(frozen=True)
class MambaRegressionConfig(SweepConfig):
    """Every field is a CLI option (``--d-model 64``; tuples as comma lists: ``--lrs 1e-3,3e-3``)."""

    backend: str = option("auto", "mamba_ssm | reference | auto (mamba_ssm if CUDA and the package are present)")
    fused: bool = option(True, "use mamba_inner_fn when causal-conv1d is installed (mamba_ssm backend)")
    d_model: int = option(16, "model width (channels of the residual stream)")
    expand: int = option(2, "Mamba's expansion factor (d_inner = expand x d_model)")
    frozen_layers: int = option(2, "layers of the frozen model")
    frozen_d_state: int = option(8, "states per channel of the frozen model")
    target_layers: int = option(1, "layers of the target model")
    target_d_state: int = option(4, "states per channel of the target model")
    batch: int = option(8, "sequences per training batch")
    seq_len: int = option(32, "sequence length")
    iters: int = option(150, "AdamW iterations per run")
    eval_every: int = option(25, "iterations between evaluations")
    eval_batches: int = option(2, "batches of the evaluation MSE")
    warmup_iters: int = option(10, "iterations of Algorithm 1's warm-up of the S6 parameters (SDT's selection)")
    warmup_lr: float = option(1e-2, "learning rate of Algorithm 1's warm-up")
    weight_decay: float = option(0.01, "AdamW's decoupled weight decay (>= 0)")
    lrs: Tuple[float, ...] = redefault("lrs", (3e-2, 1e-2), "base learning-rate grid, swept in this order (a "
                                       "truncated sweep has every point at the first lr); grown at its edges")
    seeds: Tuple[int, ...] = redefault("seeds", (0,), "seeds of the data and the adapters' initialisation, "
                                       "comma-separated (the models are drawn from --model-seed)")
    model_seed: int = option(0, "seeds the frozen and target models (shared by all runs)")
    lora_ranks: Tuple[int, ...] = option((1, 2), "LoRA ranks (LoRA (Proj), LoRA (S6+Proj))")
    sdt: Tuple[int, ...] = option((8, 16), "SDT budgets: channels per layer (every state of a chosen channel is "
                                  "updated)", key_as="sdt_channels", old=("--sdt-channels",))
    sdt_lora: Tuple[str, ...] = option(("8:1",), "SDT + LoRA budgets 'channels:rank' (LoRA rank on the projections)",
                                       to_key=_sdt_lora_key, normalise=_old_sdt_lora)
    methods: Tuple[str, ...] = redefault("methods", METHOD_ORDER)
    prompt_lens: Tuple[int, ...] = option((8, 32), "prompt tuning: M vectors at the input", key=False)
    prefix_lens: Tuple[int, ...] = option((4, 16), "prefix-tuning: M vectors per block", key=False)
    dora_ranks: Tuple[int, ...] = option((1, 2), "DoRA on in_proj and out_proj: ranks", key=False)
    additional_states: Tuple[int, ...] = option((1, 2), "Additional-scan: states added per channel", key=False)
    # Opt-in options matching the official code (furiosa-ai/ssm-peft, mamba_ssm_peft/peft/sd_lora.py and
    # cfg/peft/); see notes/mamba.md.
    sdt_rule: str = option("ours", "'ours': warm up A_log, x_proj, dt_proj, score channels by the change of A-bar; "
                           "'official': the official SDLoRA rule", opt_in=True)
    sdt_state_freeze: float = option(0.0, "official rule only: fraction of A_log states frozen per SDT channel "
                                     "(official 0.75)", opt_in=True)
    lora_dropout: float = option(0.0, "dropout on the LoRA input path (official 0.1); runs unfused while training",
                                 opt_in=True)


PRESETS: Dict[str, Dict] = {
    # < 3 minutes on 2 CPU cores with the reference scan
    "cpu": {},
    # the GPU configuration (mamba_ssm backend); 500 AdamW iterations as the S4 experiment (the paper's
    # Mamba loss curves run 1,000); ~9-13 s per run on one H100 with mamba-ssm's unfused path
    "paper": dict(
        d_model=64, expand=2, frozen_layers=4, frozen_d_state=16, target_layers=1,
        target_d_state=8, batch=64, seq_len=256, iters=500, eval_every=25, eval_batches=4, warmup_iters=50,
        warmup_lr=1e-2, lrs=(1e-2, 3e-2, 3e-3), seeds=(0,), lora_ranks=(1, 2, 4, 8),
        sdt=(16, 32, 64, 128), sdt_lora=("16:1", "32:2", "64:4"),
        prompt_lens=(32, 64, 128, 256), prefix_lens=(8, 16, 32, 64), dora_ranks=(1, 2, 4, 8),
        additional_states=(1, 2, 4, 8), out="figures"),
    # seconds; for tests
    "tiny": dict(
        d_model=8, frozen_layers=2, frozen_d_state=4, target_d_state=2, batch=2, seq_len=8,
        iters=6, eval_every=3, eval_batches=1, warmup_iters=2, lrs=(1e-2,), lora_ranks=(1,), sdt=(4,),
        sdt_lora=("4:1",), prompt_lens=(2,), prefix_lens=(2,), dora_ranks=(1,), additional_states=(1,)),
}


def make(preset: str = "cpu", **over) -> MambaRegressionConfig:
    """The config of ``preset`` (its values over the class defaults) with ``over`` on top; not validated."""
    return MambaRegressionConfig(**{**PRESETS[preset], "preset": preset, **over})


# int fields that are sizes or counts (>= 1) wherever a config has them; other numbers must be >= 0
_SIZE_FIELDS = {"d_model", "expand", "frozen_layers", "frozen_d_state", "target_layers", "target_d_state", "batch",
                "seq_len", "iters", "eval_every", "eval_batches", "n_layers", "d_state", "steps", "rounds"}


def check_config(cfg) -> None:
    """Rules shared by the Mamba configs (raise ValueError naming the option): sizes >= 1, other numbers
    finite and >= 0, learning rates > 0, a known backend, and a CUDA device only where CUDA is available."""
    for f in dataclasses.fields(cfg):
        v, opt = getattr(cfg, f.name), "--" + f.name.replace("_", "-")
        vals = v if isinstance(v, tuple) else (v,)
        nums = [x for x in vals if isinstance(x, (int, float)) and not isinstance(x, bool)]
        if any(not math.isfinite(x) or x < 0 for x in nums):
            raise ValueError(f"{opt}: must be finite and >= 0, got {v!r}")
        if f.name in _SIZE_FIELDS and any(x < 1 for x in nums):
            raise ValueError(f"{opt}: must be >= 1, got {v!r}")
        if f.name in ("lrs", "warmup_lr") and (not vals or any(x <= 0 for x in nums)):
            raise ValueError(f"{opt}: need positive learning rates, got {v!r}")
        if f.name == "seeds" and not vals:
            raise ValueError(f"{opt}: need at least one seed")
    check_numbers(cfg)
    if hasattr(cfg, "out"):
        check_out_dir(cfg.out)
    backend = getattr(cfg, "backend", "auto")
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"--backend: one of {['auto'] + sorted(BACKENDS)}, got {backend!r}")
    if backend == "mamba_ssm" and not mamba_ssm_available() and not (getattr(cfg, "dry_run", False)
                                                                   or getattr(cfg, "plot_only", False)):
        raise ValueError("--backend: 'mamba_ssm' needs CUDA and the mamba-ssm package (not usable here); "
                         "use --backend reference or auto")
    device = getattr(cfg, "device", "auto")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ValueError(f"--device: one of 'auto', 'cpu', 'cuda[:i]', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device: {device!r} requested but CUDA is not available (torch.cuda.is_available() "
                         "is False); use --device cpu or auto")
    sized = all(hasattr(cfg, k) for k in ("d_model", "frozen_d_state", "frozen_layers", "batch", "seq_len"))
    if sized and not any(getattr(cfg, k, False) for k in ("dry_run", "plot_only", "merge")):  # a regression sweep
        dev = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        check_memory(estimate_step_bytes(cfg), dev, "--batch or --seq-len")


ACTIVATION_COPIES = 6  # per layer: scan states kept for the backward, their gradients, the block's inputs


def estimate_step_bytes(cfg) -> int:
    """Peak bytes of one training step of a Mamba-family stack (frozen + target layers run on every batch), a
    guard's estimate, not a measurement: per layer ``ACTIVATION_COPIES`` tensors of batch x seq_len x d_inner x
    (d_state + 4) floats (the reference scan keeps every state; the kernels keep less), plus, where the config
    has attention heads (the hybrid), the batch x heads x seq_len^2 attention weights of every layer."""
    d_inner = getattr(cfg, "expand", 2) * cfg.d_model
    d_state = max(cfg.frozen_d_state, getattr(cfg, "target_d_state", 1))
    layers = cfg.frozen_layers + getattr(cfg, "target_layers", 1)
    tokens = cfg.batch * cfg.seq_len
    floats = ACTIVATION_COPIES * layers * tokens * d_inner * (d_state + 4)
    floats += 2 * layers * cfg.batch * getattr(cfg, "n_heads", 0) * cfg.seq_len ** 2
    return 4 * floats


def validate(cfg: MambaRegressionConfig) -> MambaRegressionConfig:
    """Every rule of the command line (ValueError naming the option); ``--methods all`` expanded first."""
    if cfg.methods == ("all",):
        cfg = dataclasses.replace(cfg, methods=ALL_METHODS)
    check_config(cfg)
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad:
        raise ValueError(f"--methods: unknown {bad}; choose from {list(METHODS)} or 'all'")
    for name in BENCHMARK_BUDGET_FIELDS:
        vals = getattr(cfg, name)
        if not vals or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in vals):
            raise ValueError(f"--{name.replace('_', '-')}: need one or more integers >= 1, got {vals}")
    if max(cfg.dora_ranks) > cfg.d_model:
        raise ValueError(f"--dora-ranks: each rank must be <= d_model={cfg.d_model} (the smaller side of out_proj), "
                         f"got {cfg.dora_ranks}")
    check_options(cfg)
    try:
        lr_policy(cfg)
    except ValueError as e:
        raise ValueError(f"--lr-extend-factor/--lr-min/--lr-max: {e}") from None
    return cfg


def parse_args(argv: Optional[Sequence[str]] = None) -> MambaRegressionConfig:
    """Config from the command line (preset ``cpu`` unless ``--preset`` names another)."""
    return parse_options(MambaRegressionConfig, PRESETS, argv, prog="python -m synthetic mamba",
                         description=DESCRIPTION, validate=validate)[0]


def lr_policy(cfg: MambaRegressionConfig) -> LrPolicy:
    """The config's rule for growing the learning-rate grid at its edges (``synthetic.results.LrPolicy``)."""
    return LrPolicy.from_config(cfg)


def check_options(cfg: MambaRegressionConfig) -> None:
    """ValueError naming the option for inconsistent opt-in / shard options."""
    if cfg.sdt_rule not in SDT_RULES:
        raise ValueError(f"--sdt-rule: one of {SDT_RULES}, got {cfg.sdt_rule!r}")
    if not 0.0 <= cfg.sdt_state_freeze < 1.0:
        raise ValueError(f"--sdt-state-freeze: must be in [0, 1), got {cfg.sdt_state_freeze}")
    if cfg.sdt_state_freeze and cfg.sdt_rule != "official":
        raise ValueError("--sdt-state-freeze: state-level freezing needs --sdt-rule official (it ranks states by "
                         "the warm-up's A_log change)")
    if not 0.0 <= cfg.lora_dropout < 1.0:
        raise ValueError(f"--lora-dropout: must be in [0, 1), got {cfg.lora_dropout}")
    parse_shard(cfg.shard)
    if cfg.shard and (cfg.merge or cfg.plot_only):
        raise ValueError("--shard: cannot be combined with --merge or --plot-only")
    d_inner = cfg.expand * cfg.d_model
    if any(r > cfg.d_model for r in cfg.lora_ranks):
        raise ValueError(f"--lora-ranks: each rank must be <= d_model={cfg.d_model} (the smaller side of in_proj and "
                         f"out_proj), got {cfg.lora_ranks}")
    if any(c > d_inner for c in cfg.sdt):
        raise ValueError(f"--sdt: each channel count must be <= d_inner = expand x d_model = {d_inner}, "
                         f"got {cfg.sdt}")
    for m in cfg.methods:  # every budget of the grid is built here, before anything runs
        for b in METHODS[m].budgets(cfg):
            if b.get("channels", 0) > d_inner or b.get("channels", 1) < 1:
                raise ValueError(f"--sdt-lora: channels must be in [1, d_inner={d_inner}], got {b}")
            if not 1 <= b.get("rank", 1) <= cfg.d_model:
                raise ValueError(f"--sdt-lora: rank must be in [1, d_model={cfg.d_model}], got {b}")


# ------------------------------------------------------------------------------------ the grid
def budgets(cfg: MambaRegressionConfig, method: str) -> List[dict]:
    """The budget dicts swept for one method (its registry entry's ``budgets``)."""
    if method not in METHODS:
        raise ValueError(f"method: no registry entry for {method!r}")
    return METHODS[method].budgets(cfg)


def budget_label(b: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(b.items())) or "-"


def lr_outermost_grid(cfg, methods, first: Sequence[str]) -> List[dict]:
    """All runs of a Mamba-family sweep: per seed, lr outermost (every (method, budget) gets the first lr first, so
    a truncated sweep has every point), methods in ``first``'s order then the others asked for (none dropped); an
    untrained method (Frozen) once per seed at lr 0. ``methods``: the experiment's registry."""
    order = [m for m in first if m in cfg.methods] + [m for m in cfg.methods if m not in first]
    runs = []
    for seed in cfg.seeds:
        for i, lr in enumerate(cfg.lrs):
            for m in order:
                if m not in methods:
                    raise ValueError(f"method: no registry entry for {m!r}")
                if not methods[m].trains and i > 0:
                    continue
                for b in methods[m].budgets(cfg):
                    runs.append({"method": m, "budget": b, "lr": lr if methods[m].trains else 0.0, "seed": seed})
    return runs


def run_grid(cfg: MambaRegressionConfig) -> List[dict]:
    """All runs, ordered so the central comparison (SDT vs LoRA (S6+Proj)) comes first, then by seed."""
    return lr_outermost_grid(cfg, METHODS, ["Frozen", "SDT", "LoRA (S6+Proj)", "SDT + LoRA", "LoRA (Proj)", "Full"])


def out_paths(cfg: MambaRegressionConfig) -> Dict[str, Path]:
    """Results and figures; a run with any of BENCHMARK_ORDER's methods (``--methods all``) writes its own
    ``peft_methods_mamba_<preset>.jsonl`` / ``.png`` and ``peft_methods_mamba_loss_curves_<preset>.png``."""
    out = Path(cfg.out)
    if any(m in BENCHMARK_ORDER for m in cfg.methods):
        return {"json": out / f"peft_methods_mamba_{cfg.preset}.jsonl", "mse": out / f"peft_methods_mamba_{cfg.preset}",
                "curves": out / f"peft_methods_mamba_loss_curves_{cfg.preset}.png"}
    return {"json": out / f"mamba_regression_{cfg.preset}.jsonl",
            "mse": out / f"mamba_mse_vs_params_{cfg.preset}",
            "curves": out / f"mamba_loss_curves_{cfg.preset}.png"}


def config_dict(cfg: MambaRegressionConfig) -> dict:
    """The fields a run's result depends on, under their key names (field metadata: :func:`synthetic.cli.option`)."""
    return key_config(cfg)
