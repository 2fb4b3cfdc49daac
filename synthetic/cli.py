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
                     preset_help: str = "named configuration",
                     plot_only_help: str = "redraw the figure from the JSON, no training") -> argparse.ArgumentParser:
    """An option per field of ``cls``; ``compile`` is a tri-state (None = by device), ``plot_only`` a flag."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    for f in dataclasses.fields(cls):
        name, default = "--" + f.name.replace("_", "-"), f.default
        if f.name == "compile":
            p.add_argument(name, action=argparse.BooleanOptionalAction, default=None,
                           help="torch.compile the training step (default: on for CUDA, off for CPU)")
        elif f.name == "plot_only":
            p.add_argument(name, action="store_true", help=plot_only_help)
        elif isinstance(default, bool):
            p.add_argument(name, action=argparse.BooleanOptionalAction, default=default, help=f.name)
        elif isinstance(default, tuple):
            typ = type(default[0])
            p.add_argument(name, default=",".join(map(str, default)), metavar="A,B,...", type=list_of(typ),
                           help=f"comma-separated {typ.__name__} list")
        elif f.name == "preset":
            p.add_argument(name, default=default, choices=sorted(presets), help=preset_help)
        else:
            p.add_argument(name, default=default, type=type(default), help=f.name)
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
