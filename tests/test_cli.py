"""Entry points answer bad input the argparse way: one 'error:' line naming the option, exit status 2,
no traceback."""

import subprocess
import sys

import pytest
import torch

import theory.__main__ as theory_main
from synthetic import bench, gpu_queue, report
from synthetic.mamba import experiment as mamba_regression
from synthetic.s4 import experiment as s4r
from theory import capacity

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="runs on a machine without CUDA (it checks the no-CUDA message)")


def _fails(main, argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    (line,) = [ln for ln in err.splitlines() if "error:" in ln]
    assert needle in line and "Traceback" not in err, err
    return line


def test_theory_only_names_the_known_claims(capsys):
    line = _fails(theory_main.main, ["--only", "no-such-claim"], "--only: no claim matches 'no-such-claim'", capsys)
    assert "Proposition 1" in line and "Lemma 2" in line


def test_theory_only_from_the_shell_has_no_traceback():
    r = subprocess.run([sys.executable, "-m", "theory", "--only", "no-such-claim"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "known claims" in r.stderr


def test_capacity_replot_without_results(tmp_path, capsys):
    _fails(capacity.main, ["--replot", "--out", str(tmp_path / "none.json")], "--replot: no results file", capsys)


def test_s4_plot_only_without_results(tmp_path, capsys):
    _fails(s4r.main, ["--preset", "tiny", "--plot-only", "--out", str(tmp_path)], "--plot-only: no results", capsys)


@NO_CUDA
def test_cuda_device_without_cuda(capsys):
    _fails(s4r.main, ["--preset", "tiny", "--device", "cuda"], "--device: 'cuda' requested", capsys)
    _fails(bench.main, ["--preset", "tiny", "--device", "cuda"], "--device: 'cuda' requested", capsys)
    _fails(mamba_regression.main, ["--preset", "tiny", "--device", "cuda"], "--device: 'cuda' requested", capsys)


@pytest.mark.parametrize("argv, needle", [
    (["--d-model", "0"], "--d-model: must be >= 1"), (["--lrs", "1e-2,-1"], "--lrs: must be finite and >= 0"),
    (["--backend", "foo"], "--backend: one of"), (["--iters", "x"], "--iters: invalid int value"),
    (["--seeds", ""], "--seeds: need at least one seed"), (["--lr-extend-factor", "1"], "--lr-extend-factor")])
def test_mamba_regression_bad_options(argv, needle, capsys):
    _fails(mamba_regression.main, ["--preset", "tiny"] + argv, needle, capsys)


def test_mamba_bench_bad_options(capsys):
    _fails(bench.main, ["--mamba", "--preset", "tiny", "--d-model", "0"], "--d-model: must be >= 1", capsys)


# ------------------------------------------------------------------------------------ one grammar
SPELLINGS = [  # (module, deprecated spelling, its current spelling)
    ("synthetic.mamba.config", ["--time-budget-s", "5"], ["--time-budget", "5"]),
    ("synthetic.mamba.config", ["--dry-run", "true"], ["--dry-run"]),
    ("synthetic.mamba.config", ["--fused", "false"], ["--no-fused"]),
    ("synthetic.mamba.config", ["--sdt-channels", "4"], ["--sdt", "4"]),
    ("synthetic.mamba.config", ["--sdt-lora", "4x1"], ["--sdt-lora", "4:1"]),
    ("synthetic.mamba2.config", ["--sdt-lora", "2x1x1"], ["--sdt-lora", "2x1:1"]),
    ("synthetic.hybrid.config", ["--lin-rank", "1", "--ssm-ranks", "1", "--proj-ranks", "1", "--sdt-channels", "4"],
     ["--lin-lora-rank", "1", "--ssm-lora-ranks", "1", "--proj-lora-ranks", "1", "--sdt", "4"]),
    ("synthetic.s4.config", ["--D", "8", "--H", "4", "--H-star", "2", "--L-frozen", "2", "--L-target", "1", "--N", "8",
                             "--sdt-budgets", "2x1", "--sdt-lora-budgets", "2x1:1", "--s4-lora-ranks", "1,1"],
     ["--d-model", "8", "--frozen-d-state", "4", "--target-d-state", "2", "--frozen-layers", "2", "--target-layers",
      "1", "--seq-len", "8", "--sdt", "2x1", "--sdt-lora", "2x1:1", "--ssm-lora-ranks", "1,1"]),
]


@pytest.mark.parametrize("module, old, new", SPELLINGS, ids=lambda x: " ".join(x) if isinstance(x, list) else x)
def test_deprecated_spellings_give_the_same_config_and_say_so(module, old, new, capsys, tmp_path):
    import importlib

    mod = importlib.import_module(module)
    parse = getattr(mod, "parse_args", None) or mod.parse_config
    base = ["--preset", "tiny", "--out", str(tmp_path)]
    a = parse(base + old)
    msg = capsys.readouterr().err
    assert parse(base + new) == a
    assert msg.count("deprecated") >= 1 and "use " in msg


def test_old_s4_preset_name_is_the_cpu_preset(capsys):
    from synthetic.s4 import config as s4c

    assert s4c.parse_config(["--preset", "default"]) == s4c.parse_config([])
    assert "--preset cpu" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["--preset", "default"]], ids=["no preset", "old name"])
def test_bench_defaults_to_the_cpu_preset_and_takes_the_old_name(argv, tmp_path, capsys):
    """``python -m synthetic.bench`` times the cpu preset's sizes (the paper's need ``--preset paper``); the old
    preset name still works, with a one-line message naming the new one."""
    import json

    out = tmp_path / "bench.json"
    assert bench.main(argv + ["--methods", "SDT", "--iters", "1", "--warm", "1", "--device", "cpu",
                              "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["config"]["D"] == 16 and report["precision_check"] == []  # cpu sizes; no fp32-vs-TF32 check
    err = capsys.readouterr().err
    assert ("--preset default is deprecated" in err and "use --preset cpu" in err) == bool(argv)


@pytest.mark.parametrize("module", ["synthetic.s4.config", "synthetic.mamba.config", "synthetic.mamba2.config",
                                    "synthetic.hybrid.config", "synthetic.s4.theorem1_study"])
def test_help_shows_the_chosen_presets_values_and_the_shared_names(module, capsys):
    import importlib

    mod = importlib.import_module(module)
    parse = getattr(mod, "parse_args", None) or mod.parse_config
    with pytest.raises(SystemExit):
        parse(["--preset", "paper", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for opt in ("--time-budget", "--dry-run | --no-dry-run", "--d-model", "--seq-len", "--frozen-layers", "--sdt",
                "--threads", "--out", "--seeds", "--preset"):
        assert opt in text, (module, opt)
    assert "(default: figures)" in text  # the paper preset's folder, not the class default
    assert "(default: 64)" in text  # d_model of every paper preset


def _helps():
    from synthetic import experiments, s4_fig2

    for name, spec in experiments.REGISTRY.items():
        yield name, spec.run
    yield "bench", bench.main
    yield "bench --mamba", lambda argv: bench.main(["--mamba", *argv])
    yield "s4_fig2", s4_fig2.main
    yield "report", report.main
    yield "gpu_queue", gpu_queue.main


@pytest.mark.parametrize("name,main", list(_helps()), ids=[n for n, _ in _helps()])
def test_help_is_plain_text_and_says_what_every_option_is(name, main, capsys, monkeypatch):
    """--help has no reStructuredText/Sphinx markup (``...``, :class:`...`), fits a 100-column terminal and has no
    option without a help text."""
    import re

    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps the option help to the terminal's width
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert not re.search(r"``|:[a-z]+:`", text), (name, re.findall(r".*(?:``|:[a-z]+:`).*", text))
    assert max(len(line) for line in text.splitlines()) <= 100, (name, max(text.splitlines(), key=len))
    options = text.split("options:", 1)[1].splitlines()
    for i, line in enumerate(options):  # an option line with nothing after it and no indented help below
        m = re.match(r"  (-\S+(?:, -\S+)*)(?: [A-Z_,{}.|a-z0-9-]+)?$", line)
        if m and m.group(1) not in ("-h, --help",):
            below = options[i + 1] if i + 1 < len(options) else ""
            assert below.startswith(" " * 10) and below.strip(), (name, line)
