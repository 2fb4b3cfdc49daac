"""The Theorem 1 training study: the construction in the experiment's own parameterisation (exact in float64 for
the experiment's frozen/target pairs), its trainable set, the exact start, the selection check, the linear fast
model, and the study's sweep through the runner (resume, records, summary)."""

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from synthetic.results import ResultsFile, run_records
from synthetic.s4 import model as sm
from synthetic.s4.config import Config
from synthetic.s4.oracle import (layout, oracle_budget, oracle_masks, pruned_base, selection_agreement, start_at,
                                 theorem1_oracle)
from synthetic.s4.train import Trainer
from theory.tolerances import DEEP_RTOL, RTOL, rel_err

F64 = torch.float64
EXACT = DEEP_RTOL[F64]


LINEAR = sm.FastPath(linear=True)  # the fast model's layer options in the theorem's linear setting


def _pair(D, H, H_star, L, N, seed, activation):
    cfg = Config(d_model=D, frozen_d_state=H, target_d_state=H_star, frozen_layers=L, seq_len=N, activation=activation)
    tr = Trainer(cfg, torch.device("cpu"))
    frozen, target = tr.models(seed)
    return frozen, [{k: v[0] for k, v in p.items()} for p in target]


def _fast64(layers, x, N, path=sm.DEFAULT_PATH):
    return sm.deep_forward([{k: v.to(F64)[None] for k, v in p.items()} for p in layers], x, sm.toeplitz_index(N, "cpu"),
                           path)


@settings(max_examples=8, deadline=None)
@given(D=st.integers(2, 8), Hc=st.integers(1, 3), L=st.integers(2, 3), seed=st.integers(0, 1000),
       activation=st.sampled_from(["identity", "relu"]))
def test_oracle_is_exact_for_the_experiments_pairs(D, Hc, L, seed, activation):
    """The experiment's own frozen/target pair (ZOH S4D pairs, target with a skip), converted back from the theory's
    construction, equals the target on integer inputs 0..9 in the fast model's float64 forward."""
    N = 24
    frozen, target = _pair(D, 2 * Hc, 2 * max(1, Hc - 1), L, N, seed, activation)
    path = sm.FastPath(linear=activation == "identity")
    o = theorem1_oracle(frozen, target, N, activation)
    x = torch.randint(0, 10, (D, N, 5), generator=torch.Generator().manual_seed(seed)).to(F64)  # (D, N, B)
    y = _fast64(target, x, N, path)
    assert rel_err(_fast64(o.layers, x, N, path), y) <= EXACT
    assert o.mse64 <= EXACT * float((y ** 2).mean())
    # kept frozen where SDT keeps them: Δ and B; changed only in the construction's trainable set
    for f, p, t in zip(frozen, o.layers, o.tuned):
        for k in ("log_dt", "B_re", "B_im"):
            assert torch.equal(p[k], f[k].to(F64))
        for k in ("log_A_re", "A_im"):
            assert torch.equal(p[k][~t], f[k].to(F64)[~t])
        assert bool((p["C_re"][~t] == 0).all() and (p["C_im"][~t] == 0).all())  # untuned modes pruned


def test_oracle_refuses_what_the_construction_excludes():
    frozen, target = _pair(4, 4, 2, 2, 16, 0, "relu")
    with pytest.raises(ValueError, match="activation"):
        theorem1_oracle(frozen, target, 16, "tanh")
    with pytest.raises(ValueError, match="L\\* < L"):  # as deep as the frozen stack
        theorem1_oracle(frozen, frozen, 16, "identity")


