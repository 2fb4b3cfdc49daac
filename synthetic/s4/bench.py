"""Benchmark: milliseconds per training iteration of each deep-S4 fine-tuning method (Fig. 2 setup).

    python -m synthetic.bench                      # preset cpu (seconds on a CPU), writes out/bench_s4_cpu.json
    python -m synthetic.bench --preset paper       # the paper configuration (a GPU), writes figures/bench_s4.json
    python -m synthetic.bench --preset paper --runs 3   # R runs trained together (the sweep's mode)
    python -m synthetic.bench --mamba [ARGS...]    # delegates to synthetic.mamba.bench.main(ARGS)
    python -m synthetic.bench --scaling [...]      # the convolution forms' scaling table (synthetic.s4.bench_scaling)
    python -m synthetic.bench --preset paper --device cpu --batch 256 --state-convention complex --threads 2 \
        --rounds 3 --official-dir /work/official_s4/S4 --out figures/bench_s4_cpu.json   # the committed CPU comparison

``--official-dir`` times the unmodified official code in the same call (``scripts/time_official_s4.py``, the
difference of an HI- and a LO-iteration run, ``--official-iters``), interleaved with ours round by round
(``--rounds``: medians reported), and records it under ``official`` with ``official_over_ours`` per method
(its time is a Full iteration). ``--keep-previous`` keeps the file's reports of other devices, configurations
or run counts under ``previous`` (:func:`load_reports` reads them all; files without it load as one report).

One iteration = fresh integer batch generated on the device, target forward, loss, backward and
AdamW step (``synthetic.s4.train.Trainer.train``). ``ms_per_iter`` is wall time per iteration
divided by the number of runs trained together (``--runs``; 1 = a single run). Frozen has no
training step: its row times a forward pass. Peak memory is ``torch.cuda.max_memory_allocated``.

Precision check (``--check-iters``, on CUDA by default): the same SDT and Full runs trained with fp32 and with
TF32 matmuls from identical initial states and data; the JSON reports both best MSEs and their
relative difference, so the TF32 speed-up is shown not to change the result.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from synthetic.s4 import config as s4c, methods as s4m, train as s4t
from synthetic.s4.forms import CONV_FORMS
from synthetic.atomic import write_json_atomic
from synthetic.checks import check_memory, check_out_file
from synthetic.cli import check_overwrite, modernise_argv, read_report
from synthetic.results import environment
from synthetic.s4.roofline import copy_bandwidth, roofline_row, traffic_bytes
from synthetic.s4.timing import bench_method, cpu_info, make_state  # noqa: F401 (bench_method: re-exported)


DEFAULT_OUT = "figures/bench_s4.json"  # the paper preset's report; another preset's: out/bench_s4_<preset>.json


def default_out(preset: str) -> str:
    return DEFAULT_OUT if preset == "paper" else f"out/bench_s4_{preset}.json"


def precision_check(cfg: s4c.Config, device: torch.device, iters: int, seed: int = 0) -> List[Dict]:
    """Best MSE after ``iters`` eager iterations with fp32, TF32 and fp16-conv matmuls (same init and data)."""
    out = []
    for name in ("SDT", "Full"):
        res = {}
        for prec in ("fp32", "tf32", "fp16"):
            c = s4c.Config(**{**cfg.__dict__, "precision": prec, "compile": False, "iters": iters})
            tr = s4t.Trainer(c, device, log=lambda *a: None)
            frozen, target = tr.models(seed)
            method = s4m.METHODS[name]
            budgets = method.budgets(c)
            budget = budgets[-1]
            sel = tr.warmup_selection(frozen, target, seed) if method.needs_selection else None
            state = make_state(tr, c, method, budget, frozen, target, seed, 1, sel)
            curve = tr.train(state, [sorted(c.lrs)[(len(c.lrs) - 1) // 2]], iters, target, tr.data(seed, stream=0))[0]
            res[prec] = {"best_mse": float(curve.min()), "final_mse": float(curve[-1])}
        ref = max(abs(res["fp32"]["best_mse"]), 1e-12)
        rel = {p: abs(res[p]["best_mse"] - res["fp32"]["best_mse"]) / ref for p in ("tf32", "fp16")}
        out.append({"method": name, "budget": s4m.budget_label(budget), "iters": iters, **res,
                    "rel_diff_best_mse": rel["tf32"], "rel_diff_best_mse_fp16": rel["fp16"]})
    s4t.set_precision(cfg.precision, device)  # restore the configured precision
    return out


# the sizes a report is made for: key in the report (the names of the committed reports) -> config field
REPORT_CONFIG = {"D": "d_model", "H": "frozen_d_state", "H_star": "target_d_state", "L_frozen": "frozen_layers",
                 "L_target": "target_layers", "N": "seq_len", "batch": "batch"}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = modernise_argv(s4c.Config, sys.argv[1:] if argv is None else argv, s4c.PRESET_ALIASES)
    p = argparse.ArgumentParser(prog="python -m synthetic.bench", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="cpu", choices=sorted(s4c.PRESETS),
                   help="the deep-S4 experiment's preset whose sizes are timed: cpu (seconds on a CPU), paper (the "
                        "paper's sizes, a GPU), tiny")
    p.add_argument("--methods", default=",".join(s4m.METHODS), help="comma-separated method names")
    p.add_argument("--iters", type=int, default=30, help="timed iterations per method")
    p.add_argument("--warm", type=int, default=5, help="untimed iterations first (compilation)")
    p.add_argument("--runs", type=int, default=1, help="runs trained together per step (R)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, or cuda[:i]")
    p.add_argument("--precision", default="tf32", choices=("tf32", "fp32", "fp16"),
                   help="matmul precision on CUDA (fp16: the Toeplitz convolution with fp16 operands)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the step (not given: on CUDA only)")
    p.add_argument("--conv", default="auto",
                   help="convolution form (synthetic.s4.conv): one of " + ", ".join(s4c.CONV_CHOICES) + "; a comma-"
                        "separated list times every method with each form in the same call (rows carry 'conv')")
    p.add_argument("--batch", type=int, default=0, help="batch size (0: the preset's)")
    p.add_argument("--proj-split", type=int, default=0,
                   help="> 1: the projection's weight gradient split in that many chunks of N·B (synthetic.s4.proj)")
    p.add_argument("--state-convention", default="pairs", choices=("pairs", "complex"),
                   help="'complex': H complex modes per channel, as the official code's d_state (its CPU timing)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--rounds", type=int, default=1,
                   help="timing rounds (median reported); with --official-dir each round also times the official code")
    p.add_argument("--official-dir", default="",
                   help="folder holding the official S4/ code (bash scripts/setup_official_s4.sh writes "
                        "official_s4/S4): time it in the same call, interleaved with ours, and record the ratio")
    p.add_argument("--official-iters", default="45,5", help="the two iteration counts of the official timing "
                   "(per-iteration time = difference of the train times / difference of the counts)")
    p.add_argument("--keep-previous", action="store_true",
                   help="a report of another device or configuration at --out is kept inside the new one "
                        "(under 'previous') instead of refusing (a file that is not a report is still refused)")
    p.add_argument("--scaling", action="store_true",
                   help="the scaling table instead (synthetic.s4.bench_scaling; --out defaults to "
                        "figures/bench_s4_scaling_<device type>.json; a table of the same setting there is extended, "
                        "anything else refused unless --force)")
    p.add_argument("--check-iters", type=int, default=None,
                   help="iterations of the fp32-vs-TF32 check (0: skip; not given: 100 on CUDA, 0 on a CPU, where every "
                        "precision is fp32)")
    p.add_argument("--out", default=None,
                   help=f"the report (JSON; default {DEFAULT_OUT} with --preset paper, else out/bench_s4_<preset>.json; "
                        "with --scaling figures/bench_s4_scaling_<device type>.json); a report of another device or "
                        "configuration there is kept unless --force")
    p.add_argument("--force", action="store_true", help="replace a report of another device or configuration")
    p.add_argument("--scaling-N", default="200,800,3200", help="--scaling: sequence lengths")
    p.add_argument("--scaling-D", default="64,256", help="--scaling: channel counts")
    p.add_argument("--scaling-forms", default=",".join(CONV_FORMS), help="--scaling: convolution forms")
    p.add_argument("--scaling-tokens", type=int, default=0,
                   help="--scaling: batch = max(1, tokens // (D·N)) (0: 64·200·4000 on CUDA, 64·200·64 on CPU)")
    p.add_argument("--scaling-resume", action="store_true",
                   help="--scaling: skip an (N, D) whose every form already has a row in the table at --out (same "
                        "setting), so a table cut off by a call's time limit is finished by the next call")
    p.add_argument("--scaling-from", default=None, metavar="TABLE",
                   help="--scaling: also start from the rows of the scaling table TABLE (e.g. the committed "
                        "figures/bench_s4_scaling_cuda.json, when --out is a fresh file on a device machine) if it "
                        "was measured on this device, state convention and precision; a table of another setting "
                        "contributes nothing (said so)")
    p.add_argument("--scaling-max-gb", type=float, default=None,
                   help="--scaling: skip a form whose estimated step memory exceeds this many GiB, a positive finite "
                        "number (default: 100 on CUDA, 8 on CPU)")
    a = p.parse_args(argv)
    if a.threads < 0:
        p.error(f"--threads: must be >= 0 (0: torch's default), got {a.threads}")
    if a.scaling:
        from synthetic.s4.bench_scaling import run_scaling
        return run_scaling(a, p)
    a.out = a.out or default_out(a.preset)
    for name in ("iters", "warm", "runs", "rounds"):
        if getattr(a, name) < 1:
            p.error(f"--{name}: must be >= 1, got {getattr(a, name)}")
    if a.batch < 0 or a.threads < 0:
        p.error("--batch, --threads: must be >= 0")
    if a.check_iters is not None and a.check_iters < 0:  # -1 crashed after the timing, its report half-written
        p.error(f"--check-iters: must be >= 0 (0: skip the check), got {a.check_iters}")
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in s4m.METHODS]
    if bad:
        p.error(f"--methods: unknown {bad}; choose from {list(s4m.METHODS)}")
    if not methods:
        p.error("--methods: nothing to benchmark (give at least one method); no report written")
    try:
        official_iters = parse_official_iters(a.official_iters)
        if a.official_dir:
            check_official_dir(a.official_dir)
    except ValueError as e:
        p.error(str(e))
    forms = [f.strip() for f in a.conv.split(",") if f.strip()]
    bad = [f for f in forms if f not in s4c.CONV_CHOICES]
    if bad or not forms or len(set(forms)) < len(forms):
        p.error(f"--conv: forms from {', '.join(s4c.CONV_CHOICES)}, each once, comma-separated; got {a.conv!r}")
    if a.threads:
        torch.set_num_threads(a.threads)
    inner = io.StringIO()  # the experiment's own parser validates --device, --proj-split, ...: its refusal is ours
    try:
        with contextlib.redirect_stderr(inner):
            cfg = s4c.parse_config(["--preset", a.preset, "--device", a.device, "--precision", a.precision,
                                    "--conv", forms[0], "--state-convention", a.state_convention,
                                    "--proj-split", str(a.proj_split)]
                                   + (["--batch", str(a.batch)] if a.batch else [])
                                   + ([] if a.compile is None else ["--compile" if a.compile else "--no-compile"]))
    except SystemExit:
        last = (inner.getvalue().strip().splitlines() or ["error: invalid options"])[-1]
        p.error(last.split("error: ", 1)[-1])
    device = s4t.resolve_device(cfg)
    ident = {"device": environment()["device"], "config": report_config(cfg)}
    try:
        check_out_file(a.out)
        check_memory(s4t.config_step_bytes(cfg, a.runs), device, "--runs or --batch", slack=s4t.ESTIMATE_SLACK)
        if not a.keep_previous:
            check_overwrite(a.out, ident, a.force)
        elif not a.force and Path(a.out).exists():
            load_reports(a.out)  # --keep-previous keeps what it can read; an unreadable file is never replaced
    except ValueError as e:
        p.error(str(e))
    cfg = s4c.Config(**{**cfg.__dict__, "lrs": tuple([sorted(cfg.lrs)[(len(cfg.lrs) - 1) // 2]] * a.runs)})
    trainers = {}  # form -> (trainer, its cache)
    for form in forms:
        trainers[form] = (s4t.Trainer(s4c.Config(**{**cfg.__dict__, "conv": form}), device), {})
        print(f"convolution form: {trainers[form][0].conv} ({trainers[form][0].conv_reason})", flush=True)
    trainer = trainers[forms[0]][0]
    env = environment()
    bandwidth = copy_bandwidth(device, gib=1.0 if device.type == "cuda" else 0.0625)
    print(f"device copy bandwidth {bandwidth / 1e9:.0f} GB/s (read + write)", flush=True)
    rounds: Dict[tuple, List[Dict]] = {(f, m): [] for f in forms for m in methods}
    official_ms: List[float] = []
    t_all = time.perf_counter()
    previous = previous_reports(a.out, ident, a.runs) if a.keep_previous else None
    failed: Dict[str, str] = {}  # form -> the error that stopped it (several forms in one call only)

    def report(check: List[Dict], complete: bool) -> Dict:
        """The report of the rows timed so far (written after every row, so a run cut off keeps them)."""
        results = [summarise_rounds(rounds[(f, m)]) for m in methods for f in forms if rounds[(f, m)]]
        for r in results:
            r["roofline"] = roofline_row(r["ms_per_iter"], traffic_bytes(
                cfg.d_model, cfg.seq_len, cfg.batch, cfg.frozen_layers, cfg.target_layers, r["runs_per_step"],
                r["forward_only"]), bandwidth)
        official = None
        if official_ms:
            off = statistics.median(official_ms)
            official = {"method": "Full", "ms_per_iter": round(off, 3),
                        "ms_per_iter_rounds": [round(x, 3) for x in official_ms], "iters": list(official_iters),
                        "code": "furiosa-ai/ssm-peft S4/run_s4.py, unchanged (scripts/time_official_s4.py)",
                        "how": "difference of two runs' train time / difference of iterations"}
            for r in results:
                r["official_over_ours"] = round(off / r["ms_per_iter"], 3) if r["ms_per_iter"] > 0 else None
        out = {"device": env["device"], "commit": env["commit"], "date": env["date"], "torch": env["torch"],
               "precision": f"{cfg.precision} matmuls, fp32 storage" if device.type == "cuda" else "fp32",
               "compiled": trainer.use_compile, "config": report_config(cfg),
               "conv": ",".join(t.conv for t, _ in trainers.values()), "conv_reason": trainer.conv_reason,
               "proj_split": cfg.proj_split, "runs_per_step": a.runs, "timed_iters": a.iters, "rounds": a.rounds,
               "results": results, "precision_check": check,
               "roofline": {"copy_GBps": round(bandwidth / 1e9, 1), "model": ROOFLINE_MODEL},
               "wall_s": round(time.perf_counter() - t_all, 1)}
        if not complete:
            out["complete"] = False
        if failed:
            out["failed_forms"] = dict(failed)
        if device.type == "cpu":
            out["cpu"] = cpu_info()
        if official:
            out["official"] = official
        if previous is not None:
            out["previous"] = previous
        return out

    for rnd in range(a.rounds):  # interleaved: ours (every method with each form), then the official code, per round
        for name in methods:
            for form, (tr, cache) in trainers.items():
                if form in failed:
                    continue
                t0 = time.perf_counter()
                try:
                    r = bench_method(tr, name, a.iters, a.warm, a.runs, cache=cache)
                except Exception as e:  # a form that fails (e.g. its kernel does not compile) must not lose the others
                    if len(forms) == 1:
                        raise
                    failed[form] = f"{name}: {type(e).__name__}: {str(e)[:2000]}"
                    traceback.print_exc()
                    print(f"form {form} failed at {name}; the other forms go on", flush=True)
                    continue
                r["wall_s_incl_compile"] = round(time.perf_counter() - t0, 2)
                r["conv"], r["compiled"] = tr.conv, tr.use_compile and not tr.compile_failed
                rounds[(form, name)].append(r)
                print(f"[round {rnd + 1}/{a.rounds}] {tr.conv:9s} {name:16s} {r['ms_per_iter']:9.2f} ms/iter  "
                      f"peak {r['peak_mem_gb']} GiB  ({r['wall_s_incl_compile']} s)", flush=True)
                write_json_atomic(a.out, report([], complete=False))
        if a.official_dir:
            official_ms.append(time_official(a.official_dir, cfg.batch, cfg.seq_len, official_iters, device, a.threads))
            print(f"[round {rnd + 1}/{a.rounds}] official (Full)  {official_ms[-1]:9.2f} ms/iter", flush=True)
    check_iters = a.check_iters if a.check_iters is not None else (100 if device.type == "cuda" else 0)
    check = precision_check(cfg, device, check_iters) if check_iters else []
    for c in check:
        print(f"precision check {c['method']}: best MSE fp32 {c['fp32']['best_mse']:.6g}, tf32 {c['tf32']['best_mse']:.6g}, "
              f"fp16 {c['fp16']['best_mse']:.6g}; rel diff tf32 {c['rel_diff_best_mse']:.2e}, "
              f"fp16 {c['rel_diff_best_mse_fp16']:.2e}", flush=True)
    final = report(check, complete=True)
    write_json_atomic(a.out, final)
    results, official = final["results"], final.get("official")
    print_table(results, official)
    print("wrote", a.out)
    return 0


ROOFLINE_MODEL = ("traffic_bytes: the bytes a perfectly fused iteration moves per run (synthetic.s4.roofline); "
                  "traffic_bound_ms = traffic_bytes / copy_GBps (a device copy measured in the same call); "
                  "over_bound = ms_per_iter / traffic_bound_ms")


def print_table(results: List[Dict], official: Optional[Dict]) -> None:
    """One line per (form, method): ms per run-iteration, peak memory, roofline, official ratio."""
    print(f"{'conv':9s} {'method':16s} {'runs':>4s} {'ms/iter':>9s} {'peak GiB':>8s} {'bound ms':>8s} {'x bound':>7s} "
          f"{'GB/s':>7s} {'official/ours':>13s}")
    for r in results:
        rf = r.get("roofline", {})
        print(f"{r.get('conv', ''):9s} {r['method']:16s} {r['runs_per_step']:4d} {r['ms_per_iter']:9.3f} "
              f"{str(r['peak_mem_gb']):>8s} {rf.get('traffic_bound_ms', 0):8.3f} {str(rf.get('over_bound')):>7s} "
              f"{str(rf.get('achieved_GBps')):>7s} {str(r.get('official_over_ours', '-')):>13s}", flush=True)
    if official:
        print(f"official code (Full): {official['ms_per_iter']} ms/iter", flush=True)


def report_config(cfg: s4c.Config) -> Dict:
    """The sizes a report is made for; ``state_convention`` only when not the default (old reports lack it)."""
    out = {k: getattr(cfg, f) for k, f in REPORT_CONFIG.items()}
    if cfg.state_convention != "pairs":
        out["state_convention"] = cfg.state_convention
    return out


def summarise_rounds(rs: List[Dict]) -> Dict:
    """One row per method: the median of the rounds' ms per iteration (and the rounds themselves)."""
    out = dict(rs[-1])
    out["ms_per_iter"] = round(statistics.median(r["ms_per_iter"] for r in rs), 3)
    if len(rs) > 1:
        out["ms_per_iter_rounds"] = [r["ms_per_iter"] for r in rs]
    return out


