"""The convolution forms' scaling table: ms per run-iteration of a Full training step for N x D x form.

    python -m synthetic.bench --scaling [--device cpu] [--scaling-N 200,800,3200] [--scaling-D 64,256]
        [--scaling-forms toeplitz,blocked,fft,chunked] [--scaling-tokens T] [--rounds 3] [--out FILE]
        [--scaling-resume]

The paper's model otherwise (4 frozen layers, H = 16, target 1 layer, H* = 8; ``--state-convention``),
one run per step. The batch is reduced so that memory fits: ``batch = max(1, T // (D·N))`` (T: the token
budget, ``--scaling-tokens``; 64·200·4000, the paper's, on CUDA): every row moves the same number of
activations except where the floor of 1 applies, so ``us_per_token`` compares rows. A form whose estimated
step memory exceeds ``--scaling-max-gb`` is recorded as skipped. For each (N, D) the forms are timed in
interleaved rounds (A B C D A B C D ...), median reported. The file (default
``figures/bench_s4_scaling_<device type>.json``) is also the calibration table of
:func:`synthetic.s4.forms.choose_form` (``--conv auto``), so it is extended, never shrunk: a table of the same
device, state convention and precision at ``--out`` keeps its rows of other (N, D, batch, form) (this run's rows
replace those of the same key; ``--keep-previous`` is implied), and anything else there (a table of another
device or convention, another experiment's file, a file that is not valid JSON) is refused before anything is
timed unless ``--force``, which replaces it. Partial tables are written after every (N, D), so a run cut off keeps
what it measured, and ``--scaling-resume`` skips every (N, D) whose forms all have a row there already (the next
call finishes the table instead of timing it again from the start). ``--scaling-from TABLE`` adds the rows of
another table of the same setting (a device machine's fresh ``--out`` resumes the committed table; a table of another
device is left out, and the new one is merged by hand).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Dict, List

import torch

from synthetic.atomic import write_json_atomic
from synthetic.results import environment
from synthetic.s4 import config as s4c, conv, train as s4t
from synthetic.s4.forms import CONV_FORMS, SCALING_TABLE
from synthetic.cli import read_report
from synthetic.checks import check_out_file
from synthetic.s4.timing import bench_method, cpu_info

PAPER_TOKENS = 64 * 200 * 4000  # D·N·B of the paper's configuration
CPU_TOKENS = 64 * 200 * 64


def _ints(text: str, name: str, p) -> List[int]:
    try:
        v = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        p.error(f"{name}: comma-separated integers, got {text!r}")
    if not v or min(v) < 1:
        p.error(f"{name}: needs integers >= 1, got {text!r}")
    return v


def estimate_gb(form: str, L: int, D: int, N: int, B: int) -> float:
    """Rough peak memory of a step (GiB): the activations of ``train.estimate_step_bytes`` without its Toeplitz
    term, plus what the form keeps per layer (the N×N matrices, the blocks, the spectra)."""
    act = 4 * s4t.ACTIVATION_COPIES * L * D * N * B
    Q = conv.chunk_length(N)
    extra = {"toeplitz": 2 * D * N * N, "blocked": 2 * D * N * Q, "chunked": 2 * D * Q * Q, "fused": D * N * N,
             "fft": 4 * D * (N + 1) * B * 2}[form]
    return (act + 4 * L * extra) / 2**30


def run_scaling(a, p) -> int:

    Ns, Ds = _ints(a.scaling_N, "--scaling-N", p), _ints(a.scaling_D, "--scaling-D", p)
    forms = [f.strip() for f in a.scaling_forms.split(",") if f.strip()]
    bad = [f for f in forms if f not in CONV_FORMS]
    if bad or not forms:
        p.error(f"--scaling-forms: unknown or empty {bad}; choose from {sorted(CONV_FORMS)}")
    for name in ("iters", "warm", "rounds"):
        if getattr(a, name) < 1:
            p.error(f"--{name}: must be >= 1, got {getattr(a, name)}")
    if a.scaling_tokens < 0:
        p.error(f"--scaling-tokens: must be >= 0 (0: the device's default), got {a.scaling_tokens}")
    if a.scaling_max_gb is not None and not (math.isfinite(a.scaling_max_gb) and a.scaling_max_gb > 0):
        p.error(f"--scaling-max-gb: must be a positive finite number of GiB (the memory guard), got {a.scaling_max_gb}")
    probe = s4c.parse_config(["--preset", "paper", "--device", a.device, "--no-compile"])
    device = s4t.resolve_device(probe)
    tokens = a.scaling_tokens or (PAPER_TOKENS if device.type == "cuda" else CPU_TOKENS)
    max_gb = a.scaling_max_gb or (100.0 if device.type == "cuda" else 8.0)
    out = a.out or SCALING_TABLE.format(device=device.type)
    env = environment()
    ident = _identity(env, device.type, a)
    try:  # before anything is timed: where the table goes, and what is there already
        check_out_file(out)
        kept = _kept_rows(out, ident, a.force, a.keep_previous)
        if a.scaling_from:
            kept = _merge(kept, _rows_from(a.scaling_from, ident))
    except ValueError as e:
        p.error(str(e))
    if a.threads:
        torch.set_num_threads(a.threads)
    rows: List[Dict] = []
    kept_keys = {_key(r) for r in kept}  # --scaling-resume: the (N, D, batch, form) already in the table
    t_all = time.perf_counter()
    for N in Ns:
        for D in Ds:
            B = max(1, tokens // (D * N))
            if a.scaling_resume and all((N, D, B, f) in kept_keys for f in forms):
                print(f"N={N:5d} D={D:4d} B={B:5d} every form already in {out} (--scaling-resume): skipped", flush=True)
                continue
            trainers, times = {}, {f: [] for f in forms}
            for form in forms:
                gb = estimate_gb(form, probe.frozen_layers + probe.target_layers, D, N, B)
                if gb > max_gb:
                    rows.append({"N": N, "D": D, "form": form, "batch": B, "ms_per_iter": None, "est_gb": round(gb, 2),
                                 "skipped": f"estimated {gb:.1f} GiB > --scaling-max-gb {max_gb}",
                                 "device_type": device.type})
                    print(f"N={N:5d} D={D:4d} B={B:5d} {form:9s} skipped ({rows[-1]['skipped']})", flush=True)
                    continue
                cfg = row_config(a, N, D, B, form)
                trainers[form] = (s4t.Trainer(cfg, device, log=lambda *x: None), {}, gb)
            for rnd in range(a.rounds):
                for form, (tr, cache, _) in trainers.items():
                    times[form].append(bench_method(tr, "Full", a.iters, a.warm, 1, cache=cache)["ms_per_iter"])
            for form, (tr, _, gb) in trainers.items():
                ms = statistics.median(times[form])
                rows.append({"N": N, "D": D, "form": form, "batch": B, "ms_per_iter": round(ms, 3),
                             "ms_per_iter_rounds": times[form], "us_per_token": round(ms * 1e3 / (D * N * B), 5),
                             "Q": conv.chunk_length(N) if form in ("chunked", "blocked") else None,
                             "est_gb": round(gb, 2), "device_type": device.type, "compiled": tr.use_compile})
                print(f"N={N:5d} D={D:4d} B={B:5d} {form:9s} {ms:10.2f} ms/iter", flush=True)
            write_json_atomic(out, _report(env, device, a, tokens, _merge(rows, kept), t_all, done=False))  # partial: kept if cut off
    write_json_atomic(out, _report(env, device, a, tokens, _merge(rows, kept), t_all, done=True))
    print("wrote", out)
    return 0


def row_config(a, N: int, D: int, B: int, form: str) -> s4c.Config:
    """The deep-S4 config one scaling row times: the paper's model at (N, D, batch B), method Full, convolution
    ``form``, compiled as ``--compile`` / ``--no-compile`` says (not given: the preset's default, on CUDA only).
    The budgets are unused by Full and chosen valid for any D."""
    argv = ["--preset", "paper", "--device", a.device, "--precision", a.precision, "--d-model", str(D),
            "--seq-len", str(N), "--batch", str(B), "--state-convention", a.state_convention, "--lrs", "4e-3",
            "--methods", "Full", "--lora-ranks", "1", "--ssm-lora-ranks", "1", "--sdt", "1x1", "--sdt-lora", "1x1:1",
            "--dora-ranks", "1", "--conv", form]
    if a.compile is not None:
        argv.append("--compile" if a.compile else "--no-compile")
    return s4c.parse_config(argv)


def _key(r: Dict) -> tuple:
    return r["N"], r["D"], r["batch"], r["form"]


IDENTITY = ("device", "device_type", "state_convention", "precision")  # what a table's rows were measured on


def _identity(env: Dict, device_type: str, a) -> Dict:
    return {"device": env["device"], "device_type": device_type, "state_convention": a.state_convention,
            "precision": a.precision if device_type == "cuda" else "fp32"}


def _is_table(d) -> bool:
    return (isinstance(d, dict) and isinstance(d.get("results"), list) and "batch_rule" in d
            and all(isinstance(r, dict) and {"N", "D", "batch", "form"} <= set(r) for r in d["results"]))


def _setting_diff(old: Dict, ident: Dict) -> List[str]:
    """The keys of :data:`IDENTITY` where the table ``old`` was measured otherwise than ``ident`` says."""
    return [k for k in IDENTITY if old.get(k, ident[k] if k == "device" else None) != ident[k]]


def _rows_from(path: str, ident: Dict) -> List[Dict]:
    """``--scaling-from``: the rows of the scaling table at ``path`` if it was measured in the setting ``ident``, else
    none (printed). ValueError naming --scaling-from for a missing file, one that is not valid JSON or not a table."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--scaling-from: {p} does not exist (a scaling table to start from)")
    try:
        old = json.loads(p.read_text(errors="replace"))
    except ValueError:
        old = None
    if not _is_table(old):
        raise ValueError(f"--scaling-from: {p} is not a scaling table (python -m synthetic.bench --scaling writes one)")
    diff = _setting_diff(old, ident)
    if diff:
        print(f"--scaling-from: {p} is a table of another setting ("
              + ", ".join(f"{k} {old.get(k)!r}, here {ident[k]!r}" for k in diff) + "): a new table, merge it by hand")
        return []
    print(f"--scaling-from: starting from the {len(old['results'])} rows of {p} ({ident['device']})")
    return list(old["results"])


