"""A Jamba-style hybrid stack: causal attention layers interleaved with Mamba-I blocks (Galim et al., ICML 2025,
Sec. 3.1 "Mamba & Jamba", Sec. 6 and Table 4; Jamba: Lieber et al., 2025).

Layout (:func:`layer_kinds`): layer ``i`` of an ``n_layers`` stack is attention iff ``i % attn_period ==
attn_offset``, else a Mamba-I block — Jamba's rule (``attn_layer_period`` 8, ``attn_layer_offset`` 4 in
Jamba-v0.1: 1 attention : 7 Mamba). ``n_layers`` must be a multiple of ``attn_period``, so the ratio is exactly
``1 : attn_period − 1`` (toy depth: period 4 → 1 : 3).

Every layer is pre-norm residual, as Jamba's decoder layers: ``h ← h + mixer(norm(h))`` with ``norm`` an RMSNorm
with a learnt gain ``γ`` (``x / sqrt(mean(x²) + ε) ⊙ γ``, ε = 1e-6 as Jamba) or the identity (``norm="none"``,
:data:`NORMS`). **No MLP / MoE sub-layer** (Jamba has one after every mixer): the regression is about the mixers,
and Table 4's comparison is on the SSM modules with adapters on the linear maps; leaving the MLP out keeps the
toy's trainable share on the mixers. Jamba's attention has no positional encoding (the Mamba layers carry
position), no biases, and grouped KV heads; here: no positional encoding, no biases, ``n_heads`` full KV heads.
The Mamba-I block is :class:`synthetic.mamba.ref.MambaRef` (or mamba-ssm's ``Mamba`` on that backend) as is:
Jamba's extra RMSNorms on Δ, B, C inside the mixer are not modelled.

Attention (:func:`attention_forward`), on x (Bt, N, d) with ``n_heads`` heads of size ``d_h = d / n_heads``:
``Q = x W_q^T, K = x W_k^T, V = x W_v^T`` (each (Bt, n_heads, N, d_h)), ``O_i = Σ_{j ≤ i} softmax_j(Q_i·K_j / √d_h)
V_j``, ``out = concat_heads(O) W_o^T``. The kernel (:data:`ATTENTION_KERNELS`) is torch's
``scaled_dot_product_attention(is_causal=True)`` or its explicit softmax twin :func:`explicit_causal_attention`
(same signature; the tests hold them together in float64).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

ATTENTION, MAMBA = "attention", "mamba"
ATTN_PARAM_NAMES = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")
RMS_EPS = 1e-6  # Jamba's rms_norm_eps


def layer_kinds(n_layers: int, attn_period: int, attn_offset: int) -> Tuple[str, ...]:
    """The stack's layout: ``"attention"`` at ``i % attn_period == attn_offset``, ``"mamba"`` elsewhere.

    Rules (ValueError naming the argument): ``attn_period`` an integer >= 2 (at least one Mamba block per
    attention layer); ``0 <= attn_offset < attn_period``; ``n_layers`` a positive multiple of ``attn_period``
    (the ratio is then exactly 1 : attn_period − 1).
    """
    for name, v in (("n_layers", n_layers), ("attn_period", attn_period), ("attn_offset", attn_offset)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name}: must be an integer, got {v!r}")
    if attn_period < 2:
        raise ValueError(f"attn_period: must be >= 2 (one attention layer per attn_period layers, the rest Mamba), "
                         f"got {attn_period}")
    if not 0 <= attn_offset < attn_period:
        raise ValueError(f"attn_offset: must be in [0, attn_period={attn_period}), got {attn_offset}")
    if n_layers < 1 or n_layers % attn_period:
        raise ValueError(f"n_layers: must be a positive multiple of attn_period={attn_period} (so the ratio is "
                         f"1:{attn_period - 1}), got {n_layers}")
    return tuple(ATTENTION if i % attn_period == attn_offset else MAMBA for i in range(n_layers))


# ----------------------------------------------------------------------------------------- norms
def rms_norm(x: Tensor, weight: Optional[Tensor]) -> Tensor:
    """``x / sqrt(mean(x², last axis) + ε) ⊙ γ``; x (..., d), weight γ (d,), computed in x's dtype (fp32 at least)."""
    wdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(wdt)
    y = xf * torch.rsqrt(xf.square().mean(dim=-1, keepdim=True) + RMS_EPS)  # (..., d)
    return (y * weight.to(wdt)).to(x.dtype)


def no_norm(x: Tensor, weight: Optional[Tensor]) -> Tensor:
    """The identity (``norm="none"``): the stack is then a plain residual stack, ``h ← h + mixer(h)``."""
    return x


NORMS: Dict[str, Callable[[Tensor, Optional[Tensor]], Tensor]] = {"rmsnorm": rms_norm, "none": no_norm}
NORM_HAS_WEIGHT = {"rmsnorm": True, "none": False}


def get_norm(name: str) -> Callable[[Tensor, Optional[Tensor]], Tensor]:
    if name not in NORMS:
        raise ValueError(f"norm: one of {sorted(NORMS)}, got {name!r}")
    return NORMS[name]


