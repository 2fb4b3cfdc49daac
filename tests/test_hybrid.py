"""The Jamba-style hybrid (synthetic.hybrid): the layout rule against Jamba's, SDPA attention against an explicit
softmax twin and a per-head loop (float64), the stack without attention against the Mamba-I stack, exact trainable
counts from closed-form formulas and from non-zero gradients, frozen entries bit-identical after AdamW, bad input
refused naming the argument, and the experiment end to end through the runner (resume, --dry-run, --plot-only)."""

import dataclasses
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from synthetic.hybrid import config as hcfg
from synthetic.hybrid import experiment as hexp
from synthetic.hybrid import peft as hpeft
from synthetic.hybrid.model import (ATTENTION, MAMBA, AttentionRef, HybridRef,
                                    explicit_causal_attention, layer_kinds, rms_norm, sdpa_causal)
from synthetic.hybrid.peft import (METHODS, AttentionPeftConfig, HybridPeftConfig, LayerWeights, PeftHybridStack,
                                   frozen_layers, frozen_param_count)
from synthetic.mamba.peft import MambaPeftConfig, PeftMambaStack, get_backend, residual_stack
from synthetic.mamba.ref import MambaRef, PARAM_NAMES
from synthetic.results import ResultsFile, run_records
from theory.peft import count_trainable
from theory.tolerances import RTOL, rel_err

F64 = torch.float64
REF = get_backend("reference")
D_MODEL, EXPAND, H, HEADS = 8, 2, 4, 2
D_INNER, R = EXPAND * D_MODEL, 1  # dt_rank "auto" = ceil(8 / 16)
KINDS = (MAMBA, MAMBA, ATTENTION, MAMBA)  # layer_kinds(4, 4, 2): 1 attention : 3 Mamba


def _model(kinds=KINDS, norm="rmsnorm", dtype=F64, seed=0):
    torch.manual_seed(seed)
    m = HybridRef(kinds, D_MODEL, HEADS, lambda: MambaRef(D_MODEL, d_state=H, expand=EXPAND, dtype=dtype), norm=norm,
                  dtype=dtype)
    if m.norms is not None:  # gains away from 1, so a norm that ignored its gain would be caught
        with torch.no_grad():
            for g in m.norms:
                g.uniform_(0.5, 1.5)
    return m.requires_grad_(False)


def _stack(config, layers, channels=None, norm="rmsnorm", kernel="sdpa"):
    return PeftHybridStack(layers, d_state=H, dt_rank=R, n_heads=HEADS, norm=norm, config=config, channels=channels,
                           generator=torch.Generator().manual_seed(0), attention_kernel=kernel)


