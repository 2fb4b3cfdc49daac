"""ssm_peft on a GPU: the real fused kernels and mamba-ssm's modules.
Skips cleanly without CUDA or mamba-ssm. What runs: SDT on mamba-ssm's ``Mamba`` block, fused path, the
adapter acting and receiving gradients."""

import importlib.util

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on a GPU machine)"),
              pytest.mark.skipif(importlib.util.find_spec("mamba_ssm") is None, reason="needs mamba-ssm (pip install .[gpu])")]


def test_sdt_on_mamba_ssm_block_fused_path_acts_and_gets_gradients():
    import peft

    import ssm_peft
    from mamba_ssm import Mamba

    class Stack(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Mamba(64, d_state=16).cuda()

        def forward(self, x):
            return self.block(x)

    torch.manual_seed(0)
    base = Stack()
    config = ssm_peft.SDTConfig(n_channels=8, n_states=4, lora_rank=2)
    config.selection = ssm_peft.first_selection(base, config)
    x = torch.randn(2, 32, 64, device="cuda")
    ref = base(x).detach()
    pm = peft.get_peft_model(base, config)
    assert torch.equal(pm(x), ref)
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    out = pm(x)
    assert not torch.allclose(out, ref)
    out.square().mean().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in pm.parameters() if p.requires_grad)
