"""ssm_peft on a GPU: the real fused kernels (issue 28, item 5). Skips cleanly without CUDA or the kernels.

What runs: SDT on mamba-ssm's ``Mamba`` block, fused path, the adapter acting and receiving gradients; and on
transformers' ``MambaForCausalLM`` and ``Mamba2ForCausalLM`` (float32, mamba-ssm's and causal-conv1d's kernels),
SDLoRA adapting every tensor the fused kernel reads: the fused training path (``mamba_inner_fn`` /
``mamba_split_conv1d_scan_combined``) and the unfused one (causal_conv1d_fn, the selective / chunked scan kernel,
out_proj) give the same logits, loss and gradients of every trainable tensor, and the adapted model differs from
the base (the adapter is not bypassed).
"""

import copy
import importlib.util
import os

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("no_tf32", "triton_one_config")]  # conftest.py
if not torch.cuda.is_available():  # importing mamba_ssm without CUDA fails, so check CUDA first
    pytest.skip("needs a CUDA GPU, mamba-ssm and causal-conv1d (pip install .[gpu])", allow_module_level=True)
if importlib.util.find_spec("mamba_ssm") is None:
    pytest.skip("needs mamba-ssm (pip install .[gpu]); CUDA is present", allow_module_level=True)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
peft = pytest.importorskip("peft", reason="needs peft and transformers (pip install .[hf])")
transformers = pytest.importorskip("transformers", reason="needs peft and transformers (pip install .[hf])")
import ssm_peft  # noqa: E402
from ssm_peft.layouts import fused_path  # noqa: E402
from theory.tolerances import rel_err  # noqa: E402

DEV = torch.device("cuda")
needs_causal_conv1d = pytest.mark.skipif(
    importlib.util.find_spec("causal_conv1d") is None,
    reason="needs causal-conv1d (pip install .[gpu-conv]): transformers' fused path and its unfused conv kernel use it")
# Fused vs unfused, both float32 with TF32 off. Mamba-1: the same selective-scan CUDA kernel in both paths, the
# fused one recomputing conv and projections in its backward in another order: ~1e-6 on outputs, ~1e-4 on
# gradients (atomics), as tests/test_mamba_gpu.py holds mamba-ssm's block to. Mamba-2: both paths run Triton
# kernels whose tl.dot takes TF32 inputs on Hopper (~5e-4 per product), as tests/test_mamba2_gpu.py measured.
RTOL = {"mamba": {"out": 1e-4, "grad": 1e-3}, "mamba2": {"out": 5e-3, "grad": 2e-2}}
# The adapter's effect on the logits must exceed the paths' tolerance this many times, or it may be bypassed
# (on CPU, unfused: 0.053 relative for Mamba-1 and 0.128 for Mamba-2 with these adapters).
EFFECT_OVER_TOL = 10


def test_sdt_on_mamba_ssm_block_fused_path_acts_and_gets_gradients():
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


# --------------------------------------------------------------------- transformers' fused vs unfused path
def tiny_hf(kind: str):
    """Two float32 layers at kernel-friendly sizes (d_model 64, 16 states, Mamba-2: 8 heads of 16, one group).

    Mamba-2's in_proj width, 2·d_inner + 2·G·N + heads, must be a multiple of 8: transformers' unfused path hands
    causal-conv1d a channel-last slice of in_proj's output, whose strides that kernel requires to be multiples of 8
    (4 heads of 32 gave 292 and failed on an H100: notes/gpu_logs/ssm_peft_xproj_split_2026-12-06)."""
    torch.manual_seed(0)
    if kind == "mamba":
        cfg = transformers.MambaConfig(vocab_size=64, hidden_size=64, state_size=16, num_hidden_layers=2, expand=2,
                                       conv_kernel=4, time_step_rank=8, use_mambapy=False)
        return transformers.MambaForCausalLM(cfg).to(DEV)
    cfg = transformers.Mamba2Config(vocab_size=64, hidden_size=64, state_size=16, num_hidden_layers=2, expand=2,
                                    num_heads=8, head_dim=16, n_groups=1, conv_kernel=4, chunk_size=16)
    return transformers.Mamba2ForCausalLM(cfg).to(DEV)


# Every weight the fused kernel is handed carries an adapter: SDT on A_log, W_B/W_C (Mamba-2: in_proj's B/C rows)
# and Δ's parameters, LoRA on each projection.
TARGETS = {"mamba": ["in_proj", "x_proj", "dt_proj", "out_proj"], "mamba2": ["in_proj", "out_proj"]}


def _adapted(kind: str):
    base = tiny_hf(kind)
    config = ssm_peft.SDTConfig(n_channels=4, n_states=4, dt=True, lora_rank=2, lora_targets=TARGETS[kind])
    config.selection = ssm_peft.first_selection(base, config)
    pm = peft.get_peft_model(copy.deepcopy(base), config)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a non-zero adapter, so that a bypassed one shows
        for p in pm.parameters():
            if p.requires_grad:
                p.copy_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return base, pm


def _run(pm, ids, fused: bool):
    pm.train()  # transformers takes the fused path only in training without a cache
    pm.zero_grad(set_to_none=True)
    with fused_path(pm, enabled=fused) as seen:
        out = pm(input_ids=ids, labels=ids)
        out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in pm.named_parameters() if p.requires_grad}
    return out.logits.detach(), out.loss.detach(), grads, seen


@needs_causal_conv1d
@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_fused_and_unfused_paths_agree_with_the_adapter(kind):
    base, pm = _adapted(kind)
    ids = torch.randint(0, 64, (2, 64), generator=torch.Generator().manual_seed(1)).to(DEV)
    logits_f, loss_f, grads_f, seen_f = _run(pm, ids, fused=True)
    assert seen_f.calls == seen_f.kernel == 2, (
        f"the fused kernel did not run ({seen_f}): transformers {transformers.__version__} did not take mamba-ssm's "
        "fused function (it binds it at import; is causal-conv1d importable?)")
    logits_u, loss_u, grads_u, seen_u = _run(pm, ids, fused=False)
    assert seen_u.calls == 2 and seen_u.kernel == 0
    tol = RTOL[kind]
    assert rel_err(logits_f, logits_u) < tol["out"]
    assert rel_err(loss_f, loss_u) < tol["out"]
    assert grads_f and set(grads_f) == set(grads_u)
    for name, g in grads_f.items():
        assert bool(g.abs().sum() > 0), f"{name}: no gradient on the fused path"
        assert rel_err(g, grads_u[name]) < tol["grad"], name
    base.train()
    with torch.no_grad():
        assert rel_err(logits_f, base(input_ids=ids).logits) > EFFECT_OVER_TOL * tol["out"], "the adapter is bypassed"
