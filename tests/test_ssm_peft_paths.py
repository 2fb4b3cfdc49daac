"""ssm_peft beyond the plain CPU path: the fused path emulated on CPU, a bf16 model with fp32
deltas, Falcon-Mamba / Jamba / Zamba2, and the refusals (each with its reason)."""

import os
import warnings

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
peft = pytest.importorskip("peft", reason="needs peft and transformers (pip install .[hf])")
transformers = pytest.importorskip("transformers", reason="needs peft and transformers (pip install .[hf])")
import ssm_peft  # noqa: E402
from ssm_peft import _peft_registry  # noqa: E402
from synthetic.mamba.ref import MambaRef, selective_scan_reference  # noqa: E402
from tests.test_ssm_peft import (CONFIGS, RTOL_CACHE, RTOL_MIXER_F64, ids_of, randomise, sdt_config,  # noqa: E402
                                 tiny_mamba, tiny_mamba2, train)
from theory.tolerances import rel_err  # noqa: E402
from transformers.models.mamba import modeling_mamba  # noqa: E402

F64 = torch.float64


@pytest.fixture(autouse=True)
def _quiet():
    import logging
    logging.disable(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)


# ------------------------------------------------------------------------------- fused path, emulated
def emulated_mamba_inner_fn(calls):
    """A reference ``mamba_inner_fn`` that reads only the tensors it is passed, as the CUDA kernel does."""
    def inner(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias, A,
              B=None, C=None, D=None, delta_bias=None, delta_softplus=True, **kwargs):
        calls.append(1)
        x, z = xz.chunk(2, dim=1)  # (Bt, D, L)
        L, R, H = x.shape[-1], delta_proj_weight.shape[1], A.shape[1]
        x = F.silu(F.conv1d(x, conv1d_weight, conv1d_bias, padding=conv1d_weight.shape[-1] - 1,
                            groups=x.shape[1])[..., :L])
        dbc = torch.einsum("ed,bdl->bel", x_proj_weight, x)  # (Bt, R + 2H, L)
        dt = torch.einsum("dr,brl->bdl", delta_proj_weight, dbc[:, :R])  # (Bt, D, L)
        y = selective_scan_reference(x, dt, A, dbc[:, R:R + H], dbc[:, R + H:], D, z=z, delta_bias=delta_bias,
                                     delta_softplus=delta_softplus)
        out = torch.einsum("md,bdl->blm", out_proj_weight, y)  # (Bt, L, d_model)
        return out if out_proj_bias is None else out + out_proj_bias
    return inner


@pytest.mark.parametrize("method", ["sdlora", "state_offset", "initial_state"])
def test_fused_path_emulated_adapter_acts_and_gets_gradients(monkeypatch, method):
    calls = []
    monkeypatch.setattr(modeling_mamba, "mamba_inner_fn", emulated_mamba_inner_fn(calls))
    base = tiny_mamba()
    pm = peft.get_peft_model(tiny_mamba(), CONFIGS[method](base))
    randomise(pm)
    ids = ids_of()
    pm.train()  # transformers takes the fused path in training without a cache
    out = pm(input_ids=ids, labels=ids)
    if method == "sdlora":
        assert calls, "the fused path did not run"
    else:
        assert not calls, "a state adapter must send the mixer to the unfused path (the kernel takes no state)"
    out.loss.backward()
    grads = {n: p.grad for n, p in pm.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and bool(g.abs().sum() > 0) for g in grads.values())
    pm.eval()
    with torch.no_grad():
        unfused = pm(ids).logits
        assert rel_err(out.logits, unfused) <= RTOL_MIXER_F64
        assert not torch.allclose(unfused, base(ids).logits)


