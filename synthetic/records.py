"""The one record schema of every synthetic experiment's results file, and the normaliser old files load through.

A results file (``figures/<experiment>_<preset>.jsonl``) holds one record per line (JSON Lines; the format and its
encoding: :class:`synthetic.results.ResultsFile`; older files were one JSON list). Every record has a
``kind``: ``"run"`` (one training run) or ``"sweep"`` (one invocation of the sweep: its wall time and
counts). :data:`RUN_FIELDS` lists the fields every run record carries, whatever the experiment;
:data:`EXPERIMENT_FIELDS` the ones an experiment adds. Files written before this schema (Mamba's
``trainable_count`` / ``wall_time_s``, the official preset's ``total_params``; no ``experiment``,
``preset``, ``model_seed``, ``kind``, or ``lr_source`` from before grids grew) load through :func:`normalise`: field renames and additions only,
run keys unchanged, values untouched. ``scripts/migrate_results.py`` moves old ``.json`` lists to ``.jsonl`` with it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, Optional

__all__ = ["canonical", "run_key", "RUN_FIELDS", "SWEEP_FIELDS", "EXPERIMENT_FIELDS", "RENAMED", "normalise",
           "infer_from_path", "schema_table"]


def canonical(v: Any) -> Any:
    """JSON-normal form: dict keys sorted, tuples as lists."""
    if isinstance(v, dict):
        return {str(k): canonical(v[k]) for k in sorted(v, key=str)}
    if isinstance(v, (list, tuple)):
        return [canonical(x) for x in v]
    return v


def run_key(config: Dict[str, Any]) -> str:
    """Canonical key of a run: compact JSON of ``config`` with sorted keys (order-independent)."""
    if not isinstance(config, dict):
        raise ValueError(f"config: expected a dict, got {type(config).__name__}")
    return json.dumps(canonical(config), sort_keys=True, separators=(",", ":"), allow_nan=False)


RUN_FIELDS = (
    ("key", "str", "canonical JSON of what identifies the run's result (synthetic.results.run_key); resume and "
                   "duplicates go by it"),
    ("kind", "str", '"run"'),
    ("experiment", "str", '"s4" (paper conventions), "s4_official" (the official code\'s conventions), "s4_theorem1" '
                          '(the Theorem 1 training study), "mamba", "mamba2" (Mamba-II, SSD) or "hybrid"'),
    ("preset", "str", "the named configuration (--preset) the run belongs to"),
    ("method", "str", "registry name of the PEFT method, e.g. \"SDT + LoRA\""),
    ("budget", "dict", "the method's budget (ranks, channels, states, ...); part of the key"),
    ("budget_label", "str", "the budget as text, the summary's grouping key"),
    ("lr", "float | null", "learning rate (null, or 0.0 in Mamba files, for an untrained Frozen run)"),
    ("seed", "int", "data (and adapter initialisation) seed"),
    ("model_seed", "int", "the seed that drew the frozen and target models: the run's seed in the deep-S4 "
                          "experiments; in the Mamba and hybrid experiments the config's model_seed, fixed for every run "
                          "(seeds there vary data and adapters only)"),
    ("status", "str", '"ok", "diverged" (a non-finite loss) or "error: <Exception>"'),
    ("best_mse", "float | null", "lowest training-batch MSE (Mamba: lowest evaluation MSE); null unless ok"),
    ("final_mse", "float | null", "MSE at the end of training"),
    ("trainable", "int", "trainable parameters (what the optimizer updates)"),
    ("frozen_params", "int", "parameters of the frozen model (the percentage's denominator)"),
    ("trainable_pct", "float", "100 * trainable / frozen_params"),
    ("loss_curve", "list", "training losses ([[iteration, loss], ...] subsampled in deep S4; every iteration "
                           "in Mamba)"),
    ("wall_s", "float", "seconds of training per run (deep S4: a call's wall time / the runs it recorded; before "
                        "2026-12-07 / its runs with the padding of a compiled call)"),
    ("lr_source", "str", '"grid" (the base grid) or "extension" (added where a best lr sat at an edge, or further out '
                         'in the padding of a compiled call: synthetic.sweep_plan.fill_ahead)'),
    ("config", "dict", "the experiment's configuration (the fields in the key, and in deep S4 all of it)"),
    ("device", "str", "the device name (GPU model or \"cpu\")"),
    ("commit", "str", "git commit of the code that ran ($GIT_COMMIT where set)"),
    ("date", "str | null", "UTC time the record was written (ISO 8601); null in records from before dates were kept"),
)
SWEEP_FIELDS = (
    ("key", "str", '"sweep@<UTC time, microseconds>", then "@shard<i>of<n>" / "@rank<r>" (a shard, a rank)'),
    ("kind", "str", '"sweep"'), ("experiment", "str", "as above"),
    ("preset", "str", "as above"), ("wall_s", "float", "the invocation's wall time"),
    ("runs", "int", "runs recorded by it"), ("calls", "int", "train calls"), ("groups_run", "int", "base-grid groups"),
    ("extension_rounds", "int", "lr-extension rounds"), ("extension_runs", "int", "runs those rounds added"),
    ("stopped", "bool", "stopped by the time budget"), ("shard", "str | null", '"i/n" for a shard'),
)
EXPERIMENT_FIELDS = {
    "s4": ("trainable_theory", "iters", "best_mse_before_divergence", "group_wall_s", "runs_in_group", "warmup_s",
           "torch", "precision", "compiled"),
    "s4_official": ("eval_mse", "iters", "warmup_losses", "group_wall_s", "runs_in_group", "torch", "compiled"),
    # the Theorem 1 training study (synthetic.s4.theorem1_study): the s4 fields plus the arm's
    "s4_theorem1": ("trainable_theory", "iters", "best_mse_before_divergence", "group_wall_s", "runs_in_group",
                    "warmup_s", "torch", "precision", "compiled", "arm", "activation", "start_mse", "selection",
                    "exact_mse64", "study_config"),
    "mamba": ("eval_curve", "sdt_channels", "sdt_states", "backend", "mamba_ssm_version", "fused", "fused_fallback"),
    # Mamba-II: sdt_channels = SDT's heads per layer, sdt_states = its states per layer and B/C group
    "mamba2": ("eval_curve", "sdt_channels", "sdt_states", "backend", "mamba_ssm_version", "fused"),
    "hybrid": ("eval_curve", "sdt_channels", "layer_kinds", "backend", "mamba_ssm_version", "fused", "fused_fallback"),
}
RENAMED = {"trainable_count": "trainable", "wall_time_s": "wall_s", "total_params": "frozen_params"}

_OFFICIAL_PRESETS = ("official", "official-tiny")
_FILE = re.compile(r"^(s4_regression|peft_methods_s4|mamba_regression|peft_methods_mamba)_(.+?)(\.shard\d+of\d+)?$")


def infer_from_path(path) -> Dict[str, Optional[str]]:
    """``{"experiment", "preset"}`` from a results file's name (None where the name does not say)."""
    m = _FILE.match(Path(path).stem)
    if not m:
        return {"experiment": None, "preset": None}
    stem, preset = m.group(1), m.group(2)
    exp = "mamba" if "mamba" in stem else ("s4_official" if preset in _OFFICIAL_PRESETS else "s4")
    return {"experiment": exp, "preset": preset}


