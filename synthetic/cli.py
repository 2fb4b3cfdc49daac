"""Command lines built from a config dataclass (the deep-S4 experiments: ``synthetic.s4_regression``,
``synthetic.s4_official``). Every field is an option ``--field-name``; tuples are comma-separated lists;
a preset (a dict of field values) becomes the defaults, explicit options override it; unknown options
are rejected; a ``ValueError`` from the config's validator becomes an argparse error (exit 2, no traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Callable, Dict, Optional, Sequence


def list_of(typ):
    """argparse type: 'a,b,c' -> tuple of ``typ``."""
    def parse(s):
        try:
            return tuple(typ(x.strip()) for x in s.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {typ.__name__}, got {s!r}")
    parse.__name__ = f"list of {typ.__name__}"
    return parse


def dataclass_parser(cls, presets: Dict[str, Dict], *, prog: str, description: str,
                     preset_help: str = "named configuration", extra_presets: Sequence[str] = (),
                     plot_only_help: str = "redraw the figure from the JSON, no training") -> argparse.ArgumentParser:
    """An option per field of ``cls``; ``compile`` is a tri-state (None = by device), ``plot_only`` a flag."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        name, default = "--" + f.name.replace("_", "-"), f.default
        if f.name == "compile":
            p.add_argument(name, action=argparse.BooleanOptionalAction, default=None,
                           help="torch.compile the training step (default: on for CUDA, off for CPU)")
        elif f.name == "plot_only":
            p.add_argument(name, action="store_true", help=plot_only_help)
        elif isinstance(default, bool):
            p.add_argument(name, action=argparse.BooleanOptionalAction, default=default, help=helps[f.name])
        elif isinstance(default, tuple):
            typ = type(default[0])
            p.add_argument(name, default=",".join(map(str, default)), metavar="A,B,...", type=list_of(typ),
                           help=f"{helps[f.name]} (comma-separated {typ.__name__} list)")
        elif f.name == "preset":
            p.add_argument(name, default=default, choices=sorted(set(presets) | set(extra_presets)),
                           help=f"{helps['preset']}; {preset_help}")
        else:
            p.add_argument(name, default=default, type=type(default), help=helps[f.name])
    return p


def parse_dataclass(cls, presets: Dict[str, Dict], parser: argparse.ArgumentParser, default_preset: str,
                    argv: Optional[Sequence[str]], validate: Callable,
                    post: Optional[Callable] = None):
    """CLI -> validated ``cls`` instance: the preset's values become the parser's defaults first.

    post: optional ``cfg -> cfg`` applied before validation (e.g. expanding ``--methods all``).
    """
    known = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    known.add_argument("--preset", default=default_preset)
    pre, _ = known.parse_known_args(argv)
    if pre.preset in presets:
        parser.set_defaults(**{k: (",".join(map(str, v)) if isinstance(v, tuple) else v)
                               for k, v in presets[pre.preset].items()})
    cfg = cls(**vars(parser.parse_args(argv)))
    if post is not None:
        cfg = post(cfg)
    try:
        return validate(cfg)
    except ValueError as e:
        parser.error(str(e))


def check_sweep_options(cfg, methods, *, all_allowed: bool = False) -> None:
    """The options every deep-S4 sweep config shares (``device``, ``lrs``, ``seeds``, the lr-grid policy
    ``lr_extend_factor``/``lr_min``/``lr_max``, ``methods`` against the registry ``methods``; ``all_allowed``:
    the CLI also takes ``--methods all``); ValueError naming the option."""
    import math

    import torch

    from synthetic.results import LrPolicy

    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith("cuda"):
        raise ValueError(f"--device: must be 'auto', 'cpu' or 'cuda[:i]', got {cfg.device!r}")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device: {cfg.device!r} requested but CUDA is not available; use --device cpu or auto")
    if not cfg.lrs or any(not (math.isfinite(x) and x > 0) for x in cfg.lrs):
        raise ValueError(f"--lrs: need positive finite learning rates, got {cfg.lrs}")
    if not cfg.seeds:
        raise ValueError("--seeds: need at least one seed")
    try:
        LrPolicy.from_config(cfg)
    except ValueError as e:
        raise ValueError(f"--lr-extend-factor/--lr-min/--lr-max: {e}") from None
    bad = [m for m in cfg.methods if m not in methods]
    if bad:
        raise ValueError(f"--methods: unknown {bad}; choose from {list(methods)}" + (" or 'all'" if all_allowed else ""))


