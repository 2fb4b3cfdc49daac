"""Configuration of the Mamba-II regression: the :class:`Mamba2RegressionConfig` behind
``python -m synthetic.mamba2_regression``, its presets, validation, the run grid and the fields of a run's key
(the command-line parser and the shared option checks are Mamba-I's, :func:`synthetic.mamba.config.parse_config`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from synthetic.mamba.config import budget_label, lr_outermost_grid, lr_policy, parse_config  # noqa: F401 (budget_label: this experiment's)
from synthetic.mamba2.peft import METHODS, mamba_ssm_available
from synthetic.runner import parse_shard

METHOD_ORDER = tuple(m for m in METHODS if m != "Full") + ("Full",)


@dataclass(frozen=True)
class Mamba2RegressionConfig:
    """Every field is a CLI option (``--d-model 64``; tuples as comma lists: ``--lrs 1e-3,3e-3``)."""

    preset: str = "cpu"  # named config (PRESETS); other options override its fields
    backend: str = "auto"  # mamba_ssm (Triton SSD kernel) | reference (pure torch) | auto (mamba_ssm if usable)
    device: str = "auto"  # auto | cpu | cuda
    d_model: int = 16
    expand: int = 2
    headdim: int = 8  # P: channels per head (d_inner / headdim heads)
    ngroups: int = 1  # G: B/C groups (must divide the number of heads)
    frozen_layers: int = 2
    frozen_d_state: int = 8
    target_layers: int = 1
    target_d_state: int = 4
    chunk_size: int = 64  # SSD chunk length (the scan's block size; the map does not depend on it)
    batch: int = 8
    seq_len: int = 32
    iters: int = 150
    eval_every: int = 25
    eval_batches: int = 2
    warmup_iters: int = 10  # Algorithm 1's warm-up of the SSM parameters
    warmup_lr: float = 1e-2
    weight_decay: float = 0.01
    lrs: Tuple[float, ...] = (3e-2, 1e-2)  # swept in this order: a truncated sweep has every point at the first lr
    lr_extend_factor: float = 4.0  # a best lr at the grid's edge adds edge×factor (or /factor); 0 = off
    lr_min: float = 1e-6
    lr_max: float = 1.0
    seeds: Tuple[int, ...] = (0,)
    model_seed: int = 0  # seeds the frozen and target models (shared by all runs)
    lora_ranks: Tuple[int, ...] = (1, 2)  # LoRA (Proj), LoRA (SSM+Proj)
    sdt: Tuple[str, ...] = ("4x1", "4x2", "4x4", "4x8")  # SDT budgets "<heads>x<states>" (per layer / per group)
    sdt_lora: Tuple[str, ...] = ("4x1x1",)  # SDT + LoRA budgets "<heads>x<states>x<rank>"
    dora_ranks: Tuple[int, ...] = (1, 2)  # DoRA (Proj)
    methods: Tuple[str, ...] = METHOD_ORDER  # registry names (comma-separated) or "all"
    time_budget_s: float = 0.0  # stop starting new runs after this many seconds (0: no limit); rerun to resume
    threads: int = 1  # torch CPU threads on the CPU device (0 = torch default)
    out: str = "figures"
    plot_only: bool = False
    dry_run: bool = False  # print the plan (runs done / to do per method, estimated time) and exit
    shard: str = ""  # "i/n": run only grid runs j with j % n == i, into this shard's own results file
    merge: bool = False  # fold the shard files into the main results file (atomically), then plot


PRESETS: Dict[str, Mamba2RegressionConfig] = {
    # 3 seeds, about 3-5 minutes on 2 CPU cores (4 heads of 8 channels, N = 8 -> target N = 4)
    "cpu": Mamba2RegressionConfig(seeds=(0, 1, 2)),
    # the GPU configuration: d_model 64, 8 heads of 16 channels, N = 16 (frozen, 4 layers) -> N = 8 (target,
    # 1 layer), batch 64 x 256 tokens, 500 AdamW iterations, 3 seeds (the Mamba-I paper preset's sizes)
    "paper": Mamba2RegressionConfig(
        preset="paper", d_model=64, expand=2, headdim=16, ngroups=1, frozen_layers=4, frozen_d_state=16,
        target_layers=1, target_d_state=8, chunk_size=64, batch=64, seq_len=256, iters=500, eval_every=25,
        eval_batches=4, warmup_iters=50, lrs=(1e-2, 3e-2, 3e-3), seeds=(0, 1, 2), lora_ranks=(1, 2, 4, 8),
        sdt=("8x1", "8x2", "8x4", "8x8", "8x16"), sdt_lora=("8x1x1", "8x2x2", "8x4x4"), dora_ranks=(1, 2, 4, 8)),
    # seconds; for tests
    "tiny": Mamba2RegressionConfig(
        preset="tiny", d_model=8, headdim=4, frozen_layers=2, frozen_d_state=4, target_d_state=2, chunk_size=4,
        batch=2, seq_len=8, iters=6, eval_every=3, eval_batches=1, warmup_iters=2, lrs=(1e-2,), lora_ranks=(1,),
        sdt=("2x1",), sdt_lora=("2x1x1",), dora_ranks=(1,)),
}


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


def parse_args(argv: Optional[Sequence[str]] = None) -> Mamba2RegressionConfig:
    """Config from the CLI; the default preset is ``paper`` when mamba-ssm and CUDA are usable, else ``cpu``."""
    cfg, p = parse_config(Mamba2RegressionConfig, PRESETS, "paper" if mamba_ssm_available() else "cpu", argv,
                          "python -m synthetic.mamba2_regression", __doc__.split("\n\n")[0])
    if cfg.methods == ("all",):
        cfg = dataclasses.replace(cfg, methods=METHOD_ORDER)
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad:
        p.error(f"--methods: unknown {bad}; choose from {list(METHODS)} or 'all'")
    try:
        check_options(cfg)
        lr_policy(cfg)
    except ValueError as e:
        p.error(str(e))
    return cfg


def run_grid(cfg: Mamba2RegressionConfig) -> List[dict]:
    """All runs: lr outermost within a seed (a truncated sweep has every point at the first lr), the central
    comparison (SDT vs LoRA (SSM+Proj)) first."""
    return lr_outermost_grid(cfg, METHODS, ["Frozen", "SDT", "LoRA (SSM+Proj)", "SDT + LoRA", "LoRA (Proj)"])


def out_paths(cfg: Mamba2RegressionConfig) -> Dict[str, Path]:
    out = Path(cfg.out)
    return {"json": out / f"mamba2_regression_{cfg.preset}.jsonl", "mse": out / f"mamba2_mse_vs_params_{cfg.preset}"}


def config_dict(cfg: Mamba2RegressionConfig) -> dict:
    """The fields a run's result depends on (its key's ``config``)."""
    d = dataclasses.asdict(cfg)
    for k in ("out", "plot_only", "dry_run", "time_budget_s", "threads", "preset", "device", "seeds", "lrs", "methods",
              "shard", "merge", "lr_extend_factor", "lr_min", "lr_max", "lora_ranks", "sdt", "sdt_lora", "dora_ranks"):
        d.pop(k)  # a run key holds its own lr, seed and budget
    return d
