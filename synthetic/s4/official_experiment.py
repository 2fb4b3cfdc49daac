"""The official-convention deep-S4 experiment (``--preset official``): training, the run groups behind
Figure 2 three ways, and its command line. Every convention of the official code it follows (init order,
trainable sets, SDT selection, adapters) is in :mod:`synthetic.s4.official`, with the official file and line.

Usage::

    python -m synthetic.s4_regression --preset official
    python -m synthetic.s4_regression --preset official-tiny --out /tmp/x   # seconds, any device
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from synthetic.cli import threads_for

from synthetic import cli, runner
from synthetic.cli import check_memory
from synthetic.results import LrPolicy, environment, run_key, subsample_curve, utc_now
from synthetic.runner import Group, Run
from synthetic.s4 import model as sm
from synthetic.s4.experiment import S4Command
from synthetic.s4.official import (CONVS, METHODS, OFFICIAL_SEED, PRESETS, WARMUP_PARAMS, AnchoredRuns,
                                   OfficialConfig, OfficialMethod, adamw_step_anchored, budget_label, build_group,
                                   concat_groups,
                                   official_lora_down, official_models, official_param_count, official_selection,
                                   validate)
from synthetic.s4.train import TrainerExperiment, config_step_bytes, resolve_device, set_precision

Tensor = torch.Tensor


def lr_policy(cfg: OfficialConfig) -> LrPolicy:
    """The config's rule for growing the learning-rate grid at its edges."""
    return LrPolicy.from_config(cfg)


