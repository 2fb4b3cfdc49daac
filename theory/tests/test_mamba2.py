"""theory.mamba2: Lemma 2 for a scalar-A LTI Mamba-II head. Kernel == recurrence == theory.ssm's S4 kernel with
N repeated eigenvalues; the construction reproduces the target and its count equals an exhaustive search over
parameter subsets (LM oracle); planted cases give the counts the minimality argument predicts; eq. (5) over-counts;
SDT's state budget (LTI: one state; selective: ⌈(N+N*)/2⌉ by SVD, checked against a gradient-free oracle);
bad input refused."""

import itertools
import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from theory.lemma2 import paper_formula_count
from theory.mamba2 import (KINDS, ScalarHead, as_s4_channel, head_kernel, head_recurrence, minimal_update,
                           minimal_update_bruteforce, planted_pair, sdt_lti_budget, selective_state_budget)
from theory.ssm import DiagonalSSM, ssm_kernel
from theory.tests.strategies import generator, seeds
from theory.tolerances import BREAK_RTOL, RTOL, rel_err

F64 = torch.float64
# what the minimality argument predicts per planted kind, with the target's D kept or not: [D != D*] + SSM part
SSM_COUNT = {"generic": 2, "same_decay": 1, "same_gain": 1, "delta_coincidence": 1, "zero_target_gain": 1,
             "zero_B": 2, "zero_BC": 3, "same_D": 2, "identical": 0}


@given(seeds(), st.integers(1, 4), st.integers(1, 15))
def test_kernel_equals_recurrence_and_s4_with_repeated_eigenvalues(seed, N, L):
    f, _ = planted_pair(N, 1, "generic", generator(seed))
    x = torch.randn(3, L, dtype=F64, generator=generator(seed + 1))
    K = head_kernel(f, L)
    conv = torch.stack([sum(K[k] * x[:, t - k] for k in range(t + 1)) for t in range(L)], dim=1)
    assert rel_err(head_recurrence(f, x), conv) < RTOL[F64]
    A_bar, B_bar, C = as_s4_channel(f)  # another implementation: the S4 kernel Σ_i c_i b_i a_i^k
    K_s4 = ssm_kernel(DiagonalSSM(A_bar[None], B_bar[None], C[None]), L)[0]
    K_s4[0] += f.D
    assert rel_err(K_s4, K) < RTOL[F64]


@given(seeds(), st.sampled_from(KINDS), st.integers(1, 3), st.integers(1, 3))
def test_update_reproduces_target_with_the_predicted_count(seed, kind, N, N_star):
    f, t = planted_pair(N, N if kind in ("identical", "delta_coincidence") else N_star, kind, generator(seed))
    upd = minimal_update(f, t)
    L = 10
    x = torch.randn(2, L, dtype=F64, generator=generator(seed + 7))
    assert rel_err(head_kernel(upd.head, L), head_kernel(t, L)) < RTOL[F64]
    assert rel_err(head_recurrence(upd.head, x), head_recurrence(t, x)) < RTOL[F64]
    expected = SSM_COUNT[kind] + (kind not in ("same_D", "identical"))
    assert upd.num_changed == expected == len(upd.why)


@settings(max_examples=8)
@given(seeds(), st.sampled_from(KINDS), st.integers(1, 2))
def test_update_count_is_minimal(seed, kind, N):
    """Oracle: LM over every parameter subset of each size (A_log, Δ, D, B[n], C[n]) finds no smaller one."""
    f, t = planted_pair(N, N, kind, generator(seed))
    upd = minimal_update(f, t)
    assert minimal_update_bruteforce(f, t, max_size=upd.num_changed, seed=seed) == upd.num_changed


def test_negative_check_a_wrong_change_misses_the_target():
    """Dropping any one change of the construction breaks equality (the checks above can fail)."""
    f, t = planted_pair(2, 2, "generic", generator(5))
    upd = minimal_update(f, t)
    assert upd.changed == ("D", "A_log", "C[0]") or upd.changed[:2] == ("D", "A_log")
    for drop in ("D", "A_log"):
        h = replace(upd.head, **{drop: getattr(f, drop)})
        assert rel_err(head_kernel(h, 8), head_kernel(t, 8)) > BREAK_RTOL
    h = replace(upd.head, C=f.C)
    assert rel_err(head_kernel(h, 8), head_kernel(t, 8)) > BREAK_RTOL


