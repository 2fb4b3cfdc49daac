"""The Jamba-style hybrid regression: SDT vs DoRA (and LoRA) on the SSM modules of a hybrid of attention and
Mamba-I layers, LoRA/DoRA on its linear projections (Galim et al., ICML 2025, Sec. 6 / Table 4, the synthetic
counterpart of its Jamba GLUE comparison).

Setup, as the Mamba regression (:mod:`synthetic.mamba.experiment`): a *frozen* hybrid (``frozen_layers`` layers,
1 attention per ``frozen_attn_period``, :mod:`synthetic.hybrid.model`) is fine-tuned to match a smaller *target*
hybrid on fresh random sequences (MSE over all tokens); both drawn once from ``model_seed``, so seeds vary the data
and the adapters' initialisation only. Methods: :data:`synthetic.hybrid.peft.METHODS`; each (method, budget) is the
best of a learning-rate grid grown at its edges by the runner. SDT's channels come from Algorithm 1 as in the Mamba
experiment: warm up the Mamba blocks' S6 parameters (A_log, x_proj, dt_proj and its bias) on a copy, score each
Mamba layer's channels by the change of ``Ā`` on a probe batch (that layer's input in the frozen model), keep the top
channels per layer.

Outputs (``<out>/``, by preset): ``hybrid_regression_<preset>.jsonl`` (one record per run, resumable) and
``hybrid_mse_vs_params_<preset>.png/.pdf``.

    python -m synthetic.hybrid_regression                    # CPU preset (the paper preset when CUDA is present)
    python -m synthetic.hybrid_regression --preset paper --time-budget-s 180   # GPU; rerun to resume
    python -m synthetic.hybrid_regression --dry-run | --plot-only
"""

from __future__ import annotations

import sys
import time
from typing import Dict, List, Sequence

import torch

from synthetic.command import Command
from synthetic.hybrid import config as hybrid_config
from synthetic.hybrid.config import (METHOD_ORDER, HybridRegressionConfig, budget_label, config_dict, lr_policy,
                                     out_paths, run_grid)
from synthetic.hybrid.model import MAMBA, HybridRef, layer_kinds
from synthetic.hybrid.peft import METHODS, HybridPeftConfig, PeftHybridStack, frozen_layers, frozen_param_count
from synthetic.mamba.experiment import MambaCommand, MambaExperiment, MambaModel
from synthetic.mamba.backends import Backend, mamba_ssm_available
from synthetic.mamba.peft import S6_NAMES, MambaPeftConfig, abar_change_scores, select_channels
from synthetic.results import run_key


class HybridModel(MambaModel):
    """Frozen and target hybrids, data streams and one training run per grid point (the inputs, evaluation and
    AdamW step are the Mamba experiment's; the models, target, SDT scores and a run are this module's)."""

    methods = METHODS

    def __init__(self, cfg: HybridRegressionConfig, backend: Backend, device: torch.device):
        self.cfg, self.backend, self.device = cfg, backend, device
        c = cfg

        def model(layers, period, offset, d_state):
            kinds = layer_kinds(layers, period, offset)
            return HybridRef(kinds, c.d_model, c.n_heads, lambda: backend.make_block(c.d_model, d_state, c.expand, device),
                             norm=c.norm, device=device, kernel=c.attention_kernel)

        torch.manual_seed(c.model_seed)
        self.frozen = model(c.frozen_layers, c.frozen_attn_period, c.frozen_attn_offset, c.frozen_d_state)
        torch.manual_seed(c.model_seed + 1)
        self.target = model(c.target_layers, c.target_attn_period, c.target_attn_offset, c.target_d_state)
        for m in (self.frozen, self.target):
            m.requires_grad_(False)
        self.layers = frozen_layers(self.frozen)
        self.dt_rank = next(m for k, m in zip(self.frozen.kinds, self.frozen.mixers) if k == MAMBA).dt_rank
        self.n_frozen = frozen_param_count(self.layers)
        g = torch.Generator(device="cpu").manual_seed(10_000 + c.model_seed)
        self.eval_x = [self._inputs(g) for _ in range(c.eval_batches)]
        with torch.no_grad():
            self.eval_y = [self.target(x) for x in self.eval_x]
        self._scores: Dict[int, List[torch.Tensor]] = {}

    def batch(self, g: torch.Generator):
        x = self._inputs(g)
        with torch.no_grad():
            y = self.target(x)
        return x, y

    def stack(self, config: HybridPeftConfig, channels=None, seed: int = 0) -> PeftHybridStack:
        g = torch.Generator(device="cpu").manual_seed(seed)
        c = self.cfg
        return PeftHybridStack(self.layers, d_state=c.frozen_d_state, dt_rank=self.dt_rank, n_heads=c.n_heads,
                               norm=c.norm, config=config, channels=channels, generator=g,
                               attention_kernel=c.attention_kernel).to(self.device)

    def mamba_inputs(self, hidden: torch.Tensor) -> List[torch.Tensor]:
        """Each Mamba layer's input in the frozen hybrid, ``norm(h)`` (Bt, N, d_model), in layer order."""
        out, f = [], self.frozen
        with torch.no_grad():
            for i, (kind, mixer) in enumerate(zip(f.kinds, f.mixers)):
                u = f.norm_fn(hidden, f.norm_weight(i))
                if kind == MAMBA:
                    out.append(u)
                hidden = hidden + mixer(u)
        return out

    def sdt_scores(self, seed: int) -> List[torch.Tensor]:
        """Algorithm 1, steps 1-2, on the Mamba layers: warm up their S6 parameters on a copy (attention and norms
        frozen), score channels per Mamba layer by the change of Ā on a probe batch (cached per seed)."""
        if seed in self._scores:
            return self._scores[seed]
        c = self.cfg
        model = self.warmed_up(HybridPeftConfig(mamba=MambaPeftConfig(full=S6_NAMES)), seed)
        before = [lw.weights for lw in self.layers if lw.kind == MAMBA]
        with torch.no_grad():
            scores = [abar_change_scores(w, blk.effective_weights(), u, c.frozen_d_state, self.dt_rank).cpu()
                      for w, blk, u in zip(before, model.mamba_blocks, self.mamba_inputs(self.eval_x[0]))]
        self._scores[seed] = scores
        return scores

    def train(self, method: str, budget: dict, lr: float, seed: int) -> dict:
        t0 = time.perf_counter()
        config = METHODS[method](budget)
        channels = None
        if config.mamba.sdt_channels:
            channels = [select_channels(s, config.mamba.sdt_channels) for s in self.sdt_scores(seed)]
        torch.manual_seed(seed)
        model = self.stack(config, channels, seed=seed)
        return self.fit_run(model, method, budget, lr, seed, t0, channels,
                            after={"layer_kinds": list(self.frozen.kinds)})


