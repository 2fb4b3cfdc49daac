"""Deep-S4 synthetic regression: MSE vs trainable parameters (Galim et al., ICML 2025, Sec. 6.1, Fig. 2).

A frozen randomly initialised deep S4 (``L_frozen`` layers, ``H`` real states = ``H/2`` conjugate
pairs) is fine-tuned to reproduce a random target deep S4 (``L_target`` layers, ``H_star`` states) on
integer inputs in {0..9}; every method is swept over its budgets, a learning-rate grid and seeds;
the figure shows best-of-grid mean MSE vs trainable % (of the frozen model's parameters) with the
seed spread. Layers: skip inside the projection (the official code), ``y = σ(W(S4(x) + u ⊙ x) + β)``.

Methods (:data:`METHODS`; SSM module × linear projection):
- Frozen: none × none.
- LoRA (Proj): frozen × LoRA rank r on W.
- LoRA (S4+Proj): LoRA rank s on log(−Re A), Im A, Re C, Im C as D×Hc matrices × LoRA rank r on W.
- SDT: Algorithm 1 (``synthetic.sdt_select``: 20-iteration warm-up of the SSM modules on a copy,
  lr 1e-2, then channels/states ranked by the change of Ā, magnitude as usability rule); A and C of
  selected (channel, state) entries trained, B and Δ frozen × channel-sparse W (the columns of W
  reading the selected channels).
- SDT + LoRA: the same SSM update × LoRA rank r on W.
- Full: every parameter.

Methods other than Full (and BitFit's β) train neither the skip ``u`` nor ``log_dt`` nor ``β`` by default.

The benchmark's other methods (Sec. 3-4; :data:`BENCHMARK_METHODS`, not in the default ``--methods``;
``--methods all`` runs every method and writes ``peft_methods_s4_<preset>.json`` / ``.png``): Prompt
tuning (``--prompt-lens``), Prefix-tuning (``--prefix-lens``, M < H and M >= H for Proposition 1),
Initial-state tuning, State-offset tuning (Kang et al.), BitFit (β), DoRA (Proj) (``--dora-ranks``),
Additional-scan (``--additional-states``). They run on the fast model's second path
(``s4_model.RunState.extra``); their budget lists are not part of run keys.
Opt-in options closer to the official code (``notes/s4_official_differences.md``; at their defaults
they are left out of run keys, so earlier results still resume): ``--state-convention complex``
(``H`` complex modes per channel instead of ``H/2`` pairs), ``--sdt-prune usable`` with
``--usable-channels``/``--usable-states`` (SDT zeroes ``C`` outside the usable dimensions, counted as
pruned, and updates only usable ones), ``--train-skip-dt-bias`` (u, log_dt, β trainable in every
trained method), ``--warmup-params all`` (the warm-up updates every parameter).

Usage::

    python -m synthetic.s4_regression                  # reduced default, any device (CPU < 3 min)
    python -m synthetic.s4_regression --preset paper   # the paper's configuration (GPU)
    python -m synthetic.s4_regression --preset paper --plot-only
    python -m synthetic.s4_regression --preset official   # the official code's conventions (synthetic.s4_official)
    python -m synthetic.s4_regression --methods all    # every method, the benchmark's included

Outputs in ``--out``: ``s4_regression_<preset>.json`` (one record per run, appended atomically;
rerunning resumes), ``s4_mse_vs_params_<preset>.png`` / ``.pdf``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from synthetic import s4_model as sm
from synthetic.cli import check_shard_options, check_sweep_options, dataclass_parser, parse_dataclass
from synthetic.sdt_select import SDTRanking, rank_dimensions, select, select_pruned
from synthetic.runner import Group, Run, merge_shards, parse_shard, print_plan, run_sweep
from synthetic.sweep import (LrPolicy, ResultsFile, best_of_grid, edge_label, environment, plot_mse_vs_params, run_key,
                             subsample_curve, utc_now)

Tensor = torch.Tensor


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
    # fp32 accumulation, the rest TF32; synthetic.s4_model.ToeplitzConvHalf). CPU is always fp32.
    compile: Optional[bool] = None  # None: on for CUDA, off for CPU
    time_budget: float = 0.0  # seconds; stop starting new run groups after this (0 = no limit)
    out: str = "figures"
    plot_only: bool = False
    dry_run: bool = False  # print the plan (runs done / to do per method, estimated time) and exit
    shard: str = ""  # "i/n": run only base-grid groups j with j % n == i, into this shard's own results file
    merge: bool = False  # fold the shard files into the main results file (atomically), then summarise
    # Opt-in options matching the official code (furiosa-ai/ssm-peft, S4/run_s4.py); see
    # notes/s4_official_differences.md. At their defaults they are left out of run keys and
    # fingerprints (:data:`_OPT_IN_DEFAULTS`), so results computed before they existed still resume.
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
    "default": {},
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
_NOT_IN_KEY = {"preset", "lrs", "lr_extend_factor", "lr_min", "lr_max", "seeds", "methods", "lora_ranks",
               "s4_lora_ranks", "sdt_budgets", "sdt_lora_budgets", "device", "compile", "time_budget", "out",
               "plot_only", "dry_run", "shard", "merge", "curve_points", "prompt_lens", "prefix_lens", "dora_ranks", "additional_states"}
# Opt-in fields: left out of the key (and the plot fingerprint) while at these defaults.
_OPT_IN_DEFAULTS = {"state_convention": "pairs", "sdt_prune": "none", "usable_channels": 0, "usable_states": 0,
                    "train_skip_dt_bias": False, "warmup_params": "ssm"}


def _key_fields(config: Dict) -> Dict:
    """The fields of a config dict that identify a run's result."""
    return {k: v for k, v in config.items()
            if k not in _NOT_IN_KEY and not (k in _OPT_IN_DEFAULTS and v == _OPT_IN_DEFAULTS[k])}


