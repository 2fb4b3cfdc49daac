"""Reference core: recurrence vs FFT convolution, ZOH discretisation, conjugate pairs, sympy kernel."""

import math

import mpmath
import pytest
import sympy as sp
import torch
from hypothesis import given
from hypothesis import strategies as st

from theory.deep import random_s4_ssm
from theory.ssm import (DiagonalSSM, causal_conv_fft, dense_recurrence, discretize_zoh, real_realisation,
                        ssm_convolution, ssm_kernel, ssm_recurrence)
from theory.tests.strategies import diagonal_ssms, dims, generator, inputs, seeds
from theory.tolerances import RTOL, rel_err

TOL = RTOL[torch.float64]


@given(st.data())
def test_recurrence_equals_fft_convolution(data):
    ssm = data.draw(diagonal_ssms())
    x = data.draw(inputs(ssm.D))
    assert rel_err(ssm_convolution(ssm, x), ssm_recurrence(ssm, x)) <= TOL


@given(st.data())
def test_recurrence_equals_convolution_with_initial_state(data):
    ssm = data.draw(diagonal_ssms())
    x = data.draw(inputs(ssm.D))
    g = generator(data.draw(seeds()))
    h0 = torch.randn(ssm.D, ssm.H, generator=g, dtype=torch.float64)
    if ssm.conj_pairs:
        h0 = torch.complex(h0, torch.randn(ssm.D, ssm.H, generator=g, dtype=torch.float64))
    y_rec = ssm_recurrence(ssm, x, h0)
    assert rel_err(ssm_convolution(ssm, x, h0), y_rec) <= TOL
    # the initial state matters: zero input isolates its free response C Ā^t h0
    free = ssm_recurrence(ssm, torch.zeros_like(x), h0)
    assert torch.linalg.vector_norm(free) > 0


@given(st.data())
def test_kernel_is_impulse_response(data):
    ssm = data.draw(diagonal_ssms())
    N = data.draw(dims(1, 20))
    impulse = torch.zeros(1, ssm.D, N, dtype=torch.float64)
    impulse[:, :, 0] = 1.0
    assert rel_err(ssm_recurrence(ssm, impulse)[0], ssm_kernel(ssm, N)) <= TOL


@given(st.data())
def test_kernel_matches_explicit_sum(data):
    """K_k = Σ_i c_i b_i a_i^k, computed by a plain Python loop (would catch a wrong power or lag)."""
    ssm = data.draw(diagonal_ssms(conj_pairs=False))
    N = data.draw(dims(1, 12))
    K = ssm_kernel(ssm, N)
    for d in range(ssm.D):
        for k in range(N):
            ref = sum(float(ssm.C[d, i] * ssm.B_bar[d, i] * ssm.A_bar[d, i] ** k) for i in range(ssm.H))
            assert abs(float(K[d, k]) - ref) <= TOL * max(1.0, abs(ref))


@given(st.data())
def test_conjugate_pair_equals_real_realisation(data):
    ssm = data.draw(diagonal_ssms(conj_pairs=True))
    x = data.draw(inputs(ssm.D))
    A, B, C = real_realisation(ssm)
    assert A.dtype == torch.float64 and A.shape == (ssm.D, 2 * ssm.H, 2 * ssm.H)
    assert rel_err(dense_recurrence(A, B, C, x), ssm_recurrence(ssm, x)) <= TOL


@given(st.data())
def test_zoh_matches_matrix_exponential(data):
    """B̄ = (ΔA)^{-1}(exp(ΔA) − I)ΔB and Ā = exp(ΔA), checked against the exponential of the augmented
    system [[ΔA, ΔB], [0, 0]] (its top-right block is exactly B̄), computed by mpmath at 30 digits.
    (torch.linalg.matrix_exp is only ~1e-9 accurate on near-zero blocks, too coarse for an oracle.)"""
    g = generator(data.draw(seeds()))
    D, H = data.draw(dims(1, 3)), data.draw(dims(1, 3))
    A = -torch.rand(D, H, generator=g, dtype=torch.float64) * 3 - 0.01
    B = torch.randn(D, H, generator=g, dtype=torch.float64)
    delta = torch.rand(D, generator=g, dtype=torch.float64) + 1e-3
    A_bar, B_bar = discretize_zoh(A, B, delta)
    mpmath.mp.dps = 30
    for d in range(D):
        M = mpmath.zeros(H + 1, H + 1)
        for i in range(H):
            M[i, i] = mpmath.mpf(float(delta[d])) * mpmath.mpf(float(A[d, i]))
            M[i, H] = mpmath.mpf(float(delta[d])) * mpmath.mpf(float(B[d, i]))
        E = mpmath.expm(M)
        ref_A = torch.tensor([float(E[i, i]) for i in range(H)], dtype=torch.float64)
        ref_B = torch.tensor([float(E[i, H]) for i in range(H)], dtype=torch.float64)
        assert rel_err(A_bar[d], ref_A) <= TOL
        assert rel_err(B_bar[d], ref_B) <= TOL