def _perturb(module, seed=1, scale=0.1):
    """Random values added to every trainable tensor (LoRA B starts at zero, so the adapter would act as nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


# ------------------------------------------------------------------------------------- the layout
@given(st.integers(2, 8), st.integers(1, 4), st.data())
def test_layout_has_one_attention_per_period(period, repeats, data):
    offset = data.draw(st.integers(0, period - 1))
    kinds = layer_kinds(period * repeats, period, offset)
    assert [i for i, k in enumerate(kinds) if k == ATTENTION] == list(range(offset, period * repeats, period))
    assert kinds.count(MAMBA) == (period - 1) * kinds.count(ATTENTION)  # ratio 1 : period - 1


def test_layout_is_jambas():
    """Jamba-v0.1 (attn_layer_period 8, attn_layer_offset 4, 32 layers): attention at layers 4, 12, 20, 28."""
    kinds = layer_kinds(32, 8, 4)
    assert [i for i, k in enumerate(kinds) if k == ATTENTION] == [4, 12, 20, 28]
    assert layer_kinds(4, 4, 2) == KINDS


@pytest.mark.parametrize("args, name", [((4, 1, 0), "attn_period"), ((4, 4, 4), "attn_offset"),
                                        ((4, 4, -1), "attn_offset"), ((6, 4, 0), "n_layers"), ((0, 2, 0), "n_layers"),
                                        ((4, True, 0), "attn_period"), ((4.0, 2, 0), "n_layers")])
def test_layout_refuses_what_the_rule_excludes(args, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        layer_kinds(*args)


# ------------------------------------------------------------------------------------- attention
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 9), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_sdpa_equals_explicit_softmax_attention(Bt, nh, N, d_h, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(Bt, nh, N, d_h, generator=g, dtype=F64) for _ in range(3))
    assert rel_err(sdpa_causal(q, k, v), explicit_causal_attention(q, k, v)) < RTOL[F64]


def _attention_loop(w, x, n_heads):
    """Oracle: per batch element, head and query position i, softmax over keys j <= i, written as loops."""
    Bt, N, d = x.shape
    d_h = d // n_heads
    Q, K, V = (x @ w[n].T for n in ("q_proj.weight", "k_proj.weight", "v_proj.weight"))  # (Bt, N, d)
    O = torch.zeros_like(x)
    for b in range(Bt):
        for h in range(n_heads):
            cols = slice(h * d_h, (h + 1) * d_h)
            for i in range(N):
                s = torch.stack([Q[b, i, cols] @ K[b, j, cols] for j in range(i + 1)]) / math.sqrt(d_h)
                p = torch.exp(s - s.max())
                O[b, i, cols] = (p / p.sum()) @ V[b, : i + 1, cols]
    return O @ w["o_proj.weight"].T


@pytest.mark.parametrize("kernel", ["sdpa", "explicit"])
def test_attention_layer_equals_per_head_loop(kernel):
    torch.manual_seed(0)
    att = AttentionRef(D_MODEL, HEADS, dtype=F64, kernel=kernel)
    x = torch.randn(2, 6, D_MODEL, dtype=F64)
    w = {k: v.detach() for k, v in att.named_parameters()}
    assert rel_err(att(x), _attention_loop(w, x, HEADS)) < RTOL[F64]
    one_head = _attention_loop(w, x, 1)  # negative check: the head split matters
    assert rel_err(att(x), one_head) > 1e-3


def test_attention_is_causal_and_mixes_the_past():
    torch.manual_seed(0)
    att = AttentionRef(D_MODEL, HEADS, dtype=F64)
    x = torch.randn(1, 9, D_MODEL, dtype=F64)
    later, earlier = x.clone(), x.clone()
    later[:, 5:] += 1.0
    earlier[:, 0] += 1.0
    assert torch.equal(att(x)[:, :5], att(later)[:, :5])  # the future never reaches the past
    assert (att(x)[:, 1:] - att(earlier)[:, 1:]).abs().amin(dim=-1).gt(0).all()  # token 0 reaches every later one


def test_rms_norm_formula_and_bad_heads():
    x = torch.randn(3, 5, D_MODEL, dtype=F64)
    g = torch.rand(D_MODEL, dtype=F64) + 0.5
    want = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6) * g
    assert rel_err(rms_norm(x, g), want) < RTOL[F64]
    with pytest.raises(ValueError, match="^n_heads:"):
        AttentionRef(D_MODEL, 3)
    with pytest.raises(ValueError, match="^attention_kernel:"):
        AttentionRef(D_MODEL, 2, kernel="flash")
    with pytest.raises(ValueError, match="^norm:"):
        _model(norm="layernorm")


# --------------------------------------------------------------------------------- reference twins
def test_stack_without_attention_is_the_mamba_stack():
    """All-Mamba layout with norm 'none': the frozen hybrid is residual_stack of its blocks, and every Mamba-side
    method on the hybrid stack equals the same method on synthetic.mamba's PeftMambaStack (perturbed adapters)."""
    model = _model(kinds=(MAMBA, MAMBA, MAMBA), norm="none")
    x = torch.randn(2, 7, D_MODEL, dtype=F64)
    assert rel_err(model(x), residual_stack(list(model.mixers), x)) < RTOL[F64]
    layers = frozen_layers(model)
    chans = [[0, 3, 5], [1, 2, 9], [4, 8, 15]]
    for cfg in (MambaPeftConfig(sdt_channels=3, lora=("in_proj.weight", "out_proj.weight"), lora_rank=2),
                MambaPeftConfig(lora=("x_proj.weight", "dt_proj.weight", "A_log"), lora_rank=2),
                MambaPeftConfig(dora=("x_proj.weight", "dt_proj.weight"), lora_rank=1)):
        ch = chans if cfg.sdt_channels else None
        hyb = _stack(HybridPeftConfig(mamba=cfg), layers, channels=ch, norm="none")
        ref = PeftMambaStack([lw.weights for lw in layers], d_state=H, dt_rank=R, config=cfg, channels=ch,
                             generator=torch.Generator().manual_seed(0))
        _perturb(hyb)
        _perturb(ref)
        assert count_trainable(hyb) == count_trainable(ref) > 0
        assert rel_err(hyb(x, REF), ref(x, REF)) < RTOL[F64]


