"""Held against the libraries people use: LoRA and DoRA against huggingface/peft, the Mamba block
against huggingface/transformers' ``MambaMixer``, the selective scan against transformers' slow scan.

Everything is built here from tiny randomly initialised configs: no hub download, nothing fetched at run
time (``HF_HUB_OFFLINE`` is set before the peers are imported). The peers come with the ``test`` extra;
without them the module skips. Two tests state a *peer's* behaviour that changes what a benchmark
measures (peft's LoRA on ``dt_proj`` and peft's prefix-tuning are no-ops on transformers' Mamba), so
that a peer which fixes them shows up here as a failure to revisit, not as a silent change.
"""

import copy
import os
import warnings

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded; the models below are built locally
peft = pytest.importorskip("peft", reason="needs peft (pip install .[test])")
transformers = pytest.importorskip("transformers", reason="needs transformers (pip install .[test])")
from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model  # noqa: E402
from transformers import MambaConfig, MambaForCausalLM  # noqa: E402
from transformers.models.mamba import modeling_mamba  # noqa: E402

from synthetic.mamba.peft import MambaPeftConfig, PeftMambaBlock, _key, get_backend  # noqa: E402
from synthetic.mamba.ref import MambaRef  # noqa: E402
from theory.peft import DoRAConfig, DoRALinear, LoRAConfig, LoRALinear  # noqa: E402
from theory.s6 import selective_scan  # noqa: E402
from theory.tolerances import rel_err  # noqa: E402

F64 = torch.float64
REF = get_backend("reference")

# --- tolerances, each with why ---
# LoRA/DoRA on one nn.Linear in float64: the same formula evaluated in another order (peft adds
# B(A x) to W x; we form W + BA first; DoRA's norm and scale likewise), so a few float64 ulps.
# Measured: forward 2.2e-16, gradients <= 4.9e-16, merged DoRA weight 9.3e-17 (LoRA's bit-identical).
RTOL_LINEAR_F64 = 1e-14
# transformers' MambaMixer in float64 still computes A = -exp(A_log) in float32 and rounds B and the
# scanned input to float32 inside its scan (``.float()`` casts); A alone is off by ~1e-8 relative.
# Measured on the block output: 7.8e-11 (frozen), 3.5e-10 (LoRA on in/out/x_proj).
RTOL_MIXER_F64 = 1e-8
# Gradients through those float32 casts: the cast's backward rounds the gradient of B (the x_proj
# path) to float32, ~6e-8 relative per entry. Measured: <= 4e-10 (in/out_proj factors), 1.7e-8 (x_proj).
RTOL_MIXER_GRAD_F64 = 1e-6
# The block in float32 on both sides: float32 rounding through ~100 multiply-adds. Measured 4.2e-8.
RTOL_MIXER_F32 = 1e-5
# theory.s6.selective_scan vs transformers' slow scan on float64 tensors holding float32-representable
# values (so the peer's float32 casts are exact): the same operations in the same order.
# Measured: bit-identical; 1e-15 leaves room for a reordered sum, nothing more.
RTOL_SCAN = 1e-15


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ------------------------------------------------------------------------------ LoRA / DoRA vs peft
class _OneLinear(nn.Module):
    def __init__(self, out_f=5, in_f=6):
        super().__init__()
        self.lin = nn.Linear(in_f, out_f)

    def forward(self, x):
        return self.lin(x)


def _pair(use_dora: bool, rank=2, alpha=4.0, seed=0):
    """(ours, peft model, peft layer) holding the same W, b, A, B (B non-zero) [and magnitude m ≠ ‖W‖]."""
    torch.manual_seed(seed)
    base = _OneLinear().double()
    W, b = base.lin.weight.detach().clone(), base.lin.bias.detach().clone()
    pm = get_peft_model(copy.deepcopy(base), LoraConfig(r=rank, lora_alpha=alpha, target_modules=["lin"],
                                                        lora_dropout=0.0, use_dora=use_dora))
    layer = pm.base_model.model.lin
    ours = (DoRALinear if use_dora else LoRALinear)(W, b, LoRAConfig(rank, alpha))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        ours.lora_B.copy_(torch.randn(ours.lora_B.shape, generator=g, dtype=F64))
        layer.lora_A["default"].weight.copy_(ours.lora_A)
        layer.lora_B["default"].weight.copy_(ours.lora_B)
        if use_dora:
            ours.magnitude.mul_(1.2)
            layer.lora_magnitude_vector["default"].weight.copy_(ours.magnitude)
    x = torch.randn(7, 6, generator=g, dtype=F64)
    w_out = torch.randn(7, 5, generator=g, dtype=F64)  # a random linear loss, so every gradient entry counts
    return ours, pm, layer, W, x, w_out


