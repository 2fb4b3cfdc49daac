"""Training for the deep-S4 experiment: the device, the matmul precision, and the :class:`Trainer` that owns
the (optionally compiled) per-run loss and AdamW step shared by every method, and Algorithm 1's warm-up."""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

from synthetic.cli import threads_for

from synthetic.results import run_key
from synthetic.s4 import model as sm
from synthetic.s4.config import Config, n_modes
from synthetic.s4.forms import choose_form
from synthetic.s4.methods import BENCHMARK_METHODS, PrunedSelection, parse_sdt
from synthetic.s4.selection import rank_dimensions

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------- training
def resolve_device(cfg: Config) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def set_precision(precision: str, device: torch.device) -> None:
    """Matmul precision on CUDA (torch's process-wide flags, read when a step is compiled): "fp32"; "tf32"
    (TF32 tensor cores); "fp16" (TF32; the Toeplitz conv GEMMs with fp16 operands are :func:`fast_path`'s
    ``half_conv``). No-op on CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision in ("tf32", "fp16")
        torch.backends.cudnn.allow_tf32 = precision in ("tf32", "fp16")


def conv_form(cfg: Config, device: torch.device) -> Tuple[str, str]:
    """The convolution form for ``cfg.conv`` on ``device`` and why: as given, Toeplitz for ``--precision fp16``
    (its fp16 GEMMs), or for "auto" :func:`synthetic.s4.forms.choose_form` (measured crossover or default rule)."""
    if cfg.precision == "fp16" and device.type == "cuda":
        return "toeplitz", "--precision fp16: fp16 Toeplitz GEMMs"
    if cfg.conv != "auto":
        return cfg.conv, "--conv"
    return choose_form(cfg.seq_len, cfg.d_model, device.type, B=cfg.batch)


def fast_path(cfg: Config, device: torch.device, conv: str) -> sm.FastPath:
    """The layer options of ``cfg`` on ``device`` with convolution form ``conv`` (:func:`conv_form`)."""
    return sm.FastPath(conv=conv, half_conv=cfg.precision == "fp16" and device.type == "cuda",
                       proj_split=int(cfg.proj_split), linear=cfg.activation == "identity")


class Trainer:
    """Owns the (optionally compiled) per-run loss and AdamW step, shared by every method and group."""

    def __init__(self, cfg: Config, device: torch.device, log=print):
        self.cfg, self.device, self.log = cfg, device, log
        set_precision(cfg.precision, device)
        if device.type == "cpu":
            torch.set_num_threads(threads_for(cfg.threads))
        self.conv, self.conv_reason = conv_form(cfg, device)
        self.path = fast_path(cfg, device, self.conv)  # how every layer of this trainer's graphs is computed
        self.idx = sm.toeplitz_index(cfg.seq_len, device)
        self._idx_extra: Dict[int, Tensor] = {}
        self.use_compile = (device.type == "cuda") if cfg.compile is None else cfg.compile
        if self.use_compile and any(m in BENCHMARK_METHODS for m in cfg.methods):
            # one graph per extra layout and prompt/prefix length M: room for all of them
            import torch._dynamo as dynamo  # not "import torch._dynamo": that would make torch a local name here
            dcfg = dynamo.config
            name = "recompile_limit" if hasattr(dcfg, "recompile_limit") else "cache_size_limit"
            setattr(dcfg, name, max(getattr(dcfg, name), 64))
        self._loss, self._step = sm.losses_for(self.path), sm.adamw_step
        if self.use_compile:
            try:
                self._loss = sm.compiled_losses(self.path)
                self._step = torch.compile(sm.adamw_step, dynamic=False)
            except Exception as e:  # pragma: no cover - depends on the installation
                self.log(f"torch.compile unavailable ({e!r}); running eagerly")
                self.use_compile = False
        self.compile_failed = False

    def _call(self, which, *args):
        fn = self._loss if which == "loss" else self._step
        try:
            return fn(*args)
        except Exception as e:
            if not self.use_compile:
                raise
            self.log(f"torch.compile failed ({type(e).__name__}: {str(e)[:200]}); falling back to eager")
            self.use_compile, self.compile_failed = False, True
            self._loss, self._step = sm.losses_for(self.path), sm.adamw_step
            fn = self._loss if which == "loss" else self._step
            return fn(*args)

    def models(self, seed: int):
        """Frozen base layers and target layers of one seed (drawn on the CPU, moved to the device)."""
        cfg = self.cfg
        g = torch.Generator().manual_seed(seed)
        frozen = [sm.init_layer(cfg.d_model, n_modes(cfg, cfg.frozen_d_state), generator=g, device=self.device)
                  for _ in range(cfg.frozen_layers)]
        gt = torch.Generator().manual_seed(10_000 + seed)
        target = [sm.init_layer(cfg.d_model, n_modes(cfg, cfg.target_d_state), generator=gt, device=self.device)
                  for _ in range(cfg.target_layers)]
        return frozen, [{k: v[None] for k, v in p.items()} for p in target]

    def data(self, seed: int, stream: int):
        g = torch.Generator(device=self.device)
        g.manual_seed(1_000_003 * (stream + 1) + seed)
        return g

    def batch(self, g: torch.Generator, target) -> Tuple[Tensor, Tensor]:
        cfg = self.cfg
        x = torch.randint(0, 10, (cfg.d_model, cfg.seq_len, cfg.batch), generator=g, device=self.device).to(torch.float32)
        with torch.no_grad():
            y = sm.deep_forward(target, x, self.idx, self.path)[0]  # (D, N, B)
        return x, y

    def train(self, state: sm.RunState, lrs: Sequence[float], iters: int, target, g: torch.Generator) -> Tensor:
        """Train the R runs of ``state`` for ``iters`` AdamW steps; returns losses (R, iters) on the host.

        No host synchronisation inside the loop: losses are written into a device buffer.
        """
        cfg = self.cfg
        params = state.parameters()
        m = [torch.zeros_like(p) for p in params]
        v = [torch.zeros_like(p) for p in params]
        step = torch.zeros((), device=self.device)
        lr = torch.tensor(list(lrs), device=self.device, dtype=torch.float32)
        losses = torch.empty(state.R, iters, device=self.device)
        for it in range(iters):
            x, y = self.batch(g, target)
            loss = self._call("loss", state.base, state.train, state.mask, state.lora, state.rank_mask, x, y,
                              *state.loss_args(self.idx, self.idx_for(state.prefix_length())))
            grads = torch.autograd.grad(loss.sum(), params)
            self._call("step", params, list(grads), m, v, step, lr, 0.9, 0.999, 1e-8, cfg.weight_decay)
            losses[:, it] = loss.detach()
        return losses.cpu()

    @torch.no_grad()
    def evaluate(self, layers, target, g, n_batches: int) -> float:
        tot = torch.zeros((), device=self.device)
        for _ in range(n_batches):
            x, y = self.batch(g, target)
            out = sm.deep_forward(layers, x, self.idx, self.path)
            tot += ((out - y) ** 2).mean()
        return float(tot / n_batches)

    def warmup_selection(self, frozen, target, seed: int):
        """Algorithm 1 step 1-2: full update of the SSM modules (or, ``--warmup-params all``, of every
        parameter) on a copy, then rank per layer. A list of SDTRanking, or a :class:`PrunedSelection`
        with ``--sdt-prune usable``."""
        cfg = self.cfg
        R = len(cfg.lrs)  # same run count as the sweep's groups, so the compiled graph is reused
        state = sm.RunState.create(frozen, R, *self.rank_max(), generator=torch.Generator().manual_seed(seed))
        for mk in state.mask:
            for k in (sm.SSM_PARAMS if cfg.warmup_params == "ssm" else sm.ALL_PARAMS):
                mk[k][:] = True
        if cfg.warmup_iters:
            self.train(state, [cfg.warmup_lr] * R, cfg.warmup_iters, target, self.data(seed, stream=1))
        eff = [{k: v[0].detach() for k, v in p.items()} for p in state.effective()]
        rk = [rank_dimensions(A_bar(b), A_bar(e), torch.complex(b["C_re"], b["C_im"]).cpu(), B_bar(b), cfg.seq_len,
                              cfg.magnitude_floor) for b, e in zip(frozen, eff)]
        if cfg.sdt_prune == "usable":
            return PrunedSelection(rk, cfg.usable_channels, cfg.usable_states)
        return rk

    def rank_max(self) -> Tuple[int, int]:
        cfg = self.cfg
        dora = list(cfg.dora_ranks) if "DoRA (Proj)" in cfg.methods else []  # else: the default runs' draws unchanged
        rp = max(list(cfg.lora_ranks) + [parse_sdt(s)["proj_rank"] for s in cfg.sdt_lora] + dora + [1])
        return rp, max(list(cfg.ssm_lora_ranks) + [1])

    def idx_for(self, M: int) -> Optional[Tensor]:
        """Toeplitz index for ``N + M`` positions (prompt / prefix methods); None for M = 0."""
        if not M:
            return None
        if M not in self._idx_extra:
            self._idx_extra[M] = sm.toeplitz_index(self.cfg.seq_len + M, self.device)
        return self._idx_extra[M]


def A_bar(p) -> Tensor:
    dt = torch.exp(p["log_dt"].double().cpu())[:, None]
    return torch.exp(dt * torch.complex(-torch.exp(p["log_A_re"].double().cpu()), p["A_im"].double().cpu()))


def B_bar(p) -> Tensor:
    from theory.ssm import discretize_zoh

    A = torch.complex(-torch.exp(p["log_A_re"].double().cpu()), p["A_im"].double().cpu())
    B = torch.complex(p["B_re"].double().cpu(), p["B_im"].double().cpu())
    return discretize_zoh(A, B, torch.exp(p["log_dt"].double().cpu()))[1]


ACTIVATION_COPIES = 8  # (R, D, N, B) float32 tensors alive per layer in a training step (forward saves + grads)


def estimate_step_bytes(R: int, D: int, N: int, B: int, L: int) -> int:
    """Peak bytes of one training step of R runs: ``ACTIVATION_COPIES`` activation tensors of R·D·N·B floats per
    layer (inputs kept for the backward of the Toeplitz products, projection and ReLU, and their gradients) plus
    the R·D·N² Toeplitz matrices; a guard's estimate, not a measurement."""
    return 4 * (ACTIVATION_COPIES * L * R * D * N * B + 2 * L * R * D * N * N)