def n_modes(cfg: "Config", H: int) -> int:
    """Complex modes per channel stored for ``H`` states: H/2 (pairs) or H (complex convention)."""
    return H // 2 if cfg.state_convention == "pairs" else H


def _parse_sdt(s: str) -> Dict[str, int]:
    """'CxS' or 'CxS:R' -> {"channels": C, "states": S(, "proj_rank": R)}."""
    try:
        cs, _, r = s.partition(":")
        c, st = cs.split("x")
        out = {"channels": int(c), "states": int(st)}
        if r:
            out["proj_rank"] = int(r)
        return out
    except ValueError:
        raise ValueError(f"expected 'CHANNELSxSTATES' or 'CHANNELSxSTATES:RANK', got {s!r}") from None


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
    if cfg.activation != "relu":
        raise ValueError("--activation: only 'relu' is implemented by the fast model (the theory point "
                         "uses the float64 reference for the linear variant)")
    if cfg.precision not in ("tf32", "fp32", "fp16"):
        raise ValueError(f"--precision: must be 'tf32', 'fp32' or 'fp16', got {cfg.precision!r}")
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
                b = _parse_sdt(s)
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
                            description=__doc__.split("\n\n")[0],
                            preset_help="named configuration (also 'official', 'official-tiny': synthetic.s4_official)")


def parse_config(argv: Optional[Sequence[str]] = None) -> Config:
    """CLI -> Config: the preset's values become the defaults, explicit options override them."""
    def expand_all(cfg):  # --methods all: every registered method, the benchmark's included
        return dataclasses.replace(cfg, methods=tuple(METHODS)) if cfg.methods == ("all",) else cfg

    return parse_dataclass(Config, PRESETS, build_parser(), "default", argv, validate, post=expand_all)


# --------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class Method:
    """A fine-tuning method: its budgets, how it sets a RunState's masks, and its theory-package modules.

    budgets(cfg) -> list of budget dicts. configure(state, budget, selection) sets masks / rank masks
    (all R runs of a group share the budget). theory_modules(base, budget, selection) -> modules of
    ``theory.peft`` whose ``count_trainable`` is the method's trainable count (checked by tests).
    """

    name: str
    budgets: Callable[[Config], List[Dict]]
    configure: Callable
    theory_modules: Callable
    needs_selection: bool = False
    trains: bool = True
    own_extra: Tuple[str, ...] = ()  # EXTRA_PARAMS the method trains itself (not re-added by --train-skip-dt-bias)


@dataclass(frozen=True)
class PrunedSelection:
    """SDT selection with the official code's pruning (``--sdt-prune usable``): per-layer rankings plus
    the usable-dimension counts; :func:`synthetic.sdt_select.select_pruned` turns it into masks."""

    rankings: List[SDTRanking]
    usable_channels: int
    usable_states: int


def _layer_sdt_masks(selection, budget):
    """Per-layer SDTMask (D, Hc) of a selection: plain SDT (list of rankings) or pruned (PrunedSelection)."""
    if isinstance(selection, PrunedSelection):
        return [select_pruned(rk, budget["channels"], budget["states"], selection.usable_channels,
                              selection.usable_states) for rk in selection.rankings]
    return [select(rk, budget["channels"], budget["states"]) for rk in selection]


def _sdt_masks(state: sm.RunState, budget, selection, w_columns: bool) -> None:
    masks = _layer_sdt_masks(selection, budget)
    if any(bool(m.pruned.any()) for m in masks):
        state.base = [dict(b) for b in state.base]  # the frozen dicts are shared by groups: copy, then prune
    for l, m in enumerate(masks):
        dev = state.mask[l]["W"].device
        trainable = m.trainable.to(dev)
        for k in sm.SSM_LORA_PARAMS:  # A (both parts) and C (both parts); B and Δ stay frozen
            state.mask[l][k][:] = trainable
        if w_columns:
            state.mask[l]["W"][:, :, trainable.any(1)] = True  # columns reading the selected channels
        if m.pruned.any():  # pruned C entries: frozen (mask False) at a base value of exactly 0
            pruned = m.pruned.to(dev)
            for k in ("C_re", "C_im"):
                b = state.base[l][k]
                state.base[l][k] = torch.where(pruned, torch.zeros_like(b), b)


def _theory_sdt(base, budget, selection, w_columns: bool):
    from theory.peft import MaskedParameter, Role

    mods = []
    for b, m in zip(base, _layer_sdt_masks(selection, budget)):
        roles = torch.where(m.trainable, int(Role.TRAINABLE), int(Role.FROZEN)).to(torch.int8)
        c_roles = m.roles.to(torch.int8)  # pruned entries: C only (A of a pruned entry is just frozen)
        mods += [MaskedParameter(b[k].cpu(), c_roles if k.startswith("C") else roles) for k in sm.SSM_LORA_PARAMS]
        if w_columns:
            ch = torch.where(m.trainable_channels, int(Role.TRAINABLE), int(Role.FROZEN)).to(torch.int8)
            mods.append(MaskedParameter(b["W"].T.cpu(), ch))  # roles per column of W
    return mods


