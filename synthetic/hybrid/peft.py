"""PEFT on the Jamba-style hybrid stack (Galim et al., ICML 2025, Sec. 6 and Table 4: SDT vs DoRA on Jamba's SSM
modules, with LoRA/DoRA on the linear projections).

The Mamba layers are :class:`synthetic.mamba.peft.PeftMambaBlock` (every Mamba-I method, SDT's channel masks and
the backends come from there, unchanged); the attention layers are :class:`PeftAttentionBlock`, built the same
way: the frozen weights are buffers, and each forward builds the **effective weights** (frozen + update) and
calls the functional layer (:func:`synthetic.hybrid.model.attention_forward`). Parameter roles are declared where
each parameter is created (``PeftAttentionBlock.roles``, ``PeftHybridStack.norm_roles``): ``frozen`` (buffer),
``full`` (the whole tensor trainable), ``lora`` (:class:`theory.peft.LoRAMatrix`, ``W + s·B A``) or ``dora``
(:class:`theory.peft.DoRAMatrix`, ``m ⊙ (W + s·B A) / ‖W + s·B A‖_row``).

The methods (:data:`METHODS`; a method is a :class:`synthetic.mamba.peft.Method` whose config is a
:class:`HybridPeftConfig`). "Lin" = every linear projection of the hybrid (attention q, k, v, o and Mamba's
in_proj, out_proj; the toy has no MLP); "SSM" = the S6 module of every Mamba block:

- ``LoRA (Attn) + LoRA (Proj)``: LoRA on q, k, v, o and on Mamba's in_proj, out_proj;
- ``LoRA (Attn) + LoRA (SSM)``: LoRA on q, k, v, o and on x_proj, dt_proj and ``A_log`` as a D×H matrix
  (Mamba-I's "LoRA (S6)");
- ``LoRA (Attn) + DoRA (SSM)``: LoRA on q, k, v, o and DoRA on the S6 module's linear maps x_proj, dt_proj
  (peft's DoRA wraps linear layers; ``A_log`` is not one);
- ``LoRA (Attn) + SDT (SSM)``: LoRA on q, k, v, o and SDT on the S6 module (Algorithm 1 at channel level, as the
  Mamba-I code: per selected channel ``A_log[d, :]`` and column d of ``W_B``, ``W_C``);
- Table 4's two rows exactly: ``DoRA (Lin) + DoRA (SSM)`` and ``DoRA (Lin) + SDT (SSM)`` (one DoRA rank on every
  linear map, as peft applies one rank to all its target modules);
- ``Frozen``; ``Full`` (every weight and every norm gain).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from theory.peft import DoRAMatrix, LoRAConfig, LoRAMatrix

from synthetic.hybrid.model import (ATTENTION, ATTN_PARAM_NAMES, MAMBA, NORM_HAS_WEIGHT, HybridRef,
                                    attention_forward, check_heads, get_attention_kernel, get_norm, hybrid_residual)
from synthetic.mamba.backends import Backend
from synthetic.mamba.peft import (ALL_NAMES, PROJ_NAMES, S6_LORA_NAMES, MambaPeftConfig, Method,
                                  PeftMambaBlock, trainable_count)  # noqa: F401 (trainable_count: re-exported)
from synthetic.mamba.ref import block_weights

Tensor = torch.Tensor

ATTN_TARGETS = ATTN_PARAM_NAMES
SSM_DORA_NAMES = ("x_proj.weight", "dt_proj.weight")  # the S6 module's linear maps


def _key(name: str) -> str:
    return name.replace(".", "__")


# ------------------------------------------------------------------------------------ attention
@dataclass(frozen=True)
class AttentionPeftConfig:
    """Which attention weights are updated: ``lora`` / ``dora`` (subsets of :data:`ATTN_TARGETS`, rank ``rank``,
    scaling ``alpha / rank``, 1 if alpha is None), ``full`` (updated in full). Disjoint; rank >= 1 with an adapter."""

    lora: Tuple[str, ...] = ()
    dora: Tuple[str, ...] = ()
    rank: int = 0
    alpha: Optional[float] = None
    full: Tuple[str, ...] = ()

    def __post_init__(self):
        for name in ("lora", "dora", "full"):
            bad = [n for n in getattr(self, name) if n not in ATTN_TARGETS]
            if bad:
                raise ValueError(f"{name}: unknown attention weights {bad}; choose from {ATTN_TARGETS}")
        sets = [set(self.lora), set(self.dora), set(self.full)]
        if sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2]:
            raise ValueError("lora / dora / full: each attention weight in at most one of them")
        if (self.lora or self.dora) and (isinstance(self.rank, bool) or not isinstance(self.rank, int)
                                         or self.rank < 1):
            raise ValueError(f"rank: must be an integer >= 1 when lora or dora targets are given, got {self.rank!r}")


class PeftAttentionBlock(nn.Module):
    """One attention layer's frozen weights (mamba-style names ``q_proj.weight`` ..., each (d, d)) plus the
    updates of an :class:`AttentionPeftConfig`. ``effective_weights()`` -> the dict the forward uses;
    ``roles``: name -> frozen / full / lora / dora."""

    def __init__(self, weights: Mapping[str, Tensor], *, n_heads: int, config: AttentionPeftConfig,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        missing = [n for n in ATTN_PARAM_NAMES if n not in weights]
        if missing:
            raise ValueError(f"weights: missing attention parameters {missing}")
        check_heads(weights["q_proj.weight"].shape[1], n_heads)
        self.n_heads, self.config = n_heads, config
        self.frozen = nn.Module()  # buffers
        self.full = nn.ParameterDict()
        self.adapters = nn.ModuleDict()
        self.roles: Dict[str, str] = {}
        for name in ATTN_PARAM_NAMES:
            w, k = weights[name].detach(), _key(name)
            if name in config.full:
                self.full[k] = nn.Parameter(w.clone())
                self.roles[name] = "full"
            elif name in config.lora or name in config.dora:
                cls, role = (LoRAMatrix, "lora") if name in config.lora else (DoRAMatrix, "dora")
                self.adapters[k] = cls(w, LoRAConfig(min(config.rank, *w.shape), config.alpha), generator=generator)
                self.roles[name] = role
            else:
                self.frozen.register_buffer(k, w.clone())
                self.roles[name] = "frozen"

    def effective_weights(self) -> Dict[str, Tensor]:
        out = {}
        for name, role in self.roles.items():
            k = _key(name)
            out[name] = self.full[k] if role == "full" else self.adapters[k]() if role in ("lora", "dora") \
                else getattr(self.frozen, k)
        return out

    def forward(self, hidden: Tensor, kernel: Callable = get_attention_kernel("sdpa")) -> Tensor:
        return attention_forward(self.effective_weights(), hidden, n_heads=self.n_heads, kernel=kernel)


# ----------------------------------------------------------------------------------- the stack
_UNSUPPORTED_MAMBA = ("prompt_len", "prefix_len", "initial_state", "state_offset", "additional_states", "lora_dropout")


@dataclass(frozen=True)
class HybridPeftConfig:
    """A hybrid method: ``attention`` for every attention layer, ``mamba`` for every Mamba block
    (:class:`synthetic.mamba.peft.MambaPeftConfig`: LoRA / DoRA / SDT / full), ``norms``: train the RMSNorm gains."""

    attention: AttentionPeftConfig = field(default_factory=AttentionPeftConfig)
    mamba: MambaPeftConfig = field(default_factory=MambaPeftConfig)
    norms: bool = False

    def __post_init__(self):
        used = [n for n in _UNSUPPORTED_MAMBA if getattr(self.mamba, n)]
        if used:
            raise ValueError(f"mamba: {used} not supported in the hybrid stack (only LoRA, DoRA, SDT and full updates)")
        if not isinstance(self.norms, bool):
            raise ValueError(f"norms: must be a bool, got {self.norms!r}")


@dataclass(frozen=True)
class LayerWeights:
    """One layer of a frozen hybrid: ``kind`` (attention / mamba), the mixer's weights by name, the norm gain (or None)."""

    kind: str
    weights: Mapping[str, Tensor]
    norm: Optional[Tensor]


