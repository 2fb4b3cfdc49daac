"""The command flow of every experiment, written once: ``python -m synthetic <experiment> [options]``
(:mod:`synthetic.experiments`) runs :func:`run_command` with the experiment's :class:`Command`.

The flow: parse the options with the one parser (:func:`synthetic.cli.parse_options`); before anything runs, check
the results files (a corrupted one is never touched; ``--plot-only`` needs runs) and the experiment's own rules (e.g.
that a training step fits the device), a failure being one line on stderr and exit 2; then

- ``--dry-run``: print the plan (:func:`synthetic.dry_run.print_plan`), nothing else;
- ``--merge``: fold the shard files into the results file (:func:`synthetic.runner.merge_shards`), then summarise;
- ``--plot-only``: summarise;
- otherwise run the sweep (:func:`synthetic.runner.run_sweep`) and, unless it ran one ``--shard`` or is a torchrun
  rank other than 0, summarise.

To summarise is to print the summary table (stdout), then draw the figures (one ``wrote <path>`` line per file).
After a sweep or a merge a missing plotting library is a message (redraw later with ``--plot-only``); with
``--plot-only`` it is an error.

An experiment supplies only what differs, as a :class:`Command` subclass: its config and presets (or its own parse
function), its results file, its sweep (a :class:`synthetic.runner.Experiment`), and where it differs from the
defaults its records, table and figures. The defaults are those of a regression of MSE vs trainable parameters:
best of the learning-rate grid per (method, budget), a text table and the MSE-vs-trainable-% figure.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Dict, List, NoReturn, Optional, Sequence, Tuple

from synthetic.cli import key_config, parse_options
from synthetic.results import (LrPolicy, ResultsFile, best_of_grid, edge_label, one_configuration, run_key,
                               run_records)
from synthetic.dry_run import print_plan
from synthetic.runner import is_main_process, merge_shards, parse_shard, run_sweep


class Command:
    """What one experiment's command supplies to :func:`run_command` (see the module docstring)."""

    name = ""  # the registered name: ``python -m synthetic <name>``
    description = ""
    config: Any = None  # the config dataclass (a synthetic.cli.SweepConfig subclass)
    presets: Dict[str, Dict] = {}
    elsewhere: Dict[str, str] = {}  # a preset another experiment runs -> its Command, "module:Class"
    method_order: Sequence[str] = ()  # the table's and figure's method order
    widths: Tuple[int, int] = (16, 20)  # the default table's method and budget columns
    spread: bool = False  # the default table also shows the min and max over seeds
    title = ""  # the default figure's title

    @property
    def prog(self) -> str:
        return f"python -m synthetic {self.name}"

    @classmethod
    def main(cls, argv: Optional[Sequence[str]] = None) -> int:
        return run_command(cls(), argv)

    # ------------------------------------------------------------------------------ what every command has
    def parse(self, argv: Optional[Sequence[str]]):
        """Options -> validated config (the preset's values as defaults; a bad option exits 2)."""
        return parse_options(self.config, self.presets, argv, prog=self.prog, description=self.description)[0]

    def results_path(self, cfg) -> Path:
        raise NotImplementedError

    def experiment(self, cfg):
        """The sweep of ``cfg``: a :class:`synthetic.runner.Experiment` (built for a sweep or a dry run only)."""
        raise NotImplementedError

    def log(self, s: str) -> None:
        print(f"{self.name}: {s}", file=sys.stderr)

    # ------------------------------------------------------------------------------ defaults to override
    def inputs(self, cfg) -> List[Path]:
        """The results files the summary reads (checked before anything runs)."""
        return [self.results_path(cfg)]

    def check(self, cfg) -> None:
        """The experiment's own checks before anything runs (ValueError naming the option)."""

    def lr_policy(self, cfg) -> LrPolicy:
        return LrPolicy.from_config(cfg)

    def fingerprint(self, cfg, config: Dict) -> str:
        """What the records of one configuration share: the key of a record's ``config``."""
        return run_key(config)

    def wanted(self, cfg) -> str:
        """The fingerprint of ``cfg``'s own records."""
        return run_key(key_config(cfg))

    def select(self, cfg, runs: Sequence[Dict], note=None) -> List[Dict]:
        """The run records of one configuration: ``cfg``'s if ``runs`` has it, else the last record's (a summary
        never mixes configurations; ``note``, by default :meth:`log`, says how many records it leaves out)."""
        return one_configuration(runs, lambda r: self.fingerprint(cfg, r.get("config", {})), self.wanted(cfg),
                                 note=note or self.log)

    def records(self, cfg) -> List[Dict]:
        """:meth:`select` of the results file's run records."""
        return self.select(cfg, ResultsFile(self.results_path(cfg)).runs())

    def summary(self, cfg) -> Tuple[str, Any]:
        """(the summary table, what :meth:`figure` draws): by default the best of the lr grid per (method, budget)
        over ``records``, and (records, rows)."""
        records = self.records(cfg)
        rows = best_of_grid(records, group_keys=("method", "budget_label"), lr_policy=self.lr_policy(cfg))
        return self.table(rows), (records, rows)

    def table(self, rows: Sequence[Dict]) -> str:
        """Best-of-grid rows as text ('lr edge' flags a best lr still at an edge of its grid, with the bound that
        stopped the grid, or 'not extended' for a sweep cut short)."""
        mw, bw = self.widths
        f = lambda v: "n/a" if v is None else f"{v:.4g}"  # noqa: E731
        spread = f" {'min':>10} {'max':>10}" if self.spread else ""
        lines = [f"{'method':<{mw}} {'budget':<{bw}} {'trainable %':>11} {'best MSE':>10}{spread} {'lr':>8}  lr edge"]
        order = {m: i for i, m in enumerate(self.method_order)}
        for r in sorted(rows, key=lambda r: (order.get(r["method"], 99), r["trainable_pct"] or 0)):
            spread = f" {f(r.get('min')):>10} {f(r.get('max')):>10}" if self.spread else ""
            lines.append(f"{r['method']:<{mw}} {r['budget_label']:<{bw}} {(r['trainable_pct'] or 0):11.3f} "
                         f"{f(r['mean']):>10}{spread} {r['lr']!s:>8}  {edge_label(r)}")
        return "\n".join(lines)

    def figure_stem(self, cfg) -> Path:
        """The default figure's path without its suffix."""
        raise NotImplementedError

    def note(self, records: Sequence[Dict]) -> str:
        """The run description under the default figure."""
        return ""

    def partial_note(self, cfg) -> str:
        """'partial sweep: D of T base-grid runs done' while the base grid of ``cfg`` is incomplete (a figure then
        says so: its best lrs and bars may still move), else ''."""
        import dataclasses

        from synthetic.dry_run import base_grid_counts, grid_totals

        done, total = grid_totals(base_grid_counts(self.experiment(dataclasses.replace(cfg, dry_run=True))))
        return f"partial sweep: {done} of {total} base-grid runs done" if done < total else ""

    def figure(self, cfg, data) -> List[str]:
        """The figures of :meth:`summary`'s ``data``; returns the paths written. By default MSE vs trainable %."""
        records, rows = data
        if not records:
            self.log(f"no records in {self.results_path(cfg)}; nothing to plot")
            return []
        from synthetic.plots import plot_mse_vs_params, run_title

        return plot_mse_vs_params(rows, str(self.figure_stem(cfg)), method_order=self.method_order,
                                  note=self.note(records), title=run_title(
                                      self.title + (f" ({partial})" if (partial := self.partial_note(cfg)) else ""),
                                      records, "MSE vs. trainable parameters"))


