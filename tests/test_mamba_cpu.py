"""CPU checks of the Mamba experiment: reference block vs. theory.s6 (float64), adapters in the compute
path, SDT masks and counts, Algorithm 1's channel scores, and the reference backend end to end."""

import dataclasses
import json
import math
import subprocess
import sys

import pytest

from synthetic.results import ResultsFile, best_of_grid, run_records
import torch
from hypothesis import given
from hypothesis import strategies as st

from synthetic.mamba import bench as mamba_bench, experiment as mamba_regression
from synthetic.mamba import config as mcfg
from synthetic.mamba.peft import (LORA_TARGETS, METHODS, MambaPeftConfig, PeftMambaBlock, PeftMambaStack,
                                  abar_change_scores, get_backend,
                                  residual_stack, select_channels, trainable_count)
from ssm_peft.layouts import MixerDims
from ssm_peft.selection import official_counts, official_select, sdt_indices
from synthetic.mamba.ref import (PARAM_NAMES, MambaRef, block_weights, mamba_forward, mamba_s6_inputs,
                                 selective_scan_reference)
from theory.s6 import selective_scan
from theory.tolerances import RTOL, rel_err

F64 = torch.float64
REF = get_backend("reference")


def _block(d_model=8, d_state=4, expand=2, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return MambaRef(d_model, d_state=d_state, expand=expand, dtype=dtype)


# ------------------------------------------------------------------------------ reference scan
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 12), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_reference_scan_equals_theory_s6(Bt, D, N, H, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(Bt, D, N, generator=g, dtype=F64)
    delta = torch.rand(Bt, D, N, generator=g, dtype=F64) + 0.01  # positive, as after softplus
    A = -torch.rand(D, H, generator=g, dtype=F64) * 4
    B, C = torch.randn(2, Bt, H, N, generator=g, dtype=F64)
    y, h = selective_scan_reference(u, delta, A, B, C, return_last_state=True)
    y0, h0 = selective_scan(u, delta, A, B, C, return_state=True)
    assert rel_err(y, y0) < RTOL[F64] and rel_err(h, h0) < RTOL[F64]


def test_block_equals_composition_with_theory_s6():
    """The whole block in float64 against steps 1-6 written out around theory.s6.selective_scan."""
    blk = _block(dtype=F64)
    x = torch.randn(2, 11, 8, dtype=F64)
    w = blk.weights()
    xs, z, dt_low, B, C = mamba_s6_inputs(w, x, blk.d_state, blk.dt_rank)
    delta = torch.nn.functional.softplus(torch.einsum("dr,brn->bdn", w["dt_proj.weight"], dt_low)
                                         + w["dt_proj.bias"][None, :, None])
    y = selective_scan(xs, delta, -torch.exp(w["A_log"]), B, C) + w["D"][:, None] * xs
    y = y * torch.nn.functional.silu(z)
    expect = torch.einsum("md,bdn->bnm", w["out_proj.weight"], y)
    assert rel_err(blk(x), expect) < RTOL[F64]


def test_conv_is_causal():
    blk = _block(dtype=F64)
    x = torch.randn(1, 10, 8, dtype=F64)
    x2 = x.clone()
    x2[:, 6:] += 1.0
    assert torch.equal(blk(x)[:, :6], blk(x2)[:, :6])


def test_parameter_layout_matches_mamba_ssm():
    blk = MambaRef(32, d_state=16, expand=2)
    shapes = {k: tuple(v.shape) for k, v in blk.named_parameters()}
    assert set(shapes) == set(PARAM_NAMES)
    D, R = 64, 2  # dt_rank "auto" = ceil(32 / 16)
    assert shapes == {"in_proj.weight": (2 * D, 32), "conv1d.weight": (D, 1, 4), "conv1d.bias": (D,),
                      "x_proj.weight": (R + 32, D), "dt_proj.weight": (D, R), "dt_proj.bias": (D,),
                      "A_log": (D, 16), "D": (D,), "out_proj.weight": (32, D)}
    assert torch.allclose(-torch.exp(blk.A_log[0]), -torch.arange(1.0, 17.0))  # S4D-real init


# ------------------------------------------------------------------------------------- adapters
def _nonzero_lora(module, scale=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.lora_B.copy_(scale * torch.randn(module.lora_B.shape, generator=g, dtype=module.lora_B.dtype))


@pytest.mark.parametrize("target", LORA_TARGETS)
def test_each_lora_target_is_in_the_compute_path(target):
    w = block_weights(_block())
    x = torch.randn(2, 9, 8)
    blk = PeftMambaBlock(w, d_state=4, dt_rank=1, config=MambaPeftConfig(lora=(target,), lora_rank=1))
    base = blk(x, REF).detach()
    lora = blk.lora[target.replace(".", "__")]
    _nonzero_lora(lora)
    out = blk(x, REF)
    assert not torch.allclose(out, base)
    out.square().mean().backward()
    assert lora.lora_A.grad is not None and lora.lora_A.grad.abs().sum() > 0
    assert lora.lora_B.grad is not None and lora.lora_B.grad.abs().sum() > 0


def test_lora_count_and_rank_clamp():
    w = block_weights(_block())  # D 16, R 1, H 4
    blk = PeftMambaBlock(w, d_state=4, dt_rank=1, config=METHODS["LoRA (S6+Proj)"]({"rank": 2}))
    expect = 2 * (32 + 8) + 2 * (8 + 16) + 2 * (9 + 16) + 1 * (16 + 1) + 2 * (16 + 4)  # dt_proj clamped to rank 1
    assert sum(p.numel() for p in blk.parameters() if p.requires_grad) == expect


def test_sdt_count_roles_and_frozen_entries_bit_identical():
    w = block_weights(_block())
    chans = [1, 5, 7]
    blk = PeftMambaBlock(w, d_state=4, dt_rank=1, config=METHODS["SDT"]({"channels": 3}), channels=chans)
    assert sum(p.numel() for p in blk.parameters() if p.requires_grad) == 3 * 3 * 4  # A_log row + W_B, W_C columns
    assert blk.roles["A_log"] == "sdt" and blk.roles["x_proj.weight"] == "sdt" and blk.roles["in_proj.weight"] == "frozen"
    opt = torch.optim.AdamW([p for p in blk.parameters() if p.requires_grad], lr=0.1, weight_decay=0.5)
    for _ in range(3):
        loss = blk(torch.randn(2, 7, 8), REF).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    eff = blk.effective_weights()
    train = torch.zeros(16, dtype=torch.bool)
    train[chans] = True
    assert torch.equal(eff["A_log"][~train], w["A_log"][~train])
    assert torch.equal(eff["x_proj.weight"][:, ~train], w["x_proj.weight"][:, ~train])
    assert torch.equal(eff["x_proj.weight"][:1], w["x_proj.weight"][:1])  # W_dt_down untouched
    assert not torch.equal(eff["A_log"][train], w["A_log"][train])
    assert not torch.equal(eff["x_proj.weight"][1:, train], w["x_proj.weight"][1:, train])
    for k in ("in_proj.weight", "out_proj.weight", "dt_proj.weight", "D", "conv1d.weight"):
        assert torch.equal(eff[k], w[k])


def test_config_rejects_what_it_cannot_do():
    with pytest.raises(ValueError):
        MambaPeftConfig(lora=("conv1d.weight",), lora_rank=1)
    with pytest.raises(ValueError):
        MambaPeftConfig(lora=("in_proj.weight",), lora_rank=0)
    with pytest.raises(ValueError):
        MambaPeftConfig(sdt_channels=2, lora=("A_log",), lora_rank=1)
    w = block_weights(_block())
    with pytest.raises(ValueError):
        PeftMambaBlock(w, d_state=4, dt_rank=1, config=MambaPeftConfig(sdt_channels=2), channels=[0])
    with pytest.raises(ValueError):
        sdt_indices(MixerDims("mamba1", D=4, H=2, R=1), {"channels": [0, 0], "states": [[0], [0]]})
    with pytest.raises(ValueError):  # a state outside [0, H) would silently name the next channel's entry
        sdt_indices(MixerDims("mamba1", D=4, H=2, R=1), {"channels": [0], "states": [[2]]})


def test_frozen_stack_equals_frozen_model():
    blocks = [_block(seed=s) for s in (0, 1)]
    x = torch.randn(2, 9, 8)
    stack = PeftMambaStack([block_weights(b) for b in blocks], d_state=4, dt_rank=1, config=METHODS["Frozen"]({}))
    assert sum(p.numel() for p in stack.parameters() if p.requires_grad) == 0
    torch.testing.assert_close(stack(x, REF), residual_stack(blocks, x), rtol=0, atol=0)


# -------------------------------------------------------------------------- Algorithm 1 for S6
def test_abar_scores_locate_the_changed_channel():
    w = block_weights(_block())
    x = torch.randn(2, 9, 8)
    assert torch.count_nonzero(abar_change_scores(w, w, x, 4, 1)) == 0
    w2 = dict(w)
    w2["A_log"] = w["A_log"].clone()
    w2["A_log"][3] += 0.5  # Δ does not depend on A_log, so only channel 3's Ā moves
    s = abar_change_scores(w, w2, x, 4, 1)
    assert s[3] > 0 and torch.count_nonzero(s) == 1
    assert select_channels(s, 1) == [3]


def test_select_channels_top_k_and_bounds():
    s = torch.tensor([0.1, 0.5, 0.5, 0.0, 0.9])
    assert select_channels(s, 3) == [1, 2, 4]
    assert select_channels(s, 0) == []
    with pytest.raises(ValueError):
        select_channels(s, 6)


# ----------------------------------------------------------------------------- end to end (CPU)
def test_regression_reference_backend_end_to_end(tmp_path):
    argv = ["--preset", "tiny", "--backend", "reference", "--out", str(tmp_path)]
    mamba_regression.main(argv)
    recs = run_records(ResultsFile(tmp_path / "mamba_regression_tiny.jsonl").load())
    methods = {r["method"] for r in recs}
    assert methods == set(mcfg.METHOD_ORDER)
    for r in recs:
        for k in ("method", "trainable_pct", "best_mse", "final_mse", "lr", "seed", "status", "config", "budget",
                  "loss_curve", "trainable", "device", "commit", "wall_s", "backend", "model_seed",
                  "experiment", "preset", "kind"):
            assert k in r, k
        assert r["backend"] == "reference" and r["status"] == "ok" and math.isfinite(r["best_mse"])
    # the tiny grid is one lr (1e-2): every trained point is at both edges, so the sweep adds 1e-2/4 and 1e-2×4
    assert {r["lr"] for r in recs if r["lr_source"] == "extension"} >= {2.5e-3, 4e-2}
    rows = best_of_grid(recs, group_keys=("method", "budget_label"))
    assert all(r["lr_at_edge"] is None or r["lr_bound_reached"] for r in rows)  # grown until interior or bound
    full = next(r for r in recs if r["method"] == "Full")
    assert full["trainable_pct"] == pytest.approx(100.0)
    sdt = next(r for r in recs if r["method"] == "SDT")
    assert sdt["trainable"] == 2 * 4 * 3 * 4  # 2 layers x 4 channels x 3H, H = 4
    for name in ("mamba_mse_vs_params_tiny.png", "mamba_loss_curves_tiny.png"):
        assert (tmp_path / name).stat().st_size > 0
    mamba_regression.main(argv)  # resume: every run is done, nothing is appended
    assert run_records(ResultsFile(tmp_path / "mamba_regression_tiny.jsonl").load()) == recs
    mamba_regression.main(argv + ["--plot-only"])


def test_cli_rejects_unknown_options():
    with pytest.raises(SystemExit):
        mcfg.parse_args(["--preset", "tiny", "--no-such-option", "1"])
    with pytest.raises(SystemExit):
        mcfg.parse_args(["--methods", "LoRA (everything)"])
    cfg = mcfg.parse_args(["--preset", "tiny", "--lrs", "1e-3,2e-3", "--fused", "false"])
    assert cfg.lrs == (1e-3, 2e-3) and cfg.fused is False and cfg.d_model == 8


def test_bench_tiny_writes_the_schema(tmp_path):
    mamba_bench.main(["--preset", "tiny", "--backend", "reference", "--out", str(tmp_path), "--rounds", "2",
                      "--steps", "1", "--warmup-steps", "0", "--profile"])
    res = json.loads((tmp_path / "bench_mamba.json").read_text())
    for k in ("device", "commit", "date", "mamba_ssm_version", "results", "ratios", "ratio_sdt_lora_over_lora",
              "profile"):
        assert k in res
    rows = {(r["table"], r["method"]): r for r in res["results"]}
    official = [m for t, m in rows if t == "official"]
    assert len(official) == 4 and all("official" in m for m in official)
    assert all(not r["fused"] and r["path"] == "unfused" for r in res["results"])  # no fused path on CPU
    assert res["notes"] and "fused rows skipped" in res["notes"][0]
    eb = {m: r for (t, m), r in rows.items() if t == "equal_budget"}
    assert eb["SDT + LoRA"]["trainable_params"] <= eb["LoRA"]["trainable_params"]
    # tiny: D = 32, H = 4, R = 1, 2 layers; SDLoRA: 8 channels x (1 A_log state + 2H), LoRA r8 on out_proj
    sd = rows[("official", mamba_bench.SDLORA_OFFICIAL)]
    assert (sd["sdt_channels_per_layer"], sd["sdt_states_per_channel"]) == (8, 1)
    assert sd["trainable_params"] == 2 * (8 * (1 + 2 * 4) + 8 * (32 + 16))
    r3 = rows[("official", "LoRA r3 out_proj+x_proj (official)")]  # out_proj + W_Δ↓ (rank 1) + W_B + W_C
    assert r3["trainable_params"] == 2 * (3 * (32 + 16) + 1 * (32 + 1) + 2 * 3 * (32 + 4))
    assert r3["lora_dropout"] == 0.1 and r3["lora_form"] == "activation-side"
    ratios = res["ratios"]["official/unfused"]
    assert len(ratios) == 4 and all(len(v["values"]) == 2 and v["min"] <= v["median"] <= v["max"]
                                    for v in ratios.values())
    assert res["ratio_sdt_lora_over_lora"] > 0
    prof = res["profile"]
    assert len(prof["per_config"]) == 6 and all(p["top"] for p in prof["per_config"].values())
    assert "official/unfused" in prof["differing_events"]
    assert "official/unfused/" in (tmp_path / "bench_mamba_profile.txt").read_text()


# --------------------------------------------------------------- official-code options
def _weights64(d_model=8, d_state=4):
    return block_weights(_block(d_model, d_state, dtype=F64))


def test_dropout_lora_acts_on_the_lora_input_only():
    w = _weights64()
    x = torch.randn(2, 7, 8, dtype=F64)
    cfg = MambaPeftConfig(lora=LORA_TARGETS[:4], lora_rank=2, lora_dropout=0.5, lora_x_proj_split=True)
    blk = PeftMambaBlock(w, d_state=4, dt_rank=1, config=cfg, generator=torch.Generator().manual_seed(0)).double()
    frozen = PeftMambaBlock(w, d_state=4, dt_rank=1, config=MambaPeftConfig()).double()
    assert blk.activation_side()
    # B = 0 at init: the dropout on the LoRA path must leave the frozen path untouched, exactly
    assert torch.equal(blk(x, REF), frozen(x, REF))
    for m in blk.lora.values():
        with torch.no_grad():
            m.lora_B.copy_(torch.randn_like(m.lora_B))
    out1, out2 = blk(x, REF), blk(x, REF)
    assert not torch.equal(out1, out2)  # fresh dropout masks
    blk.eval()  # dropout off: the activation-side form equals the merged weights W + s·B A
    merged = mamba_forward(blk.effective_weights(activation_side=False), x, d_state=4, dt_rank=1)
    act = mamba_forward(blk.effective_weights(activation_side=True), x, d_state=4, dt_rank=1)
    assert not blk.activation_side() and rel_err(blk(x, REF), merged) < RTOL[F64]
    assert rel_err(act, merged) > 0  # the activation-side op always drops (p = 0.5) ...
    zero = PeftMambaBlock(w, d_state=4, dt_rank=1, config=dataclasses.replace(cfg, lora_dropout=1e-12),
                          generator=torch.Generator().manual_seed(0)).double()
    zero.load_state_dict(blk.state_dict())
    assert rel_err(zero(x, REF), merged) < 1e-9  # ... and with p -> 0 activation-side = merged


def test_split_x_proj_lora_has_three_blocks():
    w = _weights64()
    D, R, H = 16, 1, 4
    cfg = MambaPeftConfig(lora=("x_proj.weight",), lora_rank=2, lora_x_proj_split=True)
    blk = PeftMambaBlock(w, d_state=H, dt_rank=R, config=cfg)
    assert sorted(blk.lora) == ["x_proj__weight__part0", "x_proj__weight__part1", "x_proj__weight__part2"]
    assert trainable_count(blk) == 1 * (D + R) + 2 * 2 * (D + H)  # W_Δ↓ rank clamped to R = 1
    joint = PeftMambaBlock(w, d_state=H, dt_rank=R, config=dataclasses.replace(cfg, lora_x_proj_split=False))
    assert trainable_count(joint) == 2 * (D + R + 2 * H)
    for m in blk.lora.values():
        with torch.no_grad():
            m.lora_B.copy_(torch.randn_like(m.lora_B))
    eff = blk.effective_weights()["x_proj.weight"]
    parts = [blk.lora[f"x_proj__weight__part{j}"]() for j in range(3)]
    assert torch.equal(eff, torch.cat(parts, dim=0)) and eff.shape == w["x_proj.weight"].shape


def test_state_level_sdt_masks_and_counts():
    w = _weights64()
    chans, states = [1, 5], [[0, 3], [2, 3]]
    cfg = MambaPeftConfig(sdt_channels=2, sdt_states=2)
    blk = PeftMambaBlock(w, d_state=4, dt_rank=1, config=cfg, channels=chans, states=states)
    assert trainable_count(blk) == 2 * (2 + 2 * 4)  # per channel: 2 A_log states + whole W_B, W_C columns
    opt = torch.optim.AdamW([p for p in blk.parameters() if p.requires_grad], lr=1e-1, weight_decay=0.5)
    for _ in range(3):
        loss = blk(torch.randn(2, 6, 8, dtype=F64), REF).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    a = blk.effective_weights()["A_log"]
    train = torch.zeros(16, 4, dtype=torch.bool)
    train[1, [0, 3]] = train[5, [2, 3]] = True
    assert torch.equal(a[~train], w["A_log"][~train]) and not torch.equal(a[train], w["A_log"][train])
    for bad in (dict(states=[[0, 3]]), dict(states=[[0, 4], [1, 2]]), dict(states=None)):
        with pytest.raises(ValueError):
            PeftMambaBlock(w, d_state=4, dt_rank=1, config=cfg, channels=chans, **bad)
    with pytest.raises(ValueError):
        MambaPeftConfig(sdt_states=2)  # states without channels


def test_official_selection_rule():
    delta = torch.zeros(6, 4, dtype=F64)
    delta[4] = torch.tensor([0.0, 0.3, -0.2, 0.1])  # largest Σ δ²
    delta[1] = torch.tensor([0.25, 0.0, 0.0, 0.05])
    delta[2, 0] = 0.01
    ch, st = official_select(delta, 2, 2)
    assert ch == [1, 4] and st == [[0, 3], [1, 2]]
    assert official_select(delta, 1, 0) == ([4], [[0, 1, 2, 3]])
    assert official_counts(1536, 16, 0.99, 0.75) == (15, 4)  # Mamba-130M: D = 1536, H = 16
    assert official_counts(1536, 16, 0.99, 0.95) == (15, 1)
    with pytest.raises(ValueError):
        official_counts(16, 4, 1.0, 0.5)


def test_regression_shards_merge_to_one_process_key_set(tmp_path):
    base = ["--preset", "tiny", "--backend", "reference"]
    mamba_regression.main(base + ["--out", str(tmp_path / "one")])
    for i in (0, 1):  # shards: the base grid only
        mamba_regression.main(base + ["--out", str(tmp_path / "two"), "--shard", f"{i}/2"])
    shard_recs = [run_records(ResultsFile(f).load()) for f in sorted((tmp_path / "two").glob("*.shard*of2.jsonl"))]
    assert len(shard_recs) == 2 and all(shard_recs)
    assert not {r["key"] for r in shard_recs[0]} & {r["key"] for r in shard_recs[1]}  # disjoint
    mamba_regression.main(base + ["--out", str(tmp_path / "two"), "--merge"])
    assert not list((tmp_path / "two").glob("*.shard*"))
    mamba_regression.main(base + ["--out", str(tmp_path / "two")])  # the lr-extension rounds, in one process
    one = run_records(ResultsFile(tmp_path / "one" / "mamba_regression_tiny.jsonl").load())
    two = run_records(ResultsFile(tmp_path / "two" / "mamba_regression_tiny.jsonl").load())
    assert {r["key"] for r in one} == {r["key"] for r in two}
    assert {r["key"]: r["best_mse"] for r in one} == {r["key"]: r["best_mse"] for r in two}
    mamba_regression.main(base + ["--out", str(tmp_path / "two"), "--shard", "1/2"])  # resume: nothing to run
    assert not list((tmp_path / "two").glob("*.shard*"))


def test_regression_official_rule_option(tmp_path):
    argv = ["--preset", "tiny", "--backend", "reference", "--out", str(tmp_path), "--methods", "SDT,SDT + LoRA",
            "--sdt-rule", "official", "--sdt-state-freeze", "0.5", "--lora-dropout", "0.1"]
    mamba_regression.main(argv)
    recs = run_records(ResultsFile(tmp_path / "mamba_regression_tiny.jsonl").load())
    assert {r["method"] for r in recs} == {"SDT", "SDT + LoRA"}
    for r in recs:  # tiny: H = 4, half the A_log states frozen -> 2 trained per channel
        assert all(len(s) == 2 for layer in r["sdt_states"] for s in layer)
        assert r["config"]["sdt_rule"] == "official" and '"sdt_state_freeze":0.5' in r["key"]
    sdt = next(r for r in recs if r["method"] == "SDT")
    assert sdt["trainable"] == 2 * 4 * (2 + 2 * 4)
    default = mcfg.config_dict(mcfg.make("tiny"))
    assert not {"sdt_rule", "sdt_state_freeze", "lora_dropout", "shard", "merge"} & set(default)  # keys unchanged


@pytest.mark.parametrize("argv", [["--sdt-state-freeze", "0.5"], ["--sdt-rule", "theirs"], ["--shard", "2/2"],
                                  ["--shard", "x"], ["--lora-dropout", "1.0"], ["--shard", "0/2", "--merge"]])
def test_cli_rejects_bad_official_and_shard_options(argv):
    with pytest.raises(SystemExit):
        mcfg.parse_args(["--preset", "tiny"] + argv)


def test_cpu_paths_never_import_mamba_ssm():
    code = ("import sys, torch; from synthetic.mamba import experiment as mamba_regression, bench as mamba_bench; "
            "from synthetic.mamba.peft import get_backend; get_backend('reference'); "
            "assert 'mamba_ssm' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
