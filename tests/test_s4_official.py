"""The official-convention preset (synthetic.s4.official_experiment) against the official code's own outputs.

Data: tests/data/official_s4/ (see its README: the official weights at seed 123, float64 outputs,
and 10 short CPU runs of the unmodified official code). Run for run: initial weights, outputs,
trainable counts, SDT selections, warm-up and training losses.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from synthetic.results import ResultsFile, best_of_grid, run_records
from synthetic.s4 import fig2 as s4_fig2
from synthetic.s4 import model as sm
from synthetic.s4 import official as soc, official_experiment as so

DATA = Path(__file__).parent / "data" / "official_s4"
CASES = json.loads((DATA / "short_runs_cpu.json").read_text())["cases"]
FIRST_RTOL = 1e-5  # first loss: same weights, same batch; the official float32 loss is itself 7e-6 off float64
LATER_RTOL = 1e-3  # later losses: float32 rounding differences grow through 10 AdamW steps
F64_RTOL = 1e-12  # float64 forward vs the official float64 outputs (seen: 3e-14)
NAMES = {"D": "u", "kernel.log_dt": "log_dt", "kernel.log_A_real": "log_A_re", "kernel.A_imag": "A_im",
         "output_linear.weight": "W", "output_linear.bias": "beta"}


def _method(c):
    """A short-run case's official config -> (method name, budget) of synthetic.s4.official."""
    lp, ssm = c["lp_method"], c["ssm_method"]
    name = {("freeze", "freeze"): "Frozen", ("lora", "freeze"): "LoRA (Proj)", ("lora", "lora"): "LoRA (S4+Proj)",
            ("ours", "ours"): "SDT", ("lora", "ours"): "SDT + LoRA", ("full", "full"): "Full"}[(lp, ssm)]
    b = {"all": True} if name == "Full" else {}
    if lp == "lora":
        b["proj_rank"] = c["lp_lora_rank"]
    if ssm == "ours":
        b.update(channels=c["updatable_channels_dim"], states=c["updatable_states_dim"],
                 usable_channels=c["select_channels_dim"], usable_states=c["select_states_dim"])
    return name, b


def _cfg(c, **kw):
    warm = {"full": "all", "ssm": "ssm"}[c["ssm_warmup_method"]]
    return soc.OfficialConfig(batch=c["batch_size"], seq_len=c["seq_len"], iters=c["n_epochs"],
                             warmup_iters=c["warmup_epochs"], warmup_lr=c["warmup_lr"], warmup_params=warm,
                             lrs=(c["lr"],), data="exact", device="cpu", eval_batches=1, **kw)


@pytest.fixture(scope="module")
def official_results():
    """Every short-run case, trained as the preset trains: cases sharing a warm-up run together (one batch stream)."""
    groups = {}
    for name, case in CASES.items():
        c = case["config"]
        warm = c["ssm_warmup_method"] if c["ssm_method"] == "ours" else "none"
        groups.setdefault(warm, []).append(name)
    out = {}
    for names in groups.values():
        c0 = CASES[names[0]]["config"]
        res = so.run_cases(_cfg(c0), [(*_method(CASES[n]["config"]), CASES[n]["config"]["lr"]) for n in names])
        out.update(zip(names, res))
    return out


def _rel(a, b):
    return abs(a - b) / abs(b)


