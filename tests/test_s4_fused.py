"""The fused deep-S4 layer (synthetic.s4.fused, Triton) against its float64 twin, values and gradients: the
convolution op alone (packed runs with an input of their own or shared, ReLU on load or not) and the whole stack
through the trainers' loss (:func:`synthetic.s4.model.run_losses`, ``FastPath(conv="fused")``) against the
Toeplitz form in float64, packed R runs and R = 1.

Two ways to run the kernels: on CUDA (the GPU tests; fp32 dots, TF32 off) and under Triton's interpreter on CPU
tensors (``TRITON_INTERPRET=1 pytest tests/test_s4_fused.py``: the variable must be set before triton is
imported, so it cannot be switched on from inside the test session). The CPU emulation (no Triton) is held to
the reference by tests/test_s4_conv.py, as every form of ``synthetic.s4.forms.CONV_FORMS``.
"""

import os

import pytest
import torch

from synthetic.s4 import fused, model as sm
from theory.tolerances import rel_err

F64 = torch.float64
# float32 kernels (fp32 dots, fp32 accumulation) vs float64. The op alone agrees to ~1e-7 relative (measured under
# the interpreter, s, dK and dx, N up to 130); sums over up to 513 positions on the GPU stay far below RTOL_CONV.
# The stack carries fp32 kernel generation too: the fp32 Toeplitz form itself is 2.5e-7 from float64 on the loss
# and 9.2e-5 on log_dt's gradient at the CUDA test's sizes (phases y·k of ~700 rad in fp32; measured on CPU), so
# the stack's gradients get 1e-3 (~10x margin). A wrong tap, mask or ReLU gives O(1e-2..1).
RTOL_CONV = 1e-5
RTOL_OUT, RTOL_GRAD = 1e-5, 1e-3
# torch.compile vs eager of the same loss: inductor's own fp32 kernel-generation code (sin/cos of y·k, fused sums)
# moves the gradients, identically for the Toeplitz form and the fused one (measured on CPU): 1.9e-5 at this test's
# sizes, up to 1.1e-3 (A_im) at D 4, Hc 2, N 24; 5e-3 leaves margin, and a lost or doubled term gives O(1e-1).
RTOL_COMPILED_GRAD = 5e-3

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = fused.triton_available()
INTERPRET = fused.interpreting()
needs_cuda = pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON and not INTERPRET),
                                reason="needs a CUDA GPU with triton (and TRITON_INTERPRET unset): the kernels' "
                                       "GPU check; on CPU see the interpreter tests")
needs_interpreter = pytest.mark.skipif(not (HAS_TRITON and INTERPRET),
                                       reason="runs the Triton kernels under Triton's CPU interpreter: needs triton "
                                              "installed and TRITON_INTERPRET=1 set before pytest starts")


@pytest.fixture(scope="module", autouse=True)
def first_config_only():
    """The kernels' autotuners with their first tile config only (values do not depend on tiles, and every config
    has a test of its own; keeps the GPU module under a minute on a fresh machine), restored after."""
    saved = fused.CONFIGS, fused.DK_CONFIGS
    fused.CONFIGS, fused.DK_CONFIGS = fused.CONFIGS[:1], fused.DK_CONFIGS[:1]
    fused._kernels.cache_clear()
    yield
    fused.CONFIGS, fused.DK_CONFIGS = saved
    fused._kernels.cache_clear()


