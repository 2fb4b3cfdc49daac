"""Checks of an experiment's options before anything runs (sweep fields, shards, numbers, ``--out``, memory, an
existing report at ``--out``): each raises ValueError naming the option, which the parser reports as a usage
error (exit 2, one line). Every name here is importable from :mod:`synthetic.cli` too."""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence

__all__ = ["check_sweep_options", "check_shard_options", "SEED_MAX", "check_numbers", "check_out_dir",
           "check_out_file", "available_memory", "check_memory", "read_report", "check_overwrite"]


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


def check_out_file(path) -> None:
    """``--out`` names a file that can be written: not an existing folder, in a folder that exists or can be made
    (ValueError naming --out; checked before anything is timed)."""
    from pathlib import Path

    if Path(path).is_dir():
        raise ValueError(f"--out: {path} is a folder; pass the path of the report file")
    check_out_dir(Path(path).parent)


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


def check_memory(estimate: int, device, knobs: str, slack: float = 1.0) -> None:
    """Refuse (ValueError) a run whose estimated peak memory does not fit the device, with the estimate and the
    options that lower it, rather than being killed by the kernel half-way. ``slack``: how many times the estimate
    may exceed what is free before the refusal, where the estimate is known to overstate the measured peak."""
    avail = available_memory(device)
    if avail is not None and estimate > slack * avail:
        raise ValueError(f"{knobs}: a training step needs about {estimate / 2**30:.1f} GiB on {device} but "
                         f"{avail / 2**30:.1f} GiB are available; lower {knobs}")


def read_report(path):
    """The JSON document at ``path`` (a benchmark report or table) for a writer about to replace or extend it.
    ValueError naming --out when it is not one: an experiment's JSON Lines results file (its first line is a JSON
    record) or text that is not JSON at all; such a file is never replaced without --force."""
    import json
    from pathlib import Path

    text = Path(path).read_text(errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        first = json.loads(text.splitlines()[0]) if text.strip() else None
    except ValueError:
        first = None
    if isinstance(first, dict):
        raise ValueError(f"--out: {path} holds results of another run (an experiment's JSON Lines results, another "
                         "kind of file); it is not overwritten: pass another --out, or --force to replace it")
    raise ValueError(f"--out: {path} exists and is not valid JSON; it is not overwritten: pass another --out, or "
                     "--force to replace it")


def check_overwrite(path, identity: Dict, force: bool, fields: Sequence[str] = ("device", "config")) -> None:
    """A report at ``path`` (e.g. a committed benchmark) is replaced only by one of the same ``fields`` (device and
    configuration), unless ``force``; ValueError naming --out / --force otherwise. An unreadable file is never
    replaced without ``force`` either."""
    import json
    from pathlib import Path

    p = Path(path)
    if force or not p.exists():
        return
    old = read_report(p)
    identity = json.loads(json.dumps(identity))  # tuples as lists, as in the file
    diff = [k for k in fields if isinstance(old, dict) and old.get(k) != identity.get(k)]
    if not isinstance(old, dict) or diff:
        what = ", ".join(f"{k} {old.get(k)!r}" for k in diff) if isinstance(old, dict) else "another kind of file"
        raise ValueError(f"--out: {p} holds results of another run ({what}); it is not overwritten: pass another "
                         "--out, or --force to replace it")