def normalise(rec: Dict[str, Any], experiment: Optional[str] = None, preset: Optional[str] = None) -> Dict[str, Any]:
    """A record in the current schema: old field names renamed (:data:`RENAMED`), ``kind``, ``experiment``,
    ``preset`` and (run records) ``model_seed`` added where missing. ``experiment`` / ``preset``: defaults for
    a record that does not say (e.g. from :func:`infer_from_path`). Returns a new dict; field order kept."""
    out: Dict[str, Any] = {}
    for k, v in rec.items():
        k = RENAMED.get(k, k)
        if k not in out:
            out[k] = v
    if "kind" not in out:
        out["kind"] = "sweep" if str(out.get("key", "")).startswith("sweep@") else "run"
    cfg = out.get("config") if isinstance(out.get("config"), dict) else {}
    if "experiment" not in out:
        if "backend" in out or "mamba_ssm_version" in out:
            exp = "mamba"
        elif cfg.get("preset") in _OFFICIAL_PRESETS or "sdt_score" in cfg:
            exp = "s4_official"
        elif cfg:
            exp = "s4"
        else:
            exp = experiment
        out["experiment"] = exp
    if "preset" not in out:
        out["preset"] = cfg.get("preset") or preset
    if out["kind"] == "run" and "lr_source" not in out:
        out["lr_source"] = "grid"  # written before grids grew at their edges: every lr was the base grid's
    if out["kind"] == "run" and "date" not in out:
        out["date"] = None  # unknown: written before records carried a date
    if out["kind"] == "run" and "model_seed" not in out:
        out["model_seed"] = cfg.get("model_seed", 0) if out["experiment"] == "mamba" else out.get("seed")
    return out


def schema_table() -> str:
    """The schema as a markdown table (README / docs)."""
    lines = ["| field | type | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{f}` | {t} | {m} |" for f, t, m in RUN_FIELDS]
    return "\n".join(lines)
