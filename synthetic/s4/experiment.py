"""Deep-S4 synthetic regression: MSE vs trainable parameters (Galim et al., ICML 2025, Sec. 6.1, Fig. 2).

A frozen randomly initialised deep S4 (``L_frozen`` layers, ``H`` real states = ``H/2`` conjugate
pairs) is fine-tuned to reproduce a random target deep S4 (``L_target`` layers, ``H_star`` states) on
integer inputs in {0..9}; every method is swept over its budgets, a learning-rate grid and seeds;
the figure shows best-of-grid mean MSE vs trainable % (of the frozen model's parameters) with the
seed spread. Layers: skip inside the projection (the official code), ``y = σ(W(S4(x) + u ⊙ x) + β)``.

Methods (:data:`METHODS`; SSM module × linear projection):
- Frozen: none × none.
- LoRA (Proj): frozen × LoRA rank r on W.
- LoRA (S4+Proj): LoRA rank s on log(−Re A), Im A, Re C, Im C as D×Hc matrices × LoRA rank r on W.
- SDT: Algorithm 1 (``synthetic.s4.selection``: 20-iteration warm-up of the SSM modules on a copy,
  lr 1e-2, then channels/states ranked by the change of Ā, magnitude as usability rule); A and C of
  selected (channel, state) entries trained, B and Δ frozen × channel-sparse W (the columns of W
  reading the selected channels).
- SDT + LoRA: the same SSM update × LoRA rank r on W.
- Full: every parameter.

Methods other than Full (and BitFit's β) train neither the skip ``u`` nor ``log_dt`` nor ``β`` by default.

The benchmark's other methods (Sec. 3-4; :data:`BENCHMARK_METHODS`, not in the default ``--methods``;
``--methods all`` runs every method and writes ``peft_methods_s4_<preset>.jsonl`` / ``.png``): Prompt
tuning (``--prompt-lens``), Prefix-tuning (``--prefix-lens``, M < H and M >= H for Proposition 1),
Initial-state tuning, State-offset tuning (Kang et al.), BitFit (β), DoRA (Proj) (``--dora-ranks``),
Additional-scan (``--additional-states``). They run on the fast model's second path
(``synthetic.s4.model.RunState.extra``); their budget lists are not part of run keys.
Opt-in options closer to the official code (``notes/s4_official_differences.md``; at their defaults
they are left out of run keys, so earlier results still resume): ``--state-convention complex``
(``H`` complex modes per channel instead of ``H/2`` pairs), ``--sdt-prune usable`` with
``--usable-channels``/``--usable-states`` (SDT zeroes ``C`` outside the usable dimensions, counted as
pruned, and updates only usable ones), ``--train-skip-dt-bias`` (u, log_dt, β trainable in every
trained method), ``--warmup-params all`` (the warm-up updates every parameter).

Usage::

    python -m synthetic.s4_regression                  # reduced default, any device (CPU < 3 min)
    python -m synthetic.s4_regression --preset paper   # the paper's configuration (GPU)
    python -m synthetic.s4_regression --preset paper --plot-only
    python -m synthetic.s4_regression --preset official   # the official code's conventions (synthetic.s4.official_experiment)
    python -m synthetic.s4_regression --methods all    # every method, the benchmark's included

Outputs in ``--out``: ``s4_regression_<preset>.jsonl`` (one record per run, appended atomically;
rerunning resumes), ``s4_mse_vs_params_<preset>.png`` / ``.pdf``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from synthetic.plots import plot_mse_vs_params, run_title
from synthetic.command import Command
from synthetic.results import LrPolicy, edge_label, environment, run_key, subsample_curve, utc_now
from synthetic.runner import Group, Run
from synthetic.s4 import model as sm
from synthetic.s4.config import OPT_IN_DEFAULTS, PRESETS, Config, key_fields, n_modes, parse_config
from synthetic.s4.methods import METHODS, BENCHMARK_METHODS, configure, method_label, theory_trainable_count
from synthetic.s4.official import PRESETS as OFFICIAL_PRESETS
from synthetic.cli import check_memory, record_config
from synthetic.s4.train import Trainer, TrainerExperiment, config_step_bytes, resolve_device

# -------------------------------------------------------------------------------------- sweep
def key_config(cfg: Config) -> Dict:
    return key_fields(record_config(cfg))


def run_groups(cfg: Config) -> List[Tuple[int, str, Dict]]:
    """(seed, method, budget) groups in execution order: seed-major, so a cut-short sweep covers every point."""
    return [(s, m, b) for s in cfg.seeds for m in cfg.methods for b in METHODS[m].budgets(cfg)]


def paths(cfg: Config) -> Dict[str, Path]:
    """Results and figure paths; a sweep with any of :data:`BENCHMARK_METHODS` (e.g. ``--methods all``)
    writes its own pair, ``peft_methods_s4_<preset>.jsonl`` / ``.png``."""
    out = Path(cfg.out)
    if any(m in BENCHMARK_METHODS for m in cfg.methods):
        return {"json": out / f"peft_methods_s4_{cfg.preset}.jsonl", "fig": out / f"peft_methods_s4_{cfg.preset}"}
    return {"json": out / f"s4_regression_{cfg.preset}.jsonl", "fig": out / f"s4_mse_vs_params_{cfg.preset}"}


def lr_policy(cfg: Config) -> LrPolicy:
    """The config's rule for growing the learning-rate grid at its edges (``synthetic.results.LrPolicy``)."""
    return LrPolicy.from_config(cfg)


