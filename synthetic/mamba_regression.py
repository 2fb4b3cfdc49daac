"""Real Mamba runs: SDT vs. LoRA on Mamba blocks, regression to a smaller target (Galim et al., ICML 2025,
Sec. 6, the S6/Mamba counterpart of Figure 2; official plots: SDT vs. LoRA (S6+Proj) loss curves).

Setup: a *frozen* residual stack of Mamba blocks (deeper, more states) is fine-tuned so that its output
matches a *target* stack (one block, fewer states) on fresh random sequences; loss = MSE over all
tokens. Both are randomly initialised with the backend's own block class (mamba-ssm's ``Mamba`` on the
``mamba_ssm`` backend, :class:`synthetic.mamba_ref.MambaRef` on ``reference``). Methods
(:data:`synthetic.mamba_peft.METHODS`): Frozen; LoRA (Proj); LoRA (S6+Proj); SDT (channels chosen by
Algorithm 1); SDT + LoRA; Full. Each (method, budget) is the best of a learning-rate grid.

Outputs (``<out>/``, named by preset): ``mamba_regression_<preset>.json`` (one record per run, resumable),
``mamba_mse_vs_params_<preset>.png`` and ``mamba_loss_curves_<preset>.png``.

    python -m synthetic.mamba_regression                 # auto: mamba_ssm + paper preset on a GPU, else CPU preset
    python -m synthetic.mamba_regression --preset paper --backend mamba_ssm --out figures
    python -m synthetic.mamba_regression --plot-only --preset paper
    python -m synthetic.mamba_regression --methods all   # + the benchmark's methods -> peft_methods_mamba_<preset>.*

Parallel shards on one GPU (each process takes every n-th run of the grid and writes its own file
``mamba_regression_<preset>.shard<i>of<n>.json``; ``--merge`` folds them into the main file atomically):

    for i in 0 1 2 3; do python -m synthetic.mamba_regression --preset paper --shard $i/4 & done; wait
    python -m synthetic.mamba_regression --preset paper --merge
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .mamba_peft import (BACKENDS, BENCHMARK_METHODS, METHODS, S6_NAMES, Backend, MambaPeftConfig, PeftMambaStack,
                         abar_change_scores, frozen_param_count, get_backend, mamba_ssm_available, official_select,
                         residual_stack, select_channels, trainable_count)
from .mamba_ref import block_weights
from .plots import plot_mamba
from .progress import progress
from .sweep import (LrPolicy, ResultsFile, best_of_grid, edge_label, environment, is_diverged,
                    lr_extension_plan, run_key, utc_now)

METHOD_ORDER = ("Frozen", "LoRA (Proj)", "LoRA (S6+Proj)", "SDT", "SDT + LoRA", "Full")
BENCHMARK_ORDER = tuple(BENCHMARK_METHODS)  # the benchmark's other methods (``--methods all``)
ALL_METHODS = METHOD_ORDER[:-1] + BENCHMARK_ORDER + ("Full",)
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
    methods: Tuple[str, ...] = METHOD_ORDER  # or "all": ALL_METHODS
    # budgets of BENCHMARK_ORDER's methods (not part of a run key: each run's budget is)
    prompt_lens: Tuple[int, ...] = (8, 32)  # prompt tuning: M vectors at the input
    prefix_lens: Tuple[int, ...] = (4, 16)  # prefix-tuning: M vectors per block
    dora_ranks: Tuple[int, ...] = (1, 2)  # DoRA on in_proj and out_proj
    additional_states: Tuple[int, ...] = (1, 2)  # Additional-scan: states added per channel
    time_budget_s: float = 0.0  # stop starting new runs after this many seconds (0: no limit); rerun to resume
    threads: int = 1  # torch CPU threads on the CPU device (tiny ops: one thread is fastest; 0 = torch default)
    out: str = "figures"
    plot_only: bool = False
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


SDT_RULES = ("ours", "official")
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
    for f in fields:
        opt = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(opt, nargs="?", const="true", default=None, metavar="BOOL", help=f"(default {f.default})")
        else:
            p.add_argument(opt, default=None, help=f"(default {f.default!r})")
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
    backend = getattr(cfg, "backend", "auto")
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"--backend: one of {['auto'] + sorted(BACKENDS)}, got {backend!r}")
    if backend == "mamba_ssm" and not mamba_ssm_available():
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
    """The config's rule for growing the learning-rate grid at its edges (``synthetic.sweep.LrPolicy``)."""
    return LrPolicy.from_config(cfg)


