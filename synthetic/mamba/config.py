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

from synthetic.mamba.official import SDT_RULES
from synthetic.mamba.peft import BACKENDS, BENCHMARK_METHODS, METHODS, mamba_ssm_available
from synthetic.results import LrPolicy
from synthetic.cli import check_numbers, check_out_dir, field_help
from synthetic.runner import parse_shard


METHOD_ORDER = ("Frozen", "LoRA (Proj)", "LoRA (S6+Proj)", "SDT", "SDT + LoRA", "Full")
BENCHMARK_ORDER = tuple(BENCHMARK_METHODS)  # the benchmark's other methods (``--methods all``)
ALL_METHODS = tuple(m for m in METHODS if m != "Full") + ("Full",)  # every registry entry, Full last
BENCHMARK_BUDGET_FIELDS = ("prompt_lens", "prefix_lens", "dora_ranks", "additional_states")


@dataclass(frozen=True)
class MambaRegressionConfig:
    """Every field is a CLI option (``--d-model 64``; tuples as comma lists: ``--lrs 1e-3,3e-3``)."""

    preset: str = "cpu"  # named config (PRESETS); other options override its fields
    backend: str = "auto"  # mamba_ssm | reference | auto (mamba_ssm if CUDA and the package are present)
    fused: bool = True  # use mamba_inner_fn when causal-conv1d is installed (mamba_ssm backend)
    device: str = "auto"  # auto | cpu | cuda
    d_model: int = 16
    expand: int = 2
    frozen_layers: int = 2
    frozen_d_state: int = 8
    target_layers: int = 1
    target_d_state: int = 4
    batch: int = 8
    seq_len: int = 32
    iters: int = 150
    eval_every: int = 25
    eval_batches: int = 2
    warmup_iters: int = 10  # Algorithm 1's warm-up of the S6 parameters
    warmup_lr: float = 1e-2
    weight_decay: float = 0.01
    lrs: Tuple[float, ...] = (3e-2, 1e-2)  # swept in this order: a truncated sweep has every point at the first lr
    lr_extend_factor: float = 4.0  # a best lr at the grid's edge adds edge×factor (or /factor); 0 = off
    lr_min: float = 1e-6  # bounds of the extension (sweep.LrPolicy)
    lr_max: float = 1.0
    seeds: Tuple[int, ...] = (0,)
    model_seed: int = 0  # seeds the frozen and target models (shared by all runs)
    lora_ranks: Tuple[int, ...] = (1, 2)
    sdt_channels: Tuple[int, ...] = (8, 16)  # channels per layer
    sdt_lora: Tuple[str, ...] = ("8x1",)  # "<channels>x<rank>"
    methods: Tuple[str, ...] = METHOD_ORDER  # methods to run (registry names, comma-separated) or "all"
    # budgets of BENCHMARK_ORDER's methods (not part of a run key: each run's budget is)
    prompt_lens: Tuple[int, ...] = (8, 32)  # prompt tuning: M vectors at the input
    prefix_lens: Tuple[int, ...] = (4, 16)  # prefix-tuning: M vectors per block
    dora_ranks: Tuple[int, ...] = (1, 2)  # DoRA on in_proj and out_proj
    additional_states: Tuple[int, ...] = (1, 2)  # Additional-scan: states added per channel
    time_budget_s: float = 0.0  # stop starting new runs after this many seconds (0: no limit); rerun to resume
    threads: int = 1  # torch CPU threads on the CPU device (tiny ops: one thread is fastest; 0 = torch default)
    out: str = "figures"
    plot_only: bool = False
    dry_run: bool = False  # print the plan (runs done / to do per method, estimated time) and exit
    shard: str = ""  # "i/n": run only grid runs j with j % n == i, into this shard's own results file
    merge: bool = False  # fold the shard files into the main results file (atomically), then plot
    # Opt-in options matching the official code (furiosa-ai/ssm-peft, mamba_ssm_peft/peft/sd_lora.py and
    # cfg/peft/); see notes/mamba.md. Left out of run keys at their defaults (_OPT_IN_DEFAULTS).
    sdt_rule: str = "ours"  # "ours": warm up A_log, x_proj, dt_proj; score by the change of Ā | "official" (below)
    sdt_state_freeze: float = 0.0  # official rule only: fraction of A_log states frozen per SDT channel (0.75)
    lora_dropout: float = 0.0  # dropout on the LoRA input path (official 0.1); runs unfused while training