def test_oracle_masks_count_and_exact_start():
    """The trainable set counts what the construction changes (A, C of c·s modes, u, β, LoRA rank c, the last W in
    full); a run put at the exact solution (noise 0) has the exact model as effective parameters; noise moves it."""
    D, Hc, L, N = 8, 2, 2, 20
    frozen, target = _pair(D, 2 * Hc, 2, L, N, 3, "identity")
    o = theorem1_oracle(frozen, target, N, "identity")
    b = oracle_budget(o)
    assert b == {"channels": math.ceil(D / L), "states": 1}
    st_ = sm.RunState.create(pruned_base(frozen, o, b), 1, b["channels"], 1, generator=torch.Generator().manual_seed(0))
    oracle_masks(st_, o, b)
    c, s = b["channels"], b["states"]
    expected = (L * c * s * 4  # Re/Im of A and C per tuned mode
                + L * 2 * D  # u and β
                + (L - 1) * 2 * D * c  # LoRA factors of rank c on every W but the last
                + D * D)  # the last W in full
    assert st_.trainable_count()[0] == expected
    start_at(st_, o, 0.0, torch.Generator().manual_seed(1))
    x = torch.randint(0, 10, (D, N, 3), generator=torch.Generator().manual_seed(2)).to(F64)
    eff = [{k: v.detach()[0] for k, v in p.items()} for p in st_.effective()]
    assert rel_err(_fast64(eff, x, N, LINEAR), _fast64(o.layers, x, N, LINEAR)) <= 1e-6  # float32 storage of the solution
    noisy = sm.RunState.create(pruned_base(frozen, o, b), 1, c, 1, generator=torch.Generator().manual_seed(0))
    oracle_masks(noisy, o, b)
    start_at(noisy, o, 0.1, torch.Generator().manual_seed(1))
    eff_n = [{k: v.detach()[0] for k, v in p.items()} for p in noisy.effective()]
    assert rel_err(_fast64(eff_n, x, N, LINEAR), _fast64(o.layers, x, N, LINEAR)) > 1e-3
    for l, f in enumerate(frozen):  # frozen entries stay bit-identical whatever the start
        m = noisy.mask[l]["log_dt"][0]
        assert not m.any() and torch.equal(eff_n[l]["log_dt"], f["log_dt"])
    small, _ = layout(o, {"channels": 1, "states": 1})  # a smaller budget: the first channel of each block
    assert all(int(t.sum()) == 1 for t in small)


def test_selection_agreement_oracle():
    frozen, target = _pair(6, 4, 2, 2, 12, 0, "identity")
    o = theorem1_oracle(frozen, target, 12, "identity")
    part = [torch.zeros(6, 2, dtype=torch.bool) for _ in range(2)]
    part[0][[4, 5, 0], 0] = True  # any partition with H* modes per channel is a valid layout
    part[1][[1, 2, 3], 1] = True
    a = selection_agreement(part, o)
    assert a["valid_layout"] == 1.0 and a["pairwise_overlap"] == 0.0 and a["covered_channels"] == 1.0
    same = [part[0], part[0]]
    b = selection_agreement(same, o)
    assert b["valid_layout"] == 0.0 and b["pairwise_overlap"] == 1.0 and b["covered_channels"] == 0.5


def test_linear_fast_model_matches_the_theory_twin():
    frozen, _ = _pair(4, 4, 2, 2, 16, 1, "identity")
    x = torch.rand(4, 16, 3, dtype=F64) * 9 - 4  # negative entries too: no ReLU anywhere
    from theory.deep import deep_forward

    ref = deep_forward(sm.to_theory_model([{k: v.to(F64) for k, v in p.items()} for p in frozen], "identity"),
                       x.permute(2, 0, 1))  # (B, D, N)
    assert rel_err(_fast64(frozen, x, 16, LINEAR)[0].permute(2, 0, 1), ref) <= 1e-9
    assert rel_err(_fast64(frozen, x, 16)[0].permute(2, 0, 1), ref) > 1e-3  # the ReLU default differs


TINY = ["--preset", "tiny", "--seeds", "0", "--lr-extend-factor", "0", "--iters", "4", "--long-factor", "2",
        "--noise-levels", "0,0.1", "--device", "cpu"]


