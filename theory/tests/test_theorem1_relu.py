"""Theorem 1 with the experiment's ReLU: the update equals the ReLU target on inputs in [0, x_max],
with the linear construction's budget (kernels, u and W identical; only β differs), and the mechanism
holds (shifted rows stay above the margin); refusals and the instances that break it outside its assumptions."""

import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from theory.deep import deep_forward, random_deep
from theory.tests.strategies import generator
from theory.tests.strategies_theorem1 import theorem1_sizes
from theory.tests.test_theorem1 import assert_within_budget
from theory.theorem1 import construct_theorem1
from theory.theorem1_relu import (construct_theorem1_relu, integer_inputs, kernel_l1_bound, pre_activations,
                                  random_relu_instance)
from theory.tolerances import BREAK_RTOL, DEEP_RTOL, rel_err
from theory.ssm import DiagonalSSM, ssm_kernel

EXACT = DEEP_RTOL[torch.float64]


def _instance(sz):
    g = generator(sz.seed)
    frozen, target = random_relu_instance(sz.L, sz.L_star, sz.D, sz.H, sz.H_star, generator=g)
    return g, frozen, target


@given(theorem1_sizes(), st.sampled_from([1.0, 9.0, 30.0]))
def test_relu_update_equals_target_on_integer_inputs(sz, x_max):
    g, frozen, target = _instance(sz)
    up = construct_theorem1_relu(frozen, target, x_max=x_max)
    x = integer_inputs(3, sz.D, 20, int(x_max), g)
    assert rel_err(deep_forward(up.model, x), deep_forward(target, x)) <= EXACT
    xc = x_max * torch.rand(2, sz.D, 20, generator=g, dtype=torch.float64)  # any real input in [0, x_max]
    assert rel_err(deep_forward(up.model, xc), deep_forward(target, xc)) <= EXACT


@given(theorem1_sizes(max_L=4, max_D=4))
@settings(max_examples=8)
def test_relu_update_equals_target_by_recurrence(sz):
    """Against the explicit recurrence (the FFT path's reference twin)."""
    g, frozen, target = _instance(sz)
    up = construct_theorem1_relu(frozen, target)
    x = integer_inputs(1, sz.D, 9, 9, g)
    assert rel_err(deep_forward(up.model, x, reference=True), deep_forward(target, x, reference=True)) <= EXACT


