"""``MambaRef``'s dtypes: every parameter in the requested dtype by default (a float64 block is float64
throughout, held against a pure float64 composition at 1e-12); mamba-ssm's float32 ``A_log``/``D`` as the
named option ``fp32_ssm_params``."""

import torch

from synthetic.mamba.ref import MambaRef, mamba_s6_inputs
from theory.s6 import selective_scan
from theory.tolerances import rel_err

F64 = torch.float64
# float64 block vs the same steps written out around theory.s6.selective_scan: the two differ only in the
# order of a few hundred float64 multiply-adds (einsum vs loop), ~1e-16 relative; 1e-12 leaves room for that
# and still fails at once if any parameter passed through float32 (that costs ~1e-8).
RTOL_F64_BLOCK = 1e-12


def _pure_f64(w, x, d_state, dt_rank):
    xs, z, dt_low, B, C = mamba_s6_inputs(w, x, d_state, dt_rank)
    delta = torch.nn.functional.softplus(torch.einsum("dr,brn->bdn", w["dt_proj.weight"], dt_low)
                                         + w["dt_proj.bias"][None, :, None])  # (Bt, D, N)
    y = selective_scan(xs, delta, -torch.exp(w["A_log"]), B, C) + w["D"][:, None] * xs  # (Bt, D, N)
    y = y * torch.nn.functional.silu(z)
    return torch.einsum("md,bdn->bnm", w["out_proj.weight"], y)  # (Bt, N, d_model)


def test_float64_block_is_float64_throughout():
    torch.manual_seed(0)
    blk = MambaRef(8, d_state=4, expand=2, dtype=F64)
    assert {p.dtype for p in blk.parameters()} == {F64}
    with torch.no_grad():  # values no float32 can hold, so a float32 detour anywhere would show
        blk.A_log.add_(1e-3 * torch.randn_like(blk.A_log))
        blk.D.add_(1e-3 * torch.randn_like(blk.D))
    assert not torch.equal(blk.A_log.float().double(), blk.A_log)
    x = torch.randn(2, 13, 8, dtype=F64)
    w = blk.weights()
    err = rel_err(blk(x), _pure_f64(w, x, blk.d_state, blk.dt_rank))
    assert err <= RTOL_F64_BLOCK, err
    # the same block with A_log, D rounded to float32 is ~1e-8 away: the tolerance separates the two
    w32 = dict(w, A_log=w["A_log"].float(), D=w["D"].float())
    assert rel_err(_pure_f64({k: v.double() for k, v in w32.items()}, x, blk.d_state, blk.dt_rank), blk(x)) > 1e-10


def test_fp32_ssm_params_option_keeps_a_log_and_d_in_float32():
    for dtype in (F64, torch.bfloat16):
        blk = MambaRef(8, d_state=4, expand=2, dtype=dtype, fp32_ssm_params=True)
        dtypes = {k: p.dtype for k, p in blk.named_parameters()}
        assert dtypes.pop("A_log") == torch.float32 and dtypes.pop("D") == torch.float32
        assert set(dtypes.values()) == {dtype}
    assert {p.dtype for p in MambaRef(8, d_state=4).parameters()} == {torch.get_default_dtype()}