# ---------------------------------------------------------------------------------------- bf16
def test_bf16_model_trains_fp32_deltas():
    base = tiny_mamba(dtype=torch.bfloat16)
    pm = peft.get_peft_model(tiny_mamba(dtype=torch.bfloat16), sdt_config(base, lora_rank=2, dt=True))
    trainable = [p for p in pm.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    before = [p.detach().clone() for p in trainable]
    loss = train(pm, steps=3, lr=1e-2, wd=0.1)
    assert torch.isfinite(torch.tensor(loss))
    assert all(not torch.equal(a, p) for a, p in zip(before, trainable))
    mixer = pm.base_model.model.backbone.layers[0].mixer
    A_eff, sparse = mixer.A_log.detach().flatten(), mixer.parametrizations.A_log[0]
    frozen = torch.ones(A_eff.numel(), dtype=torch.bool)
    frozen[sparse.index] = False
    assert A_eff.dtype == torch.bfloat16
    assert torch.equal(A_eff[frozen], base.backbone.layers[0].mixer.A_log.flatten()[frozen])


# ------------------------------------------------------------------------------ other architectures
def tiny_falcon_mamba():
    torch.manual_seed(0)
    return transformers.FalconMambaForCausalLM(transformers.FalconMambaConfig(
        vocab_size=40, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2, time_step_rank=2,
        conv_kernel=3)).to(F64)


def tiny_jamba():
    """Jamba's 1 : 1 attention : Mamba layout at toy size; float32 (its MoE grouped matmul refuses float64)."""
    torch.manual_seed(0)
    return transformers.JambaForCausalLM(transformers.JambaConfig(
        vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, mamba_d_state=4, mamba_d_conv=3, mamba_expand=2, mamba_dt_rank=2, attn_layer_period=2,
        attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1, num_experts=2, num_experts_per_tok=1,
        use_mamba_kernels=False))


def tiny_zamba2():
    torch.manual_seed(0)
    return transformers.Zamba2ForCausalLM(transformers.Zamba2Config(
        vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=2,
        mamba_d_state=4, mamba_d_conv=3, mamba_expand=2, mamba_headdim=8, mamba_ngroups=1, n_mamba_heads=4,
        chunk_size=4, layers_block_type=["mamba", "hybrid", "mamba"], hybrid_layer_ids=[1], num_mem_blocks=1,
        use_mem_rope=False, attention_head_dim=8, intermediate_size=32, use_shared_attention_adapter=False)).to(F64)


ARCHS = {"falcon_mamba": tiny_falcon_mamba, "jamba": tiny_jamba, "zamba2": tiny_zamba2}


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("method", ["sdlora", "state_offset", "initial_state"])
def test_other_architectures(arch, method):
    """Zero adapter == base; training moves it; cached generation == recomputing."""
    base = ARCHS[arch]()
    pm = peft.get_peft_model(ARCHS[arch](), CONFIGS[method](base))
    ids = ids_of()
    assert torch.equal(pm(ids).logits, base(ids).logits)
    train(pm, steps=2)
    pm.eval()
    assert not torch.allclose(pm(ids).logits, base(ids).logits)
    kw = dict(max_new_tokens=3, do_sample=False, output_scores=True, return_dict_in_generate=True)
    cached = pm.generate(input_ids=ids[:, :4], use_cache=True, **kw)
    full = pm.generate(input_ids=ids[:, :4], use_cache=False, **kw)
    assert max(rel_err(a, b) for a, b in zip(cached.scores, full.scores)) <= RTOL_CACHE


# ------------------------------------------------------------------------------------- refusals
class _RefStack(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.block = MambaRef(8, d_state=4)

    def forward(self, x):
        return self.block(x)


@pytest.mark.parametrize("config", [ssm_peft.StateOffsetConfig, ssm_peft.InitialStateConfig])
def test_state_methods_refuse_blocks_without_a_reachable_scan(config):
    with pytest.raises(NotImplementedError, match="reference block computes its scan"):
        peft.get_peft_model(_RefStack(), config())


def test_refusals_name_the_reason():
    with pytest.raises(ValueError, match="no SSM mixer"):
        peft.get_peft_model(torch.nn.Sequential(torch.nn.Linear(2, 2)), ssm_peft.StateOffsetConfig())
    with pytest.raises(ValueError, match="sdt_select"):
        peft.get_peft_model(tiny_mamba(), ssm_peft.SDTConfig())
    with pytest.raises(NotImplementedError, match="Mamba-1 only"):
        ssm_peft.sdt_select(tiny_mamba2(), ssm_peft.SDTConfig(rule="official"), [ids_of()], steps=1,
                            show_progress=False)
    m2 = tiny_mamba2()
    with pytest.raises(ValueError, match="no linear 'x_proj'"):
        peft.get_peft_model(m2, ssm_peft.SDTConfig(lora_rank=1, lora_targets=["x_proj"],
                                                   selection=ssm_peft.first_selection(m2, ssm_peft.SDTConfig())))
    with pytest.raises(ValueError, match="lora_targets"):
        ssm_peft.SDTConfig(lora_targets=["conv1d"])
    pm = peft.get_peft_model(tiny_mamba(), ssm_peft.StateOffsetConfig())
    with pytest.raises(ValueError, match="one adapter per model"):
        pm.add_adapter("other", ssm_peft.StateOffsetConfig())


def test_versions_outside_the_tested_range_are_refused(monkeypatch):
    monkeypatch.setitem(_peft_registry.TESTED, "peft", ("0.1", "0.2"))
    with pytest.raises(ImportError, match="tested with peft>=0.1,<0.2"):
        _peft_registry.check_versions()


def test_untested_versions_warn_when_the_environment_allows(monkeypatch):
    monkeypatch.setitem(_peft_registry.TESTED, "peft", ("0.1", "0.2"))
    monkeypatch.setenv(_peft_registry.ALLOW_UNTESTED, "1")
    with pytest.warns(UserWarning, match="outside the tested range >=0.1,<0.2"):
        _peft_registry.check_versions()
