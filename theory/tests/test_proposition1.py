"""Proposition 1 (Sec. 4, App. C.3): prefix-tuning on S4 == initial-state tuning; reachability."""

import pytest
import sympy as sp
import torch
from hypothesis import given
from hypothesis import strategies as st

from theory.deep import random_s4_ssm
from theory.proposition1 import (REACH_RTOL, initial_state_from_prefix, initial_state_to_prefix,
                                 prefix_from_initial_state, prefix_to_initial_state, prefix_tuned_output,
                                 reachability_matrix, reachability_residual, reachable_dimension,
                                 unreachability_certificate)
from theory.ssm import DiagonalSSM, ssm_recurrence
from theory.tests.strategies import diagonal_ssms, dims, generator, inputs, seeds
from theory.tests.strategies_lemmas import separated_ssms
from theory.tolerances import RTOL, rel_err

TOL = RTOL[torch.float64]
F64 = torch.float64


def _random_state(ssm: DiagonalSSM, g: torch.Generator) -> torch.Tensor:
    h = torch.randn(ssm.D, ssm.H, generator=g, dtype=F64)
    if ssm.conj_pairs:
        h = torch.complex(h, torch.randn(ssm.D, ssm.H, generator=g, dtype=F64))
    return h


@given(st.data())
def test_prefix_equals_initial_state(data):
    """f(X; h0*) == f([P, X]; h0)_{M+1:M+N} for random models (real and conjugate-pair), P, X, h0."""
    ssm = data.draw(diagonal_ssms())
    M = data.draw(dims(1, 10))
    x = data.draw(inputs(ssm.D))
    g = generator(data.draw(seeds()))
    prefix = torch.randn(ssm.D, M, generator=g, dtype=F64)
    h0 = _random_state(ssm, g) if data.draw(st.booleans()) else None
    h0_star = initial_state_from_prefix(ssm, prefix, h0)  # (D, H)
    assert rel_err(ssm_recurrence(ssm, x, h0_star), prefix_tuned_output(ssm, prefix, x, h0)) <= TOL


@given(st.data())
def test_initial_state_is_state_after_prefix(data):
    """h0* equals the state the recurrence itself reaches after reading the prefix."""
    ssm = data.draw(diagonal_ssms())
    M = data.draw(dims(1, 10))
    g = generator(data.draw(seeds()))
    prefix = torch.randn(ssm.D, M, generator=g, dtype=F64)
    h0 = _random_state(ssm, g)
    _, h_M = ssm_recurrence(ssm, prefix[None], h0, return_state=True)  # (1, D, H)
    assert rel_err(prefix_to_initial_state(ssm.A_bar, ssm.B_bar, prefix, h0), h_M[0]) <= TOL


@given(st.data())
def test_prefix_round_trip_when_M_at_least_H(data):
    """For M >= H (separated a_i, non-zero b_i) every random initial state is realised by the solved
    prefix, and that prefix reproduces the initial-state-tuned outputs."""
    ssm = data.draw(separated_ssms())
    M = ssm.H + data.draw(st.integers(0, 3))
    g = generator(data.draw(seeds()))
    h0_star = torch.randn(ssm.D, ssm.H, generator=g, dtype=F64)
    h0 = torch.randn(ssm.D, ssm.H, generator=g, dtype=F64) if data.draw(st.booleans()) else None
    prefix = prefix_from_initial_state(ssm, h0_star, M, h0)  # (D, M)
    assert prefix.shape == (ssm.D, M)
    assert rel_err(initial_state_from_prefix(ssm, prefix, h0), h0_star) <= TOL
    x = data.draw(inputs(ssm.D))
    assert rel_err(prefix_tuned_output(ssm, prefix, x, h0), ssm_recurrence(ssm, x, h0_star)) <= TOL


@given(st.data())
def test_prefix_round_trip_conjugate_pairs(data):
    """Conjugate-pair form: a real prefix of length M >= 2H reaches any complex initial state."""
    H = data.draw(dims(1, 3))
    ssm = random_s4_ssm(data.draw(dims(1, 3)), H, generator=generator(data.draw(seeds())), conj_pairs=True)
    M = 2 * H + data.draw(st.integers(0, 2))
    g = generator(data.draw(seeds()))
    h0_star = _random_state(ssm, g)
    prefix = prefix_from_initial_state(ssm, h0_star, M)
    # random S4D draws can put two eigenvalues close together; 1e-7 allows cond(G) up to ~1e8
    assert rel_err(initial_state_from_prefix(ssm, prefix), h0_star) <= 1e-7
    assert bool((reachable_dimension(ssm.A_bar, ssm.B_bar, M) == 2 * H).all())


