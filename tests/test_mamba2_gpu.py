"""GPU checks of the Mamba-II reference against mamba-ssm (skipped without CUDA or mamba-ssm): our SSD scans
vs ``ssd_minimal_discrete`` (Listing 1 of Dao & Gu) and the Triton ``mamba_chunk_scan_combined``; our block vs
mamba-ssm's ``Mamba2`` module with the same weights; the mamba_ssm backend trains every registry method with
frozen entries bit-identical."""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("no_tf32", "triton_one_config")]  # conftest.py
if not torch.cuda.is_available():  # importing mamba_ssm without CUDA fails, so check CUDA first
    pytest.skip("needs a CUDA GPU and mamba-ssm (pip install .[gpu])", allow_module_level=True)
mamba_ssm = pytest.importorskip("mamba_ssm", reason="needs mamba-ssm (pip install .[gpu])")

from mamba_ssm.modules.ssd_minimal import ssd_minimal_discrete  # noqa: E402
from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined  # noqa: E402

from synthetic.mamba2.peft import METHODS, PeftMamba2Stack, get_backend  # noqa: E402
from synthetic.mamba2.ref import (Mamba2Ref, block_weights, mamba2_forward, ssd_scan_chunked,  # noqa: E402
                                  ssd_scan_recurrent)
from theory.tolerances import rel_err  # noqa: E402

DEV = torch.device("cuda")
# mamba-ssm's float32 paths vs our float64 reference: ssd_minimal_discrete runs torch einsums (TF32 off here, so
# ~1e-6); the Triton kernels use tl.dot, which takes TF32 inputs on Hopper (10-bit mantissa, ~5e-4 per product),
# so the chunked kernel and the Mamba2 module are held to 5e-3 relative (Frobenius); a missing term gives O(1).
RTOL_MINIMAL, RTOL_TRITON = 1e-5, 5e-3


def _inputs(b=2, l=64, h=4, p=8, g=2, n=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, l, h, p, generator=gen, dtype=torch.float64)
    dt = torch.randn(b, l, h, generator=gen, dtype=torch.float64) - 1
    A = -torch.rand(h, generator=gen, dtype=torch.float64) * 4 - 0.1
    B, C = (torch.randn(b, l, g, n, generator=gen, dtype=torch.float64) for _ in range(2))
    D, dt_bias = torch.randn(h, generator=gen, dtype=torch.float64), torch.randn(h, generator=gen, dtype=torch.float64)
    return x, dt, A, B, C, D, dt_bias


def test_recurrence_equals_ssd_minimal_discrete():
    x, dt, A, B, C, _, _ = _inputs()
    h, g = x.shape[2], B.shape[2]
    delta = torch.nn.functional.softplus(dt)
    want = ssd_scan_recurrent(x, delta, A, B, C)  # float64, CPU
    rep = lambda t: t.repeat_interleave(h // g, dim=2)  # noqa: E731  (per-head B, C as Listing 1 takes them)
    Y, _ = ssd_minimal_discrete(*(t.float().to(DEV) for t in (x * delta[..., None], A * delta, rep(B), rep(C))), 16)
    assert rel_err(Y.double().cpu(), want) < RTOL_MINIMAL


def test_chunked_equals_mamba_chunk_scan_combined():
    x, dt, A, B, C, D, dt_bias = _inputs(l=100)  # not a multiple of the chunk
    want = ssd_scan_chunked(x, dt, A, B, C, 32, D=D, dt_bias=dt_bias, dt_softplus=True)
    got = mamba_chunk_scan_combined(*(t.float().to(DEV) for t in (x, dt, A, B, C)), 32, D=D.float().to(DEV),
                                    dt_bias=dt_bias.float().to(DEV), dt_softplus=True)
    assert rel_err(got.double().cpu(), want) < RTOL_TRITON


@pytest.mark.parametrize("ngroups", [1, 2])
def test_block_equals_mamba2_module(ngroups):
    torch.manual_seed(0)
    real = mamba_ssm.Mamba2(32, d_state=16, headdim=16, ngroups=ngroups, use_mem_eff_path=False, device=DEV)
    ref = Mamba2Ref(32, d_state=16, headdim=16, ngroups=ngroups, dtype=torch.float64)
    ref.load_state_dict({k: v.double().cpu() for k, v in real.state_dict().items()}, strict=True)  # same names
    u = torch.randn(2, 80, 32, device=DEV)
    with torch.no_grad():
        want = ref(u.double().cpu())
        assert rel_err(real(u).double().cpu(), want) < RTOL_TRITON
        w = block_weights(real)
        got = mamba2_forward(w, u, ngroups=ngroups, scan_fn=get_backend("mamba_ssm").scan_fn)
        assert rel_err(got.double().cpu(), want) < RTOL_TRITON


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_on_the_mamba_ssm_backend(method):
    torch.manual_seed(0)
    be = get_backend("mamba_ssm")
    w = [block_weights(mamba_ssm.Mamba2(32, d_state=16, headdim=16, device=DEV)) for _ in range(2)]
    cfg = METHODS[method]({"rank": 2, "heads": 2, "states": 2})
    kw = {"heads": [[0, 1]] * 2, "states": [[[0, 3]]] * 2} if cfg.sdt_heads else {}
    stack = PeftMamba2Stack(w, ngroups=1, config=cfg, **kw)
    params = [p for p in stack.parameters() if p.requires_grad]
    u = torch.randn(2, 64, 32, device=DEV)
    if params:
        opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
        for _ in range(2):
            opt.zero_grad()
            stack(u, be).square().mean().backward()
            opt.step()
    eff = stack.blocks[0].effective_weights()
    for name in ("conv1d.weight", "D", "norm.weight"):
        if method != "Full":
            assert torch.equal(eff[name], w[0][name]), name
    if cfg.sdt_heads:
        assert torch.equal(eff["A_log"][2:], w[0]["A_log"][2:]) and not torch.equal(eff["A_log"][:2], w[0]["A_log"][:2])
