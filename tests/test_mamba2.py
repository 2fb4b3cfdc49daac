"""The Mamba-II (SSD) reference block (synthetic.mamba2.ref): chunked SSD == sequential recurrence (float64,
hypothesis-drawn small shapes, chunk sizes dividing the length or not), both == Mamba-I's independent
selective scan with A repeated over states (ngroups = 1), the gated RMSNorm written out, the layout, and bad
input refused."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from synthetic.mamba.ref import selective_scan_reference
from synthetic.mamba2.ref import (PARAM_NAMES, Mamba2Ref, block_weights, gated_rmsnorm, mamba2_forward,
                                  ssd_scan_chunked, ssd_scan_recurrent)
from theory.tolerances import RTOL, rel_err

F64 = torch.float64


@st.composite
def scan_inputs(draw):
    """Small SSD scan inputs: b <= 2, l <= 20, groups g | heads h, p, n <= 3; a seed for the values."""
    g = draw(st.integers(1, 2))
    h = g * draw(st.integers(1, 2))
    b, l, p, n = (draw(st.integers(lo, hi)) for lo, hi in ((1, 2), (1, 20), (1, 3), (1, 3)))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(b, l, h, p, generator=gen, dtype=F64)
    dt = torch.randn(b, l, h, generator=gen, dtype=F64)
    A = -torch.rand(h, generator=gen, dtype=F64) * 4 - 0.05  # a_h < 0
    B, C = (torch.randn(b, l, g, n, generator=gen, dtype=F64) for _ in range(2))
    D, dt_bias = torch.randn(h, generator=gen, dtype=F64), torch.randn(h, generator=gen, dtype=F64)
    z = torch.randn(b, l, h, p, generator=gen, dtype=F64)
    return x, dt, A, B, C, D, dt_bias, z, draw(st.integers(1, 8))


@given(scan_inputs())
def test_chunked_ssd_equals_recurrence(inp):
    x, dt, A, B, C, D, dt_bias, z, Q = inp
    kw = dict(D=D, z=z, dt_bias=dt_bias, dt_softplus=True)
    assert rel_err(ssd_scan_chunked(x, dt, A, B, C, Q, **kw), ssd_scan_recurrent(x, dt, A, B, C, Q, **kw)) < RTOL[F64]


@given(scan_inputs())
def test_recurrence_equals_mamba1_scan_with_repeated_A(inp):
    """Oracle from another implementation: with one group, head h's p channels are Mamba-I channels with
    A^(d) = a_h on every state and shared B_t, C_t (synthetic.mamba.ref.selective_scan_reference)."""
    x, dt, A, B, C, D, dt_bias, z, Q = inp
    B, C = B[:, :, :1], C[:, :, :1]
    b, l, h, p = x.shape
    n = B.shape[-1]
    want = ssd_scan_recurrent(x, dt, A, B, C, D=D, dt_bias=dt_bias, dt_softplus=True)
    u = x.reshape(b, l, h * p).transpose(1, 2)  # (b, D, l): channel d = head d // p
    delta = (dt + dt_bias).repeat_interleave(p, dim=2).transpose(1, 2)
    got = selective_scan_reference(u, delta, A.repeat_interleave(p)[:, None].expand(h * p, n),
                                   B[:, :, 0].transpose(1, 2), C[:, :, 0].transpose(1, 2),
                                   D=D.repeat_interleave(p), delta_softplus=True)
    assert rel_err(got.transpose(1, 2).reshape(b, l, h, p), want) < RTOL[F64]


def test_negative_check_a_wrong_head_to_group_map_is_detected():
    """The equality above is not vacuous: swapping the two groups' B changes the output."""
    g = torch.Generator().manual_seed(3)
    x, dt = torch.randn(1, 9, 4, 2, generator=g, dtype=F64), torch.randn(1, 9, 4, generator=g, dtype=F64)
    A = -torch.rand(4, generator=g, dtype=F64) - 0.1
    B, C = torch.randn(1, 9, 2, 3, generator=g, dtype=F64), torch.randn(1, 9, 2, 3, generator=g, dtype=F64)
    y = ssd_scan_chunked(x, dt, A, B, C, 4)
    assert rel_err(ssd_scan_chunked(x, dt, A, B.flip(2), C, 4), y) > 1e-3


