"""Theorem 1: the constructed update equals the target, and its budget is recounted from the
parameters (a diff of the updated and the frozen model; ranks by SVD), never taken from the report."""

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from theory.deep import DeepLayer, deep_forward, random_deep
from theory.peft import Role
from theory.tests.strategies import generator
from theory.tests.strategies_theorem1 import theorem1_sizes
from theory.theorem1 import (construct_theorem1, group_sizes, random_instance, routing_update,
                             zero_block_bounds)
from theory.tolerances import DEEP_RTOL, RANK_RTOL, rel_err

EXACT = DEEP_RTOL[torch.float64]  # "equals the target" for a deep construction (float64)


def _rank(M: torch.Tensor, scale: float) -> int:
    """Numerical rank: singular values above RANK_RTOL · max(1, scale) count (the construction's rounding is ~1e-13)."""
    s = torch.linalg.svdvals(M)
    return int((s > RANK_RTOL * max(1.0, scale)).sum())


def recount_s4(frozen, model):
    """Per layer, from the diff only: tuned channels, tuned states per channel, tuned scalars of
    (A_bar, B_bar, C), pruned scalars, rank of ΔW, changed u and β entries."""
    out = []
    for f, m in zip(frozen.layers, model.layers):
        fs, ms = f.ssm, m.ssm
        tuned = {}
        pruned = 0
        for name in ("A_bar", "B_bar", "C"):
            a, b = getattr(fs, name), getattr(ms, name)
            changed = a != b
            tuned[name] = changed & (b != 0)
            pruned += int((changed & (b == 0)).sum())
        any_tuned = tuned["A_bar"] | tuned["B_bar"] | tuned["C"]  # (D, H)
        channels = int(any_tuned.any(dim=1).sum())
        states = int(any_tuned.sum(dim=1).max()) if any_tuned.numel() else 0
        out.append(dict(
            channels=channels, states=states, B_tuned=int(tuned["B_bar"].sum()),
            ssm_tuned=int(tuned["A_bar"].sum() + tuned["C"].sum()), pruned=pruned,
            W_rank=_rank(m.W - f.W, float(f.W.abs().max())), W_changed=bool((m.W != f.W).any()),
            u=int((m.u != f.u).sum()), beta=int((m.beta != f.beta).sum())))
    return out


def assert_within_budget(frozen, model, budget):
    """Every recounted quantity is within what the budget reports (raises AssertionError otherwise)."""
    D = frozen.D
    counts = recount_s4(frozen, model)
    recount_total = 0
    for j, c in enumerate(counts):
        assert c["channels"] <= budget.channels_per_layer[j], f"layer {j}: {c['channels']} channels tuned"
        assert c["states"] <= budget.tuned_states_per_channel, f"layer {j}: {c['states']} states in a channel"
        assert c["B_tuned"] == 0, f"layer {j}: B_bar was tuned (SDT tunes A_bar and C)"
        if j in budget.full_W_layers:
            recount_total += D * D
        else:
            assert c["W_rank"] <= budget.lora_rank_per_layer[j], f"layer {j}: rank ΔW = {c['W_rank']}"
            recount_total += 2 * D * c["W_rank"]
    assert sum(c["ssm_tuned"] for c in counts) <= budget.ssm_tuned
    assert sum(c["pruned"] for c in counts) <= budget.ssm_pruned
    assert sum(c["u"] for c in counts) <= budget.residual_params
    assert sum(c["beta"] for c in counts) <= budget.bias_params
    recount_total += sum(c["ssm_tuned"] + c["u"] + c["beta"] for c in counts)
    assert recount_total <= budget.total_trainable
    return counts


# ------------------------------------------------------------------------------------------ S4, inside
@given(theorem1_sizes())
def test_s4_inside_update_equals_target(sz):
    g = generator(sz.seed)
    frozen, target = random_instance(sz.L, sz.L_star, sz.D, sz.H, sz.H_star, skip="inside", generator=g)
    up = construct_theorem1(frozen, target)
    x = torch.randn(2, sz.D, 17, generator=g, dtype=torch.float64)
    assert rel_err(deep_forward(up.model, x), deep_forward(target, x)) <= EXACT