def config_step_bytes(cfg, R: int) -> int:
    """:func:`estimate_step_bytes` for a step of ``R`` runs of the deep-S4 config ``cfg`` (its deeper layer stack)."""
    return estimate_step_bytes(R, cfg.d_model, cfg.seq_len, cfg.batch, max(cfg.frozen_layers, cfg.target_layers))


# How far estimate_step_bytes may overstate a benchmark's step before a refusal: at the paper configuration (batch
# 4000, R = 16) it says 98.9 GiB where the measured peak was 30.7 GiB (Toeplitz, compiled, H200, figures/bench_s4.json)
# and 25.2 GiB (fused, H100): an 80 GB H100 must not refuse that step. Absurd inputs (--runs 10^8) stay refused.
ESTIMATE_SLACK = 4.0


class TrainerExperiment:
    """What the paper- and the official-convention deep-S4 experiments share as runner plug-ins: a run's key from
    the config's key fields (``self.kc``), a trainer built on first use (a dry run builds none; subclasses say how,
    :meth:`make_trainer`), and padding of a short step to the compiled run count when that trainer compiles."""

    kc: Dict
    _trainer = None

    def make_trainer(self):
        raise NotImplementedError

    @property
    def trainer(self):
        if self._trainer is None:
            self._trainer = self.make_trainer()
        return self._trainer

    @property
    def pad_calls(self) -> bool:
        return self.trainer.use_compile

    def key(self, seed, method, budget, lr) -> str:
        return run_key({"cfg": self.kc, "method": method, "budget": budget, "lr": lr, "seed": seed})

    def recorded(self, runs) -> int:
        """How many of a train call's ``runs`` are recorded: a call padded to R runs for one compiled graph repeats
        its last run (:func:`synthetic.runner._calls`), and a record's ``wall_s`` is the call's time over these."""
        return len({self.key(r.seed, r.method, r.budget, r.lr) for r in runs})
