"""Bad input to the library gives a clear ``ValueError`` naming the argument: DoRA's norm
on a zero row, LoRA/DoRA biases, unsupported dtypes, size guards on O(N·H·D) tensors, unstable |Ā| > 1
over long sequences, and ``python -m theory``'s --instances / --seed bounds; what the mathematics excludes
(GF(p) ranks need a prime p < 2^29 and integer matrices, a Mamba-II head needs a finite nonzero
a = −exp(A_log) and N >= 1, SDT masks take integer indices); the bounds of ``python -m theory.capacity`` and
``python -m theory.nondividing``."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from theory import capacity, exact_rank, nondividing
from theory.__main__ import MAX_INSTANCES, main
from theory.capacity_probe import ProbeConfig
from theory.mamba2 import ScalarHead
from theory.peft import DoRAConfig, DoRALinear, DoRAMatrix, LoRAConfig, LoRALinear, LoRAMatrix, sdt_mask
from theory.proposition1 import prefix_to_initial_state, reachability_matrix
from theory.ssm import DiagonalSSM, discretize_zoh, initial_state_response, ssm_convolution, ssm_kernel, ssm_recurrence

F64 = torch.float64


def _ssm(a=0.5, D=2, H=3, dtype=F64):
    return DiagonalSSM(torch.full((D, H), a, dtype=dtype), torch.ones(D, H, dtype=dtype), torch.ones(D, H, dtype=dtype))


# ------------------------------------------------------------------------------------- DoRA zero row
@pytest.mark.parametrize("detach_norm", [True, False])
def test_dora_zero_row_is_finite(detach_norm):
    W = torch.randn(4, 3, dtype=F64)
    W[1] = 0.0
    b = torch.randn(4, dtype=F64)
    mod = DoRALinear(W, b, DoRAConfig(2, detach_norm=detach_norm))
    x = torch.randn(5, 3, dtype=F64)
    y = mod(x)
    assert bool(torch.isfinite(y).all()) and torch.equal(y[:, 1], b[1].expand(5))  # the zero row stays zero
    with torch.no_grad():
        mod.lora_B.fill_(0.5)
    mod(x).sum().backward()
    for p in (mod.lora_A, mod.lora_B, mod.magnitude):
        assert bool(torch.isfinite(p.grad).all())
    m = DoRAMatrix(W, LoRAConfig(1))
    assert bool(torch.isfinite(m()).all()) and torch.equal(m()[1], torch.zeros(3, dtype=F64))


# ------------------------------------------------------------------------------------------ biases
@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
@pytest.mark.parametrize("bias, needle", [
    (torch.zeros(3, dtype=F64), r"^bias: dimension 0 must be 4"),
    (torch.zeros(4, 1, dtype=F64), r"^bias: expected 1 dimensions"),
    (torch.tensor([0.0, float("nan"), 0.0, 0.0], dtype=F64), r"^bias: must be finite"),
    (torch.zeros(4, dtype=torch.float32), r"^bias: dtype torch.float32 must match"),
    (torch.zeros(4, dtype=torch.complex128), r"^bias: expected a real floating dtype"),
])
def test_lora_and_dora_bias_validated(cls, bias, needle):
    with pytest.raises(ValueError, match=needle):
        cls(torch.randn(4, 3, dtype=F64), bias, LoRAConfig(1))


# ------------------------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ssm_paths_refuse_half_precision(dtype):
    name = str(dtype).replace("torch.", "")
    with pytest.raises(ValueError, match=rf"^A_bar: dtype {name} is not supported here \(supported: float32, float64"):
        _ssm(dtype=dtype)
    A = torch.full((2, 3), -1.0, dtype=dtype)
    with pytest.raises(ValueError, match=rf"^A: dtype {name} is not supported"):
        discretize_zoh(A, A, torch.ones(2, dtype=dtype))
    with pytest.raises(ValueError, match=rf"^A_bar: dtype {name}"):
        prefix_to_initial_state(A, A, torch.zeros(2, 4, dtype=dtype))
    with pytest.raises(ValueError, match=rf"^x: dtype {name}"):
        ssm_recurrence(_ssm(), torch.zeros(1, 2, 5, dtype=dtype))


def test_peft_accepts_half_precision_weights():
    """LoRA is matmuls only: float16/bfloat16 weights are supported (stated in theory.peft)."""
    for dtype in (torch.float16, torch.bfloat16):
        lin = LoRALinear(torch.randn(4, 3).to(dtype), None, LoRAConfig(1))
        assert lin(torch.randn(2, 3).to(dtype)).dtype == dtype


# ---------------------------------------------------------------------------------------- size guard
def test_size_guards_name_the_argument(monkeypatch):
    monkeypatch.delenv("THEORY_MAX_BYTES", raising=False)
    big = _ssm(D=64, H=200, dtype=torch.complex128)  # (64, 200, 10^7) complex powers: 1.9 TiB
    with pytest.raises(ValueError, match=r"^N: the powers .* would allocate about 1.86 TiB .* above the limit of 4 GiB"):
        ssm_kernel(big, 10**7)
    with pytest.raises(ValueError, match=r"^N: "):
        initial_state_response(big, torch.zeros(64, 200, dtype=torch.complex128), 10**7)
    prefix = torch.zeros(64, 1, dtype=F64).expand(64, 10**6)  # a view: nothing allocated yet
    with pytest.raises(ValueError, match=r"^prefix: .* \(3 live copies\) would allocate"):
        prefix_to_initial_state(big.A_bar, big.B_bar, prefix)
    huge = torch.zeros(1, 1, dtype=F64).expand(200_000, 200_000)  # 320 GB once copied
    with pytest.raises(ValueError, match=r"^weight: a copy of the \(200000, 200000\) weight"):
        LoRALinear(huge, None, LoRAConfig(2))
    with pytest.raises(ValueError, match=r"^weight: "):
        DoRALinear(huge, None, LoRAConfig(2))
    with pytest.raises(ValueError, match=r"^base: "):
        LoRAMatrix(huge, LoRAConfig(2))


def test_size_limit_overridable_by_argument_and_environment(monkeypatch):
    ssm = _ssm()
    x = torch.zeros(1, 2, 100, dtype=F64)
    assert ssm_kernel(ssm, 100).shape == (2, 100)  # 4.8 kB, under the default
    with pytest.raises(ValueError, match=r"^N: .*above the limit of 1000 B"):
        ssm_kernel(ssm, 100, max_bytes=1000)
    monkeypatch.setenv("THEORY_MAX_BYTES", "1000")
    with pytest.raises(ValueError, match=r"THEORY_MAX_BYTES"):
        ssm_convolution(ssm, x)
    with pytest.raises(ValueError, match=r"^M: "):
        reachability_matrix(ssm.A_bar, ssm.B_bar, 100)
    assert ssm_kernel(ssm, 100, max_bytes=10**6).shape == (2, 100)  # the argument wins over the environment
    monkeypatch.setenv("THEORY_MAX_BYTES", "lots")
    with pytest.raises(ValueError, match=r"^THEORY_MAX_BYTES: expected a number of bytes"):
        ssm_kernel(ssm, 10)
    monkeypatch.delenv("THEORY_MAX_BYTES")
    with pytest.raises(ValueError, match=r"^max_bytes: must be a positive finite number"):
        ssm_kernel(ssm, 10, max_bytes=-1)


# ------------------------------------------------------------------------------- unstable |Ā| > 1
def test_unstable_abar_that_would_overflow_is_refused():
    unstable = _ssm(a=1.5)  # 1.5^1750 ≈ 1e308: float64's limit
    with pytest.raises(ValueError, match=r"^A_bar: unstable, max \|Ā\| = 1.5 > 1.*overflows float64.*below 1751 steps"):
        ssm_kernel(unstable, 2000)
    with pytest.raises(ValueError, match=r"^A_bar: unstable"):
        prefix_to_initial_state(unstable.A_bar, unstable.B_bar, torch.zeros(2, 2000, dtype=F64))
    with pytest.raises(ValueError, match=r"^y: overflowed to inf/NaN from finite inputs; max \|Ā\| = 1.5 >= 1"):
        ssm_recurrence(unstable, torch.ones(1, 2, 2000, dtype=F64))
    assert bool(torch.isfinite(ssm_kernel(unstable, 1000)).all())  # 1.5^999 ≈ 1e176: large, but no overflow
    assert bool(torch.isfinite(ssm_recurrence(_ssm(a=0.9), torch.ones(1, 2, 5000, dtype=F64))).all())


# ------------------------------------------------------------------------------- python -m theory
@pytest.mark.parametrize("argv, needle", [
    (["--instances", "100000000"], f"--instances: must be in [1, {MAX_INSTANCES}]"),
    (["--instances", "0"], "--instances: must be in"),
    (["--seed", str(2**64)], "--seed: must be in [0, 2**63 - 1]"),
    (["--seed", "-1"], "--seed: must be in"),
    (["--seed", "2**64"], "argument --seed: invalid int value"),
])
def test_cli_bad_options_are_one_line_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


# ------------------------------------------------------------- what the mathematics excludes
EYE = np.eye(3, dtype=np.int64)
CFG = ProbeConfig(4, 2, 1, 2, 1, 1)


def _head(**kw):
    args = dict(A_log=0.0, delta=1.0, D=0.0, B=torch.ones(2, dtype=F64), C=torch.ones(2, dtype=F64))
    return ScalarHead(**{**args, **kw})


# (id, call, exception type, the message starts with)
LIBRARY_CASES = [
    ("rank_mod_p composite p", lambda: exact_rank.rank_mod_p(EYE, 15), ValueError, "p: must be a prime"),
    ("rank_mod_p p = 1", lambda: exact_rank.rank_mod_p(EYE, 1), ValueError, "p: must be a prime"),
    ("rank_mod_p p >= 2^29", lambda: exact_rank.rank_mod_p(EYE, 2**31 - 1), ValueError, "p: must be below 2^29"),
    ("rank_mod_p p overflows int64", lambda: exact_rank.rank_mod_p(EYE, 2**61 - 1), ValueError, "p: must be below"),
    ("rank_mod_p float p", lambda: exact_rank.rank_mod_p(EYE, 7.0), ValueError, "p: expected an int"),
    ("rank_mod_p float matrix", lambda: exact_rank.rank_mod_p(np.eye(3), 7), TypeError, "M: expected an integer"),
    ("rank_mod_p 3-D", lambda: exact_rank.rank_mod_p(np.zeros((2, 2, 2), dtype=np.int64), 7), ValueError, "M: "),
    ("exact_row composite p", lambda: exact_rank.exact_row(CFG, 0, 15), ValueError, "p: must be a prime"),
    ("exact_row p = 1", lambda: exact_rank.exact_row(CFG, 0, 1), ValueError, "p: must be a prime"),
    ("exact_row p >= 2^29", lambda: exact_rank.exact_row(CFG, 0, 2**61 - 1), ValueError, "p: must be below"),
    ("exact_row p too small for K points", lambda: exact_rank.exact_row(CFG, 0, 7), ValueError, "p: 7 leaves 4"),
    ("exact_row negative seed", lambda: exact_rank.exact_row(CFG, -1), ValueError, "seed: must be >= 0"),
    ("ScalarHead A_log=800", lambda: _head(A_log=800.0), ValueError, "A_log: exp(A_log) over/underflows"),
    ("ScalarHead A_log=-800", lambda: _head(A_log=-800.0), ValueError, "A_log: exp(A_log) over/underflows"),
    ("ScalarHead delta*a overflows", lambda: _head(A_log=700.0, delta=1e300), ValueError, "delta: Δ a"),
    ("ScalarHead N=0", lambda: _head(B=torch.ones(0, dtype=F64), C=torch.ones(0, dtype=F64)), ValueError,
     "B, C: a head needs N >= 1"),
    ("sdt_mask channels=[1.9]", lambda: sdt_mask(4, 3, [1.9], [0]), ValueError, "channels: expected an int"),
    ("sdt_mask states=[0.5]", lambda: sdt_mask(4, 3, [1], [0.5]), ValueError, "states: expected an int"),
    ("sdt_mask prune_channels=[2.0]", lambda: sdt_mask(4, 3, [1], [0], prune_channels=[2.0]), ValueError,
     "prune_channels: expected an int"),
]


@pytest.mark.parametrize("call, exc, needle", [c[1:] for c in LIBRARY_CASES], ids=[c[0] for c in LIBRARY_CASES])
def test_library_refuses_what_the_mathematics_excludes(call, exc, needle):
    with pytest.raises(exc) as e:
        call()
    assert str(e.value).startswith(needle), str(e.value)


def test_the_refusals_leave_the_valid_inputs_alone():
    assert exact_rank.rank_mod_p([[2**70, 1], [0, 1]], 5) == 2  # Python ints beyond int64: reduced exactly
    assert exact_rank.rank_mod_p(np.array([[1, 2], [2, 4]], dtype=np.uint64), 7) == 1
    assert exact_rank.rank_mod_p(EYE, 2) == 3 and exact_rank.check_prime(np.int64(exact_rank.P_DEFAULT))
    assert _head(A_log=700.0).a < 0 and _head(A_log=-700.0).a < 0
    roles = sdt_mask(4, 3, [np.int64(1), torch.tensor(2)], [0]).roles
    assert roles[1, 0] == roles[2, 0] != roles[0, 0]


# ------------------------------------------------- python -m theory.capacity / theory.nondividing
def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


CAP = ["--quick", "--out", "{tmp}/c.json", "--figure", "{tmp}/c.png"]
CLI_CASES = [
    (capacity.main, CAP + ["--seed", "-1"], "--seed: must be in [0, 2**63 - 1]"),
    (capacity.main, CAP + ["--seed", str(2**63)], "--seed: must be in [0, 2**63 - 1]"),
    (capacity.main, CAP + ["--seed", str(2**64 + 5)], "--seed: must be in"),
    (nondividing.main, ["--targets", "100000000"], f"--targets: must be in [1, {nondividing.MAX_TARGETS}]"),
    (nondividing.main, ["--targets", "0"], "--targets: must be in"),
    (nondividing.main, ["--tries", "0"], "--tries: must be in"),
    (nondividing.main, ["--tries", "100000"], f"--tries: must be in [1, {nondividing.MAX_TRIES}]"),
    (nondividing.main, ["--first", "-1"], "--first: must be in"),
    (nondividing.main, ["--out", "{tmp}"], "--out: {tmp} is a folder"),
    (nondividing.main, ["--out", "{tmp}/a_file/x.jsonl"], "--out: cannot write in"),
]


@pytest.mark.parametrize("main_fn, argv, needle", CLI_CASES,
                         ids=[f"{m.__module__}:{' '.join(a[-2:])}" for m, a, _ in CLI_CASES])
def test_theory_commands_bad_options_exit_2_and_touch_nothing(tmp_path, capsys, main_fn, argv, needle):
    (tmp_path / "a_file").write_text("not a folder")
    argv = [a.format(tmp=tmp_path) for a in argv]
    before = _digest(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main_fn(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert needle.format(tmp=tmp_path) in err and "Traceback" not in err, err
    assert _digest(tmp_path) == before