def _theory_lora_proj(base, rank):
    from theory.peft import LoRAConfig, LoRALinear

    return [LoRALinear(b["W"].cpu(), b["beta"].cpu(), LoRAConfig(rank)) for b in base]


def _theory_lora_s4(base, rank):
    from theory.peft import LoRAConfig, LoRAMatrix

    return [LoRAMatrix(b[k].cpu(), LoRAConfig(rank)) for b in base for k in sm.SSM_LORA_PARAMS]


def _set_rank(state, key, r):
    for rm in state.rank_mask:
        rm[key][:, :r] = 1.0


def _configure_full(state, budget, selection):
    for m in state.mask:
        for v in m.values():
            v[:] = True


def _theory_full(base, budget, selection):
    from theory.peft import MaskedParameter, Role

    return [MaskedParameter(v.cpu(), torch.full(v.shape[:1], int(Role.TRAINABLE), dtype=torch.int8))
            for b in base for v in b.values()]


METHODS: Dict[str, Method] = {
    "Frozen": Method("Frozen", lambda c: [{}], lambda s, b, sel: None, lambda base, b, sel: [], trains=False),
    "LoRA (Proj)": Method(
        "LoRA (Proj)", lambda c: [{"proj_rank": r} for r in c.lora_ranks],
        lambda s, b, sel: _set_rank(s, "proj", b["proj_rank"]),
        lambda base, b, sel: _theory_lora_proj(base, b["proj_rank"])),
    "LoRA (S4+Proj)": Method(
        "LoRA (S4+Proj)", lambda c: [{"proj_rank": r, "ssm_rank": s} for r, s in zip(c.lora_ranks, c.s4_lora_ranks)],
        lambda s, b, sel: (_set_rank(s, "proj", b["proj_rank"]), _set_rank(s, "ssm", b["ssm_rank"])),
        lambda base, b, sel: _theory_lora_proj(base, b["proj_rank"]) + _theory_lora_s4(base, b["ssm_rank"])),
    "SDT": Method(
        "SDT", lambda c: [_parse_sdt(x) for x in c.sdt_budgets],
        lambda s, b, sel: _sdt_masks(s, b, sel, w_columns=True),
        lambda base, b, sel: _theory_sdt(base, b, sel, w_columns=True), needs_selection=True),
    "SDT + LoRA": Method(
        "SDT + LoRA", lambda c: [_parse_sdt(x) for x in c.sdt_lora_budgets],
        lambda s, b, sel: (_sdt_masks(s, b, sel, w_columns=False), _set_rank(s, "proj", b["proj_rank"])),
        lambda base, b, sel: _theory_sdt(base, b, sel, w_columns=False) + _theory_lora_proj(base, b["proj_rank"]),
        needs_selection=True),
    "Full": Method("Full", lambda c: [{"all": True}], _configure_full, _theory_full),
}


# ------------------------------------------------------- the benchmark's other PEFT methods (Sec. 3-4)
# Each adds trainable tensors to the RunState where it is configured (RunState.add_extra: every entry
# trainable) or sets masks; the matching theory.peft modules give the count. All start at the frozen
# model's function except prompt/prefix-tuning deeper than one layer (zero vectors pass through ReLU(β)).
def _zeros(state: sm.RunState, *tail) -> Tensor:
    return torch.zeros(state.R, *tail, dtype=torch.float64)


def _configure_prompt(state, budget, selection):
    D = state.base[0]["W"].shape[0]
    state.add_extra(0, "prompt", _zeros(state, D, budget["prompt_len"]))  # (R, D, M), trainable


def _configure_prefix(state, budget, selection):
    D = state.base[0]["W"].shape[0]
    for l in range(len(state.base)):
        state.add_extra(l, "prefix", _zeros(state, D, budget["prefix_len"]))  # (R, D, M) per layer, trainable


def _configure_state(kind: str):
    """Initial-state (``h0``) or state-offset (``offset``) tuning: a complex (D, Hc) state per layer, zero at start."""
    def configure(state, budget, selection):
        D, Hc = state.base[0]["log_A_re"].shape
        for l in range(len(state.base)):
            state.add_extra(l, f"{kind}_re", _zeros(state, D, Hc))  # trainable
            state.add_extra(l, f"{kind}_im", _zeros(state, D, Hc))  # trainable
    return configure


def _configure_bitfit(state, budget, selection):
    for m in state.mask:
        m["beta"][:] = True  # the layer's only bias


def _configure_dora(state, budget, selection):
    _set_rank(state, "proj", budget["dora_rank"])  # LoRA factors of W (B starts at 0)
    for l, b in enumerate(state.base):
        m0 = torch.linalg.vector_norm(b["W"].double(), dim=1).cpu()  # (D,): W' = W at start
        state.add_extra(l, "dora_m", m0.expand(state.R, -1))  # (R, D), trainable


