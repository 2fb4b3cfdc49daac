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
  (:func:`synthetic.runner.run_sweep`, :func:`synthetic.results.lr_extension_plan`); none of the three is in the run keys.
- ``data='exact'``: batches as the official ``generate_input`` (``randint(0, 10, (B, d_model, L))``
  on the CPU generator; training restarts it at ``seed``; the SDT warm-up continues it after the
  initialisation). ``data='device'`` (the GPU sweep) draws on the device.

The fast path is :class:`synthetic.s4.model.RunState` (R runs per group share one batch, masks,
LoRA factors, one compiled graph); ``tests/test_s4_official.py`` holds it to the official code's
CPU test vectors run for run.

Usage::

    python -m synthetic.s4_regression --preset official
    python -m synthetic.s4_regression --preset official-tiny --out /tmp/x   # seconds, any device
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from synthetic.cli import (SweepConfig, check_numbers, check_out_dir, check_shard_options, check_sweep_options, option,
                           redefault)
from synthetic.s4 import model as sm

Tensor = torch.Tensor

OFFICIAL_SEED = 123  # run_s4.py: self.random_seed; further seeds are 124, 125, ...
OFFICIAL_PARAMS = ("u", "log_dt", "C_re", "C_im", "log_A_re", "A_im", "W", "beta")  # B = 1 is no parameter
AC_PARAMS = sm.SSM_LORA_PARAMS  # log_A_re, A_im, C_re, C_im: what SDT's deltas touch


# ------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class OfficialConfig(SweepConfig):
    """Every field is a CLI option (``--field-name``); tuples are comma-separated lists."""

    preset: str = redefault("preset", "official")
    d_model: int = option(64, "channels (model width)")
    frozen_layers: int = option(4, "layers of the frozen model")
    frozen_d_state: int = option(16, "complex modes per channel of the frozen model (official d_state)")
    target_layers: int = option(1, "layers of the target model")
    target_d_state: int = option(8, "complex modes per channel of the target")
    seq_len: int = option(200, "sequence length")
    batch: int = option(4000, "sequences per training batch")
    iters: int = option(500, "AdamW iterations per run (official n_epochs, one batch each)")
    weight_decay: float = option(0.01, "torch.optim.AdamW's default; the official code passes only lr")
    lrs: Tuple[float, ...] = redefault("lrs", (2e-3, 5e-3, 1e-2, 2e-2))
    seeds: Tuple[int, ...] = redefault("seeds", (123, 124, 125, 126, 127), "seeds, comma-separated (each draws the "
                                       "target then the frozen model, the data and the adapters; official: 123)")
    methods: Tuple[str, ...] = redefault("methods", ("Frozen", "LoRA (Proj)", "LoRA (S4+Proj)", "LoRA (A&C+Proj)",
                                                     "SDT", "SDT + LoRA", "Full"))
    lora_ranks: Tuple[int, ...] = option((4, 8, 16), "LoRA (Proj) ranks", key=False)
    s4proj_lora_ranks: Tuple[int, ...] = option((4, 16), "official LoRA (S4+Proj): ranks on W", key=False,
                                                key_as="s4proj_ranks", old=("--s4proj-ranks",))
    ac_lora: Tuple[str, ...] = option(("4:1", "16:4"), "LoRA (A&C+Proj) budgets 'W rank : A,C rank'", key=False,
                                      key_as="ac_lora_budgets", old=("--ac-lora-budgets",))
    sdt: Tuple[str, ...] = option(("8x4/16x8", "16x8/16x8", "32x8/32x8", "32x16/64x16"), "SDT budgets 'channels x "
                                  "states' updated / usable per layer", key=False, key_as="sdt_budgets",
                                  old=("--sdt-budgets",))
    sdt_lora: Tuple[str, ...] = option(("16x8/16x8:8",), "SDT + LoRA budgets 'channels x states' updated / usable "
                                       ": W rank", key=False, key_as="sdt_lora_budgets", old=("--sdt-lora-budgets",))
    warmup_iters: int = option(20, "iterations of the SDT warm-up (official warmup_epochs)")
    warmup_lr: float = option(1e-2, "learning rate of the SDT warm-up (official warmup_lr)")
    warmup_params: str = option("all", "parameters the warm-up updates: all (official 'full') or ssm (C, A, log_dt, "
                                "u)")
    sdt_score: str = option("official", "official (as run_s4.py computes it) or corrected")
    data: str = option("device", "device (batches drawn on the device) or exact (official generate_input, CPU)")
    eval_batches: int = option(10, "batches of the evaluation MSE after training")
    conv: str = option("auto", "causal convolution: toeplitz (GPU), fft (CPU), auto = by device", key=False)
    curve_points: int = option(50, "points of the loss curve kept in each record", key=False)
    precision: str = option("fp32", "matmul precision on CUDA: fp32 (as the official code) or tf32")
    compile: Optional[bool] = option(None, "torch.compile the training step", key=False)


