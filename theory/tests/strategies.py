"""Shared hypothesis strategies: small typed functions, bounded and finite elements, small shapes.

Used by ``theory/tests`` (it needs hypothesis, a test extra, so it lives beside the tests). Every model is float64 unless a strategy says otherwise.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from theory.deep import DeepSSM, random_deep, random_s4_ssm
from theory.s6 import S6Params, random_s6
from theory.ssm import DiagonalSSM

F64 = torch.float64


def seeds() -> st.SearchStrategy[int]:
    """Seeds for torch generators: hypothesis picks the seed, torch draws the tensor from it."""
    return st.integers(min_value=0, max_value=2**31 - 1)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dims(lo: int = 1, hi: int = 6) -> st.SearchStrategy[int]:
    return st.integers(min_value=lo, max_value=hi)


@st.composite
def diagonal_ssms(draw, D=None, H=None, conj_pairs=None) -> DiagonalSSM:
    """A stable random diagonal SSM (real or conjugate-pair)."""
    D = draw(dims()) if D is None else D
    H = draw(dims()) if H is None else H
    cp = draw(st.booleans()) if conj_pairs is None else conj_pairs
    return random_s4_ssm(D, H, generator=generator(draw(seeds())), conj_pairs=cp)


@st.composite
def inputs(draw, D: int, batch=None, N=None) -> torch.Tensor:
    """Random real inputs (B, D, N), float64, entries bounded (standard normal)."""
    B = draw(dims(1, 3)) if batch is None else batch
    N = draw(dims(1, 24)) if N is None else N
    return torch.randn(B, D, N, generator=generator(draw(seeds())), dtype=F64)


@st.composite
def s6_params(draw, D=None, H=None, R=None) -> S6Params:
    D = draw(dims(1, 6)) if D is None else D
    H = draw(dims(1, 4)) if H is None else H
    R = draw(dims(1, 3)) if R is None else R
    return random_s6(D, H, R, generator=generator(draw(seeds())))


@st.composite
def deep_models(draw, kind="s4", L=None, D=None, H=None, **kw) -> DeepSSM:
    L = draw(dims(1, 3)) if L is None else L
    D = draw(dims(1, 5)) if D is None else D
    H = draw(dims(1, 4)) if H is None else H
    activation = kw.pop("activation", None) or draw(st.sampled_from(["identity", "relu"]))
    skip = kw.pop("skip", None) or draw(st.sampled_from(["outside", "inside"]))
    return random_deep(L, D, H, kind=kind, activation=activation, skip=skip,
                       generator=generator(draw(seeds())), **kw)