@given(theorem1_sizes(max_L=4, max_D=4))
@settings(max_examples=8)
def test_s4_inside_update_equals_target_by_recurrence(sz):
    """The same check against the explicit recurrence (the reference twin of the FFT path)."""
    g = generator(sz.seed)
    frozen, target = random_instance(sz.L, sz.L_star, sz.D, sz.H, sz.H_star, skip="inside", generator=g)
    up = construct_theorem1(frozen, target)
    x = torch.randn(1, sz.D, 9, generator=g, dtype=torch.float64)
    assert rel_err(deep_forward(up.model, x, reference=True), deep_forward(target, x, reference=True)) <= EXACT


@given(theorem1_sizes())
def test_s4_inside_budget_is_within_report_and_theorem(sz):
    g = generator(sz.seed)
    frozen, target = random_instance(sz.L, sz.L_star, sz.D, sz.H, sz.H_star, skip="inside", generator=g)
    up = construct_theorem1(frozen, target)
    b = up.budget
    counts = assert_within_budget(frozen, up.model, b)
    # the theorem's budgets, recounted: ⌈D/⌊L/L*⌋⌉ channels and LoRA rank (= ⌈D·L*/L⌉ when L* | L),
    # H* states per channel, every projection but the last low-rank
    need = math.ceil(sz.D / (sz.L // sz.L_star))
    assert max(c["channels"] for c in counts) <= need
    assert max(c["states"] for c in counts) <= sz.H_star
    assert all(c["W_rank"] <= need for j, c in enumerate(counts) if j != sz.L - 1)
    assert b.full_W_layers == (sz.L - 1,)
    if sz.L % sz.L_star == 0:
        assert max(c["channels"] for c in counts) <= math.ceil(sz.D * sz.L_star / sz.L)
    assert b.group_sizes == group_sizes(sz.L, sz.L_star) and sum(b.group_sizes) == sz.L
    # LoRA factors hold 2Dr scalars, more than D² when r > D/2: tiny cases can exceed 100%, honestly
    assert b.percent == pytest.approx(100 * b.total_trainable / b.model_params) and b.percent > 0


@given(theorem1_sizes())
def test_s4_records_agree_with_the_model(sz):
    """The LoRA factors reproduce ΔW exactly; the SDT-P masks say what is zero and what is tuned."""
    g = generator(sz.seed)
    frozen, target = random_instance(sz.L, sz.L_star, sz.D, sz.H, sz.H_star, skip="inside", generator=g)
    up = construct_theorem1(frozen, target)
    for rec, f, m in zip(up.layers, frozen.layers, up.model.layers):
        if rec.lora_A is not None:
            assert rel_err(m.W, f.W + rec.lora_B @ rec.lora_A) <= 1e-12 or bool((m.W == f.W).all())
            assert rec.lora_A.shape == (rec.lora_rank, sz.D) and rec.lora_B.shape == (sz.D, rec.lora_rank)
        pr = rec.mask.roles == Role.PRUNED
        for name in ("A_bar", "B_bar", "C"):
            assert bool((getattr(m.ssm, name)[pr] == 0).all())
        tr = rec.mask.roles == Role.TRAINABLE
        assert int(tr.sum()) == sz.H_star * len(rec.channels)
        assert bool((m.ssm.B_bar[tr] == f.ssm.B_bar[tr]).all())


def _tamper_instance():
    g = generator(11)
    frozen, target = random_instance(4, 2, 4, 3, 2, skip="inside", generator=g)
    return frozen, target, construct_theorem1(frozen, target)


def test_recount_catches_a_hidden_rank_increase():
    frozen, target, up = _tamper_instance()
    assert_within_budget(frozen, up.model, up.budget)  # the honest update passes
    j = next(j for j, k in enumerate(up.budget.lora_rank_per_layer) if k > 0)
    layers = list(up.model.layers)
    g = generator(3)
    extra = torch.randn(4, 1, generator=g, dtype=torch.float64) @ torch.randn(1, 4, generator=g, dtype=torch.float64)
    layers[j] = DeepLayer(layers[j].ssm, layers[j].W + extra, layers[j].beta, layers[j].u)
    with pytest.raises(AssertionError, match="rank"):
        assert_within_budget(frozen, up.model.with_layers(layers), up.budget)


def test_recount_catches_an_under_reported_budget():
    frozen, target, up = _tamper_instance()
    ranks = tuple(max(0, k - 1) for k in up.budget.lora_rank_per_layer)
    with pytest.raises(AssertionError, match="rank"):
        assert_within_budget(frozen, up.model, dataclasses.replace(up.budget, lora_rank_per_layer=ranks))
    chans = tuple(max(0, k - 1) for k in up.budget.channels_per_layer)
    with pytest.raises(AssertionError, match="channels"):
        assert_within_budget(frozen, up.model, dataclasses.replace(up.budget, channels_per_layer=chans))


def test_recount_catches_an_extra_tuned_channel():
    frozen, target, up = _tamper_instance()
    rec = up.layers[0]
    d = rec.pruned_channels[0]
    layers = list(up.model.layers)
    s = layers[0].ssm
    C = s.C.clone()
    A = s.A_bar.clone()
    B = s.B_bar.clone()
    A[d, 0], B[d, 0], C[d, 0] = frozen.layers[0].ssm.A_bar[d, 0], frozen.layers[0].ssm.B_bar[d, 0], 0.5
    layers[0] = DeepLayer(type(s)(A, B, C), layers[0].W, layers[0].beta, layers[0].u)
    with pytest.raises(AssertionError, match="channels"):
        assert_within_budget(frozen, up.model.with_layers(layers), up.budget)


@given(st.integers(0, 2**31 - 1), st.sampled_from([(2, 1, 4), (2, 1, 6), (4, 2, 4), (4, 2, 6), (3, 1, 6)]))
@settings(max_examples=10)
def test_zero_block_forces_the_rank(seed, case):
    """Where L* | L and M = L/L* divides D, the LoRA rank equals the zero-block lower bound D·L*/L,
    the block is zero in the update, and putting anything there breaks equality."""
    L, Ls, D = case
    g = generator(seed)
    frozen, target = random_instance(L, Ls, D, 2, 1, skip="inside", generator=g)
    up = construct_theorem1(frozen, target)
    x = torch.randn(2, D, 12, generator=g, dtype=torch.float64)
    y = deep_forward(target, x)
    recs = zero_block_bounds(frozen, up)
    assert recs, "every group of >= 2 layers has a consecutive processing pair"
    for rec in recs:
        assert rec["bound"] == D * Ls // L == rec["lora_rank"]
        assert rec["updated_block_max"] <= 1e-9
        j = rec["layer"]
        layers = list(up.model.layers)
        W = layers[j].W.clone()
        W[up.layers[j + 1].channels[0], up.layers[j].channels[0]] += 1e-2 * float(W.abs().max())
        layers[j] = DeepLayer(layers[j].ssm, W, layers[j].beta, layers[j].u)
        # the exact update is at ~1e-13; a first-order perturbation shows far above 1e-9
        assert rel_err(deep_forward(up.model.with_layers(layers), x), y) > 1e-9


def test_routing_update_has_the_block_structure_and_rank():
    g = generator(5)
    D, S = 6, (1, 4)
    W0 = torch.randn(D, D, generator=g, dtype=torch.float64)
    G = torch.randn(D, D, generator=g, dtype=torch.float64)
    A, B, note = routing_update(W0, G, S)
    Gp = (W0 + B @ A) @ G
    E = torch.eye(D, dtype=torch.float64)[:, list(S)]
    assert note == "" and A.shape == (2, D)
    assert rel_err(Gp[list(S)], E.T) <= 1e-10 and rel_err(Gp[:, list(S)], E) <= 1e-10
    assert torch.linalg.matrix_rank(B @ A) == 2


def test_routing_update_fallback_when_not_generic():
    """If E^T R1 is singular (W0's block equals the identity map on S), the rank-2s fallback still routes."""
    D, S = 4, (0,)
    G = torch.eye(D, dtype=torch.float64)
    W0 = torch.randn(D, D, generator=generator(1), dtype=torch.float64)
    W0[0, 0] = 1.0  # E^T R1 = 1 − W0[0,0] = 0
    A, B, note = routing_update(W0, G, S)
    assert "fallback" in note and A.shape[0] == 2
    Gp = (W0 + B @ A) @ G
    assert rel_err(Gp[0], torch.eye(D, dtype=torch.float64)[0]) <= 1e-10
    assert rel_err(Gp[:, 0], torch.eye(D, dtype=torch.float64)[:, 0]) <= 1e-10


# ------------------------------------------------------------------------------------------ S4, outside
@given(theorem1_sizes())
def test_s4_outside_weaker_update_equals_target(sz):
    g = generator(sz.seed)
    frozen, target = random_instance(sz.L, sz.L_star, sz.D, sz.H, sz.H_star, skip="outside", generator=g)
    up = construct_theorem1(frozen, target)
    x = torch.randn(2, sz.D, 15, generator=g, dtype=torch.float64)
    assert rel_err(deep_forward(up.model, x), deep_forward(target, x)) <= EXACT
    counts = assert_within_budget(frozen, up.model, up.budget)
    # the weaker budget, recounted: each group has one layer tuning all D channels, whose W is replaced;
    # every other layer tunes nothing and keeps its W
    b = up.budget
    assert sorted(b.full_W_layers) == [j for j, c in enumerate(counts) if c["W_changed"]]
    assert len(b.full_W_layers) == sz.L_star
    assert all(c["channels"] in (0, sz.D) for c in counts)


# ------------------------------------------------------------------------------------------ S6
@given(theorem1_sizes(max_L=4, max_D=3, max_H=3), st.sampled_from(["inside", "outside"]))
@settings(max_examples=8)
def test_s6_weaker_update_equals_target(sz, skip):
    g = generator(sz.seed)
    frozen, target = random_instance(sz.L, sz.L_star, sz.D, sz.H, sz.H_star, kind="s6", skip=skip, generator=g)
    up = construct_theorem1(frozen, target)
    x = torch.randn(2, sz.D, 8, generator=g, dtype=torch.float64)
    assert rel_err(deep_forward(up.model, x), deep_forward(target, x)) <= EXACT
    b = up.budget
    # recount: which layers changed W, which changed their S6 and how
    for j, (f, m) in enumerate(zip(frozen.layers, up.model.layers)):
        w_changed = bool((m.W != f.W).any())
        assert w_changed <= (j in b.full_W_layers)
        if b.channels_per_layer[j] == 0:  # pass-through: only the W_C rows of x_proj changed (to 0)
            diff = (m.ssm.x_proj != f.ssm.x_proj).any(dim=1)
            assert not bool(diff[: f.ssm.R + f.ssm.H].any())
            assert bool((m.ssm.W_C == 0).all()) and torch.equal(m.ssm.A_log, f.ssm.A_log)
    assert sum(1 for k in b.channels_per_layer if k) == sz.L_star
    assert b.max_channels == sz.D


# ------------------------------------------------------------------------------------------ refusals
def _pair(**kw):
    g = generator(0)
    frozen = random_deep(kw.pop("L", 3), kw.pop("D", 3), kw.pop("H", 3), skip=kw.pop("skip", "inside"),
                         activation=kw.pop("activation", "identity"), generator=g)
    target = random_deep(kw.pop("L_star", 1), kw.pop("D_star", 3), kw.pop("H_star", 2), residual=False,
                         activation=kw.pop("target_activation", "identity"), generator=g)
    return frozen, target


@pytest.mark.parametrize("kw, match", [
    (dict(activation="relu"), "linear activations"),
    (dict(target_activation="relu"), "linear activations"),
    (dict(L=2, L_star=2), "L\\* < L"),
    (dict(L=2, L_star=3), "L\\* < L"),
    (dict(H=2, H_star=3), "H\\* <= H"),
    (dict(D_star=2), "D = 2"),
])
def test_refuses_what_the_theorem_excludes(kw, match):
    frozen, target = _pair(**kw)
    with pytest.raises(ValueError, match=match):
        construct_theorem1(frozen, target)


def test_refuses_a_target_with_residual_and_bad_types():
    g = generator(0)
    frozen = random_deep(3, 3, 3, skip="inside", generator=g)
    target = random_deep(1, 3, 2, residual=True, generator=g)
    with pytest.raises(ValueError, match="residual"):
        construct_theorem1(frozen, target)
    with pytest.raises(ValueError, match="DeepSSM"):
        construct_theorem1("not a model", target)
    f32 = random_deep(3, 3, 3, generator=g, dtype=torch.float32)
    with pytest.raises(ValueError, match="float64"):
        construct_theorem1(f32, random_deep(1, 3, 2, residual=False, generator=g))
    s6_target = random_deep(1, 3, 2, kind="s6", residual=False, generator=g)
    with pytest.raises(ValueError, match="kind"):
        construct_theorem1(frozen, s6_target)


def test_refuses_zero_b_and_conjugate_pairs_and_large_dt_rank():
    g = generator(0)
    frozen = random_deep(3, 3, 3, skip="inside", generator=g)
    target = random_deep(1, 3, 2, residual=False, generator=g)
    layers = list(frozen.layers)
    s = layers[1].ssm
    B = s.B_bar.clone()
    B[2, 0] = 0.0
    layers[1] = DeepLayer(type(s)(s.A_bar, B, s.C), layers[1].W, layers[1].beta, layers[1].u)
    with pytest.raises(ValueError, match="B_bar"):
        construct_theorem1(frozen.with_layers(layers), target)
    from theory.deep import random_s4_ssm
    cp = frozen.with_layers([DeepLayer(random_s4_ssm(3, 3, generator=g, conj_pairs=True), l.W, l.beta, l.u)
                             for l in frozen.layers])
    with pytest.raises(ValueError, match="both conjugate-pair"):  # a conjugate-pair frozen model, a real target
        construct_theorem1(cp, target)
    outside = random_deep(3, 3, 3, skip="outside", generator=g)
    with pytest.raises(ValueError, match="target_residual"):  # the residual target: skip inside only
        construct_theorem1(outside, random_deep(1, 3, 2, residual=True, generator=g), target_residual=True)
    f6 = random_deep(3, 3, 3, kind="s6", R=1, generator=g)
    t6 = random_deep(1, 3, 2, kind="s6", R=2, residual=False, generator=g)
    with pytest.raises(ValueError, match="R\\* <= R"):
        construct_theorem1(f6, t6)


def test_budget_table_lists_every_layer():
    frozen, target, up = _tamper_instance()
    text = up.budget.table()
    assert text.count("\n") >= up.budget.L + 2
    assert "⌈D·L*/L⌉" in text and f"{up.budget.total_trainable}" in text


def _conj_pair_model(L, D, H, residual, g, activation="identity"):
    from theory.deep import random_s4_ssm
    base = random_deep(L, D, H, skip="inside", residual=residual, activation=activation, generator=g)
    return base.with_layers([DeepLayer(random_s4_ssm(D, H, generator=g, conj_pairs=True), l.W, l.beta, l.u)
                             for l in base.layers])


@settings(max_examples=15, deadline=None)
@given(L=st.integers(2, 4), L_star=st.integers(1, 2), D=st.integers(2, 5), H=st.integers(1, 3),
       seed=st.integers(0, 2**31 - 1))
def test_experiment_form_conj_pairs_and_target_residual_is_exact(L, L_star, D, H, seed):
    """The synthetic experiment's form: conjugate-pair modes and a target with a skip inside (u* != 0); with
    ``target_residual=True`` the construction equals the target at the same channel/rank budget, and without
    it the residual target is refused."""
    if L_star >= L:
        L_star = L - 1
    g = generator(seed)
    H_star = 1 + seed % H
    frozen = _conj_pair_model(L, D, H, True, g)
    target = _conj_pair_model(L_star, D, H_star, True, g)
    with pytest.raises(ValueError, match="residual"):
        construct_theorem1(frozen, target)
    up = construct_theorem1(frozen, target, target_residual=True)
    x = torch.randn(3, D, 17, generator=g, dtype=torch.float64)
    assert rel_err(deep_forward(up.model, x), deep_forward(target, x)) <= EXACT
    need = math.ceil(D / (L // L_star))
    assert up.budget.max_channels <= need and up.budget.max_lora_rank <= need
    for rec, layer in zip(up.layers, up.model.layers):  # processed channels carry u*, the others pass through
        t = target.layers[rec.target_layer]
        assert torch.equal(layer.u[list(rec.channels)], t.u[list(rec.channels)])
        assert bool((layer.u[list(rec.pruned_channels)] == 1).all())
    # oracle of the residual's role: zeroing u* of the processed channels (Theorem 1's rule) misses the target
    wrong = up.model.with_layers([dataclasses.replace(l, u=torch.where(l.u == 1, l.u, torch.zeros_like(l.u)))
                                  for l in up.model.layers])
    assert rel_err(deep_forward(wrong, x), deep_forward(target, x)) > 1e-6