@pytest.fixture(autouse=True)
def fp32_dots():
    """Full fp32 dots on CUDA (TF32 off), restored after."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def _device():
    return torch.device("cuda") if HAS_CUDA and not INTERPRET else torch.device("cpu")


def _conv_case(R, D, N, B, shared, seed=0):
    g = torch.Generator().manual_seed(seed)
    K = torch.randn(R, D, N, generator=g, dtype=F64) * torch.exp(-0.05 * torch.arange(N, dtype=F64))  # decaying taps
    x = torch.randn(*((D,) if shared else (R, D)), N, B, generator=g, dtype=F64)
    ds = torch.randn(R, D, N, B, generator=g, dtype=F64)
    return K, x, ds


def _check_conv(R, D, N, B, shared, relu_in):
    """fused_conv (float32 kernels) vs its torch emulation in float64: s, dK and dx."""
    dev = _device()
    K, x, ds = _conv_case(R, D, N, B, shared)
    Kf, xf = K.float().to(dev).requires_grad_(True), x.float().to(dev).requires_grad_(True)
    out = fused.fused_conv(Kf, xf, relu_in)
    dK, dx = torch.autograd.grad((out * ds.float().to(dev)).sum(), (Kf, xf))
    K64, x64 = K.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ref = fused._conv_torch(K64, x64, relu_in)
    dK64, dx64 = torch.autograd.grad((ref * ds).sum(), (K64, x64))
    assert out.shape == ref.shape and dx.shape == x.shape
    assert rel_err(out.cpu().double(), ref) < RTOL_CONV
    assert rel_err(dK.cpu().double(), dK64) < RTOL_CONV
    assert rel_err(dx.cpu().double(), dx64) < RTOL_CONV


def _layers(L, R, D, Hc, seed=0):
    """L layers of R runs' float64 parameters (leading run axis), Δ raised so the modes decay within N."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(L):
        runs = [sm.init_layer(D, Hc, generator=g, dtype=F64) for _ in range(R)]
        p = {k: torch.stack([q[k] for q in runs]) for k in runs[0]}
        p["log_dt"] = p["log_dt"] + 1.0
        out.append(p)
    return out


def _check_stack(L, R, D, Hc, N, B, linear=False):
    """The stack's per-run loss and its gradients with conv="fused" (float32, kernels) vs conv="toeplitz" in float64."""
    dev = _device()
    layers = _layers(L, R, D, Hc)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(D, N, B, generator=g, dtype=F64)
    y = torch.rand(R, D, N, B, generator=g, dtype=F64)

    def loss_and_grads(path, dtype, device):
        ps = [{k: v.to(device, dtype).requires_grad_(True) for k, v in p.items()} for p in layers]
        idx = sm.toeplitz_index(N, device)
        out = sm.deep_forward(ps, x.to(device, dtype), idx, path)
        loss = ((out - y.to(device, dtype)) ** 2).mean(dim=(1, 2, 3))  # (R,)
        grads = torch.autograd.grad(loss.sum(), [p[k] for p in ps for k in sorted(p)])
        return loss, grads

    loss, grads = loss_and_grads(sm.FastPath(conv="fused", linear=linear), torch.float32, dev)
    loss64, grads64 = loss_and_grads(sm.FastPath(conv="toeplitz", linear=linear), F64, torch.device("cpu"))
    assert rel_err(loss.cpu().double(), loss64) < RTOL_OUT
    for a, b in zip(grads, grads64):
        assert rel_err(a.cpu().double(), b) < RTOL_GRAD


# ---------------------------------------------------------------------------------------- interpreter (CPU)
@needs_interpreter
@pytest.mark.parametrize("R, D, N, B, shared, relu_in", [(2, 3, 40, 5, False, True), (1, 2, 70, 20, True, False),
                                                         (3, 2, 33, 17, False, False), (1, 1, 1, 1, True, True),
                                                         (1, 1, 300, 1, False, True)])
def test_interpreter_conv_matches_float64(R, D, N, B, shared, relu_in):
    _check_conv(R, D, N, B, shared, relu_in)


ALL_CONFIGS, ALL_DK_CONFIGS = fused.CONFIGS, fused.DK_CONFIGS  # before the fixture keeps the first only


def _check_config(k, monkeypatch, cases):
    """Config k of each list (the forward/dx list and the dK list, paired by index; the shorter one wraps) on
    ``cases`` of :func:`_check_conv`, with the batch split into several dK chunks and every buffer the op allocates
    pre-set to NaN (an output slot that no program stores would show)."""
    monkeypatch.setattr(fused, "CONFIGS", (ALL_CONFIGS[k % len(ALL_CONFIGS)],))
    monkeypatch.setattr(fused, "DK_CONFIGS", (ALL_DK_CONFIGS[k % len(ALL_DK_CONFIGS)],))
    monkeypatch.setattr(fused, "DK_MIN_CHUNK", 16)
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: empty(*a, **kw).fill_(float("nan")))
    fused._kernels.cache_clear()
    try:
        for case in cases:
            _check_conv(*case)
    finally:
        fused._kernels.cache_clear()


