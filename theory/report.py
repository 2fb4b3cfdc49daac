"""The verification report behind ``python -m theory``: one row per claim.

A claim module registers a check with :func:`claim`; the check draws ``n`` random instances from
``seed``, runs the construction and returns a :class:`ClaimResult`. Modules are discovered
automatically (every ``theory.<module>`` is imported), so adding a claim needs no edit here.
"""

from __future__ import annotations

import importlib
import pkgutil
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


def format_table(results: List[ClaimResult]) -> str:
    head = ("claim", "instances", "worst rel. err", "verdict", "note")
    rows = [(r.claim, str(r.instances), f"{r.worst_rel_err:.2e}", r.verdict, r.note) for r in results]
    widths = [max(len(x[i]) for x in [head] + rows) for i in range(4)]
    fmt = "  ".join("{:<%d}" % w for w in widths) + "  {}"
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths), "----")]
    lines += [fmt.format(*r) for r in rows]
    return "\n".join(lines)