def _grads(ours, layer, use_dora):
    pairs = [(ours.lora_A.grad, layer.lora_A["default"].weight.grad),
             (ours.lora_B.grad, layer.lora_B["default"].weight.grad)]
    if use_dora:
        pairs.append((ours.magnitude.grad, layer.lora_magnitude_vector["default"].weight.grad))
    return pairs


@pytest.mark.parametrize("use_dora", [False, True], ids=["LoRA", "DoRA"])
def test_lora_and_dora_equal_peft(use_dora):
    """Forward, gradients (DoRA: with the norm detached, our default and peft's), merge and unmerge."""
    ours, pm, layer, W, x, w_out = _pair(use_dora)
    y, y_peft = ours(x), pm(x)
    assert rel_err(y, y_peft) <= RTOL_LINEAR_F64
    (y * w_out).sum().backward()
    (y_peft * w_out).sum().backward()
    for g_ours, g_peft in _grads(ours, layer, use_dora):
        assert rel_err(g_ours, g_peft) <= RTOL_LINEAR_F64
    ours.merge()
    layer.merge()
    assert rel_err(ours.weight, layer.base_layer.weight) <= RTOL_LINEAR_F64
    if not use_dora:
        assert torch.equal(ours.weight, layer.base_layer.weight)  # W + s·B A, the same float64 operations
    with torch.no_grad():
        assert rel_err(ours(x), pm(x)) <= RTOL_LINEAR_F64
    ours.unmerge()
    layer.unmerge()
    assert torch.equal(ours.weight, W)  # ours restores the frozen weight bit-exactly (it keeps a copy)
    assert rel_err(layer.base_layer.weight, W) <= RTOL_LINEAR_F64  # peft subtracts: W back to a few ulps


def test_dora_through_the_norm_is_not_peft():
    """The named option ``detach_norm=False`` differentiates through ‖W + BA‖: same forward, other
    gradients of A and B (by 10-100 %, not rounding) than peft's."""
    ours, pm, layer, W, x, w_out = _pair(True)
    through = DoRALinear(W, ours.bias, DoRAConfig(2, 4.0, detach_norm=False))
    with torch.no_grad():
        for name in ("lora_A", "lora_B", "magnitude"):
            getattr(through, name).copy_(getattr(ours, name))
    y, y_peft = through(x), pm(x)
    assert rel_err(y, y_peft) <= RTOL_LINEAR_F64
    (y * w_out).sum().backward()
    (y_peft * w_out).sum().backward()
    assert rel_err(through.lora_A.grad, layer.lora_A["default"].weight.grad) > 0.05
    assert rel_err(through.lora_B.grad, layer.lora_B["default"].weight.grad) > 0.05


def test_dora_zero_row_peft_gives_nan_ours_stays_finite():
    """A frozen weight with a zero row: peft's DoRA divides 0 by ‖0‖ = 0 (NaN in that output row at
    initialisation); ours divides by 1 there (the row stays zero; output = bias)."""
    torch.manual_seed(0)
    base = _OneLinear().double()
    with torch.no_grad():
        base.lin.weight[2] = 0.0
    pm = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, target_modules=["lin"], use_dora=True))
    ours = DoRALinear(base.lin.weight.detach(), base.lin.bias.detach(), LoRAConfig(2))
    x = torch.randn(3, 6, dtype=F64)
    with torch.no_grad():
        y_peft, y = pm(x), ours(x)
    assert bool(torch.isnan(y_peft[:, 2]).all()) and bool(torch.isfinite(y_peft[:, [0, 1, 3, 4]]).all())
    assert bool(torch.isfinite(y).all()) and torch.equal(y[:, 2], base.lin.bias[2].detach().expand(3))