def load_reports(path) -> List[Dict]:
    """Every report in a benchmark file, newest first: the file's own and those kept under ``previous``
    (``--keep-previous``). Old files without ``previous`` load as one report. ValueError naming --out for a file
    that is not valid JSON or not a benchmark report."""
    d = read_report(path)
    if not (isinstance(d, dict) and isinstance(d.get("results"), list)):
        raise ValueError(f"--out: {path} holds another kind of file (not a benchmark report); it is not overwritten: "
                         "pass another --out, or --force to replace it")
    return [{k: v for k, v in d.items() if k != "previous"}] + list(d.get("previous", []))


def previous_reports(path, ident: Dict, runs: int) -> List[Dict]:
    """The reports at ``path`` to keep inside a new one: all of them except one of the same device, config and
    runs per step (that one is replaced). A missing file keeps nothing; an unreadable one keeps nothing and says so."""
    if not Path(path).exists():
        return []
    try:
        old = load_reports(path)
    except (ValueError, OSError) as e:
        print(f"warning: {path} unreadable ({e}); not kept")
        return []
    ident = json.loads(json.dumps(ident))
    return [r for r in old if not (r.get("device") == ident["device"] and r.get("config") == ident["config"]
                                   and r.get("runs_per_step", 1) == runs)]


def parse_official_iters(text: str) -> tuple:
    try:
        hi, lo = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--official-iters: two integers 'HI,LO' with HI > LO >= 1, got {text!r}") from None
    if not hi > lo >= 1:
        raise ValueError(f"--official-iters: needs HI > LO >= 1, got {text!r}")
    return hi, lo


