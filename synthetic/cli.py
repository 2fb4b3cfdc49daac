"""Command lines built from a config dataclass (the deep-S4 experiments: ``synthetic.s4_regression``,
``synthetic.s4_official``). Every field is an option ``--field-name``; tuples are comma-separated lists;
a preset (a dict of field values) becomes the defaults, explicit options override it; unknown options
are rejected; a ``ValueError`` from the config's validator becomes an argparse error (exit 2, no traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple


def list_of(typ):
    """argparse type: 'a,b,c' -> tuple of ``typ``."""
    def parse(s):
        try:
            return tuple(typ(x.strip()) for x in s.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {typ.__name__}, got {s!r}")
    parse.__name__ = f"list of {typ.__name__}"
    return parse


# ------------------------------------------------------------------------------------ field metadata
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


def build_parser(cls, presets: Dict[str, Dict], preset: str, *, prog: str, description: str,
                 epilog: str = "") -> argparse.ArgumentParser:
    """One option per field of ``cls``, its help from the field's metadata and its default the value ``preset``
    will use (so ``--preset paper --help`` shows the paper preset's values). Booleans are ``--flag/--no-flag``,
    lists comma-separated; ``compile`` is a tri-state (not given: by device)."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    defaults.update(presets.get(preset, {}))
    defaults["preset"] = preset
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog or None, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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


# ---------------------------------------------------------------------------------- the shared sweep fields
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
    time_budget: float = option(0.0, "seconds: stop starting new runs after this (0 = no limit); rerun to resume",
                                key=False, old=("--time-budget-s",))
    out: str = option("out", "folder of the results file and figures (out/ is not committed; the committed "
                      "results are in figures/)", key=False)
    plot_only: bool = option(False, "print the summary and redraw the figures from the results file; no training",
                             key=False)
    dry_run: bool = option(False, "print the plan (runs done / to do per method, estimated time) and exit", key=False)
    shard: str = option("", "'i/n': run only base-grid groups j with j %% n == i, into this shard's own results file"
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