# ---------------------------------------------------------------------------------- weights, outputs
def test_official_initial_weights_bit_identical_to_npz():
    z = np.load(DATA / "models_seed123.npz")
    target, frozen, _ = soc.official_models(soc.OfficialConfig(), soc.OFFICIAL_SEED)
    n_log_ulp = 0
    for pre, layers in (("target", target), ("frozen", frozen)):
        for l, p in enumerate(layers):
            for on, k in NAMES.items():
                ref, ours = z[f"{pre}.layers.{l}.{on}"], p[k].numpy()
                if k != "log_A_re":
                    assert np.array_equal(ref, ours), f"{pre}.{l}.{on}"
                else:  # the draws are identical; the float32 log may round differently by one ulp
                    ulps = np.abs(ref.view(np.int32).astype(np.int64) - ours.view(np.int32).astype(np.int64))
                    assert ulps.max() <= 1, f"{pre}.{l}.{on}"
                    n_log_ulp += int((ulps > 0).sum())
            C = np.stack([p["C_re"].numpy(), p["C_im"].numpy()], axis=-1)
            assert np.array_equal(C, z[f"{pre}.layers.{l}.kernel.C"]), f"{pre}.{l}.C"
    assert n_log_ulp <= 2  # of 4,608 log(-Re A) entries: 2 are 1 ulp away (see the data README)


def test_official_float64_outputs_match():
    """The official weights (cast to float64) through our model give the official float64 outputs."""
    z = np.load(DATA / "models_seed123.npz")
    x = torch.from_numpy(z["X"].astype(np.int64)).permute(1, 2, 0).double()  # (D, L, B)
    idx = sm.toeplitz_index(x.shape[1], "cpu")
    for pre, n_layers in (("target", 1), ("frozen", 4)):
        layers = []
        for l in range(n_layers):
            p = {k: torch.from_numpy(z[f"{pre}.layers.{l}.{on}"]).double()[None] for on, k in NAMES.items()}
            C = torch.from_numpy(z[f"{pre}.layers.{l}.kernel.C"]).double()
            p.update(C_re=C[None, ..., 0], C_im=C[None, ..., 1], B_re=torch.ones_like(C[None, ..., 0]),
                     B_im=torch.zeros_like(C[None, ..., 0]))
            layers.append(p)
        out = sm.deep_forward(layers, x, idx)[0].permute(2, 0, 1).numpy()  # (B, D, L)
        ref = z[f"{pre}_out64"]
        assert np.abs(out - ref).max() <= F64_RTOL * np.abs(ref).max(), pre


def test_official_param_count_is_33536():
    assert soc.official_param_count(64, 16, 4) == 33536


# ---------------------------------------------------------------------------------- the short runs
@pytest.mark.parametrize("case", sorted(CASES))
def test_official_short_run_matches(official_results, case):
    ref, ours = CASES[case], official_results[case]
    assert ours["trainable"] == ref["train_params"]
    assert len(ours["warmup_losses"]) == len(ref["warmup_losses"])
    for seq in ("warmup_losses", "losses"):
        for i, (a, b) in enumerate(zip(ours[seq], ref[seq])):
            assert _rel(a, b) <= (FIRST_RTOL if i == 0 else LATER_RTOL), f"{seq}[{i}]: {a} vs {b}"
    assert len(ours["losses"]) == len(ref["losses"]) == 10


@pytest.mark.parametrize("case", sorted(n for n, c in CASES.items() if c["config"]["ssm_method"] == "ours"))
def test_official_sdt_selection_matches(official_results, case):
    ref, sel = CASES[case], official_results[case]["selection"]
    for l in range(len(sel.usable_channels)):
        assert sorted(sel.usable_channels[l]) == sorted(ref["usable_channels"][str(l)])
        assert sorted(sel.update_channels[l]) == sorted(ref["update_channels"][str(l)])
        for ch, states in sel.update_states[l].items():
            assert sorted(states) == sorted(ref["update_states"][str(l)][str(ch)])
        for ch, states in sel.usable_states[l].items():
            assert sorted(states) == sorted(ref["usable_states"][str(l)][str(ch)])


# ---------------------------------------------------------------------------------- pieces
def test_official_fft_twin_equals_toeplitz():
    g = torch.Generator().manual_seed(0)
    layers = [{k: v.double()[None] for k, v in soc.official_layer(5, 3, g).items()} for _ in range(2)]
    x = torch.randint(0, 10, (5, 17, 4), generator=g).double()
    idx = sm.toeplitz_index(17, "cpu")
    a, b = sm.deep_forward(layers, x, idx), soc.fft_deep_forward(layers, x, idx)
    assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)