PRESETS: Dict[str, Dict] = {
    "official": dict(out="figures"),
    "official-tiny": dict(d_model=6, frozen_layers=2, frozen_d_state=4, target_d_state=2, seq_len=12, batch=8,
                          iters=6, lrs=(5e-3, 2e-2), seeds=(123, 124), lora_ranks=(1, 2), s4proj_lora_ranks=(2,),
                          ac_lora=("1:1",), sdt=("2x2/4x3", "3x3/3x3"), sdt_lora=("2x2/4x3:1",), warmup_iters=3,
                          eval_batches=2, curve_points=5),
}


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
    check_numbers(cfg, nonnegative=("weight_decay", "time_budget"), positive=("warmup_lr",))
    check_out_dir(cfg.out)
    D, N = cfg.d_model, cfg.frozen_d_state
    for name in ("lora_ranks", "s4proj_lora_ranks"):
        for r in getattr(cfg, name):
            if not 1 <= r <= D:
                raise ValueError(f"{opt(name)}: each rank must be in [1, d_model={D}], got {r}")
    for s in cfg.ac_lora:
        b = _parse_ac(s) if ":" in s else None
        if b is None or not (1 <= b["proj_rank"] <= D and 1 <= b["ssm_rank"] <= min(D, N)):
            raise ValueError(f"--ac-lora-budgets: {s!r} needs 'W_RANK:AC_RANK' with 1 <= W_RANK <= d_model={D} "
                             f"and 1 <= AC_RANK <= min(d_model, frozen_d_state)={min(D, N)}")
    for name in ("sdt", "sdt_lora"):
        for s in getattr(cfg, name):
            try:
                b = _parse_sdt(s)
            except ValueError as e:
                raise ValueError(f"{opt(name)}: {e}") from None
            if not (1 <= b["channels"] <= b["usable_channels"] <= D and 1 <= b["states"] <= b["usable_states"] <= N):
                raise ValueError(f"{opt(name)}: {s!r} needs 1 <= channels <= usable channels <= d_model={D} and "
                                 f"1 <= states <= usable states <= frozen_d_state={N}")
            if name == "sdt_lora" and not 1 <= b.get("proj_rank", 0) <= D:
                raise ValueError(f"{opt(name)}: {s!r} needs a W rank in [1, d_model={D}] after ':'")
    if cfg.time_budget < 0:
        raise ValueError(f"--time-budget: must be >= 0, got {cfg.time_budget}")
    return cfg


# ------------------------------------------------------------------------------ initialisation
def official_layer(d_model: int, d_state: int, g: torch.Generator) -> Dict[str, Tensor]:
    """One official S4D layer ("theory" mode), drawn from ``g`` in the official order (float32, CPU).

    Returns the :mod:`synthetic.s4.model` layout: log_A_re, A_im, B_re (= 1), B_im (= 0), C_re, C_im:
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
    OfficialMethod("LoRA (S4+Proj)", "lora", "lora", lambda c: [{"proj_rank": r} for r in c.s4proj_lora_ranks]),
    OfficialMethod("LoRA (A&C+Proj)", "lora", "lora", lambda c: [_parse_ac(s) for s in c.ac_lora],
                   ac_lora=True),
    OfficialMethod("SDT", "ours", "ours", lambda c: [_parse_sdt(s) for s in c.sdt]),
    OfficialMethod("SDT + LoRA", "lora", "ours", lambda c: [_parse_sdt(s) for s in c.sdt_lora]),
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
class AnchoredRuns:
    """R runs of one (method, budget) on one frozen model: the RunState plus the weight-decay anchors.

    anchors: one tensor per ``state.parameters()`` entry; AdamW decays ``P − anchor`` (the official
    code's delta adapters decay towards the frozen value, its own parameters towards 0).
    """

    state: sm.RunState
    anchors: List[Tensor]
    selection: Optional[OfficialSelection] = None


def build_group(frozen: List[Dict[str, Tensor]], method: OfficialMethod, budget: Dict, R: int, rank_max: Tuple[int, int],
                lora_down: Optional[List[Tensor]] = None, selection: Optional[OfficialSelection] = None,
                ac_generator: Optional[torch.Generator] = None) -> AnchoredRuns:
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
    return AnchoredRuns(state, anchors, selection)


def fft_layer_forward(p: Dict[str, Tensor], x: Tensor) -> Tensor:
    """:func:`synthetic.s4.model.layer_forward` with the causal convolution as an FFT (the official code's
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
    """:func:`synthetic.s4.model.run_losses` (same signature and parameterisation) with FFT convolutions."""
    out = x
    for p in sm.effective_layers(base, train, mask, lora, rank_mask):
        out = fft_layer_forward(p, out)
    return ((out - y) ** 2).mean(dim=(1, 2, 3))


def fft_deep_forward(layers: List[Dict[str, Tensor]], x: Tensor, idx: Tensor) -> Tensor:
    for p in layers:
        x = fft_layer_forward(p, x)
    return x


# the official trainer's (loss, forward) per --conv; "toeplitz" is synthetic.s4.model's default FastPath
# (Toeplitz form, fp32 operands, one projection GEMM, ReLU)
CONVS = {"toeplitz": (sm.losses_for(sm.DEFAULT_PATH), sm.deep_forward), "fft": (fft_run_losses, fft_deep_forward)}


def concat_groups(groups: Sequence[AnchoredRuns]) -> AnchoredRuns:
    """Several groups of one frozen model as one (runs concatenated; they then share every batch).

    Bases that differ between groups (SDT's pruned C) get a run axis; the rest stay shared. The
    groups' bases must have no run axis (as :func:`build_group` makes them).
    """
    if len(groups) == 1:
        return groups[0]
    state = sm.RunState.concat([g.state for g in groups])  # differing bases (pruned C) get a run axis
    per = [g.anchors for g in groups]
    anchors = [torch.cat(a) for a in zip(*per)]
    return AnchoredRuns(state, anchors, None)


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