def parse_shard(s: str) -> Optional[Tuple[int, int]]:
    """'i/n' -> (i, n) with 0 <= i < n; '' -> None."""
    if not s:
        return None
    try:
        i, n = (int(v) for v in s.split("/"))
    except ValueError:
        raise ValueError(f"shard: expected 'i/n' (e.g. 0/4), got {s!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard: need 0 <= i < n, got {s!r}")
    return i, n


def check_options(cfg: MambaRegressionConfig) -> None:
    """ValueError naming the option for inconsistent opt-in / shard options."""
    if cfg.sdt_rule not in SDT_RULES:
        raise ValueError(f"sdt_rule: one of {SDT_RULES}, got {cfg.sdt_rule!r}")
    if not 0.0 <= cfg.sdt_state_freeze < 1.0:
        raise ValueError(f"sdt_state_freeze: must be in [0, 1), got {cfg.sdt_state_freeze}")
    if cfg.sdt_state_freeze and cfg.sdt_rule != "official":
        raise ValueError("sdt_state_freeze: state-level freezing needs --sdt-rule official (it ranks states by "
                         "the warm-up's A_log change)")
    if not 0.0 <= cfg.lora_dropout < 1.0:
        raise ValueError(f"lora_dropout: must be in [0, 1), got {cfg.lora_dropout}")
    parse_shard(cfg.shard)
    if cfg.shard and (cfg.merge or cfg.plot_only):
        raise ValueError("shard: cannot be combined with --merge or --plot-only")


# ------------------------------------------------------------------------------------ the grid
def budgets(cfg: MambaRegressionConfig, method: str) -> List[dict]:
    """The budget dicts swept for one method."""
    if method in BENCHMARK_BUDGETS:
        return BENCHMARK_BUDGETS[method](cfg)
    if method in ("Frozen", "Full"):
        return [{}]
    if method in ("LoRA (Proj)", "LoRA (S6+Proj)"):
        return [{"rank": r} for r in cfg.lora_ranks]
    if method == "SDT":
        return [{"channels": c} for c in cfg.sdt_channels]
    if method == "SDT + LoRA":
        return [{"channels": int(c), "rank": int(r)} for c, r in (s.split("x") for s in cfg.sdt_lora)]
    raise ValueError(f"method: no budget grid for {method!r}")


BENCHMARK_BUDGETS = {
    "Prompt tuning": lambda c: [{"prompt_len": m} for m in c.prompt_lens],
    "Prefix-tuning": lambda c: [{"prefix_len": m} for m in c.prefix_lens],
    "Initial-state tuning": lambda c: [{}],
    "State-offset tuning": lambda c: [{}],
    "BitFit": lambda c: [{}],
    "DoRA (Proj)": lambda c: [{"rank": r} for r in c.dora_ranks],
    "Additional-scan": lambda c: [{"states": n} for n in c.additional_states],
}


def budget_label(b: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(b.items())) or "-"


def run_grid(cfg: MambaRegressionConfig) -> List[dict]:
    """All runs, ordered so the central comparison (SDT vs LoRA (S6+Proj)) comes first, then by seed."""
    order = ["Frozen", "SDT", "LoRA (S6+Proj)", "SDT + LoRA", "LoRA (Proj)", "Full"] + list(BENCHMARK_ORDER)
    runs = []
    for seed in cfg.seeds:
        for i, lr in enumerate(cfg.lrs):  # lr outermost: every (method, budget) gets the first lr first
            for m in [m for m in order if m in cfg.methods]:
                if m == "Frozen" and i > 0:
                    continue
                for b in budgets(cfg, m):
                    runs.append({"method": m, "budget": b, "lr": 0.0 if m == "Frozen" else lr, "seed": seed})
    return runs


