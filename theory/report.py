"""The verification report behind ``python -m theory``: one row per claim.

A claim module registers a check with :func:`claim`; the check draws ``n`` random instances from
``seed``, runs the construction and returns a :class:`ClaimResult`. Modules are discovered
automatically (every ``theory.<module>`` is imported), so adding a claim needs no edit here.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import textwrap
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

VERDICTS = ("verified", "FAILED", "finding")


@dataclass
class ClaimResult:
    """claim: short name; instances: how many were tried; worst_rel_err: the largest relative error
    seen; verdict: "verified", "FAILED" or "finding" (a claim that does not hold as stated, reported
    with what does hold); note: one line of detail."""

    claim: str
    instances: int
    worst_rel_err: float
    verdict: str
    note: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict: must be one of {VERDICTS}, got {self.verdict!r}")


@dataclass
class _Claim:
    name: str
    order: int
    fn: Callable[[int, int], ClaimResult]


_REGISTRY: Dict[str, _Claim] = {}


def claim(name: str, order: int = 100):
    """Register ``fn(n_instances, seed) -> ClaimResult`` under ``name``; rows sort by ``order``."""

    def deco(fn):
        _REGISTRY[name] = _Claim(name, order, fn)
        return fn

    return deco


def discover() -> List[str]:
    """Import every module of the ``theory`` package (not its tests) so their claims register."""
    import theory

    for info in pkgutil.iter_modules(theory.__path__):
        if info.name in ("tests", "__main__") or info.name.startswith("_"):
            continue
        importlib.import_module(f"theory.{info.name}")
    return sorted(_REGISTRY, key=lambda k: (_REGISTRY[k].order, k))


def matching_claims(only: Optional[str] = None) -> List[str]:
    """Registered claim names (in report order) containing ``only`` (case-insensitive); all if None."""
    names = discover()
    return names if only is None else [k for k in names if only.lower() in k.lower()]


def run_report(n: int, seed: int, only: Optional[str] = None) -> List[ClaimResult]:
    names = matching_claims(only)
    if not names:
        raise ValueError(f"only: no claim matches {only!r}; claims: {discover()}")
    out = []
    for k in names:
        try:
            out.append(_REGISTRY[k].fn(n, seed))
        except Exception as exc:  # a crashing check is a failed claim, reported, not hidden
            out.append(ClaimResult(k, 0, float("nan"), "FAILED", f"{type(exc).__name__}: {exc}"))
    return out


REPORT_WIDTH = 100  # columns of the default layout (a common terminal width)


def format_table(results: List[ClaimResult], width: Optional[int] = REPORT_WIDTH) -> str:
    """The report: one row per claim (claim, instances, worst relative error, verdict) wrapped to ``width``
    columns, its note on the indented lines below; ``width=None``: one line per claim (``--wide``),
    as wide as the longest note."""
    if width is None:
        return _format_wide(results)
    head = ("claim", "instances", "worst rel. err", "verdict")
    rows = [(r.claim, str(r.instances), f"{r.worst_rel_err:.2e}", r.verdict) for r in results]
    fixed = [max(len(x[i]) for x in [head] + rows) for i in (1, 2, 3)]
    claim_w = max(20, width - sum(fixed) - 2 * len(fixed))
    fmt = "{:<%d}  " % claim_w + "  ".join("{:<%d}" % w for w in fixed)
    lines = [fmt.format(*head).rstrip(), fmt.format(*("-" * w for w in [claim_w] + fixed))]
    for r, row in zip(results, rows):
        name = textwrap.wrap(row[0], claim_w, subsequent_indent="  ") or [""]  # continuation indented by 2
        lines.append(fmt.format(name[0], *row[1:]).rstrip())
        lines += name[1:]
        if r.note:
            lines += textwrap.wrap(r.note, width, initial_indent="    ", subsequent_indent="    ",
                                   break_long_words=True, break_on_hyphens=False)
    return "\n".join(lines)


def plain(text: str) -> str:
    """Help text without reStructuredText markup: ``code`` -> code, :func:`name` -> name (for --help)."""
    return re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text).replace("``", "")


def _format_wide(results: List[ClaimResult]) -> str:
    head = ("claim", "instances", "worst rel. err", "verdict", "note")
    rows = [(r.claim, str(r.instances), f"{r.worst_rel_err:.2e}", r.verdict, r.note) for r in results]
    widths = [max(len(x[i]) for x in [head] + rows) for i in range(4)]
    fmt = "  ".join("{:<%d}" % w for w in widths) + "  {}"
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths), "----")]
    lines += [fmt.format(*r) for r in rows]
    return "\n".join(lines)
