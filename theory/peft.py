"""PEFT parameterisations shared by the theory and the experiments (Galim et al., ICML 2025, Secs. 4-5).

- LoRA on a linear map: ``W' = W + s · B A`` with ``A`` (r, in), ``B`` (out, r), ``s = alpha / r``
  (:class:`LoRAConfig`, :func:`lora_delta`, :class:`LoRALinear` with exact merge/unmerge).
- SDT / SDT-P masks over (channel, state) with three roles, trainable / frozen / pruned
  (:class:`SDTMask`, :func:`sdt_mask`).
- A masked parameter whose trainable entries are stored compactly (:class:`MaskedParameter`): the
  optimizer holds exactly the trainable scalars, and frozen entries are read from a buffer, so they
  stay bit-identical under any optimizer (AdamW's weight decay included).
- LoRA on an SSM parameter treated as a D×H matrix, the paper's "LoRA (S4)" (:class:`LoRAMatrix`).
- DoRA on a linear map, ``W' = m ⊙ (W + s·B A) / ‖W + s·B A‖_row`` with the norm detached in the
  backward by default (:class:`DoRAConfig`, :class:`DoRALinear`, :class:`DoRAMatrix`).
- :func:`count_trainable`: the number of scalars an optimizer updates.

Dtypes: LoRA, DoRA and the masks are plain matmuls and indexing, so any real floating dtype works
(float16/bfloat16 included); complex weights are refused (``ValueError``). A bias must be finite, of
shape (out,) and of the weight's dtype. Wrapping a weight costs a copy of it plus the factors: the
estimated bytes are checked against the size limit (``max_bytes``, else ``$THEORY_MAX_BYTES``, else
4 GiB; :func:`theory._validate.check_size`) before anything is allocated.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch
from torch import nn

from ._validate import check_finite, check_int, check_size, check_tensor

Tensor = torch.Tensor


# --------------------------------------------------------------------------------------------- LoRA
@dataclass(frozen=True)
class LoRAConfig:
    """LoRA rank ``r`` and ``alpha``; the update is scaled by ``alpha / r``."""

    rank: int
    alpha: Optional[float] = None  # None: alpha = rank, i.e. scaling 1

    def __post_init__(self):
        object.__setattr__(self, "rank", check_int("rank", self.rank, lo=1))
        if self.alpha is not None and not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha)):
            raise ValueError(f"alpha: must be a finite number, got {self.alpha!r}")

    @property
    def scaling(self) -> float:
        return 1.0 if self.alpha is None else float(self.alpha) / self.rank


def lora_delta(lora_A: Tensor, lora_B: Tensor, scaling: float = 1.0) -> Tensor:
    """``ΔW = scaling · B A``; lora_A (r, in), lora_B (out, r) -> (out, in)."""
    lora_A = check_tensor("lora_A", lora_A, shape=(None, None), allow_complex=False)
    lora_B = check_tensor("lora_B", lora_B, shape=(None, lora_A.shape[0]), allow_complex=False)
    return scaling * (lora_B @ lora_A)


def _check_adapted(name: str, weight, rank: int, max_bytes) -> Tensor:
    """The frozen matrix of a LoRA/DoRA wrapper: 2-D, real floating, small enough to copy (its copy, the
    copy kept while merged, and the factors; checked before the finiteness scan, which allocates too), finite."""
    weight = check_tensor(name, weight, shape=(None, None), allow_complex=False, finite=False)
    out_f, in_f = weight.shape
    check_size(name, 2 * out_f * in_f + rank * (out_f + in_f), weight.dtype, max_bytes=max_bytes,
               what=f"a copy of the ({out_f}, {in_f}) {name} (twice while merged) plus rank-{rank} factors",
               lower=f"the size of {name}")
    if rank > min(out_f, in_f):
        raise ValueError(f"rank: must be <= min(out, in) = {min(out_f, in_f)}, got {rank}")
    return check_finite(name, weight)


def _check_bias(bias, weight: Tensor) -> Optional[Tensor]:
    """``bias`` None, or a finite (out,) tensor of ``weight``'s dtype."""
    if bias is None:
        return None
    bias = check_tensor("bias", bias, shape=(weight.shape[0],), allow_complex=False)
    if bias.dtype != weight.dtype:
        raise ValueError(f"bias: dtype {bias.dtype} must match the weight's {weight.dtype}")
    return bias


