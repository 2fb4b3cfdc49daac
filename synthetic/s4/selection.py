"""SDT dimension selection, Algorithm 1 of Galim et al. (ICML 2025), steps 2-3, for S4 layers.

Pure functions on arrays. Inputs are one layer's discrete ``Ā`` before and after the warm-up
(step 1, run by the experiment on a copy of the frozen model), plus ``C`` and ``B̄`` for the
magnitude rule. Output: an :class:`theory.peft.SDTMask` over (channel, state) with the selected
entries TRAINABLE and the rest FROZEN (SDT: no pruning), or, with :func:`select_pruned`, the
official code's variant that also PRUNES ``C`` outside the "usable" dimensions (see its docstring).

1. change score of state ``i`` in channel ``d``: ``|Ā_after[d,i] − Ā_before[d,i]|``; of channel
   ``d``: the Euclidean norm of its states' changes (``‖ΔĀ^(d)‖``).
2. magnitude (the official code's usability rule): ``m[d,i] = |C_i B̄_i Ā_i^{N/2}|`` (the size of the
   mode's kernel contribution half-way along the sequence; channel: the norm over states). Entries
   whose magnitude is below ``magnitude_floor`` times the layer's largest are "unusable" and ranked
   after every usable one; otherwise the change score decides.
3. keep the top ``n_channels`` channels, and in each the top ``n_states`` states.

Complex (conjugate-pair) ``Ā`` is given as one member per pair, as in ``theory.ssm``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from theory._validate import check_int, check_tensor
from theory.peft import Role, SDTMask, sdt_mask

Tensor = torch.Tensor


@dataclass(frozen=True)
class SDTRanking:
    """Channel order (D,) and, per channel, state order (D, H), best first; plus the scores used."""

    channel_order: Tensor  # (D,) long
    state_order: Tensor  # (D, H) long
    channel_change: Tensor  # (D,)
    state_change: Tensor  # (D, H)
    state_magnitude: Tensor  # (D, H)


def _order(change: Tensor, usable: Tensor) -> Tensor:
    """Indices sorting by (usable first, then change descending) along the last axis; stable."""
    key = change.to(torch.float64) + usable.to(torch.float64) * (1.0 + change.abs().max().to(torch.float64)) * 2
    return torch.argsort(key, dim=-1, descending=True, stable=True)


def rank_dimensions(A_bar_before: Tensor, A_bar_after: Tensor, C: Tensor, B_bar: Tensor, N: int,
                    magnitude_floor: float = 1e-3) -> SDTRanking:
    """Rank channels and states of one layer (steps 1-2 above).

    A_bar_before, A_bar_after, C, B_bar: (D, H), real or complex. N: sequence length (for Ā^{N/2}).
    """
    dims: dict = {}
    for name, t in (("A_bar_before", A_bar_before), ("A_bar_after", A_bar_after), ("C", C), ("B_bar", B_bar)):
        check_tensor(name, t, shape=("D", "H"), dims=dims)
    check_int("N", N, lo=1)
    state_change = (A_bar_after - A_bar_before).abs()  # (D, H)
    channel_change = torch.linalg.vector_norm(state_change, dim=1)  # (D,)
    mag = (C * B_bar * A_bar_before ** (N // 2)).abs()  # (D, H)
    floor = magnitude_floor * mag.max()
    usable_state = mag >= floor
    usable_channel = torch.linalg.vector_norm(mag, dim=1) >= floor
    return SDTRanking(_order(channel_change, usable_channel), _order(state_change, usable_state),
                      channel_change, state_change, mag)


def select(ranking: SDTRanking, n_channels: int, n_states: int) -> SDTMask:
    """Step 3: top ``n_channels`` channels, and in each its top ``n_states`` states -> SDTMask (D, H)."""
    D, H = ranking.state_order.shape
    check_int("n_channels", n_channels, lo=0, hi=D)
    check_int("n_states", n_states, lo=0, hi=H)
    chans = ranking.channel_order[:n_channels].tolist()
    states = [ranking.state_order[c, :n_states].tolist() for c in chans]
    return sdt_mask(D, H, chans, states)


def select_pruned(ranking: SDTRanking, n_channels: int, n_states: int, usable_channels: int,
                  usable_states: int) -> SDTMask:
    """The official code's SDT ("ours", hard mode, magnitude warm-up; ``S4/run_s4.py``
    ``get_ssm_our_adapter_hard_magnitude`` / ``select_dims_hard`` / ``get_ssm_our_adapter``).

    1. usable channels: the top ``usable_channels`` channels by magnitude ``‖m[d, :]‖``
       (``select_channels_dim``); in each channel the usable states are its top ``usable_states``
       states by ``m[d, i]`` (``select_states_dim``), ``m = |C B̄ Ā^{N/2}|`` as in
       :func:`rank_dimensions`.
    2. updated channels: the top ``n_channels`` usable channels by change (this module's change
       order); in each, the top ``n_states`` of its usable states by change -> TRAINABLE.
    3. PRUNED (``C`` set to zero, never trained): every state of a non-usable channel, and the
       non-usable states of an updated channel (the official code prunes states only in updated
       channels; usable channels that are not updated keep all their states, FROZEN).

    Roles apply to ``C``; for ``A`` a pruned entry is simply frozen (the official code zeroes C only).
    ``usable_channels``/``usable_states`` of 0 mean "all".
    """
    D, H = ranking.state_order.shape
    uc = D if usable_channels == 0 else usable_channels
    us = H if usable_states == 0 else usable_states
    check_int("usable_channels", uc, lo=1, hi=D)
    check_int("usable_states", us, lo=1, hi=H)
    check_int("n_channels", n_channels, lo=0, hi=uc)
    check_int("n_states", n_states, lo=0, hi=us)
    mag = ranking.state_magnitude.to(torch.float64)
    ch_mag = torch.linalg.vector_norm(mag, dim=1)
    usable_ch = torch.argsort(ch_mag, descending=True, stable=True)[:uc].tolist()
    usable_st = torch.argsort(mag, dim=1, descending=True, stable=True)[:, :us]  # (D, us)
    chans = [c for c in ranking.channel_order.tolist() if c in set(usable_ch)][:n_channels]
    states = []
    for c in chans:
        ok = set(usable_st[c].tolist())
        states.append([s for s in ranking.state_order[c].tolist() if s in ok][:n_states])
    m = sdt_mask(D, H, chans, states, prune_channels=[c for c in range(D) if c not in set(usable_ch)])
    roles = m.roles.clone()
    for c in chans:  # non-usable states of updated channels: pruned
        bad = torch.ones(H, dtype=torch.bool)
        bad[usable_st[c]] = False
        roles[c, bad] = int(Role.PRUNED)
    return SDTMask(roles)
