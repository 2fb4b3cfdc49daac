"""The benchmark's other PEFT methods on the deep-S4 experiment (synthetic.s4.methods.BENCHMARK_METHODS):
fast model vs float64 reference twin for every new term, trainable counts vs optimizer updates, frozen
entries, bad budgets, ``--methods all``, and Proposition 1 on a layer built by the experiment code."""

import pytest

from synthetic.results import ResultsFile, run_records
import torch

from synthetic.s4 import model as sm
from synthetic.s4 import config as s4c, methods as s4m, train as s4t, experiment as s4r
from theory.peft import DoRALinear, LoRAConfig, count_trainable, dora_weight
from theory.proposition1 import (initial_state_to_prefix, prefix_to_initial_state, prefix_tuned_output,
                                 reachability_matrix, reachability_residual, reachable_dimension)
from theory.ssm import ssm_recurrence
from theory.tolerances import RTOL, rel_err

F64 = torch.float64
NEW = list(s4m.BENCHMARK_METHODS)


def _state(layers, method, budget, R=1, seed=0):
    """A RunState over float64 ``layers`` configured for one method (the experiment's code path)."""
    state = sm.RunState.create(layers, R, 4, 2, generator=torch.Generator().manual_seed(seed))
    s4m.METHODS[method].configure(state, budget, None)
    return state


