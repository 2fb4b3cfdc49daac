"""Deep-S4 regression experiment (synthetic.s4_regression): fast model vs float64 reference, masks,
trainable counts vs the theory package, resume, bad options, and a tiny end-to-end run."""

import dataclasses

import pytest
import torch

from synthetic.s4 import model as sm
from synthetic.s4 import config as s4c, methods as s4m, train as s4t, experiment as s4r
from synthetic.results import ResultsFile, best_of_grid, run_records
from synthetic.s4.selection import rank_dimensions, select, select_pruned
from theory.peft import Role
from theory.deep import deep_forward as reference_forward
from theory.tolerances import RTOL, rel_err

F64 = torch.float64


def _layers(D=5, Hc=3, L=2, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return [sm.init_layer(D, Hc, generator=g, dtype=dtype) for _ in range(L)]


def test_fast_model_equals_float64_reference():
    D, Hc, N, B = 5, 3, 17, 4
    layers = _layers(D, Hc)
    x = torch.randint(0, 10, (D, N, B), generator=torch.Generator().manual_seed(1)).to(F64)
    fast = sm.deep_forward([{k: v[None] for k, v in p.items()} for p in layers], x, sm.toeplitz_index(N, "cpu"))[0]
    ref = reference_forward(sm.to_theory_model(layers), x.permute(2, 0, 1))  # theory layout (B, D, N), FFT conv
    assert rel_err(fast.permute(2, 0, 1), ref) < RTOL[F64]


def test_fast_model_float32_close_to_reference():
    D, Hc, N, B = 6, 4, 40, 3
    layers = _layers(D, Hc, seed=3)
    x = torch.randint(0, 10, (D, N, B), generator=torch.Generator().manual_seed(2)).to(F64)
    l32 = [{k: v.float()[None] for k, v in p.items()} for p in layers]
    fast = sm.deep_forward(l32, x.float(), sm.toeplitz_index(N, "cpu"))[0].double()
    ref = reference_forward(sm.to_theory_model(layers), x.permute(2, 0, 1))
    assert rel_err(fast.permute(2, 0, 1), ref) < RTOL[torch.float32]


def test_toeplitz_conv_backward_equals_autograd():
    R, D, N, B = 2, 3, 9, 4
    idx = sm.toeplitz_index(N, "cpu")
    for shape in ((R, D, N, B), (D, N, B)):
        K = torch.randn(R, D, N, dtype=F64, requires_grad=True)
        x = torch.randn(*shape, dtype=F64, requires_grad=True)
        g = torch.randn(R, D, N, B, dtype=F64)
        fast = torch.autograd.grad((sm.ToeplitzConv.apply(K, x, idx) * g).sum(), (K, x))
        slow = torch.autograd.grad((torch.matmul(sm.toeplitz(K, idx), x) * g).sum(), (K, x))
        for a, b in zip(fast, slow):
            assert rel_err(a, b) < RTOL[F64]


def test_diagonal_sums_brute_force():
    M = torch.randn(2, 6, 6, dtype=F64)
    want = torch.stack([torch.diagonal(M, offset=-k, dim1=-2, dim2=-1).sum(-1) for k in range(6)], -1)
    assert torch.equal(sm.diagonal_sums(M), want) or rel_err(sm.diagonal_sums(M), want) < RTOL[F64]


def test_sdt_selection_ranks_by_change_and_demotes_unusable_dims():
    D, H = 4, 3
    a0 = torch.full((D, H), 0.5, dtype=torch.complex128)
    change = torch.tensor([[0.0, 0.1, 0.0], [0.3, 0.0, 0.2], [0.0, 0.0, 0.05], [0.9, 0.0, 0.0]], dtype=F64)
    C = torch.ones(D, H, dtype=torch.complex128)
    C[3] = 1e-9  # channel 3 changed most but contributes nothing: ranked last
    rk = rank_dimensions(a0, a0 + change, C, torch.ones_like(C), N=8)
    assert rk.channel_order.tolist() == [1, 0, 2, 3]
    m = select(rk, 2, 1)
    assert m.trainable.nonzero().tolist() == [[0, 1], [1, 0]]
    with pytest.raises(ValueError, match="n_states"):
        select(rk, 1, H + 1)


def test_select_pruned_follows_the_official_usable_rule():
    """Usable channels/states by magnitude; updates among them by change; C pruned outside (SDT-P style)."""
    D, H = 4, 3
    a0 = torch.full((D, H), 0.5, dtype=torch.complex128)
    change = torch.tensor([[0.0, 0.1, 0.0], [0.3, 0.0, 0.2], [0.0, 0.0, 0.05], [0.9, 0.8, 0.7]], dtype=F64)
    C = torch.ones(D, H, dtype=torch.complex128)
    C[3] = 1e-2  # changed most, smallest magnitude: not usable with 3 usable channels
    C[1, 2] = 1e-3  # smallest state of channel 1: not usable with 2 usable states
    rk = rank_dimensions(a0, a0 + change, C, torch.ones_like(C), N=8)
    m = select_pruned(rk, 2, 2, usable_channels=3, usable_states=2)
    assert m.pruned[3].all() and not m.trainable[3].any()  # non-usable channel: every state pruned
    assert m.trainable[1].tolist() == [True, True, False] and bool(m.pruned[1, 2])  # updated channel 1
    assert m.trainable_channels.tolist() == [True, True, False, False]
    assert not m.pruned[2].any()  # usable but not updated: frozen, not pruned
    assert torch.equal(select_pruned(rk, 2, 1, 0, 0).trainable, select(rk, 2, 1).trainable)  # 0 = all usable
    with pytest.raises(ValueError, match="n_channels"):
        select_pruned(rk, 4, 1, usable_channels=3, usable_states=2)


# ------------------------------------------------------------------------------ experiment-level
OFFICIAL = ["--state-convention", "complex", "--sdt-prune", "usable", "--usable-channels", "4", "--usable-states", "3",
            "--train-skip-dt-bias", "--warmup-params", "all"]


@pytest.fixture(scope="module", params=["default", "official"])
def tiny(request):
    extra = OFFICIAL if request.param == "official" else []
    cfg = s4c.parse_config(["--preset", "tiny", "--no-compile", "--device", "cpu"] + extra)
    trainer = s4t.Trainer(cfg, torch.device("cpu"), log=lambda *a: None)
    frozen, target = trainer.models(0)
    sel = trainer.warmup_selection(frozen, target, 0)
    return cfg, trainer, frozen, target, sel


def test_trainable_count_equals_theory_package(tiny):
    cfg, trainer, frozen, target, sel = tiny
    total = sum(v.numel() for p in frozen for v in p.values())
    assert total == sm.count_layer_params(cfg.d_model, s4c.n_modes(cfg, cfg.frozen_d_state)) * cfg.frozen_layers
    assert frozen[0]["C_re"].shape[1] == (cfg.frozen_d_state if cfg.state_convention == "complex" else cfg.frozen_d_state // 2)
    for name, method in s4m.METHODS.items():
        for budget in method.budgets(cfg):
            state = sm.RunState.create(frozen, 2, *trainer.rank_max(), generator=torch.Generator().manual_seed(0))
            s4m.configure(cfg, method, state, budget, sel)
            counts = state.trainable_count()
            assert counts[0] == counts[1] == s4m.theory_trainable_count(method, frozen, budget, sel, cfg), (name, budget)
    assert counts[0] == total  # the last method is Full


def _train_method(tiny, name):
    cfg, trainer, frozen, target, sel = tiny
    method = s4m.METHODS[name]
    budget = method.budgets(cfg)[-1]
    state = sm.RunState.create(frozen, 1, *trainer.rank_max(), generator=torch.Generator().manual_seed(0))
    s4m.configure(cfg, method, state, budget, sel)
    lora0 = [{k: v.detach().clone() for k, v in lo.items()} for lo in state.lora]
    losses = trainer.train(state, [3e-2], 5, target, trainer.data(0, stream=0))
    assert torch.isfinite(losses).all()
    return state, lora0


@pytest.mark.parametrize("name", list(s4m.METHODS))
def test_masks_respected_during_training(tiny, name):
    """Frozen entries of every dense parameter are bit-identical to the frozen model after training
    (to its pruned copy where SDT prunes C)."""
    cfg, _, frozen, _, _ = tiny
    state, _ = _train_method(tiny, name)
    changed = 0
    for l, (f, b, m, t) in enumerate(zip(frozen, state.base, state.mask, state.train)):
        for k in sm.ALL_PARAMS:
            eff = torch.where(m[k], t[k], b[k])[0].detach()
            frozen_entries = ~m[k][0]
            assert torch.equal(eff[frozen_entries], b[k][frozen_entries]), (name, l, k)
            if b[k] is not f[k]:  # pruned copy: differs from the frozen model only by zeros
                assert torch.equal(b[k][b[k] != f[k]], torch.zeros_like(b[k][b[k] != f[k]])), (name, l, k)
            changed += int((eff != f[k]).sum())
    extra_only = ("Prompt tuning", "Prefix-tuning", "Initial-state tuning", "State-offset tuning", "DoRA (Proj)",
                  "Additional-scan")  # their updates live in LoRA factors / RunState.extra, dense ones stay frozen
    untouched = ("Frozen",) + (() if cfg.train_skip_dt_bias else ("LoRA (Proj)", "LoRA (S4+Proj)") + extra_only)
    assert (changed == 0) == (name in untouched), name


@pytest.mark.parametrize("tiny", ["official"], indirect=True)  # the default tiny preset prunes nothing
@pytest.mark.parametrize("name", ["SDT", "SDT + LoRA"])
def test_pruned_c_entries_are_exactly_zero_after_training(tiny, name):
    cfg, _, frozen, _, sel = tiny
    assert cfg.sdt_prune != "none"  # --sdt-prune usable (OFFICIAL)
    state, _ = _train_method(tiny, name)
    budget = s4m.METHODS[name].budgets(cfg)[-1]
    masks = s4m.layer_sdt_masks(sel, budget)
    n_pruned = 0
    for l, (e, mk) in enumerate(zip(state.effective(), masks)):
        pr = mk.pruned
        n_pruned += int(pr.sum())
        for k in ("C_re", "C_im"):
            assert torch.equal(e[k][0].detach()[pr], torch.zeros(int(pr.sum()))), (l, k)  # exactly zero
            assert not state.mask[l][k][0][pr].any()  # and never trainable
            assert torch.equal(frozen[l][k][pr] != 0, torch.ones(int(pr.sum()), dtype=torch.bool))  # were nonzero
        assert bool(state.mask[l]["u"].all() and state.mask[l]["log_dt"].all() and state.mask[l]["beta"].all())
    assert n_pruned > 0


def test_opt_in_fields_at_default_stay_out_of_the_run_key():
    base = s4c.parse_config(["--preset", "tiny"])
    kc = s4r.key_config(base)
    assert not set(kc) & set(s4c.OPT_IN_DEFAULTS)
    for argv in (["--state-convention", "complex"], ["--train-skip-dt-bias"], ["--warmup-params", "all"],
                 ["--sdt-prune", "usable"]):
        other = s4r.key_config(s4c.parse_config(["--preset", "tiny"] + argv))
        assert other != kc, argv
    assert s4r.fingerprint({**dataclasses.asdict(base), **s4c.OPT_IN_DEFAULTS}) == s4r.fingerprint(
        {k: v for k, v in dataclasses.asdict(base).items() if k not in s4c.OPT_IN_DEFAULTS})


def test_lora_proj_updates_only_lora_factors(tiny):
    cfg, _, frozen, _, _ = tiny
    state, lora0 = _train_method(tiny, "LoRA (Proj)")
    eff = state.effective()
    extra = s4m.EXTRA_PARAMS if cfg.train_skip_dt_bias else ()  # u, log_dt, beta: trained too
    for l, (b, e, lo, lo0) in enumerate(zip(frozen, eff, state.lora, lora0)):
        for k in sm.ALL_PARAMS:
            if k != "W" and k not in extra:
                assert torch.equal(e[k][0].detach(), b[k]), (l, k)
        delta = e["W"][0].detach() - b["W"]
        r = int(state.rank_mask[l]["proj"][0].sum())
        assert 0 < torch.linalg.matrix_rank(delta).item() <= r
        assert not torch.equal(lo["proj_B"], lo0["proj_B"])
        assert torch.equal(lo["ssm_B"], lo0["ssm_B"])  # SSM LoRA untouched: its update stays exactly 0


def test_bad_options_fail_with_a_clear_message(capsys):
    cases = [(["--d-model", "0"], "--d-model"), (["--bogus-option", "1"], "unrecognized arguments: --bogus-option"),
             (["--sdt", "3by2"], "--sdt"), (["--methods", "LoRA,Nope"], "--methods"),
             (["--lrs", "1e-3,-1"], "--lrs"), (["--frozen-d-state", "7"], "--frozen-d-state"), (["--preset", "huge"], "--preset"),
             (["--lora-ranks", "1,x"], "--lora-ranks"), (["--state-convention", "real"], "--state-convention"),
             (["--sdt-prune", "all"], "--sdt-prune"), (["--usable-states", "99"], "--usable-states"),
             (["--sdt-prune", "usable", "--usable-channels", "1"], "--sdt:"),
             (["--warmup-params", "x"], "--warmup-params"), (["--lr-extend-factor", "1"], "--lr-extend-factor"),
             (["--lr-min", "2", "--lr-max", "1"], "--lr-min")]
    for argv, needle in cases:
        with pytest.raises(SystemExit):
            s4c.parse_config(argv)
        assert needle in capsys.readouterr().err, argv


def test_extension_groups_are_padded_to_the_compiled_run_count():
    from synthetic.runner import Run, _calls

    def lrs(calls):
        return [([r.lr for r in runs], n) for runs, n in calls]

    runs = [Run(0, "Full", {}, lr) for lr in (0.1, 0.2, 0.3, 0.4)]
    assert lrs(_calls(runs[:1], 3, pad=True)) == [([0.1, 0.1, 0.1], 1)]
    assert lrs(_calls(runs, 3, pad=True)) == [([0.1, 0.2, 0.3], 3), ([0.4, 0.4, 0.4], 1)]
    assert lrs(_calls(runs[:2], 3, pad=False)) == [([0.1, 0.2], 2)]


def test_tiny_end_to_end_and_resume(tmp_path):
    """Tiny sweep: figure + data; an interrupted sweep resumes without redoing finished runs."""
    out = str(tmp_path)
    argv = ["--preset", "tiny", "--no-compile", "--device", "cpu", "--out", out]
    s4r.main(argv + ["--time-budget", "1e-9"])  # stops after the first group: an interrupted sweep
    recs = [r for r in ResultsFile(tmp_path / "s4_regression_tiny.jsonl").load() if r["kind"] == "run"]
    assert 0 < len(recs) < 20
    first = {r["key"]: r["wall_s"] for r in recs}
    s4r.main(argv)
    recs = [r for r in ResultsFile(tmp_path / "s4_regression_tiny.jsonl").load() if r["kind"] == "run"]
    assert all(r["wall_s"] == first[r["key"]] for r in recs if r["key"] in first)  # not redone
    n_groups = len(s4r.run_groups(s4c.parse_config(argv)))
    # grid (1e-2, 1e6): 1e6 diverges, so the best (1e-2) sat at the low edge and 1e-2/4 was added for every
    # trained group and seed, after which 1e-2 is interior
    n_lr = 3
    assert len(recs) == len(set(r["key"] for r in recs)) == (n_groups - 2) * n_lr + 2  # 2 seeds × Frozen: 1 run
    assert {r["lr"] for r in recs if r["lr_source"] == "extension"} == {2.5e-3}
    rows = best_of_grid(recs, lr_policy=s4r.lr_policy(s4c.parse_config(argv)))
    assert all(r["lr_at_edge"] is None for r in rows)
    assert "| lr at grid edge |" in s4r.S4Command().summary(s4c.parse_config(argv))[0]
    for key in ("method", "trainable_pct", "best_mse", "final_mse", "lr", "seed", "status", "config", "budget",
                "loss_curve", "trainable", "device", "commit", "wall_s"):
        assert all(key in r for r in recs), key
    assert {r["status"] for r in recs} == {"ok", "diverged"}  # lr 1e6 diverges; it is recorded
    assert all(r["best_mse"] is None for r in recs if r["status"] == "diverged")
    assert all(r["trainable"] == r["trainable_theory"] for r in recs)
    for ext in ("png", "pdf"):
        assert (tmp_path / f"s4_mse_vs_params_tiny.{ext}").stat().st_size > 0
    s4r.main(argv + ["--plot-only"])  # redraw from data alone


def test_half_precision_conv_matches_fp32_conv():
    """ToeplitzConvHalf (fp16 operands, per-(run, channel) scaling) = ToeplitzConv to fp16 rounding,
    also for loss-sized gradients (1e-8) that would underflow fp16 without the scaling."""
    R, D, N, B = 2, 3, 24, 5
    idx = sm.toeplitz_index(N, "cpu")
    g = torch.Generator().manual_seed(0)
    for shape in ((R, D, N, B), (D, N, B)):
        K = torch.randn(R, D, N, generator=g, requires_grad=True)
        x = (10 * torch.rand(*shape, generator=g)).requires_grad_(True)
        dy = 1e-8 * torch.randn(R, D, N, B, generator=g)
        out32, out16 = sm.ToeplitzConv.apply(K, x, idx), sm.ToeplitzConvHalf.apply(K, x, idx)
        assert rel_err(out16, out32) < 2e-3  # fp16 keeps 11 bits: ~2.4e-4 per operand
        g32 = torch.autograd.grad((out32 * dy).sum(), (K, x))
        g16 = torch.autograd.grad((out16 * dy).sum(), (K, x))
        for a, b in zip(g16, g32):
            assert rel_err(a, b) < 2e-3
        assert rel_err(out16, out32) > 0  # the half path really rounds (it is not the fp32 path)


def test_a_run_does_not_depend_on_the_runs_packed_with_it(tmp_path):
    """runs_per_step packs runs of different methods and budgets of one seed into one step; each run's result
    equals the same run trained alone (its own generator; the stacked runs do not interact)."""
    base = ["--preset", "tiny", "--no-compile", "--device", "cpu", "--seeds", "0", "--lrs", "1e-2",
            "--lr-extend-factor", "0", "--methods", "LoRA (Proj),LoRA (S4+Proj),SDT,SDT + LoRA,Full"]
    s4r.main(base + ["--out", str(tmp_path / "alone")])
    s4r.main(base + ["--out", str(tmp_path / "packed"), "--runs-per-step", "5"])
    alone = {r["key"]: r for r in run_records(ResultsFile(tmp_path / "alone" / "s4_regression_tiny.jsonl").load())}
    packed = run_records(ResultsFile(tmp_path / "packed" / "s4_regression_tiny.jsonl").load())
    assert len(packed) == len(alone) == 2 + 2 + 2 + 2 + 1 and max(r["runs_in_group"] for r in packed) == 5
    for r in packed:
        a = alone[r["key"]]  # same key: runs_per_step is not part of it
        assert a["runs_in_group"] == 1 and r["trainable"] == a["trainable"]
        assert rel_err(torch.tensor([v for _, v in r["loss_curve"]]),
                       torch.tensor([v for _, v in a["loss_curve"]])) < 1e-5, r["method"]


@pytest.mark.parametrize("flag,want", [("--no-compile", False), ("--compile", True), (None, None)])
def test_scaling_rows_follow_the_compile_flag_without_deprecated_options(flag, want, capsys):
    """A scaling row's config compiles as ``--compile`` / ``--no-compile`` says (the flag was once inside a comment,
    so every CUDA row compiled and the table never finished), and it uses no deprecated option (no warning)."""
    import argparse
    from synthetic.s4.bench_scaling import row_config
    a = argparse.Namespace(device="cpu", precision="tf32", state_convention="pairs", compile=want)
    cfg = row_config(a, N=16, D=4, B=3, form="blocked")
    assert (cfg.compile, cfg.seq_len, cfg.d_model, cfg.batch, cfg.conv, cfg.methods) == (want, 16, 4, 3, "blocked",
                                                                                          ("Full",))
    assert "deprecated" not in capsys.readouterr().err


def test_scaling_resume_skips_the_rows_a_cut_off_call_measured(tmp_path, capsys):
    """A table cut off after its first (N, D) is finished by a second call with --scaling-resume: the first
    (N, D) is not timed again (its row is the first call's, byte for byte) and the missing one is added."""
    import json
    from synthetic.bench import main as bench

    out = tmp_path / "t.json"
    common = ["--scaling", "--device", "cpu", "--no-compile", "--scaling-D", "4", "--scaling-forms", "toeplitz",
              "--scaling-tokens", "256", "--iters", "1", "--warm", "1", "--rounds", "1", "--out", str(out)]
    assert bench(common + ["--scaling-N", "8"]) == 0
    first = json.loads(out.read_text())["results"]
    assert bench(common + ["--scaling-N", "8,16", "--scaling-resume"]) == 0
    assert "N=    8 D=   4 B=    8 every form already in" in capsys.readouterr().out
    rows = json.loads(out.read_text())["results"]
    assert sorted((r["N"], r["D"]) for r in rows) == [(8, 4), (16, 4)]
    assert [r for r in rows if r["N"] == 8] == first


def test_scaling_from_resumes_a_table_of_this_setting_only(tmp_path, capsys):
    """--scaling-from: a fresh --out starts from another table's rows when that table is of this setting (the
    (N, D) it has are not timed again, its rows kept byte for byte); a table of another setting adds nothing and says
    so; a missing file or one that is not a table is refused naming the option before anything is timed."""
    import json
    from synthetic.bench import main as bench

    first = tmp_path / "first.json"
    common = ["--scaling", "--device", "cpu", "--no-compile", "--scaling-D", "4", "--scaling-forms", "toeplitz",
              "--scaling-tokens", "256", "--iters", "1", "--warm", "1", "--rounds", "1", "--scaling-resume"]
    assert bench(common + ["--scaling-N", "8", "--out", str(first)]) == 0
    rows8 = json.loads(first.read_text())["results"]
    capsys.readouterr()
    fresh = tmp_path / "fresh.json"
    assert bench(common + ["--scaling-N", "8,16", "--scaling-from", str(first), "--out", str(fresh)]) == 0
    assert "every form already in" in capsys.readouterr().out
    rows = json.loads(fresh.read_text())["results"]
    assert sorted((r["N"], r["D"]) for r in rows) == [(8, 4), (16, 4)] and [r for r in rows if r["N"] == 8] == rows8

    other = tmp_path / "other.json"
    other.write_text(json.dumps({**json.loads(first.read_text()), "state_convention": "complex"}))
    again = tmp_path / "again.json"
    assert bench(common + ["--scaling-N", "8", "--scaling-from", str(other), "--out", str(again)]) == 0
    out = capsys.readouterr().out
    assert "another setting" in out and "state_convention" in out and "every form already in" not in out

    (tmp_path / "runs.jsonl").write_text('{"kind": "run"}\n')
    for bad, why in ((tmp_path / "nope.json", "does not exist"), (tmp_path / "runs.jsonl", "not a scaling table")):
        with pytest.raises(SystemExit) as e:
            bench(common + ["--scaling-N", "8", "--scaling-from", str(bad), "--out", str(tmp_path / "x.json")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "--scaling-from" in err and why in err
        assert not (tmp_path / "x.json").exists()


def test_a_padded_call_charges_its_time_to_the_runs_it_records(tmp_path):
    """A call padded to R runs for one compiled graph repeats its last run (synthetic.runner._calls): the one run it
    records cost the whole call (wall_s == group_wall_s; runs_in_group says the step trained 3), where two distinct
    runs share their call's time."""
    from synthetic.runner import Run
    cfg = s4c.parse_config(["--preset", "tiny", "--no-compile", "--device", "cpu", "--iters", "2",
                            "--out", str(tmp_path)])
    exp = s4r.S4Experiment(cfg, log=lambda *a: None)
    run = Run(0, "LoRA (Proj)", {"proj_rank": 1}, 0.01)
    padded = exp.train([run, run, run])
    assert padded[0]["wall_s"] == padded[0]["group_wall_s"] and padded[0]["runs_in_group"] == 3
    two = exp.train([run, Run(0, "LoRA (Proj)", {"proj_rank": 1}, 0.02)])
    assert two[0]["wall_s"] == two[1]["wall_s"] == two[0]["group_wall_s"] / 2