@given(st.data())
def test_minimum_norm_prefix_when_M_exceeds_H(data):
    """For M > H the returned prefix is the minimum-norm one: orthogonal to null(G) in each channel."""
    ssm = data.draw(separated_ssms())
    M = ssm.H + data.draw(st.integers(1, 3))
    g = generator(data.draw(seeds()))
    prefix = prefix_from_initial_state(ssm, torch.randn(ssm.D, ssm.H, generator=g, dtype=F64), M)
    G = reachability_matrix(ssm.A_bar, ssm.B_bar, M)  # (D, H, M)
    for d in range(ssm.D):
        null = torch.linalg.svd(G[d], full_matrices=True).Vh[ssm.H:]  # (M − H, M)
        assert float(torch.linalg.vector_norm(null @ prefix[d])) <= TOL * float(torch.linalg.vector_norm(prefix[d]))


@given(st.data())
def test_unreachable_state_is_refused_when_M_below_H(data):
    """M < H: a random target is refused, and it provably is unreachable — the certificate w with
    w^T G = 0 bounds the distance to the reachable set below by |w^T h| / ‖w‖ > 0."""
    ssm = data.draw(separated_ssms(H=data.draw(dims(2, 6))))
    M = data.draw(dims(1, ssm.H - 1))
    g = generator(data.draw(seeds()))
    h0_star = torch.randn(ssm.D, ssm.H, generator=g, dtype=F64)
    with pytest.raises(ValueError, match="not reachable"):
        prefix_from_initial_state(ssm, h0_star, M)
    w = unreachability_certificate(ssm.A_bar, ssm.B_bar, M)  # (D, H)
    G = reachability_matrix(ssm.A_bar, ssm.B_bar, M)  # (D, H, M)
    w_G = torch.einsum("dh,dhm->dm", w, G)
    assert float(torch.linalg.vector_norm(w_G)) <= TOL * float(torch.linalg.vector_norm(w) * torch.linalg.vector_norm(G))
    lower = (w * h0_star).sum(-1).abs() / torch.linalg.vector_norm(w, dim=-1)  # (D,)
    resid = reachability_residual(ssm.A_bar, ssm.B_bar, h0_star, M)  # (D,)
    assert bool((resid >= lower * (1 - 1e-9)).all())
    # the refused channel misses by far more than the refusal threshold
    assert float((resid / torch.linalg.vector_norm(h0_star, dim=-1)).max()) > 1e3 * REACH_RTOL


@given(st.data())
def test_reachable_state_accepted_when_M_below_H(data):
    """M < H: a state that some prefix does reach is accepted, and the solved prefix reaches it."""
    ssm = data.draw(separated_ssms(H=data.draw(dims(2, 6))))
    M = data.draw(dims(1, ssm.H - 1))
    g = generator(data.draw(seeds()))
    h0_star = initial_state_from_prefix(ssm, torch.randn(ssm.D, M, generator=g, dtype=F64))
    prefix = prefix_from_initial_state(ssm, h0_star, M)
    assert rel_err(initial_state_from_prefix(ssm, prefix), h0_star) <= TOL


@given(st.data())
def test_reachable_dimension_is_min_M_H(data):
    ssm = data.draw(separated_ssms())
    M = data.draw(dims(1, 10))
    dim = reachable_dimension(ssm.A_bar, ssm.B_bar, M)
    assert dim.shape == (ssm.D,) and bool((dim == min(M, ssm.H)).all())


def test_reachable_dimension_drops_for_repeated_eigenvalue_or_zero_gain():
    a = torch.tensor([[0.5, 0.5, -0.3], [0.5, 0.2, -0.3]], dtype=F64)
    b = torch.tensor([[1.0, 2.0, 1.0], [1.0, 0.0, 1.0]], dtype=F64)
    assert reachable_dimension(a, b, 5).tolist() == [2, 2]
    with pytest.raises(ValueError, match="repeated eigenvalues"):
        initial_state_to_prefix(a[:1], b[:1], torch.tensor([[1.0, 0.0, 0.0]], dtype=F64), 5)
    with pytest.raises(ValueError, match="zero input gains"):
        initial_state_to_prefix(a[1:], b[1:], torch.tensor([[0.0, 1.0, 0.0]], dtype=F64), 5)