def _configure_additional(state, budget, selection):
    """``Ha`` extra complex modes per channel: ``A = −0.5 + iπj`` (j = 0..Ha−1, S4D-Lin-like), ``B = 1``,
    ``C = 0`` (the model starts as the frozen one); A and C of the new modes trainable, the original frozen."""
    D, Ha = state.base[0]["W"].shape[0], budget["add_states"]
    for l in range(len(state.base)):
        state.add_extra(l, "add_log_A_re", _zeros(state, D, Ha) + math.log(0.5))  # trainable
        state.add_extra(l, "add_A_im", (math.pi * torch.arange(Ha, dtype=torch.float64)).expand(state.R, D, Ha))
        state.add_extra(l, "add_C_re", _zeros(state, D, Ha))  # trainable
        state.add_extra(l, "add_C_im", _zeros(state, D, Ha))  # trainable


def _theory_all_trainable(t: Tensor):
    from theory.peft import MaskedParameter, Role

    return MaskedParameter(t, torch.full(t.shape[:1], int(Role.TRAINABLE), dtype=torch.int8))


def _theory_prefix(base, M, layers):
    from theory.peft import PrefixParameters

    return [PrefixParameters(base[0]["W"].shape[0], M) for _ in range(layers)]


def _theory_state(base, budget, selection):
    from theory.peft import StateParameters

    return [StateParameters(*b["log_A_re"].shape, complex_state=True) for b in base]  # h0 or h' per layer


def _theory_dora(base, budget, selection):
    from theory.peft import DoRALinear, LoRAConfig

    return [DoRALinear(b["W"].cpu(), b["beta"].cpu(), LoRAConfig(budget["dora_rank"])) for b in base]


def _theory_additional(base, budget, selection):
    D, Ha = base[0]["W"].shape[0], budget["add_states"]
    return [_theory_all_trainable(torch.zeros(D, Ha)) for _ in base for _ in range(4)]  # A (re, im), C (re, im)


BENCHMARK_METHODS: Dict[str, Method] = {
    "Prompt tuning": Method(
        "Prompt tuning", lambda c: [{"prompt_len": m} for m in c.prompt_lens], _configure_prompt,
        lambda base, b, sel: _theory_prefix(base, b["prompt_len"], 1)),
    "Prefix-tuning": Method(
        "Prefix-tuning", lambda c: [{"prefix_len": m} for m in c.prefix_lens], _configure_prefix,
        lambda base, b, sel: _theory_prefix(base, b["prefix_len"], len(base))),
    "Initial-state tuning": Method(
        "Initial-state tuning", lambda c: [{"initial_state": True}], _configure_state("h0"), _theory_state),
    "State-offset tuning": Method(
        "State-offset tuning", lambda c: [{"state_offset": True}], _configure_state("offset"), _theory_state),
    "BitFit": Method(
        "BitFit", lambda c: [{"bitfit": True}], _configure_bitfit,
        lambda base, b, sel: [_theory_all_trainable(x["beta"].cpu()) for x in base], own_extra=("beta",)),
    "DoRA (Proj)": Method(
        "DoRA (Proj)", lambda c: [{"dora_rank": r} for r in c.dora_ranks], _configure_dora, _theory_dora),
    "Additional-scan": Method(
        "Additional-scan", lambda c: [{"add_states": n} for n in c.additional_states], _configure_additional,
        _theory_additional),
}
"""Prompt tuning, prefix-tuning (Li & Liang, 2021), initial-state tuning (Proposition 1's counterpart),
state-offset tuning (Kang et al., 2025: ``y_t = C (h_t + h')``, their "state_tuning" variant with a full
(D, H) offset; for the LTI S4 it is a per-channel constant), BitFit (β), DoRA on W, Additional-scan."""
METHODS = {**{k: v for k, v in METHODS.items() if k != "Full"}, **BENCHMARK_METHODS, "Full": METHODS["Full"]}  # Full last
_BENCHMARK_LABELS = {"prompt_len": "M={}", "prefix_len": "M={}", "initial_state": "h0", "state_offset": "h'",
                     "bitfit": "beta", "dora_rank": "r={}", "add_states": "+{} modes"}

EXTRA_PARAMS = ("u", "log_dt", "beta")  # skip D, log Δ, projection bias: trained by --train-skip-dt-bias


def configure(cfg: Config, method: Method, state: sm.RunState, budget, selection) -> None:
    """The method's masks, plus the opt-in extras of ``cfg`` (u, log_dt, β trainable)."""
    method.configure(state, budget, selection)
    if cfg.train_skip_dt_bias and method.trains and method.name != "Full":
        for m in state.mask:
            for k in EXTRA_PARAMS:
                m[k][:] = True


def budget_label(budget: Dict) -> str:
    if not budget:
        return "none"
    if budget.get("all"):
        return "all"
    parts = []
    if "channels" in budget:
        parts.append(f"c={budget['channels']},s={budget['states']}")
    if "proj_rank" in budget:
        parts.append(f"r={budget['proj_rank']}")
    if "ssm_rank" in budget:
        parts.append(f"r_s4={budget['ssm_rank']}")
    for k, fmt in _BENCHMARK_LABELS.items():
        if k in budget:
            parts.append(fmt.format(budget[k]))
    return ",".join(parts)


