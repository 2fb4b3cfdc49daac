"""The official code's SDT rule for Mamba (furiosa-ai/ssm-peft ``mamba_ssm_peft/peft/sd_lora.py``), beside
the toolkit's own (:func:`synthetic.mamba.peft.abar_change_scores` + :func:`synthetic.mamba.peft.select_channels`):
``--sdt-rule official`` warms up ``A_log`` (and the projections), then keeps the channels whose ``A_log``
changed most and, with ``--sdt-state-freeze``, the states that changed most within each (notes/mamba.md)."""

from __future__ import annotations

from typing import List, Tuple

import torch

from synthetic.mamba.peft import select_channels

Tensor = torch.Tensor

SDT_RULES = ("ours", "official")  # --sdt-rule: the toolkit's Algorithm 1 for S6, or the official code's


def official_select(delta_a_log: Tensor, n_channels: int, n_states: int = 0) -> Tuple[List[int], List[List[int]]]:
    """The official SDLoRA selection (furiosa-ai/ssm-peft ``sd_lora.py``), facts re-implemented.

    delta_a_log: (D, H) change of ``A_log`` learnt in the warm-up. Channels: the ``n_channels``
    largest ``Σ_h δ[d, h]²``; per selected channel, the ``n_states`` largest ``δ[d, h]²`` (0 = all H).
    Ties go to the lower index. Returns (channels ascending, states per channel ascending).
    """
    if delta_a_log.dim() != 2:
        raise ValueError(f"delta_a_log: expected (D, H), got shape {tuple(delta_a_log.shape)}")
    D, H = delta_a_log.shape
    if not 0 <= n_states <= H:
        raise ValueError(f"n_states: must be in [0, {H}], got {n_states}")
    sq = delta_a_log.detach().double().square().cpu()
    channels = select_channels(sq.sum(dim=1), n_channels)
    states = [select_channels(sq[c], n_states or H) for c in channels]
    return channels, states


def official_counts(D: int, H: int, channel_freeze: float, state_freeze: float) -> Tuple[int, int]:
    """(channels, states) trained per layer by the official rule: ``D − round(f_d·D)``, ``H − round(f_n·H)``."""
    for name, f in (("channel_freeze", channel_freeze), ("state_freeze", state_freeze)):
        if not 0.0 <= f < 1.0:
            raise ValueError(f"{name}: must be in [0, 1), got {f!r}")
    return max(1, D - int(round(channel_freeze * D))), max(1, H - int(round(state_freeze * H)))