# ----------------------------------------------------------------------------------- training
class Trainer:
    """Batches (exact or on the device), the (optionally compiled) loss and step, training and evaluation."""

    def __init__(self, cfg: OfficialConfig, device: torch.device, log=print):
        self.cfg, self.device, self.log = cfg, device, log
        set_precision(cfg.precision, device)
        if device.type == "cpu":
            torch.set_num_threads(threads_for(cfg.threads))
        self.idx = sm.toeplitz_index(cfg.seq_len, device)
        self.conv = cfg.conv if cfg.conv != "auto" else ("toeplitz" if device.type == "cuda" else "fft")
        self.run_losses, self.deep_forward = CONVS[self.conv]
        self.use_compile = (device.type == "cuda") if cfg.compile is None else cfg.compile
        self._loss, self._step = self.run_losses, adamw_step_anchored
        if self.use_compile:
            self._loss = torch.compile(self.run_losses, dynamic=False)
            self._step = torch.compile(adamw_step_anchored, dynamic=False)

    def _call(self, which, *args):
        try:
            return (self._loss if which == "loss" else self._step)(*args)
        except Exception as e:
            if not self.use_compile:
                raise
            self.log(f"torch.compile failed ({type(e).__name__}: {str(e)[:200]}); falling back to eager")
            self.use_compile, self._loss, self._step = False, self.run_losses, adamw_step_anchored
            return (self._loss if which == "loss" else self._step)(*args)

    def batches(self, target, generator: torch.Generator) -> Iterator[Tuple[Tensor, Tensor]]:
        """Endless (x, y): x (D, L, B) float32 on the device, y = target(x).

        ``data='exact'``: ``generator`` is a CPU generator and x is drawn as the official
        ``generate_input`` ((B, D, L) int64), then laid out (D, L, B). ``'device'``: drawn on the device.
        """
        cfg = self.cfg
        while True:
            if cfg.data == "exact":
                X = torch.randint(0, 10, (cfg.batch, cfg.d_model, cfg.seq_len), generator=generator)  # (B, D, L)
                x = X.permute(1, 2, 0).to(self.device, torch.float32).contiguous()  # (D, L, B)
            else:
                x = torch.randint(0, 10, (cfg.d_model, cfg.seq_len, cfg.batch), generator=generator,
                                  device=self.device).to(torch.float32)  # (D, L, B)
            with torch.no_grad():
                y = self.deep_forward(target, x, self.idx)[0]  # (D, L, B)
            yield x, y

    def device_generator(self, seed: int, stream: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        return g.manual_seed(1_000_003 * (stream + 1) + seed)

    def train(self, group: AnchoredRuns, lrs: Sequence[float], iters: int, batches: Iterator) -> Tensor:
        """``iters`` AdamW steps of the R runs; returns the training-batch losses (R, iters) on the host."""
        cfg, st = self.cfg, group.state
        params = st.parameters()
        m = [torch.zeros_like(p) for p in params]
        v = [torch.zeros_like(p) for p in params]
        step = torch.zeros((), device=self.device)
        lr = torch.tensor(list(lrs), device=self.device, dtype=torch.float32)
        losses = torch.empty(st.R, iters, device=self.device)
        for it in range(iters):
            x, y = next(batches)
            loss = self._call("loss", st.base, st.train, st.mask, st.lora, st.rank_mask, x, y, self.idx)
            grads = torch.autograd.grad(loss.sum(), params)
            self._call("step", params, list(grads), m, v, group.anchors, step, lr, 0.9, 0.999, 1e-8,
                       cfg.weight_decay)
            losses[:, it] = loss.detach()
        return losses.cpu()

    @torch.no_grad()
    def evaluate(self, group: AnchoredRuns, batches: Iterator, n: int) -> List[float]:
        """Per run: MSE averaged over ``n`` fresh batches with the final parameters."""
        st = group.state
        tot = torch.zeros(st.R, device=self.device)
        for _ in range(n):
            x, y = next(batches)
            tot += self.run_losses(st.base, st.train, st.mask, st.lora, st.rank_mask, x, y, self.idx)
        return (tot / n).tolist()

    def warmup(self, frozen, batches: Iterator) -> Tuple[List[Dict[str, Tensor]], List[float]]:
        """The official SDT warm-up on a copy: ``warmup_iters`` AdamW steps at ``warmup_lr`` of
        ``WARMUP_PARAMS[warmup_params]``; returns the warmed-up layers (no run axis) and the losses."""
        cfg = self.cfg
        group = build_group(frozen, METHODS["Frozen"], {}, 1, (1, 1))
        for mk in group.state.mask:
            for k in WARMUP_PARAMS[cfg.warmup_params]:
                mk[k][:] = True
        losses = self.train(group, [cfg.warmup_lr], cfg.warmup_iters, batches)[0].tolist() if cfg.warmup_iters else []
        warm = [{k: v[0].detach() for k, v in p.items()} for p in group.state.effective()]
        return warm, losses


def rank_max(cfg: OfficialConfig) -> Tuple[int, int]:
    """Largest W and A,C LoRA ranks of the grid (one shape for every group: one compiled graph)."""
    rp = [1] + [b.get("proj_rank", 0) for m in cfg.methods for b in METHODS[m].budgets(cfg)]
    rs = [1] + [b.get("ssm_rank", 0) for m in cfg.methods for b in METHODS[m].budgets(cfg)]
    return max(rp), max(rs)


def prepare_group(cfg: OfficialConfig, trainer: Trainer, seed_cache: Dict, method: OfficialMethod, budget: Dict,
                  R: int) -> Tuple[AnchoredRuns, List[float]]:
    """The group's RunState on ``seed_cache`` (target, frozen, generator state after init, warm-up)."""
    c = seed_cache
    g = torch.Generator()
    g.set_state(c["g_after_init"])
    warm_losses: List[float] = []
    sel = None
    if method.needs_selection:
        wkey = ("warm", cfg.warmup_params, cfg.warmup_iters, cfg.warmup_lr, cfg.data, cfg.batch)
        if wkey not in c:
            if cfg.data == "exact":  # the warm-up batches continue the initialisation's generator
                wg = torch.Generator()
                wg.set_state(c["g_after_init"])
            else:
                wg = trainer.device_generator(c["seed"], stream=1)
            warm, losses = trainer.warmup(c["frozen"], trainer.batches(c["target"], wg))
            c[wkey] = (warm, losses, wg.get_state() if cfg.data == "exact" else c["g_after_init"])
        warm, warm_losses, g_state = c[wkey]
        g.set_state(g_state)
        sel = official_selection(warm, c["frozen"], budget, cfg.seq_len, cfg.sdt_score)
    down = ([official_lora_down(cfg.d_model, budget["proj_rank"], g) for _ in c["frozen"]]
            if method.lp == "lora" else None)
    group = build_group(c["frozen"], method, budget, R, rank_max(cfg), lora_down=down, selection=sel,
                        ac_generator=torch.Generator().manual_seed(c["seed"]))
    return group, warm_losses


def seed_models(cfg: OfficialConfig, seed: int, device) -> Dict:
    target, frozen, g = official_models(cfg, seed)
    return {"seed": seed, "g_after_init": g.get_state(),
            "target": [{k: v.to(device)[None] for k, v in p.items()} for p in target],
            "frozen": [{k: v.to(device) for k, v in p.items()} for p in frozen]}


def training_batches(cfg: OfficialConfig, trainer: Trainer, c: Dict, stream: int = 0) -> Iterator:
    """Training (stream 0; exact mode: the official ``set_seed(seed)`` restart) or evaluation (stream 2) batches."""
    if cfg.data == "exact":
        g = torch.Generator().manual_seed(c["seed"] if stream == 0 else 1_000_003 * (stream + 1) + c["seed"])
    else:
        g = trainer.device_generator(c["seed"], stream)
    return trainer.batches(c["target"], g)


def run_cases(cfg: OfficialConfig, cases: Sequence[Tuple[str, Dict, float]], seed: int = OFFICIAL_SEED,
              device="cpu", log=print, seed_cache: Optional[Dict] = None) -> List[Dict]:
    """Runs ``(method, budget, lr)`` of one seed trained together (R = len(cases), one batch stream, as
    the official code gives every method the same training batches). Per run: ``trainable`` (the
    official count), ``selection`` (SDT), ``warmup_losses``, ``losses`` (iters,), ``eval_mse``.
    The unit the equivalence tests compare with the official code. ``seed_cache``: a dict from
    :func:`seed_models` (same cfg and seed) to reuse its models and SDT warm-up across calls."""
    dev = torch.device(device)
    trainer = Trainer(cfg, dev, log)
    c = seed_cache if seed_cache is not None else seed_models(cfg, seed, dev)
    parts = [prepare_group(cfg, trainer, c, METHODS[m], b, 1) for m, b, _ in cases]
    group = concat_groups([p[0] for p in parts])
    losses = trainer.train(group, [lr for _, _, lr in cases], cfg.iters, training_batches(cfg, trainer, c))
    ev = trainer.evaluate(group, training_batches(cfg, trainer, c, stream=2), cfg.eval_batches)
    counts = group.state.trainable_count()
    return [{"trainable": counts[i], "selection": parts[i][0].selection, "warmup_losses": parts[i][1],
             "losses": losses[i].tolist(), "eval_mse": ev[i]} for i in range(len(cases))]


# ---------------------------------------------------------------------------------------- sweep
def key_config(cfg: OfficialConfig) -> Dict:
    return cli.key_config(cfg)


def run_groups(cfg: OfficialConfig) -> List[Tuple[int, str, Dict]]:
    """(seed, method, budget) in execution order: seed-major, so a cut-short sweep covers every point."""
    return [(s, m, b) for s in cfg.seeds for m in cfg.methods for b in METHODS[m].budgets(cfg)]


def results_path(cfg: OfficialConfig) -> Path:
    return Path(cfg.out) / f"s4_regression_{cfg.preset}.jsonl"


class OfficialExperiment(TrainerExperiment):
    """The official-convention deep-S4 experiment as a :class:`synthetic.runner.Experiment`.

    A train call takes the runs of one (seed, method, budget) group (same models, warm-up, ``W_down`` and
    batches); with torch.compile a short call (an lr-extension round) is padded to ``len(cfg.lrs)`` runs by
    repeating its last lr (padding runs are not recorded). LoRA (A&C+Proj)'s A, C factors are drawn per run
    position (``RunState.create``), so there an extension run's factors are those of the group's first positions.
    """

    name = "s4_official"

    def __init__(self, cfg: OfficialConfig, log=print):
        self.cfg, self.log = cfg, log
        self.preset, self.seeds, self.base_lrs = cfg.preset, tuple(cfg.seeds), tuple(cfg.lrs)
        self.lr_policy = lr_policy(cfg)
        self.results_path = results_path(cfg)
        self.kc = key_config(cfg)
        self.device = resolve_device(cfg)
        self.max_runs_per_call = len(cfg.lrs)
        self.total = official_param_count(cfg.d_model, cfg.frozen_d_state, cfg.frozen_layers)
        self._cache: Dict[int, Dict] = {}

    def make_trainer(self) -> "Trainer":
        return Trainer(self.cfg, self.device, self.log)  # looked up here: tests may replace the class

    def describe(self) -> str:
        return (f"device {environment()['device']}, compile={self.trainer.use_compile}, data={self.cfg.data}; "
                f"official model {self.total} parameters")

    def groups(self) -> List[Group]:
        return [Group(s, m, b, tuple(self.cfg.lrs)) for s, m, b in run_groups(self.cfg)]

    def train(self, runs: Sequence[Run]) -> List[Dict]:
        cfg, trainer = self.cfg, self.trainer
        seed, mname, budget = runs[0].seed, runs[0].method, runs[0].budget
        lrs = [r.lr for r in runs]
        env = environment()
        if seed not in self._cache:
            self._cache = {seed: seed_models(cfg, seed, self.device)}  # one seed's models at a time
        c = self._cache[seed]
        tg = time.monotonic()
        group, warm_losses = prepare_group(cfg, trainer, c, METHODS[mname], budget, len(lrs))
        counts = group.state.trainable_count()
        curves = trainer.train(group, lrs, cfg.iters, training_batches(cfg, trainer, c)).tolist()
        ev = trainer.evaluate(group, training_batches(cfg, trainer, c, stream=2), cfg.eval_batches)
        wall = time.monotonic() - tg
        recs = []
        for i, lr in enumerate(lrs):
            curve = curves[i]
            finite = all(math.isfinite(v) for v in curve) and math.isfinite(ev[i])
            tail = curve[-max(1, len(curve) // 50):]
            recs.append({
                "method": mname, "budget": budget, "budget_label": budget_label(budget),
                "lr": lr, "seed": seed, "model_seed": seed, "status": "ok" if finite else "diverged",
                "best_mse": min(curve) if finite else None, "eval_mse": ev[i] if finite else None,
                "final_mse": sum(tail) / len(tail) if finite else None,
                "trainable": counts[i], "frozen_params": self.total, "trainable_pct": 100.0 * counts[i] / self.total,
                "iters": cfg.iters, "loss_curve": subsample_curve(curve, cfg.curve_points),
                "warmup_losses": warm_losses, "wall_s": wall / self.recorded(runs), "group_wall_s": wall,
                "runs_in_group": len(lrs),
                "device": env["device"], "torch": env["torch"], "commit": env["commit"], "date": utc_now(),
                "compiled": trainer.use_compile, "config": cli.record_config(cfg),
            })
        return recs


def current_runs(cfg: OfficialConfig, records: Sequence[Dict]) -> List[Dict]:
    """The run records of ``cfg``'s configuration and seeds: those whose key is the one ``cfg`` gives them."""
    return runner.current_runs(OfficialExperiment(cfg), records)


def extension_plan(cfg: OfficialConfig, records: Sequence[Dict]) -> List[Tuple[int, str, Dict, List[float]]]:
    """The next round of runs: ``(seed, method, budget, lrs)`` per run group still needed (missing grid lrs
    first, then the edge extensions); ``[]`` when every group's best lr is interior or at a bound."""
    exp = OfficialExperiment(cfg)
    return runner.extension_todo(exp, records, exp.groups())


# ------------------------------------------------------------------------------------------ CLI
DESCRIPTION = "Deep S4 with the official code's conventions (furiosa-ai/ssm-peft S4/run_s4.py): Figure 2."


def parse_config(argv: Optional[Sequence[str]] = None) -> OfficialConfig:
    """CLI -> OfficialConfig: the preset's values become the defaults, explicit options override them."""
    return cli.parse_options(OfficialConfig, PRESETS, argv, prog="python -m synthetic s4_official",
                             description=DESCRIPTION, default_preset="official", validate=validate)[0]


class OfficialCommand(S4Command):
    """``python -m synthetic s4_official`` (and ``python -m synthetic s4 --preset official``): the deep-S4 command
    with this module's config and experiment; the summary is the table alone (Figure 2 three ways is
    ``python -m synthetic.s4_fig2``)."""

    name = "s4_official"
    config, presets = OfficialConfig, PRESETS
    parse = staticmethod(parse_config)
    elsewhere: Dict[str, str] = {}
    method_order = tuple(METHODS)
    mse_header, pct_digits = "best_mse", 2
    lr_text = staticmethod(str)

    def results_path(self, cfg) -> Path:
        return results_path(cfg)

    def experiment(self, cfg):
        return OfficialExperiment(cfg, self.log)

    def check(self, cfg) -> None:
        """A training step (one group: len(lrs) runs) fits the device's memory."""
        check_memory(config_step_bytes(cfg, len(cfg.lrs)), resolve_device(cfg),
                     "--batch (or fewer --lrs: one step trains a group of len(lrs) runs)")

    def fingerprint(self, cfg, config: Dict) -> str:
        """The key fields of ``cfg``'s kind that a record's config has."""
        known = set(cli.key_config(cfg))
        return run_key({k: v for k, v in cli.key_of_record_config(OfficialConfig, config).items() if k in known})

    def wanted(self, cfg) -> str:
        return run_key(key_config(cfg))

    def figure(self, cfg, data) -> List[str]:
        return []


main = OfficialCommand.main


if __name__ == "__main__":
    sys.exit(main())
