"""Real Mamba runs: SDT vs. LoRA on Mamba blocks, regression to a smaller target (Galim et al., ICML 2025,
Sec. 6, the S6/Mamba counterpart of Figure 2; official plots: SDT vs. LoRA (S6+Proj) loss curves).

Setup: a *frozen* residual stack of Mamba blocks (deeper, more states) is fine-tuned so that its output
matches a *target* stack (one block, fewer states) on fresh random sequences; loss = MSE over all
tokens. Both are randomly initialised with the backend's own block class (mamba-ssm's ``Mamba`` on the
``mamba_ssm`` backend, :class:`synthetic.mamba.ref.MambaRef` on ``reference``). Methods
(:data:`synthetic.mamba.peft.METHODS`): Frozen; LoRA (Proj); LoRA (S6+Proj); SDT (channels chosen by
Algorithm 1); SDT + LoRA; Full. Each (method, budget) is the best of a learning-rate grid.

Outputs (``<out>/``, named by preset): ``mamba_regression_<preset>.jsonl`` (one record per run, resumable),
``mamba_mse_vs_params_<preset>.png`` and ``mamba_loss_curves_<preset>.png``.

    python -m synthetic.mamba_regression                 # auto: mamba_ssm + paper preset on a GPU, else CPU preset
    python -m synthetic.mamba_regression --preset paper --backend mamba_ssm --out figures
    python -m synthetic.mamba_regression --plot-only --preset paper
    python -m synthetic.mamba_regression --methods all   # + the benchmark's methods -> peft_methods_mamba_<preset>.*

Parallel shards on one GPU (each process takes every n-th run of the grid and writes its own file
``mamba_regression_<preset>.shard<i>of<n>.jsonl``; ``--merge`` folds them into the main file atomically):

    for i in 0 1 2 3; do python -m synthetic.mamba_regression --preset paper --shard $i/4 & done; wait
    python -m synthetic.mamba_regression --preset paper --merge
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from synthetic.command import Command
from synthetic.mamba import config as mamba_config
from synthetic.mamba.config import (ALL_METHODS, MambaRegressionConfig, budget_label, config_dict, lr_policy,
                                    out_paths, run_grid)
from ssm_peft.selection import official_select
from synthetic.mamba.backends import Backend, get_backend, mamba_ssm_available
from synthetic.mamba.peft import (METHODS, S6_NAMES, MambaPeftConfig, PeftMambaStack, abar_change_scores,
                                  frozen_param_count, residual_stack, select_channels, trainable_count)
from synthetic.mamba.ref import block_weights
from synthetic.plots import plot_mamba
from synthetic.cli import threads_for
from synthetic.results import environment, is_diverged, run_key, utc_now
from synthetic.runner import Group, Run


# ----------------------------------------------------------------------------------- the models
class MambaModel:
    """Frozen and target stacks, data streams and one training run per grid point. ``methods``: the registry
    ``train`` reads (a subclass for another block, e.g. :mod:`synthetic.mamba2.experiment`, sets its own)."""

    methods = METHODS

    def __init__(self, cfg: MambaRegressionConfig, backend: Backend, device: torch.device):
        self.cfg, self.backend, self.device = cfg, backend, device
        torch.manual_seed(cfg.model_seed)
        self.frozen_blocks = [backend.make_block(cfg.d_model, cfg.frozen_d_state, cfg.expand, device)
                              for _ in range(cfg.frozen_layers)]
        torch.manual_seed(cfg.model_seed + 1)
        self.target_blocks = [backend.make_block(cfg.d_model, cfg.target_d_state, cfg.expand, device)
                              for _ in range(cfg.target_layers)]
        for b in self.frozen_blocks + self.target_blocks:
            b.requires_grad_(False)
        self.layer_weights = [block_weights(b) for b in self.frozen_blocks]
        self.dt_rank = self.frozen_blocks[0].dt_rank
        self.n_frozen = frozen_param_count(self.layer_weights)
        g = torch.Generator(device="cpu").manual_seed(10_000 + cfg.model_seed)
        self.eval_x = [self._inputs(g) for _ in range(cfg.eval_batches)]
        with torch.no_grad():
            self.eval_y = [residual_stack(self.target_blocks, x) for x in self.eval_x]
        self._scores: Dict[object, List[torch.Tensor]] = {}

    def _inputs(self, g: torch.Generator) -> torch.Tensor:
        c = self.cfg
        return torch.randn(c.batch, c.seq_len, c.d_model, generator=g).to(self.device)  # (Bt, N, d_model)

    def batch(self, g: torch.Generator):
        x = self._inputs(g)
        with torch.no_grad():
            y = residual_stack(self.target_blocks, x)
        return x, y

    def eval_mse(self, model: PeftMambaStack) -> float:
        """Mean eval MSE, in eval mode (LoRA dropout off), restoring the model's mode."""
        was = model.training
        model.eval()
        with torch.no_grad():
            tot = sum(float(torch.mean((model(x, self.backend) - y) ** 2)) for x, y in zip(self.eval_x, self.eval_y))
        model.train(was)
        return tot / len(self.eval_x)

    def stack(self, config: MambaPeftConfig, channels=None, seed: int = 0, states=None) -> PeftMambaStack:
        g = torch.Generator(device="cpu").manual_seed(seed)
        return PeftMambaStack(self.layer_weights, d_state=self.cfg.frozen_d_state, dt_rank=self.dt_rank,
                              config=config, channels=channels, generator=g, states=states).to(self.device)

    def warmed_up(self, config, seed: int):
        """Algorithm 1, step 1: a copy whose ``config.full`` parameters trained ``warmup_iters`` AdamW steps at
        ``warmup_lr`` on seed ``seed``'s warm-up batches (generator seed 20_000 + seed)."""
        c = self.cfg
        model = self.stack(config, seed=seed)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=c.warmup_lr,
                                weight_decay=c.weight_decay)
        g = torch.Generator(device="cpu").manual_seed(20_000 + seed)
        for _ in range(c.warmup_iters):
            self.step(model, opt, g)
        return model

    def sdt_scores(self, seed: int) -> List[torch.Tensor]:
        """Algorithm 1, steps 1-2 for S6: warm up A_log, x_proj, dt_proj on a copy; score channels
        per layer by the change of Ā on a probe batch (cached per seed)."""
        if seed in self._scores:
            return self._scores[seed]
        c = self.cfg
        model = self.warmed_up(MambaPeftConfig(full=S6_NAMES), seed)
        probe = self.eval_x[0]
        scores, h = [], probe
        with torch.no_grad():
            for w_before, blk_f, blk_w in zip(self.layer_weights, self.frozen_blocks, model.blocks):
                scores.append(abar_change_scores(w_before, blk_w.effective_weights(), h, c.frozen_d_state,
                                                 self.dt_rank).cpu())
                h = h + blk_f(h)  # the frozen model's input to the next layer
        self._scores[seed] = scores
        return scores

    def official_deltas(self, seed: int, lr: float, config: MambaPeftConfig) -> List[torch.Tensor]:
        """The official SDLoRA warm-up (``sd_lora.py``): train a full additive change of ``A_log``
        (plus the method's LoRA, as the official warm-up trains the out_proj LoRA too) for
        ``warmup_iters`` steps at the run's lr; returns per layer the learnt ``ΔA_log`` (D, H)
        (cached per seed, lr and LoRA)."""
        key = ("official", seed, lr, config.lora, config.lora_rank)
        if key in self._scores:
            return self._scores[key]
        c = self.cfg
        warm = MambaPeftConfig(full=("A_log",), lora=config.lora, lora_rank=config.lora_rank,
                               lora_alpha=config.lora_alpha, lora_dropout=c.lora_dropout if config.lora else 0.0)
        model = self.stack(warm, seed=seed)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                weight_decay=c.weight_decay)
        g = torch.Generator(device="cpu").manual_seed(20_000 + seed)
        for _ in range(c.warmup_iters):
            self.step(model, opt, g)
        deltas = [(blk.full["A_log"].detach() - w["A_log"]).cpu() for blk, w in zip(model.blocks, self.layer_weights)]
        self._scores[key] = deltas
        return deltas

    def sdt_selection(self, config: MambaPeftConfig, lr: float, seed: int):
        """(channels per layer, A_log states per layer or None) for an SDT config, by ``cfg.sdt_rule``."""
        c = self.cfg
        if c.sdt_rule == "official":
            n_states = c.frozen_d_state - int(round(c.sdt_state_freeze * c.frozen_d_state)) if c.sdt_state_freeze else 0
            sel = [official_select(d, config.sdt_channels, n_states) for d in self.official_deltas(seed, lr, config)]
            return [ch for ch, _ in sel], ([st for _, st in sel] if n_states else None)
        return [select_channels(s, config.sdt_channels) for s in self.sdt_scores(seed)], None

    def step(self, model, opt, g: torch.Generator) -> torch.Tensor:
        """One AdamW step on a fresh batch; returns the (detached) training MSE without a host sync."""
        x, y = self.batch(g)
        loss = torch.mean((model(x, self.backend) - y) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    def train(self, method: str, budget: dict, lr: float, seed: int) -> dict:
        c = self.cfg
        t0 = time.perf_counter()
        config = self.methods[method](budget)
        if getattr(c, "lora_dropout", 0.0) and config.lora:
            config = dataclasses.replace(config, lora_dropout=c.lora_dropout)
        channels = states = None
        if config.sdt_channels:
            channels, states = self.sdt_selection(config, lr, seed)
            if states is not None:
                config = dataclasses.replace(config, sdt_states=len(states[0][0]))
        torch.manual_seed(seed)
        model = self.stack(config, channels, seed=seed, states=states)
        return self.fit_run(model, method, budget, lr, seed, t0, channels,
                            first={} if states is None else {"sdt_states": states})

    def fit_run(self, model, method: str, budget: dict, lr: float, seed: int, t0: float, channels,
                first: Optional[dict] = None, after: Optional[dict] = None) -> dict:
        """Train ``model``'s trainable parameters for one run and return its record: ``first``'s fields, the fused
        fallback if the backend has a fused path the model could not take, the run, ``after``'s fields, wall time
        since ``t0``."""
        c = self.cfg
        fallback = model.fused_fallback(self.backend)
        n_train = trainable_count(model)
        params = [p for p in model.parameters() if p.requires_grad]
        g = torch.Generator(device="cpu").manual_seed(30_000 + seed)
        losses, evals, status = fit(params, lambda opt: self.step(model, opt, g), lambda: self.eval_mse(model),
                                    iters=c.iters, eval_every=c.eval_every, lr=lr, weight_decay=c.weight_decay,
                                    device=self.device)
        best, final = best_and_final(evals, status)
        extra = dict(first or {})
        if fallback:  # trained unfused although the backend has a fused path
            extra["fused_fallback"] = fallback
        return {**extra,
                "method": method, "budget": budget, "budget_label": budget_label(budget), "lr": lr, "seed": seed,
                "trainable": n_train, "trainable_pct": 100.0 * n_train / self.n_frozen,
                "best_mse": best, "final_mse": final, "status": status,
                "loss_curve": losses, "eval_curve": evals, "sdt_channels": channels, **(after or {}),
                "wall_s": time.perf_counter() - t0}


def fit(params: Sequence[torch.Tensor], step: Callable, evaluate: Callable[[], float], *, iters: int,
        eval_every: int, lr: float, weight_decay: float, device) -> Tuple[List[float], List[Tuple[int, float]], str]:
    """One run's optimisation: AdamW(lr, weight_decay) on ``params`` for ``iters`` steps of ``step(opt)`` (returns the
    detached training loss), ``evaluate()`` at iteration 0, every ``eval_every`` and at the end. A step refused by
    theory.peft (non-finite factors) or a diverged evaluation stops the run with status ``"diverged"``.
    Returns (training losses, [(iteration, eval MSE)], status). Shared by the Mamba and hybrid experiments."""
    losses, evals, status = [], [(0, evaluate())], "ok"
    if params and iters > 0:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        buf = torch.zeros(iters, device=device)
        for it in range(iters):
            try:
                buf[it] = step(opt)
            except ValueError:  # theory.peft refuses non-finite factors: a step diverged since the last eval
                if all(bool(torch.isfinite(p).all()) for p in params):
                    raise
                buf[it] = float("nan")
                status = "diverged"
                break
            if (it + 1) % eval_every == 0 or it + 1 == iters:
                ev = evaluate()
                evals.append((it + 1, ev))
                if is_diverged(ev):
                    status = "diverged"
                    break
        losses = [float(v) for v in buf[: it + 1].cpu()]
    return losses, evals, status


def best_and_final(evals: Sequence[Tuple[int, float]], status: str) -> Tuple[Optional[float], Optional[float]]:
    """(lowest finite eval MSE, last eval MSE) of an ``"ok"`` run; (None, None) otherwise."""
    vals = [v for _, v in evals]
    finite = [v for v in vals if not is_diverged(v)]
    return (min(finite) if finite and status == "ok" else None), (vals[-1] if status == "ok" else None)


class MambaExperiment:
    """The Mamba experiment as a :class:`synthetic.runner.Experiment`: one run per train call (runs are
    trained one at a time), groups of one lr each, lr outermost within a seed so that a truncated sweep
    has every (method, budget) at the first lr. The frozen and target stacks are drawn once from
    ``model_seed`` (shared by every run and seed: the seeds vary the data and the adapters' initialisation).

    The Mamba-II and hybrid experiments are this plug-in with their own model class, registry and config functions
    (the class attributes below) and, where they differ, their own backend/device choice, run key or description."""

    name = "mamba"
    prog = "mamba_regression"  # the log lines' prefix
    model_cls = MambaModel  # builds the models and trains one run (a subclass may set its own)
    methods = METHODS
    run_grid = staticmethod(run_grid)
    lr_policy_of = staticmethod(lr_policy)
    out_paths = staticmethod(out_paths)
    config_dict = staticmethod(config_dict)
    budget_label = staticmethod(budget_label)
    max_runs_per_call = 1
    pad_calls = False

    def __init__(self, cfg, log=None):
        self.cfg = cfg
        self.log = log or (lambda s: print(f"{self.prog}: {s}", file=sys.stderr))
        self.preset, self.seeds, self.base_lrs = cfg.preset, tuple(cfg.seeds), tuple(cfg.lrs)
        self.lr_policy = self.lr_policy_of(cfg)
        self.results_path = self.out_paths(cfg)["json"]
        name, self.device = self.backend_and_device(cfg)
        # --dry-run needs only the backend's name (its key); a run needs the backend itself
        self.backend = self.make_backend(name) if not cfg.dry_run or name == "reference" else None
        self.backend_name = name
        self.cdict = self.config_dict(cfg)
        self._exp = None
        self._env = environment()
        self._commit = os.environ.get("GIT_COMMIT") or self._env["commit"]

    def backend_and_device(self, cfg) -> Tuple[str, torch.device]:
        """The backend's name (``--backend``, auto: mamba_ssm where installed) and the device (auto: CUDA with mamba_ssm)."""
        name = cfg.backend if cfg.backend != "auto" else ("mamba_ssm" if mamba_ssm_available() else "reference")
        return name, torch.device(("cuda" if torch.cuda.is_available() and name == "mamba_ssm"
                                   else "cpu") if cfg.device == "auto" else cfg.device)

    def make_backend(self, name: str) -> Backend:
        return get_backend(name, fused=self.cfg.fused)

    def describe(self) -> str:
        b = self.backend
        if b is None:
            return f"preset {self.cfg.preset}, backend {self.backend_name} (not loaded: dry run)"
        return (f"preset {self.cfg.preset}, backend {b.name} (mamba-ssm {b.version}, fused {b.inner_fn is not None}), "
                f"device {self.device}")

    def groups(self) -> List[Group]:
        return [Group(r["seed"], r["method"], r["budget"], (r["lr"],), grows=self.methods[r["method"]].trains)
                for r in self.run_grid(self.cfg)]

    def key(self, seed, method, budget, lr) -> str:
        return run_key({"method": method, "budget": budget, "lr": lr, "seed": seed, "config": self.cdict,
                        "backend": self.backend_name})

    def train(self, runs: Sequence[Run]) -> List[dict]:
        cfg, (run,) = self.cfg, runs
        if self._exp is None:
            if self.device.type == "cpu":
                torch.set_num_threads(threads_for(cfg.threads))
            self._exp = self.model_cls(cfg, self.backend, self.device)
        exp = self._exp
        try:
            rec = exp.train(run.method, dict(run.budget), run.lr, run.seed)
        except torch.cuda.OutOfMemoryError as e:  # record and go on; the grid point is shown as failed
            rec = {"method": run.method, "budget": dict(run.budget), "lr": run.lr, "seed": run.seed,
                   "budget_label": self.budget_label(run.budget), "status": f"error: {type(e).__name__}",
                   "best_mse": None, "final_mse": None, "trainable_pct": None}
        b = self.backend
        rec.update(model_seed=cfg.model_seed, config=self.cdict, backend=b.name, mamba_ssm_version=b.version,
                   fused=b.inner_fn is not None and not rec.get("fused_fallback"),
                   device=self._env["device"] if self.device.type == "cuda" else "cpu",
                   commit=self._commit, date=utc_now(), frozen_params=exp.n_frozen)
        return [rec]


class MambaCommand(Command):
    """``python -m synthetic mamba``: the Mamba-family command (:mod:`synthetic.command`'s flow); the Mamba-II and
    hybrid commands are this one with their own config module (its presets, parser and paths), experiment, table
    widths and figure."""

    name, conf, experiment_cls = "mamba", mamba_config, MambaExperiment
    method_order, widths = ALL_METHODS, (16, 20)

    @property
    def presets(self):
        return self.conf.PRESETS

    def parse(self, argv):
        return self.conf.parse_args(argv)

    def results_path(self, cfg) -> Path:
        return self.conf.out_paths(cfg)["json"]

    def figure_stem(self, cfg) -> Path:
        return self.conf.out_paths(cfg)["mse"]

    def experiment(self, cfg):
        return self.experiment_cls(cfg, log=self.log)

    def figure(self, cfg, data) -> List[str]:
        """Both figures (MSE vs trainable %, loss curves)."""
        records, rows = data
        if not records:
            return super().figure(cfg, data)
        paths = self.conf.out_paths(cfg)
        return plot_mamba(records, rows, paths["mse"], paths["curves"], method_order=self.method_order,
                          partial=self.partial_note(cfg))


main = MambaCommand.main


if __name__ == "__main__":
    sys.exit(main())