class LoRALinear(nn.Module):
    """A frozen linear map ``y = W x + b`` plus a trainable rank-``r`` update ``s · B A``.

    weight (out, in), any real floating dtype; bias None or (out,), same dtype, finite. ``B`` starts
    at zero (the adapted map starts equal to the frozen one); ``A`` is random. :meth:`merge` folds
    the update into the weight; :meth:`unmerge` restores the frozen weight bit-exactly (it keeps the
    original, rather than subtracting in floating point). ``max_bytes``: the size limit for the copies
    (see the module docstring).
    """

    def __init__(self, weight: Tensor, bias: Optional[Tensor], config: LoRAConfig,
                 generator: Optional[torch.Generator] = None, train_bias: bool = False, *, max_bytes=None):
        super().__init__()
        weight = _check_adapted("weight", weight, config.rank, max_bytes)
        bias = _check_bias(bias, weight)
        out_f, in_f = weight.shape
        self.config = config
        self.register_buffer("weight", weight.detach().clone())
        if bias is None:
            self.bias = None
        elif train_bias:
            self.bias = nn.Parameter(bias.detach().clone())
        else:
            self.register_buffer("bias", bias.detach().clone())
        a = torch.randn(config.rank, in_f, generator=generator, dtype=weight.dtype) / math.sqrt(in_f)
        self.lora_A = nn.Parameter(a.to(weight.device))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(out_f, config.rank, dtype=weight.dtype, device=weight.device))  # (out, r)
        self._frozen_weight: Optional[Tensor] = None  # set while merged

    @property
    def merged(self) -> bool:
        return self._frozen_weight is not None

    def delta_weight(self) -> Tensor:
        """``s · B A`` (out, in)."""
        return lora_delta(self.lora_A, self.lora_B, self.config.scaling)

    def effective_weight(self) -> Tensor:
        return self.weight if self.merged else self.weight + self.delta_weight()

    def merge(self) -> None:
        if self.merged:
            raise RuntimeError("merge: already merged")
        self._frozen_weight = self.weight.clone()
        with torch.no_grad():
            self.weight.add_(self.delta_weight())

    def unmerge(self) -> None:
        if not self.merged:
            raise RuntimeError("unmerge: not merged")
        with torch.no_grad():
            self.weight.copy_(self._frozen_weight)
        self._frozen_weight = None

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in) -> (..., out)."""
        y = x @ self.effective_weight().T
        return y if self.bias is None else y + self.bias


class LoRAMatrix(nn.Module):
    """A frozen matrix-shaped parameter ``P`` (D, H) plus a rank-``r`` update: ``P + s · B A``.

    This is the paper's "LoRA (S4)" / "LoRA (S6)": an SSM parameter (e.g. ``A`` or ``C`` across
    channels) treated as a D×H matrix. Complex parameters are handled by the caller (one LoRAMatrix
    per real part).
    """

    def __init__(self, base: Tensor, config: LoRAConfig, generator: Optional[torch.Generator] = None, *,
                 max_bytes=None):
        super().__init__()
        base = _check_adapted("base", base, config.rank, max_bytes)
        rows, cols = base.shape
        self.config = config
        self.register_buffer("base", base.detach().clone())
        a = torch.randn(config.rank, cols, generator=generator, dtype=base.dtype) / math.sqrt(cols)
        self.lora_A = nn.Parameter(a.to(base.device))  # (r, H)
        self.lora_B = nn.Parameter(torch.zeros(rows, config.rank, dtype=base.dtype, device=base.device))  # (D, r)

    def delta_weight(self) -> Tensor:
        return lora_delta(self.lora_A, self.lora_B, self.config.scaling)

    def forward(self) -> Tensor:
        return self.base + self.delta_weight()  # (D, H)


# --------------------------------------------------------------------------------------- SDT masks
class Role(enum.IntEnum):
    """What happens to one (channel, state) entry of an SSM parameter."""

    TRAINABLE = 0
    FROZEN = 1
    PRUNED = 2  # set to zero and kept there (SDT-P); SDT has no pruned entries


@dataclass(frozen=True)
class SDTMask:
    """Roles of the (channel, state) entries of one SSM module: ``roles`` (D, H) of :class:`Role` codes."""

    roles: Tensor  # (D, H) int8

    def __post_init__(self):
        if not isinstance(self.roles, torch.Tensor) or self.roles.dim() != 2:
            raise ValueError("roles: expected a 2-D tensor (D, H) of Role codes")
        if self.roles.is_floating_point() or self.roles.is_complex():
            raise ValueError(f"roles: expected an integer dtype, got {self.roles.dtype}")
        bad = ~((self.roles >= 0) & (self.roles <= 2))
        if bool(bad.any()):
            raise ValueError("roles: every entry must be a Role code 0 (trainable), 1 (frozen) or 2 (pruned)")

    @property
    def trainable(self) -> Tensor:
        return self.roles == Role.TRAINABLE  # (D, H) bool

    @property
    def frozen(self) -> Tensor:
        return self.roles == Role.FROZEN

    @property
    def pruned(self) -> Tensor:
        return self.roles == Role.PRUNED

    @property
    def trainable_channels(self) -> Tensor:
        """Channels with at least one trainable state, (D,) bool."""
        return self.trainable.any(dim=1)

    def count(self) -> int:
        """Trainable entries per parameter that follows this mask."""
        return int(self.trainable.sum())


def sdt_mask(D: int, H: int, channels: Sequence[int], states, *, prune_rest: bool = False,
             prune_channels: Sequence[int] = ()) -> SDTMask:
    """Build an SDT (or SDT-P) mask.

    channels: indices of updated channels. states: for each updated channel the indices of its
    tuned states (a list of lists), or one list used for all of them. With ``prune_rest`` the
    untuned states of updated channels are pruned (SDT-P: "the rest set to zero");
    ``prune_channels`` lists channels whose every state is pruned. Everything else is frozen.
    """
    D = check_int("D", D, lo=1)
    H = check_int("H", H, lo=1)
    channels = [check_int("channels", c) for c in channels]  # indices: 1.9 is refused, not truncated to 1
    prune_channels = [check_int("prune_channels", c) for c in prune_channels]
    if len(set(channels)) != len(channels):
        raise ValueError("channels: must not repeat")
    for c in list(channels) + list(prune_channels):
        if not 0 <= c < D:
            raise ValueError(f"channels: index {c} out of range [0, {D})")
    if set(channels) & set(prune_channels):
        raise ValueError("prune_channels: must be disjoint from channels")
    if len(states) and not isinstance(states[0], (list, tuple, range)) and not (
            isinstance(states[0], torch.Tensor) and states[0].dim() > 0):
        states = [list(states)] * len(channels)
    if len(states) != len(channels):
        raise ValueError(f"states: need one state list per updated channel ({len(channels)}), got {len(states)}")
    roles = torch.full((D, H), int(Role.FROZEN), dtype=torch.int8)
    for c, st in zip(channels, states):
        st = [check_int("states", s) for s in st]
        if any(not 0 <= s < H for s in st):
            raise ValueError(f"states: index out of range [0, {H}) in channel {c}: {st}")
        if len(set(st)) != len(st):
            raise ValueError(f"states: repeated state index in channel {c}: {st}")
        if prune_rest:
            roles[c] = int(Role.PRUNED)
        roles[c, st] = int(Role.TRAINABLE)
    for c in prune_channels:
        roles[c] = int(Role.PRUNED)
    return SDTMask(roles)


def sdt_budget_mask(D: int, H: int, n_channels: int, n_states: int, **kw) -> SDTMask:
    """SDT mask updating the first ``n_channels`` channels and their first ``n_states`` states."""
    n_channels = check_int("n_channels", n_channels, lo=0, hi=D)
    n_states = check_int("n_states", n_states, lo=0, hi=H)
    return sdt_mask(D, H, range(n_channels), [list(range(n_states))] * n_channels, **kw)


class MaskedParameter(nn.Module):
    """A parameter of shape ``base.shape`` with roles per entry; only trainable entries are stored.

    ``forward()`` returns ``base`` with pruned entries set to 0 and trainable entries replaced by
    the trainable vector (in row-major order of the mask). The nn.Parameter ``values`` has exactly
    ``mask.count()`` entries, so an optimizer updates exactly the trainable scalars.
    ``roles`` may be (D, H) for a (D, H) base, or (D,) channel roles broadcast over extra axes.
    """

    def __init__(self, base: Tensor, roles: Tensor):
        super().__init__()
        base = check_tensor("base", base, allow_complex=False)
        roles = torch.as_tensor(roles)
        if roles.shape != base.shape[: roles.dim()]:
            raise ValueError(f"roles: shape {tuple(roles.shape)} must be a prefix of base's {tuple(base.shape)}")
        SDTMask(roles.reshape(roles.shape[0], -1) if roles.dim() else roles.reshape(1, 1))  # validates codes
        full = roles.reshape(roles.shape + (1,) * (base.dim() - roles.dim())).expand(base.shape)
        trainable = (full == Role.TRAINABLE).to(base.device)
        pruned = (full == Role.PRUNED).to(base.device)
        frozen_base = torch.where(pruned, torch.zeros_like(base), base.detach())
        self.register_buffer("base", frozen_base.clone())
        self.register_buffer("trainable_mask", trainable.clone())
        self.values = nn.Parameter(base.detach()[trainable].clone())  # (n_trainable,)

    def forward(self) -> Tensor:
        return self.base.masked_scatter(self.trainable_mask, self.values)


def count_trainable(params: Iterable) -> int:
    """Number of scalars an optimizer updates: trainable entries of every parameter that requires grad.

    Accepts a module or an iterable of parameters. Masked parameters store only their trainable
    entries, so a plain ``numel`` sum is exact; complex parameters count 2 real scalars each.
    """
    if isinstance(params, nn.Module):
        params = params.parameters()
    seen, total = set(), 0
    for p in params:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel() * (2 if p.is_complex() else 1)
    return total


# --------------------------------------------------------------------------------------------- DoRA
@dataclass(frozen=True)
class DoRAConfig(LoRAConfig):
    """DoRA's LoRA factors (``rank``, ``alpha`` as :class:`LoRAConfig`) and its norm convention.

    detach_norm: True (default) treats the row norm ``‖W + ΔW‖_row`` as a constant in the backward
      pass, as the DoRA paper (Liu et al., 2024, Sec. 4.3) and huggingface/peft do
      (``weight_norm.detach()``); the paper's benchmark trained DoRA with peft, so this is the
      convention its runs used. False differentiates through the norm as well (the forward values
      are the same; the gradients of ``A`` and ``B`` differ).
    """

    detach_norm: bool = True

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.detach_norm, bool):
            raise ValueError(f"detach_norm: must be a bool, got {self.detach_norm!r}")

    @staticmethod
    def of(config: LoRAConfig) -> "DoRAConfig":
        """``config`` itself if it is a DoRAConfig, else a DoRAConfig with its rank and alpha (norm detached)."""
        return config if isinstance(config, DoRAConfig) else DoRAConfig(config.rank, config.alpha)


def dora_normalize(V: Tensor, magnitude: Tensor, *, detach_norm: bool = True) -> Tensor:
    """``m ⊙ V / ‖V‖_row``: V (..., out, in), magnitude ``m`` (..., out) -> (..., out, in).

    The norm is over the input axis, one per output row (huggingface/peft's convention for a Linear
    weight stored as (out, in)). ``detach_norm`` (default True): the norm is a constant in the
    backward pass (see :class:`DoRAConfig`). A row with ``‖V‖ = 0`` (a zero row of the frozen
    weight at initialisation) is divided by 1 instead of 0, so it stays zero and finite (the exact
    formula is 0/0 there) and its gradients stay finite.
    """
    norm = torch.linalg.vector_norm(V, dim=-1, keepdim=True)  # (..., out, 1)
    if detach_norm:
        norm = norm.detach()
    norm = torch.where(norm > 0, norm, torch.ones_like(norm))  # zero rows: 0 / 1 = 0, not 0 / 0
    return magnitude[..., None] * V / norm


def dora_weight(weight: Tensor, delta: Tensor, magnitude: Tensor, *, detach_norm: bool = True) -> Tensor:
    """DoRA's effective weight (Liu et al., 2024): ``W' = m ⊙ (W + ΔW) / ‖W + ΔW‖_row``.

    weight, delta: (out, in) (or with leading batch axes); magnitude ``m``: (out,). With
    ``m = ‖W‖_row`` and ``ΔW = 0`` it returns ``W`` (up to rounding). ``detach_norm`` (default True,
    peft's and the DoRA paper's convention): see :class:`DoRAConfig` and :func:`dora_normalize`.
    """
    return dora_normalize(weight + delta, magnitude, detach_norm=detach_norm)


class DoRALinear(LoRALinear):
    """A frozen linear map with a DoRA update: LoRA factors ``A, B`` plus a trainable magnitude ``m``.

    ``m`` (out,) starts at the row norms of the frozen weight, so the adapted map starts equal to the
    frozen one. ``delta_weight()`` is ``W' − W`` (so :meth:`merge`/:meth:`unmerge` of LoRALinear apply).
    Trainable: ``lora_A`` (r, in), ``lora_B`` (out, r), ``magnitude`` (out,). ``config``: a
    :class:`DoRAConfig` (a plain :class:`LoRAConfig` means the default, norm detached).
    """

    def __init__(self, weight: Tensor, bias: Optional[Tensor], config: LoRAConfig,
                 generator: Optional[torch.Generator] = None, train_bias: bool = False, *, max_bytes=None):
        config = DoRAConfig.of(config)
        super().__init__(weight, bias, config, generator=generator, train_bias=train_bias, max_bytes=max_bytes)
        self.magnitude = nn.Parameter(torch.linalg.vector_norm(self.weight, dim=1).clone())  # (out,)

    def delta_weight(self) -> Tensor:
        W = self._frozen_weight if self.merged else self.weight
        delta = lora_delta(self.lora_A, self.lora_B, self.config.scaling)
        return dora_weight(W, delta, self.magnitude, detach_norm=self.config.detach_norm) - W


class DoRAMatrix(LoRAMatrix):
    """A frozen matrix ``W`` (out, in) with a DoRA update; ``forward()`` returns ``W'`` (see :func:`dora_weight`).

    Trainable: ``lora_A`` (r, in), ``lora_B`` (out, r) (zero at start) and ``magnitude`` (out,) =
    ``‖W‖_row`` at start. ``config``: a :class:`DoRAConfig` (a plain :class:`LoRAConfig`: norm detached).
    """

    def __init__(self, base: Tensor, config: LoRAConfig, generator: Optional[torch.Generator] = None, *,
                 max_bytes=None):
        super().__init__(base, DoRAConfig.of(config), generator=generator, max_bytes=max_bytes)
        self.magnitude = nn.Parameter(torch.linalg.vector_norm(self.base, dim=1).clone())  # (out,)

    def delta_weight(self) -> Tensor:
        return self.forward() - self.base

    def forward(self) -> Tensor:
        delta = lora_delta(self.lora_A, self.lora_B, self.config.scaling)
        return dora_weight(self.base, delta, self.magnitude, detach_norm=self.config.detach_norm)


# ------------------------------------------------------------------- prompt, prefix and state vectors
class PrefixParameters(nn.Module):
    """``M`` learned vectors of width ``D`` prepended to a sequence (prompt tuning: at the model's input;
    prefix-tuning: at every layer's input); the outputs at those positions are discarded.

    ``prefix``: (D, M) trainable, zero at start unless ``init`` is given (same shape).
    """

    def __init__(self, D: int, M: int, init: Optional[Tensor] = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        check_int("D", D, lo=1)
        check_int("M", M, lo=1)
        if init is not None:
            check_tensor("init", init, shape=(D, M), allow_complex=False)
        self.prefix = nn.Parameter(torch.zeros(D, M, dtype=dtype) if init is None else init.detach().clone())


class StateParameters(nn.Module):
    """A learned per-channel state vector ``h`` (D, H): the initial state ``h_0`` of initial-state tuning
    or the offset ``h'`` of state-offset tuning (``y_t = C (h_t + h')``). Complex in the conjugate-pair
    form (each entry counts 2 real scalars). Zero at start: the adapted model starts equal to the frozen one.
    """

    def __init__(self, D: int, H: int, complex_state: bool = False, dtype: torch.dtype = torch.float32):
        super().__init__()
        check_int("D", D, lo=1)
        check_int("H", H, lo=1)
        cdtype = {torch.float32: torch.complex64, torch.float64: torch.complex128}[dtype] if complex_state else dtype
        self.state = nn.Parameter(torch.zeros(D, H, dtype=cdtype))
