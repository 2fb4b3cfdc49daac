"""Command lines built from a config dataclass, the same grammar for every experiment. Every field is an option
``--field-name`` (its help and run-key role are field metadata, :func:`synthetic.options.option`); booleans are
``--flag/--no-flag``; tuples are comma-separated lists; a preset (a dict of field values) becomes the defaults,
explicit options override them; unknown options are rejected; a ``ValueError`` from the config's validator becomes
an argparse error (exit 2, no traceback). The field metadata (:mod:`synthetic.options`) and the option checks
(:mod:`synthetic.checks`) are importable from here too.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Callable, Dict, List, Optional, Sequence

from synthetic.checks import (SEED_MAX, available_memory, check_memory, check_numbers,  # noqa: F401 (re-exported)
                              check_out_dir, check_overwrite, check_shard_options, check_sweep_options, read_report)
from synthetic.options import (SweepConfig, deprecated, fields_from_record_config,  # noqa: F401 (re-exported)
                               key_config, key_of_record_config, list_of, meta, option, record_config, redefault)


# ------------------------------------------------------------------------------------------ the parser
TRUE, FALSE = ("1", "true", "yes"), ("0", "false", "no")


def _elem_type(cls, f):
    import typing

    hint = typing.get_type_hints(cls)[f.name]
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return args[0]
    if args and type(None) in args:  # Optional[X]
        return next(a for a in args if a is not type(None))
    return hint


def _fmt(v) -> str:
    if isinstance(v, tuple):
        return ",".join(map(str, v)) or "(none)"
    if v is None:
        return "by device"
    if v == "":
        return "none"
    return str(v)


class _Deprecated(argparse.Action):
    """A deprecated option name: one line on stderr, then the new option's value."""

    def __init__(self, option_strings, dest, new: str = "", conv=None, **kw):
        self.new, self.conv = new, conv
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, ns, values, option_string=None):
        deprecated(option_string, self.new)
        setattr(ns, self.dest, self.conv(values) if self.conv else values)


HELP_WIDTH = 100  # columns of a --help description (argparse wraps the option help to the terminal)


def help_text(text: str, width: int = HELP_WIDTH) -> str:
    """A docstring made into --help text: reStructuredText markup removed (:func:`theory.report.plain`) and every
    line longer than ``width`` wrapped (the description is printed as written: RawDescriptionHelpFormatter keeps
    its line breaks and indented blocks)."""
    import textwrap

    from theory.report import plain

    out = []
    for line in plain(text).splitlines():
        indent = line[:len(line) - len(line.lstrip())]
        out.append(textwrap.fill(line, width, subsequent_indent=indent, break_on_hyphens=False)
                   if len(line) > width else line)
    return "\n".join(out)