# ---------------------------------------------------------------------- the Mamba block vs transformers
def _mamba_config(**kw):
    """A tiny random Mamba: d_model 8, D = 16 inner channels, H = 4 states, R = 1, 2 layers, vocabulary 32."""
    return MambaConfig(vocab_size=32, hidden_size=8, state_size=4, intermediate_size=16, conv_kernel=4,
                       time_step_rank=1, num_hidden_layers=2, **kw)


def _mixer(dtype=F64, seed=0):
    torch.manual_seed(seed)
    return modeling_mamba.MambaMixer(_mamba_config(), layer_idx=0).to(dtype).eval()


class _Wrap(nn.Module):
    """peft wants a parent module around the layers it adapts."""

    def __init__(self, mixer):
        super().__init__()
        self.mixer = mixer

    def forward(self, x):
        return self.mixer(x)


def _weights(mixer):
    return {k: v.detach().clone() for k, v in mixer.state_dict().items()}


@pytest.mark.parametrize("dtype, tol", [(F64, RTOL_MIXER_F64), (torch.float32, RTOL_MIXER_F32)])
def test_mamba_ref_takes_the_mixer_state_dict_and_matches_it(dtype, tol):
    mixer = _mixer(dtype)
    ref = MambaRef(8, d_state=4, expand=2, dt_rank=1, dtype=dtype)
    ref.load_state_dict(mixer.state_dict(), strict=True)  # same names, shapes and dtypes, no mapping needed
    x = torch.randn(2, 11, 8, dtype=dtype)
    with torch.no_grad():
        assert rel_err(ref(x), mixer(x)) <= tol


def test_peft_mamba_block_lora_equals_peft_lora_on_the_mixer():
    """LoRA on in_proj, out_proj and x_proj, the same factors on both sides: forward and factor gradients."""
    targets = ("in_proj.weight", "out_proj.weight", "x_proj.weight")
    mixer = _mixer()
    blk = PeftMambaBlock(_weights(mixer), d_state=4, dt_rank=1,
                         config=MambaPeftConfig(lora=targets, lora_rank=2, lora_alpha=4.0)).eval()
    pm = get_peft_model(_Wrap(copy.deepcopy(mixer)), LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0,
                                                                target_modules=[t.split(".")[0] for t in targets]))
    pm.eval()
    g = torch.Generator().manual_seed(1)
    layers = {t: getattr(pm.base_model.model.mixer, t.split(".")[0]) for t in targets}
    with torch.no_grad():
        for t in targets:
            m = blk.lora[_key(t)]
            m.lora_B.copy_(0.3 * torch.randn(m.lora_B.shape, generator=g, dtype=F64))
            layers[t].lora_A["default"].weight.copy_(m.lora_A)
            layers[t].lora_B["default"].weight.copy_(m.lora_B)
    x = torch.randn(2, 11, 8, generator=g, dtype=F64)
    w_out = torch.randn(2, 11, 8, generator=g, dtype=F64)
    y, y_peft = blk(x, REF), pm(x)
    assert rel_err(y, y_peft) <= RTOL_MIXER_F64
    assert rel_err(y, mixer(x)) > 1e-3  # the adapters act
    (y * w_out).sum().backward()
    (y_peft * w_out).sum().backward()
    for t in targets:
        m = blk.lora[_key(t)]
        assert rel_err(m.lora_A.grad, layers[t].lora_A["default"].weight.grad) <= RTOL_MIXER_GRAD_F64, t
        assert rel_err(m.lora_B.grad, layers[t].lora_B["default"].weight.grad) <= RTOL_MIXER_GRAD_F64, t


