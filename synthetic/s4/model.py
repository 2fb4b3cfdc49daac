"""Fast deep S4 for fine-tuning sweeps (Galim et al., ICML 2025, Sec. 6.1, Figure 2; eq. 4).

One layer, skip term inside the projection as in the official code (``theory.deep`` ``skip="inside"``):

    ``y = ReLU(W (S4(x) + u ⊙ x) + β)``,   ``S4(x)_t = Σ_{k=0}^{t} K_k x_{t-k}``,
    ``K_k = 2 Re(Σ_i C_i B̄_i Ā_i^k)``,  ``Ā = exp(ΔA)``,  ``B̄ = (ΔA)^{-1}(exp(ΔA) − 1) Δ B``  (S4D, ZOH).

Parameters of one layer (``D`` channels, ``Hc`` complex modes = ``H/2`` conjugate pairs, so ``H``
real states; with ``--state-convention complex`` of ``synthetic.s4_regression``, ``Hc = H`` as the
official code's ``d_state``), all real tensors; ``A = −exp(log_A_re) + i A_im`` keeps ``Re A < 0`` by construction:

    log_A_re, A_im, B_re, B_im, C_re, C_im: (D, Hc)   log_dt, u, beta: (D,)   W: (D, D)

Speed (see ``notes/s4_speed.md``): activations are laid out (R, D, N, B) = (runs, channels,
length, batch); the causal convolution (:mod:`synthetic.s4.conv`, form chosen by :class:`FastPath`) is by
default one batched matmul with per-(run, channel) lower-triangular Toeplitz matrices (N×N), the skip
``u ⊙ x`` is folded into the lag-0 tap (``K_0 + u``), the projection is one batched GEMM over D. ``R`` independent fine-tuning runs (e.g. the learning-rate
grid) share one input batch and one target and are trained in the same kernels.

Fine-tuning parameterisation (:class:`RunState`): every parameter has a dense trainable copy ``P``,
a frozen base ``P0`` and a boolean mask ``M``; the effective value is ``where(M, P, P0)`` (frozen
entries are read from the base, bit-identical whatever the optimizer does to ``P``), plus LoRA
factors on ``W`` (rank ≤ ``proj_rank_max``) and on the four D×Hc SSM matrices ``log_A_re, A_im,
C_re, C_im`` (rank ≤ ``ssm_rank_max``), with a per-run rank mask. All methods share one graph (one
``torch.compile``); a method is a choice of masks. The trainable count is the number of unmasked
entries plus the unmasked LoRA factor entries; ``tests/test_s4_regression.py`` checks it equals
``theory.peft.count_trainable`` of the theory package's modules for the same method.

The benchmark's other methods (prompt, prefix, initial state, state offset, DoRA, Additional-scan) use a
second path: trainable tensors in ``RunState.extra`` (:data:`EXTRA_SHAPES`) and :func:`deep_forward_extra`
(sequence length ``N + M`` with prompt/prefix positions). A RunState without extras runs the graph above
unchanged; :func:`synthetic.s4.twin.theory_forward_extra` is that path's float64 twin.

The reference twin is :func:`synthetic.s4.twin.to_theory_model` (float64, ``theory.deep`` / ``theory.ssm`` FFT
convolution); a test holds the two together.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from theory.peft import dora_normalize  # DoRA's m ⊙ V / ‖V‖_row, the norm detached in the backward (as peft)
from synthetic.s4.conv import (ToeplitzConv, ToeplitzConvHalf, diagonal_sums,  # noqa: F401
                               s4d_kernel, s4d_modes, toeplitz, toeplitz_index)  # re-exported: the layer's convolution
from synthetic.s4.forms import CONV_FORMS
from synthetic.s4.fused import fused_deep_forward
from synthetic.s4.proj import split_k_projection
from synthetic.s4.twin import theory_forward_extra, to_theory_model  # noqa: F401 (the float64 twins, re-exported)

Tensor = torch.Tensor

SSM_PARAMS = ("log_A_re", "A_im", "B_re", "B_im", "C_re", "C_im", "log_dt")  # the S4 module
SSM_LORA_PARAMS = ("log_A_re", "A_im", "C_re", "C_im")  # "LoRA (S4)": A and C as D×Hc matrices
PROJ_PARAMS = ("W", "beta")  # the linear projection
SKIP_PARAMS = ("u",)
ALL_PARAMS = SSM_PARAMS + SKIP_PARAMS + PROJ_PARAMS


def param_shapes(D: int, Hc: int) -> Dict[str, tuple]:
    """Shape of every parameter of one layer (no run axis)."""
    s = {n: (D, Hc) for n in ("log_A_re", "A_im", "B_re", "B_im", "C_re", "C_im")}
    s.update(log_dt=(D,), u=(D,), W=(D, D), beta=(D,))
    return s


def init_layer(D: int, Hc: int, *, generator: torch.Generator, dtype=torch.float32,
               device="cpu") -> Dict[str, Tensor]:
    """Random S4D layer as in the official code (EXPERIMENTS.md):

    ``log(−Re A) = log U(0,1)``, ``Im A = π·randint(0, Hc)``, ``log Δ ~ U(log 1e-3, log 1e-1)``,
    ``B = 1`` (the S4D default; B̄ then carries only the ZOH factor), ``C`` complex standard normal
    (each part N(0, 1/2)), ``u ~ N(0, 1)``, ``W, β ~ U(±1/√D)`` (nn.Linear's default).
    Drawn on the CPU from ``generator`` (so a seed gives the same model on every device), then moved.
    """
    g = generator
    kw = dict(generator=g, dtype=torch.float64)
    log_A_re = torch.log(torch.rand(D, Hc, **kw).clamp_min(1e-4))  # clamp: keeps exp(log) away from 0
    A_im = math.pi * torch.randint(0, Hc, (D, Hc), generator=g).to(torch.float64)
    log_dt = math.log(1e-3) + torch.rand(D, **kw) * (math.log(1e-1) - math.log(1e-3))
    C_re = torch.randn(D, Hc, **kw) / math.sqrt(2)
    C_im = torch.randn(D, Hc, **kw) / math.sqrt(2)
    u = torch.randn(D, **kw)
    bound = 1 / math.sqrt(D)
    W = (2 * torch.rand(D, D, **kw) - 1) * bound
    beta = (2 * torch.rand(D, **kw) - 1) * bound
    p = dict(log_A_re=log_A_re, A_im=A_im, B_re=torch.ones(D, Hc, dtype=torch.float64),
             B_im=torch.zeros(D, Hc, dtype=torch.float64), C_re=C_re, C_im=C_im, log_dt=log_dt, u=u, W=W, beta=beta)
    return {k: v.to(dtype=dtype, device=device) for k, v in p.items()}


def count_layer_params(D: int, Hc: int) -> int:
    return sum(math.prod(s) for s in param_shapes(D, Hc).values())

@dataclass(frozen=True)
class FastPath:
    """How the default graph computes a layer; each trainer builds one from its config and passes it to
    :func:`layer_forward`, :func:`deep_forward` and :func:`run_losses` (compiled once per distinct value,
    :func:`compiled_losses`). None of these choices is part of a run's key: they change rounding only, or
    (``linear``) name the Theorem 1 study's variant, which its results file records.

    conv: the convolution form, a key of ``synthetic.s4.forms.CONV_FORMS``.
    half_conv: the Toeplitz convolution with fp16 operands (:class:`ToeplitzConvHalf`, ``--precision fp16``);
        it uses the Toeplitz form whatever ``conv`` is.
    proj_split: > 1 = the projection's weight gradient as that many chunks of N·B
        (``synthetic.s4.proj.SplitKProjection``); 0 or 1 = one GEMM.
    linear: identity activation instead of ReLU in every layer (Theorem 1's linear setting,
        ``synthetic.s4.theorem1_study``).
    """

    conv: str = "toeplitz"
    half_conv: bool = False
    proj_split: int = 0
    linear: bool = False

    def __post_init__(self):
        if self.conv not in CONV_FORMS:
            raise ValueError(f"conv form: must be one of {sorted(CONV_FORMS)}, got {self.conv!r}")


DEFAULT_PATH = FastPath()  # the experiment's layer: Toeplitz form, fp32 operands, one projection GEMM, ReLU


def layer_forward(p: Dict[str, Tensor], x: Tensor, idx: Tensor, path: FastPath = DEFAULT_PATH) -> Tensor:
    """One layer on x (R, D, N, B) (or (D, N, B), broadcast over runs) -> (R, D, N, B), computed as ``path`` says.

    ``p`` tensors carry a leading run axis R: log_A_re (R, D, Hc), W (R, D, D), ...
    """
    if path.half_conv:
        s = ToeplitzConvHalf.apply(s4d_kernel(p, x.shape[-2]), x, idx)  # (R, D, N, B): conv + skip
    else:
        s = CONV_FORMS[path.conv](p, x, idx)  # (R, D, N, B): conv + skip
    R, D = s.shape[0], s.shape[1]
    if path.proj_split > 1:
        z = split_k_projection(p["W"], s.reshape(R, D, -1), path.proj_split)  # (R, D, N*B)
    else:
        z = torch.bmm(p["W"], s.reshape(R, D, -1))  # (R, D, N*B)
    pre = z + p["beta"][..., None]
    return (pre if path.linear else torch.relu(pre)).reshape(s.shape)  # (R, D, N, B)


def deep_forward(layers: List[Dict[str, Tensor]], x: Tensor, idx: Tensor, path: FastPath = DEFAULT_PATH) -> Tensor:
    """The stack: x (D, N, B) or (R, D, N, B) -> (R, D, N, B). With ``path.conv == "fused"`` (and fp32 operands)
    :func:`synthetic.s4.fused.fused_deep_forward`: the same layers with each ReLU fused into the next layer's
    convolution."""
    if path.conv == "fused" and not path.half_conv and not path.proj_split:
        return fused_deep_forward(layers, x, linear=path.linear)
    for p in layers:
        x = layer_forward(p, x, idx, path)
    return x


# ------------------------------------------------------------------------ fine-tuning run state
@dataclass
class RunState:
    """R fine-tuning runs of one frozen stack (see the module docstring). Tensors, no behaviour.

    base[l][name]: (shape) frozen values, shared by the runs. train[l][name]: (R, shape) dense
    trainable copies. mask[l][name]: (R, shape) bool, True = trainable entry.
    lora[l]: proj_A (R, rp, D), proj_B (R, D, rp), ssm_A (R, 4, rs, Hc), ssm_B (R, 4, D, rs).
    rank_mask[l]: proj (R, rp), ssm (R, rs) in {0, 1}. LoRA B factors start at 0 (update starts at 0).
    """

    base: List[Dict[str, Tensor]]
    train: List[Dict[str, Tensor]]
    mask: List[Dict[str, Tensor]]
    lora: List[Dict[str, Tensor]]
    rank_mask: List[Dict[str, Tensor]]
    extra: Optional[List[Dict[str, Tensor]]] = None  # per layer, see EXTRA_SHAPES; None/empty: the default graph

    @classmethod
    def create(cls, base: List[Dict[str, Tensor]], R: int, proj_rank_max: int, ssm_rank_max: int,
               generator: torch.Generator) -> "RunState":
        dev, dt = base[0]["W"].device, base[0]["W"].dtype
        D, Hc = base[0]["log_A_re"].shape
        train, mask, lora, rmask = [], [], [], []
        for b in base:
            train.append({k: v.detach()[None].repeat(R, *([1] * v.dim())).requires_grad_(True) for k, v in b.items()})
            mask.append({k: torch.zeros((R,) + tuple(v.shape), dtype=torch.bool, device=dev) for k, v in b.items()})
            n4 = len(SSM_LORA_PARAMS)
            pa = torch.randn(R, proj_rank_max, D, generator=generator, dtype=torch.float64) / math.sqrt(D)
            sa = torch.randn(R, n4, ssm_rank_max, Hc, generator=generator, dtype=torch.float64) / math.sqrt(Hc)
            lora.append({
                "proj_A": pa.to(dev, dt).requires_grad_(True),  # (R, rp, D)
                "proj_B": torch.zeros(R, D, proj_rank_max, device=dev, dtype=dt, requires_grad=True),  # (R, D, rp)
                "ssm_A": sa.to(dev, dt).requires_grad_(True),  # (R, 4, rs, Hc)
                "ssm_B": torch.zeros(R, n4, D, ssm_rank_max, device=dev, dtype=dt, requires_grad=True),  # (R, 4, D, rs)
            })
            rmask.append({"proj": torch.zeros(R, proj_rank_max, device=dev, dtype=dt),
                          "ssm": torch.zeros(R, ssm_rank_max, device=dev, dtype=dt)})
        return cls(base, train, mask, lora, rmask)

    @property
    def R(self) -> int:
        return self.rank_mask[0]["proj"].shape[0]

    @classmethod
    def concat(cls, states: List["RunState"]) -> "RunState":
        """The runs of several states as one state (runs stacked in order), e.g. runs of different methods and
        budgets of one frozen stack trained in one step. Base tensors the states share stay shared; a base tensor
        that differs between them (e.g. SDT-P's pruned ``C``) gets a run axis (R, shape). The states' bases must
        have no run axis, and the states the same LoRA rank maxima and extra layout."""
        if len(states) == 1:
            return states[0]
        s0 = states[0]
        for s in states[1:]:
            if any(a[k].shape != b[k].shape for a, b in zip(s.base, s0.base) for k in a):
                raise ValueError("states: runs packed into one step need base tensors of one shape (no run axis)")
            if bool(s.extra) != bool(s0.extra) or (s.extra and [sorted(e) for e in s.extra] != [sorted(e) for e in s0.extra]):
                raise ValueError("states: runs packed into one step need the same extra parameters")

        def cat(field):
            per_layer = [getattr(s, field) for s in states]
            out = []
            for layer in zip(*per_layer):
                d = {}
                for k in layer[0]:
                    t = torch.cat([x[k].detach() for x in layer])
                    d[k] = t.requires_grad_(True) if layer[0][k].requires_grad else t
                out.append(d)
            return out

        base = [{k: v if all(s.base[l][k] is v for s in states)
                 else torch.cat([s.base[l][k].expand(s.R, *v.shape) for s in states])  # (R, shape)
                 for k, v in b.items()} for l, b in enumerate(s0.base)]
        return cls(base, cat("train"), cat("mask"), cat("lora"), cat("rank_mask"),
                   cat("extra") if s0.extra else s0.extra)


    def parameters(self) -> List[Tensor]:
        """Every tensor the optimizer steps (dense copies and LoRA factors); masks decide what counts."""
        out = []
        for t, lo in zip(self.train, self.lora):
            out += [t[k] for k in ALL_PARAMS] + [lo[k] for k in ("proj_A", "proj_B", "ssm_A", "ssm_B")]
        for ex in self.extra or ():
            out += [ex[k] for k in sorted(ex)]  # every entry of an extra tensor is trainable
        return out

    def has_extra(self) -> bool:
        return bool(self.extra) and any(self.extra)

    def add_extra(self, layer: int, name: str, value: Tensor) -> Tensor:
        """Create the trainable extra tensor ``name`` (:data:`EXTRA_SHAPES`) of one layer: ``value`` (R, ...)
        becomes a leaf that requires grad; every entry is trainable (counted by :meth:`trainable_count`)."""
        if name not in EXTRA_SHAPES:
            raise ValueError(f"name: unknown extra parameter {name!r}; choose from {sorted(EXTRA_SHAPES)}")
        if self.extra is None:
            self.extra = [{} for _ in self.base]
        t = value.detach().to(self.base[0]["W"].device, self.base[0]["W"].dtype).clone().requires_grad_(True)
        self.extra[layer][name] = t
        return t

    def prefix_length(self) -> int:
        """``M``, the number of prompt / prefix positions prepended (0 without prompt or prefix)."""
        for ex in self.extra or ():
            for k in ("prompt", "prefix"):
                if k in ex:
                    return ex[k].shape[-1]
        return 0

    def trainable_count(self) -> List[int]:
        """Per run: unmasked dense entries + LoRA factor entries of unmasked ranks."""
        total = torch.zeros(self.R, dtype=torch.long)
        for m, lo, rm in zip(self.mask, self.lora, self.rank_mask):
            for v in m.values():
                total += v.reshape(self.R, -1).sum(1).cpu()
            rp = rm["proj"].sum(1).round().long().cpu()
            rs = rm["ssm"].sum(1).round().long().cpu()
            D = lo["proj_A"].shape[-1]
            n4, Hc = lo["ssm_A"].shape[1], lo["ssm_A"].shape[-1]
            total += rp * 2 * D + rs * n4 * (D + Hc)
        for ex in self.extra or ():
            total += sum(v[0].numel() for v in ex.values())
        return total.tolist()

    def effective(self) -> List[Dict[str, Tensor]]:
        """Effective per-layer parameters (R, shape); with extras, the extra tensors ride along in the dicts."""
        if self.has_extra():
            return effective_layers_extra(self.base, self.train, self.mask, self.lora, self.rank_mask, self.extra)
        return effective_layers(self.base, self.train, self.mask, self.lora, self.rank_mask)

    def loss_args(self, idx: Tensor, idx_extra: Optional[Tensor] = None) -> tuple:
        """Arguments of :func:`run_losses` after (x, y): the default graph's ``(idx,)`` or, with extras,
        ``(idx_extra, extra)`` where ``idx_extra`` is the Toeplitz index for ``N + M`` positions."""
        if not self.has_extra():
            return (idx,)
        return (idx if idx_extra is None else idx_extra, self.extra)


def effective_layers(base, train, mask, lora, rank_mask) -> List[Dict[str, Tensor]]:
    """Effective parameters per layer, each (R, shape): ``where(M, P, P0)`` + LoRA updates."""
    out = []
    for b, t, m, lo, rm in zip(base, train, mask, lora, rank_mask):
        p = {k: torch.where(m[k], t[k], b[k]) for k in ALL_PARAMS}
        pa = lo["proj_A"] * rm["proj"][..., None]  # (R, rp, D)
        p["W"] = p["W"] + torch.bmm(lo["proj_B"], pa)  # W + B_W A_W  (R, D, D)
        sa = lo["ssm_A"] * rm["ssm"][:, None, :, None]  # (R, 4, rs, Hc)
        delta = torch.matmul(lo["ssm_B"], sa)  # (R, 4, D, Hc)
        for j, k in enumerate(SSM_LORA_PARAMS):
            p[k] = p[k] + delta[:, j]
        out.append(p)
    return out


def run_losses(base, train, mask, lora, rank_mask, x: Tensor, y: Tensor, idx: Tensor, extra=None,
               path: FastPath = DEFAULT_PATH) -> Tensor:
    """Per-run MSE over all tokens: x (D, N, B) input, y (D, N, B) target output -> (R,).

    ``path`` says how the default graph computes its layers. ``extra`` (the methods of :data:`EXTRA_SHAPES`)
    switches to :func:`deep_forward_extra` (Toeplitz form, ReLU, whatever ``path``); then ``idx`` is the Toeplitz
    index for ``N + M`` positions (M prompt/prefix positions, 0 without them).
    """
    if extra:
        out = deep_forward_extra(effective_layers_extra(base, train, mask, lora, rank_mask, extra), x, idx)
        return ((out - y) ** 2).mean(dim=(1, 2, 3))
    out = deep_forward(effective_layers(base, train, mask, lora, rank_mask), x, idx, path)  # (R, D, N, B)
    return ((out - y) ** 2).mean(dim=(1, 2, 3))


@functools.lru_cache(maxsize=None)
def losses_for(path: FastPath) -> Callable[..., Tensor]:
    """:func:`run_losses` with ``path`` bound (one function per distinct options value): the trainers' loss,
    ``losses(base, train, mask, lora, rank_mask, x, y, idx, extra=None)``."""
    def losses(base, train, mask, lora, rank_mask, x: Tensor, y: Tensor, idx: Tensor, extra=None) -> Tensor:
        return run_losses(base, train, mask, lora, rank_mask, x, y, idx, extra, path)
    return losses


@functools.lru_cache(maxsize=None)
def compiled_losses(path: FastPath) -> Callable[..., Tensor]:
    """``torch.compile`` of :func:`losses_for` ``(path)``, made once per distinct options value."""
    return torch.compile(losses_for(path), dynamic=False)


@torch.no_grad()
def adamw_step(params: List[Tensor], grads: List[Tensor], exp_avg: List[Tensor], exp_avg_sq: List[Tensor],
               step: Tensor, lr: Tensor, beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """AdamW (decoupled weight decay, bias-corrected), in place, with a learning rate per run.

    params[i]: (R, ...); lr: (R,); step: 0-d tensor, incremented here (a tensor so a compiled step
    does not recompile per iteration).
    """
    step.add_(1)
    bc1 = 1 - beta1 ** step
    bc2 = 1 - beta2 ** step
    for p, g, m, v in zip(params, grads, exp_avg, exp_avg_sq):
        lr_b = lr.reshape((-1,) + (1,) * (p.dim() - 1))
        p.mul_(1 - lr_b * weight_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        p.sub_(lr_b / bc1 * m / ((v / bc2).sqrt() + eps))


# ------------------------------------------------- the benchmark's other PEFT methods (second path)
# Trainable tensors these methods add to a layer (RunState.extra[l]), each with a leading run axis R; every
# entry is trainable. A RunState without extras runs the default graph above, bit-identically; with
# extras, the graph below (a second torch.compile specialisation per extra layout).
EXTRA_SHAPES = {
    "prompt": "(R, D, M): prompt tuning, layer 0 only; prepended to the input, outputs dropped after the last layer",
    "prefix": "(R, D, M): prefix-tuning, every layer; prepended to the layer's input, its outputs there dropped",
    "h0_re": "(R, D, Hc): Re of the initial state h_0 (initial-state tuning)",
    "h0_im": "(R, D, Hc): Im of h_0",
    "offset_re": "(R, D, Hc): Re of the state offset h' (state-offset tuning, y_t = C (h_t + h'))",
    "offset_im": "(R, D, Hc): Im of h'",
    "add_log_A_re": "(R, D, Ha): log(-Re A) of Ha additional modes per channel (Additional-scan)",
    "add_A_im": "(R, D, Ha): Im A of the additional modes",
    "add_C_re": "(R, D, Ha): Re C of the additional modes (zero at start: the model starts as the frozen one)",
    "add_C_im": "(R, D, Ha): Im C of the additional modes",
    "dora_m": "(R, D): DoRA magnitude of W's rows (W' = m ⊙ (W + B A) / ‖W + B A‖_row)",
}


def effective_layers_extra(base, train, mask, lora, rank_mask, extra) -> List[Dict[str, Tensor]]:
    """:func:`effective_layers` plus the extras: DoRA's ``W' = m ⊙ V / ‖V‖_row`` with ``V = W + B_W A_W``
    when the layer has ``dora_m``; the other extra tensors are added to the layer dicts as they are."""
    out = []
    for p, ex in zip(effective_layers(base, train, mask, lora, rank_mask), extra):
        p = dict(p)
        for k, v in ex.items():
            if k == "dora_m":
                p["W"] = dora_normalize(p["W"], v)  # p["W"] (R, D, D) = W + B_W A_W
            else:
                p[k] = v
        out.append(p)
    return out


def _modal_response(x: Tensor, y: Tensor, G_re: Tensor, G_im: Tensor, k: Tensor) -> Tensor:
    """``2 Re(Σ_i G_i Ā_i^k)`` with ``Ā = exp(x + i y)``: x, y, G: (..., D, H); k: (N,) -> (..., D, N)."""
    mag = torch.exp(x[..., None] * k)  # (..., D, H, N)
    ang = y[..., None] * k
    return 2 * (mag * (G_re[..., None] * torch.cos(ang) - G_im[..., None] * torch.sin(ang))).sum(-2)


def initial_state_response(p: Dict[str, Tensor], N: int) -> Tensor:
    """Free response of the initial state, ``r_t = 2 Re(Σ_i C_i Ā_i^{t+1} h_{0,i})`` for t = 0..N-1: (R, D, N).

    Zero-based ``t``: the first output ``y_0 = C (Ā h_0 + B̄ x_0)`` already carries one step of ``Ā``
    (``theory.ssm``'s ``h_t = Ā h_{t−1} + B̄ x_t`` from ``h_0``, t = 1..N).
    """
    dt = torch.exp(p["log_dt"])[..., None]  # (R, D, 1)
    x, y = -torch.exp(p["log_A_re"]) * dt, p["A_im"] * dt  # ΔA = x + i y
    G_re = p["C_re"] * p["h0_re"] - p["C_im"] * p["h0_im"]  # C h_0
    G_im = p["C_re"] * p["h0_im"] + p["C_im"] * p["h0_re"]
    k = torch.arange(1, N + 1, device=x.device, dtype=x.dtype)  # (N,)
    return _modal_response(x, y, G_re, G_im, k)


def state_offset_response(p: Dict[str, Tensor]) -> Tensor:
    """``2 Re(Σ_i C_i h'_i)`` (R, D): ``y_t = C (h_t + h')`` adds it at every step (an LTI ``C`` makes it a
    per-channel constant)."""
    return 2 * (p["C_re"] * p["offset_re"] - p["C_im"] * p["offset_im"]).sum(-1)


def additional_kernel(p: Dict[str, Tensor], N: int) -> Tensor:
    """Kernel of the additional modes (``B = 1``, the layer's ``Δ``), added to the frozen kernel: (R, D, N)."""
    q = {"log_A_re": p["add_log_A_re"], "A_im": p["add_A_im"], "C_re": p["add_C_re"], "C_im": p["add_C_im"],
         "B_re": torch.ones_like(p["add_C_re"]), "B_im": torch.zeros_like(p["add_C_re"]), "log_dt": p["log_dt"],
         "u": torch.zeros_like(p["log_dt"])}
    return s4d_kernel(q, N)


def layer_forward_extra(p: Dict[str, Tensor], x: Tensor, idx: Tensor) -> Tensor:
    """:func:`layer_forward` with the optional extra terms of ``p``: additional modes in the kernel,
    initial-state response and state offset added to ``S4(x)`` (before ``u ⊙ x``, W, β, ReLU).
    x: (R, D, N, B) or (D, N, B) -> (R, D, N, B)."""
    N = x.shape[-2]
    K = s4d_kernel(p, N)  # (R, D, N)
    if "add_C_re" in p:
        K = K + additional_kernel(p, N)
    s = ToeplitzConv.apply(K, x, idx)  # (R, D, N, B)
    if "h0_re" in p:
        s = s + initial_state_response(p, N)[..., None]
    if "offset_re" in p:
        s = s + state_offset_response(p)[..., None, None]
    R, D = K.shape[0], K.shape[1]
    z = torch.bmm(p["W"], s.reshape(R, D, -1))  # (R, D, N*B)
    return torch.relu(z + p["beta"][..., None]).reshape(s.shape)


def _prepend(v: Tensor, x: Tensor) -> Tensor:
    """``[v, x]`` along the sequence axis: v (R, D, M), x (R, D, N, B) or (D, N, B) -> (R, D, M + N, B)."""
    R, B = v.shape[0], x.shape[-1]
    if x.dim() == 3:
        x = x.expand(R, *x.shape)
    return torch.cat([v[..., None].expand(*v.shape, B), x], dim=-2)


def deep_forward_extra(layers: List[Dict[str, Tensor]], x: Tensor, idx: Tensor) -> Tensor:
    """The stack with prompt / prefix positions: x (D, N, B) -> (R, D, N, B); idx for ``N + M`` positions.

    Prompt tuning: ``[P, x]`` enters layer 0 and the first M outputs of the last layer are dropped.
    Prefix-tuning: every layer l runs on ``[P_l, x_l]`` and its first M outputs are dropped.
    """
    M = layers[0]["prompt"].shape[-1] if "prompt" in layers[0] else 0
    if M:
        x = _prepend(layers[0]["prompt"], x)  # (R, D, M + N, B)
    for p in layers:
        if "prefix" in p:
            Mp = p["prefix"].shape[-1]
            x = layer_forward_extra(p, _prepend(p["prefix"], x), idx)[..., Mp:, :]
        else:
            x = layer_forward_extra(p, x, idx)
    return x[..., M:, :] if M else x