def test_zoh_limit_at_zero_eigenvalue():
    A = torch.tensor([[0.0, -1.0]], dtype=torch.float64)
    B = torch.tensor([[2.0, 3.0]], dtype=torch.float64)
    A_bar, B_bar = discretize_zoh(A, B, torch.tensor([0.5], dtype=torch.float64))
    assert float(B_bar[0, 0]) == pytest.approx(1.0, rel=1e-12)  # Δ·b at a = 0
    assert float(B_bar[0, 1]) == pytest.approx((1 - math.exp(-0.5)) * 3.0, rel=1e-12)


def test_symbolic_kernel_of_two_state_ssm():
    """The symbolic kernel of a 2-state SSM, K_k = c1 b1 a1^k + c2 b2 a2^k, equals the numeric one."""
    a1, a2, b1, b2, c1, c2 = sp.symbols("a1 a2 b1 b2 c1 c2")
    A = sp.diag(a1, a2)
    Bv = sp.Matrix([b1, b2])
    Cv = sp.Matrix([[c1, c2]])
    vals = {a1: sp.Rational(-3, 5), a2: sp.Rational(7, 10), b1: sp.Rational(3, 2), b2: sp.Rational(-1, 3),
            c1: sp.Rational(2, 7), c2: sp.Rational(5, 4)}
    ssm = DiagonalSSM(torch.tensor([[float(vals[a1]), float(vals[a2])]], dtype=torch.float64),
                      torch.tensor([[float(vals[b1]), float(vals[b2])]], dtype=torch.float64),
                      torch.tensor([[float(vals[c1]), float(vals[c2])]], dtype=torch.float64))
    K = ssm_kernel(ssm, 8)
    for k in range(8):
        sym = (Cv * A**k * Bv)[0, 0]
        assert sp.expand(sym - (c1 * b1 * a1**k + c2 * b2 * a2**k)) == 0
        exact = sym.subs(vals)
        assert abs(float(K[0, k]) - float(exact)) <= TOL * max(1.0, abs(float(exact)))


@pytest.mark.parametrize("bad, match", [
    (dict(A_bar=torch.zeros(2, 3), B_bar=torch.zeros(2, 2)), "B_bar"),
    (dict(A_bar=torch.zeros(2, 3, dtype=torch.int64)), "A_bar: expected a floating"),
    (dict(C=torch.full((2, 3), float("nan"))), "C: must be finite"),
])
def test_bad_ssm_is_refused(bad, match):
    kw = dict(A_bar=torch.zeros(2, 3), B_bar=torch.zeros(2, 3), C=torch.zeros(2, 3))
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        DiagonalSSM(**kw)


def test_bad_inputs_are_refused():
    ssm = random_s4_ssm(3, 2)
    with pytest.raises(ValueError, match="x: dimension 1"):
        ssm_recurrence(ssm, torch.zeros(1, 4, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="x: dtype"):
        ssm_convolution(ssm, torch.zeros(1, 3, 5, dtype=torch.float32))
    with pytest.raises(ValueError, match="N: must be >= 1"):
        ssm_kernel(ssm, 0)
    with pytest.raises(ValueError, match="delta: every entry must be > 0"):
        discretize_zoh(torch.zeros(3, 2), torch.zeros(3, 2), torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="K: kernel length"):
        causal_conv_fft(torch.zeros(3, 2, dtype=torch.float64), torch.zeros(1, 3, 5, dtype=torch.float64))
