"""Profile one deep-S4 training step (paper configuration) with torch.profiler: where the time goes.

    python scripts/profile_s4_step.py --runs 16 [--method Full] [--precision fp16] [--no-compile] [--out prof.txt]
    python scripts/profile_s4_step.py --device cpu --runs 1 --batch 256 --state-convention complex --no-compile

Prints the top CUDA kernels (CPU ops with ``--device cpu``) by self time for ``--iters`` steps after compilation/warm-up, and the
milliseconds per run-iteration measured around them (synchronised). A diagnostic for the speed work
in notes/s4_speed.md, not a benchmark of record (that is ``python -m synthetic.bench``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from synthetic.s4 import config as s4c, methods as s4m, train as s4t  # noqa: E402
from synthetic.checks import check_memory, check_out_file  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/profile_s4_step.py", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--runs", type=int, default=16)
    p.add_argument("--method", default="Full", choices=list(s4m.METHODS), metavar="METHOD",
                   help=f"one of: {', '.join(s4m.METHODS)} (default: %(default)s)")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warm", type=int, default=3)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--batch", type=int, default=4000)
    p.add_argument("--precision", default="tf32", choices=("tf32", "fp32", "fp16"))
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--out", default="")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--conv", default="auto", choices=s4c.CONV_CHOICES)
    p.add_argument("--state-convention", default="pairs", choices=("pairs", "complex"))
    a = p.parse_args(argv)
    for name, least in (("runs", 1), ("iters", 1), ("warm", 0)):  # before anything is built (0 runs crashed)
        if getattr(a, name) < least:
            p.error(f"--{name}: must be >= {least}, got {getattr(a, name)}")
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("needs a CUDA device (or --device cpu)")
    if a.out:
        try:  # the table is written at the end: a bad path would cost the whole profile
            check_out_file(a.out)
        except ValueError as e:
            p.error(str(e))
    cfg = s4c.parse_config(["--preset", "paper", "--batch", str(a.batch), "--lrs", "4e-3",
                            "--precision", a.precision, "--conv", a.conv, "--device", a.device,
                            "--state-convention", a.state_convention]
                           + (["--compile"] if a.compile else ["--no-compile"]))
    # R runs of one lr, as synthetic.s4.bench does (the config refuses a repeated lr: it would repeat run keys)
    cfg = s4c.Config(**{**cfg.__dict__, "lrs": (4e-3,) * a.runs})
    dev = torch.device(a.device)
    try:
        check_memory(s4t.config_step_bytes(cfg, a.runs), dev, "--runs or --batch", slack=s4t.ESTIMATE_SLACK)
    except ValueError as e:
        p.error(str(e))
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    tr = s4t.Trainer(cfg, dev)
    frozen, target = tr.models(0)
    m = s4m.METHODS[a.method]
    sel = tr.warmup_selection(frozen, target, 0) if m.needs_selection else None
    import synthetic.s4.model as sm
    st = sm.RunState.create(frozen, a.runs, *tr.rank_max(), generator=torch.Generator().manual_seed(0))
    m.configure(st, m.budgets(cfg)[-1], sel)
    g = tr.data(0, 0)
    t0 = time.perf_counter()
    tr.train(st, list(cfg.lrs), a.warm, target, g)
    sync()
    print(f"warm-up/compile {time.perf_counter() - t0:.1f}s", flush=True)
    t0 = time.perf_counter()
    tr.train(st, list(cfg.lrs), a.iters, target, g)
    sync()
    ms = (time.perf_counter() - t0) * 1e3 / a.iters
    print(f"{a.method} R={a.runs} batch={a.batch} {a.precision} compile={a.compile}: {ms:.2f} ms/step, "
          f"{ms / a.runs:.3f} ms per run-iteration, conv {tr.conv}"
          + (f", peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if a.device == "cuda" else ""), flush=True)
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if a.device == "cuda" else [])
    with profile(activities=acts) as prof:
        tr.train(st, list(cfg.lrs), a.iters, target, g)
        sync()
    sort = "self_cuda_time_total" if a.device == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=a.rows, max_name_column_width=90)
    print(table)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        with open(a.out, "w") as f:
            f.write(f"{a.method} R={a.runs} {ms:.2f} ms/step {ms / a.runs:.3f} ms/run-iter\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
