"""Exact Jacobian ranks over GF(p): the elimination agrees with sympy's over GF(p); the exact budget and
target ranks agree with the float64 probe where its gap is clean; the rows without a clean gap are
exactly those the report settles; refusals."""

import json
from pathlib import Path

import numpy as np
import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st
from sympy.polys.domains import GF
from sympy.polys.matrices import DomainMatrix

from theory import capacity, exact_rank
from theory.capacity_probe import ProbeConfig, probe
from theory.layout import free_dim_formula

COMMITTED = Path(__file__).resolve().parents[2] / "figures" / "theorem1_capacity.json"


def test_the_prime():
    assert sympy.isprime(exact_rank.P_DEFAULT) and exact_rank.P_DEFAULT < 2**29
    assert sympy.nextprime(exact_rank.P_DEFAULT) > 2**29  # the largest below 2^29


@given(st.integers(1, 7), st.integers(1, 9), st.integers(0, 7), st.integers(0, 2**31 - 1), st.booleans())
@settings(max_examples=20)
def test_rank_mod_p_matches_sympy(m, n, k, seed, small_p):
    """Planted rank k = B C, entries in [−5, 5]; oracle: sympy's DomainMatrix rank over GF(p). With
    p = 7, a rank drop mod p (which the rational rank does not see) happens and must be matched."""
    p = 7 if small_p else exact_rank.P_DEFAULT
    rng = np.random.default_rng(seed)
    M = rng.integers(-5, 6, (m, k)) @ rng.integers(-5, 6, (k, n)) if k else np.zeros((m, n), dtype=np.int64)
    oracle = DomainMatrix.from_Matrix(sympy.Matrix(M.tolist())).convert_to(GF(p)).rank()
    assert exact_rank.rank_mod_p(M, p) == oracle


@pytest.mark.parametrize("cfg", [ProbeConfig(4, 2, 1, 2, 1, 1), ProbeConfig(4, 4, 2, 2, 1, 2),
                                 ProbeConfig(3, 3, 2, 2, 1, 1)])
def test_exact_ranks_agree_with_float_where_the_gap_is_clean(cfg):
    """Two implementations of the same map (torch float64 + SVD; integers mod p + elimination)."""
    row = probe(cfg, 0)
    assert row.budget_gap > 1e4 and row.target_gap > 1e4
    ex = exact_rank.exact_row(cfg, seed=3)
    assert ex.budget_rank_p == row.budget_rank and ex.target_rank_p == row.target_dim == ex.target_dim


def test_undecided_rows_are_the_committed_rows_without_a_gap():
    rows = json.loads(COMMITTED.read_text())["rows"]
    small = {(r["D"], r["L"], r["L_star"], r["rank"]) for r in rows
             if r["skip"] == "inside" and r["budget_gap"] < capacity.GAP_DECIDED}
    assert small == set(capacity.UNDECIDED_ROWS)


def test_small_gap_row_settled():
    """D = 5, L = 5, L* = 2, r = 1 (float gap 1.9): the exact rank lies between the target dimension and
    the parameter count, so the Jacobian test does not exclude it; its verdict is the zero block's."""
    cfg = ProbeConfig(5, 5, 2, 2, 1, 1)
    ex = exact_rank.exact_row(cfg)
    assert ex.target_dim <= ex.budget_rank_p <= free_dim_formula(5, 5, 2, 1, 1)
    assert ex.jacobian_excludes is False
    assert probe(cfg, 0).verdict == "insufficient (zero block)"


def test_refusals():
    with pytest.raises(ValueError, match="cfg.D"):
        exact_rank.budget_jacobian_mod_p(ProbeConfig(13, 2, 1, 2, 1, 1))
    with pytest.raises(ValueError, match="cfg.skip"):
        exact_rank.budget_jacobian_mod_p(ProbeConfig(2, 2, 1, 2, 1, 2, "outside"))