# ------------------------------------------------------------------------------------- attention
def sdpa_causal(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """torch's fused kernel: q, k, v (Bt, n_heads, N, d_h) -> (Bt, n_heads, N, d_h), causal, scale 1/√d_h."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def explicit_causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The reference twin of :func:`sdpa_causal`: ``softmax(Q K^T / √d_h + M) V`` with ``M_ij = −∞`` for j > i."""
    N, d_h = q.shape[-2], q.shape[-1]
    scores = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(d_h)  # (Bt, n_heads, N, N)
    future = torch.ones(N, N, dtype=torch.bool, device=q.device).triu(1)  # (N, N): j > i
    P = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)  # (Bt, n_heads, N, N)
    return torch.einsum("bhij,bhjd->bhid", P, v)  # (Bt, n_heads, N, d_h)


ATTENTION_KERNELS: Dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "sdpa": sdpa_causal, "explicit": explicit_causal_attention}


def get_attention_kernel(name: str) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    if name not in ATTENTION_KERNELS:
        raise ValueError(f"attention_kernel: one of {sorted(ATTENTION_KERNELS)}, got {name!r}")
    return ATTENTION_KERNELS[name]


def check_heads(d_model: int, n_heads: int) -> int:
    """``d_h = d_model / n_heads``; ValueError naming n_heads unless it is a positive divisor of d_model."""
    if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1 or d_model % n_heads:
        raise ValueError(f"n_heads: must be a positive divisor of d_model={d_model}, got {n_heads!r}")
    return d_model // n_heads


def attention_forward(w: Mapping[str, Tensor], hidden: Tensor, *, n_heads: int,
                      kernel: Callable[[Tensor, Tensor, Tensor], Tensor] = sdpa_causal) -> Tensor:
    """Multi-head causal self-attention as a pure function of its weights; hidden (Bt, N, d) -> (Bt, N, d).

    w: ``q_proj.weight, k_proj.weight, v_proj.weight, o_proj.weight``, each (d, d) as nn.Linear stores them.
    """
    Bt, N, d = hidden.shape
    d_h = check_heads(d, n_heads)

    def heads(W):  # (d, d) -> (Bt, n_heads, N, d_h)
        return torch.einsum("ed,bnd->bne", W, hidden).reshape(Bt, N, n_heads, d_h).transpose(1, 2)

    O = kernel(heads(w["q_proj.weight"]), heads(w["k_proj.weight"]), heads(w["v_proj.weight"]))  # (Bt, nh, N, d_h)
    return torch.einsum("md,bnd->bnm", w["o_proj.weight"], O.transpose(1, 2).reshape(Bt, N, d))  # (Bt, N, d)


class AttentionRef(nn.Module):
    """The attention mixer: ``q_proj, k_proj, v_proj, o_proj`` (nn.Linear d -> d, no bias; torch's default init).
    forward(hidden (Bt, N, d)) -> (Bt, N, d) with ``kernel`` (default torch's SDPA)."""

    def __init__(self, d_model: int, n_heads: int, device=None, dtype=None, kernel: str = "sdpa"):
        super().__init__()
        if isinstance(d_model, bool) or not hasattr(d_model, "__index__") or d_model < 1:
            raise ValueError(f"d_model: must be a positive integer, got {d_model!r}")
        check_heads(d_model, n_heads)
        self.n_heads, self.kernel = n_heads, get_attention_kernel(kernel)
        kw = {"device": device, "dtype": dtype}
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d_model, d_model, bias=False, **kw)
                                                              for _ in range(4))

    def forward(self, hidden: Tensor) -> Tensor:
        return attention_forward(dict(self.named_parameters()), hidden, n_heads=self.n_heads, kernel=self.kernel)


# ------------------------------------------------------------------------------------ the stack
def hybrid_residual(layers: Sequence[Tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]],
                    hidden: Tensor) -> Tensor:
    """``h ← h + mixer(norm(h))`` for each ``(norm, mixer)``; hidden (Bt, N, d_model)."""
    for norm, mixer in layers:
        hidden = hidden + mixer(norm(hidden))
    return hidden


class HybridRef(nn.Module):
    """A frozen or target hybrid model: ``kinds`` (see :func:`layer_kinds`), one mixer per layer (``make_mamba()``
    builds a Mamba block: :class:`synthetic.mamba.ref.MambaRef` or mamba-ssm's ``Mamba``; :class:`AttentionRef`
    for attention) and, with ``norm="rmsnorm"``, a gain ``γ`` (d_model,) per layer (ones at start, as Jamba).
    forward(hidden (Bt, N, d_model)) -> (Bt, N, d_model)."""

    def __init__(self, kinds: Sequence[str], d_model: int, n_heads: int, make_mamba: Callable[[], nn.Module],
                 norm: str = "rmsnorm", device=None, dtype=None, kernel: str = "sdpa"):
        super().__init__()
        bad = [k for k in kinds if k not in (ATTENTION, MAMBA)]
        if bad or not kinds:
            raise ValueError(f"kinds: a non-empty sequence of {ATTENTION!r} / {MAMBA!r}, got {list(kinds)}")
        self.kinds, self.norm_name, self.norm_fn = tuple(kinds), norm, get_norm(norm)
        self.mixers = nn.ModuleList(AttentionRef(d_model, n_heads, device=device, dtype=dtype, kernel=kernel)
                                    if k == ATTENTION else make_mamba() for k in kinds)
        self.norms = nn.ParameterList(nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))
                                      for _ in kinds) if NORM_HAS_WEIGHT[norm] else None

    def norm_weight(self, i: int) -> Optional[Tensor]:
        return None if self.norms is None else self.norms[i]

    def forward(self, hidden: Tensor) -> Tensor:
        return hybrid_residual([(lambda h, i=i: self.norm_fn(h, self.norm_weight(i)), m)
                                for i, m in enumerate(self.mixers)], hidden)