def test_eq5_over_counts_for_a_scalar_A_head():
    """Eq. (5) reads the head as an S4 channel with N equal eigenvalues and charges every state's Ā and gain:
    4 for a generic N = N* = 2 pair with equal D, where one A_log and one C entry do (2)."""
    f, t = planted_pair(2, 2, "same_D", generator(11))
    assert minimal_update(f, t).num_changed == 2
    assert paper_formula_count(*as_s4_channel(f), *as_s4_channel(t)) == 4


@given(seeds(), st.integers(1, 4), st.integers(1, 3))
def test_lti_states_are_interchangeable(seed, N, N_star):
    """SDT needs one state for an LTI head; and any state with B[n] != 0 serves (moving C[n] of another state)."""
    f, t = planted_pair(N, N_star, "generic", generator(seed))
    assert sdt_lti_budget(f, t) == 1
    upd = minimal_update(replace(f, D=t.D), t)
    n = N - 1  # a state other than the construction's choice, when N > 1
    C = upd.head.C.clone()
    C[n] = f.C[n] + (float(upd.head.C @ f.B) - float(f.C @ f.B)) / float(f.B[n])
    C[[m for m in range(N) if m != n]] = f.C[[m for m in range(N) if m != n]]
    assert rel_err(head_kernel(replace(upd.head, C=C), 8), head_kernel(t, 8)) < RTOL[F64]


@settings(max_examples=10)
@given(seeds(), st.integers(1, 4), st.integers(1, 3))
def test_selective_state_budget(seed, N, N_star):
    N_star = min(N_star, N)
    """Generic rows, d_model >= N + N*: ⌈(N+N*)/2⌉ states (capped at N); oracle: the budget's states reach the
    target form by an explicit rank-s factorisation, one state fewer leaves a residual."""
    d = N + N_star + 1
    g = generator(seed)
    W_B, W_C = torch.randn(N, d, generator=g, dtype=F64), torch.randn(N, d, generator=g, dtype=F64)
    M_star = torch.randn(N_star, d, generator=g, dtype=F64).T @ torch.randn(N_star, d, generator=g, dtype=F64)
    s = selective_state_budget(W_B, W_C, M_star)
    assert s == min(N, math.ceil((N + N_star) / 2))
    rest = list(range(s, N))  # generic rows: the first s states serve as well as any
    R = M_star - W_C[rest].T @ W_B[rest]
    U, S, Vh = torch.linalg.svd(R)
    new_C, new_B = (U[:, :s] * S[:s]).T, Vh[:s]  # rows of the s trained states
    M = new_C.T @ new_B + W_C[rest].T @ W_B[rest]
    assert rel_err(M, M_star) < RTOL[F64]
    for fewer in itertools.combinations(range(N), s - 1) if s > 0 else ():  # no s - 1 states do
        rest = [n for n in range(N) if n not in fewer]
        sv = torch.linalg.svdvals(M_star - W_C[rest].T @ W_B[rest])
        assert float(sv[s - 1]) > BREAK_RTOL * float(sv[0])


def test_selective_target_beyond_N_states_is_refused():
    g = generator(2)
    W = torch.randn(1, 5, generator=g, dtype=F64)
    M_star = torch.randn(2, 5, generator=g, dtype=F64).T @ torch.randn(2, 5, generator=g, dtype=F64)
    with pytest.raises(ValueError, match="M_star: rank 2 exceeds"):
        selective_state_budget(W, W, M_star)


def test_bad_input_is_refused():
    B = torch.ones(2, dtype=F64)
    with pytest.raises(ValueError, match="delta: the step"):
        ScalarHead(0.0, -0.1, 0.0, B, B)
    with pytest.raises(ValueError, match="delta: a Mamba-II head is LTI only"):
        ScalarHead(0.0, torch.ones(5), 0.0, B, B)
    with pytest.raises(ValueError, match="A_log: must be finite"):
        ScalarHead(float("nan"), 0.1, 0.0, B, B)
    with pytest.raises(ValueError, match="C"):
        ScalarHead(0.0, 0.1, 0.0, B, torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="max_size"):
        f, t = planted_pair(1, 1, "generic", generator(0))
        minimal_update_bruteforce(f, t, max_size=99)
    with pytest.raises(ValueError, match="M_star"):
        selective_state_budget(torch.ones(2, 3, dtype=F64), torch.ones(2, 3, dtype=F64), torch.ones(4, 4, dtype=F64))