# ----------------------------------------------------------------------------------- the models
class Experiment:
    """Frozen and target stacks, data streams and one training run per grid point."""

    def __init__(self, cfg: MambaRegressionConfig, backend: Backend, device: torch.device):
        self.cfg, self.backend, self.device = cfg, backend, device
        torch.manual_seed(cfg.model_seed)
        self.frozen_blocks = [backend.make_block(cfg.d_model, cfg.frozen_d_state, cfg.expand, device)
                              for _ in range(cfg.frozen_layers)]
        torch.manual_seed(cfg.model_seed + 1)
        self.target_blocks = [backend.make_block(cfg.d_model, cfg.target_d_state, cfg.expand, device)
                              for _ in range(cfg.target_layers)]
        for b in self.frozen_blocks + self.target_blocks:
            b.requires_grad_(False)
        self.layer_weights = [block_weights(b) for b in self.frozen_blocks]
        self.dt_rank = self.frozen_blocks[0].dt_rank
        self.n_frozen = frozen_param_count(self.layer_weights)
        g = torch.Generator(device="cpu").manual_seed(10_000 + cfg.model_seed)
        self.eval_x = [self._inputs(g) for _ in range(cfg.eval_batches)]
        with torch.no_grad():
            self.eval_y = [residual_stack(self.target_blocks, x) for x in self.eval_x]
        self._scores: Dict[object, List[torch.Tensor]] = {}

    def _inputs(self, g: torch.Generator) -> torch.Tensor:
        c = self.cfg
        return torch.randn(c.batch, c.seq_len, c.d_model, generator=g).to(self.device)  # (Bt, N, d_model)

    def batch(self, g: torch.Generator):
        x = self._inputs(g)
        with torch.no_grad():
            y = residual_stack(self.target_blocks, x)
        return x, y

    def eval_mse(self, model: PeftMambaStack) -> float:
        """Mean eval MSE, in eval mode (LoRA dropout off), restoring the model's mode."""
        was = model.training
        model.eval()
        with torch.no_grad():
            tot = sum(float(torch.mean((model(x, self.backend) - y) ** 2)) for x, y in zip(self.eval_x, self.eval_y))
        model.train(was)
        return tot / len(self.eval_x)

    def stack(self, config: MambaPeftConfig, channels=None, seed: int = 0, states=None) -> PeftMambaStack:
        g = torch.Generator(device="cpu").manual_seed(seed)
        return PeftMambaStack(self.layer_weights, d_state=self.cfg.frozen_d_state, dt_rank=self.dt_rank,
                              config=config, channels=channels, generator=g, states=states).to(self.device)

    def sdt_scores(self, seed: int) -> List[torch.Tensor]:
        """Algorithm 1, steps 1-2 for S6: warm up A_log, x_proj, dt_proj on a copy; score channels
        per layer by the change of Ā on a probe batch (cached per seed)."""
        if seed in self._scores:
            return self._scores[seed]
        c = self.cfg
        model = self.stack(MambaPeftConfig(full=S6_NAMES), seed=seed)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=c.warmup_lr,
                                weight_decay=c.weight_decay)
        g = torch.Generator(device="cpu").manual_seed(20_000 + seed)
        for _ in range(c.warmup_iters):
            self.step(model, opt, g)
        probe = self.eval_x[0]
        scores, h = [], probe
        with torch.no_grad():
            for w_before, blk_f, blk_w in zip(self.layer_weights, self.frozen_blocks, model.blocks):
                scores.append(abar_change_scores(w_before, blk_w.effective_weights(), h, c.frozen_d_state,
                                                 self.dt_rank).cpu())
                h = h + blk_f(h)  # the frozen model's input to the next layer
        self._scores[seed] = scores
        return scores

    def official_deltas(self, seed: int, lr: float, config: MambaPeftConfig) -> List[torch.Tensor]:
        """The official SDLoRA warm-up (``sd_lora.py``): train a full additive change of ``A_log``
        (plus the method's LoRA, as the official warm-up trains the out_proj LoRA too) for
        ``warmup_iters`` steps at the run's lr; returns per layer the learnt ``ΔA_log`` (D, H)
        (cached per seed, lr and LoRA)."""
        key = ("official", seed, lr, config.lora, config.lora_rank)
        if key in self._scores:
            return self._scores[key]
        c = self.cfg
        warm = MambaPeftConfig(full=("A_log",), lora=config.lora, lora_rank=config.lora_rank,
                               lora_alpha=config.lora_alpha, lora_dropout=c.lora_dropout if config.lora else 0.0)
        model = self.stack(warm, seed=seed)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                weight_decay=c.weight_decay)
        g = torch.Generator(device="cpu").manual_seed(20_000 + seed)
        for _ in range(c.warmup_iters):
            self.step(model, opt, g)
        deltas = [(blk.full["A_log"].detach() - w["A_log"]).cpu() for blk, w in zip(model.blocks, self.layer_weights)]
        self._scores[key] = deltas
        return deltas

    def sdt_selection(self, config: MambaPeftConfig, lr: float, seed: int):
        """(channels per layer, A_log states per layer or None) for an SDT config, by ``cfg.sdt_rule``."""
        c = self.cfg
        if c.sdt_rule == "official":
            n_states = c.frozen_d_state - int(round(c.sdt_state_freeze * c.frozen_d_state)) if c.sdt_state_freeze else 0
            sel = [official_select(d, config.sdt_channels, n_states) for d in self.official_deltas(seed, lr, config)]
            return [ch for ch, _ in sel], ([st for _, st in sel] if n_states else None)
        return [select_channels(s, config.sdt_channels) for s in self.sdt_scores(seed)], None

    def step(self, model, opt, g: torch.Generator) -> torch.Tensor:
        """One AdamW step on a fresh batch; returns the (detached) training MSE without a host sync."""
        x, y = self.batch(g)
        loss = torch.mean((model(x, self.backend) - y) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    def train(self, method: str, budget: dict, lr: float, seed: int) -> dict:
        c = self.cfg
        t0 = time.perf_counter()
        config = METHODS[method](budget)
        if c.lora_dropout and config.lora:
            config = dataclasses.replace(config, lora_dropout=c.lora_dropout)
        channels = states = None
        if config.sdt_channels:
            channels, states = self.sdt_selection(config, lr, seed)
            if states is not None:
                config = dataclasses.replace(config, sdt_states=len(states[0][0]))
        torch.manual_seed(seed)
        model = self.stack(config, channels, seed=seed, states=states)
        fallback = model.fused_fallback(self.backend)
        n_train = trainable_count(model)
        params = [p for p in model.parameters() if p.requires_grad]
        g = torch.Generator(device="cpu").manual_seed(30_000 + seed)
        losses, evals, status = [], [(0, self.eval_mse(model))], "ok"
        if params and c.iters > 0:
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=c.weight_decay)
            buf = torch.zeros(c.iters, device=self.device)
            for it in range(c.iters):
                try:
                    buf[it] = self.step(model, opt, g)
                except ValueError:  # theory.peft refuses non-finite factors: a step diverged since the last eval
                    if all(bool(torch.isfinite(p).all()) for p in params):
                        raise
                    buf[it] = float("nan")
                    status = "diverged"
                    break
                if (it + 1) % c.eval_every == 0 or it + 1 == c.iters:
                    ev = self.eval_mse(model)
                    evals.append((it + 1, ev))
                    if is_diverged(ev):
                        status = "diverged"
                        break
            losses = [float(v) for v in buf[: it + 1].cpu()]
        ev_vals = [v for _, v in evals]
        finite = [v for v in ev_vals if not is_diverged(v)]
        extra = {}
        if states is not None:
            extra["sdt_states"] = states
        if fallback:  # trained unfused although the backend has a fused path
            extra["fused_fallback"] = fallback
        return {**extra,
            "method": method, "budget": budget, "budget_label": budget_label(budget), "lr": lr, "seed": seed,
            "trainable_count": n_train, "trainable_pct": 100.0 * n_train / self.n_frozen,
            "best_mse": min(finite) if finite and status == "ok" else None,
            "final_mse": ev_vals[-1] if status == "ok" else None, "status": status,
            "loss_curve": losses, "eval_curve": evals, "sdt_channels": channels,
            "wall_time_s": time.perf_counter() - t0,
        }