def check_official_dir(path: str) -> None:
    if not (Path(path) / "run_s4.py").is_file():
        raise ValueError(f"--official-dir: {path} has no run_s4.py (the official S4/ folder; "
                         "bash scripts/setup_official_s4.sh GIT_DIR sets it up at official_s4/S4)")


OFFICIAL_TIMER = Path(__file__).resolve().parents[2] / "scripts" / "time_official_s4.py"


def time_official(folder: str, batch: int, N: int, iters: tuple, device: torch.device, threads: int) -> float:
    """ms per iteration of the unmodified official code (Full fine-tuning at the paper's model): two runs of
    ``scripts/time_official_s4.py`` (``iters`` = (HI, LO) iterations) in ``folder``; start-up and the first
    iterations cancel in the difference."""
    folder = Path(folder).resolve()
    env = dict(os.environ)
    extra = [str(q) for q in (folder.parent / "pylib",) if q.is_dir()]  # einops installed with --target there
    env["PYTHONPATH"] = os.pathsep.join(extra + [env.get("PYTHONPATH", "")]).strip(os.pathsep)
    times = {}
    for n in iters:
        cmd = [sys.executable, str(OFFICIAL_TIMER), str(batch), str(N), str(n), "--device", device.type,
               "--threads", str(threads or torch.get_num_threads())]
        out = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
        m = re.search(r"train_s=([0-9.]+)", out.stdout)
        if out.returncode or not m:
            raise RuntimeError(f"official timing failed (rc {out.returncode}): {out.stderr[-2000:]}")
        times[n] = float(m.group(1))
    hi, lo = iters
    return (times[hi] - times[lo]) * 1e3 / (hi - lo)


if __name__ == "__main__":
    sys.exit(main())
