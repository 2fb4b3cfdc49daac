"""Both experiments' DoRA uses theory.peft's default convention, the row norm ‖W + BA‖ detached in the
backward (peft's and the DoRA paper's Sec. 4.3; the paper's benchmark trained DoRA with peft)."""

import inspect

import torch

import synthetic.s4.model as sm
from synthetic.mamba.peft import BENCHMARK_METHODS, PeftMambaBlock, _key
from synthetic.mamba.ref import MambaRef, block_weights
from theory import peft
from theory.tolerances import rel_err

F64 = torch.float64


def test_s4_dora_goes_through_theory_peft_with_the_norm_detached():
    assert sm.dora_normalize is peft.dora_normalize
    assert inspect.signature(peft.dora_normalize).parameters["detach_norm"].default is True
    g = torch.Generator().manual_seed(0)
    V = torch.randn(2, 4, 4, generator=g, dtype=F64, requires_grad=True)  # (R, D, D): W + B A per run
    m = torch.rand(2, 4, generator=g, dtype=F64) + 0.5
    w_out = torch.randn(2, 4, 4, generator=g, dtype=F64)
    (sm.dora_normalize(V, m) * w_out).sum().backward()
    c = torch.linalg.vector_norm(V.detach(), dim=-1, keepdim=True)  # the norm as a constant
    assert rel_err(V.grad, m[..., None] * w_out / c) < 1e-12


def test_mamba_dora_modules_detach_the_norm():
    torch.manual_seed(0)
    w = block_weights(MambaRef(8, d_state=4, expand=2, dtype=F64))
    blk = PeftMambaBlock(w, d_state=4, dt_rank=1, config=BENCHMARK_METHODS["DoRA (Proj)"]({"rank": 2}))
    for name in ("in_proj.weight", "out_proj.weight"):
        mod = blk.lora[_key(name)]
        assert isinstance(mod, peft.DoRAMatrix) and mod.config.detach_norm is True