def build_parser(cls, presets: Dict[str, Dict], preset: str, *, prog: str, description: str,
                 epilog: str = "") -> argparse.ArgumentParser:
    """One option per field of ``cls``, its help from the field's metadata and its default the value ``preset``
    will use (so ``--preset paper --help`` shows the paper preset's values). Booleans are ``--flag/--no-flag``,
    lists comma-separated; ``compile`` is a tri-state (not given: by device)."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    defaults.update(presets.get(preset, {}))
    defaults["preset"] = preset
    p = argparse.ArgumentParser(prog=prog, description=help_text(description), epilog=epilog or None,
                                allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(cls):
        name, d = "--" + f.name.replace("_", "-"), defaults[f.name]
        typ = _elem_type(cls, f)
        text = (meta(f, "help") or f.name.replace("_", " ")).replace("%", "%%")
        kw: Dict = {"dest": f.name, "default": d}
        if typ is bool:
            kw.update(action=argparse.BooleanOptionalAction)
            text += f" (default: {'--' if d else '--no-'}{f.name.replace('_', '-')}" + \
                ("; not given: by device)" if d is None else ")")
        elif isinstance(f.default, tuple):
            kw.update(type=list_of(typ), metavar="A,B,...")
            text += f" (default: {_fmt(d)})".replace("%", "%%")
        else:
            kw.update(type=typ, metavar=typ.__name__.upper() if typ is not str else "TEXT")
            if f.name == "preset":
                kw.update(choices=sorted(presets), metavar="{" + ",".join(presets) + "}")
            text += f" (default: {_fmt(d)})".replace("%", "%%")
        p.add_argument(name, help=text, **kw)
        for old in meta(f, "old", ()):
            if typ is bool:
                p.add_argument(old, dest=f.name, action=_Deprecated, nargs=0, new=name, conv=lambda _v: True,
                               help=argparse.SUPPRESS)
            else:
                p.add_argument(old, dest=f.name, action=_Deprecated, new=name, conv=kw.get("type"),
                               help=argparse.SUPPRESS)
    return p


def _bool_options(cls) -> set:
    out = set()
    for f in dataclasses.fields(cls):
        if _elem_type(cls, f) is bool:
            out.add("--" + f.name.replace("_", "-"))
            out.update(meta(f, "old", ()))
    return out


def modernise_argv(cls, argv: Sequence[str], preset_aliases: Dict[str, str]) -> List[str]:
    """Deprecated spellings of values rewritten (each with a one-line message): ``--flag true|false`` (and
    ``--flag=false``) as ``--flag``/``--no-flag``, and a renamed preset."""
    bools, out, argv = _bool_options(cls), [], list(argv)
    i = 0
    while i < len(argv):
        a = argv[i]
        name, eq, val = a.partition("=")
        if name in bools and (eq or (i + 1 < len(argv) and argv[i + 1].lower() in TRUE + FALSE)):
            v = val if eq else argv[i + 1]
            i += 1 if eq else 2
            if v.lower() not in TRUE + FALSE:
                out.append(a)
                continue
            new = name if v.lower() in TRUE else "--no-" + name[2:]
            deprecated(f"{name} {v}", new)
            out.append(new)
            continue
        if name == "--preset" and (val if eq else (argv[i + 1] if i + 1 < len(argv) else "")) in preset_aliases:
            old = val if eq else argv[i + 1]
            deprecated(f"--preset {old}", f"--preset {preset_aliases[old]}")
            out += ["--preset", preset_aliases[old]]
            i += 1 if eq else 2
            continue
        out.append(a)
        i += 1
    return out


def parse_options(cls, presets: Dict[str, Dict], argv: Optional[Sequence[str]], *, prog: str, description: str,
                  default_preset: str = "cpu", preset_aliases: Optional[Dict[str, str]] = None,
                  validate: Optional[Callable] = None, post: Optional[Callable] = None, epilog: str = ""):
    """Command line -> validated ``cls``: the preset's values are the defaults, explicit options override them;
    unknown options are rejected; a ValueError of ``validate`` becomes a parser error (exit 2, one line).
    Returns (config, parser). post: ``cfg -> cfg`` before validation (e.g. expanding ``--methods all``)."""
    import sys

    argv = modernise_argv(cls, sys.argv[1:] if argv is None else argv, preset_aliases or {})
    known = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    known.add_argument("--preset", default=default_preset)
    pre, _ = known.parse_known_args(argv)
    preset = pre.preset if pre.preset in presets else default_preset
    parser = build_parser(cls, presets, preset, prog=prog, description=description, epilog=epilog)
    ns = parser.parse_args(argv)
    values = vars(ns)
    for f in dataclasses.fields(cls):
        norm = meta(f, "normalise")
        if norm is not None and isinstance(values[f.name], tuple):
            try:
                values[f.name] = tuple(norm("--" + f.name.replace("_", "-"), x) for x in values[f.name])
            except ValueError as e:
                parser.error(str(e))
    cfg = cls(**values)
    try:
        if post is not None:
            cfg = post(cfg)
        if validate is not None:
            cfg = validate(cfg) or cfg
    except ValueError as e:
        parser.error(str(e))
    return cfg, parser


def threads_for(n: int) -> int:
    """torch CPU threads for ``--threads n``: n, or with 0 every core this process may use (``OMP_NUM_THREADS``
    when set, as torchrun sets it)."""
    import os

    if n:
        return n
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