def test_official_anchored_adamw_is_torch_adamw_on_the_delta():
    """Anchor 0: torch.optim.AdamW on P; anchor P0: torch.optim.AdamW on a zero-initialised delta."""
    g = torch.Generator().manual_seed(1)
    P0 = torch.randn(1, 6, generator=g, dtype=torch.float64)
    grads = [torch.randn(1, 6, generator=g, dtype=torch.float64) for _ in range(4)]
    for anchored in (False, True):
        p = P0.clone()
        ref = torch.zeros_like(P0) if anchored else P0.clone()
        ref.requires_grad_(True)
        opt = torch.optim.AdamW([ref], lr=0.1)
        m, v, step = torch.zeros_like(p), torch.zeros_like(p), torch.zeros((), dtype=torch.float64)
        a = P0.clone() if anchored else torch.zeros_like(P0)
        for gr in grads:
            ref.grad = gr.clone()
            opt.step()
            soc.adamw_step_anchored([p], [gr], [m], [v], [a], step, torch.tensor([0.1], dtype=torch.float64),
                                   0.9, 0.999, 1e-8, 0.01)
        want = (P0 + ref.detach()) if anchored else ref.detach()
        assert torch.allclose(p, want, rtol=1e-12, atol=1e-12)


def test_official_trainable_sets_follow_get_optimizer():
    """Skip D always; bias iff the projection is not frozen; log_dt iff the SSM is not frozen; never B."""
    cfg = soc.OfficialConfig(d_model=4, frozen_d_state=3, frozen_layers=1)
    _, frozen, g = soc.official_models(cfg, 0)
    down = [soc.official_lora_down(4, 2, g)]
    for name, m in soc.METHODS.items():
        if m.needs_selection:
            continue
        b = m.budgets(cfg)[0] if name != "LoRA (Proj)" else {"proj_rank": 2}
        if "proj_rank" in b:
            b = {**b, "proj_rank": 2}
        if "ssm_rank" in b:
            b = {**b, "ssm_rank": 1}
        grp = soc.build_group(frozen, m, b, 1, (2, 1), lora_down=down)
        mk = grp.state.mask[0]
        assert mk["u"].all() and not mk["B_re"].any() and not mk["B_im"].any()
        assert bool(mk["beta"].all()) == (m.lp != "freeze")
        assert bool(mk["log_dt"].all()) == (m.ssm != "freeze")
        assert bool(mk["C_re"].any()) == (m.ssm == "full")


def test_official_sdt_score_options_differ_only_in_the_update_order():
    cfg = soc.OfficialConfig(d_model=8, frozen_d_state=4, frozen_layers=1)
    _, frozen, _ = soc.official_models(cfg, 5)
    warm = {k: v + 0.01 * torch.randn(v.shape, generator=torch.Generator().manual_seed(2)) for k, v in frozen[0].items()}
    sel = {s: soc.select_layer(warm, frozen[0], 6, 3, 3, 2, 20, score=s) for s in soc.SCORES}
    for s, (uc, upc, us, ups) in sel.items():
        assert len(uc) == 6 and len(upc) == 3 and set(upc) <= set(uc)
        assert all(set(ups[c]) <= set(us[c]) and len(ups[c]) == 2 for c in upc)
    with pytest.raises(ValueError, match="--sdt-score"):
        soc.validate(soc.OfficialConfig(sdt_score="fixed"))


def test_official_bad_options_rejected():
    for kw, match in ((dict(batch=0), "--batch"), (dict(data="cpu"), "--data"),
                      (dict(sdt=("9x4/8x8",)), "--sdt"), (dict(methods=("LoRA",)), "--methods"),
                      (dict(ac_lora=("4",)), "--ac-lora"), (dict(lrs=(-1.0,)), "--lrs"),
                      (dict(lr_extend_factor=0.5), "--lr-extend-factor"), (dict(lr_min=2.0), "--lr-min")):
        with pytest.raises(ValueError, match=match):
            soc.validate(soc.OfficialConfig(**kw))