def test_symbolic_prefix_identity_H2_M2():
    """sympy, H = 2, M = 2, N = 2: outputs after the prefix equal the outputs from h0* exactly."""
    a1, a2, b1, b2, c1, c2 = sp.symbols("a1 a2 b1 b2 c1 c2")
    p1, p2, x1, x2, g1, g2 = sp.symbols("p1 p2 x1 x2 g1 g2")  # g = h0
    A, B, C = sp.diag(a1, a2), sp.Matrix([b1, b2]), sp.Matrix([[c1, c2]])

    def run(h, xs):
        ys = []
        for x in xs:
            h = A * h + B * x
            ys.append((C * h)[0])
        return ys

    h0 = sp.Matrix([g1, g2])
    h0_star = A**2 * h0 + A * B * p1 + B * p2  # Ā^M h0 + Σ_m Ā^{M−m} B̄ p_m
    with_prefix = run(h0, [p1, p2, x1, x2])[2:]
    from_state = run(h0_star, [x1, x2])
    assert all(sp.expand(u - v) == 0 for u, v in zip(with_prefix, from_state))
    # and the code's formula agrees with the symbolic one on a numeric substitution
    vals = {a1: 0.3, a2: -0.7, b1: 1.1, b2: -0.4, p1: 0.9, p2: -1.3, g1: 0.2, g2: 0.5}
    num = prefix_to_initial_state(torch.tensor([[0.3, -0.7]], dtype=F64), torch.tensor([[1.1, -0.4]], dtype=F64),
                                  torch.tensor([[0.9, -1.3]], dtype=F64), torch.tensor([[0.2, 0.5]], dtype=F64))
    sym = torch.tensor([[float(h0_star[0].subs(vals)), float(h0_star[1].subs(vals))]], dtype=F64)
    assert rel_err(num, sym) <= TOL


# ---- negative checks -----------------------------------------------------------------------------

def _ab():
    return torch.tensor([[0.5, -0.2]], dtype=F64), torch.tensor([[1.0, 2.0]], dtype=F64)


@pytest.mark.parametrize("bad, match", [
    (dict(prefix=torch.zeros(1, 0, dtype=F64)), "at least one token"),
    (dict(prefix=torch.zeros(2, 3, dtype=F64)), "prefix: dimension 0"),
    (dict(prefix=torch.tensor([[1.0, float("nan")]], dtype=F64)), "prefix: must be finite"),
    (dict(prefix=torch.zeros(1, 3, dtype=torch.float32)), "dtypes must agree"),
    (dict(A_bar=torch.zeros(1, 3, dtype=F64)), "B_bar: dimension 1"),
    (dict(h0=torch.zeros(1, 3, dtype=F64)), "h0: dimension 1 must be 2"),
    (dict(A_bar=torch.tensor([[float("inf"), 0.1]], dtype=F64)), "A_bar: must be finite"),
])
def test_prefix_to_initial_state_rejects_bad_input(bad, match):
    a, b = _ab()
    kw = dict(A_bar=a, B_bar=b, prefix=torch.ones(1, 3, dtype=F64), h0=None) | bad
    with pytest.raises(ValueError, match=match):
        prefix_to_initial_state(**kw)


@pytest.mark.parametrize("M, h0_star, match", [
    (0, torch.zeros(1, 2, dtype=F64), "M: must be >= 1"),
    (2.0, torch.zeros(1, 2, dtype=F64), "M: expected an int"),
    (2, torch.zeros(1, 3, dtype=F64), "h0_star: dimension 1"),
    (2, torch.tensor([[float("nan"), 0.0]], dtype=F64), "h0_star: must be finite"),
    (2, torch.zeros(1, 2, dtype=torch.complex128), "h0_star: must be complex exactly"),
])
def test_initial_state_to_prefix_rejects_bad_input(M, h0_star, match):
    a, b = _ab()
    with pytest.raises(ValueError, match=match):
        initial_state_to_prefix(a, b, h0_star, M)


def test_reachable_dimension_and_certificate_reject_bad_input():
    a, b = _ab()
    with pytest.raises(ValueError, match="M: must be >= 1"):
        reachable_dimension(a, b, 0)
    with pytest.raises(ValueError, match="M: must be <= 1"):
        unreachability_certificate(a, b, 2)
    with pytest.raises(ValueError, match="distinct"):
        unreachability_certificate(torch.tensor([[0.5, 0.5]], dtype=F64), b, 1)
