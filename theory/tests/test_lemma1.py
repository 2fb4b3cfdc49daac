"""Lemma 1 (Sec. 4, App. C.4): the frozen S6 with an aligned W_in,1 equals the target S6."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from theory.lemma1 import (ALIGN_RTOL, align_input_projection, align_s6_input_projection, alignment_residual,
                           input_projection_null_space, lemma1_pair)
from theory.s6 import S6Params, s6_inputs, s6_two_projection
from theory.tests.strategies import dims, generator, seeds
from theory.tolerances import RTOL, rel_err

TOL = RTOL[torch.float64]
F64 = torch.float64


@st.composite
def lemma1_instances(draw, slack_lo=0, slack_hi=3):
    """(frozen, target, W_in1_star, W_in2) with D = 2H + R + slack."""
    H, R = draw(dims(1, 3)), draw(dims(1, 2))
    D = 2 * H + R + draw(st.integers(slack_lo, slack_hi))
    return lemma1_pair(D, H, R, generator=generator(draw(seeds())))


@given(st.data())
def test_aligned_projection_reproduces_target_outputs(data):
    """D >= 2H + R (D = 2H + R included): outputs equal on random inputs and lengths."""
    frozen, target, W_in1_star, W_in2 = data.draw(lemma1_instances())
    W_hat = align_s6_input_projection(frozen, target, W_in1_star)  # (D, D)
    x = torch.randn(data.draw(dims(1, 3)), frozen.D, data.draw(dims(1, 20)),
                    generator=generator(data.draw(seeds())), dtype=F64)
    y_hat = s6_two_projection(frozen, W_hat, W_in2, x)
    y_star = s6_two_projection(target, W_in1_star, W_in2, x)
    assert rel_err(y_hat, y_star) <= TOL
    # the mechanism: Δ_t, B_t, C_t are the target's at every step
    z_hat = torch.einsum("ij,bjn->bin", W_hat, x)
    z_star = torch.einsum("ij,bjn->bin", W_in1_star, x)
    for q_hat, q_star in zip(s6_inputs(frozen, z_hat), s6_inputs(target, z_star)):
        assert rel_err(q_hat, q_star) <= TOL


@given(st.data())
def test_square_case_D_equals_2H_plus_R(data):
    """The paper assumes D > 2H + R; at D = 2H + R the (square) M0 is generically invertible and
    the construction still gives exact equality — the assumption can be weakened to D >= 2H + R."""
    frozen, target, W_in1_star, W_in2 = data.draw(lemma1_instances(0, 0))
    assert frozen.D == 2 * frozen.H + frozen.R
    assert input_projection_null_space(frozen.W_B, frozen.W_C, frozen.W_dt_down).shape == (frozen.D, 0)
    W_hat = align_s6_input_projection(frozen, target, W_in1_star)
    x = torch.randn(2, frozen.D, 12, generator=generator(data.draw(seeds())), dtype=F64)
    assert rel_err(s6_two_projection(frozen, W_hat, W_in2, x), s6_two_projection(target, W_in1_star, W_in2, x)) <= TOL


@given(st.data())
def test_null_space_freedom_keeps_equality(data):
    """Ŵ + N Z (N a basis of null(M0), Z random) is also a solution: outputs stay equal."""
    frozen, target, W_in1_star, W_in2 = data.draw(lemma1_instances(1, 3))
    W_hat = align_s6_input_projection(frozen, target, W_in1_star)
    Nb = input_projection_null_space(frozen.W_B, frozen.W_C, frozen.W_dt_down)  # (D, D − K)
    assert Nb.shape == (frozen.D, frozen.D - 2 * frozen.H - frozen.R)
    g = generator(data.draw(seeds()))
    Z = torch.randn(Nb.shape[1], frozen.D, generator=g, dtype=F64)
    W_other = W_hat + Nb @ Z
    assert rel_err(W_other, W_hat) > 1e-3  # a genuinely different projection
    x = torch.randn(2, frozen.D, data.draw(dims(1, 16)), generator=g, dtype=F64)
    assert rel_err(s6_two_projection(frozen, W_other, W_in2, x),
                   s6_two_projection(target, W_in1_star, W_in2, x)) <= TOL
    # and the returned solution is the minimum-norm one: orthogonal to null(M0)
    assert float(torch.linalg.matrix_norm(Nb.T @ W_hat)) <= TOL * float(torch.linalg.matrix_norm(W_hat))


@given(st.data())
def test_refused_when_D_below_2H_plus_R(data):
    """D < 2H + R: generic M* is outside range(M0); refused, with a residual bounded away from 0."""
    H, R = data.draw(dims(1, 3)), data.draw(dims(1, 2))
    D = data.draw(dims(1, 2 * H + R - 1))
    frozen, target, W_in1_star, _ = lemma1_pair(D, H, R, generator=generator(data.draw(seeds())))
    with pytest.raises(ValueError, match="no W_in1_hat") as info:
        align_s6_input_projection(frozen, target, W_in1_star)
    msg = str(info.value)
    assert "relative residual" in msg and f"D = {D} < 2H + R = {2 * H + R}" in msg
    res = alignment_residual(frozen.W_B, frozen.W_C, frozen.W_dt_down,
                             target.W_B, target.W_C, target.W_dt_down, W_in1_star)
    assert res > 1e3 * ALIGN_RTOL


@given(st.data())
def test_solvable_below_2H_plus_R_when_target_in_range(data):
    """The exact condition is range(M*) ⊆ range(M0), not a dimension count: with D < 2H + R, a
    target whose projections equal the frozen ones (only W_in,1 differs) is still matched."""
    H, R = data.draw(dims(1, 3)), data.draw(dims(1, 2))
    D = data.draw(dims(1, 2 * H + R - 1))
    frozen, _, W_in1_star, W_in2 = lemma1_pair(D, H, R, generator=generator(data.draw(seeds())))
    W_hat = align_s6_input_projection(frozen, frozen, W_in1_star)
    x = torch.randn(2, D, 10, generator=generator(data.draw(seeds())), dtype=F64)
    assert rel_err(s6_two_projection(frozen, W_hat, W_in2, x), s6_two_projection(frozen, W_in1_star, W_in2, x)) <= TOL


# ---- negative checks -----------------------------------------------------------------------------

def _parts(D=5, H=1, R=1):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    return dict(W_B=r(H, D), W_C=r(H, D), W_dt_down=r(R, D), W_B_star=r(H, D), W_C_star=r(H, D),
                W_dt_down_star=r(R, D), W_in1_star=r(D, D))


@pytest.mark.parametrize("bad, match", [
    (dict(W_B=torch.zeros(1, 4, dtype=F64)), "W_C: dimension 1 is D = 4"),
    (dict(W_C=torch.zeros(2, 5, dtype=F64)), "W_C: dimension 0 is H = 1"),
    (dict(W_dt_down_star=torch.zeros(2, 5, dtype=F64)), "W_dt_down_star: dimension 0 is R = 1"),
    (dict(W_in1_star=torch.zeros(5, 4, dtype=F64)), "W_in1_star: dimension 1 must be 5"),
    (dict(W_in1_star=torch.full((5, 5), float("nan"), dtype=F64)), "W_in1_star: must be finite"),
    (dict(W_B=torch.zeros(1, 5, dtype=torch.complex128)), "W_B: expected a real"),
    (dict(W_B_star=torch.zeros(1, 5, dtype=torch.float32)), "dtypes must agree"),
    (dict(W_dt_down=torch.zeros(5, dtype=F64)), "W_dt_down: expected 2 dimensions"),
])
def test_align_input_projection_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        align_input_projection(**(_parts() | bad))


def test_model_level_requires_shared_parameters():
    frozen, target, W_in1_star, _ = lemma1_pair(6, 1, 2, generator=torch.Generator().manual_seed(1))
    other = S6Params(target.A_log + 0.1, target.x_proj, target.dt_proj_weight, target.dt_proj_bias)
    with pytest.raises(ValueError, match="target.A_log: Lemma 1 needs it shared"):
        align_s6_input_projection(frozen, other, W_in1_star)
    other = S6Params(target.A_log, target.x_proj, target.dt_proj_weight, target.dt_proj_bias + 1)
    with pytest.raises(ValueError, match="dt_proj_bias"):
        align_s6_input_projection(frozen, other, W_in1_star)