def frozen_layers(model: HybridRef) -> List[LayerWeights]:
    """Detached copies of a :class:`synthetic.hybrid.model.HybridRef`'s weights, layer by layer."""
    out = []
    for i, (kind, mixer) in enumerate(zip(model.kinds, model.mixers)):
        w = block_weights(mixer) if kind == MAMBA else {k: v.detach().clone() for k, v in mixer.named_parameters()}
        g = model.norm_weight(i)
        out.append(LayerWeights(kind, w, None if g is None else g.detach().clone()))
    return out


class PeftHybridStack(nn.Module):
    """The hybrid's frozen layers plus the updates of a :class:`HybridPeftConfig`.

    layers: :func:`frozen_layers` of the frozen model; norm: ``"rmsnorm"`` or ``"none"`` (as the frozen model);
    channels: SDT's selected channels per **Mamba** layer, in layer order (needed iff ``config.mamba.sdt_channels``).
    forward(hidden (Bt, N, d_model), backend) -> (Bt, N, d_model): ``h ← h + mixer(norm(h))``, attention with
    ``attention_kernel`` (:data:`synthetic.hybrid.model.ATTENTION_KERNELS`), Mamba blocks with ``backend``.
    """

    def __init__(self, layers: Sequence[LayerWeights], *, d_state: int, dt_rank: int, n_heads: int, norm: str,
                 config: HybridPeftConfig, channels: Optional[Sequence[Sequence[int]]] = None,
                 generator: Optional[torch.Generator] = None, attention_kernel: str = "sdpa"):
        super().__init__()
        self.kinds = tuple(lw.kind for lw in layers)
        self.norm_fn, self.kernel, self.config = get_norm(norm), get_attention_kernel(attention_kernel), config
        n_mamba = self.kinds.count(MAMBA)
        if channels is not None and len(channels) != n_mamba:
            raise ValueError(f"channels: need one channel list per Mamba layer ({n_mamba}), got {len(channels)}")
        chans = iter(channels if channels is not None else [None] * n_mamba)
        self.mixers = nn.ModuleList(
            PeftAttentionBlock(lw.weights, n_heads=n_heads, config=config.attention, generator=generator)
            if lw.kind == ATTENTION else
            PeftMambaBlock(lw.weights, d_state=d_state, dt_rank=dt_rank, config=config.mamba, channels=next(chans),
                           generator=generator)
            for lw in layers)
        self.norm_gains = nn.ParameterDict()
        self.norm_frozen = nn.Module()  # buffers
        self.norm_roles: Dict[int, str] = {}
        for i, lw in enumerate(layers):
            if (lw.norm is None) == NORM_HAS_WEIGHT[norm]:
                raise ValueError(f"layers: layer {i}'s norm gain {'missing' if lw.norm is None else 'given'} for "
                                 f"norm={norm!r}")
            if lw.norm is None:
                continue
            if config.norms:
                self.norm_gains[str(i)] = nn.Parameter(lw.norm.detach().clone())
                self.norm_roles[i] = "full"
            else:
                self.norm_frozen.register_buffer(f"g{i}", lw.norm.detach().clone())
                self.norm_roles[i] = "frozen"

    @property
    def mamba_blocks(self) -> List[PeftMambaBlock]:
        return [m for k, m in zip(self.kinds, self.mixers) if k == MAMBA]

    def norm_weight(self, i: int) -> Optional[Tensor]:
        role = self.norm_roles.get(i)
        return None if role is None else self.norm_gains[str(i)] if role == "full" else getattr(self.norm_frozen, f"g{i}")

    def forward(self, hidden: Tensor, backend: Backend) -> Tensor:
        def mixer(m):
            return (lambda h: m(h, self.kernel)) if isinstance(m, PeftAttentionBlock) else (lambda h: m(h, backend))
        return hybrid_residual([(lambda h, i=i: self.norm_fn(h, self.norm_weight(i)), mixer(m))
                                for i, m in enumerate(self.mixers)], hidden)

    def fused_fallback(self, backend: Backend) -> Optional[str]:
        blocks = self.mamba_blocks
        return blocks[0].fused_fallback(backend) if blocks else None


