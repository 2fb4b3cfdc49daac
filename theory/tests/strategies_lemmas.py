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

from theory.ssm import DiagonalSSM
from theory.strategies import dims, generator, seeds

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
def lemma2_instances(draw, H=None, H_star=None, planted=True):
    """One channel: frozen ``(a, b, c)`` (H,) and target ``(a*, b*, c*)`` (H*,), H* <= H.

    With ``planted``, each target state is, at random, (0) generic, (1) copied exactly into a frozen
    state, (2) given the same ``a`` as a frozen state only, or (3) given the same gain ``b c`` as a
    frozen state only (different ``a``, different ``b`` and ``c``); and each frozen state not used
    that way is, at random, generic or redundant (``c_i = 0``). Frozen and target eigenvalues are
    separated (gaps >= 0.06) except for the planted equalities. Returns a dict of tensors.
    """
    H = draw(dims(1, 6)) if H is None else H
    H_star = draw(dims(1, H)) if H_star is None else H_star
    g = generator(draw(seeds()))
    pool = separated_eigenvalues(g, 1, H + H_star)[0]  # distinct eigenvalues for both models
    a, a_star = pool[:H].clone(), pool[H:].clone()
    b, c = bounded_gains(g, H), bounded_gains(g, H)
    b_star, c_star = bounded_gains(g, H_star), bounded_gains(g, H_star)
    if planted:
        kinds = draw(st.lists(st.integers(0, 3), min_size=H_star, max_size=H_star))
        frozen_of = torch.randperm(H, generator=g)[:H_star].tolist()  # injective: target j -> frozen i
        for j, (kind, i) in enumerate(zip(kinds, frozen_of)):
            if kind == 1:
                a[i], b[i], c[i] = a_star[j], b_star[j], c_star[j]
            elif kind == 2:
                a[i] = a_star[j]
            elif kind == 3:
                c[i] = b_star[j] * c_star[j] / b[i]  # same product, rounded: equal up to 1 ulp
        used = set(i for k, i in zip(kinds, frozen_of) if k != 0)
        redundant = draw(st.lists(st.booleans(), min_size=H, max_size=H))
        for i in range(H):
            if i not in used and redundant[i]:
                c[i] = 0.0
    return dict(a=a, b=b, c=c, a_star=a_star, b_star=b_star, c_star=c_star)
