"""``python -m ssm_peft.bench`` (Table 2 on MambaForCausalLM) on a CPU: the tiny preset writes a report with the
fields the docs page reads, a method whose adapter no path reaches is recorded and not timed, the fused-path
switch is transformers' own, and bad options are one-line errors. The measurement itself needs a GPU."""

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
peft = pytest.importorskip("peft", reason="needs peft and transformers (pip install .[hf])")
transformers = pytest.importorskip("transformers", reason="needs peft and transformers (pip install .[hf])")
from ssm_peft import bench  # noqa: E402
from ssm_peft.layouts import fused_path  # noqa: E402


def test_tiny_preset_writes_the_report(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--preset", "tiny", "--methods", "sdlora,lora_r2,peft_lora_r5_unfused", "--rounds", "2",
                       "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["device"] == "cpu" and rep["dtype"] == "float32" and rep["rounds_done"] == 2
    assert {"torch", "transformers", "peft", "mamba_ssm", "causal_conv1d"} <= set(rep["versions"])
    rows = {r["method"]: r for r in rep["results"]}
    assert rows["sdlora"]["acts"] and len(rows["sdlora"]["ms_per_step_rounds"]) == 2
    # SDLoRA's official budget at the tiny shape: D = 32 channels, 75 % frozen -> 8; H = 4 states, 75 % -> 1;
    # per layer 8 A_log entries + 8 x 2H W_B/W_C entries + LoRA r2 on out_proj (16 x 32)
    assert rows["sdlora"]["trainable_params"] == 2 * (8 * 1 + 8 * 2 * 4 + 2 * (32 + 16))
    # peft's LoRA on dt_proj alone: transformers reads dt_proj.weight directly, so nothing trains; not timed
    r5 = rows["peft_lora_r5_unfused"]
    assert not r5["acts"] and r5["tensors_with_gradient"] == 0 and r5["ms_per_step"] is None
    assert any("peft_lora_r5_unfused: not timed" in n for n in rep["notes"])
    ratio = rep["ratios"]["fused"]["sdlora / lora_r2"]
    assert ratio["median"] > 0 and len(ratio["values"]) == 2
    assert "sdlora / mean of (lora_r2)" in rep["ratios"]["fused"]
    assert "ratio (fused)" in capsys.readouterr().out


def test_time_budget_stops_rounds_after_the_first(tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--preset", "tiny", "--methods", "lora_in_proj", "--rounds", "50", "--time-budget", "0.001",
                "--out", str(out)])
    rep = json.loads(out.read_text())
    assert rep["rounds_done"] == 1 and rep["stopped_by_time_budget"]


def test_fused_path_switch_is_transformers_own():
    """Off: the fused function returns None and the mixer runs its unfused path (same logits); on a CPU the
    torch fallback of the fused function returns None itself, so no kernel is counted."""
    torch.manual_seed(0)
    model = bench.build_base(bench.BenchConfig(**{**bench.PRESETS["tiny"], "preset": "tiny"}), torch.device("cpu"))
    ids = torch.randint(0, 64, (2, 8))
    model.train()
    with fused_path(model) as on:
        a = model(input_ids=ids).logits
    with fused_path(model, enabled=False) as off:
        b = model(input_ids=ids).logits
    assert on.calls == off.calls == 2 and on.kernel == off.kernel == 0
    assert torch.equal(a, b)


@pytest.mark.parametrize("argv, message", [
    (["--methods", "sdlora,nope"], "--methods: unknown"),
    (["--methods", "sdlora,sdlora"], "each method once"),
    (["--dtype", "float16"], "--dtype: one of"),
    (["--state-freeze", "1.0"], "--state-freeze: must be in [0, 1)"),
    (["--rounds", "0"], "--rounds: must be > 0"),
    (["--time-budget", "-1"], "--time-budget: must be >= 0"),
    (["--device", "tpu"], "--device: auto, cpu or cuda"),
])
def test_bad_options_are_one_line_errors(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        bench.main(["--preset", "tiny", "--out", str(tmp_path / "b.json"), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)


def test_a_report_of_another_configuration_is_kept(tmp_path, capsys):
    out = tmp_path / "bench.json"
    out.write_text(json.dumps({"device": "NVIDIA H100", "config": {"batch": 4}}))
    with pytest.raises(SystemExit):
        bench.main(["--preset", "tiny", "--out", str(out)])
    assert "--force" in capsys.readouterr().err


def test_docs_row_is_drawn_from_the_committed_report():
    """docs/benchmarks.md holds the row of figures/bench_real_models.json ('not measured yet' while it is absent);
    after a measurement: python -m ssm_peft.bench --summary, and paste the row."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    path = root / bench.REPORT
    row = bench.summary_row(json.loads(path.read_text()) if path.exists() else None)
    assert row in (root / "docs" / "benchmarks.md").read_text().splitlines()


def test_summary_row_of_a_report(tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--preset", "tiny", "--methods", "sdlora,lora_r2,peft_lora_r5_unfused", "--rounds", "1",
                "--out", str(out)])
    row = bench.summary_row(json.loads(out.read_text()))
    assert "2 × 16" in row and "SDLoRA over the mean of (lora_r2): " in row.replace("**", "")
    assert "peft_lora_r5_unfused not timed" in row and "not measured yet" not in row


def test_official_lora_baselines_have_the_official_counts():
    """Table 2's LoRA baselines at its width (768, 16 states) on two layers: x12 gives the official counts of
    furiosa-ai/ssm-peft at 24 layers (r2 411,648, r3 503,424, r5 466,560; notes/mamba.md); x_proj as one
    matrix (--no-x-proj-split) counts r2 264,192."""
    import copy

    cfg = bench.BenchConfig(n_layers=2, vocab_size=16, device="cpu")
    base = bench.build_base(cfg, torch.device("cpu"))
    counts = {}
    for key, split in (("lora_r2", True), ("lora_r3", True), ("lora_r5", True), ("lora_r2", False)):
        c = bench.BenchConfig(**{**bench.dataclasses.asdict(cfg), "x_proj_split": split})
        model = bench.METHODS[key].make(copy.deepcopy(base), c)
        counts[key, split] = 12 * sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts == {("lora_r2", True): 411_648, ("lora_r3", True): 503_424, ("lora_r5", True): 466_560,
                      ("lora_r2", False): 264_192}


def test_static_bytes_counts_each_storage_once():
    lin = torch.nn.Linear(4, 3)  # 12 + 3 float32
    opt = torch.optim.AdamW(lin.parameters())
    lin(torch.randn(2, 4)).sum().backward()
    opt.step()  # exp_avg, exp_avg_sq per parameter, and a step count per parameter
    lin.register_buffer("alias", lin.weight.data)  # shares the weight's storage: not counted again
    steps = sum(s["step"].untyped_storage().nbytes() for s in opt.state.values())
    assert bench._static_bytes(lin, opt) == 3 * 4 * 15 + steps


def test_default_preset_is_cpu_and_writes_an_uncommitted_path():
    assert bench.BenchConfig().preset == "cpu"
    cpu = bench.PRESETS["cpu"]
    assert cpu["device"] == "cpu" and cpu["out"].startswith("out/")
    assert bench.PRESETS["paper"] == {} and bench.BenchConfig().out == "figures/bench_real_models.json"
