"""The deep-S4 layer's convolution forms (synthetic.s4.conv) against the float64 explicit recurrence, their
gradients against the Toeplitz form's, the block and diagonal-sum helpers against brute force, the
selector's rule, and the --conv option's validation."""

import dataclasses
import json

import pytest
import torch
from hypothesis import given, strategies as st

from synthetic.s4 import config as s4c, conv, forms, model as sm, train as s4t
from theory.tolerances import RTOL, rel_err

F64 = torch.float64
FORMS = sorted(forms.CONV_FORMS)


@st.composite
def conv_cases(draw, max_N: int = 40):
    """(p, x, Q): R runs of one layer's float64 parameters (leading run axis), an input (R, D, N, B) or one
    shared by the runs (D, N, B), and a chunk length Q in [1, N]. Small shapes; the official init's ranges."""
    R, D, Hc = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    N, B = draw(st.integers(1, max_N)), draw(st.integers(1, 3))
    Q = draw(st.integers(1, N))
    shared = draw(st.booleans())
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    layers = [sm.init_layer(D, Hc, generator=g, dtype=F64) for _ in range(R)]
    p = {k: torch.stack([q[k] for q in layers]) for k in layers[0]}  # (R, ...)
    p["log_dt"] = p["log_dt"] + 2.0  # Δ up to ~0.7: modes that decay within N (the paper's Δ ≤ 0.1 barely do)
    x = torch.randn(*((D,) if shared else (R, D)), N, B, generator=g, dtype=F64)
    return p, x, Q


@pytest.mark.parametrize("form", FORMS)
@given(case=conv_cases())
def test_form_equals_explicit_recurrence(form, case):
    p, x, Q = case
    kw = {"Q": Q} if form in ("chunked", "blocked") else {}
    out = forms.CONV_FORMS[form](p, x, conv.toeplitz_index(x.shape[-2], "cpu"), **kw)
    assert out.shape == (p["u"].shape[0],) + tuple(x.shape[-3:])
    assert rel_err(out, conv.conv_reference(p, x)) < RTOL[F64]


@pytest.mark.parametrize("form", [f for f in FORMS if f != "toeplitz"])
@given(case=conv_cases(max_N=24))
def test_form_gradients_equal_toeplitz_form(form, case):
    """Gradients of every parameter and of x (the Toeplitz form's custom backward is held to autograd in
    test_s4_regression)."""
    p, x, Q = case
    kw = {"Q": Q} if form in ("chunked", "blocked") else {}
    idx = conv.toeplitz_index(x.shape[-2], "cpu")
    g = torch.randn(p["u"].shape[0], *x.shape[-3:], generator=torch.Generator().manual_seed(0), dtype=F64)

    def grads(f, **kw):
        q = {k: v.clone().requires_grad_(True) for k, v in p.items()}
        xx = x.clone().requires_grad_(True)
        leaves = [q[k] for k in sorted(q)] + [xx]
        return torch.autograd.grad((f(q, xx, idx, **kw) * g).sum(), leaves, allow_unused=True)

    for a, b in zip(grads(forms.CONV_FORMS[form], **kw), grads(conv.toeplitz_form)):
        if b is None or not b.abs().sum():
            assert a is None or not a.abs().sum()
        else:
            assert rel_err(a, b) < RTOL[F64]


@pytest.mark.parametrize("form", ["fft", "chunked", "blocked"])
def test_form_gradcheck(form):
    D, Hc, N, B, Q = 2, 2, 7, 2, 3
    layer = sm.init_layer(D, Hc, generator=torch.Generator().manual_seed(5), dtype=F64)
    p = {k: v[None] for k, v in layer.items()}
    p["log_dt"] = p["log_dt"] + 2.0
    kw = {"Q": Q} if form != "fft" else {}
    x = torch.randn(D, N, B, dtype=F64, requires_grad=True)
    C_re, log_A_re = p["C_re"].clone().requires_grad_(True), p["log_A_re"].clone().requires_grad_(True)

    def f(C_re, log_A_re, x):
        return forms.CONV_FORMS[form]({**p, "C_re": C_re, "log_A_re": log_A_re}, x, None, **kw)

    assert torch.autograd.gradcheck(f, (C_re, log_A_re, x))


@given(nc=st.integers(1, 5), Q=st.integers(1, 6), R=st.integers(1, 2), B=st.integers(1, 3), shared=st.booleans())
def test_block_toeplitz_conv_equals_toeplitz_conv(nc, Q, R, B, shared):
    D, N = 2, nc * Q
    g = torch.Generator().manual_seed(nc * 100 + Q)
    K = torch.randn(R, D, N, generator=g, dtype=F64, requires_grad=True)
    x = torch.randn(*((D,) if shared else (R, D)), N, B, generator=g, dtype=F64, requires_grad=True)
    dy = torch.randn(R, D, N, B, generator=g, dtype=F64)
    a = conv.from_chunks(conv.BlockToeplitzConv.apply(K, conv.to_chunks(x, Q), conv.block_toeplitz_index(nc, Q, "cpu")), nc)
    b = conv.ToeplitzConv.apply(K, x, conv.toeplitz_index(N, "cpu"))
    assert rel_err(a, b) < RTOL[F64]
    for u, v in zip(torch.autograd.grad((a * dy).sum(), (K, x)), torch.autograd.grad((b * dy).sum(), (K, x))):
        assert rel_err(u, v) < RTOL[F64]


