"""Theorem 1's layout and parameter counts (Galim et al., ICML 2025, Sec. 5): which frozen layers serve
which target layer, which channels each layer processes, and the dimension counts that compare a budget
with the target family.

Pure integer functions shared by the construction (``theorem1.py``) and the expressivity probe
(``capacity_probe.py``); both import from here, neither from the other.
"""

from __future__ import annotations

from typing import List, Tuple

from ._validate import check_int


def group_sizes(L: int, L_star: int) -> Tuple[int, ...]:
    """Sizes of ``L*`` contiguous groups covering ``L`` layers: ``L mod L*`` groups of ``⌈L/L*⌉``, rest ``⌊L/L*⌋``."""
    L_star = check_int("L_star", L_star, lo=1)
    L = check_int("L", L, lo=L_star)
    q, rem = divmod(L, L_star)
    return tuple([q + 1] * rem + [q] * (L_star - rem))


def channel_blocks(D: int, M: int) -> List[Tuple[int, ...]]:
    """Split channels ``0..D-1`` into ``M`` contiguous blocks of sizes ``⌈D/M⌉`` or less (some empty if M > D)."""
    base, rem = divmod(D, M)
    out, start = [], 0
    for m in range(M):
        n = base + (1 if m < rem else 0)
        out.append(tuple(range(start, start + n)))
        start += n
    return out


def target_dim_formula(D: int, L_star: int, H_star: int) -> int:
    """Dimension of the target family, ``L*(D² + 2H*D) − (L*−1)·D``: per layer W*, β*, a*, b*c*, less one
    kernel/W-column scale per channel, and per interior boundary one more diagonal gauge (rows of
    ``W*_l, β*_l`` scaled by ``t``, the next layer's kernels by ``1/t``). Checked against the Jacobian rank by the tests."""
    return L_star * (D * D + 2 * H_star * D) - (L_star - 1) * D


def free_dim_formula(D: int, L: int, L_star: int, H_star: int, rank: int) -> int:
    """Free scalars of the construction's layout with LoRA rank r (rank-r matrices counted as ``2Dr − r²``)."""
    blocks = [b for M in group_sizes(L, L_star) for b in channel_blocks(D, M)]
    return sum(2 * H_star * len(b) + 2 * D for b in blocks) + (L - 1) * (2 * D * rank - rank**2) + D * D


def smallest_count_feasible_rank(D: int, L: int, L_star: int, H_star: int) -> int:
    """The smallest r whose free-parameter count reaches the target dimension (a necessary condition)."""
    for r in range(0, D + 1):
        if free_dim_formula(D, L, L_star, H_star, r) >= target_dim_formula(D, L_star, H_star):
            return r
    return D + 1


def budget_shapes(blocks, L: int, D: int, H_star: int, rank: int) -> List[Tuple[str, int, Tuple[int, ...]]]:
    """The trainable tensors of the probe's budget, in order: per layer ``j`` the tuned block's ``a``, ``c``
    (|block| x H*), the skip ``u`` and bias ``beta`` (D,), then the last layer's full ``W`` (D x D) or, before it,
    the LoRA factors of rank ``rank`` (none for rank 0). Shared by the float64 probe and its exact twin."""
    shapes: List[Tuple[str, int, Tuple[int, ...]]] = []
    for j, blk in enumerate(blocks):
        s = len(blk)
        shapes += [("a", j, (s, H_star)), ("c", j, (s, H_star)), ("u", j, (D,)), ("beta", j, (D,))]
        if j == L - 1:
            shapes.append(("W", j, (D, D)))
        elif rank:
            shapes += [("lora_A", j, (rank, D)), ("lora_B", j, (D, rank))]
    return shapes
