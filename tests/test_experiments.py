"""The experiment registry: ``python -m synthetic --list`` names every experiment, ``python -m synthetic <name>``
runs it, and a new experiment is one config (a :class:`synthetic.cli.SweepConfig`) plus one registered spec."""

import subprocess
import sys
from dataclasses import dataclass
from typing import Tuple

import pytest

from synthetic import experiments
from synthetic.cli import SweepConfig, key_config, option, parse_options, redefault

EXPECTED = {"s4", "s4_official", "s4_theorem1", "mamba", "mamba2", "hybrid"}


def test_list_names_every_experiment():
    r = subprocess.run([sys.executable, "-m", "synthetic", "--list"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    entries = [line for line in r.stdout.splitlines() if line.strip() and not line[0].isspace()]  # not wrapped parts
    assert {line.split()[0] for line in entries} == EXPECTED
    assert max(len(line) for line in r.stdout.splitlines()) <= experiments.WIDTH


def test_unknown_experiment_is_exit_2(capsys):
    assert experiments.main(["no-such"]) == 2 and "unknown experiment" in capsys.readouterr().err


@dataclass(frozen=True)
class ToyConfig(SweepConfig):
    width: int = option(3, "model width")
    scale: float = option(1.0, "target scale")
    seeds: Tuple[int, ...] = redefault("seeds", (0, 1))


TOY_PRESETS = {"cpu": {}, "tiny": dict(width=2)}


def toy_main(argv=None) -> int:
    cfg, _ = parse_options(ToyConfig, TOY_PRESETS, argv, prog="python -m synthetic toy", description="a toy")
    print("toy", cfg.preset, cfg.width, cfg.time_budget, sorted(key_config(cfg)))
    return 0


def test_a_registered_toy_experiment_runs_through_the_entry_point(capsys, tmp_path):
    spec = experiments.Spec("toy", "a toy experiment", f"{__name__}:ToyConfig", f"{__name__}:TOY_PRESETS", toy_main)
    experiments.register(spec)
    try:
        assert "toy" in experiments.listing()
        assert experiments.main(["toy", "--preset", "tiny", "--time-budget-s", "5", "--out", str(tmp_path)]) == 0
        out = capsys.readouterr()
        assert "toy tiny 2 5.0 ['scale', 'width']" in out.out and "--time-budget" in out.err  # deprecated spelling
        with pytest.raises(ValueError):
            experiments.register(spec)
    finally:
        experiments.REGISTRY.pop("toy")
