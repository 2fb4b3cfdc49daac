"""S6 reference: LTI reduction, parameter layout, two-projection variant, deep stacks."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from theory.deep import deep_forward, layer_forward, random_deep
from theory.s6 import S6Params, random_s6, s6_forward, s6_inputs, s6_two_projection, selective_scan
from theory.ssm import DiagonalSSM, ssm_convolution
from theory.tests.strategies import deep_models, dims, generator, inputs, s6_params, seeds
from theory.tolerances import RTOL, rel_err

TOL = RTOL[torch.float64]


@given(st.data())
def test_s6_with_input_independent_parameters_is_lti(data):
    """Constant Δ, B, C over time: the selective scan is the diagonal SSM (Ā = exp(ΔA), B̄ = ΔB, C)."""
    g = generator(data.draw(seeds()))
    D, H, N, Bt = data.draw(dims(1, 5)), data.draw(dims(1, 4)), data.draw(dims(1, 20)), data.draw(dims(1, 3))
    A = -torch.rand(D, H, generator=g, dtype=torch.float64) * 2 - 0.05
    delta = torch.rand(D, generator=g, dtype=torch.float64) + 0.01
    Bv = torch.randn(H, generator=g, dtype=torch.float64)
    Cv = torch.randn(H, generator=g, dtype=torch.float64)
    u = torch.randn(Bt, D, N, generator=g, dtype=torch.float64)
    y = selective_scan(u, delta[None, :, None].expand(Bt, D, N), A,
                       Bv[None, :, None].expand(Bt, H, N), Cv[None, :, None].expand(Bt, H, N))
    lti = DiagonalSSM(torch.exp(delta[:, None] * A), delta[:, None] * Bv[None, :], Cv[None, :].expand(D, H))
    assert rel_err(y, ssm_convolution(lti, u)) <= TOL


@given(st.data())
def test_s6_inputs_follow_paper_formulas(data):
    p = data.draw(s6_params())
    x = data.draw(inputs(p.D))
    delta, B, C = s6_inputs(p, x)
    for b in range(x.shape[0]):
        for t in range(x.shape[2]):
            xt = x[b, :, t]
            d_ref = F.softplus(p.dt_proj_weight @ (p.x_proj[: p.R] @ xt) + p.dt_proj_bias)
            assert rel_err(delta[b, :, t], d_ref) <= TOL
            assert rel_err(B[b, :, t], p.x_proj[p.R: p.R + p.H] @ xt) <= TOL
            assert rel_err(C[b, :, t], p.x_proj[p.R + p.H:] @ xt) <= TOL
    assert bool((p.A < 0).all())


@given(st.data())
def test_two_projection_with_identity_is_plain_s6(data):
    p = data.draw(s6_params())
    x = data.draw(inputs(p.D))
    eye = torch.eye(p.D, dtype=torch.float64)
    assert rel_err(s6_two_projection(p, eye, eye, x), s6_forward(p, x)) <= TOL


@given(st.data())
def test_deep_stack_skip_placements(data):
    """skip="outside": σ(W S(x) + β + u⊙x); skip="inside": σ(W(S(x) + u⊙x) + β) — differ unless W u⊙x = u⊙x."""
    model = data.draw(deep_models(kind=data.draw(st.sampled_from(["s4", "s6"]))))
    x = data.draw(inputs(model.D))
    layer = model.layers[0]
    from theory.deep import mechanism
    s = mechanism(layer.ssm, x)
    out = torch.einsum("ij,bjn->bin", layer.W, s) + layer.beta[:, None] + layer.u[:, None] * x
    ins = torch.einsum("ij,bjn->bin", layer.W, s + layer.u[:, None] * x) + layer.beta[:, None]
    act = torch.relu if model.activation == "relu" else (lambda v: v)
    want = act(out if model.skip == "outside" else ins)
    assert rel_err(layer_forward(layer, x, model.activation, model.skip), want) <= TOL
    if model.kind == "s4":
        assert rel_err(deep_forward(model, x), deep_forward(model, x, reference=True)) <= TOL


def test_bad_s6_params_are_refused():
    p = random_s6(4, 3, 2)
    with pytest.raises(ValueError, match="x_proj: dimension 0"):
        S6Params(p.A_log, p.x_proj[:-1], p.dt_proj_weight, p.dt_proj_bias)
    with pytest.raises(ValueError, match="dtypes must agree"):
        S6Params(p.A_log.float(), p.x_proj, p.dt_proj_weight, p.dt_proj_bias)
    with pytest.raises(ValueError, match="W_in1: dimension"):
        s6_two_projection(p, torch.eye(3, dtype=torch.float64), torch.eye(4, dtype=torch.float64),
                          torch.zeros(1, 4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="skip: must be one of"):
        random_deep(2, 3, 2, skip="middle")
    with pytest.raises(ValueError, match="L: must be >= 1"):
        random_deep(0, 3, 2)
