"""The deep-S4 experiment's PEFT methods (Galim et al., ICML 2025, Sec. 3-4 and 6.1), one registry entry each.

A :class:`Method` holds everything of a method: its budgets (``budgets(cfg)``), how it sets a run's masks and
ranks on a :class:`synthetic.s4.model.RunState` (``configure``), its ``theory.peft`` modules (whose
``count_trainable`` is the method's trainable count, checked by tests) and its budget label. Methods:
:data:`METHODS` (Figure 2's six and the benchmark's others, :data:`BENCHMARK_METHODS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from synthetic.s4 import model as sm
from synthetic.s4.selection import SDTRanking, select, select_pruned

Tensor = torch.Tensor


def parse_sdt(s: str) -> Dict[str, int]:
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


# --------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class Method:
    """A fine-tuning method: its budgets, how it sets a RunState's masks, and its theory-package modules.

    budgets(cfg) -> list of budget dicts. configure(state, budget, selection) sets masks / rank masks
    (all R runs of a group share the budget). theory_modules(base, budget, selection) -> modules of
    ``theory.peft`` whose ``count_trainable`` is the method's trainable count (checked by tests).
    """

    name: str
    budgets: Callable[[object], List[Dict]]  # config -> budget dicts
    configure: Callable
    theory_modules: Callable
    needs_selection: bool = False
    trains: bool = True
    own_extra: Tuple[str, ...] = ()  # EXTRA_PARAMS the method trains itself (not re-added by --train-skip-dt-bias)
    label: Optional[Callable[[Dict], str]] = None  # budget -> summary label; None: :func:`budget_label`
    extra: bool = False  # adds extra tensors (RunState.extra): the second graph, not packed with the default one


@dataclass(frozen=True)
class PrunedSelection:
    """SDT selection with the official code's pruning (``--sdt-prune usable``): per-layer rankings plus
    the usable-dimension counts; :func:`synthetic.s4.selection.select_pruned` turns it into masks."""

    rankings: List[SDTRanking]
    usable_channels: int
    usable_states: int


def layer_sdt_masks(selection, budget):
    """Per-layer SDTMask (D, Hc) of a selection: plain SDT (list of rankings) or pruned (PrunedSelection)."""
    if isinstance(selection, PrunedSelection):
        return [select_pruned(rk, budget["channels"], budget["states"], selection.usable_channels,
                              selection.usable_states) for rk in selection.rankings]
    return [select(rk, budget["channels"], budget["states"]) for rk in selection]


def _sdt_masks(state: sm.RunState, budget, selection, w_columns: bool) -> None:
    masks = layer_sdt_masks(selection, budget)
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
    for b, m in zip(base, layer_sdt_masks(selection, budget)):
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
        "LoRA (S4+Proj)", lambda c: [{"proj_rank": r, "ssm_rank": s} for r, s in zip(c.lora_ranks, c.ssm_lora_ranks)],
        lambda s, b, sel: (_set_rank(s, "proj", b["proj_rank"]), _set_rank(s, "ssm", b["ssm_rank"])),
        lambda base, b, sel: _theory_lora_proj(base, b["proj_rank"]) + _theory_lora_s4(base, b["ssm_rank"])),
    "SDT": Method(
        "SDT", lambda c: [parse_sdt(x) for x in c.sdt],
        lambda s, b, sel: _sdt_masks(s, b, sel, w_columns=True),
        lambda base, b, sel: _theory_sdt(base, b, sel, w_columns=True), needs_selection=True),
    "SDT + LoRA": Method(
        "SDT + LoRA", lambda c: [parse_sdt(x) for x in c.sdt_lora],
        lambda s, b, sel: (_sdt_masks(s, b, sel, w_columns=False), _set_rank(s, "proj", b["proj_rank"])),
        lambda base, b, sel: _theory_sdt(base, b, sel, w_columns=False) + _theory_lora_proj(base, b["proj_rank"]),
        needs_selection=True),
    "Full": Method("Full", lambda c: [{"all": True}], _configure_full, _theory_full,
                   own_extra=("u", "log_dt", "beta")),  # every parameter already
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
        lambda base, b, sel: _theory_prefix(base, b["prompt_len"], 1), extra=True),
    "Prefix-tuning": Method(
        "Prefix-tuning", lambda c: [{"prefix_len": m} for m in c.prefix_lens], _configure_prefix,
        lambda base, b, sel: _theory_prefix(base, b["prefix_len"], len(base)), extra=True),
    "Initial-state tuning": Method(
        "Initial-state tuning", lambda c: [{"initial_state": True}], _configure_state("h0"), _theory_state, extra=True),
    "State-offset tuning": Method(
        "State-offset tuning", lambda c: [{"state_offset": True}], _configure_state("offset"), _theory_state, extra=True),
    "BitFit": Method(
        "BitFit", lambda c: [{"bitfit": True}], _configure_bitfit,
        lambda base, b, sel: [_theory_all_trainable(x["beta"].cpu()) for x in base], own_extra=("beta",)),
    "DoRA (Proj)": Method(
        "DoRA (Proj)", lambda c: [{"dora_rank": r} for r in c.dora_ranks], _configure_dora, _theory_dora, extra=True),
    "Additional-scan": Method(
        "Additional-scan", lambda c: [{"add_states": n} for n in c.additional_states], _configure_additional,
        _theory_additional, extra=True),
}
"""Prompt tuning, prefix-tuning (Li & Liang, 2021), initial-state tuning (Proposition 1's counterpart),
state-offset tuning (Kang et al., 2025: ``y_t = C (h_t + h')``, their "state_tuning" variant with a full
(D, H) offset; for the LTI S4 it is a per-channel constant), BitFit (β), DoRA on W, Additional-scan."""
METHODS = {**{k: v for k, v in METHODS.items() if k != "Full"}, **BENCHMARK_METHODS, "Full": METHODS["Full"]}  # Full last
BENCHMARK_LABELS = {"prompt_len": "M={}", "prefix_len": "M={}", "initial_state": "h0", "state_offset": "h'",
                     "bitfit": "beta", "dora_rank": "r={}", "add_states": "+{} modes"}

EXTRA_PARAMS = ("u", "log_dt", "beta")  # skip D, log Δ, projection bias: trained by --train-skip-dt-bias


def configure(cfg, method: Method, state: sm.RunState, budget, selection) -> None:
    """The method's masks, plus the opt-in extras of ``cfg`` (u, log_dt, β trainable)."""
    method.configure(state, budget, selection)
    if cfg.train_skip_dt_bias and method.trains:
        for m in state.mask:
            for k in (k for k in EXTRA_PARAMS if k not in method.own_extra):
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
    for k, fmt in BENCHMARK_LABELS.items():
        if k in budget:
            parts.append(fmt.format(budget[k]))
    known = {"all", "channels", "states", "proj_rank", "ssm_rank", *BENCHMARK_LABELS}
    parts += [f"{k}={budget[k]}" for k in sorted(budget) if k not in known]  # a new method's own budget keys
    return ",".join(parts)


def method_label(method: Method, budget: Dict) -> str:
    """The summary label of a method's budget: its registry entry's ``label`` or :func:`budget_label`."""
    return method.label(budget) if method.label is not None else budget_label(budget)


def theory_trainable_count(method: Method, base, budget, selection, cfg=None) -> int:
    from theory.peft import MaskedParameter, Role, count_trainable

    mods = method.theory_modules(base, budget, selection)
    if cfg is not None and cfg.train_skip_dt_bias and method.trains:
        mods += [MaskedParameter(b[k].cpu(), torch.full(b[k].shape, int(Role.TRAINABLE), dtype=torch.int8))
                 for b in base for k in EXTRA_PARAMS if k not in method.own_extra]
    return sum(count_trainable(mod) for mod in mods)
