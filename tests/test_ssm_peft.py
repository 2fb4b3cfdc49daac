"""ssm_peft on transformers' Mamba models: tiny random configs, CPU, float64 where the
model allows. Every "pretrained" model is trained here and saved to a temporary folder; nothing is downloaded.

The properties: a zero adapter is the base model exactly; SDT's effective weights and the mixer output equal the
reference block of synthetic/mamba with the same trainable values; state-offset equals the explicit recurrence
with the offset and initial-state equals a prefix (Proposition 1); AdamW with weight decay leaves frozen entries
bit-identical and moves the selected ones; trainable counts equal the closed forms (and the official ones);
save -> load, merge, cached generation and the fused path (emulated on CPU) all keep the adapted function.
"""

import json
import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
peft = pytest.importorskip("peft", reason="needs peft and transformers (pip install .[hf])")
transformers = pytest.importorskip("transformers", reason="needs peft and transformers (pip install .[hf])")
import ssm_peft  # noqa: E402
from ssm_peft import state as ssm_state  # noqa: E402
from ssm_peft.selection import official_counts  # noqa: E402
from synthetic.mamba.peft import MambaPeftConfig, PeftMambaBlock  # noqa: E402
from synthetic.mamba.ref import mamba_forward, selective_scan_reference  # noqa: E402
from theory.s6 import selective_scan  # noqa: E402
from theory.tolerances import rel_err  # noqa: E402
from transformers import (Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM)  # noqa: E402
from transformers.models.mamba import modeling_mamba  # noqa: E402

F64 = torch.float64
# transformers' Mamba mixers compute A = -exp(A_log) and parts of the scan in float32 even for a float64 model
# (tests/test_peers.py measured 7.8e-11 on a block output against a float64 reference); 1e-8 leaves room.
RTOL_MIXER_F64 = 1e-8
# Cached generation vs recomputing: the one-token update and the full scan round differently in the float32
# parts of the mixers (measured <= 5e-6 relative on these tiny models, adapter or not).
RTOL_CACHE = 1e-4
# Formulas evaluated in float64 in another order (einsum vs explicit loop): a few ulps.
RTOL_F64 = 1e-12


@pytest.fixture(autouse=True)
def _quiet():
    import logging
    logging.disable(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)


def tiny_mamba(seed=0, dtype=F64):
    torch.manual_seed(seed)
    cfg = MambaConfig(vocab_size=40, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2, time_step_rank=2,
                      conv_kernel=3)
    return MambaForCausalLM(cfg).to(dtype)


def tiny_mamba2(seed=0, dtype=F64):
    torch.manual_seed(seed)
    cfg = Mamba2Config(vocab_size=40, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2, num_heads=4,
                       head_dim=8, n_groups=2, conv_kernel=3, chunk_size=4)
    return Mamba2ForCausalLM(cfg).to(dtype)


MODELS = {"mamba": tiny_mamba, "mamba2": tiny_mamba2}


def ids_of(seed=1, shape=(2, 9)):
    return torch.randint(0, 40, shape, generator=torch.Generator().manual_seed(seed))


def sdt_config(model, **kw):
    config = ssm_peft.SDTConfig(**{"n_channels": 3, "n_states": 2, **kw})
    config.selection = ssm_peft.sdt_select(model, config, [ids_of(5)], steps=2, show_progress=False)
    return config


CONFIGS = {"sdt": sdt_config,
           "sdlora": lambda m: sdt_config(m, lora_rank=2, dt=True),
           "state_offset": lambda m: ssm_peft.StateOffsetConfig(),
           "initial_state": lambda m: ssm_peft.InitialStateConfig()}


def adapted(kind, method, seed=0):
    base = MODELS[kind](seed)
    return base, peft.get_peft_model(MODELS[kind](seed), CONFIGS[method](base))


def randomise(pm, scale=0.3, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:
                p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def train(pm, steps=3, lr=1e-2, wd=0.1):
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=lr, weight_decay=wd)
    for i in range(steps):
        ids = ids_of(10 + i)
        loss = pm(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss)