# ---------------------------------------------------------------------------------- training
def resolve_device(cfg: Config) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def set_precision(precision: str, device: torch.device) -> None:
    """Matmul precision on CUDA (process-wide flags, read when a step is compiled): "fp32"; "tf32"
    (TF32 tensor cores); "fp16" (TF32, and the Toeplitz conv GEMMs with fp16 operands). No-op on CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision in ("tf32", "fp16")
        torch.backends.cudnn.allow_tf32 = precision in ("tf32", "fp16")
        sm.set_half_conv(precision == "fp16")


class Trainer:
    """Owns the (optionally compiled) per-run loss and AdamW step, shared by every method and group."""

    def __init__(self, cfg: Config, device: torch.device, log=print):
        self.cfg, self.device, self.log = cfg, device, log
        set_precision(cfg.precision, device)
        self.idx = sm.toeplitz_index(cfg.N, device)
        self._idx_extra: Dict[int, Tensor] = {}
        self.use_compile = (device.type == "cuda") if cfg.compile is None else cfg.compile
        if self.use_compile and any(m in BENCHMARK_METHODS for m in cfg.methods):
            # one graph per extra layout and prompt/prefix length M: room for all of them
            import torch._dynamo
            dcfg = torch._dynamo.config
            name = "recompile_limit" if hasattr(dcfg, "recompile_limit") else "cache_size_limit"
            setattr(dcfg, name, max(getattr(dcfg, name), 64))
        self._loss, self._step = sm.run_losses, sm.adamw_step
        if self.use_compile:
            try:
                self._loss = torch.compile(sm.run_losses, dynamic=False)
                self._step = torch.compile(sm.adamw_step, dynamic=False)
            except Exception as e:  # pragma: no cover - depends on the installation
                self.log(f"torch.compile unavailable ({e!r}); running eagerly")
                self.use_compile = False
        self.compile_failed = False

    def _call(self, which, *args):
        fn = self._loss if which == "loss" else self._step
        try:
            return fn(*args)
        except Exception as e:
            if not self.use_compile:
                raise
            self.log(f"torch.compile failed ({type(e).__name__}: {str(e)[:200]}); falling back to eager")
            self.use_compile, self.compile_failed = False, True
            self._loss, self._step = sm.run_losses, sm.adamw_step
            fn = self._loss if which == "loss" else self._step
            return fn(*args)

    def models(self, seed: int):
        """Frozen base layers and target layers of one seed (drawn on the CPU, moved to the device)."""
        cfg = self.cfg
        g = torch.Generator().manual_seed(seed)
        frozen = [sm.init_layer(cfg.D, n_modes(cfg, cfg.H), generator=g, device=self.device)
                  for _ in range(cfg.L_frozen)]
        gt = torch.Generator().manual_seed(10_000 + seed)
        target = [sm.init_layer(cfg.D, n_modes(cfg, cfg.H_star), generator=gt, device=self.device)
                  for _ in range(cfg.L_target)]
        return frozen, [{k: v[None] for k, v in p.items()} for p in target]

    def data(self, seed: int, stream: int):
        g = torch.Generator(device=self.device)
        g.manual_seed(1_000_003 * (stream + 1) + seed)
        return g

    def batch(self, g: torch.Generator, target) -> Tuple[Tensor, Tensor]:
        cfg = self.cfg
        x = torch.randint(0, 10, (cfg.D, cfg.N, cfg.batch), generator=g, device=self.device).to(torch.float32)
        with torch.no_grad():
            y = sm.deep_forward(target, x, self.idx)[0]  # (D, N, B)
        return x, y

    def train(self, state: sm.RunState, lrs: Sequence[float], iters: int, target, g: torch.Generator) -> Tensor:
        """Train the R runs of ``state`` for ``iters`` AdamW steps; returns losses (R, iters) on the host.

        No host synchronisation inside the loop: losses are written into a device buffer.
        """
        cfg = self.cfg
        params = state.parameters()
        m = [torch.zeros_like(p) for p in params]
        v = [torch.zeros_like(p) for p in params]
        step = torch.zeros((), device=self.device)
        lr = torch.tensor(list(lrs), device=self.device, dtype=torch.float32)
        losses = torch.empty(state.R, iters, device=self.device)
        for it in range(iters):
            x, y = self.batch(g, target)
            loss = self._call("loss", state.base, state.train, state.mask, state.lora, state.rank_mask, x, y,
                              *state.loss_args(self.idx, self.idx_for(state.prefix_length())))
            grads = torch.autograd.grad(loss.sum(), params)
            self._call("step", params, list(grads), m, v, step, lr, 0.9, 0.999, 1e-8, cfg.weight_decay)
            losses[:, it] = loss.detach()
        return losses.cpu()

    @torch.no_grad()
    def evaluate(self, layers, target, g, n_batches: int) -> float:
        tot = torch.zeros((), device=self.device)
        for _ in range(n_batches):
            x, y = self.batch(g, target)
            out = sm.deep_forward(layers, x, self.idx)
            tot += ((out - y) ** 2).mean()
        return float(tot / n_batches)

    def warmup_selection(self, frozen, target, seed: int):
        """Algorithm 1 step 1-2: full update of the SSM modules (or, ``--warmup-params all``, of every
        parameter) on a copy, then rank per layer. A list of SDTRanking, or a :class:`PrunedSelection`
        with ``--sdt-prune usable``."""
        cfg = self.cfg
        R = len(cfg.lrs)  # same run count as the sweep's groups, so the compiled graph is reused
        state = sm.RunState.create(frozen, R, *self.rank_max(), generator=torch.Generator().manual_seed(seed))
        for mk in state.mask:
            for k in (sm.SSM_PARAMS if cfg.warmup_params == "ssm" else sm.ALL_PARAMS):
                mk[k][:] = True
        if cfg.warmup_iters:
            self.train(state, [cfg.warmup_lr] * R, cfg.warmup_iters, target, self.data(seed, stream=1))
        eff = [{k: v[0].detach() for k, v in p.items()} for p in state.effective()]
        rk = [rank_dimensions(_A_bar(b), _A_bar(e), torch.complex(b["C_re"], b["C_im"]).cpu(), _B_bar(b), cfg.N,
                              cfg.magnitude_floor) for b, e in zip(frozen, eff)]
        if cfg.sdt_prune == "usable":
            return PrunedSelection(rk, cfg.usable_channels, cfg.usable_states)
        return rk

    def rank_max(self) -> Tuple[int, int]:
        cfg = self.cfg
        dora = list(cfg.dora_ranks) if "DoRA (Proj)" in cfg.methods else []  # else: the default runs' draws unchanged
        rp = max(list(cfg.lora_ranks) + [_parse_sdt(s)["proj_rank"] for s in cfg.sdt_lora_budgets] + dora + [1])
        return rp, max(list(cfg.s4_lora_ranks) + [1])

    def idx_for(self, M: int) -> Optional[Tensor]:
        """Toeplitz index for ``N + M`` positions (prompt / prefix methods); None for M = 0."""
        if not M:
            return None
        if M not in self._idx_extra:
            self._idx_extra[M] = sm.toeplitz_index(self.cfg.N + M, self.device)
        return self._idx_extra[M]


def _A_bar(p) -> Tensor:
    dt = torch.exp(p["log_dt"].double().cpu())[:, None]
    return torch.exp(dt * torch.complex(-torch.exp(p["log_A_re"].double().cpu()), p["A_im"].double().cpu()))


def _B_bar(p) -> Tensor:
    from theory.ssm import discretize_zoh

    A = torch.complex(-torch.exp(p["log_A_re"].double().cpu()), p["A_im"].double().cpu())
    B = torch.complex(p["B_re"].double().cpu(), p["B_im"].double().cpu())
    return discretize_zoh(A, B, torch.exp(p["log_dt"].double().cpu()))[1]


def theory_trainable_count(method: Method, base, budget, selection, cfg: Optional[Config] = None) -> int:
    from theory.peft import MaskedParameter, Role, count_trainable

    mods = method.theory_modules(base, budget, selection)
    if cfg is not None and cfg.train_skip_dt_bias and method.trains and method.name != "Full":
        mods += [MaskedParameter(b[k].cpu(), torch.full(b[k].shape, int(Role.TRAINABLE), dtype=torch.int8))
                 for b in base for k in EXTRA_PARAMS if k not in method.own_extra]
    return sum(count_trainable(mod) for mod in mods)


# -------------------------------------------------------------------------------------- sweep
def _key_config(cfg: Config) -> Dict:
    return _key_fields(dataclasses.asdict(cfg))


def run_groups(cfg: Config) -> List[Tuple[int, str, Dict]]:
    """(seed, method, budget) groups in execution order: seed-major, so a cut-short sweep covers every point."""
    return [(s, m, b) for s in cfg.seeds for m in cfg.methods for b in METHODS[m].budgets(cfg)]


def paths(cfg: Config) -> Dict[str, Path]:
    """Results and figure paths; a sweep with any of :data:`BENCHMARK_METHODS` (e.g. ``--methods all``)
    writes its own pair, ``peft_methods_s4_<preset>.json`` / ``.png``."""
    out = Path(cfg.out)
    if any(m in BENCHMARK_METHODS for m in cfg.methods):
        return {"json": out / f"peft_methods_s4_{cfg.preset}.json", "fig": out / f"peft_methods_s4_{cfg.preset}"}
    return {"json": out / f"s4_regression_{cfg.preset}.json", "fig": out / f"s4_mse_vs_params_{cfg.preset}"}


def lr_policy(cfg: Config) -> LrPolicy:
    """The config's rule for growing the learning-rate grid at its edges (``synthetic.sweep.LrPolicy``)."""
    return LrPolicy.from_config(cfg)


