"""The official code's deep-S4 experiment as a preset (Galim et al., ICML 2025, Sec. 6.1, Figure 2).

Conventions of furiosa-ai/ssm-peft ``S4/run_s4.py`` and ``S4/load_models/load_s4.py`` (commit 96f41d9),
each a named option of :class:`OfficialConfig` (facts: ``notes/s4_official_differences.md``):

- **Initialisation** (:func:`official_models`): from ``torch.manual_seed(seed)`` the *target* model
  is drawn first, then the *frozen* one; per layer, in this order: the skip ``u = D ~ randn(d_model)``,
  ``log_dt ~ U(log 1e-3, log 1e-1)``, ``C = randn(d_model, N, cfloat)``, ``log_A_re = log U(0, 1)``,
  ``A_im = π·randint(0, N)``, then ``nn.Linear``'s default init of ``W`` (kaiming-uniform, a = √5)
  and ``β``. ``N = d_state`` counts *complex* modes; ``B = 1`` is not a parameter.
- **Trainable sets** (:data:`METHODS`, the official ``get_optimizer``): every method trains the skip
  ``u`` (``D_method='full'``, Frozen included); the bias ``β`` whenever the projection is not frozen;
  ``log_dt`` whenever the SSM is not frozen. "LoRA (S4+Proj)" is what ``run_s4.py`` actually runs
  (``ssm_method='lora'`` never creates the SSM adapter): LoRA on ``W`` plus ``log_dt``; our LoRA on
  ``A`` and ``C`` is the separate method "LoRA (A&C+Proj)".
- **SDT** (``ssm_method='ours'``, ``our_mode='hard'``, ``ssm_warmup_mode='magnitude'``,
  :func:`official_selection`): a warm-up on a copy (all parameters, ``ssm_warmup_method='full'``),
  "usable" channels/states by the magnitude ``‖C (exp(ΔA) − 1)/A · exp(ΔA)^{N/2}‖`` of the warmed-up
  layer, "updated" channels/states by the change score exactly as the code computes it
  (``sdt_score='official'``: ``A`` real in the magnitude, the real part's change taken between
  ``−exp(log_A_re)`` and ``+exp(log_A_re_frozen)``) or corrected (``sdt_score='corrected'``);
  ``C`` zeroed outside the usable dimensions; zero-initialised deltas on ``A, C`` of the updated
  entries and (``lp_method='ours'``) on the ``W`` columns of the updated channels.
- **LoRA factors** as the official adapter: ``W + W_up W_down``, ``W_down`` (r, d_model) with
  ``nn.Linear``'s default init, ``W_up`` zeros, no scaling.
- **Optimizer**: ``torch.optim.AdamW`` defaults on one flat list (weight decay 0.01 on everything,
  on the *deltas* where the official code trains a delta: :func:`adamw_step_anchored`).
- **Trainable %**: parameters handed to the optimizer (C's real and imaginary parts both counted)
  over the frozen model's count (33,536 at the paper's size; :func:`official_param_count`).
- ``best_mse`` = minimum training-batch loss (the official "Best Loss"), ``eval_mse`` = MSE on
  ``eval_batches`` fresh batches after training.
- **Learning rates**: the grid ``lrs`` per (method, budget), grown past an edge where the best lr (mean
  ``best_mse`` over seeds) sits at it: ×/÷ ``lr_extend_factor`` within ``[lr_min, lr_max]``, in rounds
  (:func:`sweep`, :func:`synthetic.sweep.lr_extension_plan`); none of the three is in the run keys.
- ``data='exact'``: batches as the official ``generate_input`` (``randint(0, 10, (B, d_model, L))``
  on the CPU generator; training restarts it at ``seed``; the SDT warm-up continues it after the
  initialisation). ``data='device'`` (the GPU sweep) draws on the device.

The fast path is :class:`synthetic.s4_model.RunState` (R runs per group share one batch, masks,
LoRA factors, one compiled graph); ``tests/test_s4_official.py`` holds it to the official code's
CPU test vectors run for run.

Usage::

    python -m synthetic.s4_regression --preset official        # = python -m synthetic.s4_official
    python -m synthetic.s4_official --preset official-tiny --out /tmp/x   # seconds, any device
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from synthetic import s4_model as sm
from synthetic.cli import check_shard_options, check_sweep_options, dataclass_parser, parse_dataclass
from synthetic import runner
from synthetic.runner import Group as RunGroup, Run, run_sweep
from synthetic.s4_regression import lr_policy, resolve_device, set_precision
from synthetic.sweep import ResultsFile, best_of_grid, edge_label, environment, run_key, subsample_curve, utc_now

Tensor = torch.Tensor

OFFICIAL_SEED = 123  # run_s4.py: self.random_seed; further seeds are 124, 125, ...
OFFICIAL_PARAMS = ("u", "log_dt", "C_re", "C_im", "log_A_re", "A_im", "W", "beta")  # B = 1 is no parameter
AC_PARAMS = sm.SSM_LORA_PARAMS  # log_A_re, A_im, C_re, C_im: what SDT's deltas touch


# ------------------------------------------------------------------------------------- config
@dataclass
class OfficialConfig:
    """Every field is a CLI option (``--field-name``); tuples are comma-separated lists."""

    preset: str = "official"
    d_model: int = 64
    frozen_layers: int = 4
    frozen_d_state: int = 16  # complex modes per channel (official d_state)
    target_layers: int = 1
    target_d_state: int = 8
    seq_len: int = 200
    batch: int = 4000
    iters: int = 500  # official n_epochs (one batch each)
    weight_decay: float = 0.01  # torch.optim.AdamW's default; the official code passes only lr
    lrs: Tuple[float, ...] = (2e-3, 5e-3, 1e-2, 2e-2)
    lr_extend_factor: float = 4.0  # a best lr at the grid's edge adds edge×factor (or /factor); 0 = off
    lr_min: float = 1e-6  # bounds of the extension (sweep.LrPolicy)
    lr_max: float = 1.0
    seeds: Tuple[int, ...] = (123, 124, 125, 126, 127)
    methods: Tuple[str, ...] = ("Frozen", "LoRA (Proj)", "LoRA (S4+Proj)", "LoRA (A&C+Proj)", "SDT",
                                "SDT + LoRA", "Full")
    lora_ranks: Tuple[int, ...] = (4, 8, 16)  # LoRA (Proj)
    s4proj_ranks: Tuple[int, ...] = (4, 16)  # official LoRA (S4+Proj): W rank
    ac_lora_budgets: Tuple[str, ...] = ("4:1", "16:4")  # LoRA (A&C+Proj): W rank : A,C rank
    sdt_budgets: Tuple[str, ...] = ("8x4/16x8", "16x8/16x8", "32x8/32x8", "32x16/64x16")  # update/usable
    sdt_lora_budgets: Tuple[str, ...] = ("16x8/16x8:8",)  # update/usable : W rank
    warmup_iters: int = 20  # official warmup_epochs
    warmup_lr: float = 1e-2  # official warmup_lr
    warmup_params: str = "all"  # official ssm_warmup_method: "all" (='full') or "ssm" (C, A, log_dt, u)
    sdt_score: str = "official"  # "official" (as run_s4.py computes it) or "corrected"
    data: str = "device"  # "device" (drawn on the device) or "exact" (official generate_input, CPU)
    eval_batches: int = 10
    conv: str = "auto"  # causal convolution: "toeplitz" (GPU), "fft" (CPU), "auto" = by device
    curve_points: int = 50
    device: str = "auto"
    precision: str = "fp32"  # matmul precision on CUDA: "fp32" (as the official code) or "tf32"
    compile: Optional[bool] = None  # None: on for CUDA, off for CPU
    time_budget: float = 0.0  # seconds; stop starting new groups after this (0 = no limit)
    out: str = "figures"
    plot_only: bool = False
    dry_run: bool = False  # print the plan (runs done / to do per method, estimated time) and exit
    shard: str = ""  # "i/n": run only base-grid groups j with j % n == i, into this shard's own results file
    merge: bool = False  # fold the shard files into the main results file (atomically), then summarise


PRESETS: Dict[str, Dict] = {
    "official": {},
    "official-tiny": dict(d_model=6, frozen_layers=2, frozen_d_state=4, target_d_state=2, seq_len=12, batch=8,
                          iters=6, lrs=(5e-3, 2e-2), seeds=(123, 124), lora_ranks=(1, 2), s4proj_ranks=(2,),
                          ac_lora_budgets=("1:1",), sdt_budgets=("2x2/4x3", "3x3/3x3"),
                          sdt_lora_budgets=("2x2/4x3:1",), warmup_iters=3, eval_batches=2, curve_points=5),
}

_NOT_IN_KEY = {"conv", "preset", "lrs", "lr_extend_factor", "lr_min", "lr_max", "seeds", "methods", "lora_ranks", "s4proj_ranks", "ac_lora_budgets", "sdt_budgets",
               "sdt_lora_budgets", "device", "compile", "time_budget", "out", "plot_only", "dry_run", "shard", "merge",
               "curve_points"}


def _parse_sdt(s: str) -> Dict[str, int]:
    """'CxS/UCxUS' or 'CxS/UCxUS:R' -> update channels/states, usable channels/states (, W rank)."""
    try:
        body, _, r = s.partition(":")
        upd, usable = body.split("/")
        c, st = (int(v) for v in upd.split("x"))
        uc, us = (int(v) for v in usable.split("x"))
        out = {"channels": c, "states": st, "usable_channels": uc, "usable_states": us}
        if r:
            out["proj_rank"] = int(r)
        return out
    except ValueError:
        raise ValueError(f"expected 'CxS/UCxUS' or 'CxS/UCxUS:RANK', got {s!r}") from None


def _parse_ac(s: str) -> Dict[str, int]:
    try:
        r, s4 = (int(v) for v in s.split(":"))
        return {"proj_rank": r, "ssm_rank": s4}
    except ValueError:
        raise ValueError(f"expected 'W_RANK:AC_RANK', got {s!r}") from None


def validate(cfg: OfficialConfig) -> OfficialConfig:
    """Raise ValueError naming the offending option and the rule."""
    def opt(name):
        return "--" + name.replace("_", "-")

    for name in ("d_model", "frozen_layers", "frozen_d_state", "target_layers", "target_d_state", "seq_len", "batch",
                 "iters", "eval_batches", "curve_points"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{opt(name)}: must be an integer >= 1, got {v!r}")
    if cfg.preset not in PRESETS:
        raise ValueError(f"--preset: must be one of {sorted(PRESETS)}, got {cfg.preset!r}")
    if cfg.warmup_iters < 0:
        raise ValueError(f"--warmup-iters: must be >= 0, got {cfg.warmup_iters}")
    choices = {"warmup_params": WARMUP_PARAMS, "sdt_score": SCORES, "data": ("device", "exact"),
               "precision": ("fp32", "tf32"), "conv": ("auto", "toeplitz", "fft")}
    for name, ok in choices.items():
        if getattr(cfg, name) not in ok:
            raise ValueError(f"{opt(name)}: must be one of {sorted(ok)}, got {getattr(cfg, name)!r}")
    check_sweep_options(cfg, METHODS)
    check_shard_options(cfg)
    D, N = cfg.d_model, cfg.frozen_d_state
    for name in ("lora_ranks", "s4proj_ranks"):
        for r in getattr(cfg, name):
            if not 1 <= r <= D:
                raise ValueError(f"{opt(name)}: each rank must be in [1, d_model={D}], got {r}")
    for s in cfg.ac_lora_budgets:
        b = _parse_ac(s) if ":" in s else None
        if b is None or not (1 <= b["proj_rank"] <= D and 1 <= b["ssm_rank"] <= min(D, N)):
            raise ValueError(f"--ac-lora-budgets: {s!r} needs 'W_RANK:AC_RANK' with 1 <= W_RANK <= d_model={D} "
                             f"and 1 <= AC_RANK <= min(d_model, frozen_d_state)={min(D, N)}")
    for name in ("sdt_budgets", "sdt_lora_budgets"):
        for s in getattr(cfg, name):
            try:
                b = _parse_sdt(s)
            except ValueError as e:
                raise ValueError(f"{opt(name)}: {e}") from None
            if not (1 <= b["channels"] <= b["usable_channels"] <= D and 1 <= b["states"] <= b["usable_states"] <= N):
                raise ValueError(f"{opt(name)}: {s!r} needs 1 <= channels <= usable channels <= d_model={D} and "
                                 f"1 <= states <= usable states <= frozen_d_state={N}")
            if name == "sdt_lora_budgets" and not 1 <= b.get("proj_rank", 0) <= D:
                raise ValueError(f"{opt(name)}: {s!r} needs a W rank in [1, d_model={D}] after ':'")
    if cfg.time_budget < 0:
        raise ValueError(f"--time-budget: must be >= 0, got {cfg.time_budget}")
    return cfg


# ------------------------------------------------------------------------------ initialisation
def official_layer(d_model: int, d_state: int, g: torch.Generator) -> Dict[str, Tensor]:
    """One official S4D layer ("theory" mode), drawn from ``g`` in the official order (float32, CPU).

    Returns the :mod:`synthetic.s4_model` layout: log_A_re, A_im, B_re (= 1), B_im (= 0), C_re, C_im:
    (d_model, d_state); log_dt, u, beta: (d_model,); W: (d_model, d_model).
    """
    H, N = d_model, d_state
    u = torch.randn(H, generator=g)  # the skip D  (H,)
    log_dt = torch.rand(H, generator=g) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)  # (H,)
    C = torch.randn(H, N, dtype=torch.cfloat, generator=g)  # (H, N) complex, each part N(0, 1/2)
    # log in float64, rounded: the correctly rounded float32 log, as in the official weights
    # (models_seed123.npz); torch's vectorised float32 log is 1 ulp off for some inputs on some CPUs.
    log_A_re = torch.log(torch.rand(H, N, generator=g).double()).float()  # (H, N)
    A_im = math.pi * torch.randint(0, N, (H, N), generator=g)  # (H, N) float32
    W = torch.empty(H, H)
    torch.nn.init.kaiming_uniform_(W, a=math.sqrt(5), generator=g)  # nn.Linear.reset_parameters
    beta = torch.empty(H).uniform_(-1 / math.sqrt(H), 1 / math.sqrt(H), generator=g)
    return dict(log_A_re=log_A_re, A_im=A_im, B_re=torch.ones(H, N), B_im=torch.zeros(H, N),
                C_re=C.real.contiguous(), C_im=C.imag.contiguous(), log_dt=log_dt, u=u, W=W, beta=beta)


def official_models(cfg: OfficialConfig, seed: int) -> Tuple[List[Dict], List[Dict], torch.Generator]:
    """(target layers, frozen layers, the generator after both) as ``simulation_s4d.__init__`` draws them."""
    g = torch.Generator().manual_seed(seed)
    target = [official_layer(cfg.d_model, cfg.target_d_state, g) for _ in range(cfg.target_layers)]
    frozen = [official_layer(cfg.d_model, cfg.frozen_d_state, g) for _ in range(cfg.frozen_layers)]
    return target, frozen, g


def official_param_count(d_model: int, d_state: int, n_layers: int) -> int:
    """Parameters of the official model (the trainable-% denominator): no B."""
    shapes = sm.param_shapes(d_model, d_state)
    return n_layers * sum(math.prod(shapes[k]) for k in OFFICIAL_PARAMS)


def official_lora_down(d_model: int, rank: int, g: torch.Generator) -> Tensor:
    """The official LoRA adapter's factors for one layer: returns ``W_down`` (rank, d_model).

    ``nn.Sequential(nn.Linear(d_model, r), nn.Linear(r, d_model))`` draws both weights (kaiming
    uniform) from ``g``; the second (``W_up``) is then set to zero, so only its draws matter.
    """
    down = torch.empty(rank, d_model)
    torch.nn.init.kaiming_uniform_(down, a=math.sqrt(5), generator=g)  # (r, d_model)
    torch.nn.init.kaiming_uniform_(torch.empty(d_model, rank), a=math.sqrt(5), generator=g)  # W_up, zeroed
    return down


# --------------------------------------------------------------------------------- SDT selection
SCORES = ("official", "corrected")


@dataclass(frozen=True)
class OfficialSelection:
    """Per layer: usable/updated channels (best first) and, per channel, usable/updated states."""

    usable_channels: List[List[int]]
    update_channels: List[List[int]]
    usable_states: List[Dict[int, List[int]]]
    update_states: List[Dict[int, List[int]]]


def _scores(warm: Dict[str, Tensor], frozen: Dict[str, Tensor], index, seq_len: int, score: str
            ) -> Tuple[Tensor, Tensor]:
    """Magnitude ``C (exp(ΔA) − 1)/A · exp(ΔA)^{L//2}`` and change ``A − A_frozen`` (..., 2) of the rows ``index``.

    ``index``: a list of channels (rows (|index|, N)) or one channel (rows (N,)), as the official
    ``select_dims_hard`` is called. ``score='official'`` reproduces its arithmetic: A taken real
    (``Re A + Im A``) in the magnitude, and the change of the real part taken between ``−exp``
    (warmed) and ``+exp`` (frozen). ``'corrected'``: complex A, same sign on both sides.
    """
    A_re = -torch.exp(warm["log_A_re"])[index]
    A_im = warm["A_im"][index]
    C = torch.complex(warm["C_re"], warm["C_im"])[index]
    A = A_re + A_im if score == "official" else torch.complex(A_re, A_im)
    dt = torch.exp(warm["log_dt"][index])
    dtA = A * dt.unsqueeze(-1)
    mag = C * (torch.exp(dtA) - 1.0) / A * torch.exp(dtA) ** (seq_len // 2)
    sign = 1.0 if score == "official" else -1.0
    A_frozen = torch.stack((sign * torch.exp(frozen["log_A_re"])[index], frozen["A_im"][index]), dim=-1)
    change = torch.stack((A_re, A_im), dim=-1) - A_frozen
    return mag, change


def _top(candidates: Sequence[int], key: Callable[[int], float], k: int) -> List[int]:
    """The ``k`` candidates with the largest key, ties in candidate order (Python's stable sort)."""
    return sorted(candidates, key=key, reverse=True)[:k]


def select_layer(warm: Dict[str, Tensor], frozen: Dict[str, Tensor], usable_channels: int, update_channels: int,
                 usable_states: int, update_states: int, seq_len: int, score: str = "official"):
    """The official ``get_ssm_our_adapter_hard_magnitude`` for one layer (float32 CPU tensors, no run axis).

    Channels: usable = top ``usable_channels`` by ``‖mag[d, :]‖``; updated = top ``update_channels``
    usable ones by ``‖change[d]‖``. States of a usable channel: top ``usable_states`` by ``|mag|``;
    of an updated channel: its top ``update_states`` usable states by ``‖change[d, i]‖``.
    Returns (usable_channels, update_channels, usable_states {d: [i]}, update_states {d: [i]}).
    """
    D, N = warm["log_A_re"].shape
    mag, change = _scores(warm, frozen, list(range(D)), seq_len, score)
    uc = _top(range(D), lambda i: float(torch.norm(mag[i])), usable_channels)
    upc = _top(uc, lambda i: float(torch.norm(change[i])), update_channels)
    us, ups = {}, {}
    for c in uc:
        m, ch = _scores(warm, frozen, c, seq_len, score)
        us[c] = _top(range(N), lambda i: float(torch.norm(m[i])), usable_states)
        if c in upc:
            ups[c] = _top(us[c], lambda i: float(torch.norm(ch[i])), update_states)
    return uc, upc, us, {c: ups[c] for c in upc}


def official_selection(warm_layers, frozen_layers, budget: Dict, seq_len: int, score: str) -> OfficialSelection:
    rows = [select_layer({k: v.detach().float().cpu() for k, v in w.items()},
                         {k: v.detach().float().cpu() for k, v in f.items()}, budget["usable_channels"],
                         budget["channels"], budget["usable_states"], budget["states"], seq_len, score)
            for w, f in zip(warm_layers, frozen_layers)]
    return OfficialSelection(*(list(t) for t in zip(*rows)))


# ------------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class OfficialMethod:
    """A method as the official ``get_optimizer`` sees it: what the projection and the SSM do.

    lp: 'freeze' | 'lora' | 'ours' (W-column deltas of the updated channels) | 'full'.
    ssm: 'freeze' | 'lora' (log_dt only, as run_s4.py runs it) | 'ours' (SDT deltas) | 'full'.
    ac_lora: our LoRA on log_A_re, A_im, C_re, C_im (not in run_s4.py). budgets(cfg) -> list of dicts.
    """

    name: str
    lp: str
    ssm: str
    budgets: Callable[[OfficialConfig], List[Dict]]
    ac_lora: bool = False

    @property
    def needs_selection(self) -> bool:
        return self.ssm == "ours"


METHODS: Dict[str, OfficialMethod] = {m.name: m for m in (
    OfficialMethod("Frozen", "freeze", "freeze", lambda c: [{}]),
    OfficialMethod("LoRA (Proj)", "lora", "freeze", lambda c: [{"proj_rank": r} for r in c.lora_ranks]),
    OfficialMethod("LoRA (S4+Proj)", "lora", "lora", lambda c: [{"proj_rank": r} for r in c.s4proj_ranks]),
    OfficialMethod("LoRA (A&C+Proj)", "lora", "lora", lambda c: [_parse_ac(s) for s in c.ac_lora_budgets],
                   ac_lora=True),
    OfficialMethod("SDT", "ours", "ours", lambda c: [_parse_sdt(s) for s in c.sdt_budgets]),
    OfficialMethod("SDT + LoRA", "lora", "ours", lambda c: [_parse_sdt(s) for s in c.sdt_lora_budgets]),
    OfficialMethod("Full", "full", "full", lambda c: [{"all": True}]),
)}

WARMUP_PARAMS = {"all": OFFICIAL_PARAMS, "ssm": ("u", "log_dt", "C_re", "C_im", "log_A_re", "A_im")}


def budget_label(budget: Dict) -> str:
    if not budget:
        return "none"
    if budget.get("all"):
        return "all"
    parts = []
    if "channels" in budget:
        parts.append(f"{budget['channels']}x{budget['states']}/{budget['usable_channels']}x{budget['usable_states']}")
    if "proj_rank" in budget:
        parts.append(f"r={budget['proj_rank']}")
    if "ssm_rank" in budget:
        parts.append(f"r_AC={budget['ssm_rank']}")
    return ",".join(parts)


@dataclass
class Group:
    """R runs of one (method, budget) on one frozen model: the RunState plus the weight-decay anchors.

    anchors: one tensor per ``state.parameters()`` entry; AdamW decays ``P − anchor`` (the official
    code's delta adapters decay towards the frozen value, its own parameters towards 0).
    """

    state: sm.RunState
    anchors: List[Tensor]
    selection: Optional[OfficialSelection] = None


def build_group(frozen: List[Dict[str, Tensor]], method: OfficialMethod, budget: Dict, R: int, rank_max: Tuple[int, int],
                lora_down: Optional[List[Tensor]] = None, selection: Optional[OfficialSelection] = None,
                ac_generator: Optional[torch.Generator] = None) -> Group:
    """Masks, pruned base, LoRA factors and anchors of ``method`` at ``budget`` (the official trainable set).

    frozen: per-layer dicts (no run axis) on the target device. lora_down: per layer (r, d_model)
    official ``W_down`` (required when the method has a W LoRA). selection: required for SDT.
    """
    dev = frozen[0]["W"].device
    base = [dict(b) for b in frozen]
    if method.needs_selection:
        if selection is None:
            raise ValueError(f"selection: {method.name} needs an OfficialSelection")
        for l, b in enumerate(base):  # prune: C = 0 outside the usable channels, and outside the usable
            keep = torch.zeros_like(b["C_re"], dtype=torch.bool)  # states of the updated channels
            for c in selection.usable_channels[l]:
                if c in selection.update_states[l]:
                    keep[c, selection.usable_states[l][c]] = True
                else:
                    keep[c, :] = True
            for k in ("C_re", "C_im"):
                b[k] = torch.where(keep, b[k], torch.zeros_like(b[k]))
    state = sm.RunState.create(base, R, *rank_max, generator=ac_generator or torch.Generator().manual_seed(0))
    delta = [{k: torch.zeros_like(v, dtype=torch.bool) for k, v in b.items()} for b in base]
    for l, (m, b) in enumerate(zip(state.mask, base)):
        m["u"][:] = True  # D_method='full': every method, Frozen included
        if method.lp != "freeze":
            m["beta"][:] = True
        if method.ssm != "freeze":
            m["log_dt"][:] = True
        if method.lp == "full":
            m["W"][:] = True
        if method.ssm == "full":
            for k in AC_PARAMS:
                m[k][:] = True
        if method.ssm == "ours":
            for c, states in selection.update_states[l].items():
                for k in AC_PARAMS:
                    m[k][:, c, states] = True
                    delta[l][k][c, states] = True
            if method.lp == "ours":
                cols = selection.update_channels[l]
                m["W"][:, :, cols] = True
                delta[l]["W"][:, cols] = True
        if method.lp == "lora":
            r = budget["proj_rank"]
            state.rank_mask[l]["proj"][:, :r] = 1.0
            if lora_down is None:
                raise ValueError(f"lora_down: {method.name} needs the official W_down factors")
            A = state.lora[l]["proj_A"].detach().clone()
            A[:, :r] = lora_down[l].to(dev, A.dtype)
            state.lora[l]["proj_A"] = A.requires_grad_(True)
        if method.ac_lora:
            state.rank_mask[l]["ssm"][:, :budget["ssm_rank"]] = 1.0
    anchors = []
    for t, lo, b, d in zip(state.train, state.lora, base, delta):
        anchors += [torch.where(d[k], b[k], torch.zeros_like(b[k]))[None].expand_as(t[k]) for k in sm.ALL_PARAMS]
        anchors += [torch.zeros_like(lo[k]) for k in ("proj_A", "proj_B", "ssm_A", "ssm_B")]
    return Group(state, anchors, selection)


def fft_layer_forward(p: Dict[str, Tensor], x: Tensor) -> Tensor:
    """:func:`synthetic.s4_model.layer_forward` with the causal convolution as an FFT (the official code's
    form, zero-padded to 2L): the twin used on the CPU, where it is far cheaper than the Toeplitz
    product. p: per-layer tensors with a run axis R; x: (R, D, L, B) or (D, L, B) -> (R, D, L, B)."""
    L = x.shape[-2]
    K = sm.s4d_kernel(p, L)  # (R, D, L), skip folded into lag 0
    s = torch.fft.irfft(torch.fft.rfft(K, n=2 * L)[..., None] * torch.fft.rfft(x, n=2 * L, dim=-2), n=2 * L,
                        dim=-2)[..., :L, :]  # (R, D, L, B)
    R, D = K.shape[0], K.shape[1]
    z = torch.bmm(p["W"], s.reshape(R, D, -1))  # (R, D, L*B)
    return torch.relu(z + p["beta"][..., None]).reshape(s.shape)


def fft_run_losses(base, train, mask, lora, rank_mask, x: Tensor, y: Tensor, idx: Tensor) -> Tensor:
    """:func:`synthetic.s4_model.run_losses` (same signature and parameterisation) with FFT convolutions."""
    out = x
    for p in sm.effective_layers(base, train, mask, lora, rank_mask):
        out = fft_layer_forward(p, out)
    return ((out - y) ** 2).mean(dim=(1, 2, 3))


def fft_deep_forward(layers: List[Dict[str, Tensor]], x: Tensor, idx: Tensor) -> Tensor:
    for p in layers:
        x = fft_layer_forward(p, x)
    return x


CONVS = {"toeplitz": (sm.run_losses, sm.deep_forward), "fft": (fft_run_losses, fft_deep_forward)}


def concat_groups(groups: Sequence[Group]) -> Group:
    """Several groups of one frozen model as one (runs concatenated; they then share every batch).

    Bases that differ between groups (SDT's pruned C) get a run axis; the rest stay shared. The
    groups' bases must have no run axis (as :func:`build_group` makes them).
    """
    if len(groups) == 1:
        return groups[0]
    sts = [g.state for g in groups]
    base = []
    for l in range(len(sts[0].base)):
        b = {}
        for k, v in sts[0].base[l].items():
            if all(s.base[l][k] is v for s in sts):
                b[k] = v
            else:
                b[k] = torch.cat([s.base[l][k].expand(s.R, *v.shape) for s in sts])  # (R, shape)
        base.append(b)

    def cat(field, leaf):
        out = []
        for l in range(len(sts[0].base)):
            d = {k: torch.cat([getattr(s, field)[l][k].detach() for s in sts]) for k in getattr(sts[0], field)[l]}
            out.append({k: v.requires_grad_(True) for k, v in d.items()} if leaf else d)
        return out

    state = sm.RunState(base, cat("train", True), cat("mask", False), cat("lora", True), cat("rank_mask", False))
    per = [g.anchors for g in groups]
    anchors = [torch.cat(a) for a in zip(*per)]
    return Group(state, anchors, None)


@torch.no_grad()
def adamw_step_anchored(params: List[Tensor], grads: List[Tensor], exp_avg: List[Tensor], exp_avg_sq: List[Tensor],
                        anchors: List[Tensor], step: Tensor, lr: Tensor, beta1: float, beta2: float, eps: float,
                        weight_decay: float) -> None:
    """``torch.optim.AdamW`` (decoupled decay, bias correction) with a learning rate per run, decaying
    ``P − anchor`` instead of ``P``. params[i]: (R, ...); lr: (R,); step: 0-d tensor, incremented here."""
    step.add_(1)
    bc1 = 1 - beta1 ** step
    bc2 = 1 - beta2 ** step
    for p, g, m, v, a in zip(params, grads, exp_avg, exp_avg_sq, anchors):
        lr_b = lr.reshape((-1,) + (1,) * (p.dim() - 1))
        p.sub_(lr_b * weight_decay * (p - a))
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        p.sub_(lr_b / bc1 * m / ((v / bc2).sqrt() + eps))


# ----------------------------------------------------------------------------------- training
class Trainer:
    """Batches (exact or on the device), the (optionally compiled) loss and step, training and evaluation."""

    def __init__(self, cfg: OfficialConfig, device: torch.device, log=print):
        self.cfg, self.device, self.log = cfg, device, log
        set_precision(cfg.precision, device)
        self.idx = sm.toeplitz_index(cfg.seq_len, device)
        self.conv = cfg.conv if cfg.conv != "auto" else ("toeplitz" if device.type == "cuda" else "fft")
        self.run_losses, self.deep_forward = CONVS[self.conv]
        self.use_compile = (device.type == "cuda") if cfg.compile is None else cfg.compile
        self._loss, self._step = self.run_losses, adamw_step_anchored
        if self.use_compile:
            self._loss = torch.compile(self.run_losses, dynamic=False)
            self._step = torch.compile(adamw_step_anchored, dynamic=False)

    def _call(self, which, *args):
        try:
            return (self._loss if which == "loss" else self._step)(*args)
        except Exception as e:
            if not self.use_compile:
                raise
            self.log(f"torch.compile failed ({type(e).__name__}: {str(e)[:200]}); falling back to eager")
            self.use_compile, self._loss, self._step = False, self.run_losses, adamw_step_anchored
            return (self._loss if which == "loss" else self._step)(*args)

    def batches(self, target, generator: torch.Generator) -> Iterator[Tuple[Tensor, Tensor]]:
        """Endless (x, y): x (D, L, B) float32 on the device, y = target(x).

        ``data='exact'``: ``generator`` is a CPU generator and x is drawn as the official
        ``generate_input`` ((B, D, L) int64), then laid out (D, L, B). ``'device'``: drawn on the device.
        """
        cfg = self.cfg
        while True:
            if cfg.data == "exact":
                X = torch.randint(0, 10, (cfg.batch, cfg.d_model, cfg.seq_len), generator=generator)  # (B, D, L)
                x = X.permute(1, 2, 0).to(self.device, torch.float32).contiguous()  # (D, L, B)
            else:
                x = torch.randint(0, 10, (cfg.d_model, cfg.seq_len, cfg.batch), generator=generator,
                                  device=self.device).to(torch.float32)  # (D, L, B)
            with torch.no_grad():
                y = self.deep_forward(target, x, self.idx)[0]  # (D, L, B)
            yield x, y

    def device_generator(self, seed: int, stream: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        return g.manual_seed(1_000_003 * (stream + 1) + seed)

    def train(self, group: Group, lrs: Sequence[float], iters: int, batches: Iterator) -> Tensor:
        """``iters`` AdamW steps of the R runs; returns the training-batch losses (R, iters) on the host."""
        cfg, st = self.cfg, group.state
        params = st.parameters()
        m = [torch.zeros_like(p) for p in params]
        v = [torch.zeros_like(p) for p in params]
        step = torch.zeros((), device=self.device)
        lr = torch.tensor(list(lrs), device=self.device, dtype=torch.float32)
        losses = torch.empty(st.R, iters, device=self.device)
        for it in range(iters):
            x, y = next(batches)
            loss = self._call("loss", st.base, st.train, st.mask, st.lora, st.rank_mask, x, y, self.idx)
            grads = torch.autograd.grad(loss.sum(), params)
            self._call("step", params, list(grads), m, v, group.anchors, step, lr, 0.9, 0.999, 1e-8,
                       cfg.weight_decay)
            losses[:, it] = loss.detach()
        return losses.cpu()

    @torch.no_grad()
    def evaluate(self, group: Group, batches: Iterator, n: int) -> List[float]:
        """Per run: MSE averaged over ``n`` fresh batches with the final parameters."""
        st = group.state
        tot = torch.zeros(st.R, device=self.device)
        for _ in range(n):
            x, y = next(batches)
            tot += self.run_losses(st.base, st.train, st.mask, st.lora, st.rank_mask, x, y, self.idx)
        return (tot / n).tolist()

    def warmup(self, frozen, batches: Iterator) -> Tuple[List[Dict[str, Tensor]], List[float]]:
        """The official SDT warm-up on a copy: ``warmup_iters`` AdamW steps at ``warmup_lr`` of
        ``WARMUP_PARAMS[warmup_params]``; returns the warmed-up layers (no run axis) and the losses."""
        cfg = self.cfg
        group = build_group(frozen, METHODS["Frozen"], {}, 1, (1, 1))
        for mk in group.state.mask:
            for k in WARMUP_PARAMS[cfg.warmup_params]:
                mk[k][:] = True
        losses = self.train(group, [cfg.warmup_lr], cfg.warmup_iters, batches)[0].tolist() if cfg.warmup_iters else []
        warm = [{k: v[0].detach() for k, v in p.items()} for p in group.state.effective()]
        return warm, losses


def rank_max(cfg: OfficialConfig) -> Tuple[int, int]:
    """Largest W and A,C LoRA ranks of the grid (one shape for every group: one compiled graph)."""
    rp = [1] + [b.get("proj_rank", 0) for m in cfg.methods for b in METHODS[m].budgets(cfg)]
    rs = [1] + [b.get("ssm_rank", 0) for m in cfg.methods for b in METHODS[m].budgets(cfg)]
    return max(rp), max(rs)


def prepare_group(cfg: OfficialConfig, trainer: Trainer, seed_cache: Dict, method: OfficialMethod, budget: Dict,
                  R: int) -> Tuple[Group, List[float]]:
    """The group's RunState on ``seed_cache`` (target, frozen, generator state after init, warm-up)."""
    c = seed_cache
    g = torch.Generator()
    g.set_state(c["g_after_init"])
    warm_losses: List[float] = []
    sel = None
    if method.needs_selection:
        wkey = ("warm", cfg.warmup_params, cfg.warmup_iters, cfg.warmup_lr, cfg.data, cfg.batch)
        if wkey not in c:
            if cfg.data == "exact":  # the warm-up batches continue the initialisation's generator
                wg = torch.Generator()
                wg.set_state(c["g_after_init"])
            else:
                wg = trainer.device_generator(c["seed"], stream=1)
            warm, losses = trainer.warmup(c["frozen"], trainer.batches(c["target"], wg))
            c[wkey] = (warm, losses, wg.get_state() if cfg.data == "exact" else c["g_after_init"])
        warm, warm_losses, g_state = c[wkey]
        g.set_state(g_state)
        sel = official_selection(warm, c["frozen"], budget, cfg.seq_len, cfg.sdt_score)
    down = ([official_lora_down(cfg.d_model, budget["proj_rank"], g) for _ in c["frozen"]]
            if method.lp == "lora" else None)
    group = build_group(c["frozen"], method, budget, R, rank_max(cfg), lora_down=down, selection=sel,
                        ac_generator=torch.Generator().manual_seed(c["seed"]))
    return group, warm_losses


def seed_models(cfg: OfficialConfig, seed: int, device) -> Dict:
    target, frozen, g = official_models(cfg, seed)
    return {"seed": seed, "g_after_init": g.get_state(),
            "target": [{k: v.to(device)[None] for k, v in p.items()} for p in target],
            "frozen": [{k: v.to(device) for k, v in p.items()} for p in frozen]}


def training_batches(cfg: OfficialConfig, trainer: Trainer, c: Dict, stream: int = 0) -> Iterator:
    """Training (stream 0; exact mode: the official ``set_seed(seed)`` restart) or evaluation (stream 2) batches."""
    if cfg.data == "exact":
        g = torch.Generator().manual_seed(c["seed"] if stream == 0 else 1_000_003 * (stream + 1) + c["seed"])
    else:
        g = trainer.device_generator(c["seed"], stream)
    return trainer.batches(c["target"], g)


def run_cases(cfg: OfficialConfig, cases: Sequence[Tuple[str, Dict, float]], seed: int = OFFICIAL_SEED,
              device="cpu", log=print, seed_cache: Optional[Dict] = None) -> List[Dict]:
    """Runs ``(method, budget, lr)`` of one seed trained together (R = len(cases), one batch stream, as
    the official code gives every method the same training batches). Per run: ``trainable`` (the
    official count), ``selection`` (SDT), ``warmup_losses``, ``losses`` (iters,), ``eval_mse``.
    The unit the equivalence tests compare with the official code. ``seed_cache``: a dict from
    :func:`seed_models` (same cfg and seed) to reuse its models and SDT warm-up across calls."""
    dev = torch.device(device)
    trainer = Trainer(cfg, dev, log)
    c = seed_cache if seed_cache is not None else seed_models(cfg, seed, dev)
    parts = [prepare_group(cfg, trainer, c, METHODS[m], b, 1) for m, b, _ in cases]
    group = concat_groups([p[0] for p in parts])
    losses = trainer.train(group, [lr for _, _, lr in cases], cfg.iters, training_batches(cfg, trainer, c))
    ev = trainer.evaluate(group, training_batches(cfg, trainer, c, stream=2), cfg.eval_batches)
    counts = group.state.trainable_count()
    return [{"trainable": counts[i], "selection": parts[i][0].selection, "warmup_losses": parts[i][1],
             "losses": losses[i].tolist(), "eval_mse": ev[i]} for i in range(len(cases))]


# ---------------------------------------------------------------------------------------- sweep
def key_config(cfg: OfficialConfig) -> Dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_IN_KEY}


def run_groups(cfg: OfficialConfig) -> List[Tuple[int, str, Dict]]:
    """(seed, method, budget) in execution order: seed-major, so a cut-short sweep covers every point."""
    return [(s, m, b) for s in cfg.seeds for m in cfg.methods for b in METHODS[m].budgets(cfg)]


def results_path(cfg: OfficialConfig) -> Path:
    return Path(cfg.out) / f"s4_regression_{cfg.preset}.json"


class OfficialExperiment:
    """The official-convention deep-S4 experiment as a :class:`synthetic.runner.Experiment`.

    A train call takes the runs of one (seed, method, budget) group (same models, warm-up, ``W_down`` and
    batches); with torch.compile a short call (an lr-extension round) is padded to ``len(cfg.lrs)`` runs by
    repeating its last lr (padding runs are not recorded). LoRA (A&C+Proj)'s A, C factors are drawn per run
    position (``RunState.create``), so there an extension run's factors are those of the group's first positions.
    """

    name = "s4_official"

    def __init__(self, cfg: OfficialConfig, log=print):
        self.cfg, self.log = cfg, log
        self.preset, self.seeds, self.base_lrs = cfg.preset, tuple(cfg.seeds), tuple(cfg.lrs)
        self.lr_policy = lr_policy(cfg)
        self.results_path = results_path(cfg)
        self.kc = key_config(cfg)
        self.device = resolve_device(cfg)
        self.max_runs_per_call = len(cfg.lrs)
        self.total = official_param_count(cfg.d_model, cfg.frozen_d_state, cfg.frozen_layers)
        self._trainer: Optional[Trainer] = None
        self._cache: Dict[int, Dict] = {}

    @property
    def trainer(self) -> Trainer:
        if self._trainer is None:
            self._trainer = Trainer(self.cfg, self.device, self.log)
        return self._trainer

    @property
    def pad_calls(self) -> bool:
        return self.trainer.use_compile

    def describe(self) -> str:
        return (f"device {environment()['device']}, compile={self.trainer.use_compile}, data={self.cfg.data}; "
                f"official model {self.total} parameters")

    def groups(self) -> List[RunGroup]:
        return [RunGroup(s, m, b, tuple(self.cfg.lrs)) for s, m, b in run_groups(self.cfg)]

    def key(self, seed, method, budget, lr) -> str:
        return run_key({"cfg": self.kc, "method": method, "budget": budget, "lr": lr, "seed": seed})

    def train(self, runs: Sequence[Run]) -> List[Dict]:
        cfg, trainer = self.cfg, self.trainer
        seed, mname, budget = runs[0].seed, runs[0].method, runs[0].budget
        lrs = [r.lr for r in runs]
        env = environment()
        if seed not in self._cache:
            self._cache = {seed: seed_models(cfg, seed, self.device)}  # one seed's models at a time
        c = self._cache[seed]
        tg = time.monotonic()
        group, warm_losses = prepare_group(cfg, trainer, c, METHODS[mname], budget, len(lrs))
        counts = group.state.trainable_count()
        curves = trainer.train(group, lrs, cfg.iters, training_batches(cfg, trainer, c)).tolist()
        ev = trainer.evaluate(group, training_batches(cfg, trainer, c, stream=2), cfg.eval_batches)
        wall = time.monotonic() - tg
        recs = []
        for i, lr in enumerate(lrs):
            curve = curves[i]
            finite = all(math.isfinite(v) for v in curve) and math.isfinite(ev[i])
            tail = curve[-max(1, len(curve) // 50):]
            recs.append({
                "method": mname, "budget": budget, "budget_label": budget_label(budget),
                "lr": lr, "seed": seed, "model_seed": seed, "status": "ok" if finite else "diverged",
                "best_mse": min(curve) if finite else None, "eval_mse": ev[i] if finite else None,
                "final_mse": sum(tail) / len(tail) if finite else None,
                "trainable": counts[i], "frozen_params": self.total, "trainable_pct": 100.0 * counts[i] / self.total,
                "iters": cfg.iters, "loss_curve": subsample_curve(curve, cfg.curve_points),
                "warmup_losses": warm_losses, "wall_s": wall / len(lrs), "group_wall_s": wall,
                "runs_in_group": len(lrs),
                "device": env["device"], "torch": env["torch"], "commit": env["commit"], "date": utc_now(),
                "compiled": trainer.use_compile, "config": dataclasses.asdict(cfg),
            })
        return recs


def sweep(cfg: OfficialConfig, log=print) -> ResultsFile:
    """Every (seed, method, budget) group not yet in the results file, R = len(lrs) runs per group, then the
    lr grid grown where a (method, budget)'s best lr is at an edge (:func:`synthetic.runner.run_sweep`)."""
    st = run_sweep(OfficialExperiment(cfg, log), time_budget=cfg.time_budget, log=log)
    return ResultsFile(st.results)


def current_runs(cfg: OfficialConfig, records: Sequence[Dict]) -> List[Dict]:
    """The run records of ``cfg``'s configuration and seeds: those whose key is the one ``cfg`` gives them."""
    return runner.current_runs(OfficialExperiment(cfg), records)


def extension_plan(cfg: OfficialConfig, records: Sequence[Dict]) -> List[Tuple[int, str, Dict, List[float]]]:
    """The next round of runs: ``(seed, method, budget, lrs)`` per run group still needed (missing grid lrs
    first, then the edge extensions); ``[]`` when every group's best lr is interior or at a bound."""
    exp = OfficialExperiment(cfg)
    return runner.extension_todo(exp, records, exp.groups())


def run_records(records: Sequence[Dict]) -> List[Dict]:
    """The per-run records of a results file (drops the sweep wall-time records)."""
    return [r for r in records if r.get("kind", "run") == "run"]


def summary_table(cfg: OfficialConfig) -> str:
    recs = run_records(ResultsFile(results_path(cfg)).load())
    rows = best_of_grid(recs, group_keys=("method", "budget_label"), lr_policy=lr_policy(cfg))
    lines = ["| method | budget | trainable % | best_mse (mean ± std over seeds) | lr | lr at grid edge | seeds "
             "| diverged |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    order = {m: i for i, m in enumerate(METHODS)}
    for r in sorted(rows, key=lambda r: (order.get(r["method"], 99), r["trainable_pct"] or 0)):
        mse = "n/a" if r["mean"] is None else f"{r['mean']:.4g} ± {r['std']:.2g}"
        lines.append(f"| {r['method']} | {r['budget_label']} | {r['trainable_pct']:.2f} | {mse} | {r['lr']} | "
                     f"{edge_label(r) or '-'} | {r['n_seeds']} | {r['n_diverged']} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    return dataclass_parser(OfficialConfig, PRESETS, prog="python -m synthetic.s4_official",
                            description=__doc__.split("\n\n")[0],
                            plot_only_help="print the summary of the JSON, no training")


def parse_config(argv: Optional[Sequence[str]] = None) -> OfficialConfig:
    """CLI -> OfficialConfig: the preset's values become the defaults, explicit options override them."""
    return parse_dataclass(OfficialConfig, PRESETS, build_parser(), "official", argv, validate)


def main(argv: Optional[Sequence[str]] = None) -> int:
    cfg = parse_config(argv)
    if cfg.dry_run:
        runner.print_plan(OfficialExperiment(cfg), runner.parse_shard(cfg.shard))
        return 0
    if cfg.merge:
        runner.merge_shards(results_path(cfg))
    elif not cfg.plot_only:
        run_sweep(OfficialExperiment(cfg), time_budget=cfg.time_budget, shard=runner.parse_shard(cfg.shard))
        if cfg.shard:
            return 0
    print(summary_table(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