@pytest.mark.parametrize("activation", ["identity", "relu"])
def test_study_sweeps_resumes_and_summarises(tmp_path, activation):
    from synthetic.s4.theorem1_study import ARMS, main

    assert main(TINY + ["--activation", activation, "--out", str(tmp_path)]) == 0
    variant = "linear" if activation == "identity" else "relu"
    path = tmp_path / f"theorem1_training_tiny_{variant}.jsonl"
    recs = run_records(ResultsFile(path).load())
    assert {r["arm"] for r in recs} == set(ARMS)
    assert all(r["activation"] == activation and r["experiment"] == "s4_theorem1" for r in recs)
    exact = [r for r in recs if r["arm"] == "Oracle start" and r["budget"]["noise"] == 0.0]
    assert exact and all(r["start_mse"] < 1e-8 for r in exact)  # the exact start, float32 floor
    assert all(r["exact_mse64"] < 1e-20 for r in recs if "exact_mse64" in r)
    alg1 = [r for r in recs if r["arm"].startswith("SDT")]
    assert all(0.0 <= r["selection"]["jaccard"] <= 1.0 for r in alg1)
    assert {r["iters"] for r in recs if r["arm"].endswith(" long")} == {8}
    n = len(recs)
    assert main(TINY + ["--activation", activation, "--out", str(tmp_path)]) == 0  # resume: nothing new
    assert len(run_records(ResultsFile(path).load())) == n
    summary = json.loads((tmp_path / "theorem1_training_tiny.json").read_text())
    assert variant in summary["variants"] and (tmp_path / "theorem1_training_tiny.png").exists()


@pytest.mark.parametrize("argv, match", [
    (["--arms", "SDT"], "--arms"),
    (["--long-factor", "0"], "--long-factor"),
    (["--target-layers", "2"], "L\\* < L"),
    (["--noise-levels", "-0.1"], "--noise-levels"),
    (["--activation", "tanh"], "--activation"),
])
def test_study_rejects_bad_options(argv, match, capsys, tmp_path):
    from synthetic.s4.theorem1_study import main

    with pytest.raises(SystemExit) as e:
        main(TINY + argv + ["--out", str(tmp_path)])
    assert e.value.code == 2
    assert __import__("re").search(match, capsys.readouterr().err)
    assert not list(tmp_path.iterdir())  # nothing written


def test_zero_output_level_is_a_dead_stacks_mse(capsys):
    """``scripts/theorem1_zero_output.py``: the level it prints per seed is the MSE the study's own evaluation gives a
    stack whose every ReLU is off (W = 0, β = -1, u = 0, C = 0: output 0 for every input), on the same batches."""
    import importlib.util
    from pathlib import Path

    from synthetic.s4.theorem1_study import Theorem1Study, parse_config
    path = Path(__file__).resolve().parents[1] / "scripts" / "theorem1_zero_output.py"
    spec = importlib.util.spec_from_file_location("theorem1_zero_output", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = parse_config(["--preset", "tiny", "--activation", "relu", "--no-compile", "--device", "cpu"])
    tr = Theorem1Study(cfg, log=lambda *_: None).make_trainer()
    frozen, target = tr.models(1)
    dead = [{k: (torch.full_like(v, -1.0) if k == "beta" else torch.zeros_like(v) if k in ("W", "u", "C_re", "C_im")
                 else v)[None] for k, v in p.items()} for p in frozen]
    level = tr.evaluate(dead, target, tr.data(1, stream=0), 2)
    assert level > 0 and math.isclose(mod.zero_output_mse(tr, 1, 2), level, rel_tol=RTOL[torch.float32])
    assert mod.main(["--preset", "tiny", "--seeds", "1", "--batches", "2"]) == 0
    assert f"seed 1: zero output {level:.4g}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        mod.main(["--preset", "tiny", "--batches", "0"])