def run_generator(key: str) -> torch.Generator:
    """The generator of one run's adapter initialisation, seeded from its key: a run's LoRA factors do not depend
    on which other runs share its step (nor on their number or its position among them)."""
    return torch.Generator().manual_seed(int(hashlib.sha256(key.encode()).hexdigest()[:15], 16))


class S4Experiment(TrainerExperiment):
    """The deep-S4 experiment as a :class:`synthetic.runner.Experiment`: its run groups, run keys and training.

    Packing: with ``runs_per_step`` R > 0, the runs of one seed whose methods share the default graph (every
    registry entry without extra tensors, except Frozen, which is only evaluated) are trained together, up to R
    per step, whatever their method and budget; with R = 0 a step trains one (seed, method, budget) group.
    Each run's state is built alone (its own generator, :func:`run_generator`) and the states are stacked, so
    a run's result does not depend on the others in its step. With torch.compile a short step is padded to R
    runs (one compiled graph; the padding runs are not recorded).
    """

    name = "s4"

    def __init__(self, cfg: Config, log=print):
        self.cfg, self.log = cfg, log
        self.preset, self.seeds, self.base_lrs = cfg.preset, tuple(cfg.seeds), tuple(cfg.lrs)
        self.lr_policy = lr_policy(cfg)
        self.results_path = paths(cfg)["json"]
        self.kc = key_config(cfg)
        self.device = resolve_device(cfg)
        self.max_runs_per_call = cfg.runs_per_step or len(cfg.lrs)
        self._cache: Dict[int, Dict] = {}
        self.total_params = sm.count_layer_params(cfg.d_model, n_modes(cfg, cfg.frozen_d_state)) * cfg.frozen_layers

    def make_trainer(self) -> "Trainer":
        return Trainer(self.cfg, self.device, self.log)  # looked up here: tests may replace the class

    def describe(self) -> str:
        t, cfg = self.trainer, self.cfg
        return (f"device {environment()['device']}, compile={t.use_compile}, "
                f"precision={cfg.precision if self.device.type == 'cuda' else 'fp32'}, "
                f"runs per step {self.max_runs_per_call}{' (packed)' if cfg.runs_per_step else ''}; "
                f"frozen model {self.total_params} parameters")

    def groups(self) -> List[Group]:
        """(seed, method, budget) groups in execution order: seed-major, so a cut-short sweep covers every point."""
        cfg = self.cfg
        return [Group(s, m, b, tuple(cfg.lrs) if METHODS[m].trains else (None,), grows=METHODS[m].trains)
                for s, m, b in run_groups(cfg)]

    def pack_key(self, run: Run):
        """Runs with the same pack key may share a step (None: the run's group trains alone)."""
        m = METHODS[run.method]
        if not self.cfg.runs_per_step or not m.trains or m.extra or (m.needs_selection and self.cfg.sdt_prune != "none"):
            return None
        return run.seed

    def _selection(self, seed: int):
        c = self._cache[seed]
        if "selection" not in c:
            tw = time.monotonic()
            c["selection"] = self.trainer.warmup_selection(c["frozen"], c["target"], seed)
            c["warmup_s"] = time.monotonic() - tw
        return c["selection"]

    def prepare(self, run: Run) -> None:
        """What a run needs before its step is timed (Algorithm 1's warm-up, cached per seed)."""
        if METHODS[run.method].needs_selection:
            self._selection(run.seed)

    def traits(self, run: Run) -> Tuple[str, bool, int, bool]:
        """(budget label, trains, iterations, uses the warm-up's selection) of a run."""
        m = METHODS[run.method]
        return method_label(m, run.budget), m.trains, self.cfg.iters if m.trains else 0, m.needs_selection

    def build_run(self, run: Run, models: Dict) -> Tuple[sm.RunState, Optional[int], Dict]:
        """One run's state, built alone with its own key-seeded generator (:func:`run_generator`), its trainable count
        by the ``theory.peft`` modules, and the extra fields of its record."""
        m = METHODS[run.method]
        sel = self._selection(run.seed) if m.needs_selection else None
        st = sm.RunState.create(models["frozen"], 1, *self.trainer.rank_max(),
                                generator=run_generator(self.key(run.seed, run.method, run.budget, run.lr)))
        configure(self.cfg, m, st, run.budget, sel)
        return st, theory_trainable_count(m, models["frozen"], run.budget, sel, self.cfg), {}

    def train(self, runs: Sequence[Run]) -> List[Dict]:
        """Train ``runs`` (one seed) in one step: one RunState per run (:meth:`build_run`), stacked; one record per run."""
        cfg, trainer = self.cfg, self.trainer
        seed = runs[0].seed
        env = environment()
        if seed not in self._cache:
            self._cache[seed] = dict(zip(("frozen", "target"), trainer.models(seed)))
        c = self._cache[seed]
        for r in runs:
            self.prepare(r)
        traits = [self.traits(r) for r in runs]
        tg = time.monotonic()
        built = [self.build_run(r, c) for r in runs]
        counts = [st.trainable_count()[0] for st, _, _ in built]
        if traits[0][1]:
            state = sm.RunState.concat([st for st, _, _ in built])
            curves = trainer.train(state, [r.lr for r in runs], traits[0][2], c["target"],
                                   trainer.data(seed, stream=0)).tolist()
        else:
            mse = trainer.evaluate([{k: v[None] for k, v in p.items()} for p in c["frozen"]], c["target"],
                                   trainer.data(seed, stream=0), cfg.frozen_eval_batches)
            curves = [[mse] for _ in runs]
        wall = time.monotonic() - tg
        recs = []
        for r, (label, _, iters, warm), (_, theory, extra), count, curve in zip(runs, traits, built, counts, curves):
            rec = self.record(r, label, curve, count, theory, wall, len(runs), self.recorded(runs), iters,
                              c.get("warmup_s") if warm else None, env)
            rec.update(extra)
            recs.append(rec)
        return recs

    def record(self, r: Run, label: str, curve: List[float], count: int, theory: Optional[int], wall: float,
               n_runs: int, n_recorded: int, iters: int, warmup_s: Optional[float], env: Dict) -> Dict:
        """One run's record (schema: ``synthetic.records``) from its loss curve and counts."""
        cfg = self.cfg
        finite = all(math.isfinite(v) for v in curve)
        tail = curve[-max(1, len(curve) // 50):]
        return {
            "method": r.method, "budget": r.budget, "budget_label": label,
            "lr": r.lr, "seed": r.seed, "model_seed": r.seed, "status": "ok" if finite else "diverged",
            "best_mse": min(curve) if finite else None, "final_mse": sum(tail) / len(tail) if finite else None,
            "best_mse_before_divergence": min((v for v in curve if math.isfinite(v)), default=None),
            "trainable": count, "trainable_theory": theory, "frozen_params": self.total_params,
            "trainable_pct": 100.0 * count / self.total_params, "iters": iters,
            "loss_curve": subsample_curve(curve, cfg.curve_points), "wall_s": wall / n_recorded,
            "group_wall_s": wall, "runs_in_group": n_runs, "warmup_s": warmup_s,
            "device": env["device"], "torch": env["torch"], "commit": env["commit"], "date": utc_now(),
            "precision": cfg.precision if self.device.type == "cuda" else "fp32",
            "compiled": self.trainer.use_compile, "config": record_config(cfg),
        }


# ------------------------------------------------------------------------------- theory point
def theory_point(cfg: Config, seed: int = 0) -> Optional[Dict]:
    """Theorem 1's construction in the experiment's variant (``cfg.activation``: ReLU or linear): its budget
    (trainable %) and MSE.

    ``theory.theorem1.construct_theorem1`` (linear) and ``theory.theorem1_relu.construct_theorem1_relu`` (ReLU,
    exact for inputs in [0, 9] of length ≤ N) work on real diagonal SSMs (not the conjugate-pair form the
    experiment trains) and a target without residual; so the point is computed on a random real-diagonal
    instance with the experiment's sizes (L = L_frozen, L* = L_target, D, H, H*), float64, skip inside, with
    integer inputs 0-9 of the experiment's length. Returns None if the theory module is unavailable or
    refuses the sizes.
    """
    relu = cfg.activation == "relu"
    try:
        from theory.deep import deep_forward
        from theory.theorem1 import construct_theorem1, random_instance
        from theory.theorem1_relu import construct_theorem1_relu, random_relu_instance
    except ImportError:
        return None
    g = torch.Generator().manual_seed(seed)
    try:
        if relu:
            frozen, target = random_relu_instance(cfg.frozen_layers, cfg.target_layers, cfg.d_model, cfg.frozen_d_state, cfg.target_d_state, generator=g)
            update = construct_theorem1_relu(frozen, target, x_max=9.0, seq_len=cfg.seq_len)
        else:
            frozen, target = random_instance(cfg.frozen_layers, cfg.target_layers, cfg.d_model, cfg.frozen_d_state, cfg.target_d_state, kind="s4",
                                             skip="inside", generator=g)
            update = construct_theorem1(frozen, target)
    except ValueError:
        return None
    x = torch.randint(0, 10, (2, cfg.d_model, cfg.seq_len), generator=g).to(torch.float64)  # (B, D, N)
    mse = float(((deep_forward(update.model, x) - deep_forward(target, x)) ** 2).mean())
    b = update.budget
    variant = "ReLU" if relu else "linear"
    return {"trainable_pct": b.percent, "mse": mse, "trainable": b.total_trainable, "model_params": b.model_params,
            "variant": variant, "short": f"Theorem 1 ({variant})\nMSE {mse:.1e}",
            "label": f"Theorem 1 construction ({variant}, real diag.): {b.percent:.1f}%, MSE {mse:.1e}"}


def plot(cfg: Config, recs: List[Dict], rows: List[Dict]) -> List[str]:
    """The MSE-vs-trainable-% figure of one configuration's records and their best-of-grid rows, with Theorem 1's
    point (:func:`theory_point`)."""
    p = paths(cfg)
    if not recs:
        raise SystemExit(f"{p['json']}: no results to plot")
    extra, note = [], ""
    tp = theory_point(cfg)
    if tp is not None:
        extra.append({"x": tp["trainable_pct"], "y": tp["mse"], "label": tp["label"], "short": tp["short"]})
    else:
        note = "Theorem 1 point: not drawn, theory.theorem1 unavailable or refused these sizes."
    c0 = recs[0]["config"]
    title = (run_title("deep S4 regression" + (", all PEFT methods" if "peft_methods" in str(p["fig"]) else ""), recs) +
             f"\nfrozen {c0['L_frozen']}L H={c0['H']}, target {c0['L_target']}L H*={c0['H_star']}, D={c0['D']}, "
             f"N={c0['N']}, batch {c0['batch']}, {c0['iters']} it, "
             f"{'ReLU' if c0.get('activation', 'relu') == 'relu' else 'linear'}, skip inside\n"
             f"best lr of {_lr_grid_text(recs, c0)}")
    opts = [f"{k}={c0[k]}" for k in OPT_IN_DEFAULTS if c0.get(k, OPT_IN_DEFAULTS[k]) != OPT_IN_DEFAULTS[k]]
    if opts:
        title += "\n" + ", ".join(opts)
    return plot_mse_vs_params(rows, p["fig"], method_order=list(METHODS), title=title, extra_points=extra, note=note,
                              hline_methods=("Frozen",))


def _lr_grid_text(recs: List[Dict], c0: Dict) -> str:
    """The lrs tried, e.g. '0.004-0.256 (base 0.004,0.016,0.064, ×4 at edges)'."""
    tried = sorted({r["lr"] for r in recs if r.get("lr") is not None})
    base = ",".join(f"{x:g}" for x in c0["lrs"])
    if not tried or tried == sorted(c0["lrs"]):
        return f"lrs {base}"
    return f"lrs {tried[0]:g}-{tried[-1]:g} (base {base}, ×{c0.get('lr_extend_factor', 4.0):g} at edges)"


def fingerprint(config: Dict) -> str:
    return run_key(key_fields(config))


class S4Command(Command):
    """``python -m synthetic s4``: the deep-S4 command (:mod:`synthetic.command`'s flow); ``--preset official`` and
    ``official-tiny`` run ``s4_official`` (:class:`synthetic.s4.official_experiment.OfficialCommand`, which shares
    this table)."""

    name = "s4"
    config, presets = Config, PRESETS
    parse = staticmethod(parse_config)
    elsewhere = {p: "synthetic.s4.official_experiment:OfficialCommand" for p in OFFICIAL_PRESETS}
    method_order = tuple(METHODS)
    mse_header, pct_digits = "best MSE", 1  # the table's MSE column and trainable-% digits

    def results_path(self, cfg) -> Path:
        return paths(cfg)["json"]

    def experiment(self, cfg):
        return S4Experiment(cfg, self.log)

    def check(self, cfg) -> None:
        """A training step fits the device's memory."""
        R = cfg.runs_per_step or len(cfg.lrs)
        check_memory(config_step_bytes(cfg, R), resolve_device(cfg), "--batch or --runs-per-step")

    def fingerprint(self, cfg, config: Dict) -> str:
        """The key fields of a record's config (a results file can hold runs of several configurations, e.g. a
        rerun with another --batch; one best-of-grid never mixes them)."""
        return fingerprint(config)

    def wanted(self, cfg) -> str:
        return fingerprint(record_config(cfg))

    @staticmethod
    def lr_text(lr) -> str:
        return "-" if lr is None else f"{lr:g}"

    def table(self, rows: Sequence[Dict]) -> str:
        lines = [f"| method | budget | trainable % | {self.mse_header} (mean ± std over seeds) | lr | lr at grid edge "
                 "| seeds | diverged |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        order = {m: i for i, m in enumerate(self.method_order)}
        for r in sorted(rows, key=lambda r: (order.get(r["method"], 99), r["trainable_pct"] or 0)):
            mse = "n/a" if r["mean"] is None else f"{r['mean']:.4g} ± {r['std']:.2g}"
            lines.append(f"| {r['method']} | {r['budget_label']} | {r['trainable_pct']:.{self.pct_digits}f} | {mse} | "
                         f"{self.lr_text(r['lr'])} | {edge_label(r) or '-'} | {r['n_seeds']} | {r['n_diverged']} |")
        return "\n".join(lines)

    def figure(self, cfg, data) -> List[str]:
        return plot(cfg, *data)


main = S4Command.main


if __name__ == "__main__":
    sys.exit(main())