# ---------------------------------------------------------------------------------- preset end to end
def test_official_preset_runs_and_resumes(tmp_path):
    from synthetic import s4_regression

    args = ["--preset", "official-tiny", "--out", str(tmp_path), "--seeds", "123", "--iters", "3",
            "--methods", "Frozen,LoRA (Proj),SDT,Full", "--sdt-budgets", "2x2/4x3",
            "--lr-extend-factor", "0"]  # the base grid only (the extension: the next test)
    assert s4_regression.main(args) == 0  # dispatched to synthetic.s4.official_experiment
    path = tmp_path / "s4_regression_official-tiny.jsonl"
    recs = ResultsFile(path).load()
    runs = [r for r in recs if r["kind"] == "run"]
    assert len(runs) == (1 + 2 + 1 + 1) * 2 and [r["kind"] for r in recs].count("sweep") == 1
    for r in runs:
        for k in ("method", "budget", "trainable_pct", "lr", "seed", "best_mse", "eval_mse", "status", "device",
                  "commit", "date"):
            assert k in r, k
        assert r["seed"] == 123 and r["status"] == "ok" and math.isfinite(r["eval_mse"])
    frozen = [r for r in runs if r["method"] == "Frozen"][0]
    assert frozen["trainable"] == 2 * 6  # the skip D of both layers
    assert so.main(args) == 0
    assert ResultsFile(path).load() == recs  # resumed: nothing rerun, no new record


def test_official_lr_grid_extends_at_an_edge_and_resumes(tmp_path):
    """Grid (1e-2, 1e6): 1e6 is far too high, so the best (1e-2) sits at the low edge and 1e-2/4 = 2.5e-3 is
    added for every seed; lr_min = 2.5e-3 bounds the grid there, so one extension round at most."""
    args = ["--preset", "official-tiny", "--out", str(tmp_path), "--methods", "Frozen,Full", "--iters", "4",
            "--lrs", "1e-2,1e6", "--lr-min", "2.5e-3"]
    cfg = so.parse_config(args)
    assert so.key_config(cfg) == so.key_config(so.parse_config(args[:-2] + ["--lr-extend-factor", "2"]))
    assert so.main(args) == 0
    path = tmp_path / "s4_regression_official-tiny.jsonl"
    recs = ResultsFile(path).load()
    runs = run_records(recs)
    ext = [r for r in runs if r["lr_source"] == "extension"]
    assert len(runs) == 2 * 2 * 3 and len(ext) == 2 * 2  # (Frozen, Full) × 2 seeds × 3 lrs
    assert {r["lr"] for r in ext} == {2.5e-3} and {r["runs_in_group"] for r in ext} == {1}  # eager: no padding
    assert so.extension_plan(cfg, recs) == []
    rows = best_of_grid(runs, lr_policy=so.lr_policy(cfg))
    assert all(r["lr"] != 1e6 and r["lr_at_edge"] in (None, "low") for r in rows)
    assert all(r["lr_bound_reached"] == "lr_min" for r in rows if r["lr_at_edge"])
    assert "| lr at grid edge |" in so.OfficialCommand().summary(cfg)[0]
    sweeps = [r for r in recs if r["kind"] == "sweep"]
    assert len(sweeps) == 1 and sweeps[0]["extension_rounds"] == 1 and sweeps[0]["extension_runs"] == 4
    assert so.main(args) == 0
    assert ResultsFile(path).load() == recs  # resumed: nothing rerun, no new record


