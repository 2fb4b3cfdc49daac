"""Entry points answer bad input the argparse way: one 'error:' line naming the option, exit status 2,
no traceback."""

import subprocess
import sys

import pytest
import torch

import theory.__main__ as theory_main
from synthetic import bench
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
    (["--backend", "foo"], "--backend: one of"), (["--iters", "x"], "--iters: invalid literal"),
    (["--seeds", ""], "--seeds: need at least one seed"), (["--lr-extend-factor", "1"], "--lr-extend-factor")])
def test_mamba_regression_bad_options(argv, needle, capsys):
    _fails(mamba_regression.main, ["--preset", "tiny"] + argv, needle, capsys)


def test_mamba_bench_bad_options(capsys):
    _fails(bench.main, ["--mamba", "--preset", "tiny", "--d-model", "0"], "--d-model: must be >= 1", capsys)
