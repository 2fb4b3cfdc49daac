"""PEFT on Mamba-II blocks (synthetic.mamba2.peft) and the Mamba-II regression (synthetic.mamba2.experiment):
every method starts at the frozen block, exact trainable counts (formula == optimizer scalars == entries with a
gradient), frozen entries bit-identical after AdamW with weight decay, Algorithm 1's scores on planted changes,
bad configs refused, and the tiny preset end to end through the runner (resume, --dry-run, --plot-only)."""

import pytest
import torch

from synthetic.results import ResultsFile
from synthetic.mamba2 import experiment as m2x
from synthetic.mamba2.peft import (METHODS, Mamba2PeftConfig, PeftMamba2Block, get_backend, head_change_scores,
                                   in_proj_rows, select_heads_states, state_change_scores, trainable_count)
from synthetic.mamba2.ref import Mamba2Ref, block_weights, mamba2_forward
from theory.tolerances import RTOL, rel_err

F64 = torch.float64
REF = get_backend("reference")
# d_model 8, expand 2 -> D = 16, headdim 4 -> Hh = 4 heads, G = 2 groups of N = 3 states
DM, D, HH, G, N = 8, 16, 4, 2, 3
BUDGET = {"rank": 2, "heads": 2, "states": 2}
HEADS, STATES = [0, 1], [[0, 2], [1, 2]]  # both selected heads in group 0: group 1's rows stay frozen


def _weights(seed=0):
    torch.manual_seed(seed)
    return block_weights(Mamba2Ref(DM, d_state=N, headdim=4, ngroups=G, dtype=F64))


def _block(method, w):
    cfg = METHODS[method](BUDGET)
    kw = {"heads": HEADS, "states": STATES} if cfg.sdt_heads else {}
    return PeftMamba2Block(w, ngroups=G, config=cfg, generator=torch.Generator().manual_seed(1), **kw).double()


def _lora(out, inp, r=2):
    return min(r, out, inp) * (out + inp)


D_IN = 2 * D + 2 * G * N + HH
EXPECTED = {  # the count each method trains, written from the layout (one block)
    "Frozen": 0,
    "LoRA (Proj)": _lora(D_IN, DM) + _lora(DM, D),
    "LoRA (SSM+Proj)": _lora(2 * D, DM) + _lora(2 * G * N + HH, DM) + _lora(DM, D) + HH,
    "SDT": 2 + 2 * 2 * DM * 1,  # 2 heads' A_log + (B, C) rows of 2 states in the one group holding them
    "SDT + LoRA": 2 + 2 * 2 * DM + _lora(2 * D, DM) + _lora(DM, D),
    "DoRA (Proj)": _lora(D_IN, DM) + _lora(DM, D) + D_IN + DM,
    "Full": D_IN * DM + (D + 2 * G * N) * (4 + 1) + 3 * HH + D + DM * D,  # conv: 4 taps + bias per channel
}


@pytest.mark.parametrize("method", list(METHODS))
def test_starts_at_the_frozen_block_and_counts_exactly(method):
    w = _weights()
    blk = _block(method, w)
    x = torch.randn(2, 7, DM, dtype=F64)
    assert rel_err(blk(x, REF), mamba2_forward(w, x, ngroups=G)) < RTOL[F64]
    assert trainable_count(blk) == EXPECTED[method]
    if not EXPECTED[method]:
        assert not any(p.requires_grad for p in blk.parameters())
        return
    with torch.no_grad():  # give zero-initialised LoRA factors values, so every trainable entry gets a gradient
        for n, p in blk.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    blk(x, REF).square().sum().backward()
    nonzero = sum(int((p.grad != 0).sum()) for p in blk.parameters() if p.requires_grad and p.grad is not None)
    assert nonzero == EXPECTED[method]


@pytest.mark.parametrize("method", ["SDT", "SDT + LoRA", "LoRA (Proj)", "LoRA (SSM+Proj)", "DoRA (Proj)"])
def test_frozen_entries_bit_identical_after_adamw(method):
    w = _weights()
    blk = _block(method, w)
    opt = torch.optim.AdamW([p for p in blk.parameters() if p.requires_grad], lr=0.05, weight_decay=0.1)
    for i in range(3):
        x = torch.randn(2, 6, DM, dtype=F64, generator=torch.Generator().manual_seed(i))
        opt.zero_grad()
        (blk(x, REF) - 1).square().mean().backward()
        opt.step()
    eff = {k: v.detach() for k, v in blk.effective_weights().items()}
    rows = in_proj_rows(D, G, N, HH)
    for name in ("conv1d.weight", "conv1d.bias", "D", "norm.weight", "dt_bias"):
        assert torch.equal(eff[name], w[name]), name
    W, W0 = eff["in_proj.weight"], w["in_proj.weight"]
    if method.startswith("SDT"):
        changed = torch.zeros(W.shape[0], dtype=torch.bool)
        for g, st in enumerate(STATES[:1]):  # group 0 only: it holds both selected heads
            for n in st:
                changed[rows["BC"][0] + g * N + n] = changed[rows["BC"][0] + (G + g) * N + n] = True
        bc = torch.zeros_like(changed)
        bc[rows["BC"][0]:rows["BC"][1]] = True
        assert torch.equal(W[bc & ~changed], W0[bc & ~changed])  # unselected states' rows
        assert bool((W[changed] != W0[changed]).all(dim=1).all())  # selected rows moved
        assert torch.equal(W[rows["dt"][0]:], W0[rows["dt"][0]:])
        assert torch.equal(eff["A_log"][2:], w["A_log"][2:]) and bool((eff["A_log"][:2] != w["A_log"][:2]).all())
        if method == "SDT":
            assert torch.equal(W[:rows["zx"][1]], W0[:rows["zx"][1]]) and torch.equal(eff["out_proj.weight"],
                                                                                     w["out_proj.weight"])
    if method in ("SDT + LoRA", "LoRA (SSM+Proj)"):
        assert not torch.equal(W[:rows["zx"][1]], W0[:rows["zx"][1]])
    if method == "SDT + LoRA":  # LoRA on the projection rows leaves the SSM rows to SDT
        assert torch.equal(W[rows["dt"][0]:], W0[rows["dt"][0]:])
    if method in ("LoRA (Proj)", "DoRA (Proj)"):
        assert torch.equal(eff["A_log"], w["A_log"])