# ----------------------------------------------------------------------------------------- main
def out_paths(cfg: MambaRegressionConfig) -> Dict[str, Path]:
    """Results and figures; a run with any of BENCHMARK_ORDER's methods (``--methods all``) writes its own
    ``peft_methods_mamba_<preset>.json`` / ``.png`` and ``peft_methods_mamba_loss_curves_<preset>.png``."""
    out = Path(cfg.out)
    if any(m in BENCHMARK_ORDER for m in cfg.methods):
        return {"json": out / f"peft_methods_mamba_{cfg.preset}.json", "mse": out / f"peft_methods_mamba_{cfg.preset}",
                "curves": out / f"peft_methods_mamba_loss_curves_{cfg.preset}.png"}
    return {"json": out / f"mamba_regression_{cfg.preset}.json",
            "mse": out / f"mamba_mse_vs_params_{cfg.preset}",
            "curves": out / f"mamba_loss_curves_{cfg.preset}.png"}


def _config_dict(cfg: MambaRegressionConfig) -> dict:
    d = dataclasses.asdict(cfg)
    for k in ("out", "plot_only", "time_budget_s", "threads", "preset", "device", "seeds", "lrs", "methods",
              "shard", "merge", "lr_extend_factor", "lr_min", "lr_max"):
        d.pop(k)  # not part of what a run computes (a run key holds its own lr and seed)
    for k, v in _OPT_IN_DEFAULTS.items():
        if d[k] == v:
            d.pop(k)
    for k in BENCHMARK_BUDGET_FIELDS:
        d.pop(k)  # budget lists added later: left out so earlier run keys stay valid (a run key holds its budget)
    return d


