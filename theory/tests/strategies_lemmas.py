"""Hypothesis strategies for Proposition 1 and Lemmas 1-2: small, bounded, well-conditioned instances.

Why separated eigenvalues: the constructions invert Vandermonde systems (Proposition 1) or test
"is this eigenvalue already the target's" (Lemma 2); generic random draws can put two ``a_i``
1e-4 apart, where the exact algebra still holds but a float64 check at 1e-9 measures the
conditioning of the instance, not the construction. Drawing ``a_i`` from a jittered grid of
spacing 0.1 keeps every gap >= 0.06, and ``|b_i| ∈ [0.5, 1.5]`` keeps the gains away from 0.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from theory.lemma2 import planted_channel
from theory.ssm import DiagonalSSM
from theory.tests.strategies import dims, generator, seeds

F64 = torch.float64
_GRID = torch.linspace(-0.9, 0.9, 19, dtype=F64)  # spacing 0.1


def separated_eigenvalues(g: torch.Generator, D: int, H: int, exclude_zero: bool = True) -> torch.Tensor:
    """(D, H) real ``a`` in (−0.92, 0.92), pairwise gaps >= 0.06 per channel; ``|a| >= 0.08`` if
    ``exclude_zero`` (the grid point 0 is skipped)."""
    grid = _GRID[_GRID.abs() > 0.05] if exclude_zero else _GRID
    rows = []
    for _ in range(D):
        idx = torch.randperm(grid.numel(), generator=g)[:H]
        rows.append(grid[idx] + 0.02 * (2 * torch.rand(H, generator=g, dtype=F64) - 1))
    return torch.stack(rows)  # (D, H)


def bounded_gains(g: torch.Generator, *shape) -> torch.Tensor:
    """Entries with random sign and magnitude in [0.5, 1.5]."""
    sign = torch.where(torch.rand(*shape, generator=g) < 0.5, -1.0, 1.0).to(F64)
    return sign * (0.5 + torch.rand(*shape, generator=g, dtype=F64))


@st.composite
def separated_ssms(draw, D=None, H=None) -> DiagonalSSM:
    """Real diagonal SSM with separated eigenvalues and bounded non-zero gains."""
    D = draw(dims(1, 4)) if D is None else D
    H = draw(dims(1, 6)) if H is None else H
    g = generator(draw(seeds()))
    a = separated_eigenvalues(g, D, H)
    return DiagonalSSM(a, bounded_gains(g, D, H), torch.randn(D, H, generator=g, dtype=F64))


@st.composite
def lemma2_instances(draw, H=None, H_star=None, kinds=None, H_max=6):
    """One channel with planted structure (see :func:`theory.lemma2.planted_channel`): returns
    ``(params, planted_cost)`` with params = dict(a, b, c, a_star, b_star, c_star)."""
    H = draw(dims(1, H_max)) if H is None else H
    H_star = draw(dims(1, H)) if H_star is None else H_star
    if kinds is None:
        kinds = draw(st.lists(st.integers(0, 3), min_size=H_star, max_size=H_star))
    return planted_channel(H, H_star, generator(draw(seeds())), kinds=kinds)