def test_bad_configs_refused():
    with pytest.raises(ValueError, match="lora: unknown"):
        Mamba2PeftConfig(lora=("x_proj.weight",), lora_rank=1)
    with pytest.raises(ValueError, match="lora_rank"):
        Mamba2PeftConfig(lora=("out_proj.weight",))
    with pytest.raises(ValueError, match="both > 0"):
        Mamba2PeftConfig(sdt_heads=2)
    with pytest.raises(ValueError, match="in_proj.weight: given whole"):
        Mamba2PeftConfig(lora=("in_proj.weight", "in_proj.zx"), lora_rank=1)
    with pytest.raises(ValueError, match="SDT trains A_log"):
        Mamba2PeftConfig(sdt_heads=1, sdt_states=1, full=("A_log",))
    w = _weights()
    with pytest.raises(ValueError, match="heads, states"):
        PeftMamba2Block(w, ngroups=G, config=Mamba2PeftConfig(sdt_heads=2, sdt_states=1), heads=[0], states=[[0], [0]])
    with pytest.raises(ValueError, match="distinct indices"):
        PeftMamba2Block(w, ngroups=G, config=Mamba2PeftConfig(sdt_heads=1, sdt_states=1), heads=[0], states=[[3], [0]])


def test_algorithm1_scores_find_planted_changes():
    """Oracle: a change planted in head 2's A_log and in group 1 state 0's C row is what the scores rank first;
    unchanged weights score exactly 0."""
    w = _weights()
    x = torch.randn(2, 5, DM, dtype=F64)
    assert float(head_change_scores(w, w, x, G).abs().max()) == 0.0
    w2 = {k: v.clone() for k, v in w.items()}
    w2["A_log"][2] += 0.5
    a = in_proj_rows(D, G, N, HH)["BC"][0]
    w2["in_proj.weight"][a + (G + 1) * N + 0] += 1.0
    hs, ss = head_change_scores(w, w2, x, G), state_change_scores(w, w2, G)
    assert int(hs.argmax()) == 2 and float(hs[[0, 1, 3]].abs().max()) == 0.0
    heads, states = select_heads_states(hs, ss, 1, 1)
    assert heads == [2] and states[1] == [0]
    with pytest.raises(ValueError, match="n_states"):
        select_heads_states(hs, ss, 1, N + 1)


def test_tiny_preset_through_the_runner(tmp_path, capsys):
    argv = ["--preset", "tiny", "--out", str(tmp_path), "--lr-extend-factor", "0"]
    assert m2x.main(argv) == 0
    recs = [r for r in ResultsFile(tmp_path / "mamba2_regression_tiny.jsonl").load() if r["kind"] == "run"]
    assert {r["method"] for r in recs} == set(METHODS)
    assert all(r["experiment"] == "mamba2" and r["status"] == "ok" for r in recs)
    frozen = next(r for r in recs if r["method"] == "Frozen")
    assert all(r["best_mse"] <= frozen["best_mse"] * (1 + 1e-9) for r in recs)  # best-of-evals includes step 0
    sdt = next(r for r in recs if r["method"] == "SDT")
    assert len(sdt["sdt_channels"]) == 2 and len(sdt["sdt_states"][0]) == 1  # heads per layer, states per group
    n = len(recs)
    assert m2x.main(argv) == 0  # resume: nothing new
    assert len([r for r in ResultsFile(tmp_path / "mamba2_regression_tiny.jsonl").load()
                if r["kind"] == "run"]) == n
    assert m2x.main(argv + ["--dry-run"]) == 0
    assert "0 base-grid runs to do" in capsys.readouterr().out
    assert m2x.main(argv + ["--plot-only"]) == 0
    assert (tmp_path / "mamba2_mse_vs_params_tiny.png").exists()


@pytest.mark.parametrize("argv, msg", [(["--headdim", "5"], "--headdim"), (["--ngroups", "3"], "--ngroups"),
                                       (["--sdt", "9x1"], "heads must be"), (["--sdt", "2"], "--sdt: expected"),
                                       (["--lora-ranks", "99"], "--lora-ranks")])
def test_bad_options_exit_2(argv, msg, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        m2x.main(["--preset", "tiny", "--out", str(tmp_path)] + argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err