@pytest.mark.parametrize("kernel", ["sdpa", "explicit"])
def test_frozen_stack_is_the_frozen_model(kernel):
    model = _model()
    x = torch.randn(2, 7, D_MODEL, dtype=F64)
    frozen = _stack(HybridPeftConfig(), frozen_layers(model), kernel=kernel)
    assert count_trainable(frozen) == 0
    assert rel_err(frozen(x, REF), model(x)) < RTOL[F64]


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_starts_at_the_frozen_model(method):
    """LoRA's B = 0, DoRA's m = ‖W‖_row, SDT's values = the frozen entries: the adapted hybrid starts as the frozen
    one; perturbing the trainable tensors moves it (so the adapters are in the compute path)."""
    model = _model()
    x = torch.randn(2, 7, D_MODEL, dtype=F64)
    config = METHODS[method](BUDGET)
    ch = [[0, 1, 2, 3]] * 3 if config.mamba.sdt_channels else None
    stack = _stack(config, frozen_layers(model), channels=ch)
    assert rel_err(stack(x, REF), model(x)) < RTOL[F64]
    if METHODS[method].trains:
        _perturb(stack)
        assert rel_err(stack(x, REF), model(x)) > 1e-4


# ---------------------------------------------------------------------------- counts and freezing
BUDGET = {"rank": 2, "proj_rank": 2, "ssm_rank": 2, "channels": 4}


def _expected_count(method, n_attn=1, n_mamba=3, d=D_MODEL, D=D_INNER, h=H, r=2, c=4):
    """Closed-form trainable counts (BUDGET: every rank 2, 4 SDT channels), independent of the wrappers."""
    lora = lambda rows, cols: min(r, rows, cols) * (rows + cols)  # noqa: E731 - B (rows, r) + A (r, cols)
    dora = lambda rows, cols: lora(rows, cols) + rows  # noqa: E731 - + magnitude (rows,)
    attn_lora, attn_dora = 4 * lora(d, d), 4 * dora(d, d)
    proj = lora(2 * D, d) + lora(d, D)  # in_proj (2D, d), out_proj (d, D)
    ssm_lora = lora(R + 2 * h, D) + lora(D, R) + lora(D, h)  # x_proj, dt_proj (rank clamped to R), A_log
    ssm_dora = dora(R + 2 * h, D) + dora(D, R)
    sdt = c * (h + 2 * h)  # per channel: A_log row + W_B, W_C columns
    mamba_all = 2 * D * d + D * 4 + D + (R + 2 * h) * D + D * R + D + D * h + D + d * D
    n = n_attn + n_mamba
    return {"Frozen": 0, "LoRA (Attn) + LoRA (Proj)": n_attn * attn_lora + n_mamba * proj,
            "LoRA (Attn) + LoRA (SSM)": n_attn * attn_lora + n_mamba * ssm_lora,
            "LoRA (Attn) + DoRA (SSM)": n_attn * attn_lora + n_mamba * ssm_dora,
            "LoRA (Attn) + SDT (SSM)": n_attn * attn_lora + n_mamba * sdt,
            "DoRA (Lin) + DoRA (SSM)": n_attn * attn_dora + n_mamba * (dora(2 * D, d) + dora(d, D) + ssm_dora),
            "DoRA (Lin) + SDT (SSM)": n_attn * attn_dora + n_mamba * (dora(2 * D, d) + dora(d, D) + sdt),
            "Full": n_attn * 4 * d * d + n_mamba * mamba_all + n * d}[method]


# what each method changes: attention weights, Mamba weights (SDT: A_log rows / x_proj W_B, W_C columns only), gains
TRAINED = {"LoRA (Attn) + LoRA (Proj)": ("attn", {"in_proj.weight", "out_proj.weight"}),
           "LoRA (Attn) + LoRA (SSM)": ("attn", {"x_proj.weight", "dt_proj.weight", "A_log"}),
           "LoRA (Attn) + DoRA (SSM)": ("attn", {"x_proj.weight", "dt_proj.weight"}),
           "LoRA (Attn) + SDT (SSM)": ("attn", {"x_proj.weight", "A_log"}),
           "DoRA (Lin) + DoRA (SSM)": ("attn", {"in_proj.weight", "out_proj.weight", "x_proj.weight", "dt_proj.weight"}),
           "DoRA (Lin) + SDT (SSM)": ("attn", {"in_proj.weight", "out_proj.weight", "x_proj.weight", "A_log"}),
           "Full": ("attn", set(PARAM_NAMES) | {"norms"}), "Frozen": (None, set())}
SDT_CH = [[0, 5, 6, 11], [1, 2, 3, 15], [4, 7, 8, 9]]