def test_selective_scan_equals_transformers_slow_scan():
    g = torch.Generator().manual_seed(3)
    Bt, D, N, H = 2, 5, 9, 3

    def f32_values(*shape, scale=1.0, shift=0.0):  # float64 tensors holding float32-representable values
        return (scale * torch.rand(*shape, generator=g) + shift if shift else torch.randn(*shape, generator=g)).double()

    u, B, C = f32_values(Bt, D, N), f32_values(Bt, H, N), f32_values(Bt, H, N)
    delta = f32_values(Bt, D, N, scale=1.0, shift=0.01)  # positive, as after the softplus
    A = -f32_values(D, H, scale=4.0, shift=1e-3)
    y_peer, h_peer = modeling_mamba.mamba_selective_scan(u, delta, A, B, C, return_last_state=True)
    y, h = selective_scan(u, delta, A, B, C, return_state=True)
    assert y_peer.dtype == F64
    assert rel_err(y, y_peer) <= RTOL_SCAN and rel_err(h, h_peer) <= RTOL_SCAN


# ------------------------------------------------------------------- the peers' no-ops, stated as tests
def test_peer_peft_lora_on_dt_proj_is_a_no_op_in_transformers_mamba():
    """Peer behaviour (transformers 5.15-5.24; 5.14 and earlier call the module): ``MambaMixer`` computes
    ``self.dt_proj.weight @ time_step`` and never calls the ``dt_proj`` module, so peft's LoRA on ``dt_proj``
    (which wraps the module) leaves the output bit-identical to the adapter disabled and its factors get no
    gradient. Our LoRA on ``dt_proj.weight`` is in the compute path (it builds the effective weight). If this
    test fails, the peer now applies the adapter: revisit docs/findings.md's note."""
    mixer = _mixer()
    pm = get_peft_model(_Wrap(copy.deepcopy(mixer)), LoraConfig(r=1, lora_alpha=1, target_modules=["dt_proj"],
                                                                lora_dropout=0.0))
    pm.eval()
    layer = pm.base_model.model.mixer.dt_proj
    with torch.no_grad():
        layer.lora_B["default"].weight.fill_(1.0)
    assert float(layer.get_delta_weight("default").norm()) > 0.1  # a real update ...
    x = torch.randn(2, 11, 8, dtype=F64, requires_grad=True)
    y = pm(x)
    with torch.no_grad(), pm.disable_adapter():
        y_off = pm(x)
    assert torch.equal(y, y_off)  # ... that does nothing
    y.sum().backward()
    assert layer.lora_A["default"].weight.grad is None and layer.lora_B["default"].weight.grad is None
    blk = PeftMambaBlock(_weights(mixer), d_state=4, dt_rank=1,
                         config=MambaPeftConfig(lora=("dt_proj.weight",), lora_rank=1))
    with torch.no_grad():
        blk.lora[_key("dt_proj.weight")].lora_B.fill_(1.0)
        assert rel_err(blk(x, REF), mixer(x)) > 1e-6  # ours acts


def test_peer_peft_prefix_tuning_is_a_no_op_on_mamba_for_causal_lm():
    """Peer behaviour: peft's prefix-tuning hands Mamba a ``past_key_values`` cache that Mamba swallows, so
    the logits are bit-identical to the adapter disabled, whatever the prefix holds (and with an
    attention mask the prepended mask does not fit: RuntimeError). peft's prompt tuning does act (soft
    prompt on the input embeddings). If this test fails, the peer's prefix-tuning now does something."""
    torch.manual_seed(0)
    lm = MambaForCausalLM(_mamba_config()).eval()
    ids = torch.randint(0, 32, (2, 7))
    dims = dict(num_virtual_tokens=4, num_attention_heads=1, token_dim=8, num_layers=2)
    prefix = get_peft_model(copy.deepcopy(lm), PrefixTuningConfig(task_type="CAUSAL_LM", **dims))
    prompt = get_peft_model(copy.deepcopy(lm), PromptTuningConfig(task_type="CAUSAL_LM", **dims))
    with torch.no_grad():
        for p in list(prefix.prompt_encoder.parameters()) + list(prompt.prompt_encoder.parameters()):
            p.normal_()  # non-zero prefix and prompt
        with prefix.disable_adapter():
            off = prefix(input_ids=ids).logits
        assert torch.equal(prefix(input_ids=ids).logits, off)
        with pytest.raises(RuntimeError):
            prefix(input_ids=ids, attention_mask=torch.ones_like(ids))
        on = prompt(input_ids=ids).logits[:, -ids.shape[1]:]  # the positions of the real tokens
        assert rel_err(on, off) > 1e-3