def load_command(ref) -> type:
    """A :class:`Command` subclass, given as the class or as "module:Class" (imported now)."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _error(cmd: Command, msg: str) -> NoReturn:
    """One line on stderr and exit 2, as the parser's errors."""
    print(f"{cmd.prog}: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def _preset(argv: Sequence[str]) -> str:
    import argparse

    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--preset", default="")
    return pre.parse_known_args(argv)[0].preset


def run_command(cmd: Command, argv: Optional[Sequence[str]] = None) -> int:
    """The command flow (see the module docstring); returns the exit status (bad input: SystemExit(2))."""
    argv = list(sys.argv[1:] if argv is None else argv)
    other = cmd.elsewhere.get(_preset(argv)) if cmd.elsewhere else None
    if other:  # e.g. python -m synthetic s4 --preset official: the s4_official command
        return run_command(load_command(other)(), argv)
    cfg = cmd.parse(argv)
    try:
        inputs = cmd.inputs(cfg)
        loaded = [ResultsFile(path).load() for path in inputs]  # a corrupted file stops here, untouched
        if cfg.plot_only and not any(run_records(records) for records in loaded):
            raise ValueError(f"--plot-only: no results in {inputs[0]} (run without --plot-only first, or pass the "
                             "--out and --preset of an earlier run)")
        if not (cfg.plot_only or cfg.dry_run or cfg.merge):
            cmd.check(cfg)
    except ValueError as e:  # ResultsFileError and json errors are ValueErrors
        _error(cmd, str(e))
    shard = parse_shard(cfg.shard)
    if cfg.dry_run:
        print_plan(cmd.experiment(cfg), shard)
        return 0
    if cfg.merge:
        merge_shards(cmd.results_path(cfg), log=cmd.log)
    elif not cfg.plot_only:
        run_sweep(cmd.experiment(cfg), time_budget=cfg.time_budget, shard=shard, log=cmd.log)
        if shard is not None or not is_main_process():  # under torchrun, rank 0 alone summarises and draws
            return 0
    table, data = cmd.summary(cfg)
    print(table)
    try:
        cmd.figure(cfg, data)  # each file it writes is printed (synthetic.plots.wrote)
    except ImportError as e:  # e.g. a GPU machine without matplotlib
        if cfg.plot_only:
            raise
        cmd.log(f"no plots ({e}); run again with --plot-only")
    return 0