@needs_interpreter
@pytest.mark.parametrize("k", range(max(len(ALL_CONFIGS), len(ALL_DK_CONFIGS))))
def test_interpreter_every_tile_config_matches_float64(k, monkeypatch):
    # N 70: 3 bands of 32 (a middle band alone), 2 of 64, 1 of 128; N 45 shared x; B 40 -> 3 dK chunks
    _check_config(k, monkeypatch, [(2, 2, 70, 40, False, True), (2, 2, 45, 40, True, False)])


@needs_interpreter
@pytest.mark.parametrize("R", [1, 2])
def test_interpreter_stack_matches_float64_toeplitz(R):
    _check_stack(L=2, R=R, D=3, Hc=2, N=24, B=4)


# ------------------------------------------------------------------------------------------------ CUDA
@needs_cuda
@pytest.mark.parametrize("R, D, N, B, shared, relu_in", [(2, 3, 37, 5, False, False), (1, 2, 513, 40, True, True)])
def test_cuda_conv_matches_float64(R, D, N, B, shared, relu_in):
    _check_conv(R, D, N, B, shared, relu_in)


@needs_cuda
@pytest.mark.parametrize("k", range(max(len(ALL_CONFIGS), len(ALL_DK_CONFIGS))))
def test_cuda_every_tile_config_matches_float64(k, monkeypatch):
    """Each autotune config compiles on the GPU (the batch-on-M variant, stages) and gives the float64 values:
    the autotuner may pick any of them."""
    _check_config(k, monkeypatch, [(2, 3, 200, 300, False, True)])


@needs_cuda
@pytest.mark.parametrize("R, linear", [(1, False), (16, False), (4, True)])
def test_cuda_stack_matches_float64_toeplitz(R, linear):
    _check_stack(L=3, R=R, D=8, Hc=4, N=200, B=32, linear=linear)


@needs_cuda
def test_cuda_compiled_loss_equals_eager():
    """torch.compile of the trainers' loss with the fused form (the custom ops opaque to the compiler) gives the
    eager values and gradients."""
    path = sm.FastPath(conv="fused")
    dev = torch.device("cuda")
    R, D, Hc, N, B = 3, 8, 4, 64, 16
    base = [{k: v[0].float().to(dev) for k, v in p.items()} for p in _layers(2, 1, D, Hc)]
    state = sm.RunState.create(base, R, 2, 2, generator=torch.Generator().manual_seed(0))
    for m in state.mask:
        for v in m.values():
            v.fill_(True)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(D, N, B, generator=g).to(dev)
    y = torch.rand(D, N, B, generator=g).to(dev)
    idx = sm.toeplitz_index(N, dev)
    args = (state.base, state.train, state.mask, state.lora, state.rank_mask, x, y, idx)
    out = {}
    for name, f in (("eager", sm.losses_for(path)), ("compiled", sm.compiled_losses(path))):
        loss = f(*args)
        out[name] = (loss, torch.autograd.grad(loss.sum(), state.parameters(), allow_unused=True))
    assert rel_err(out["compiled"][0], out["eager"][0]) < RTOL_OUT
    for a, b in zip(out["compiled"][1], out["eager"][1]):
        if b is not None:
            assert rel_err(a, b) < RTOL_COMPILED_GRAD


def test_import_needs_no_triton():
    """The module imports and its ops run (as the torch emulation) on CPU whatever is installed."""
    if INTERPRET:
        pytest.skip("under TRITON_INTERPRET the ops run the kernels (the interpreter tests); unset it to run this one")
    K, x, _ = _conv_case(1, 2, 10, 3, True)
    assert rel_err(fused.fused_conv(K, x, False), fused._conv_torch(K, x, False)) == 0
    assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