def frozen_param_count(layers: Sequence[LayerWeights]) -> int:
    """Every scalar of the frozen hybrid: mixers' weights and norm gains (the trainable-% denominator)."""
    return sum(int(t.numel()) for lw in layers for t in lw.weights.values()) + \
        sum(int(lw.norm.numel()) for lw in layers if lw.norm is not None)


# -------------------------------------------------------------------------------- the registry
def _attn_lora(b) -> AttentionPeftConfig:
    return AttentionPeftConfig(lora=ATTN_TARGETS, rank=int(b["rank"]))


def _attn_dora(b) -> AttentionPeftConfig:
    return AttentionPeftConfig(dora=ATTN_TARGETS, rank=int(b["rank"]))


METHODS: Dict[str, Method] = {m.name: m for m in (
    Method("Frozen", lambda b: HybridPeftConfig(), lambda c: [{}], trains=False),
    Method("LoRA (Attn) + LoRA (Proj)",
           lambda b: HybridPeftConfig(_attn_lora(b), MambaPeftConfig(lora=PROJ_NAMES, lora_rank=int(b["proj_rank"]))),
           lambda c: [{"rank": c.lin_lora_rank, "proj_rank": r} for r in c.proj_lora_ranks]),
    Method("LoRA (Attn) + LoRA (SSM)",
           lambda b: HybridPeftConfig(_attn_lora(b), MambaPeftConfig(lora=S6_LORA_NAMES, lora_rank=int(b["ssm_rank"]))),
           lambda c: [{"rank": c.lin_lora_rank, "ssm_rank": r} for r in c.ssm_lora_ranks]),
    Method("LoRA (Attn) + DoRA (SSM)",
           lambda b: HybridPeftConfig(_attn_lora(b), MambaPeftConfig(dora=SSM_DORA_NAMES, lora_rank=int(b["ssm_rank"]))),
           lambda c: [{"rank": c.lin_lora_rank, "ssm_rank": r} for r in c.ssm_lora_ranks]),
    Method("LoRA (Attn) + SDT (SSM)",
           lambda b: HybridPeftConfig(_attn_lora(b), MambaPeftConfig(sdt_channels=int(b["channels"]))),
           lambda c: [{"rank": c.lin_lora_rank, "channels": ch} for ch in c.sdt]),
    Method("DoRA (Lin) + DoRA (SSM)",
           lambda b: HybridPeftConfig(_attn_dora(b), MambaPeftConfig(dora=PROJ_NAMES + SSM_DORA_NAMES,
                                                                     lora_rank=int(b["rank"]))),
           lambda c: [{"rank": c.lin_lora_rank}]),
    Method("DoRA (Lin) + SDT (SSM)",
           lambda b: HybridPeftConfig(_attn_dora(b), MambaPeftConfig(dora=PROJ_NAMES, lora_rank=int(b["rank"]),
                                                                     sdt_channels=int(b["channels"]))),
           lambda c: [{"rank": c.lin_lora_rank, "channels": ch} for ch in c.sdt]),
    Method("Full", lambda b: HybridPeftConfig(AttentionPeftConfig(full=ATTN_TARGETS), MambaPeftConfig(full=ALL_NAMES),
                                              norms=True), lambda c: [{}]),
)}
"""Method name -> :class:`synthetic.mamba.peft.Method` (its config: a :class:`HybridPeftConfig`). Budgets:
``rank`` = the linear-projection adapter's rank (``cfg.lin_lora_rank``, one value, so SSM-side methods compare at the
same attention adapter), ``proj_rank`` / ``ssm_rank`` / ``channels`` = the Mamba side's budget."""