def test_official_extension_groups_padded_when_compiled(tmp_path, monkeypatch):
    """Under torch.compile an extension group is padded to R = len(lrs) runs (one compiled graph); the
    padding runs are not recorded. Compilation itself is faked (eager functions, use_compile set)."""
    class FakeCompiled(so.Trainer):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.use_compile = True

    monkeypatch.setattr(so, "Trainer", FakeCompiled)
    args = ["--preset", "official-tiny", "--out", str(tmp_path), "--methods", "Full", "--seeds", "123",
            "--iters", "4", "--lrs", "1e-2,1e6", "--lr-min", "2.5e-3", "--no-compile"]
    assert so.main(args) == 0
    runs = run_records(ResultsFile(tmp_path / "s4_regression_official-tiny.jsonl").load())
    ext = [r for r in runs if r["lr_source"] == "extension"]
    assert len(runs) == 3 and [(r["lr"], r["runs_in_group"]) for r in ext] == [(2.5e-3, 2)]


def test_official_committed_results_keep_their_keys():
    """figures/s4_regression_official.jsonl resumes under the current code: each run's key is the one the
    sweep computes for it (the lr-extension options are not in the key)."""
    path = Path(__file__).resolve().parent.parent / "figures" / "s4_regression_official.jsonl"
    if not path.exists():
        pytest.skip("needs the committed figures/s4_regression_official.jsonl (git checkout figures/; it is written by "
                    "python -m synthetic.s4_regression --preset official --precision tf32 --out figures)")
    recs = ResultsFile(path).load()
    runs = run_records(recs)
    from synthetic.cli import fields_from_record_config

    cfg = soc.OfficialConfig(**fields_from_record_config(soc.OfficialConfig, runs[0]["config"]))
    assert len(so.current_runs(cfg, recs)) == len(runs) > 0


def test_official_fig2_three_ways_from_tiny_json(tmp_path):
    runs = {"paper_reference_read_off_figure_2": {"Frozen": 3.05, "SDT 10->47 %": [1.2, 0.0], "Full": 1.06},
            "runs": [{"method": "Full", "trainable_pct": 100.0, "lr": 0.02, "best_mse": float("nan")},  # diverged
                     {"method": "Full", "trainable_pct": 100.0, "lr": 0.005, "best_mse": 1.0},
                     {"method": "Full", "trainable_pct": 100.0, "lr": 0.01, "best_mse": 1.05}]}
    preset = [{"key": f"{m}/{lr}/{s}", "kind": "run", "method": m, "budget": {}, "budget_label": "b", "lr": lr,
               "seed": s, "status": "ok", "best_mse": 1.0 + lr + s / 1000, "eval_mse": 2.0, "trainable_pct": 10.0}
              for m in ("SDT", "Full") for lr in (0.1, 0.2) for s in (123, 124)]
    preset.append({"kind": "sweep", "key": "w", "wall_s": 5.0})
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    ResultsFile(tmp_path / "preset.jsonl").extend(preset)  # JSON Lines, as the experiments write them
    paths = s4_fig2.three_ways(tmp_path / "runs.json", tmp_path / "preset.jsonl", tmp_path / "none.jsonl",
                               tmp_path / "fig")
    assert all(Path(p).exists() for p in paths)
    data = json.loads(Path(paths[2]).read_text(), parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))
    assert data["missing"] == ["default_conventions"]
    assert [p["mse"] for p in data["sources"]["official_code"]] == [1.0]  # best over lrs
    assert {(p["method"], p["mse"]) for p in data["sources"]["preset_seed123"]} == {("SDT", 1.223), ("Full", 1.223)}
    seeds = {p["method"]: p for p in data["sources"]["preset_seeds"]}
    assert seeds["SDT"]["n_seeds"] == 2 and seeds["SDT"]["min"] == pytest.approx(1.223)
    # best lr 0.1 is the lowest of (0.1, 0.2): drawn hollow in both panels
    assert seeds["SDT"]["lr_at_edge"] == "low"
    assert {p["lr_at_edge"] for p in data["sources"]["preset_seed123"]} == {"low"}
    assert sorted(p["trainable_pct"] for p in data["sources"]["paper"]) == [0.0, 10.0, 47.0, 100.0]
    assert data["files"]["preset"]["sweep_wall_s"] == [5.0]