class HybridExperiment(MambaExperiment):
    """The hybrid regression as a :class:`synthetic.runner.Experiment`: Mamba-I's plug-in (one run per train call,
    groups of one lr, lr outermost within a seed) with this module's model class, registry and config functions;
    CUDA whenever present (the reference backend runs there too), the experiment's name in the run key."""

    name = "hybrid"
    prog = "hybrid_regression"
    model_cls = HybridModel
    methods = METHODS
    run_grid = staticmethod(run_grid)
    lr_policy_of = staticmethod(lr_policy)
    out_paths = staticmethod(out_paths)
    config_dict = staticmethod(config_dict)
    budget_label = staticmethod(budget_label)

    def backend_and_device(self, cfg):
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto"
                              else cfg.device)
        auto = "mamba_ssm" if mamba_ssm_available() and device.type == "cuda" else "reference"
        return (cfg.backend if cfg.backend != "auto" else auto), device

    def describe(self) -> str:
        b = self.backend
        if b is None:
            return f"preset {self.cfg.preset}, backend {self.backend_name} (not loaded: dry run)"
        c = self.cfg
        kinds = "".join(k[0].upper() for k in layer_kinds(c.frozen_layers, c.frozen_attn_period, c.frozen_attn_offset))
        return (f"preset {c.preset}, frozen layers {kinds}, backend {b.name} (mamba-ssm {b.version}, "
                f"fused {b.inner_fn is not None}), device {self.device}")

    def key(self, seed, method, budget, lr) -> str:
        return run_key({"method": method, "budget": budget, "lr": lr, "seed": seed, "config": self.cdict,
                        "backend": self.backend_name, "experiment": self.name})


class HybridCommand(MambaCommand):
    """``python -m synthetic hybrid``: the Mamba-family command with this module's config, experiment and figure
    (MSE vs trainable %; the table also shows the min and max over seeds)."""

    name, conf, experiment_cls = "hybrid", hybrid_config, HybridExperiment
    method_order, widths, spread = METHOD_ORDER, (26, 26), True
    title, figure = "Hybrid (attention + Mamba) regression", Command.figure

    def note(self, records: Sequence[dict]) -> str:
        """The run description under the figure: backend, devices, layout, sizes, iterations, commits."""
        r0 = records[0]
        c = r0.get("config", {})
        kinds = "".join(k[0].upper() for k in r0.get("layer_kinds", []))
        devices = ", ".join(sorted({str(r.get("device")) for r in records}))
        return (f"backend {r0.get('backend')} (mamba-ssm {r0.get('mamba_ssm_version')}), {devices}; frozen {kinds} "
                f"(A = attention, M = Mamba; d_model {c.get('d_model')}, H {c.get('frozen_d_state')}, "
                f"{c.get('n_heads')} heads, {c.get('norm')}), target {c.get('target_layers')} layers "
                f"(H {c.get('target_d_state')}); {c.get('iters')} AdamW iters, best lr per point; commits "
                f"{', '.join(sorted({str(r.get('commit')) for r in records}))}")


main = HybridCommand.main


if __name__ == "__main__":
    sys.exit(main())