@pytest.mark.parametrize("method", list(METHODS))
def test_counts_are_exact_and_frozen_entries_stay_bit_identical(method):
    model = _model(dtype=torch.float32)
    layers = frozen_layers(model)
    config = METHODS[method](BUDGET)
    ch = SDT_CH if config.mamba.sdt_channels else None
    stack = _stack(config, layers, channels=ch)
    assert frozen_param_count(layers) == sum(p.numel() for p in model.parameters())
    assert count_trainable(stack) == _expected_count(method)
    _perturb(stack, scale=0.05)
    params = [p for p in stack.parameters() if p.requires_grad]
    if params:  # every counted scalar receives a gradient, and nothing else is a parameter
        grads = torch.autograd.grad(stack(torch.randn(3, 10, D_MODEL), REF).square().mean(), params)
        assert sum(int((g != 0).sum()) for g in grads) == count_trainable(stack)
        opt = torch.optim.AdamW(params, lr=0.05, weight_decay=0.5)
        for _ in range(3):
            loss = stack(torch.randn(3, 10, D_MODEL), REF).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    attn_kind, mamba_trained = TRAINED[method]
    j = 0
    for i, (lw, mixer) in enumerate(zip(layers, stack.mixers)):
        eff = mixer.effective_weights()
        for name, w in lw.weights.items():
            moved = not torch.equal(eff[name], w)
            if lw.kind == ATTENTION:
                assert moved == (attn_kind is not None), (method, i, name)
            elif name in mamba_trained and config.mamba.sdt_channels and name in ("A_log", "x_proj.weight"):
                rows = torch.zeros(D_INNER, dtype=torch.bool)
                rows[SDT_CH[j]] = True
                a, b = (eff[name], w) if name == "A_log" else (eff[name][R:].T, w[R:].T)  # (D, H) / (D, 2H)
                assert torch.equal(a[~rows], b[~rows]) and not torch.equal(a[rows], b[rows]), (method, i, name)
                if name == "x_proj.weight":
                    assert torch.equal(eff[name][:R], w[:R])  # W_Δ↓ stays
            else:
                assert moved == (name in mamba_trained), (method, i, name)
        j += lw.kind == MAMBA
        assert torch.equal(stack.norm_weight(i), lw.norm) == ("norms" not in mamba_trained), (method, i)


def test_configs_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match="^lora:"):
        AttentionPeftConfig(lora=("in_proj.weight",), rank=1)
    with pytest.raises(ValueError, match="^rank:"):
        AttentionPeftConfig(dora=("q_proj.weight",))
    with pytest.raises(ValueError, match="at most one"):
        AttentionPeftConfig(lora=("q_proj.weight",), full=("q_proj.weight",), rank=1)
    with pytest.raises(ValueError, match="^mamba:.*prompt_len"):
        HybridPeftConfig(mamba=MambaPeftConfig(prompt_len=2))
    layers = frozen_layers(_model())
    with pytest.raises(ValueError, match="^channels:"):
        _stack(METHODS["LoRA (Attn) + SDT (SSM)"](BUDGET), layers, channels=SDT_CH[:2])
    with pytest.raises(ValueError, match="^layers:"):
        _stack(HybridPeftConfig(), [LayerWeights(lw.kind, lw.weights, None) for lw in layers])


# -------------------------------------------------------------------------------- the experiment
@pytest.mark.parametrize("argv, option", [
    (["--frozen-attn-period", "1"], "--frozen-attn-period"), (["--frozen-layers", "3"], "--frozen-layers"),
    (["--target-attn-offset", "2"], "--target-attn-offset"), (["--n-heads", "3"], "--n-heads"),
    (["--norm", "layernorm"], "--norm"), (["--attention-kernel", "flash"], "--attention-kernel"),
    (["--ssm-lora-ranks", "9"], "--ssm-lora-ranks"), (["--sdt", "0"], "--sdt"), (["--lin-lora-rank", "0"], "--lin-lora-rank"),
    (["--methods", "SDT"], "--methods"), (["--seeds", "0,0"], "--seeds"), (["--shard", "0/2", "--merge"], "--shard"),
    (["--backend", "mamba_ssm"], "--backend"), (["--no-such-option", "1"], "--no-such-option")])
def test_cli_rejects_bad_options_naming_them(argv, option, capsys):
    with pytest.raises(SystemExit) as e:
        hcfg.parse_args(["--preset", "tiny"] + argv)
    assert e.value.code == 2 and option in capsys.readouterr().err