def test_gated_rmsnorm_written_out():
    g = torch.Generator().manual_seed(0)
    y, z = torch.randn(2, 5, 12, generator=g, dtype=F64), torch.randn(2, 5, 12, generator=g, dtype=F64)
    w = torch.randn(12, generator=g, dtype=F64)
    v = (y * F.silu(z)).reshape(2, 5, 3, 4)
    want = (v / torch.sqrt((v ** 2).mean(-1, keepdim=True) + 1e-5)).reshape(2, 5, 12) * w
    assert rel_err(gated_rmsnorm(y, z, w, 4), want) < RTOL[F64]


@given(st.integers(1, 2), st.sampled_from([(4, 1), (4, 2), (2, 2), (8, 1)]), st.integers(1, 4), st.integers(1, 13),
       st.integers(0, 2**31 - 1))
def test_block_chunked_equals_recurrent(ngroups, hd_heads, d_state, L, seed):
    headdim, nheads_per_group = hd_heads
    nheads = ngroups * nheads_per_group
    torch.manual_seed(seed)
    d_model = nheads * headdim // 2
    m = Mamba2Ref(d_model, d_state=d_state, headdim=headdim, ngroups=ngroups, dtype=F64)
    x = torch.randn(2, L, d_model, dtype=F64)
    w = m.weights()
    fast = mamba2_forward(w, x, ngroups=ngroups, chunk_size=4)
    assert fast.shape == x.shape
    assert rel_err(fast, mamba2_forward(w, x, ngroups=ngroups, scan_fn=ssd_scan_recurrent)) < RTOL[F64]


def test_layout_matches_mamba_ssm():
    """mamba-ssm's Mamba2 shapes: in_proj (2D + 2GN + Hh, d_model), conv over D + 2GN channels, one A_log,
    dt_bias and D per head, norm.weight (D,); dt_bias = softplus^{-1} of a step in [dt_min, dt_max]."""
    m = Mamba2Ref(16, d_state=4, headdim=8, ngroups=2, expand=2)
    shapes = {k: tuple(v.shape) for k, v in m.named_parameters()}
    assert shapes == {"in_proj.weight": (2 * 32 + 2 * 2 * 4 + 4, 16), "conv1d.weight": (48, 1, 4), "conv1d.bias": (48,),
                      "dt_bias": (4,), "A_log": (4,), "D": (4,), "norm.weight": (32,), "out_proj.weight": (16, 32)}
    assert set(block_weights(m)) == set(PARAM_NAMES)
    dt = F.softplus(m.dt_bias.detach())
    assert bool(((dt >= 1e-3 - 1e-9) & (dt <= 0.1 + 1e-9)).all())
    assert bool(((torch.exp(m.A_log) >= 1) & (torch.exp(m.A_log) <= 16)).all())


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="headdim"):
        Mamba2Ref(16, headdim=5)
    with pytest.raises(ValueError, match="ngroups"):
        Mamba2Ref(16, headdim=8, ngroups=3)
    x, dt, A = torch.randn(1, 4, 3, 2), torch.randn(1, 4, 3), -torch.ones(3)
    B = torch.randn(1, 4, 2, 2)
    with pytest.raises(ValueError, match="groups"):
        ssd_scan_chunked(x, dt, A, B, B, 2)
    with pytest.raises(ValueError, match="chunk_size"):
        ssd_scan_chunked(x, dt, A, B[:, :, :1], B[:, :, :1], 0)
    with pytest.raises(ValueError, match="D: expected"):
        ssd_scan_recurrent(x, dt, A, B[:, :, :1], B[:, :, :1], D=torch.ones(6))
    with pytest.raises(ValueError, match="block: missing"):
        block_weights(torch.nn.Linear(2, 2))