def _perturb(state, seed=1, scale=0.3):
    """Random non-zero values for every extra tensor and LoRA B factor (they start at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for ex in state.extra or ():
            for v in ex.values():
                v.add_(scale * torch.randn(v.shape, generator=g, dtype=v.dtype))
        for lo in state.lora:
            for k in ("proj_B", "ssm_B"):
                lo[k].copy_(scale * torch.randn(lo[k].shape, generator=g, dtype=lo[k].dtype))


def _fast_out(state, x):
    """Fast model output (R, D, N, B) for a state, x (D, N, B)."""
    idx = sm.toeplitz_index(x.shape[1] + state.prefix_length(), "cpu")
    if state.has_extra():
        return sm.deep_forward_extra(state.effective(), x, idx)
    return sm.deep_forward(state.effective(), x, idx)


def _layers(D=4, Hc=2, L=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [sm.init_layer(D, Hc, generator=g, dtype=F64) for _ in range(L)]


@pytest.mark.parametrize("method,budget", [("Prompt tuning", {"prompt_len": 3}), ("Prefix-tuning", {"prefix_len": 2}),
                                           ("Initial-state tuning", {"initial_state": True}),
                                           ("State-offset tuning", {"state_offset": True}),
                                           ("Additional-scan", {"add_states": 2}), ("DoRA (Proj)", {"dora_rank": 2})])
def test_fast_model_with_new_terms_equals_float64_reference(method, budget):
    """Every new term against the theory twin (explicit recurrence from h_0, modes appended, prefix prepended)."""
    D, N, B = 4, 9, 3
    state = _state(_layers(D), method, budget)
    _perturb(state)
    x = torch.randint(0, 10, (D, N, B), generator=torch.Generator().manual_seed(2)).to(F64)
    fast = _fast_out(state, x)[0]  # (D, N, B)
    eff = [{k: v[0] for k, v in p.items()} for p in state.effective()]
    ref = sm.theory_forward_extra(eff, x.permute(2, 0, 1))  # (B, D, N)
    assert rel_err(fast.permute(2, 0, 1), ref) < RTOL[F64]
    if method == "DoRA (Proj)":  # W' = m ⊙ (W + BA) / ‖W + BA‖_row, as theory.peft.dora_weight
        for b, lo, ex, e in zip(state.base, state.lora, state.extra, eff):
            delta = lo["proj_B"][0] @ (lo["proj_A"][0] * state.rank_mask[0]["proj"][0][:, None])
            assert rel_err(e["W"], dora_weight(b["W"], delta, ex["dora_m"][0])) < RTOL[F64]


def test_new_methods_start_at_the_frozen_function_where_they_should():
    """Zero-initialised extras (h_0, h', C of added modes, one-layer prefix) and DoRA's m = ‖W‖_row leave the
    frozen model's output unchanged."""
    D, N, B = 4, 8, 2
    layers = _layers(D, L=1)
    x = torch.randint(0, 10, (D, N, B), generator=torch.Generator().manual_seed(3)).to(F64)
    frozen = sm.deep_forward([{k: v[None] for k, v in p.items()} for p in layers], x, sm.toeplitz_index(N, "cpu"))
    for method in NEW:
        budget = s4m.METHODS[method].budgets(s4c.parse_config(["--preset", "tiny"]))[0]
        out = _fast_out(_state(layers, method, budget), x)
        assert rel_err(out, frozen) < RTOL[F64], method


def test_dora_linear_merge_unmerge_and_count():
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(5, 4, generator=g, dtype=F64), torch.randn(5, generator=g, dtype=F64)
    mod = DoRALinear(W, b, LoRAConfig(2), generator=g)
    assert rel_err(mod.effective_weight(), W) < RTOL[F64]  # m = ‖W‖_row: starts at W
    with torch.no_grad():
        mod.lora_B.copy_(torch.randn(5, 2, generator=g, dtype=F64))
        mod.magnitude.mul_(1.5)
    x = torch.randn(3, 4, generator=g, dtype=F64)
    y = mod(x)
    mod.merge()
    assert rel_err(mod(x), y) < RTOL[F64]
    mod.unmerge()
    assert torch.equal(mod.weight, W)  # bit-exact restore
    assert count_trainable(mod) == 2 * 4 + 5 * 2 + 5


# ------------------------------------------------------------------------------ counts and updates
@pytest.fixture(scope="module")
def tiny():
    cfg = s4c.parse_config(["--preset", "tiny", "--no-compile", "--device", "cpu", "--methods", "all"])
    trainer = s4t.Trainer(cfg, torch.device("cpu"), log=lambda *a: None)
    frozen, target = trainer.models(0)
    sel = trainer.warmup_selection(frozen, target, 0)
    return cfg, trainer, frozen, target, sel


@pytest.mark.parametrize("name", list(s4m.METHODS))
def test_trainable_count_equals_entries_with_nonzero_gradient(tiny, name):
    """The count (== theory.peft.count_trainable) is the number of scalars that receive a gradient.
    β is raised so every ReLU is active (a dead channel would hide its W row's gradient)."""
    cfg, trainer, frozen, target, sel = tiny
    frozen = [{**p, "beta": p["beta"] + 10.0} for p in frozen]
    method = s4m.METHODS[name]
    for budget in method.budgets(cfg):
        state = sm.RunState.create(frozen, 1, *trainer.rank_max(), generator=torch.Generator().manual_seed(0))
        s4m.configure(cfg, method, state, budget, sel)
        _perturb(state, scale=0.05)
        x, y = trainer.batch(trainer.data(0, stream=0), target)
        loss = sm.run_losses(state.base, state.train, state.mask, state.lora, state.rank_mask, x, y,
                             *state.loss_args(trainer.idx, trainer.idx_for(state.prefix_length())))
        grads = torch.autograd.grad(loss.sum(), state.parameters())
        nonzero = sum(int((g != 0).sum()) for g in grads)
        count = state.trainable_count()[0]
        # Structural zeros: Im C of a real mode (Im A = 0, B real) never reaches 2 Re(C B̄ Ā^k); SDT and Full
        # count such entries as trainable (the method's definition), they just get no gradient at this point.
        dead = sum(int((m["C_im"][0] & (e["A_im"][0] == 0) & (e["B_im"][0] == 0)).sum())
                   for m, e in zip(state.mask, state.effective()))
        assert nonzero == count - dead, (name, budget, dead)
        assert count == s4m.theory_trainable_count(method, frozen, budget, sel, cfg), (name, budget)


@pytest.mark.parametrize("name", NEW)
def test_new_methods_keep_frozen_entries_bit_identical(tiny, name):
    cfg, trainer, frozen, target, sel = tiny
    method = s4m.METHODS[name]
    budget = method.budgets(cfg)[-1]
    state = sm.RunState.create(frozen, 1, *trainer.rank_max(), generator=torch.Generator().manual_seed(0))
    s4m.configure(cfg, method, state, budget, sel)
    extra0 = [{k: v.detach().clone() for k, v in ex.items()} for ex in state.extra or ()]
    losses = trainer.train(state, [3e-2], 5, target, trainer.data(0, stream=0))
    assert torch.isfinite(losses).all()
    eff = state.effective()
    for l, (f, e) in enumerate(zip(frozen, eff)):
        for k in sm.ALL_PARAMS:
            if (k == "beta" and name == "BitFit") or (k == "W" and name == "DoRA (Proj)"):
                assert not torch.equal(e[k][0].detach(), f[k]), (name, l, k)  # the trained part moved
            else:
                assert torch.equal(e[k][0].detach(), f[k]), (name, l, k)  # bit-identical
    for ex, ex0 in zip(state.extra or (), extra0):
        assert not ex or any(not torch.equal(ex[k], ex0[k]) for k in ex), name  # the extras were trained


def test_bad_benchmark_budgets_fail_with_a_clear_message(capsys):
    cases = [(["--prompt-lens", "0"], "--prompt-lens"), (["--prefix-lens", "2,-1"], "--prefix-lens"),
             (["--dora-ranks", "99"], "--dora-ranks"), (["--additional-states", "0"], "--additional-states"),
             (["--methods", "all,Full"], "--methods")]
    for argv, needle in cases:
        with pytest.raises(SystemExit):
            s4c.parse_config(argv)
        assert needle in capsys.readouterr().err, argv
    state = _state(_layers(), "Frozen", {})
    with pytest.raises(ValueError, match="name"):
        state.add_extra(0, "bogus", torch.zeros(1, 4))


def test_methods_all_end_to_end(tmp_path):
    argv = ["--preset", "tiny", "--no-compile", "--device", "cpu", "--out", str(tmp_path), "--methods", "all",
            "--seeds", "0", "--lrs", "1e-2"]
    s4r.main(argv)
    recs = run_records(ResultsFile(tmp_path / "peft_methods_s4_tiny.jsonl").load())
    assert {r["method"] for r in recs} == set(s4m.METHODS)
    assert all(r["trainable"] == r["trainable_theory"] for r in recs)
    assert (tmp_path / "peft_methods_s4_tiny.png").stat().st_size > 0
    assert not (tmp_path / "s4_regression_tiny.jsonl").exists()


# -------------------------------------------------------------------- Proposition 1, experiment-built
def _prop1_layer(D=3, Hc=2, seed=4):
    """One S4 layer from the experiment's initialiser (float64), its Ā, B̄ (D, Hc) and the real
    state dimension per channel (2 per complex mode, 1 per real mode: Im A = 0 makes Ā real)."""
    layer = sm.init_layer(D, Hc, generator=torch.Generator().manual_seed(seed), dtype=F64)
    A_bar, B_bar = s4t.A_bar(layer), s4t.B_bar(layer)
    real = layer["A_im"] == 0  # (D, Hc)
    return layer, A_bar, B_bar, real


def _random_state(A_bar, real, seed):
    """A random complex h_0 (D, Hc); Im h_0 = 0 on real modes (a real prefix cannot move it there)."""
    g = torch.Generator().manual_seed(seed)
    h = torch.complex(torch.randn(A_bar.shape, generator=g, dtype=F64), torch.randn(A_bar.shape, generator=g, dtype=F64))
    return torch.where(real, h.real.to(h.dtype), h)


def _outputs(layer, method, value, x):
    """Fast-model output (D, N, B) of the one-layer model with a prefix (D, M) or an initial state (D, Hc)."""
    if method == "Prefix-tuning":
        state = _state([layer], method, {"prefix_len": value.shape[1]})
        with torch.no_grad():
            state.extra[0]["prefix"][0] = value
    else:
        state = _state([layer], method, {"initial_state": True})
        with torch.no_grad():
            state.extra[0]["h0_re"][0], state.extra[0]["h0_im"][0] = value.real, value.imag
    return _fast_out(state, x)[0]


def test_prefix_equals_initial_state_on_the_experiment_s4():
    """Proposition 1 part 1: the outputs of the prefix-tuned layer are those of the layer started at
    h_0* = Σ_m Ā^{M−m} B̄ p_m (theory.proposition1), on the fast model (ReLU after the mechanism, which
    acts per position) and on the linear float64 twin."""
    layer, A_bar, B_bar, _ = _prop1_layer()
    D, N, B = 3, 10, 2
    x = torch.randint(0, 10, (D, N, B), generator=torch.Generator().manual_seed(5)).to(F64)
    for M in (1, 3, 6):
        P = torch.randn(D, M, generator=torch.Generator().manual_seed(M), dtype=F64)
        h0 = prefix_to_initial_state(A_bar, B_bar, P)
        assert rel_err(_outputs(layer, "Prefix-tuning", P, x), _outputs(layer, "Initial-state tuning", h0, x)) < RTOL[F64]
        ssm = sm.to_theory_model([layer]).layers[0].ssm  # the linear mechanism
        xt = x.permute(2, 0, 1)
        assert rel_err(prefix_tuned_output(ssm, P, xt), ssm_recurrence(ssm, xt, h0)) < RTOL[F64]


def test_initial_state_is_a_prefix_iff_M_reaches_the_state_dimension():
    """Part 2: with M >= H (real state dimensions) every initial state of the experiment's layer is realised
    by a prefix (theory.proposition1.initial_state_to_prefix) and the outputs agree; with M < H a random
    initial state is refused, its distance to the reachable set (the theory's residual) is O(1), and the
    best least-squares prefix does not reproduce the outputs."""
    layer, A_bar, B_bar, real = _prop1_layer()
    D, Hc = A_bar.shape
    H = 2 * Hc
    N, B = 10, 2
    x = torch.randint(0, 10, (D, N, B), generator=torch.Generator().manual_seed(6)).to(F64)
    h0 = _random_state(A_bar, real, seed=7)
    dims = (2 * Hc - real.sum(1)).tolist()  # reachable dimension per channel for M >= H
    assert reachable_dimension(A_bar, B_bar, H).tolist() == dims
    for M in (H, H + 2):
        P = initial_state_to_prefix(A_bar, B_bar, h0, M)
        want = _outputs(layer, "Initial-state tuning", h0, x)
        assert rel_err(_outputs(layer, "Prefix-tuning", P, x), want) < 1e-7  # Vandermonde solve: cond ~1e5 here
    M = H - 2
    with pytest.raises(ValueError, match="not reachable"):
        initial_state_to_prefix(A_bar, B_bar, h0, M)
    resid = reachability_residual(A_bar, B_bar, h0, M) / torch.linalg.vector_norm(torch.view_as_real(h0), dim=(1, 2))
    assert bool((resid > 1e-3).all()), resid
    G = reachability_matrix(A_bar, B_bar, M)  # (D, Hc, M) complex
    Gr = torch.cat([G.real, G.imag], dim=1)  # (D, 2Hc, M)
    P_ls = torch.linalg.lstsq(Gr, torch.cat([h0.real, h0.imag], dim=1)[..., None]).solution[..., 0]  # (D, M)
    gap = rel_err(_outputs(layer, "Prefix-tuning", P_ls, x), _outputs(layer, "Initial-state tuning", h0, x))
    assert gap > 1e-4, gap
