"""Adding a PEFT method is one registry entry per experiment: a method registered at run time (train only the
skip ``u`` / ``D``) runs through the whole sweep, with its budget, label and trainable count, and nothing else
to edit."""

import torch

from synthetic.mamba import experiment as mamba_experiment
from synthetic.mamba import peft as mpeft
from synthetic.results import ResultsFile, run_records
from synthetic.s4 import experiment as s4r
from synthetic.s4 import methods as s4m


def _skip_only(state, budget, selection):
    for m in state.mask:
        m["u"][:] = True


def _theory_skip(base, budget, selection):
    from theory.peft import MaskedParameter, Role

    return [MaskedParameter(b["u"].cpu(), torch.full(b["u"].shape, int(Role.TRAINABLE), dtype=torch.int8))
            for b in base]


def test_a_new_s4_method_is_one_registry_entry(tmp_path, monkeypatch):
    entry = s4m.Method("Skip only", lambda c: [{"skip_u": True}], _skip_only, _theory_skip, own_extra=("u",))
    monkeypatch.setitem(s4m.METHODS, "Skip only", entry)
    argv = ["--preset", "tiny", "--no-compile", "--device", "cpu", "--seeds", "0", "--lrs", "1e-2",
            "--lr-extend-factor", "0", "--methods", "Skip only", "--out", str(tmp_path)]
    for extra in ([], ["--train-skip-dt-bias"]):
        s4r.main(argv + extra)
    recs = run_records(ResultsFile(tmp_path / "s4_regression_tiny.jsonl").load())
    assert len(recs) == 2 and {r["method"] for r in recs} == {"Skip only"}
    for r in recs:
        assert r["budget_label"] == "skip_u=True"  # a label without a table entry
        assert r["trainable"] == r["trainable_theory"]
    plain, extra = sorted(recs, key=lambda r: r["trainable"])
    assert plain["trainable"] == 2 * 6  # u of both layers (D = 6), counted once
    assert extra["trainable"] > plain["trainable"]  # + log_dt and beta, u not counted twice


def test_a_new_mamba_method_is_one_registry_entry(tmp_path, monkeypatch):
    entry = mpeft.Method("D only", lambda b: mpeft.MambaPeftConfig(full=("D",)), lambda c: [{}])
    monkeypatch.setitem(mpeft.METHODS, "D only", entry)
    mamba_experiment.main(["--preset", "tiny", "--backend", "reference", "--methods", "D only",
                           "--lr-extend-factor", "0", "--out", str(tmp_path)])
    recs = run_records(ResultsFile(tmp_path / "mamba_regression_tiny.jsonl").load())
    assert [r["method"] for r in recs] == ["D only"]  # in the grid, not silently dropped
    assert recs[0]["trainable"] == 2 * 16  # D of both blocks: d_inner = 2 x 8
