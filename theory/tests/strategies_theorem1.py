"""Hypothesis strategies for Theorem 1: layer counts (including L* not dividing L), widths, states."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from theory.tests.strategies import seeds


@dataclass(frozen=True)
class Sizes:
    L: int
    L_star: int
    D: int
    H: int
    H_star: int
    seed: int


@st.composite
def theorem1_sizes(draw, max_L: int = 5, max_D: int = 5, max_H: int = 3, min_D: int = 1) -> Sizes:
    """(L, L*, D, H, H*) with 1 <= L* < L <= max_L (divisible or not), 1 <= H* <= H, and a seed."""
    L_star = draw(st.integers(1, max_L - 1))
    L = draw(st.integers(L_star + 1, max_L))
    D = draw(st.integers(min_D, max_D))
    H = draw(st.integers(1, max_H))
    H_star = draw(st.integers(1, H))
    return Sizes(L, L_star, D, H, H_star, draw(seeds()))