# ----------------------------------------------------------------------------------- zero adapter
@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_zero_adapter_equals_base_and_training_moves_it(kind, method):
    base, pm = adapted(kind, method)
    ids = ids_of()
    assert torch.equal(pm(ids).logits, base(ids).logits)
    train(pm)
    assert not torch.allclose(pm(ids).logits, base(ids).logits)


# ------------------------------------------------------------------------------- reference formulas
def test_sdt_equals_reference_block():
    """SDT on MambaMixer == synthetic.mamba.peft.PeftMambaBlock with the same selection and trained values."""
    base, pm = adapted("mamba", "sdt")
    randomise(pm)
    mixer = pm.base_model.model.backbone.layers[0].mixer
    entry = pm.peft_config["default"].selection["layers"]["backbone.layers.0.mixer"]
    weights = {k: v.detach() for k, v in base.backbone.layers[0].mixer.named_parameters()}
    ref = PeftMambaBlock(weights, d_state=4, dt_rank=2, config=MambaPeftConfig(sdt_channels=3, sdt_states=2),
                         channels=entry["channels"], states=entry["states"])
    with torch.no_grad():  # the reference stores values; ours stores base + delta: copy ours into it
        for key, tensor in (("A_log", mixer.A_log), ("x_proj__weight", mixer.x_proj.weight)):
            ref.sdt[key].values.copy_(tensor.reshape(-1)[ref.sdt[key].index])
    w = ref.effective_weights()
    assert torch.equal(w["A_log"], mixer.A_log) and torch.equal(w["x_proj.weight"], mixer.x_proj.weight)
    hidden = torch.randn(2, 7, 16, dtype=F64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert rel_err(mixer(hidden), mamba_forward(w, hidden, d_state=4, dt_rank=2)) <= RTOL_MIXER_F64


def _scan_inputs(D=3, H=4, L=6, Bt=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    # float32-representable float64 values: transformers' scan casts u and B to float32, exactly on these
    r = lambda *s: torch.randn(*s, generator=g).to(F64)  # noqa: E731
    return dict(u=r(Bt, D, L), dt=r(Bt, D, L), A=-torch.rand(D, H, generator=g, dtype=F64) - 0.5, B=r(Bt, H, L),
                C=r(Bt, H, L), D=r(D), z=r(Bt, D, L), bias=r(D))


def _wrapped_scan(s, adapter, L0=0, return_last_state=True):
    scan = ssm_state._mamba1_scan(modeling_mamba.mamba_selective_scan.__dict__.get("_ssm_peft_original",
                                                                                  modeling_mamba.mamba_selective_scan))
    ssm_state._push(adapter)
    try:
        return scan(s["u"], s["dt"], s["A"], s["B"], s["C"], D=s["D"], z=s["z"], delta_bias=s["bias"],
                    delta_softplus=True, return_last_state=return_last_state)
    finally:
        ssm_state._pop(adapter)


def test_state_offset_equals_recurrence_with_offset():
    """y_t = SiLU(z_t) ⊙ (C_t (h_t + h') + D x_t), h_t the unchanged recurrence (theory.s6, float64)."""
    s = _scan_inputs()
    ad = ssm_state.StateAdapter("state_offset", "mamba1", (3, 4), F64)
    with torch.no_grad():
        ad.state.normal_()
    y, last = _wrapped_scan(s, ad)
    delta = torch.nn.functional.softplus(s["dt"] + s["bias"][:, None])
    y_ref, h_ref = selective_scan(s["u"], delta, s["A"], s["B"], s["C"], return_state=True)
    y_ref = (y_ref + torch.einsum("bhl,dh->bdl", s["C"], ad.state) + s["D"][:, None] * s["u"]) * \
        torch.nn.functional.silu(s["z"])
    assert rel_err(y, y_ref) <= RTOL_F64 and rel_err(last, h_ref) <= RTOL_F64


def test_initial_state_equals_prefix():
    """Proposition 1: the scan from h0 = the state a prefix leaves equals the scan over prefix + input."""
    s = _scan_inputs(L=10)
    M = 4  # prefix length
    pre = {k: (v[..., :M] if v.dim() == 3 else v) for k, v in s.items()}
    rest = {k: (v[..., M:] if v.dim() == 3 else v) for k, v in s.items()}
    zero = ssm_state.StateAdapter("state_offset", "mamba1", (3, 4), F64)  # offset 0: the plain scan
    y_full, h_full = _wrapped_scan(s, zero)
    _, h_prefix = _wrapped_scan(pre, zero)
    assert h_prefix.shape == (2, 3, 4)
    ad = ssm_state.StateAdapter("initial_state", "mamba1", (3, 4), F64)
    y, h = [], []
    for b in range(2):  # h0 is one state per mixer: check each sequence with its own prefix state
        with torch.no_grad():
            ad.state.copy_(h_prefix[b])
        yb, hb = _wrapped_scan({k: (v[b:b + 1] if v.dim() == 3 else v) for k, v in rest.items()}, ad)
        y.append(yb)
        h.append(hb)
    assert rel_err(torch.cat(y), y_full[..., M:]) <= RTOL_F64 and rel_err(torch.cat(h), h_full) <= RTOL_F64


def test_mamba2_initial_state_equals_prefix():
    """Mamba-2: the adapter's h0 goes to the chunk scan's initial_states; a prefix's final state reproduces it."""
    from transformers.models.mamba2 import modeling_mamba2 as m2
    g = torch.Generator().manual_seed(0)
    Bt, L, Hh, P, G, N = 1, 8, 4, 2, 2, 3
    x, dt = torch.randn(Bt, L, Hh, P, generator=g, dtype=F64), torch.randn(Bt, L, Hh, generator=g, dtype=F64)
    A = -torch.rand(Hh, generator=g, dtype=F64) - 0.5
    B, C = torch.randn(Bt, L, G, N, generator=g, dtype=F64), torch.randn(Bt, L, G, N, generator=g, dtype=F64)
    orig = getattr(m2.mamba2_chunk_scan, "_ssm_peft_original", m2.mamba2_chunk_scan)
    kw = dict(chunk_size=4, D=None, dt_bias=None, dt_softplus=True, return_final_states=True)
    y_full, h_full = orig(x, dt, A, B, C, **kw)
    _, h_pre = orig(x[:, :4], dt[:, :4], A, B[:, :4], C[:, :4], **kw)
    ad = ssm_state.StateAdapter("initial_state", "mamba2", (Hh, P, N), F64)
    with torch.no_grad():
        ad.state.copy_(h_pre[0])
    ssm_state._push(ad)
    try:
        y, h = ssm_state._mamba2_scan(orig)(x[:, 4:], dt[:, 4:], A, B[:, 4:], C[:, 4:], **kw)
    finally:
        ssm_state._pop(ad)
    assert rel_err(y, y_full[:, 4:]) <= 1e-6 and rel_err(h, h_full) <= 1e-6  # the chunk scan runs in float32


# --------------------------------------------------------------------------------- frozen entries
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_frozen_entries_bit_identical_under_adamw(kind):
    base, pm = adapted(kind, "sdlora")
    train(pm, steps=4, wd=0.5)
    for name, mixer, _ in ssm_peft.find_mixers(pm.base_model.model):
        ref_mixer = dict(base.named_modules())[name]
        for owner_name, owner in [("", mixer)] + list(mixer.named_children()):
            for pname, plist in getattr(owner, "parametrizations", {}).items():
                sparse = [p for p in plist if isinstance(p, ssm_peft.SparseDelta)]
                if not sparse:
                    continue
                original = plist.original
                frozen_ref = dict(ref_mixer.named_parameters())[(owner_name + "." if owner_name else "") + pname]
                assert torch.equal(original, frozen_ref)  # the stored base never changes
                if len(plist) > 1:
                    continue  # LoRA before SDT on this tensor: its frozen entries move with LoRA by design
                eff = getattr(owner, pname).detach().flatten()
                mask = torch.zeros(eff.numel(), dtype=torch.bool)
                mask[sparse[0].index] = True
                assert torch.equal(eff[~mask], frozen_ref.flatten()[~mask])
                assert bool((eff[mask] != frozen_ref.flatten()[mask]).all())


# ------------------------------------------------------------------------------------ counts
def _closed_form(model, config):
    total = 0
    for name, mixer, spec in ssm_peft.find_mixers(model):
        d = ssm_peft.mixer_dims(mixer, spec.layout)
        e = config.selection["layers"][name]
        n_ch = len(e["channels"])
        if spec.layout == "mamba1":
            total += sum(len(s) for s in e["states"]) + n_ch * 2 * d.H + config.dt * n_ch * (d.R + 1)
        else:
            groups = {c // (d.D // d.G) for c in e["channels"]}
            total += n_ch + 2 * len(groups) * len(e["states"][0]) * mixer.in_proj.weight.shape[1] + config.dt * n_ch
        for t in config.lora_targets if config.lora_rank else ():
            out_f, in_f = getattr(mixer, t).weight.shape
            total += min(config.lora_rank, out_f, in_f) * (out_f + in_f)
    return total


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("method", ["sdt", "sdlora"])
def test_trainable_count_is_closed_form(kind, method):
    base, pm = adapted(kind, method)
    trainable, _ = pm.get_nb_trainable_parameters()
    assert trainable == _closed_form(base, pm.peft_config["default"])


def test_official_rule_counts_equal_official():
    """Official budget (channel_freeze 0.75, state_freeze 0.5): per layer n_ch × (n_states + 2H), as sd_lora.py."""
    base = tiny_mamba()
    config = ssm_peft.SDTConfig(rule="official", channel_freeze=0.75, state_freeze=0.5)
    config.selection = ssm_peft.sdt_select(base, config, [ids_of(5)], steps=2, show_progress=False)
    pm = peft.get_peft_model(tiny_mamba(), config)
    n_ch, n_st = official_counts(32, 4, 0.75, 0.5)
    assert (n_ch, n_st) == (8, 2)
    assert pm.get_nb_trainable_parameters()[0] == 2 * n_ch * (n_st + 2 * 4)
    assert all(len(e["channels"]) == n_ch for e in config.selection["layers"].values())


def test_split_x_proj_lora_is_three_independent_loras(tmp_path):
    """lora_x_proj_split (the official code's x_proj, three linears): W_Δ↓ (R rows), W_B, W_C (H rows each) each get
    their own rank-r LoRA. The adapted x_proj equals the three blocks applied as peft applies LoRA (activation side,
    float64 oracle); r(3·in + out) trainable; the update has rank 3r where one rank-r LoRA has r; merge and
    save -> load keep the logits."""
    r = 2
    base = tiny_mamba()
    config = ssm_peft.SDTConfig(n_channels=0, lora_rank=r, lora_targets=["x_proj", "out_proj"], lora_x_proj_split=True)
    config.selection = ssm_peft.first_selection(base, config)  # no SDT channel: x_proj's update is LoRA alone
    pm = peft.get_peft_model(tiny_mamba(), config)
    ids = ids_of()
    assert torch.equal(pm(ids).logits, base(ids).logits)
    randomise(pm)
    joint = dict(config.to_dict(), lora_targets=["out_proj"], lora_x_proj_split=False)
    n_layers = len(pm.base_model.model.backbone.layers)
    for mixer in (layer.mixer for layer in pm.base_model.model.backbone.layers):
        d = ssm_peft.mixer_dims(mixer, "mamba1")
        lora = mixer.x_proj.parametrizations.weight[0]
        W = mixer.x_proj.parametrizations.weight.original  # (R + 2H, D)
        x = torch.randn(5, d.D, dtype=F64, generator=torch.Generator().manual_seed(4))
        want, lo = [], 0
        for j, rows in enumerate((d.R, d.H, d.H)):
            B = lora.lora_B[lo:lo + rows]  # (rows, r)
            want.append(x @ W[lo:lo + rows].T + lora.scaling * (x @ lora.lora_A[j].T) @ B.T)
            assert int(torch.linalg.matrix_rank(mixer.x_proj.weight[lo:lo + rows] - W[lo:lo + rows])) == r
            lo += rows
        assert rel_err(mixer.x_proj(x), torch.cat(want, dim=-1)) < RTOL_F64
        assert int(torch.linalg.matrix_rank(mixer.x_proj.weight - W)) == 3 * r
    d = ssm_peft.mixer_dims(pm.base_model.model.backbone.layers[0].mixer, "mamba1")
    assert pm.get_nb_trainable_parameters()[0] == (
        _closed_form(base, type(config)(**{k: v for k, v in joint.items() if k in config.__dataclass_fields__}))
        + n_layers * r * (3 * d.D + d.R + 2 * d.H))
    want = pm(ids).logits
    pm.save_pretrained(tmp_path / "adapter")
    loaded = peft.PeftModel.from_pretrained(tiny_mamba(), tmp_path / "adapter")
    assert torch.equal(loaded(ids).logits, want)
    assert torch.equal(pm.merge_and_unload()(ids).logits, want)
    with pytest.raises(ValueError, match="lora_x_proj_split: needs"):
        ssm_peft.SDTConfig(lora_rank=2, lora_targets=["out_proj"], lora_x_proj_split=True)


# ----------------------------------------------------------------------------- save, load, merge
def _pretrained(tmp_path, kind):
    """A tiny model trained in full for a few steps and saved: the 'pretrained' base of the tests below."""
    model = MODELS[kind](7)
    train(model, steps=2)
    model.save_pretrained(tmp_path / "base")
    return type(model)


@pytest.mark.parametrize("kind,method", [("mamba", m) for m in sorted(CONFIGS)] +
                         [("mamba2", "sdlora"), ("mamba2", "initial_state")])
def test_save_load_gives_equal_logits(tmp_path, kind, method):
    cls = _pretrained(tmp_path, kind)
    base = cls.from_pretrained(tmp_path / "base", dtype=F64)
    pm = peft.get_peft_model(base, CONFIGS[method](cls.from_pretrained(tmp_path / "base", dtype=F64)))
    train(pm)
    pm.eval()
    ids = ids_of()
    want = pm(ids).logits
    pm.save_pretrained(tmp_path / "adapter")
    from safetensors.torch import load_file
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert sum(v.numel() for k, v in saved.items() if not k.endswith(".index")) == pm.get_nb_trainable_parameters()[0]
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    if method.startswith("sd"):
        assert cfg["selection"] == pm.peft_config["default"].selection
    loaded = peft.PeftModel.from_pretrained(cls.from_pretrained(tmp_path / "base", dtype=F64), tmp_path / "adapter")
    assert torch.equal(loaded(ids).logits, want)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_merge_gives_equal_logits(tmp_path, kind):
    _, pm = adapted(kind, "sdlora")
    train(pm)
    pm.eval()
    ids = ids_of()
    want = pm(ids).logits
    merged = pm.merge_and_unload()
    assert type(merged) in (MambaForCausalLM, Mamba2ForCausalLM)  # parametrizations removed
    assert torch.equal(merged(ids).logits, want)
    merged.save_pretrained(tmp_path / "merged")
    again = type(merged).from_pretrained(tmp_path / "merged", dtype=F64)
    assert torch.equal(again(ids).logits, want)


@pytest.mark.parametrize("method", ["state_offset", "initial_state"])
def test_state_methods_refuse_merge(method):
    _, pm = adapted("mamba", method)
    with pytest.raises(ValueError, match="cannot be merged"):
        pm.merge_and_unload()
    base = pm.unload()  # dropping the adapter is allowed and gives the base model back
    ids = ids_of()
    assert torch.equal(base(ids).logits, MODELS["mamba"](0)(ids).logits)


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_cached_generate_equals_recompute(kind, method):
    _, pm = adapted(kind, method)
    randomise(pm)
    pm.eval()
    prompt = ids_of()[:, :4]
    kw = dict(max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True)
    cached, full = pm.generate(input_ids=prompt, use_cache=True, **kw), pm.generate(input_ids=prompt, use_cache=False, **kw)
    assert torch.equal(cached.sequences, full.sequences)
    assert max(rel_err(a, b) for a, b in zip(cached.scores, full.scores)) <= RTOL_CACHE
