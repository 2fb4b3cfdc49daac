"""Numpy-friendly inputs (theory._validate): array-likes become tensors, numpy integers are ints, and
wrong shapes or values still fail with a message naming the argument."""

import numpy as np
import pytest
import torch

from theory._validate import as_tensor, check_int, check_tensor
from theory.lemma1 import align_input_projection, alignment_residual
from theory.lemma2 import minimal_update
from theory.peft import LoRAConfig, sdt_budget_mask
from theory.proposition1 import prefix_to_initial_state, reachability_matrix, reachable_dimension
from theory.ssm import DiagonalSSM, discretize_zoh, ssm_kernel
from theory.tolerances import RTOL, rel_err

F64 = torch.float64


def test_array_likes_become_tensors_float64_unless_numpy_says_otherwise():
    assert as_tensor("x", [[1, 2], [3, 4]]).dtype == F64  # Python ints: float64
    assert as_tensor("x", np.arange(3)).dtype == F64  # integer array: float64
    assert as_tensor("x", np.ones(2, dtype=np.float32)).dtype == torch.float32  # numpy's own float dtype kept
    assert as_tensor("x", [1 + 2j]).dtype == torch.complex128
    assert as_tensor("x", np.ones(2), dtype=torch.float32).dtype == torch.float32  # an explicit dtype wins
    t = torch.ones(2)
    assert as_tensor("x", t) is t
    for bad in ("abc", [[1, 2], [3]], {"a": 1}):
        with pytest.raises(ValueError, match="x: expected a torch.Tensor or an array-like of numbers"):
            check_tensor("x", bad)


def test_numpy_integers_are_ints_and_bad_ones_are_refused():
    v = check_int("M", np.int64(3), lo=1)
    assert v == 3 and type(v) is int
    assert check_int("M", np.uint8(2)) == 2
    for bad in (3.0, np.float64(3), True, np.bool_(True), "3"):
        with pytest.raises(ValueError, match="M: expected an int"):
            check_int("M", bad)
    with pytest.raises(ValueError, match="M: must be >= 1"):
        check_int("M", np.int32(0), lo=1)


def _pair(D=2, H=3, seed=0):
    g = np.random.default_rng(seed)
    return g.uniform(-0.9, 0.9, (D, H)), g.normal(size=(D, H))


def test_proposition1_accepts_numpy_arrays_and_integers():
    A_bar, B_bar = _pair()
    G = reachability_matrix(A_bar, B_bar, np.int64(4))
    assert torch.equal(G, reachability_matrix(torch.from_numpy(A_bar), torch.from_numpy(B_bar), 4))
    prefix = np.random.default_rng(1).normal(size=(2, 4))
    h = prefix_to_initial_state(A_bar, B_bar, prefix)
    want = prefix_to_initial_state(torch.from_numpy(A_bar), torch.from_numpy(B_bar), torch.from_numpy(prefix))
    assert h.dtype == F64 and torch.equal(h, want)
    assert reachable_dimension(A_bar, B_bar, np.int32(2)).tolist() == [2, 2]
    with pytest.raises(ValueError, match="B_bar: dimension 1 is H = 3 elsewhere"):
        reachability_matrix(A_bar, np.ones((2, 2)), 3)
    with pytest.raises(ValueError, match="M: must be >= 1"):
        reachability_matrix(A_bar, B_bar, np.int64(0))


def test_ssm_core_accepts_numpy():
    A = -np.linspace(0.5, 2.0, 6).reshape(2, 3)
    A_bar, B_bar = discretize_zoh(A, np.ones((2, 3)), np.array([0.1, 0.2]))
    ssm = DiagonalSSM(A_bar.numpy(), B_bar.numpy(), np.ones((2, 3)))
    assert isinstance(ssm.A_bar, torch.Tensor) and ssm.dtype == F64
    assert ssm_kernel(ssm, np.int64(5)).shape == (2, 5)
    with pytest.raises(ValueError, match="delta: every entry must be > 0"):
        discretize_zoh(A, np.ones((2, 3)), np.array([0.1, -0.2]))


def test_lemma1_lemma2_and_peft_accept_numpy():
    g = np.random.default_rng(0)
    H, R, D = 1, 1, 4
    W_B, W_C, W_dt = g.normal(size=(H, D)), g.normal(size=(H, D)), g.normal(size=(R, D))
    W_B2, W_C2, W_dt2, W_in = g.normal(size=(H, D)), g.normal(size=(H, D)), g.normal(size=(R, D)), g.normal(size=(D, D))
    W_hat = align_input_projection(W_B, W_C, W_dt, W_B2, W_C2, W_dt2, W_in)
    M0 = torch.from_numpy(np.vstack([W_dt, W_B, W_C]))
    M_star = torch.from_numpy(np.vstack([W_dt2, W_B2, W_C2]) @ W_in)
    assert rel_err(M0 @ W_hat, M_star) < RTOL[F64]
    assert alignment_residual(W_B, W_C, W_dt, W_B2, W_C2, W_dt2, W_in) < RTOL[F64]
    up = minimal_update(np.array([0.5, 0.2]), np.ones(2), np.ones(2), np.array([0.5]), np.ones(1), np.ones(1))
    assert up.num_changed == 1  # keep state 0 (a* matches), zero state 1
    with pytest.raises(ValueError, match="a_star: expected 1 dimensions"):
        minimal_update(np.ones(2), np.ones(2), np.ones(2), np.ones((1, 1)), np.ones(1), np.ones(1))
    assert sdt_budget_mask(np.int64(4), np.int64(3), np.int64(2), np.int64(1)).count() == 2
    assert LoRAConfig(np.int64(2)).rank == 2 and type(LoRAConfig(np.int64(2)).rank) is int