def shard_path(main: Path, i: int, n: int) -> Path:
    return main.with_name(f"{main.stem}.shard{i}of{n}{main.suffix}")


def shard_files(main: Path) -> List[Path]:
    return sorted(main.parent.glob(f"{main.stem}.shard*of*{main.suffix}"))


def merge_shards(main: Path) -> int:
    """Fold every shard file of ``main`` into it (one atomic write; records already there are kept,
    duplicate keys skipped), then delete the shard files. Returns the number of records added."""
    rf = ResultsFile(main)
    files = shard_files(main)
    recs = [r for f in files for r in ResultsFile(f).load()]
    before = len(rf.completed_keys())
    rf.extend(recs)
    added = len(rf.completed_keys()) - before
    for f in files:
        f.unlink()
    print(f"mamba_regression: merged {len(files)} shard files ({len(recs)} records, {added} new) into {main}",
          file=sys.stderr)
    return added


def run(cfg: MambaRegressionConfig) -> Path:
    check_options(cfg)
    paths = out_paths(cfg)
    if cfg.merge:
        merge_shards(paths["json"])
        summary(ResultsFile(paths["json"]).load(), lr_policy(cfg))
        try:
            plot(paths, lr_policy(cfg))
        except ImportError as e:
            print(f"mamba_regression: no plots ({e}); run again with --plot-only", file=sys.stderr)
        return paths["json"]
    if cfg.plot_only:
        plot(paths, lr_policy(cfg))
        return paths["json"]
    shard = parse_shard(cfg.shard)
    backend = get_backend(cfg.backend, fused=cfg.fused)
    dev = torch.device(("cuda" if torch.cuda.is_available() and backend.name == "mamba_ssm" else "cpu")
                       if cfg.device == "auto" else cfg.device)
    if dev.type == "cpu" and cfg.threads:
        torch.set_num_threads(cfg.threads)
    env = environment()
    commit = os.environ.get("GIT_COMMIT") or env["commit"]
    cdict = _config_dict(cfg)
    rf = ResultsFile(paths["json"])
    done = rf.completed_keys()
    for f in shard_files(paths["json"]):  # runs already in some shard file are done too
        done |= ResultsFile(f).completed_keys()
    grid = run_grid(cfg)
    mine = [r for j, r in enumerate(grid) if shard is None or j % shard[1] == shard[0]]
    todo = [r for r in mine if run_key({**r, "config": cdict, "backend": backend.name}) not in done]
    if shard is not None:
        rf = ResultsFile(shard_path(paths["json"], *shard))
    print(f"mamba_regression: preset {cfg.preset}, backend {backend.name} (mamba-ssm {backend.version}, "
          f"fused {backend.inner_fn is not None}), device {dev}; {len(mine) - len(todo)} of {len(mine)} runs done"
          + (f" (shard {shard[0]}/{shard[1]} of {len(grid)}) -> {rf.path}" if shard else ""), file=sys.stderr)
    t_start = time.perf_counter()
    exp = None

    def out_of_time():
        return cfg.time_budget_s and time.perf_counter() - t_start > cfg.time_budget_s

    def run_one(r, source):
        nonlocal exp
        exp = exp or Experiment(cfg, backend, dev)
        key = run_key({**r, "config": cdict, "backend": backend.name})
        try:
            rec = exp.train(r["method"], r["budget"], r["lr"], r["seed"])
        except torch.cuda.OutOfMemoryError as e:  # record and go on; the grid point is shown as failed
            rec = {**r, "budget_label": budget_label(r["budget"]), "status": f"error: {type(e).__name__}",
                   "best_mse": None, "final_mse": None, "trainable_pct": None}
        rec.update(key=key, config=cdict, backend=backend.name, mamba_ssm_version=backend.version,
                   fused=backend.inner_fn is not None and not rec.get("fused_fallback"),
                   device=env["device"] if dev.type == "cuda" else "cpu",
                   commit=commit, date=utc_now(), frozen_params=exp.n_frozen, lr_source=source)
        rf.append(rec)

    stopped = False
    for r in progress(todo, desc="mamba runs"):
        if out_of_time():
            stopped = True
            break
        run_one(r, "grid")
    # grow the lr grid where a (method, budget)'s best lr is at an edge, in rounds (synthetic.sweep)
    policy, ckey = lr_policy(cfg), run_key(cdict)  # run_key: the JSON round trip turns tuples into lists
    groups = [(m, b) for m in cfg.methods if m != "Frozen" for b in budgets(cfg, m)]
    n_round, planned = 0, set()
    # Shards run the base grid only: which lrs an extension round adds depends on the runs finished before
    # it, so rounds are planned by one process after --merge (a plain rerun of the command).
    while not stopped and shard is None:
        recs = [x for x in rf.load() if x.get("backend") == backend.name and run_key(x.get("config", {})) == ckey]
        ext = [{"method": m, "budget": b, "lr": lr, "seed": seed} for m, b in groups
               for seed, lr in lr_extension_plan([x for x in recs if x["method"] == m and x["budget"] == b],
                                                 cfg.lrs, cfg.seeds, policy)]
        if not ext:
            break
        again = [r for r in ext if run_key(r) in planned]
        if again:  # its record should be in the file by now: stop rather than loop
            raise RuntimeError(f"lr extension: {again[0]} planned twice; its record is not in {paths['json']}")
        planned.update(run_key(r) for r in ext)
        n_round += 1
        for r in progress(ext, desc=f"mamba lr extension {n_round}"):
            if out_of_time():
                stopped = True
                break
            run_one(r, "extension")
    if stopped:
        print("mamba_regression: time budget reached; rerun the same command to resume", file=sys.stderr)
    if shard is not None:
        print("mamba_regression: shard done; fold the shard files in with --merge, then rerun without --shard to "
              "grow the lr grid where a best lr is at an edge", file=sys.stderr)
        return rf.path
    summary(rf.load(), policy)
    try:
        plot(paths, policy)
    except ImportError as e:  # e.g. a GPU machine without matplotlib: redraw later with --plot-only
        print(f"mamba_regression: no plots ({e}); run again with --plot-only", file=sys.stderr)
    return paths["json"]


