"""synthetic.records: one schema; old records load through the normaliser; committed results resume with
nothing left to do in their base grid."""

import dataclasses
from pathlib import Path
from typing import Dict, Tuple

import pytest

from synthetic.cli import fields_from_record_config

from synthetic import dry_run
from synthetic.records import RUN_FIELDS, normalise, infer_from_path
from synthetic.results import ResultsFile

FIGURES = Path(__file__).resolve().parent.parent / "figures"
COMMITTED = sorted(p for p in FIGURES.glob("*.jsonl")
                   if p.name.startswith(("s4_regression_", "mamba_regression_", "peft_methods_")))


def test_old_mamba_record_is_renamed_and_completed():
    old = {"key": "k", "method": "SDT", "budget": {"channels": 4}, "lr": 0.01, "seed": 1, "trainable_count": 7,
           "wall_time_s": 2.0, "backend": "reference", "config": {"model_seed": 3, "d_model": 8}}
    new = normalise(old, **infer_from_path("figures/mamba_regression_tiny.jsonl"))
    assert new["trainable"] == 7 and new["wall_s"] == 2.0 and "trainable_count" not in new
    assert (new["experiment"], new["preset"], new["kind"], new["model_seed"]) == ("mamba", "tiny", "run", 3)
    assert normalise(new) == new  # idempotent
    assert {k: v for k, v in old.items() if k not in ("trainable_count", "wall_time_s")}.items() <= new.items()


def test_old_official_records_and_sweep_records():
    run = normalise({"key": "k", "seed": 124, "total_params": 10, "config": {"preset": "official", "sdt_score": "x"}})
    assert (run["experiment"], run["preset"], run["model_seed"], run["frozen_params"]) == ("s4_official",
                                                                                           "official", 124, 10)
    sweep = normalise({"key": "sweep@2026-11-26T00:00:00Z", "wall_s": 3.0})
    assert sweep["kind"] == "sweep" and "model_seed" not in sweep


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_committed_results_are_in_the_current_schema(path):
    recs = ResultsFile(path).load()
    assert [normalise(r) for r in recs] == recs
    fields = [f for f, _, _ in RUN_FIELDS]
    for r in ResultsFile(path).runs():
        missing = [f for f in fields if f not in r]
        assert not missing or r["status"].startswith("error"), (r["key"][:60], missing)


def _experiment_for(path: Path):
    """The experiment (config) that wrote a committed results file, rebuilt from its records."""
    runs = ResultsFile(path).runs()
    r0 = runs[0]
    seeds = tuple(sorted({r["seed"] for r in runs}))
    methods = tuple(dict.fromkeys(r["method"] for r in runs))
    grids = [{r["lr"] for r in runs if r["method"] == m and r["lr_source"] == "grid"} for m in methods]
    lrs = tuple(sorted(set.intersection(*[g for g in grids if None not in g and 0.0 not in g])))  # every method's
    if r0["experiment"] == "mamba":
        from synthetic.mamba import config as mcfg, experiment as mr

        c = fields_from_record_config(mcfg.MambaRegressionConfig, r0["config"])
        c.update(seeds=seeds, lrs=lrs, methods=methods, dry_run=True, out=str(path.parent))
        cfg = mcfg.make(r0["preset"], **c)
        if any(m in mcfg.BENCHMARK_ORDER for m in methods):
            cfg = dataclasses.replace(cfg, methods=mcfg.ALL_METHODS)
        return mr.MambaExperiment(cfg)
    c = {k: tuple(v) if isinstance(v, list) else v for k, v in r0["config"].items()}
    c["out"] = str(path.parent)  # the run wrote elsewhere (a GPU machine's folder)
    if r0["experiment"] == "s4_official":
        from synthetic.s4 import official as soc, official_experiment as so

        return so.OfficialExperiment(soc.OfficialConfig(**fields_from_record_config(soc.OfficialConfig, c)))
    from synthetic.s4 import config as s4c, experiment as s4r

    c = {**s4c.PRESETS.get(r0["preset"], {}), **fields_from_record_config(s4c.Config, c)}  # older records: preset's
    c.update(methods=methods, seeds=seeds)  # a sweep split over processes by method: the whole file's
    return s4r.S4Experiment(s4c.Config(**c))


# Base-grid runs a committed file still lacks, and why (nothing else may be missing): {file name: ({method: runs},
# why)}. Empty since 2026-12-08, when the GPU campaign ran the Mamba paper file's last 16 DoRA (Proj) runs.
INCOMPLETE: Dict[str, Tuple[Dict[str, int], str]] = {}


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_committed_results_resume_with_no_base_run_to_do(path):
    exp = _experiment_for(path)
    assert Path(exp.results_path).resolve() == path.resolve()
    p = dry_run.plan(exp)
    todo = {m: r["runs"] - r["runs_done"] for m, r in p["methods"].items() if r["runs"] > r["runs_done"]}
    assert todo == INCOMPLETE.get(path.name, ({}, ""))[0], dry_run.format_plan(p)
