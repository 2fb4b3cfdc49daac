"""The Mamba-II regression: SDT vs. LoRA on Mamba2 (SSD) blocks, regression to a smaller target (Galim et al.,
ICML 2025, Sec. 6's synthetic experiment carried to the Mamba-II blocks of App. C.2/E.2).

Setup as in :mod:`synthetic.mamba.experiment` (whose classes this module subclasses: one trainer, one runner
plug-in): a frozen residual stack of Mamba2 blocks (more layers, more states) is fine-tuned so its output matches
a target stack (one block, fewer states) on fresh random sequences; loss = MSE over all tokens; each (method,
budget) is the best of a learning-rate grid that grows at its edges. Methods: :data:`synthetic.mamba2.peft.METHODS`.
Both stacks are drawn with the backend's block class (mamba-ssm's ``Mamba2`` or :class:`Mamba2Ref`) and computed
by :func:`synthetic.mamba2.ref.mamba2_forward` with the backend's SSD scan.

    python -m synthetic.mamba2_regression                  # auto: mamba_ssm + paper preset on a GPU, else cpu
    python -m synthetic.mamba2_regression --preset paper --backend reference --device cuda
    python -m synthetic.mamba2_regression --plot-only --preset cpu
"""

from __future__ import annotations

import sys
from typing import Dict, Sequence

import torch

from synthetic.command import Command
from synthetic.mamba.experiment import MambaCommand, MambaExperiment, MambaModel
from synthetic.mamba.peft import residual_stack
from synthetic.mamba2 import config as mamba2_config
from synthetic.mamba2.config import (METHOD_ORDER, Mamba2RegressionConfig, budget_label, config_dict, lr_policy,
                                     out_paths, run_grid)
from synthetic.mamba2.peft import (METHODS, WARMUP_FULL, Mamba2PeftConfig, PeftMamba2Stack, frozen_param_count,
                                   get_backend, head_change_scores, select_heads_states, state_change_scores)
from synthetic.mamba2.ref import block_weights, mamba2_forward
from synthetic.plots import seeds_text


class Mamba2Model(MambaModel):
    """Frozen and target Mamba2 stacks and the Mamba-I trainer (``train``, ``step``, ``eval_mse`` inherited);
    overrides how the models are built, the target computed, and Algorithm 1's selection."""

    methods = METHODS

    def __init__(self, cfg: Mamba2RegressionConfig, backend, device: torch.device):
        self.cfg, self.backend, self.device = cfg, backend, device

        def make(N):
            return backend.block_cls(cfg.d_model, d_state=N, expand=cfg.expand, headdim=cfg.headdim,
                                     ngroups=cfg.ngroups, device=device)
        torch.manual_seed(cfg.model_seed)
        self.layer_weights = [block_weights(make(cfg.frozen_d_state)) for _ in range(cfg.frozen_layers)]
        torch.manual_seed(cfg.model_seed + 1)
        self.target_weights = [block_weights(make(cfg.target_d_state)) for _ in range(cfg.target_layers)]
        self.n_frozen = frozen_param_count(self.layer_weights)
        g = torch.Generator(device="cpu").manual_seed(10_000 + cfg.model_seed)
        self.eval_x = [self._inputs(g) for _ in range(cfg.eval_batches)]
        self.eval_y = [self.target(x) for x in self.eval_x]
        self._scores: Dict[object, object] = {}

    def _block(self, w):
        c = self.cfg
        return lambda h: mamba2_forward(w, h, ngroups=c.ngroups, chunk_size=c.chunk_size, scan_fn=self.backend.scan_fn)

    def target(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return residual_stack([self._block(w) for w in self.target_weights], x)

    def batch(self, g: torch.Generator):
        x = self._inputs(g)
        return x, self.target(x)

    def stack(self, config: Mamba2PeftConfig, channels=None, seed: int = 0, states=None) -> PeftMamba2Stack:
        g = torch.Generator(device="cpu").manual_seed(seed)
        return PeftMamba2Stack(self.layer_weights, ngroups=self.cfg.ngroups, config=config, heads=channels,
                               states=states, generator=g, chunk_size=self.cfg.chunk_size).to(self.device)

    def sdt_scores(self, seed: int):
        """Algorithm 1 for SSD, steps 1-3 (:mod:`synthetic.mamba2.peft`): warm up A_log, dt_bias and in_proj's
        [B; C; δ] rows on a copy; per layer, head scores (change of Ā on a probe batch) and state scores (G, N)."""
        if seed in self._scores:
            return self._scores[seed]
        c = self.cfg
        model = self.warmed_up(Mamba2PeftConfig(full=WARMUP_FULL), seed)
        scores, h = [], self.eval_x[0]
        with torch.no_grad():
            for w_before, blk in zip(self.layer_weights, model.blocks):
                w_after = blk.effective_weights()
                scores.append((head_change_scores(w_before, w_after, h, c.ngroups).cpu(),
                               state_change_scores(w_before, w_after, c.ngroups).cpu()))
                h = h + self._block(w_before)(h)  # the frozen model's input to the next layer
        self._scores[seed] = scores
        return scores

    def sdt_selection(self, config: Mamba2PeftConfig, lr: float, seed: int):
        """(heads per layer, states per layer and group) for an SDT config."""
        sel = [select_heads_states(hs, ss, config.sdt_heads, config.sdt_states) for hs, ss in self.sdt_scores(seed)]
        return [h for h, _ in sel], [s for _, s in sel]


class Mamba2Experiment(MambaExperiment):
    """The Mamba-II experiment as a :class:`synthetic.runner.Experiment` (Mamba-I's plug-in with this module's
    model class, grid, paths and backends): one run per train call, groups of one lr each."""

    name = "mamba2"
    prog = "mamba2_regression"
    model_cls = Mamba2Model
    methods = METHODS
    run_grid = staticmethod(run_grid)
    lr_policy_of = staticmethod(lr_policy)
    out_paths = staticmethod(out_paths)
    config_dict = staticmethod(config_dict)
    budget_label = staticmethod(budget_label)

    def make_backend(self, name: str):
        return get_backend(name)  # Mamba-II's backends (the SSD scan); no fused path


class Mamba2Command(MambaCommand):
    """``python -m synthetic mamba2``: the Mamba-family command with this module's config, experiment and figure
    (MSE vs trainable %)."""

    name, conf, experiment_cls = "mamba2", mamba2_config, Mamba2Experiment
    method_order, widths, title = METHOD_ORDER, (16, 26), "Mamba-II regression"
    figure = Command.figure

    def note(self, records: Sequence[dict]) -> str:
        c = records[0].get("config", {})
        return (f"backend {records[0].get('backend')}, {', '.join(sorted({str(r.get('device')) for r in records}))}; "
                f"frozen {c.get('frozen_layers')}x Mamba2(d_model {c.get('d_model')}, P {c.get('headdim')}, "
                f"G {c.get('ngroups')}, N {c.get('frozen_d_state')}), target {c.get('target_layers')}x "
                f"(N {c.get('target_d_state')}); {c.get('iters')} AdamW iters, best lr per point; "
                f"{seeds_text(len({r['seed'] for r in records}))}")


main = Mamba2Command.main


if __name__ == "__main__":
    sys.exit(main())
