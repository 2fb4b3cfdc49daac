"""L* ∤ L at D = 3, L = 3, L* = 2: an update with ⌈D·L*/L⌉ = 2 channels per layer, one state each,
LoRA rank 2 and the last W full equals the target (checked by deep_forward, FFT and recurrence),
with the budget recounted from the tensors; a one-pole perturbation breaks it."""

import json
from dataclasses import replace

import pytest
import torch

from theory import nondividing as nd
from theory.deep import deep_forward
from theory.ssm import DiagonalSSM
from theory.tolerances import BREAK_RTOL, DEEP_RTOL, rel_err


@pytest.fixture(scope="module")
def update():
    return nd.find_update(1, max_tries=5, alpha2_layer=2)


def test_update_equals_target(update):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 3, 30, generator=g, dtype=torch.float64)
    assert rel_err(deep_forward(update.model, x), deep_forward(update.target, x)) <= DEEP_RTOL[torch.float64]
    x = x[:1, :, :12]
    assert rel_err(deep_forward(update.model, x, reference=True),
                   deep_forward(update.target, x, reference=True)) <= DEEP_RTOL[torch.float64]


def test_budget_recounted(update):
    rc = nd.recount(update)
    assert rc["channels"] == [2, 2, 2] and max(rc["states"]) == 1
    assert rc["W_rank"][:2] == [2, 2]  # LoRA rank ⌈D·L*/L⌉ = 2 < ⌈D/⌊L/L*⌋⌉ = 3
    for f, m in zip(update.frozen.layers, update.model.layers):
        assert torch.equal(m.ssm.B_bar[:2, 0], f.ssm.B_bar[:2, 0])  # B̄ frozen on the tuned states
        assert float(m.u[:2].abs().max()) == 0.0  # tuned channels have no skip (forced by the determinant)
    # some frozen layer holds poles of both target layers (α: layer 1, β: layer 2)
    assert any({name[0] for name in pair} == {"α", "β"} for pair in update.layer_poles)


def test_a_perturbed_pole_breaks_equality(update):
    layers = list(update.model.layers)
    s = layers[1].ssm
    a = s.A_bar.clone()
    a[0, 0] += 1e-3
    layers[1] = replace(layers[1], ssm=DiagonalSSM(a, s.B_bar, s.C))
    x = torch.randn(2, 3, 30, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    assert rel_err(deep_forward(update.model.with_layers(layers), x), deep_forward(update.target, x)) > BREAK_RTOL


def test_refusal():
    with pytest.raises(ValueError, match="alpha2_layer"):
        nd.find_update(0, alpha2_layer=0)


def test_survey_cli_refuses_bad_counts(capsys):
    with pytest.raises(SystemExit) as e:
        nd.main(["--targets", "0"])
    assert e.value.code == 2 and "--targets" in capsys.readouterr().err


def test_cli_prints_and_appends_each_result_as_it_comes(tmp_path, monkeypatch, capsys):
    """Results are printed and written per (target, placement); a run cut off keeps them."""
    calls = []

    def fake(seed, max_tries, alpha2_layer):
        calls.append((seed, alpha2_layer))
        if len(calls) == 3:
            raise KeyboardInterrupt  # the run is cut off during the second target
        raise nd.NotFound("no start converged", residual=0.5)

    monkeypatch.setattr(nd, "find_update", fake)
    out = tmp_path / "survey.jsonl"
    with pytest.raises(KeyboardInterrupt):
        nd.main(["--targets", "2", "--tries", "1", "--out", str(out)])
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["seed"], r["alpha2_layer"], r["solved"]) for r in recs] == [(0, 2, False), (0, 3, False)]
    assert capsys.readouterr().out.count("not solved (best residual 5.0e-01") == 2