PRESETS: Dict[str, MambaRegressionConfig] = {
    # < 3 minutes on 2 CPU cores with the reference scan
    "cpu": MambaRegressionConfig(),
    # the GPU configuration (mamba_ssm backend); 500 AdamW iterations as the S4 experiment (the paper's
    # Mamba loss curves run 1,000); ~9-13 s per run on one H100 with mamba-ssm's unfused path
    "paper": MambaRegressionConfig(
        preset="paper", d_model=64, expand=2, frozen_layers=4, frozen_d_state=16, target_layers=1,
        target_d_state=8, batch=64, seq_len=256, iters=500, eval_every=25, eval_batches=4, warmup_iters=50,
        warmup_lr=1e-2, lrs=(1e-2, 3e-2, 3e-3), seeds=(0,), lora_ranks=(1, 2, 4, 8),
        sdt_channels=(16, 32, 64, 128), sdt_lora=("16x1", "32x2", "64x4"),
        prompt_lens=(32, 64, 128, 256), prefix_lens=(8, 16, 32, 64), dora_ranks=(1, 2, 4, 8),
        additional_states=(1, 2, 4, 8)),
    # seconds; for tests
    "tiny": MambaRegressionConfig(
        preset="tiny", d_model=8, frozen_layers=2, frozen_d_state=4, target_d_state=2, batch=2, seq_len=8,
        iters=6, eval_every=3, eval_batches=1, warmup_iters=2, lrs=(1e-2,), lora_ranks=(1,), sdt_channels=(4,),
        sdt_lora=("4x1",), prompt_lens=(2,), prefix_lens=(2,), dora_ranks=(1,), additional_states=(1,)),
}


# Opt-in fields: left out of the run key while at these defaults, so earlier results still resume.
_OPT_IN_DEFAULTS = {"sdt_rule": "ours", "sdt_state_freeze": 0.0, "lora_dropout": 0.0}


# ------------------------------------------------------------------------------------------ CLI
def _parse_field(f: dataclasses.Field, s: str):
    default = f.default
    if isinstance(default, bool):
        if s.lower() in ("1", "true", "yes"):
            return True
        if s.lower() in ("0", "false", "no"):
            return False
        raise argparse.ArgumentTypeError(f"--{f.name}: expected true/false, got {s!r}")
    if isinstance(default, tuple):
        typ = type(default[0]) if default else str
        return tuple(typ(x) for x in s.split(",") if x.strip())
    return type(default)(s)


def parse_config(cls, presets: Dict[str, object], default_preset: str, argv: Optional[Sequence[str]], prog: str,
                 description: str):
    """Parse CLI options into a ``cls`` dataclass: start from ``--preset`` (default ``default_preset``),
    then apply the options given (every field is an option; unknown options are rejected)."""
    p = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    fields = dataclasses.fields(cls)
    helps = field_help(cls)
    for f in fields:
        opt = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(opt, nargs="?", const="true", default=None, metavar="BOOL",
                           help=f"{helps[f.name]} (default {f.default})")
        else:
            p.add_argument(opt, default=None, help=f"{helps[f.name]} (default {f.default!r})")
    ns = p.parse_args(argv)  # exits with an error on unknown options
    preset = ns.preset or default_preset
    if preset not in presets:
        p.error(f"--preset: one of {sorted(presets)}, got {preset!r}")
    over = {}
    for f in fields:
        v = getattr(ns, f.name)
        if v is not None and f.name != "preset":
            try:
                over[f.name] = _parse_field(f, v)
            except (ValueError, argparse.ArgumentTypeError) as e:
                p.error(f"--{f.name.replace('_', '-')}: {e}")
    cfg = dataclasses.replace(presets[preset], preset=preset, **over)
    try:
        check_config(cfg)
    except ValueError as e:
        p.error(str(e))
    return cfg, p


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


def parse_args(argv: Optional[Sequence[str]] = None) -> MambaRegressionConfig:
    """Config from the CLI; the default preset is ``paper`` when mamba-ssm and CUDA are available, else ``cpu``."""
    cfg, p = parse_config(MambaRegressionConfig, PRESETS, "paper" if mamba_ssm_available() else "cpu", argv,
                          "python -m synthetic.mamba_regression", __doc__.split("\n\n")[0])
    if cfg.methods == ("all",):
        cfg = dataclasses.replace(cfg, methods=ALL_METHODS)
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad:
        p.error(f"--methods: unknown {bad}; choose from {list(METHODS)} or 'all'")
    for name in BENCHMARK_BUDGET_FIELDS:
        vals = getattr(cfg, name)
        if not vals or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in vals):
            p.error(f"--{name.replace('_', '-')}: need one or more integers >= 1, got {vals}")
    if max(cfg.dora_ranks) > cfg.d_model:
        p.error(f"--dora-ranks: each rank must be <= d_model={cfg.d_model} (the smaller side of out_proj), "
                f"got {cfg.dora_ranks}")
    try:
        check_options(cfg)
    except ValueError as e:
        p.error(str(e))
    try:
        lr_policy(cfg)
    except ValueError as e:
        p.error(f"--lr-extend-factor/--lr-min/--lr-max: {e}")
    return cfg


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
    if any(c > d_inner for c in cfg.sdt_channels):
        raise ValueError(f"--sdt-channels: each count must be <= d_inner = expand x d_model = {d_inner}, "
                         f"got {cfg.sdt_channels}")
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
    d = dataclasses.asdict(cfg)
    for k in ("out", "plot_only", "dry_run", "time_budget_s", "threads", "preset", "device", "seeds", "lrs", "methods",
              "shard", "merge", "lr_extend_factor", "lr_min", "lr_max"):
        d.pop(k)  # not part of what a run computes (a run key holds its own lr and seed)
    for k, v in _OPT_IN_DEFAULTS.items():
        if d[k] == v:
            d.pop(k)
    for k in BENCHMARK_BUDGET_FIELDS:
        d.pop(k)  # budget lists added later: left out so earlier run keys stay valid (a run key holds its budget)
    return d
