"""Why SDT does not reach the zero Theorem 1 guarantees in Figure 2 (Galim et al., ICML 2025, Sec. 5 and 6.1).

Theorem 1's construction (``synthetic.s4.oracle``) turns the frozen deep S4 into the target exactly at ~40 % of
the parameters, yet Figure 2's SDT stays near the frozen model's MSE. On the same frozen/target pairs as the
deep-S4 experiment (``synthetic.s4.train.Trainer.models``: its seeds, ZOH S4D conjugate-pair layers, skip inside,
a target with a skip, integer inputs 0..9), this experiment trains "arms" (:data:`ARMS`) that separate the factors:

- (a) ``SDT (Alg. 1)`` / ``SDT + LoRA (Alg. 1)``: Figure 2's methods (Algorithm 1's warm-up selection; A and C
  of the selected modes; W columns or LoRA), at the theorem's budget ``c × s`` (``c = ⌈D/⌊L/L*⌋⌉`` channels,
  ``s = H*`` modes) and at the experiment's SDT budgets;
- (b) ``Oracle masks``: the construction's own trainable set (its channel blocks and modes, untuned modes pruned,
  ``u`` and ``β``, LoRA of the construction's rank, the last ``W`` in full), started from the frozen model;
- (c) ``Oracle start``: (b) started at the exact solution plus Gaussian noise of relative size ``noise`` (0: does
  training keep it; larger: how far away it still recovers from);
- (d) ``SDT (Alg. 1) long`` / ``Oracle masks long``: (a) and (b) at ``long_factor`` × the iterations;
  every arm's lr grid grows at its edges until the best lr is interior (``synthetic.results.LrPolicy``);
- each in the theorem's linear variant (``--activation identity``) and with the experiment's ReLU.

Records are the deep-S4 experiment's (``synthetic.records``), plus ``arm`` fields: the selection's agreement
with the construction (``synthetic.s4.oracle.selection_agreement``) for Algorithm 1 arms, and for oracle arms the
exact solution's float64 MSE (``exact_mse64``). Outputs: ``theorem1_training_<preset>_<variant>.jsonl``
(one per variant, resumable) and, from both, ``theorem1_training[_<preset>].{json,png,pdf}``
(:mod:`synthetic.s4.theorem1_figure`).

    python -m synthetic.s4_theorem1 --activation identity      # CPU preset "cpu" (the default)
    python -m synthetic.s4_theorem1 --activation relu
    python -m synthetic.s4_theorem1 --preset paper --activation relu   # the paper's sizes (GPU)
    python -m synthetic.s4_theorem1 --plot-only                 # summary JSON + figure from both variants
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from synthetic.cli import (SweepConfig, check_memory, check_numbers, check_out_dir, check_shard_options, option,
                           parse_options, record_config, redefault)
from synthetic.command import Command
from synthetic.runner import Group, Run
from synthetic.s4 import model as sm
from synthetic.s4.config import Config, n_modes, validate as validate_s4
from synthetic.s4.experiment import S4Experiment, key_config, run_generator
from synthetic.s4.methods import METHODS, budget_label, configure, layer_sdt_masks, parse_sdt, theory_trainable_count
from synthetic.s4.oracle import Oracle, oracle_masks, pruned_base, selection_agreement, start_at, theorem1_oracle
from synthetic.s4.train import Trainer, config_step_bytes, resolve_device


# ----------------------------------------------------------------------------------------- config
def _s4(name: str, default=None, help: Optional[str] = None):
    """The deep-S4 experiment's field ``name`` (its help and key name), with the study's default."""
    f = Config.__dataclass_fields__[name]
    md = dict(f.metadata, **({"help": help} if help else {}))
    return dataclasses.field(default=f.default if default is None else default, metadata=md)


@dataclass(frozen=True)
class StudyConfig(SweepConfig):
    """Every field is a CLI option (``--field-name``); tuples are comma-separated lists. The model, data and
    training fields mean what they mean in the deep-S4 experiment (validated by the same rules)."""

    activation: str = _s4("activation")
    d_model: int = _s4("d_model")
    frozen_d_state: int = _s4("frozen_d_state")
    target_d_state: int = _s4("target_d_state")
    frozen_layers: int = _s4("frozen_layers")
    target_layers: int = _s4("target_layers")
    seq_len: int = _s4("seq_len")
    batch: int = _s4("batch")
    iters: int = _s4("iters")
    weight_decay: float = _s4("weight_decay")
    lrs: Tuple[float, ...] = redefault("lrs", (4e-3, 1.6e-2, 6.4e-2))
    seeds: Tuple[int, ...] = _s4("seeds")
    methods: Tuple[str, ...] = option((), "not used: the study's factors are --arms", key=False)
    arms: Tuple[str, ...] = option(("SDT (Alg. 1)", "SDT + LoRA (Alg. 1)", "Oracle masks", "Oracle start",
                                    "SDT (Alg. 1) long", "Oracle masks long"), "the study's arms (factors)", key=False)
    sdt: Tuple[str, ...] = _s4("sdt", ("2x2", "6x4"), "the experiment's SDT budgets 'channels x states', besides the "
                               "theorem's")
    sdt_lora: Tuple[str, ...] = _s4("sdt_lora", ("2x2:1", "6x4:2"))
    noise_levels: Tuple[float, ...] = option((0.0, 1e-3, 1e-2, 1e-1), "Oracle start: relative perturbation sizes",
                                             key=False)
    long_factor: int = option(10, "the 'long' arms train long_factor x iters", key=False)
    warmup_iters: int = _s4("warmup_iters")
    warmup_lr: float = _s4("warmup_lr")
    magnitude_floor: float = _s4("magnitude_floor")
    curve_points: int = _s4("curve_points")
    precision: str = _s4("precision")
    compile: Optional[bool] = _s4("compile")
    runs_per_step: int = _s4("runs_per_step", 64, "pack up to this many runs of one seed (same iterations and "
                             "pruned layout) per step")


PRESETS: Dict[str, Dict] = {
    "cpu": {},  # the deep-S4 experiment's CPU sizes
    "paper": dict(d_model=64, frozen_d_state=16, target_d_state=8, frozen_layers=4, target_layers=1, seq_len=200,
                  batch=1000, iters=500, lrs=(1e-3, 4e-3, 1.6e-2), sdt=("8x2", "16x4", "32x4", "36x8"),
                  sdt_lora=("16x4:4", "32x4:12", "32x8:16"), runs_per_step=12, out="figures"),
    "tiny": dict(d_model=6, frozen_d_state=4, target_d_state=2, frozen_layers=2, seq_len=12, batch=16, iters=12,
                 seeds=(0, 1), lrs=(1e-2, 4e-2), sdt=("2x1",), sdt_lora=("2x1:1",), noise_levels=(0.0, 0.1),
                 long_factor=2, warmup_iters=3, curve_points=5, runs_per_step=8),
}
VARIANTS = {"identity": "linear", "relu": "relu"}


def base_config(cfg: StudyConfig) -> Config:
    """The deep-S4 experiment's Config with the study's shared fields (its trainer, run keys and validation)."""
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(Config) if hasattr(cfg, f.name)}
    shared.update(methods=("SDT", "SDT + LoRA"), sdt=tuple(cfg.sdt) or ("1x1",),
                  sdt_lora=tuple(cfg.sdt_lora) or ("1x1:1",))
    return Config(**shared)


def theorem_budget(cfg: StudyConfig) -> Dict[str, int]:
    """Theorem 1's per-layer budget for the config's sizes: ``c = ⌈D/⌊L/L*⌋⌉`` channels, ``s = H*`` modes."""
    from theory.layout import channel_blocks, group_sizes

    c = max(len(b) for M in group_sizes(cfg.frozen_layers, cfg.target_layers) for b in channel_blocks(cfg.d_model, M))
    return {"channels": c, "states": n_modes(base_config(cfg), cfg.target_d_state)}


def validate(cfg: StudyConfig) -> StudyConfig:
    """Raise ValueError naming the offending option (shared fields by the deep-S4 experiment's rules)."""
    if cfg.preset not in PRESETS:
        raise ValueError(f"--preset: must be one of {sorted(PRESETS)}, got {cfg.preset!r}")
    bad = [a for a in cfg.arms if a not in ARMS]
    if bad or not cfg.arms:
        raise ValueError(f"--arms: unknown {bad or 'none given'}; choose from {list(ARMS)}")
    if isinstance(cfg.long_factor, bool) or not isinstance(cfg.long_factor, int) or cfg.long_factor < 1:
        raise ValueError(f"--long-factor: must be an integer >= 1, got {cfg.long_factor!r}")
    if not cfg.noise_levels:
        raise ValueError("--noise-levels: needs at least one level (0 = start at the exact solution)")
    check_numbers(cfg, nonnegative=("noise_levels", "time_budget", "runs_per_step"))
    if cfg.target_layers >= cfg.frozen_layers:
        raise ValueError(f"--target-layers: Theorem 1 needs L* < L, got L* = {cfg.target_layers}, L = {cfg.frozen_layers}")
    if cfg.target_d_state > cfg.frozen_d_state:
        raise ValueError(f"--target-d-state: Theorem 1 needs H* <= H, got H* = {cfg.target_d_state}, H = {cfg.frozen_d_state}")
    for name in ("arms", "noise_levels", "seeds", "lrs", "sdt", "sdt_lora"):
        vals = list(getattr(cfg, name, ()) or ())
        twice = sorted({str(v) for v in vals if vals.count(v) > 1})
        if twice:  # each would train and store every run of it twice
            raise ValueError(f"--{name.replace('_', '-')}: {', '.join(twice)} given twice")
    validate_s4(base_config(cfg))
    check_shard_options(cfg)
    check_out_dir(cfg.out)
    if not (cfg.dry_run or cfg.plot_only or cfg.merge):
        R = cfg.runs_per_step or len(cfg.lrs)
        check_memory(config_step_bytes(cfg, R), resolve_device(base_config(cfg)),
                     "--batch, --seq-len or --runs-per-step")
    return cfg


DESCRIPTION = "Theorem 1 vs training: why Figure 2's SDT does not reach the construction's zero."


def parse_config(argv: Optional[Sequence[str]] = None) -> StudyConfig:
    return parse_options(StudyConfig, PRESETS, argv, prog="python -m synthetic s4_theorem1", description=DESCRIPTION,
                         validate=validate)[0]


# ------------------------------------------------------------------------------------------ arms
@dataclass(frozen=True)
class Arm:
    """One factor of the study: Figure 2's SDT (``method``, Algorithm 1) or the construction's trainable set
    (``method=None``), started from the frozen model or (``exact_start``) at the exact solution, for
    ``long`` × the iterations (``long``: use the config's long_factor), at ``budgets(cfg)``."""

    name: str
    budgets: Callable[[StudyConfig], List[Dict]]
    method: Optional[str] = None  # a synthetic.s4.methods.METHODS entry, or None: the construction's masks
    exact_start: bool = False
    long: bool = False


def _unique(budgets: List[Dict]) -> List[Dict]:
    """Budgets in order, each once (the theorem's budget may also be one of the experiment's)."""
    out = []
    for b in budgets:
        if b not in out:
            out.append(b)
    return out


def _sdt_budgets(cfg):
    return _unique([theorem_budget(cfg)] + [parse_sdt(b) for b in cfg.sdt])


def _sdt_lora_budgets(cfg):
    t = theorem_budget(cfg)
    return _unique([dict(t, proj_rank=t["channels"])] + [parse_sdt(b) for b in cfg.sdt_lora])


def _oracle_budgets(cfg):
    """The theorem's budget and the experiment's SDT budgets below it (the construction's layout has no more
    channels per block or modes per channel to give: a larger budget is the theorem's)."""
    t = theorem_budget(cfg)
    return _unique([t] + [{"channels": min(b["channels"], t["channels"]), "states": min(b["states"], t["states"])}
                          for b in map(parse_sdt, cfg.sdt)])


ARMS: Dict[str, Arm] = {a.name: a for a in (
    Arm("SDT (Alg. 1)", _sdt_budgets, method="SDT"),
    Arm("SDT + LoRA (Alg. 1)", _sdt_lora_budgets, method="SDT + LoRA"),
    Arm("Oracle masks", _oracle_budgets),
    Arm("Oracle start", lambda cfg: [dict(theorem_budget(cfg), noise=float(s)) for s in cfg.noise_levels],
        exact_start=True),
    Arm("SDT (Alg. 1) long", lambda cfg: [theorem_budget(cfg)], method="SDT", long=True),
    Arm("Oracle masks long", lambda cfg: [theorem_budget(cfg)], long=True),
)}


def results_path(cfg: StudyConfig) -> Path:
    return Path(cfg.out) / f"theorem1_training_{cfg.preset}_{VARIANTS[cfg.activation]}.jsonl"


# ------------------------------------------------------------------------------------ experiment
class StudyTrainer(Trainer):
    """The deep-S4 trainer with LoRA factors wide enough for the construction's rank."""

    def __init__(self, cfg: Config, device, log, min_proj_rank: int):
        super().__init__(cfg, device, log)
        self.min_proj_rank = min_proj_rank

    def rank_max(self) -> Tuple[int, int]:
        rp, rs = super().rank_max()
        return max(rp, self.min_proj_rank), rs


class Theorem1Study(S4Experiment):
    """The study as a runner plug-in: groups are (seed, arm, budget) over the lr grid; runs of one seed with the same
    iterations share a step."""

    name = "s4_theorem1"

    def __init__(self, cfg: StudyConfig, log=print):
        super().__init__(base_config(cfg), log)  # lr policy, seeds, runs per step: the shared fields, as given
        self.study = cfg
        self.preset = cfg.preset  # the study's own preset name ("cpu"), not the base config's
        self.results_path = results_path(cfg)
        self.identity = {"activation": cfg.activation}  # every record of the file: one variant (synthetic.runner)
        self.kc = dict(key_config(self.cfg), study="theorem1")

    def make_trainer(self) -> Trainer:
        return StudyTrainer(self.cfg, self.device, self.log, theorem_budget(self.study)["channels"])

    def describe(self) -> str:
        return super().describe() + f"; activation {self.study.activation}"

    def groups(self) -> List[Group]:
        cfg = self.study
        return [Group(s, a, b, tuple(cfg.lrs)) for s in cfg.seeds for a in cfg.arms for b in ARMS[a].budgets(cfg)]

    def iters_of(self, arm: Arm) -> int:
        return self.cfg.iters * (self.study.long_factor if arm.long else 1)

    def pack_key(self, run: Run):
        """Runs of one seed and iteration count share a step (pruned layouts stack their bases on a run axis)."""
        return (run.seed, self.iters_of(ARMS[run.method]))

    def _oracle(self, seed: int) -> Oracle:
        c = self._cache[seed]
        if "oracle" not in c:
            target = [{k: v[0] for k, v in p.items()} for p in c["target"]]
            c["oracle"] = theorem1_oracle(c["frozen"], target, self.cfg.seq_len, self.study.activation,
                                          generator=torch.Generator().manual_seed(seed))
            c["pruned"] = {}
        return c["oracle"]

    def _pruned(self, seed: int, budget) -> List[Dict]:
        """The frozen base with the construction's untuned modes pruned at ``budget`` (shared by its runs)."""
        c, key = self._cache[seed], (budget["channels"], budget["states"])
        if key not in c["pruned"]:
            c["pruned"][key] = pruned_base(c["frozen"], self._oracle(seed), budget)
        return c["pruned"][key]

    def prepare(self, run: Run) -> None:
        """Before the step is timed: Algorithm 1's warm-up (SDT arms) or the construction (oracle arms), per seed."""
        if ARMS[run.method].method:
            self._selection(run.seed)
        else:
            self._oracle(run.seed)

    def traits(self, run: Run) -> Tuple[str, bool, int, bool]:
        arm = ARMS[run.method]
        return budget_label(run.budget), True, self.iters_of(arm), arm.method is not None

    def build_run(self, run: Run, models: Dict) -> Tuple[sm.RunState, Optional[int], Dict]:
        """An Algorithm 1 arm: Figure 2's method on its selection (and how the selection relates to the
        construction's layout); an oracle arm: the construction's trainable set on its pruned base, from the frozen
        model or (``exact_start``) the exact solution plus noise."""
        arm, seed = ARMS[run.method], run.seed
        g = run_generator(self.key(seed, run.method, run.budget, run.lr))
        if arm.method:
            m, sel = METHODS[arm.method], self._selection(seed)
            st = sm.RunState.create(models["frozen"], 1, *self.trainer.rank_max(), generator=g)
            configure(self.cfg, m, st, run.budget, sel)
            masks = [mk.trainable for mk in layer_sdt_masks(sel, run.budget)]
            return (st, theory_trainable_count(m, models["frozen"], run.budget, sel, self.cfg),
                    {"selection": selection_agreement(masks, self._oracle(seed))})
        o = self._oracle(seed)
        st = sm.RunState.create(self._pruned(seed, run.budget), 1, *self.trainer.rank_max(), generator=g)
        oracle_masks(st, o, run.budget)
        if arm.exact_start:
            start_at(st, o, run.budget["noise"], g)
        return st, None, {"exact_mse64": o.mse64}

    def record(self, r: Run, label: str, curve: List[float], *args, **kwargs) -> Dict:
        """The deep-S4 record plus the study's fields: arm, activation, the MSE at the start, the study's config."""
        rec = super().record(r, label, curve, *args, **kwargs)
        rec.update(arm=r.method, activation=self.study.activation, start_mse=curve[0],
                   study_config=record_config(self.study))
        return rec


# ------------------------------------------------------------------------------------------ command
class Theorem1Command(Command):
    """``python -m synthetic s4_theorem1``: the study's command (:mod:`synthetic.command`'s flow). Its summary reads
    both variant files of the preset and writes their rows as JSON; then the table, then the figure
    (:mod:`synthetic.s4.theorem1_figure`)."""

    name = "s4_theorem1"
    config, presets = StudyConfig, PRESETS
    parse = staticmethod(parse_config)

    def results_path(self, cfg) -> Path:
        return results_path(cfg)

    def inputs(self, cfg) -> List[Path]:
        return [results_path(dataclasses.replace(cfg, activation=a)) for a in VARIANTS]

    def experiment(self, cfg):
        return Theorem1Study(cfg, self.log)

    def summary(self, cfg):
        from synthetic.s4.theorem1_figure import save_summary, summarise_files, table

        rows, devices = summarise_files(cfg.out, cfg.preset)
        save_summary(rows, cfg.out, cfg.preset)
        return table(rows), (rows, devices)

    def figure(self, cfg, data) -> List[str]:
        from synthetic.s4.theorem1_figure import figure

        return figure(data[0], cfg.out, cfg.preset, data[1])


main = Theorem1Command.main


if __name__ == "__main__":
    sys.exit(main())
