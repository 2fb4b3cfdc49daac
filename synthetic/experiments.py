"""The experiment registry behind ``python -m synthetic <experiment> [options]``: every experiment is one
:class:`Spec` (its name, one line of what it does and its :class:`synthetic.command.Command`), found by name;
``python -m synthetic --list`` prints them. ``python -m synthetic.s4_regression`` etc. are aliases of the same
commands. The command flow (parse, check, dry run, merge, sweep, summary table, figures) is written once, in
:func:`synthetic.command.run_command`.

Adding an architecture: its reference block and PEFT wrappers (a registry of methods), a config that subclasses
:class:`synthetic.cli.SweepConfig` (model fields with :func:`synthetic.cli.option`), an experiment for
:func:`synthetic.runner.run_sweep`, a :class:`synthetic.command.Command` naming the three, and one :func:`register`
call (``tests/test_experiments.py`` registers a toy experiment and runs it end to end).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

from synthetic.command import load_command, run_command


@dataclass(frozen=True)
class Spec:
    """One registered experiment. ``command``: its :class:`synthetic.command.Command` subclass, or "module:Class"
    (imported when used); ``alias``: the ``python -m synthetic.<alias>`` module that runs it too."""

    name: str
    summary: str
    command: object
    alias: str = ""

    def load(self):
        """The command class."""
        return load_command(self.command)

    def run(self, argv: Optional[Sequence[str]] = None) -> int:
        return run_command(self.load()(), argv)


REGISTRY: Dict[str, Spec] = {}


def register(spec: Spec) -> Spec:
    """Add ``spec`` (a name registered twice is refused)."""
    if spec.name in REGISTRY:
        raise ValueError(f"experiment {spec.name!r} is registered already")
    REGISTRY[spec.name] = spec
    return spec


for _spec in (
    Spec("s4", "deep S4, the paper's conventions: Figure 2's regression (presets cpu, paper, tiny; official, "
         "official-tiny run s4_official)", "synthetic.s4.experiment:S4Command", "s4_regression"),
    Spec("s4_official", "deep S4, the official code's conventions: Figure 2 run for run (presets official, "
         "official-tiny)", "synthetic.s4.official_experiment:OfficialCommand"),
    Spec("s4_theorem1", "Theorem 1 vs training on deep S4: why SDT does not reach the construction's zero",
         "synthetic.s4.theorem1_study:Theorem1Command", "s4_theorem1"),
    Spec("mamba", "Mamba (S6): SDT vs LoRA on Mamba blocks", "synthetic.mamba.experiment:MambaCommand",
         "mamba_regression"),
    Spec("mamba2", "Mamba-II (SSD): SDT vs LoRA on Mamba2 blocks (heads are its channels)",
         "synthetic.mamba2.experiment:Mamba2Command", "mamba2_regression"),
    Spec("hybrid", "Jamba-style attention + Mamba stacks: PEFT of both module kinds",
         "synthetic.hybrid.experiment:HybridCommand", "hybrid_regression"),
):
    register(_spec)


WIDTH = 100  # terminal columns the listing fits


def listing() -> str:
    """One entry per experiment: name, presets, what it does; wrapped to :data:`WIDTH` columns, continuation lines
    indented (so each entry's first word is its name)."""
    import textwrap

    lines = []
    for s in REGISTRY.values():
        try:
            presets = ",".join(s.load()().presets)
        except Exception as e:  # an experiment whose module does not import is listed with the reason
            presets = f"(not importable: {type(e).__name__})"
        lines.append(textwrap.fill(f"{s.name:<12} [{presets}]  {s.summary}", width=WIDTH, subsequent_indent=" " * 13,
                                   break_on_hyphens=False))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None, *, out: Callable[[str], None] = print) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: python -m synthetic EXPERIMENT [options]   (python -m synthetic EXPERIMENT --help; --list)"
    if not argv or argv[0] in ("-h", "--help"):
        out(usage + "\n\nexperiments:\n" + listing())
        return 0
    if argv[0] == "--list":
        out(listing())
        return 0
    name = argv[0]
    if name not in REGISTRY:
        print(f"{usage}\npython -m synthetic: error: unknown experiment {name!r}; choose from {list(REGISTRY)}",
              file=sys.stderr)
        return 2
    return REGISTRY[name].run(argv[1:])