def summary(records: Sequence[dict], policy: Optional[LrPolicy] = None) -> List[dict]:
    """Best-of-grid table on stdout; 'lr edge' flags a best lr still at an edge of its grid (with the bound
    that stopped the grid, or 'not extended' for a sweep cut short)."""
    rows = best_of_grid(records, group_keys=("method", "budget_label"), lr_policy=policy)
    print(f"{'method':<16} {'budget':<20} {'trainable %':>11} {'best MSE':>10} {'lr':>8}  lr edge")
    for r in sorted(rows, key=lambda r: (ALL_METHODS.index(r["method"]) if r["method"] in ALL_METHODS else 99,
                                         r["trainable_pct"] or 0)):
        mse = "n/a" if r["mean"] is None else f"{r['mean']:.4g}"
        print(f"{r['method']:<16} {r['budget_label']:<20} {(r['trainable_pct'] or 0):11.3f} {mse:>10} {r['lr']!s:>8}  "
              f"{edge_label(r)}")
    return rows


def plot(paths: Dict[str, Path], policy: Optional[LrPolicy] = None) -> None:
    """Both figures from the results file alone (``policy``: how the lr grid was grown, for the edge flags)."""
    records = ResultsFile(paths["json"]).load()
    if not records:
        print(f"mamba_regression: no records in {paths['json']}; nothing to plot", file=sys.stderr)
        return
    rows = best_of_grid(records, group_keys=("method", "budget_label"), lr_policy=policy)
    plot_mamba(records, rows, paths["mse"], paths["curves"], method_order=ALL_METHODS)


def main(argv: Optional[Sequence[str]] = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