@given(theorem1_sizes())
def test_relu_budget_is_the_linear_budget(sz):
    """Same kernels, u and W as the linear construction (only β differs), so the recounted budget is
    Theorem 1's: ⌈D/⌊L/L*⌋⌉ channels and LoRA rank per layer, H* states, the last W in full."""
    g, frozen, target = _instance(sz)
    up = construct_theorem1_relu(frozen, target)
    lin = construct_theorem1(replace(frozen, activation="identity"), replace(target, activation="identity"))
    for a, b in zip(up.model.layers, lin.model.layers):
        assert torch.equal(a.W, b.W) and torch.equal(a.u, b.u)
        assert all(torch.equal(getattr(a.ssm, k), getattr(b.ssm, k)) for k in ("A_bar", "B_bar", "C"))
    counts = assert_within_budget(frozen, up.model, up.budget)
    need = math.ceil(sz.D / (sz.L // sz.L_star))
    assert max(c["channels"] for c in counts) <= need and up.budget.full_W_layers == (sz.L - 1,)
    assert all(c["W_rank"] <= need for j, c in enumerate(counts) if j != sz.L - 1)


@given(theorem1_sizes(), st.floats(0.1, 5.0))
def test_shifted_rows_stay_above_the_margin(sz, margin):
    """The mechanism: every pre-activation row outside the next block is >= margin (ReLU is the identity
    there), and the next block's rows are unshifted."""
    g, frozen, target = _instance(sz)
    up = construct_theorem1_relu(frozen, target, x_max=9.0, margin=margin)
    x = torch.cat([integer_inputs(3, sz.D, 16, 9, g), torch.full((1, sz.D, 16), 9.0, dtype=torch.float64),
                   torch.zeros(1, sz.D, 16, dtype=torch.float64)])
    pres = pre_activations(up.model, x)
    for j in range(sz.L - 1):
        nxt = set(up.layers[j + 1].channels)
        rows = [d for d in range(sz.D) if d not in nxt]
        if rows:
            assert float(pres[j][:, rows].min()) >= margin * (1 - 1e-9)
        assert all(float(up.offsets[j + 1][d]) == 0.0 for d in nxt)


def test_experiment_shape_L_star_1():
    """The experiment's depth ratio (L = 4, L* = 1) at D = 16, H = 8, H* = 4, integer inputs 0..9, N = 100:
    the target's ReLUs are active (a good share of its outputs are 0) and the update is exact."""
    g = torch.Generator().manual_seed(0)
    frozen, target = random_relu_instance(4, 1, 16, 8, 4, generator=g)
    up = construct_theorem1_relu(frozen, target)
    x = integer_inputs(4, 16, 100, 9, g)
    y_t = deep_forward(target, x)
    assert float((y_t == 0).double().mean()) > 0.1
    assert rel_err(deep_forward(up.model, x), y_t) <= EXACT
    assert up.budget.max_channels == 4 and up.budget.max_lora_rank == 4


# ----------------------------------------------------------------------------------------- outside the assumptions
@pytest.mark.parametrize("seed", range(6))
def test_shifts_negative_inputs_and_large_inputs_are_needed(seed):
    """L = 4, L* = 2, D = 3 (two layers per group, so intermediate ReLUs): the linear construction's own
    biases (no shifts), negative inputs, and inputs 10x above x_max each break equality."""
    g = torch.Generator().manual_seed(seed)
    frozen, target = random_relu_instance(4, 2, 3, 2, 1, generator=g)
    up = construct_theorem1_relu(frozen, target, x_max=9.0)
    x = integer_inputs(4, 3, 24, 9, g)
    assert rel_err(deep_forward(up.model, x), deep_forward(target, x)) <= EXACT
    lin = construct_theorem1(replace(frozen, activation="identity"), replace(target, activation="identity"))
    naive = replace(lin.model, activation="relu")
    assert rel_err(deep_forward(naive, x), deep_forward(target, x)) > BREAK_RTOL
    assert rel_err(deep_forward(up.model, -x), deep_forward(target, -x)) > BREAK_RTOL
    assert rel_err(deep_forward(up.model, 10 * x), deep_forward(target, 10 * x)) > BREAK_RTOL


def test_refusals():
    g = torch.Generator().manual_seed(0)
    frozen, target = random_relu_instance(3, 1, 2, 2, 1, generator=g)
    with pytest.raises(ValueError, match="frozen: this construction is for ReLU"):
        construct_theorem1_relu(replace(frozen, activation="identity"), target)
    with pytest.raises(ValueError, match="target: this construction is for ReLU"):
        construct_theorem1_relu(frozen, replace(target, activation="identity"))
    with pytest.raises(ValueError, match="frozen.skip"):
        construct_theorem1_relu(replace(frozen, skip="outside"), target)
    for bad in (-1.0, float("inf"), float("nan"), "9"):
        with pytest.raises(ValueError, match="x_max"):
            construct_theorem1_relu(frozen, target, x_max=bad)
    with pytest.raises(ValueError, match="margin"):
        construct_theorem1_relu(frozen, target, margin=0.0)
    with pytest.raises(ValueError, match="residual"):  # Theorem 1's target has none
        construct_theorem1_relu(frozen, replace(target, layers=tuple(replace(t, u=torch.ones(2, dtype=torch.float64))
                                                                     for t in target.layers)))
    unstable = target.layers[0]
    ssm = DiagonalSSM(torch.full_like(unstable.ssm.A_bar, 1.0), unstable.ssm.B_bar, unstable.ssm.C)
    with pytest.raises(ValueError, match=r"\|a\*\| < 1"):
        construct_theorem1_relu(frozen, target.with_layers([replace(unstable, ssm=ssm)]))
    s6f = random_deep(3, 2, 2, kind="s6", activation="relu", skip="inside", generator=g)
    s6t = random_deep(1, 2, 1, kind="s6", activation="relu", skip="inside", residual=False, generator=g)
    with pytest.raises(ValueError, match="kind 's6'"):
        construct_theorem1_relu(s6f, s6t)


@given(st.integers(0, 2**31 - 1))
@settings(max_examples=10)
def test_kernel_l1_bound_bounds_the_kernel(seed):
    """The ℓ1 bound behind the offsets: Σ_k |K_k| over 400 lags is below Σ_i |c_i b_i| / (1 − |a_i|)."""
    g = generator(seed)
    t = random_deep(1, 3, 3, generator=g).layers[0].ssm
    K = ssm_kernel(t, 400)  # (D, N)
    assert bool((K.abs().sum(-1) <= kernel_l1_bound(t) * (1 + 1e-12)).all())


@settings(max_examples=10, deadline=None)
@given(L=st.integers(2, 4), D=st.integers(2, 4), H=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_relu_experiment_form_conj_pairs_and_target_residual_is_exact(L, D, H, seed):
    """The experiment's own layer and target: conjugate-pair modes, ReLU, skip inside, a target residual u* != 0,
    integer inputs 0..9: exact with target_residual=True (offsets bound ‖K*‖_1 + |u*|, twice the mode sum for pairs)."""
    from theory.deep import DeepLayer, random_s4_ssm

    g = torch.Generator().manual_seed(seed)

    def model(L_, H_):
        base = random_deep(L_, D, H_, activation="relu", skip="inside", residual=True, generator=g)
        return base.with_layers([DeepLayer(random_s4_ssm(D, H_, generator=g, conj_pairs=True), l.W, l.beta, l.u)
                                 for l in base.layers])

    frozen, target = model(L, H), model(1, 1 + seed % H)
    up = construct_theorem1_relu(frozen, target, x_max=9.0, target_residual=True)
    x = integer_inputs(3, D, 19, 9, g)
    assert rel_err(deep_forward(up.model, x), deep_forward(target, x)) <= DEEP_RTOL[torch.float64]
    # offsets for length <= 19 only (the first 19 taps): exact on length 19, never larger than the all-length ones
    short = construct_theorem1_relu(frozen, target, x_max=9.0, target_residual=True, seq_len=19)
    assert rel_err(deep_forward(short.model, x), deep_forward(target, x)) <= DEEP_RTOL[torch.float64]
    assert all(bool((a <= b + 1e-12).all()) for a, b in zip(short.offsets, up.offsets))
    with pytest.raises(ValueError, match="seq_len"):
        construct_theorem1_relu(frozen, target, target_residual=True, seq_len=0)