def test_every_preset_is_valid_and_run_keys_leave_budgets_out():
    for cfg in map(hcfg.make, hcfg.PRESETS):
        hcfg.check_options(cfg)
        assert hcfg.METHOD_ORDER == tuple(METHODS)  # every registry entry is run (and drawn) by default
    d = hcfg.config_dict(hcfg.make("cpu"))
    assert not set(d) & {"lin_lora_rank", "proj_lora_ranks", "ssm_lora_ranks", "sdt", "lin_rank"} and "seeds" not in d
    assert layer_kinds(8, 8, 4).count(ATTENTION) == 1  # the paper preset is Jamba's 1 : 7


def test_end_to_end_resume_dry_run_and_plot_only(tmp_path, capsys):
    argv = ["--preset", "tiny", "--backend", "reference", "--out", str(tmp_path), "--lr-extend-factor", "0"]
    assert hexp.main(argv) == 0
    path = tmp_path / "hybrid_regression_tiny.jsonl"
    recs = run_records(ResultsFile(path).load())
    assert [r["method"] for r in recs] == list(hcfg.RUN_ORDER)  # each once (one budget, one lr, one seed)
    assert all(r["status"] == "ok" and r["experiment"] == "hybrid" for r in recs)
    by = {r["method"]: r for r in recs}
    tiny = dict(n_attn=1, n_mamba=1, r=1, c=4)  # tiny: layers M A, every rank 1, 4 SDT channels
    for m, r in by.items():
        assert r["trainable"] == _expected_count(m, **tiny), m
    assert r["layer_kinds"] == [MAMBA, ATTENTION]
    sdt = by["LoRA (Attn) + SDT (SSM)"]["sdt_channels"]
    assert len(sdt) == 1 and len(sdt[0]) == 4  # one list per Mamba layer
    assert by["Full"]["best_mse"] < by["Frozen"]["best_mse"]  # training does something
    n = len(ResultsFile(path).runs())
    assert hexp.main(argv) == 0 and len(ResultsFile(path).runs()) == n  # resume: nothing re-run
    capsys.readouterr()
    assert hexp.main(argv + ["--dry-run"]) == 0
    assert "0 base-grid runs to do" in capsys.readouterr().out
    (tmp_path / "hybrid_mse_vs_params_tiny.png").unlink()
    assert hexp.main(argv + ["--plot-only"]) == 0
    assert (tmp_path / "hybrid_mse_vs_params_tiny.png").stat().st_size > 0
    assert (tmp_path / "hybrid_mse_vs_params_tiny.pdf").stat().st_size > 0


def test_plot_only_without_results_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        hexp.main(["--preset", "tiny", "--out", str(tmp_path), "--plot-only"])
    assert e.value.code == 2
    assert "--plot-only: no results" in capsys.readouterr().err


def test_a_new_hybrid_method_is_one_registry_entry(tmp_path, monkeypatch):
    entry = hpeft.Method("Norms only", lambda b: HybridPeftConfig(norms=True), lambda c: [{}])
    monkeypatch.setitem(METHODS, "Norms only", entry)
    hexp.main(["--preset", "tiny", "--backend", "reference", "--methods", "Norms only", "--lr-extend-factor", "0",
               "--out", str(tmp_path)])
    (rec,) = run_records(ResultsFile(tmp_path / "hybrid_regression_tiny.jsonl").load())
    assert rec["method"] == "Norms only" and rec["trainable"] == 2 * 8  # one gain per layer, d_model 8


def test_committed_cpu_result_is_complete():
    """figures/hybrid_regression_cpu.jsonl: the CPU preset's sweep is done (a rerun starts nothing) and every
    method of the registry has finished runs."""
    from pathlib import Path

    from synthetic.dry_run import plan

    path = Path(__file__).resolve().parent.parent / "figures" / "hybrid_regression_cpu.jsonl"
    if not path.exists():
        pytest.skip("needs the committed figures/hybrid_regression_cpu.jsonl (git checkout figures/; it is written by "
                    "python -m synthetic.hybrid_regression --preset cpu --out figures)")
    cfg = hcfg.validate(hcfg.make("cpu", out=str(path.parent), dry_run=True))
    p = plan(hexp.HybridExperiment(cfg))
    assert p["base_runs_to_do"] == 0 and p["extension_runs_next"] == 0, p  # lr grids grown until interior or bound
    recs = hexp.HybridCommand().records(cfg)
    assert {r["method"] for r in recs if r["status"] == "ok"} == set(METHODS)
    assert {r["seed"] for r in recs} == set(cfg.seeds)
