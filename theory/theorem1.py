"""Theorem 1 of Galim et al. (ICML 2025), Sec. 5: SDT-P on the SSM modules + LoRA on the linear
projections lets a frozen deep S4 of ``L`` layers equal a smaller target of ``L* < L`` layers.

Everything here uses linear activations (the theorem's setting) and float64.
Layer ``j`` of the frozen model (``deep.py``), with kernel operator ``K_j`` (diagonal over channels):

- ``skip="inside"``  (official code):  ``y = W_j (K_j x + u_j ⊙ x) + β_j``
- ``skip="outside"`` (paper eq. 4):    ``y = W_j K_j x + β_j + u_j ⊙ x``

Target layer ``l``: ``y = W*_l K*_l x + β*_l`` (no residual, ``H*`` states per channel).

Construction for ``skip="inside"`` (the paper's budget; exact):
  Split the ``L`` frozen layers into ``L*`` contiguous groups (sizes ``⌊L/L*⌋`` or ``⌈L/L*⌉``), one per
  target layer. In a group of ``M`` layers the ``D`` channels are split into ``M`` blocks
  ``S_1..S_M`` of at most ``⌈D/M⌉`` channels; layer ``m`` processes block ``S_m``: channel ``d ∈ S_m``
  gets the target channel's first ``H*`` states (``a = a*``, ``c = c* b* / b``; ``B̄`` frozen, as SDT
  tunes ``Ā`` and ``C``), its other states are pruned (zeroed), and ``u_d = 0``; every other channel is
  pruned (kernel 0) with ``u_d = 1``, so it passes its input through to ``W``.
  The signal entering a layer is ``G z`` where ``z`` is the target's partially processed signal and
  ``G`` an invertible coordinate matrix. Processing block ``S`` is exact iff ``G`` is the identity on
  ``S``: ``G[S, :] = E_S^T`` and ``G[:, S] = E_S``. Each ``W_j`` is updated so that the next coordinate
  matrix ``G' = W_j G_eff`` has that structure for the next block ``S'`` (``G_eff = G`` inside a group,
  ``G (W*_l)^{-1}`` at the end of group ``l``). The conditions are ``W V = E_{S'}`` and
  ``E_{S'}^T W = U^T`` with ``V = G_eff[:, S']``, ``U^T = E_{S'}^T G_eff^{-1}`` (consistent:
  ``U^T V = I``), and with ``R1 = E − W0 V``, ``R2 = U^T − E^T W0`` the update
  ``ΔW = R1 (E^T R1)^{-1} R2`` satisfies both and has rank ``|S'| ≤ ⌈D/M⌉`` (when ``E^T R1`` is
  invertible, which holds for generic frozen weights; otherwise a rank ``≤ 2|S'|`` fallback is used
  and reported). Biases: ``β_j = 0`` inside a group, ``β_j = G' β*_l`` at its end. The model's last
  projection is set in full, ``W_L = W*_{L*} G^{-1}`` (condition 3 of the theorem).
  Budget: ``⌈D/⌊L/L*⌋⌉`` updated channels per layer (``= ⌈D·L*/L⌉`` when ``L*`` divides ``L``),
  ``H*`` tuned states per channel, LoRA rank ``≤ ⌈D/⌊L/L*⌋⌉`` on every projection but the last.
  When ``L*`` does not divide ``L`` the construction gives every frozen layer to one target layer, so the
  smaller groups (``⌊L/L*⌋`` layers) set its budget. That is this construction's choice, not a lower bound:
  at D = 3, L = 3, L* = 2 an exact update with ``⌈D·L*/L⌉ = 2`` channels and LoRA rank 2 exists, in which one
  frozen layer processes channels of both target layers (``nondividing.py``).

``skip="outside"`` (weaker budget; exact): a pruned channel's ``u_d x_d`` is added *after* ``W``, so
  pass-through channels are only scaled, never mixed; the content of a channel processed in layer ``m``
  reaches another channel ``i`` only through ``W_m[i, d]``, and ``i`` must not be processed later
  (its kernel would convolve that content again). For a dense ``W*`` this forces every channel of a
  target layer to be processed in one frozen layer (``capacity_probe.groebner_oracle`` confirms it exactly
  at D = 2: no layout with one channel per layer has a solution, even with both projections free). The construction therefore processes all ``D`` channels in the last layer of
  each group with ``W = W*_l`` (a full-rank update; the last layer's is the allowed full update), and
  makes the other layers identities (all channels pruned, ``u = 1``, ``β = 0``, ``W`` untouched).

S6 (``kind="s6"``, weaker budget; exact): ``Δ_t, B_t, C_t`` read all channels of the layer input, so
  once a block is processed in place the raw channels later blocks need are gone (a dimension count:
  ``v_t ∈ R^D`` cannot carry ``x_t`` and the processed block; see :func:`s6_obstruction_note` and
  ``capacity_probe.s6_obstruction_instance``). The construction processes all ``D`` channels in one layer per group:
  the target's S6 is embedded (``A_log[:, :H*]``, ``x_proj``, ``dt_proj``; states ``> H*`` and dt-rank
  ``> R*`` switched off by zero rows/columns), pass-through layers switch their S6 off with
  ``W_C = 0`` and use ``u = 1``; ``skip="outside"``: processing in the last layer of a group;
  ``skip="inside"``: in the first, with ``W = (W_M ⋯ W_2)^{-1} W*`` absorbing the frozen projections
  of the pass-through layers that follow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from ._validate import check_choice
from .deep import DeepLayer, DeepSSM, random_deep
from .layout import channel_blocks, group_sizes
from .peft import SDTMask, sdt_mask
from .s6 import S6Params
from .ssm import DiagonalSSM
from .tolerances import DEEP_RTOL

Tensor = torch.Tensor

# |b_i| below this (relative to max |b|) makes c = c* b*/b ill-conditioned; the construction refuses.
_B_MIN = 1e-10
# ``E^T R1`` with condition number above this uses the rank-2|S'| fallback instead of the inverse.
_COND_MAX = 1e8


# ------------------------------------------------------------------------------------ records
@dataclass(frozen=True)
class LayerUpdate:
    """What the construction did to frozen layer ``layer``.

    mask: SDT-P roles (D, H) of the layer's SSM (trainable = tuned, pruned = zeroed).
    lora_A (r, D), lora_B (D, r): ``ΔW = lora_B @ lora_A`` (None when ``W`` is replaced in full or untouched).
    full_W: ``W`` replaced in full (the model's last projection, or outside/S6 weaker budgets).
    """

    layer: int
    target_layer: int
    channels: Tuple[int, ...]  # updated (tuned) channels
    pruned_channels: Tuple[int, ...]
    mask: Optional[SDTMask]
    lora_A: Optional[Tensor]  # (r, D)
    lora_B: Optional[Tensor]  # (D, r)
    full_W: bool
    note: str = ""

    @property
    def lora_rank(self) -> int:
        return 0 if self.lora_A is None else int(self.lora_A.shape[0])


@dataclass(frozen=True)
class Theorem1Budget:
    """The budget a construction uses, per layer and in total (counts of real scalars).

    channels_per_layer: updated (tuned) channels per frozen layer; tuned_states_per_channel: ``H*``;
    lora_rank_per_layer: rank of the LoRA factors per layer (0: untouched or replaced in full);
    full_W_layers: layers whose projection is replaced in full; ssm_tuned: tuned SSM scalars;
    ssm_pruned: SSM scalars set to zero; lora_params: scalars in all LoRA factors; full_W_params:
    D² per fully replaced projection; residual_params, bias_params: ``u`` and ``β`` entries changed;
    other: any further updated scalars by name (S6 projections); total_trainable: the sum of the
    trainable counts (pruned entries are zeroed, not trained); model_params: all scalars of the frozen model.
    """

    kind: str
    skip: str
    L: int
    L_star: int
    D: int
    H: int
    H_star: int
    group_sizes: Tuple[int, ...]
    channels_per_layer: Tuple[int, ...]
    tuned_states_per_channel: int
    lora_rank_per_layer: Tuple[int, ...]
    full_W_layers: Tuple[int, ...]
    ssm_tuned: int
    ssm_pruned: int
    lora_params: int
    full_W_params: int
    residual_params: int
    bias_params: int
    other: Dict[str, int] = field(default_factory=dict)
    model_params: int = 0
    paper_channels: int = 0  # ⌈D·L*/L⌉
    note: str = ""

    @property
    def max_channels(self) -> int:
        return max(self.channels_per_layer)

    @property
    def max_lora_rank(self) -> int:
        return max(self.lora_rank_per_layer)

    @property
    def total_trainable(self) -> int:
        return (self.ssm_tuned + self.lora_params + self.full_W_params + self.residual_params
                + self.bias_params + sum(self.other.values()))

    @property
    def percent(self) -> float:
        return 100.0 * self.total_trainable / self.model_params

    def table(self) -> str:
        """A plain-text budget table (one row per frozen layer, then totals)."""
        lines = [f"Theorem 1 budget: kind={self.kind} skip={self.skip} L={self.L} L*={self.L_star} "
                 f"D={self.D} H={self.H} H*={self.H_star} groups={list(self.group_sizes)}",
                 "layer  channels  states/ch  LoRA rank  W"]
        for j in range(self.L):
            w = "full" if j in self.full_W_layers else ("LoRA" if self.lora_rank_per_layer[j] else "frozen")
            lines.append(f"{j:5d}  {self.channels_per_layer[j]:8d}  {self.tuned_states_per_channel:9d}  "
                         f"{self.lora_rank_per_layer[j]:9d}  {w}")
        lines.append(f"paper budget ⌈D·L*/L⌉ = {self.paper_channels}; used: {self.max_channels} channels, "
                     f"LoRA rank {self.max_lora_rank}")
        other = "".join(f", {k} {v}" for k, v in self.other.items())
        lines.append(f"trainable: SSM {self.ssm_tuned}, LoRA {self.lora_params}, full W {self.full_W_params}, "
                     f"u {self.residual_params}, β {self.bias_params}{other} -> {self.total_trainable} "
                     f"of {self.model_params} ({self.percent:.1f}%); pruned SSM scalars {self.ssm_pruned}")
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)


@dataclass(frozen=True)
class Theorem1Update:
    """The updated model, the per-layer record and the budget."""

    model: DeepSSM
    layers: Tuple[LayerUpdate, ...]
    budget: Theorem1Budget


# ------------------------------------------------------------------------------------ pure pieces
def routing_update(W0: Tensor, G_eff: Tensor, S_next: Tuple[int, ...]) -> Tuple[Tensor, Tensor, str]:
    """Low-rank ``ΔW = lora_B @ lora_A`` with ``(W0 + ΔW) G_eff`` the identity on the block ``S_next``.

    W0, G_eff: (D, D), G_eff invertible. Conditions: ``W V = E`` with ``V = G_eff[:, S]``, and
    ``E^T W = E^T G_eff^{-1}``. With ``R1 = E − W0 V`` (D, s), ``R2 = E^T G_eff^{-1} − E^T W0`` (s, D):
    ``ΔW = R1 (E^T R1)^{-1} R2`` (rank s). If ``E^T R1`` is ill-conditioned (non-generic), the fallback
    ``ΔW = R1 V^+ + E (R2 − E^T R1 V^+)(I − V V^+)`` (rank ≤ 2s) is used. Returns (lora_A (r, D), lora_B (D, r), note).
    """
    D = W0.shape[0]
    S = list(S_next)
    s = len(S)
    if s == 0:
        return W0.new_zeros(0, D), W0.new_zeros(D, 0), ""
    E = torch.zeros(D, s, dtype=W0.dtype)
    E[S, torch.arange(s)] = 1.0  # (D, s)
    V = G_eff[:, S]  # (D, s)
    Ginv_rows = torch.linalg.solve(G_eff.T, E).T  # (s, D) = E^T G_eff^{-1}
    R1 = E - W0 @ V  # (D, s)
    R2 = Ginv_rows - E.T @ W0  # (s, D)
    core = E.T @ R1  # (s, s)
    if torch.linalg.cond(core) < _COND_MAX:
        return torch.linalg.solve(core, R2), R1, ""  # lora_A = core^{-1} R2 (s, D), lora_B = R1 (D, s)
    Vp = torch.linalg.pinv(V)  # (s, D)
    proj = torch.eye(D, dtype=W0.dtype) - V @ Vp
    lora_B = torch.cat([R1, E], dim=1)  # (D, 2s)
    lora_A = torch.cat([Vp, (R2 - E.T @ R1 @ Vp) @ proj], dim=0)  # (2s, D)
    return lora_A, lora_B, "rank-2s fallback (E^T R1 ill-conditioned)"


def _block_structured(G: Tensor, S) -> bool:
    """``G[S, :] = E_S^T`` and ``G[:, S] = E_S`` up to rounding."""
    S = list(S)
    if not S:
        return True
    D = G.shape[0]
    E = torch.eye(D, dtype=G.dtype)[:, S]
    tol = DEEP_RTOL[torch.float64] * max(1.0, float(G.abs().max()))  # G is a product of up to L solves
    return bool(((G[S, :] - E.T).abs().max() <= tol) and ((G[:, S] - E).abs().max() <= tol))


# ------------------------------------------------------------------------------------ validation
def _validate(frozen: DeepSSM, target: DeepSSM, target_residual: bool = False) -> None:
    for name, m in (("frozen", frozen), ("target", target)):
        if not isinstance(m, DeepSSM):
            raise ValueError(f"{name}: expected a DeepSSM, got {type(m).__name__}")
        if m.activation != "identity":
            raise ValueError(f"{name}: Theorem 1 needs linear activations (activation='identity'), got "
                             f"{m.activation!r}")
        if m.layers[0].W.dtype != torch.float64:
            raise ValueError(f"{name}: the construction is checked in float64, got {m.layers[0].W.dtype}")
    if frozen.kind != target.kind:
        raise ValueError(f"target: kind {target.kind!r} must match the frozen model's {frozen.kind!r}")
    if frozen.D != target.D:
        raise ValueError(f"target: D = {target.D} must equal the frozen model's D = {frozen.D}")
    if not target.L < frozen.L:
        raise ValueError(f"target: needs L* < L, got L* = {target.L}, L = {frozen.L}")
    H, H_star = frozen.layers[0].ssm.H, target.layers[0].ssm.H
    if H_star > H:
        raise ValueError(f"target: needs H* <= H, got H* = {H_star}, H = {H}")
    if target_residual and not (frozen.kind == "s4" and frozen.skip == "inside"):
        raise ValueError("target_residual: a target with a residual is handled for deep S4 with the skip inside "
                         f"only (kind 's4', skip 'inside'), got kind {frozen.kind!r}, skip {frozen.skip!r}")
    for l, layer in enumerate(target.layers):
        if bool((layer.u != 0).any()) and not target_residual:
            raise ValueError(f"target: layer {l} has a residual (u != 0); Theorem 1's target has none "
                             "(target_residual=True handles the experiment's skip-inside target)")
    if frozen.kind == "s4":
        forms = {m.layers[0].ssm.conj_pairs for m in (frozen, target)}
        if len(forms) != 1:
            raise ValueError("target: frozen and target must both be real diagonal or both conjugate-pair SSMs")
        for j, layer in enumerate(frozen.layers):
            b = layer.ssm.B_bar[:, :H_star].abs()
            if bool((b <= _B_MIN * max(1.0, float(layer.ssm.B_bar.abs().max()))).any()):
                raise ValueError(f"frozen: layer {j} has B_bar entries ~0 among the first H* states; "
                                 "C = C* B̄*/B̄ needs every tuned b_i != 0 (genericity assumption)")
    else:
        R, R_star = frozen.layers[0].ssm.R, target.layers[0].ssm.R
        if R_star > R:
            raise ValueError(f"target: needs dt rank R* <= R, got R* = {R_star}, R = {R}")


def _model_params(m: DeepSSM) -> int:
    total = 0
    for layer in m.layers:
        s = layer.ssm
        if isinstance(s, DiagonalSSM):
            total += 3 * s.A_bar.numel() * (2 if s.conj_pairs else 1)  # complex entries: two reals each
        else:
            total += s.A_log.numel() + s.x_proj.numel() + s.dt_proj_weight.numel() + s.dt_proj_bias.numel()
        total += layer.W.numel() + layer.beta.numel() + layer.u.numel()
    return total


# ------------------------------------------------------------------------------------ S4
def _tuned_s4(frozen_ssm: DiagonalSSM, target_ssm: DiagonalSSM, channels, H_star: int) -> Tuple[DiagonalSSM, SDTMask]:
    """SDT-P on one S4 module: channels listed get the target channel's states in their first H*
    slots (``a = a*``, ``c = c* b*/b``, ``B̄`` frozen), the rest of their states and every other channel are pruned."""
    D, H = frozen_ssm.A_bar.shape
    a, b, c = (t.clone() for t in (frozen_ssm.A_bar, frozen_ssm.B_bar, frozen_ssm.C))
    ch = list(channels)
    mask = sdt_mask(D, H, ch, [list(range(H_star))] * len(ch), prune_rest=True,
                    prune_channels=[d for d in range(D) if d not in set(ch)])
    pruned = mask.pruned
    a[pruned], b[pruned], c[pruned] = 0.0, 0.0, 0.0
    for d in ch:
        a[d, :H_star] = target_ssm.A_bar[d]
        c[d, :H_star] = target_ssm.C[d] * target_ssm.B_bar[d] / frozen_ssm.B_bar[d, :H_star]
    return DiagonalSSM(a, b, c), mask


def _construct_s4_inside(frozen: DeepSSM, target: DeepSSM, target_residual: bool = False):
    L, D, Ls = frozen.L, frozen.D, target.L
    H_star = target.layers[0].ssm.H
    sizes = group_sizes(L, Ls)
    plan = []  # (global layer, target layer, block)
    for l, M in enumerate(sizes):
        for blk in channel_blocks(D, M):
            plan.append((len(plan), l, blk))
    G = torch.eye(D, dtype=torch.float64)  # coordinates of the signal entering layer j
    layers, records = [], []
    for j, l, blk in plan:
        f = frozen.layers[j]
        t = target.layers[l]
        if not _block_structured(G, blk):  # guaranteed by the previous routing update; checked, not assumed
            raise RuntimeError(f"internal: coordinates not block-structured at layer {j}")
        ssm, mask = _tuned_s4(f.ssm, t.ssm, blk, H_star)
        u = torch.ones(D, dtype=torch.float64)
        # processed channels: the target channel's operator K* + u* δ_0 (u* = 0 for Theorem 1's target); others pass through
        u[list(blk)] = t.u[list(blk)] if target_residual else 0.0
        last_in_group = (j + 1 == len(plan)) or plan[j + 1][1] != l
        G_eff = torch.linalg.solve(t.W.T, G.T).T if last_in_group else G  # G (W*_l)^{-1}
        if j == L - 1:  # condition (3): the model's last projection is set in full
            W = t.W @ torch.linalg.inv(G)
            beta = t.beta.clone()
            lora_A = lora_B = None
            full, note = True, "last projection replaced in full"
        else:
            lora_A, lora_B, note = routing_update(f.W, G_eff, plan[j + 1][2])
            W = f.W + lora_B @ lora_A
            G = W @ G_eff
            beta = G @ t.beta if last_in_group else torch.zeros(D, dtype=torch.float64)
            full = False
        layers.append(DeepLayer(ssm, W, beta, u))
        records.append(LayerUpdate(j, l, tuple(blk), tuple(d for d in range(D) if d not in blk), mask,
                                   lora_A, lora_B, full, note))
    return layers, records, sizes


def _construct_s4_outside(frozen: DeepSSM, target: DeepSSM):
    L, D, Ls = frozen.L, frozen.D, target.L
    H_star = target.layers[0].ssm.H
    sizes = group_sizes(L, Ls)
    layers, records, j = [], [], 0
    for l, M in enumerate(sizes):
        t = target.layers[l]
        for m in range(M):
            f = frozen.layers[j]
            process = m == M - 1
            blk = tuple(range(D)) if process else ()
            ssm, mask = _tuned_s4(f.ssm, t.ssm, blk, H_star)
            if process:
                W, beta, u = t.W.clone(), t.beta.clone(), torch.zeros(D, dtype=torch.float64)
                note = "all D channels processed here; W replaced by W*" + (" (last projection)" if j == L - 1 else "")
            else:  # identity layer: every kernel pruned, u = 1, W untouched (it multiplies a zero signal)
                W, beta, u = f.W.clone(), torch.zeros(D, dtype=torch.float64), torch.ones(D, dtype=torch.float64)
                note = "pass-through"
            layers.append(DeepLayer(ssm, W, beta, u))
            records.append(LayerUpdate(j, l, blk, tuple(d for d in range(D) if d not in blk), mask,
                                       None, None, process, note))
            j += 1
    return layers, records, sizes


def _s4_budget(frozen, target, records, sizes, skip) -> Theorem1Budget:
    L, D, Ls = frozen.L, frozen.D, target.L
    H, H_star = frozen.layers[0].ssm.H, target.layers[0].ssm.H
    cx = 2 if frozen.layers[0].ssm.conj_pairs else 1  # real scalars per entry (complex: two)
    ranks = tuple(r.lora_rank for r in records)
    full = tuple(r.layer for r in records if r.full_W)
    q = L // Ls
    if skip == "inside":
        note = (f"skip inside: ⌈D/⌊L/L*⌋⌉ = {math.ceil(D / q)} channels and LoRA rank per layer "
                f"(paper's ⌈D·L*/L⌉ = {math.ceil(D * Ls / L)}"
                + ("; equal since L* divides L)" if L % Ls == 0 else "; larger since L* does not divide L)"))
    else:
        note = ("skip outside: pass-through channels are not mixed by W, so each group processes all "
                "D channels in one layer with W = W* (full-rank update) — weaker than the paper's budget")
    return Theorem1Budget(
        kind="s4", skip=skip, L=L, L_star=Ls, D=D, H=H, H_star=H_star, group_sizes=sizes,
        channels_per_layer=tuple(len(r.channels) for r in records), tuned_states_per_channel=H_star,
        lora_rank_per_layer=ranks, full_W_layers=full,
        ssm_tuned=sum(2 * cx * H_star * len(r.channels) for r in records),  # a and c of each tuned state
        ssm_pruned=sum(3 * cx * int(r.mask.pruned.sum()) for r in records),  # a, b, c of each pruned entry
        lora_params=sum(2 * D * k for k in ranks), full_W_params=D * D * len(full),
        residual_params=L * D, bias_params=L * D, model_params=_model_params(frozen),
        paper_channels=math.ceil(D * Ls / L), note=note)


# ------------------------------------------------------------------------------------ S6
def s6_obstruction_note(D: int, H_star: int, R_star: int, s: int) -> str:
    """The dimension count behind the S6 obstruction (one frozen layer processes ``s < D`` channels).

    After the first block is processed, the next layer's input ``v_t ∈ R^D`` is a linear image of the
    signals ``(x_t, z_t)`` (``z`` = the processed block, ``s`` signals, not linear in ``x``). The next
    layers need, as linear functionals of ``v_t``: the raw unprocessed channels (``D − s``), the target's
    ``W_B* x_t, W_C* x_t, W_Δ↓* x_t`` restricted to the processed block's raw channels
    (``min(2H*+R*, s)`` more, for a generic target), and ``z`` itself (``s``). That is
    ``D + min(2H*+R*, s) > D`` independent functionals of a ``D``-dimensional vector.
    """
    need = D + min(2 * H_star + R_star, s)
    return (f"S6 obstruction: layer input has D = {D} coordinates but the remaining work needs "
            f"{need} independent linear functionals of (x_t, z_t) (D − s raw channels, "
            f"min(2H*+R*, s) = {min(2 * H_star + R_star, s)} target-projection directions of the processed "
            f"channels' raw inputs, s = {s} processed signals)")


def _s6_embed(f: S6Params, t: S6Params) -> S6Params:
    """The frozen S6 with the target's S6 embedded: first H* states and R* dt-ranks, the rest switched off."""
    Hs, Rs = t.H, t.R
    A_log = f.A_log.clone()
    A_log[:, :Hs] = t.A_log
    W_down = torch.zeros_like(f.W_dt_down)
    W_down[:Rs] = t.W_dt_down
    W_B = torch.zeros_like(f.W_B)
    W_B[:Hs] = t.W_B
    W_C = torch.zeros_like(f.W_C)
    W_C[:Hs] = t.W_C
    W_up = torch.zeros_like(f.dt_proj_weight)
    W_up[:, :Rs] = t.dt_proj_weight
    return S6Params.from_parts(A_log, W_down, W_B, W_C, W_up, t.dt_proj_bias.clone())


def _s6_off(f: S6Params) -> S6Params:
    """The frozen S6 with ``W_C = 0``: every channel's output ``C_t · h_t`` is 0."""
    x_proj = f.x_proj.clone()
    x_proj[f.R + f.H:] = 0.0
    return S6Params(f.A_log.clone(), x_proj, f.dt_proj_weight.clone(), f.dt_proj_bias.clone())


def _construct_s6(frozen: DeepSSM, target: DeepSSM):
    L, D, Ls, skip = frozen.L, frozen.D, target.L, frozen.skip
    sizes = group_sizes(L, Ls)
    layers: List[Optional[DeepLayer]] = [None] * L
    records: List[Optional[LayerUpdate]] = [None] * L
    j0 = 0
    for l, M in enumerate(sizes):
        t = target.layers[l]
        idx = list(range(j0, j0 + M))
        proc = idx[-1] if skip == "outside" else idx[0]
        if skip == "inside":  # W_proc absorbs the frozen projections of the pass-through layers after it
            P = torch.eye(D, dtype=torch.float64)
            for j in idx[1:]:
                P = frozen.layers[j].W @ P
            W_proc = torch.linalg.solve(P, t.W)
            beta_proc = torch.linalg.solve(P, t.beta)
        else:
            W_proc, beta_proc = t.W.clone(), t.beta.clone()
        for j in idx:
            f = frozen.layers[j]
            if j == proc:
                layers[j] = DeepLayer(_s6_embed(f.ssm, t.ssm), W_proc, beta_proc, torch.zeros(D, dtype=torch.float64))
                records[j] = LayerUpdate(j, l, tuple(range(D)), (), None, None, None, True,
                                         "target S6 embedded in all D channels; W replaced in full")
            else:
                layers[j] = DeepLayer(_s6_off(f.ssm), f.W.clone(), torch.zeros(D, dtype=torch.float64),
                                      torch.ones(D, dtype=torch.float64))
                records[j] = LayerUpdate(j, l, (), (), None, None, None, False, "S6 off (W_C = 0), u = 1")
        j0 += M
    return layers, records, sizes


def _s6_budget(frozen, target, records, sizes, updated_layers) -> Theorem1Budget:
    L, D, Ls = frozen.L, frozen.D, target.L
    f0 = frozen.layers[0].ssm
    H, R, Hs, Rs = f0.H, f0.R, target.layers[0].ssm.H, target.layers[0].ssm.R
    n_proc = sum(1 for r in records if r.channels)
    n_off = L - n_proc
    other = {
        "A_log": n_proc * D * Hs,
        "x_proj (processing layers)": n_proc * (R + 2 * H) * D,
        "dt_proj weight+bias (processing layers)": n_proc * (D * R + D),
        "W_C rows zeroed (pass-through layers)": n_off * H * D,
    }
    return Theorem1Budget(
        kind="s6", skip=frozen.skip, L=L, L_star=Ls, D=D, H=H, H_star=Hs, group_sizes=sizes,
        channels_per_layer=tuple(len(r.channels) for r in records), tuned_states_per_channel=Hs,
        lora_rank_per_layer=tuple(0 for _ in records), full_W_layers=tuple(r.layer for r in records if r.full_W),
        ssm_tuned=0, ssm_pruned=0, lora_params=0, full_W_params=D * D * n_proc,
        residual_params=L * D, bias_params=L * D, other=other, model_params=_model_params(frozen),
        paper_channels=math.ceil(D * Ls / L),
        note=("S6 weaker budget: all D channels in one layer per group, its W and the S6 projections "
              "replaced in full; " + s6_obstruction_note(D, Hs, Rs, math.ceil(D * Ls / L))))


# ------------------------------------------------------------------------------------ entry point
def construct_theorem1(frozen: DeepSSM, target: DeepSSM, *, target_residual: bool = False) -> Theorem1Update:
    """Update ``frozen`` (L layers, H states, linear, residual, bias) so that it equals ``target``
    (L* < L layers, H* <= H states, no residual) on every input. Returns the updated model, the
    per-layer record and the budget. See the module docstring for which budget each
    ``(kind, skip)`` gets and why.

    S4 modules may be real diagonal or conjugate-pair (the experiment's form: each stored mode carries its
    conjugate, and copying ``(a*, c* b*/b)`` per stored mode copies the pair). ``target_residual=True`` (deep
    S4, skip inside only) accepts a target with a residual ``u* != 0``, as the synthetic experiment's target
    (``y = W*(K* x + u* ⊙ x) + β*``): a processed channel then takes ``u = u*`` instead of 0, so it applies
    the target channel's operator ``K* + u* δ_0``; the budget is unchanged (``u`` is trained anyway)."""
    _validate(frozen, target, target_residual)
    check_choice("frozen.skip", frozen.skip, ("inside", "outside"))
    if frozen.kind == "s4":
        if frozen.skip == "inside":
            layers, records, sizes = _construct_s4_inside(frozen, target, target_residual)
        else:
            layers, records, sizes = _construct_s4_outside(frozen, target)
        budget = _s4_budget(frozen, target, records, sizes, frozen.skip)
    else:
        layers, records, sizes = _construct_s6(frozen, target)
        budget = _s6_budget(frozen, target, records, sizes, None)
    model = DeepSSM(tuple(layers), activation="identity", skip=frozen.skip)
    return Theorem1Update(model, tuple(records), budget)


def random_instance(L: int, L_star: int, D: int, H: int, H_star: int, *, kind: str = "s4", skip: str = "inside",
                    R: int = 2, generator: Optional[torch.Generator] = None) -> Tuple[DeepSSM, DeepSSM]:
    """A random frozen model (residual, bias) and a random target (no residual), float64, linear."""
    frozen = random_deep(L, D, H, kind=kind, R=R, skip=skip, residual=True, bias=True, generator=generator)
    target = random_deep(L_star, D, H_star, kind=kind, R=max(1, R - 1) if kind == "s6" else R, skip=skip,
                         residual=False, bias=True, generator=generator)
    return frozen, target


# ------------------------------------------------------------------------------------ rank lower bound
def zero_block_bounds(frozen: DeepSSM, update: Theorem1Update) -> List[Dict[str, float]]:
    """The LoRA rank lower bound behind the finding (skip inside, S4).

    Inside a group, if layer ``m`` processes positions ``P_m`` and layer ``m+1`` processes ``P_{m+1}``,
    every exact update has ``W_m[P_{m+1}, P_m] = 0``: otherwise processed content (``K*`` applied) enters a
    position whose kernel is applied next, and the product of two non-constant kernels has poles no
    target entry has (generic target). Hence ``ΔW_m[P_{m+1}, P_m] = −W0_m[P_{m+1}, P_m]`` and
    ``rank ΔW_m ≥ rank W0_m[P_{m+1}, P_m] = min(|P_m|, |P_{m+1}|)`` for generic frozen weights; when
    ``M = L/L*`` divides ``D`` every block has ``D/M`` channels, so the rank is at least ``D·L*/L``.
    Returns one record per consecutive processing pair: layer, the bound (rank of the frozen block),
    the LoRA rank used, and ``max |W[P_{m+1}, P_m]|`` in the updated model (0 up to rounding).
    """
    out = []
    recs = update.layers
    for m in range(len(recs) - 1):
        r0, r1 = recs[m], recs[m + 1]
        if r0.target_layer != r1.target_layer or not r0.channels or not r1.channels:
            continue
        P0, P1 = list(r0.channels), list(r1.channels)
        block0 = frozen.layers[m].W[P1][:, P0]
        out.append({"layer": m, "bound": int(torch.linalg.matrix_rank(block0)), "lora_rank": r0.lora_rank,
                    "updated_block_max": float(update.model.layers[m].W[P1][:, P0].abs().max())})
    return out