class S4Experiment:
    """The deep-S4 experiment as a :class:`synthetic.runner.Experiment`: its run groups, run keys and training.

    A train call takes the runs of one (seed, method, budget) group (at most ``len(cfg.lrs)`` runs; with
    torch.compile a short call is padded to that size so the compiled graph is reused). As for base groups,
    a run's LoRA initialisation beyond the first layer depends on its call's size and position
    (``RunState.create`` draws all R runs from one generator).
    """

    name = "s4"

    def __init__(self, cfg: Config, log=print):
        self.cfg, self.log = cfg, log
        self.preset, self.seeds, self.base_lrs = cfg.preset, tuple(cfg.seeds), tuple(cfg.lrs)
        self.lr_policy = lr_policy(cfg)
        self.results_path = paths(cfg)["json"]
        self.kc = _key_config(cfg)
        self.device = resolve_device(cfg)
        self.max_runs_per_call = len(cfg.lrs)
        self._trainer: Optional[Trainer] = None
        self._cache: Dict[int, Dict] = {}
        self.total_params = sm.count_layer_params(cfg.D, n_modes(cfg, cfg.H)) * cfg.L_frozen

    @property
    def trainer(self) -> "Trainer":
        if self._trainer is None:
            self._trainer = Trainer(self.cfg, self.device, self.log)
        return self._trainer

    @property
    def pad_calls(self) -> bool:
        return self.trainer.use_compile

    def describe(self) -> str:
        t, cfg = self.trainer, self.cfg
        return (f"device {environment()['device']}, compile={t.use_compile}, "
                f"precision={cfg.precision if self.device.type == 'cuda' else 'fp32'}; "
                f"frozen model {self.total_params} parameters")

    def groups(self) -> List[Group]:
        """(seed, method, budget) groups in execution order: seed-major, so a cut-short sweep covers every point."""
        cfg = self.cfg
        return [Group(s, m, b, tuple(cfg.lrs) if METHODS[m].trains else (None,), grows=METHODS[m].trains)
                for s, m, b in run_groups(cfg)]

    def key(self, seed, method, budget, lr) -> str:
        return run_key({"cfg": self.kc, "method": method, "budget": budget, "lr": lr, "seed": seed})

    def train(self, runs: Sequence[Run]) -> List[Dict]:
        """Train the runs of one group together (one RunState of R = len(runs)); one record per run."""
        cfg, trainer = self.cfg, self.trainer
        seed, mname, budget = runs[0].seed, runs[0].method, runs[0].budget
        lrs = [r.lr for r in runs]
        method = METHODS[mname]
        env = environment()
        if seed not in self._cache:
            self._cache[seed] = dict(zip(("frozen", "target"), trainer.models(seed)))
        c = self._cache[seed]
        sel = None
        if method.needs_selection:
            if "selection" not in c:
                tw = time.monotonic()
                c["selection"] = trainer.warmup_selection(c["frozen"], c["target"], seed)
                c["warmup_s"] = time.monotonic() - tw
            sel = c["selection"]
        tg = time.monotonic()
        state = sm.RunState.create(c["frozen"], len(lrs), *trainer.rank_max(),
                                   generator=torch.Generator().manual_seed(seed))
        configure(cfg, method, state, budget, sel)
        counts = state.trainable_count()
        theory_count = theory_trainable_count(method, c["frozen"], budget, sel, cfg)
        if method.trains:
            curves = trainer.train(state, lrs, cfg.iters, c["target"], trainer.data(seed, stream=0)).tolist()
        else:
            mse = trainer.evaluate([{k: v[None] for k, v in p.items()} for p in c["frozen"]], c["target"],
                                   trainer.data(seed, stream=0), cfg.frozen_eval_batches)
            curves = [[mse]]
        wall = time.monotonic() - tg
        recs = []
        for i, lr in enumerate(lrs):
            curve = curves[i]
            finite = all(math.isfinite(v) for v in curve)
            tail = curve[-max(1, len(curve) // 50):]
            recs.append({
                "method": mname, "budget": budget, "budget_label": budget_label(budget),
                "lr": lr, "seed": seed, "model_seed": seed, "status": "ok" if finite else "diverged",
                "best_mse": min(curve) if finite else None, "final_mse": sum(tail) / len(tail) if finite else None,
                "best_mse_before_divergence": min((v for v in curve if math.isfinite(v)), default=None),
                "trainable": counts[i], "trainable_theory": theory_count, "frozen_params": self.total_params,
                "trainable_pct": 100.0 * counts[i] / self.total_params, "iters": cfg.iters if method.trains else 0,
                "loss_curve": subsample_curve(curve, cfg.curve_points), "wall_s": wall / len(lrs),
                "group_wall_s": wall, "runs_in_group": len(lrs),
                "warmup_s": c.get("warmup_s") if method.needs_selection else None,
                "device": env["device"], "torch": env["torch"], "commit": env["commit"], "date": utc_now(),
                "precision": cfg.precision if self.device.type == "cuda" else "fp32",
                "compiled": trainer.use_compile, "config": dataclasses.asdict(cfg),
            })
        return recs


def sweep(cfg: Config, log=print) -> ResultsFile:
    """Run every (seed, method, budget) group not yet in the results file, then grow the lr grid where a
    best lr is at an edge (:func:`synthetic.runner.run_sweep` with :class:`S4Experiment`)."""
    exp = S4Experiment(cfg, log)
    st = run_sweep(exp, time_budget=cfg.time_budget, log=log)
    return ResultsFile(st.results)


# ------------------------------------------------------------------------------- theory point
def theory_point(cfg: Config, seed: int = 0) -> Optional[Dict]:
    """Theorem 1's construction in the linear-activation variant: its budget (trainable %) and MSE.

    ``theory.theorem1.construct_theorem1`` works on real diagonal SSMs (not the conjugate-pair form
    the experiment trains), linear activations and a target without residual; so the point is
    computed on a random real-diagonal instance with the experiment's sizes (L = L_frozen,
    L* = L_target, D, H, H*), float64, skip inside, with integer inputs 0-9 of the experiment's
    length. Returns None if the theory module is unavailable or refuses the sizes.
    """
    try:
        from theory.deep import deep_forward
        from theory.theorem1 import construct_theorem1, random_instance
    except ImportError:
        return None
    g = torch.Generator().manual_seed(seed)
    try:
        frozen, target = random_instance(cfg.L_frozen, cfg.L_target, cfg.D, cfg.H, cfg.H_star, kind="s4",
                                         skip="inside", generator=g)
        update = construct_theorem1(frozen, target)
    except ValueError:
        return None
    x = torch.randint(0, 10, (2, cfg.D, cfg.N), generator=g).to(torch.float64)  # (B, D, N)
    mse = float(((deep_forward(update.model, x) - deep_forward(target, x)) ** 2).mean())
    b = update.budget
    return {"trainable_pct": b.percent, "mse": mse, "trainable": b.total_trainable, "model_params": b.model_params,
            "label": f"Theorem 1 construction (linear, real diag.): {b.percent:.1f}%, MSE {mse:.1e}"}


def plot(cfg: Config) -> List[str]:
    p = paths(cfg)
    recs = _current_records(cfg, ResultsFile(p["json"]).load())
    if not recs:
        raise SystemExit(f"{p['json']}: no results to plot")
    rows = best_of_grid(recs, group_keys=("method", "budget_label"), lr_policy=lr_policy(cfg))
    extra, note = [], ""
    tp = theory_point(cfg)
    if tp is not None:
        extra.append({"x": tp["trainable_pct"], "y": tp["mse"], "label": tp.get("label", "Theorem 1 (linear), exact")})
    else:
        note = "Theorem 1 point (linear variant): not drawn, theory.theorem1 unavailable or refused these sizes."
    c0 = recs[0]["config"]
    title = (f"deep S4 regression ({cfg.preset}): frozen {c0['L_frozen']}L H={c0['H']}, target {c0['L_target']}L "
             f"H*={c0['H_star']}, D={c0['D']}\nN={c0['N']}, batch {c0['batch']}, {c0['iters']} it, "
             f"best lr of {_lr_grid_text(recs, c0)}, ReLU, skip inside")
    opts = [f"{k}={c0[k]}" for k in _OPT_IN_DEFAULTS if c0.get(k, _OPT_IN_DEFAULTS[k]) != _OPT_IN_DEFAULTS[k]]
    if opts:
        title += "\n" + ", ".join(opts)
    return plot_mse_vs_params(rows, p["fig"], method_order=list(METHODS), title=title, extra_points=extra, note=note,
                              hline_methods=("Frozen",))


def _lr_grid_text(recs: List[Dict], c0: Dict) -> str:
    """The lrs tried, e.g. '0.004-0.256 (base 0.004,0.016,0.064, ×4 at edges)'."""
    tried = sorted({r["lr"] for r in recs if r.get("lr") is not None})
    base = ",".join(f"{x:g}" for x in c0["lrs"])
    if not tried or tried == sorted(c0["lrs"]):
        return f"lrs {base}"
    return f"lrs {tried[0]:g}-{tried[-1]:g} (base {base}, ×{c0.get('lr_extend_factor', 4.0):g} at edges)"


def _fingerprint(config: Dict) -> str:
    return run_key(_key_fields(config))


def _current_records(cfg: Config, recs: List[Dict]) -> List[Dict]:
    """Records of one configuration: the current one if the file has it, else the last record's.

    A results file can hold runs of several configurations (e.g. a rerun with another --batch);
    mixing them in one best-of-grid would be wrong, so only one is plotted and summarised.
    Only run records count (``kind: "sweep"`` records hold a sweep's wall time).
    """
    recs = [r for r in recs if r.get("kind", "run") == "run"]
    if not recs:
        return recs
    want = _fingerprint(dataclasses.asdict(cfg))
    fps = [_fingerprint(r.get("config", {})) for r in recs]
    if want not in fps:
        want = fps[-1]
    kept = [r for r, f in zip(recs, fps) if f == want]
    if len(kept) < len(recs):
        print(f"note: {len(recs) - len(kept)} records of other configurations in the file are not shown")
    return kept


def summary_table(cfg: Config) -> str:
    rows = best_of_grid(_current_records(cfg, ResultsFile(paths(cfg)["json"]).load()),
                        group_keys=("method", "budget_label"), lr_policy=lr_policy(cfg))
    lines = ["| method | budget | trainable % | best MSE (mean ± std over seeds) | lr | lr at grid edge | seeds "
             "| diverged |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    order = {m: i for i, m in enumerate(METHODS)}
    for r in sorted(rows, key=lambda r: (order.get(r["method"], 99), r["trainable_pct"] or 0)):
        mse = "n/a" if r["mean"] is None else f"{r['mean']:.4g} ± {r['std']:.2g}"
        lr = "-" if r["lr"] is None else f"{r['lr']:g}"
        lines.append(f"| {r['method']} | {r['budget_label']} | {r['trainable_pct']:.1f} | {mse} | {lr} | "
                     f"{edge_label(r) or '-'} | {r['n_seeds']} | {r['n_diverged']} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from synthetic import s4_official  # the official code's conventions: their own config and module

    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--preset", default="default")
    if pre.parse_known_args(argv)[0].preset in s4_official.PRESETS:
        return s4_official.main(argv)
    cfg = parse_config(argv)
    shard = parse_shard(cfg.shard)
    if cfg.dry_run:
        print_plan(S4Experiment(cfg), shard)
        return 0
    if cfg.merge:
        merge_shards(paths(cfg)["json"])
    if cfg.plot_only and not ResultsFile(paths(cfg)["json"]).runs():
        build_parser().error(f"--plot-only: no results in {paths(cfg)['json']} (run without --plot-only first, "
                             "or pass the --out and --preset of an earlier run)")
    if not (cfg.plot_only or cfg.merge):
        run_sweep(S4Experiment(cfg), time_budget=cfg.time_budget, shard=shard)
        if shard:
            return 0
    for path in plot(cfg):
        print("wrote", path)
    print(summary_table(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