def test_full_diagonal_sums_brute_force():
    M = torch.randn(3, 5, 5, dtype=F64)
    want = torch.stack([torch.diagonal(M, offset=-k, dim1=-2, dim2=-1).sum(-1) for k in range(-4, 5)], -1)
    assert rel_err(conv.full_diagonal_sums(M), want) < RTOL[F64]


def test_chunk_length_covers_N_with_least_padding():
    for N in (1, 7, 64, 65, 200, 800, 3200):
        Q = conv.chunk_length(N)
        nc = -(-N // Q)
        assert 1 <= Q <= max(N, 1) and nc == -(-N // min(conv.CHUNK_TARGET, N)) and (nc - 1) * Q < N <= nc * Q
    assert conv.chunk_length(200) == 50


def test_layer_forward_form_switch_keeps_values():
    layers = [sm.init_layer(4, 3, generator=torch.Generator().manual_seed(s), dtype=F64) for s in (1, 2)]
    stack = [{k: v[None] for k, v in q.items()} for q in layers]
    x = torch.randint(0, 10, (4, 33, 2), generator=torch.Generator().manual_seed(3)).to(F64)
    idx = sm.toeplitz_index(33, "cpu")
    ref = sm.deep_forward(stack, x, idx)
    for form in FORMS:
        assert rel_err(sm.deep_forward(stack, x, idx, sm.FastPath(conv=form)), ref) < RTOL[F64]
    with pytest.raises(ValueError, match="conv form"):
        sm.FastPath(conv="winograd")


def _table(rows):
    return {"results": [dict(device_type="cpu", **r) for r in rows]}


def test_choose_form_default_rule_and_table(tmp_path):
    missing = str(tmp_path / "none.json")
    assert forms.choose_form(200, 64, "cpu", path=missing)[0] == "toeplitz"
    assert forms.choose_form(3200, 64, "cpu", path=missing)[0] == "chunked"
    rows = [dict(N=200, D=64, form="toeplitz", ms_per_iter=10.0), dict(N=200, D=64, form="chunked", ms_per_iter=20.0),
            dict(N=3200, D=64, form="toeplitz", ms_per_iter=900.0), dict(N=3200, D=64, form="fft", ms_per_iter=90.0),
            dict(N=3200, D=64, form="chunked", ms_per_iter=None)]
    assert forms.choose_form(150, 70, "cpu", table=_table(rows))[0] == "toeplitz"
    assert forms.choose_form(2000, 64, "cpu", table=_table(rows))[0] == "fft"
    # rows of another device type are ignored: the default rule applies
    assert forms.choose_form(2000, 64, "cuda", table=_table(rows))[0] == "chunked"
    # the batch is part of the distance: a large-batch row decides for a large batch
    rows_b = [dict(N=200, D=64, batch=16, form="fft", ms_per_iter=1.0), dict(N=200, D=64, batch=16, form="toeplitz",
              ms_per_iter=3.0), dict(N=200, D=64, batch=256, form="fft", ms_per_iter=9.0),
              dict(N=200, D=64, batch=256, form="toeplitz", ms_per_iter=4.0)]
    assert forms.choose_form(200, 64, "cpu", table=_table(rows_b), B=16)[0] == "fft"
    assert forms.choose_form(200, 64, "cpu", table=_table(rows_b), B=300)[0] == "toeplitz"
    f = tmp_path / "t.json"
    f.write_text(json.dumps(_table(rows)))
    assert forms.choose_form(3000, 64, "cpu", path=str(f))[0] == "fft"
    # far from every measured row (more than a factor 2 in a coordinate): the default rule, not the nearest row
    form, why = forms.choose_form(32, 16, "cpu", table=_table(rows_b), B=128)
    assert form == "toeplitz" and "default rule" in why
    assert forms.choose_form(200, 64, "cpu", table=_table(rows_b), B=4000)[0] == "toeplitz"  # 16x the largest batch


def test_conv_option_validated_and_used(tmp_path):
    cfg = s4c.parse_config(["--preset", "tiny", "--conv", "chunked", "--out", str(tmp_path), "--no-compile"])
    with pytest.raises(ValueError, match="--conv: must be one of"):
        s4c.validate(dataclasses.replace(cfg, conv="winograd"))
    with pytest.raises(ValueError, match="--conv: --precision fp16"):
        s4c.validate(dataclasses.replace(cfg, conv="fft", precision="fp16"))
    with pytest.raises(SystemExit):  # the command line reports it as a usage error
        s4c.parse_config(["--preset", "tiny", "--conv", "winograd", "--out", str(tmp_path)])
    tr = s4t.Trainer(cfg, torch.device("cpu"), log=lambda *a: None)
    assert (tr.conv, tr.path.conv) == ("chunked", "chunked")
    assert s4t.Trainer(s4c.parse_config(["--preset", "tiny", "--out", str(tmp_path), "--no-compile"]),
                       torch.device("cpu"), log=lambda *a: None).path.conv != "chunked"  # one trainer's form stays its own
    assert "conv" not in s4c.key_fields(vars(cfg))  # the form changes rounding only: not part of a run's key


@given(R=st.integers(1, 2), D=st.integers(1, 4), M=st.integers(1, 40), k=st.integers(1, 9))
def test_split_k_projection_equals_bmm(R, D, M, k):
    from synthetic.s4.proj import projection, split_k_projection

    g = torch.Generator().manual_seed(R * 1000 + D * 100 + M)
    W = torch.randn(R, D, D, generator=g, dtype=F64, requires_grad=True)
    s = torch.randn(R, D, M, generator=g, dtype=F64, requires_grad=True)
    dz = torch.randn(R, D, M, generator=g, dtype=F64)
    a, b = split_k_projection(W, s, k), projection(W, s)
    assert torch.equal(a, b)  # the forward is the same bmm
    for u, v in zip(torch.autograd.grad((a * dz).sum(), (W, s)), torch.autograd.grad((b * dz).sum(), (W, s))):
        assert rel_err(u, v) < RTOL[F64]


def test_proj_split_option_reaches_the_layer(tmp_path):
    cfg = s4c.parse_config(["--preset", "tiny", "--proj-split", "4", "--out", str(tmp_path), "--no-compile"])
    path = s4t.Trainer(cfg, torch.device("cpu"), log=lambda *a: None).path
    assert path.proj_split == 4
    layers = [sm.init_layer(3, 2, generator=torch.Generator().manual_seed(1), dtype=F64)]
    stack = [{k: v[None].clone().requires_grad_(True) for k, v in q.items()} for q in layers]
    x = torch.randn(3, 10, 2, dtype=F64)
    idx = sm.toeplitz_index(10, "cpu")
    g4 = torch.autograd.grad(sm.deep_forward(stack, x, idx, path).sum(), stack[0]["W"])[0]
    g0 = torch.autograd.grad(sm.deep_forward(stack, x, idx).sum(), stack[0]["W"])[0]
    assert rel_err(g4, g0) < RTOL[F64]
    assert "proj_split" not in s4c.key_fields(vars(cfg))


@pytest.mark.parametrize("form", FORMS)
def test_each_form_traces_as_one_graph(form):
    """The training loss stays one dynamo graph (no graph break) whichever form the layer uses."""
    import torch._dynamo as dynamo

    g = torch.Generator().manual_seed(0)
    frozen = [sm.init_layer(4, 3, generator=g) for _ in range(2)]
    st_ = sm.RunState.create(frozen, 2, 2, 1, generator=g)
    x, y = torch.randn(4, 20, 3, generator=g), torch.randn(4, 20, 3, generator=g)
    try:
        dynamo.reset()
        e = dynamo.explain(sm.losses_for(sm.FastPath(conv=form)))(st_.base, st_.train, st_.mask, st_.lora,
                                                                 st_.rank_mask, x, y, sm.toeplitz_index(20, "cpu"))
    finally:
        dynamo.reset()
    assert (e.graph_count, e.graph_break_count) == (1, 0), e.break_reasons


def test_choose_form_never_picks_the_opt_in_fused_form():
    """The CUDA scaling table times ``fused`` eager at R = 1; training runs compiled and packed, where fused was
    measured slower: a table row where it is fastest must not make it the default."""
    rows = [dict(N=200, D=64, batch=4000, form="fused", ms_per_iter=5.0),
            dict(N=200, D=64, batch=4000, form="toeplitz", ms_per_iter=8.0),
            dict(N=200, D=64, batch=4000, form="fft", ms_per_iter=30.0)]
    table = {"results": [dict(device_type="cuda", **r) for r in rows]}
    form, why = forms.choose_form(200, 64, "cuda", table=table, B=4000)
    assert form == "toeplitz" and "measured" in why
    assert "fused" in forms.CONV_FORMS and "fused" not in forms.AUTO_FORMS


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_choose_form_at_each_committed_row_is_its_fastest_auto_form(device_type):
    """At every (N, D, batch) the committed scaling table of ``device_type`` measured, ``--conv auto`` picks the
    form that table measured fastest there among :data:`forms.AUTO_FORMS` (skipped rows, ms None, do not count)."""
    path = forms.REPO_ROOT / forms.SCALING_TABLE.format(device=device_type)
    if not path.exists():
        pytest.skip(f"no committed {path.name}")
    rows = [r for r in json.loads(path.read_text())["results"] if r.get("ms_per_iter") is not None]
    sizes = sorted({(r["N"], r["D"], r["batch"]) for r in rows})
    assert sizes, f"{path.name} has no timed row"
    for N, D, B in sizes:
        timed = {r["form"]: r["ms_per_iter"] for r in rows if (r["N"], r["D"], r["batch"]) == (N, D, B)
                 and r["form"] in forms.AUTO_FORMS}
        form, why = forms.choose_form(N, D, device_type, B=B)
        assert form == min(timed, key=timed.get) and "measured" in why, (N, D, B, form, timed)
