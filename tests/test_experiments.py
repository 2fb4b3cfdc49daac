"""The experiment registry: ``python -m synthetic --list`` names every experiment, ``python -m synthetic <name>``
runs it, and a new architecture is a reference block, a methods registry, a config (a
:class:`synthetic.cli.SweepConfig`), a sweep and a :class:`synthetic.command.Command`, plus one registered spec."""

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
import torch

from synthetic import experiments
from synthetic.cli import SweepConfig, key_config, option, redefault
from synthetic.command import Command
from synthetic.results import LrPolicy, ResultsFile, run_key
from synthetic.runner import Group

EXPECTED = {"s4", "s4_official", "s4_theorem1", "mamba", "mamba2", "hybrid"}


def test_list_names_every_experiment():
    r = subprocess.run([sys.executable, "-m", "synthetic", "--list"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    entries = [line for line in r.stdout.splitlines() if line.strip() and not line[0].isspace()]  # not wrapped parts
    assert {line.split()[0] for line in entries} == EXPECTED
    assert max(len(line) for line in r.stdout.splitlines()) <= experiments.WIDTH


def test_unknown_experiment_is_exit_2(capsys):
    assert experiments.main(["no-such"]) == 2 and "unknown experiment" in capsys.readouterr().err


# ------------------------------------------------------------------ a toy architecture, added as the README says
def toy_block(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The toy's reference block: a diagonal linear recurrence h_t = a * h_{t-1} + b * x_t per channel.
    a, b: (D,); x: (B, N, D); returns h: (B, N, D)."""
    h, out = torch.zeros_like(x[:, 0]), []
    for t in range(x.shape[1]):
        h = a * h + b * x[:, t]  # (B, D)
        out.append(h)
    return torch.stack(out, dim=1)


@dataclass(frozen=True)
class ToyMethod:
    """A PEFT method of the toy: which of (a, b) it trains, on how many channels (its budgets)."""

    trains: Tuple[str, ...]
    budgets: Callable[["ToyConfig"], List[Dict]] = lambda cfg: [{}]


TOY_METHODS = {"Frozen": ToyMethod(()),
               "Decay": ToyMethod(("a",), lambda cfg: [{"channels": c} for c in cfg.channels]),
               "Full": ToyMethod(("a", "b"))}


@dataclass(frozen=True)
class ToyConfig(SweepConfig):
    """The toy's model and training fields (the sweep's fields are SweepConfig's)."""

    width: int = option(3, "model width")
    seq_len: int = option(6, "sequence length")
    iters: int = option(20, "Adam iterations per run")
    channels: Tuple[int, ...] = option((1, 2), "Decay's budgets: channels whose decay is trained", key=False)
    seeds: Tuple[int, ...] = redefault("seeds", (0, 1))
    lrs: Tuple[float, ...] = redefault("lrs", (1e-2, 1e-1))
    methods: Tuple[str, ...] = redefault("methods", tuple(TOY_METHODS))


TOY_PRESETS = {"cpu": {}, "paper": dict(width=64, iters=500, out="figures"),
               "tiny": dict(width=2, iters=5, channels=(1,))}


class ToyExperiment:
    """The toy's sweep for synthetic.runner.run_sweep: fit a frozen recurrence to a target one."""

    name = "toy"
    max_runs_per_call, pad_calls = 1, False

    def __init__(self, cfg: ToyConfig, log=print):
        self.cfg, self.log = cfg, log
        self.preset, self.seeds, self.base_lrs = cfg.preset, cfg.seeds, cfg.lrs
        self.lr_policy = LrPolicy.from_config(cfg)
        self.results_path = ToyCommand().results_path(cfg)

    def describe(self) -> str:
        return f"toy, preset {self.preset}"

    def groups(self) -> List[Group]:
        return [Group(s, m, b, self.cfg.lrs if TOY_METHODS[m].trains else (0.0,), grows=bool(TOY_METHODS[m].trains))
                for s in self.cfg.seeds for m in self.cfg.methods for b in TOY_METHODS[m].budgets(self.cfg)]

    def key(self, seed, method, budget, lr) -> str:
        return run_key({"method": method, "budget": budget, "lr": lr, "seed": seed, "config": key_config(self.cfg)})

    def train(self, runs) -> List[Dict]:
        (run,), c = runs, self.cfg
        g = torch.Generator().manual_seed(run.seed)
        frozen, target = torch.rand(2, c.width, generator=g), torch.rand(2, c.width, generator=g)
        params = {"a": frozen[0].clone(), "b": frozen[1].clone()}
        method = TOY_METHODS[run.method]
        mask = torch.arange(c.width) < run.budget.get("channels", c.width)  # (D,) the channels it trains
        trained = [params[k].requires_grad_() for k in method.trains]
        x = torch.randn(4, c.seq_len, c.width, generator=g)  # (B, N, D)
        y = toy_block(target[0], target[1], x)
        opt = torch.optim.Adam(trained, lr=run.lr) if trained else None
        curve = []
        for _ in range(c.iters if trained else 1):
            a = torch.where(mask, params["a"], frozen[0]) if "a" in method.trains else params["a"]
            loss = torch.mean((toy_block(a, params["b"], x) - y) ** 2)
            curve.append(float(loss.detach()))
            if opt:
                opt.zero_grad()
                loss.backward()
                opt.step()
        n = sum(int(mask.sum()) if k == "a" else c.width for k in method.trains)
        return [{"method": run.method, "budget": dict(run.budget), "budget_label": ",".join(
                 f"{k}={v}" for k, v in sorted(run.budget.items())) or "-", "lr": run.lr, "seed": run.seed,
                 "status": "ok", "best_mse": min(curve), "final_mse": curve[-1], "trainable": n,
                 "trainable_pct": 100.0 * n / (2 * c.width), "config": key_config(c), "wall_s": 0.0}]


class ToyCommand(Command):
    """The toy's command: what it is called, its config, results file and sweep; the rest is the defaults."""

    name, config, presets = "toy", ToyConfig, TOY_PRESETS
    method_order, title = tuple(TOY_METHODS), "Toy regression"

    def results_path(self, cfg) -> Path:
        return Path(cfg.out) / f"toy_{cfg.preset}.jsonl"

    def figure_stem(self, cfg) -> Path:
        return Path(cfg.out) / f"toy_mse_vs_params_{cfg.preset}"

    def experiment(self, cfg):
        return ToyExperiment(cfg, self.log)


@pytest.fixture
def toy():
    spec = experiments.register(experiments.Spec("toy", "a toy experiment", ToyCommand))
    yield spec
    experiments.REGISTRY.pop("toy")


def test_a_registered_toy_architecture_runs_end_to_end_through_the_one_command_flow(toy, capsys, tmp_path):
    assert "toy" in experiments.listing() and "[cpu,paper,tiny]" in experiments.listing()
    argv = ["toy", "--preset", "tiny", "--out", str(tmp_path)]
    assert experiments.main(argv + ["--time-budget-s", "60"]) == 0
    out = capsys.readouterr()
    assert "--time-budget" in out.err  # the deprecated spelling works, with a message
    recs = ResultsFile(tmp_path / "toy_tiny.jsonl").runs()
    assert {r["method"] for r in recs} == set(TOY_METHODS) and {r["seed"] for r in recs} == {0, 1}
    assert all(r["experiment"] == "toy" and r["preset"] == "tiny" for r in recs)
    table = out.out.split("wrote ")[0]
    assert table.splitlines()[0].split() == ["method", "budget", "trainable", "%", "best", "MSE", "lr", "lr", "edge"]
    assert [line.split()[0] for line in table.splitlines()[1:]] == ["Frozen", "Decay", "Full"]
    assert f"wrote {tmp_path / 'toy_mse_vs_params_tiny.png'}" in out.out
    assert (tmp_path / "toy_mse_vs_params_tiny.png").stat().st_size > 0
    assert experiments.main(argv + ["--dry-run"]) == 0  # resumed: nothing left to do
    assert "\n0 base-grid runs to do, 0 lr-extension runs next" in capsys.readouterr().out
    assert experiments.main(argv + ["--plot-only"]) == 0
    assert capsys.readouterr().out.startswith(table)
    with pytest.raises(ValueError):
        experiments.register(toy)


def test_the_toy_command_refuses_bad_input_before_anything_runs(toy, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        experiments.main(["toy", "--width", "x", "--out", str(tmp_path)])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        experiments.main(["toy", "--plot-only", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "python -m synthetic toy: error: --plot-only: no results in" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
