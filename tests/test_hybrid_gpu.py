"""GPU checks of the hybrid (skipped without CUDA; the mamba-ssm ones also without mamba-ssm): the hybrid stack on
CUDA (reference scan, torch's CUDA SDPA kernels) against its float64 CPU twin; with mamba-ssm, the mamba_ssm
backend (unfused and fused) against the reference backend on the same weights, outputs and gradients, and SDT's
frozen entries bit-identical after AdamW steps through the CUDA kernels; the tiny experiment end to end on CUDA."""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("no_tf32", "triton_one_config")]  # conftest.py
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU (and mamba-ssm for the backend tests: pip install .[gpu])", allow_module_level=True)

from synthetic.hybrid import experiment as hexp  # noqa: E402
from synthetic.hybrid.model import HybridRef, layer_kinds  # noqa: E402
from synthetic.hybrid.peft import METHODS, PeftHybridStack, frozen_layers  # noqa: E402
from synthetic.mamba.peft import get_backend  # noqa: E402
from synthetic.mamba.ref import MambaRef  # noqa: E402
from synthetic.results import ResultsFile, run_records  # noqa: E402
from theory.tolerances import rel_err  # noqa: E402

DEV = torch.device("cuda")
D_MODEL, H, HEADS = 32, 8, 4
KINDS = layer_kinds(4, 4, 2)  # M M A M
BUDGET = {"rank": 2, "proj_rank": 2, "ssm_rank": 2, "channels": 8}
# float32 on the GPU vs float64 (or vs mamba-ssm's kernel): one Mamba block agrees to ~2.5e-5 with mamba-ssm
# (tests/test_mamba_gpu.py allows 1e-4); here three Mamba blocks, a CUDA SDPA kernel (another summation order of
# the softmax) and four residual additions compose, so the errors add up to ~4x: 4e-4 on outputs, 2e-3 (relative,
# Frobenius) on gradients. A missing or wrong term gives O(1e-2..1).
RTOL_OUT, RTOL_GRAD = 4e-4, 2e-3


def _perturb(module, seed=1, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_((scale * torch.randn(p.shape, generator=g, dtype=torch.float64)).to(p.device, p.dtype))


def _stack(layers, method, device, dtype=torch.float32):
    config = METHODS[method](BUDGET)
    ch = [[0, 3, 7, 12, 20, 33, 41, 63]] * 3 if config.mamba.sdt_channels else None
    st = PeftHybridStack(layers, d_state=H, dt_rank=2, n_heads=HEADS, norm="rmsnorm", config=config, channels=ch,
                         generator=torch.Generator().manual_seed(0)).to(device, dtype)
    _perturb(st)
    return st


@pytest.mark.parametrize("method", ["LoRA (Attn) + SDT (SSM)", "DoRA (Lin) + DoRA (SSM)"])
def test_cuda_reference_stack_matches_float64_cpu(method):
    torch.manual_seed(0)
    model = HybridRef(KINDS, D_MODEL, HEADS, lambda: MambaRef(D_MODEL, d_state=H, expand=2), norm="rmsnorm")
    layers = frozen_layers(model)
    ref = get_backend("reference")
    x = torch.randn(2, 64, D_MODEL)
    cpu = _stack(layers, method, "cpu", torch.float64)
    gpu = _stack(layers, method, DEV)
    assert rel_err(gpu(x.to(DEV), ref).cpu().double(), cpu(x.double(), ref)) < RTOL_OUT


@pytest.mark.parametrize("fused", [False, True])
def test_mamba_ssm_backend_matches_reference(fused):
    mamba_ssm = pytest.importorskip("mamba_ssm", reason="needs mamba-ssm (pip install .[gpu])")
    backend = get_backend("mamba_ssm", fused=fused)
    if fused and backend.inner_fn is None:
        pytest.skip("needs causal-conv1d for the fused path (pip install .[gpu-conv])")
    torch.manual_seed(0)
    model = HybridRef(KINDS, D_MODEL, HEADS, lambda: mamba_ssm.Mamba(D_MODEL, d_state=H, expand=2, device=DEV),
                      norm="rmsnorm", device=DEV)
    layers = frozen_layers(model)
    ref = get_backend("reference")
    x = torch.randn(2, 64, D_MODEL, device=DEV)
    a, b = _stack(layers, "LoRA (Attn) + SDT (SSM)", DEV), _stack(layers, "LoRA (Attn) + SDT (SSM)", DEV)
    out_a, out_b = a(x, backend), b(x, ref)
    assert rel_err(out_a, out_b) < RTOL_OUT
    g = torch.randn_like(out_a)
    out_a.backward(g)
    out_b.backward(g)
    pb = dict(b.named_parameters())
    for name, p in a.named_parameters():
        if p.requires_grad:
            assert rel_err(p.grad, pb[name].grad) < RTOL_GRAD, name
    opt = torch.optim.AdamW([p for p in a.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.5)
    for _ in range(3):  # SDT's masks hold through the CUDA kernels: unselected channels stay bit-identical
        loss = a(torch.randn(2, 64, D_MODEL, device=DEV), backend).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for lw, blk in zip([lw for lw in layers if lw.kind == "mamba"], a.mamba_blocks):
        keep = torch.ones(64, dtype=torch.bool, device=DEV)
        keep[blk.channels] = False
        assert torch.equal(blk.effective_weights()["A_log"][keep], lw.weights["A_log"][keep])


def test_tiny_experiment_on_cuda(tmp_path):
    assert hexp.main(["--preset", "tiny", "--device", "cuda", "--out", str(tmp_path), "--lr-extend-factor", "0"]) == 0
    recs = run_records(ResultsFile(tmp_path / "hybrid_regression_tiny.jsonl").load())
    assert {r["method"] for r in recs} == set(METHODS) and all(r["status"] == "ok" for r in recs)
    assert all(r["device"] != "cpu" for r in recs)