def check_shard_options(cfg) -> None:
    """``--shard i/n`` well formed, and not combined with ``--merge``, ``--plot-only`` or ``--dry-run``'s
    opposite (a shard runs; merge and plot-only do not); ValueError naming the option."""
    from synthetic.runner import parse_shard

    parse_shard(cfg.shard)
    if cfg.shard and (cfg.merge or cfg.plot_only):
        raise ValueError("--shard: cannot be combined with --merge or --plot-only")


SEED_MAX = 2 ** 63 - 1  # torch.Generator.manual_seed takes seeds in [0, 2**64); the data streams add offsets


def check_numbers(cfg, *, nonnegative: Sequence[str] = (), positive: Sequence[str] = ()) -> None:
    """Every float field of ``cfg`` finite (also inside tuples), the ``nonnegative`` ones >= 0, the ``positive``
    ones > 0; seeds integers in [0, 2**63 - 1]; learning rates unique; ValueError naming the option."""
    import math

    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        opt = "--" + f.name.replace("_", "-")
        vals = v if isinstance(v, tuple) else (v,)
        nums = [x for x in vals if isinstance(x, (int, float)) and not isinstance(x, bool)]
        if any(isinstance(x, float) and not math.isfinite(x) for x in nums):
            raise ValueError(f"{opt}: must be finite, got {v!r}")
        if f.name in nonnegative and any(x < 0 for x in nums):
            raise ValueError(f"{opt}: must be >= 0, got {v!r}")
        if f.name in positive and any(x <= 0 for x in nums):
            raise ValueError(f"{opt}: must be > 0, got {v!r}")
    seeds = getattr(cfg, "seeds", ())
    for name, vals in (("--seeds", seeds), ("--model-seed", (getattr(cfg, "model_seed", 0),))):
        if any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= SEED_MAX - 1_000_000_000 for s in vals):
            raise ValueError(f"{name}: seeds must be integers in [0, 2**63 - 1e9] (the data streams add offsets), "
                             f"got {vals!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: each seed once, got {seeds!r}")
    lrs = getattr(cfg, "lrs", ())
    if len(set(lrs)) != len(lrs):
        raise ValueError(f"--lrs: each learning rate once (a repeated lr would repeat its runs' keys), got {lrs!r}")


def check_out_dir(path) -> None:
    """``--out`` is a folder that exists or can be made, and can be written; ValueError naming --out (nothing
    is created by the check itself)."""
    import os
    from pathlib import Path

    p = Path(path)
    q = p
    while not q.exists():  # the deepest part that exists must be a writable folder
        if q.parent == q:
            break
        q = q.parent
    if q.exists() and not q.is_dir():
        raise ValueError(f"--out: {str(q)!r} is a file, not a folder" + (f" (in the path {str(p)!r})" if q != p else ""))
    if q.exists() and not os.access(q, os.W_OK | os.X_OK):
        raise ValueError(f"--out: cannot write in {str(q)!r} (permission denied)")


