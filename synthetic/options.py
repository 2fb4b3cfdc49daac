"""Config fields with their command-line metadata (help text, part of the run key or not, deprecated names) and
the sweep fields every experiment's config shares (:class:`SweepConfig`). The parser built from them is
:func:`synthetic.cli.parse_options`; every name here is importable from :mod:`synthetic.cli` too."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Callable, Dict, Optional, Sequence, Tuple

__all__ = ["list_of", "option", "meta", "key_config", "record_config", "key_of_record_config",
           "fields_from_record_config", "deprecated", "SweepConfig", "redefault"]


def list_of(typ):
    """argparse type: 'a,b,c' -> tuple of ``typ``."""
    def parse(s):
        try:
            return tuple(typ(x.strip()) for x in s.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {typ.__name__}, got {s!r}")
    parse.__name__ = f"list of {typ.__name__}"
    return parse


def option(default, help: str, *, key: bool = True, key_as: Optional[str] = None, to_key: Optional[Callable] = None,
           opt_in: bool = False, old: Sequence[str] = (), normalise: Optional[Callable[[str, str], str]] = None):
    """A config field with its command-line metadata.

    help: the option's help text. key: the field changes a run's result, so it is part of the run key (and of
    the ``config`` a record holds). key_as: the field's name in run keys and records, where the option was renamed
    (keys and committed results keep the old name). to_key: the value as run keys hold it (e.g. a budget written in
    the old notation). opt_in: left out of the key while at its default (an option added later, so results
    computed before it existed still resume). old: deprecated option names (they still work, with a one-line
    message naming the new one). normalise: ``(option, element) -> element`` for each element of a list option,
    turning a deprecated notation into the current one (and saying so).
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "key": key, "key_as": key_as, "to_key": to_key, "opt_in": opt_in, "old": tuple(old),
        "normalise": normalise})


def meta(f: dataclasses.Field, name: str, default=None):
    return f.metadata.get(name, default)


def key_config(cfg) -> Dict:
    """The fields of ``cfg`` that identify a run's result, under their key names (see :func:`option`)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if not meta(f, "key", True) or (meta(f, "opt_in") and v == f.default):
            continue
        out[meta(f, "key_as") or f.name] = meta(f, "to_key")(v) if meta(f, "to_key") else v
    return out


def record_config(cfg) -> Dict:
    """Every field of ``cfg`` under its key name (the ``config`` a deep-S4 record holds)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[meta(f, "key_as") or f.name] = meta(f, "to_key")(v) if meta(f, "to_key") else v
    return out


def key_of_record_config(cls, config: Dict) -> Dict:
    """:func:`key_config` of a record's ``config`` dict (key names): the key fields of ``cls``, opt-in ones left
    out at their defaults; names ``cls`` does not know are kept (a field of another version changes the key)."""
    by_key = {meta(f, "key_as") or f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for k, v in config.items():
        f = by_key.get(k)
        if f is None:
            out[k] = v
            continue
        if not meta(f, "key", True):
            continue
        dflt = meta(f, "to_key")(f.default) if meta(f, "to_key") else f.default
        if meta(f, "opt_in") and _plain(v) == _plain(dflt):
            continue
        out[k] = v
    return out


def fields_from_record_config(cls, config: Dict) -> Dict:
    """A record's ``config`` (key names, old notations) as field values of ``cls`` (names it lacks dropped)."""
    by_key = {meta(f, "key_as") or f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for k, v in config.items():
        f = by_key.get(k)
        if f is None:
            continue
        v = tuple(v) if isinstance(v, list) else v
        if meta(f, "normalise") and isinstance(v, tuple):
            v = tuple(meta(f, "normalise")("--" + f.name.replace("_", "-"), x) for x in v)
        out[f.name] = v
    return out


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def deprecated(old: str, new: str) -> None:
    """The one-line message of a deprecated spelling (stderr); it keeps working for one release."""
    import sys

    print(f"warning: {old} is deprecated and will be removed in the next release; use {new}", file=sys.stderr)


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """The fields every experiment's sweep shares, declared once; an experiment's config subclasses this and adds
    its model fields (one naming convention across architectures: ``d_model``, ``frozen_layers``,
    ``frozen_d_state``, ``target_layers``, ``target_d_state``, ``seq_len``, ``batch``, ``iters``, ...), changing a
    shared field's default with :func:`redefault`. None of these fields is part of a run key."""

    preset: str = option("cpu", "named configuration: its values are the defaults shown here (--preset NAME --help "
                         "shows NAME's); options given override them", key=False)
    methods: Tuple[str, ...] = option((), "methods to run: comma-separated registry names, or 'all'", key=False)
    seeds: Tuple[int, ...] = option((0,), "seeds, comma-separated", key=False)
    lrs: Tuple[float, ...] = option((1e-2,), "base learning-rate grid, comma-separated; grown at its edges "
                                    "(--lr-extend-factor)", key=False)
    lr_extend_factor: float = option(4.0, "a best lr at the grid's edge adds edge x factor (or / factor), in rounds, "
                                     "until the best is interior; 0 = off", key=False)
    lr_min: float = option(1e-6, "lower bound of the lr-grid growth", key=False)
    lr_max: float = option(1.0, "upper bound of the lr-grid growth", key=False)
    time_budget: float = option(0.0, "seconds: start no call of runs that would end after this, judged by the "
                                "longest call so far (the first call always runs; 0 = no limit); rerun to resume",
                                key=False, old=("--time-budget-s",))
    out: str = option("out", "folder of the results file and figures (out/ is not committed; the committed "
                      "results are in figures/)", key=False)
    plot_only: bool = option(False, "print the summary and redraw the figures from the results file; no training",
                             key=False)
    dry_run: bool = option(False, "print the plan (runs done / to do per method, estimated time) and exit", key=False)
    shard: str = option("", "'i/n': run only this shard's share of the base-grid groups with runs left in the "
                        "results file (the j-th of them goes to shard j %% n), into this shard's own results file"
                        .replace("%%", "%"), key=False)
    merge: bool = option(False, "fold the shard files into the results file, then summarise", key=False)
    threads: int = option(0, "torch CPU threads on the CPU device (0 = every core this process may use)", key=False)
    device: str = option("auto", "auto (CUDA if available), cpu, or cuda[:i]", key=False)


def redefault(name: str, value, help: Optional[str] = None):
    """A :class:`SweepConfig` field with another default (and optionally another help) in a subclass."""
    f = SweepConfig.__dataclass_fields__[name]
    md = dict(f.metadata)
    if help is not None:
        md["help"] = help
    return dataclasses.field(default=value, metadata=md)