def _kept_rows(path: str, ident: Dict, force: bool, keep_previous: bool) -> List[Dict]:
    """The rows of the table at ``path`` that a new table there keeps (all of them: this run's rows replace those
    of the same (N, D, batch, form)). Nothing if there is no file, or with ``force`` (it is replaced; with
    ``keep_previous`` too, a readable table of the same device type keeps its rows). ValueError naming --out for a
    file that is not valid JSON, not a scaling table, or a table of another device / convention / precision."""
    p = Path(path)
    if not p.exists():
        return []
    try:
        old = read_report(p)
    except ValueError:
        if force:
            return []
        raise
    if not _is_table(old):
        if force:
            return []
        raise ValueError(f"--out: {p} holds another kind of file (not a scaling table); it is not overwritten: pass "
                         "another --out, or --force to replace it")
    diff = _setting_diff(old, ident)
    if force:
        return ([r for r in old["results"] if r.get("device_type") == ident["device_type"]]
                if keep_previous and not diff else [])
    if diff:
        what = ", ".join(f"{k} {old.get(k)!r} (this run: {ident[k]!r})" for k in diff)
        raise ValueError(f"--out: {p} is a scaling table of another setting ({what}); it is extended only by runs of "
                         "the same setting and never replaced without --force: pass that setting, another --out, or "
                         "--force to replace it")
    return list(old["results"])


def _merge(rows: List[Dict], kept: List[Dict]) -> List[Dict]:
    """This run's rows, then the kept rows of other (N, D, batch, form)."""
    new = {_key(r) for r in rows}
    return rows + [r for r in kept if _key(r) not in new]


def _report(env, device, a, tokens, rows, t_all, done: bool) -> Dict:

    report = {"device": env["device"], "device_type": device.type, "commit": env["commit"], "date": env["date"],
              "torch": env["torch"], "precision": a.precision if device.type == "cuda" else "fp32",
              "what": "ms per run-iteration of a Full training step (R = 1), paper model, batch reduced",
              "batch_rule": f"batch = max(1, {tokens} // (D*N))", "tokens": tokens,
              "state_convention": a.state_convention, "timed_iters": a.iters, "rounds": a.rounds,
              "results": rows, "complete": done, "wall_s": round(time.perf_counter() - t_all, 1)}
    if device.type == "cpu":
        report["cpu"] = cpu_info()
    return report