def available_memory(device) -> Optional[int]:
    """Bytes the configured device can still take: free GPU memory on CUDA, MemAvailable on Linux; None unknown."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(estimate: int, device, knobs: str) -> None:
    """Refuse (ValueError) a run whose estimated peak memory does not fit the device, with the estimate and the
    options that lower it, rather than being killed by the kernel half-way."""
    avail = available_memory(device)
    if avail is not None and estimate > avail:
        raise ValueError(f"{knobs}: a training step needs about {estimate / 2**30:.1f} GiB on {device} but "
                         f"{avail / 2**30:.1f} GiB are available; lower {knobs}")


def check_overwrite(path, identity: Dict, force: bool, fields: Sequence[str] = ("device", "config")) -> None:
    """A report at ``path`` (e.g. a committed benchmark) is replaced only by one of the same ``fields`` (device and
    configuration), unless ``force``; ValueError naming --out / --force otherwise. An unreadable file is never
    replaced without ``force`` either."""
    import json
    from pathlib import Path

    p = Path(path)
    if force or not p.exists():
        return
    try:
        old = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"--out: {p} exists and is not valid JSON; pass --force to replace it or another --out") \
            from None
    identity = json.loads(json.dumps(identity))  # tuples as lists, as in the file
    diff = [k for k in fields if isinstance(old, dict) and old.get(k) != identity.get(k)]
    if not isinstance(old, dict) or diff:
        what = ", ".join(f"{k} {old.get(k)!r}" for k in diff) if isinstance(old, dict) else "another kind of file"
        raise ValueError(f"--out: {p} holds results of another run ({what}); it is not overwritten: pass another "
                         "--out, or --force to replace it")


def write_json_atomic(path, data) -> None:
    """Write ``data`` as JSON to ``path`` atomically (:func:`synthetic.atomic.write_json_atomic`)."""
    from synthetic.atomic import write_json_atomic as write

    write(path, data)


COMMON_HELP = {
    "preset": "named configuration; its values are the defaults, options given override them",
    "D": "channels (model width)", "d_model": "model width (channels)", "N": "sequence length",
    "seq_len": "sequence length", "L_frozen": "layers of the frozen model", "frozen_layers": "layers of the frozen model",
    "L_target": "layers of the target model", "target_layers": "layers of the target model",
    "frozen_d_state": "states per channel of the frozen model", "target_d_state": "states per channel of the target",
    "expand": "Mamba's expansion factor (d_inner = expand x d_model)",
    "batch": "sequences per training batch", "iters": "AdamW iterations per run",
    "weight_decay": "AdamW's decoupled weight decay (>= 0)",
    "lrs": "base learning-rate grid, comma-separated; grown at its edges (--lr-extend-factor)",
    "lr_min": "lower bound of the lr-grid growth", "lr_max": "upper bound of the lr-grid growth",
    "seeds": "seeds, comma-separated (data and adapter initialisation; in deep S4 also the frozen/target models)",
    "methods": "methods to run, comma-separated registry names, or 'all'",
    "warmup_iters": "iterations of Algorithm 1's warm-up (SDT's dimension selection)",
    "warmup_lr": "learning rate of Algorithm 1's warm-up", "magnitude_floor": "SDT: |C B| below this marks a "
    "dimension unusable", "frozen_eval_batches": "batches the untrained Frozen baseline is evaluated on",
    "eval_batches": "batches of the evaluation MSE", "eval_every": "iterations between evaluations",
    "curve_points": "points of the loss curve kept in each record", "lora_ranks": "LoRA ranks swept (comma-separated)",
    "device": "auto (CUDA if available), cpu, or cuda[:i]", "out": "folder of the results file and figures",
    "plot_only": "redraw the figures and print the summary from the results file; no training",
}


def field_help(cls) -> Dict[str, str]:
    """Help text per field of a config dataclass: the comment after the field in its source, else
    :data:`COMMON_HELP`."""
    import inspect
    import re

    out: Dict[str, str] = {}
    try:
        lines = inspect.getsource(cls).split("\n")
    except (OSError, TypeError):
        lines = []
    for line in lines:
        m = re.match(r"\s+(\w+):\s*[^=]+=.*?(?:#\s*(.*))?$", line)
        if m and not line.strip().startswith("#"):
            out[m.group(1)] = (m.group(2) or "").strip()
    names = [f.name for f in dataclasses.fields(cls)]
    text = {n: out.get(n) or COMMON_HELP.get(n, n.replace("_", " ")) for n in names}
    return {n: t.replace("%", "%%") for n, t in text.items()}  # argparse formats help with %


def results_main(argv, parse_args: Callable, results_path: Callable, run: Callable, prog: str) -> int:
    """A Mamba-family experiment's ``main``: parse, then before anything runs check that the results file reads (a
    corrupted one is never touched) and, with ``--plot-only``, holds runs; a failure is one line naming the file on
    stderr and exit 2. Then ``run(cfg)``, exit 0. ``results_path(cfg)``: the results file's path."""
    import sys

    from synthetic.results import ResultsFile

    cfg = parse_args(argv)
    path = results_path(cfg)
    try:
        ResultsFile(path).load()
        if cfg.plot_only and not ResultsFile(path).runs():
            raise ValueError(f"--plot-only: no results in {path} (run without --plot-only first, or pass the --out "
                             "and --preset of an earlier run)")
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    run(cfg)
    return 0
