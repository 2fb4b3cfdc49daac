"""PEFT on Mamba blocks: LoRA, SDT and Algorithm 1's channel selection for S6 (Galim et al., ICML 2025,
Secs. 5-6).

Every method wraps the *frozen weights* of one Mamba block (mamba-ssm names, :mod:`synthetic.mamba_ref`)
and, on each forward, builds the block's **effective weights** (frozen + update) and calls the
functional block :func:`synthetic.mamba_ref.mamba_forward` with the backend's scan. So the adapters
are in the compute path by construction, with either backend and even with mamba-ssm's fused
``mamba_inner_fn`` (which reads the x_proj/dt_proj/out_proj weights it is *given*; we pass the
effective ones) — unlike wrapping ``nn.Linear`` submodules, which the fused path bypasses.

Parameter roles are declared where the wrapper creates each parameter (``PeftMambaBlock.roles``):
- ``frozen``: a buffer, never updated;
- ``full``: an ``nn.Parameter`` holding the whole tensor;
- ``lora``: ``W + s·B A`` (:class:`theory.peft.LoRAMatrix`) — on in_proj, out_proj, x_proj,
  dt_proj weights, and on ``A_log`` treated as a D×H matrix (the paper's "LoRA (S6)");
- ``sdt``: SDT on S6 at channel level (Algorithm 1, step 4 for S6): for each selected channel d,
  row ``A_log[d, :]`` and column d of ``W_B`` and ``W_C`` (rows R..R+2H of x_proj) are trainable;
  everything else is frozen, stored as :class:`theory.peft.MaskedParameter` (frozen entries stay
  bit-identical under AdamW).

Algorithm 1 for S6 (channel level): warm up the S6 parameters (A_log, x_proj, dt_proj) on a copy,
score channel d by the mean change of ``Ā_t^(d) = exp(Δ_t^(d) A^(d))`` over a probe batch
(:func:`abar_change_scores`), keep the top channels per layer (:func:`select_channels`).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from theory.peft import LoRAConfig, LoRAMatrix, MaskedParameter, Role, count_trainable

from .mamba_ref import MambaRef, PARAM_NAMES, delta_of, mamba_forward, selective_scan_reference

Tensor = torch.Tensor

PROJ_NAMES = ("in_proj.weight", "out_proj.weight")
S6_LORA_NAMES = ("x_proj.weight", "dt_proj.weight", "A_log")
S6_NAMES = ("x_proj.weight", "dt_proj.weight", "dt_proj.bias", "A_log")  # what the SDT warm-up updates
LORA_TARGETS = PROJ_NAMES + S6_LORA_NAMES


# ------------------------------------------------------------------------------------- backends
@dataclass(frozen=True)
class Backend:
    """How a Mamba block is computed: a ``selective_scan_fn``-compatible scan, an optional fused
    ``mamba_inner_fn``, and the block class used for frozen/target models."""

    name: str
    scan_fn: Callable
    inner_fn: Optional[Callable]
    block_cls: type
    version: str

    def make_block(self, d_model: int, d_state: int, expand: int, device) -> nn.Module:
        return self.block_cls(d_model, d_state=d_state, expand=expand, device=device)


def _reference_backend(fused: bool = False) -> Backend:
    return Backend("reference", selective_scan_reference, None, MambaRef, "n/a")


def _mamba_ssm_backend(fused: bool = True) -> Backend:
    """mamba-ssm's CUDA selective scan (imported lazily: ``import mamba_ssm`` fails without CUDA).

    The fused ``mamba_inner_fn`` needs causal-conv1d; without it (or with ``fused=False``) the
    block runs mamba-ssm's unfused path: ``nn.Conv1d`` + ``selective_scan_fn`` (CUDA kernel).
    """
    if not torch.cuda.is_available():
        raise RuntimeError("backend mamba_ssm: needs CUDA")
    import mamba_ssm
    from mamba_ssm import Mamba
    from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn

    has_conv = importlib.util.find_spec("causal_conv1d") is not None
    return Backend("mamba_ssm", selective_scan_fn, mamba_inner_fn if (fused and has_conv) else None, Mamba,
                   mamba_ssm.__version__)


BACKENDS: Dict[str, Callable[..., Backend]] = {"reference": _reference_backend, "mamba_ssm": _mamba_ssm_backend}


def mamba_ssm_available() -> bool:
    """CUDA present and mamba-ssm installed (checked without importing it)."""
    return torch.cuda.is_available() and importlib.util.find_spec("mamba_ssm") is not None


def get_backend(name: str = "auto", fused: bool = True) -> Backend:
    if name == "auto":
        name = "mamba_ssm" if mamba_ssm_available() else "reference"
    if name not in BACKENDS:
        raise ValueError(f"backend: one of {sorted(BACKENDS)} or 'auto', got {name!r}")
    return BACKENDS[name](fused=fused)


# ------------------------------------------------------------------------------------ the method
@dataclass(frozen=True)
class MambaPeftConfig:
    """Which parameters of each block are updated, and how.

    lora: weight names given a rank-``lora_rank`` update (subset of :data:`LORA_TARGETS`; the rank
    is clamped to each matrix's smaller side, e.g. dt_proj's R). sdt_channels: channels per layer
    updated by SDT on S6 (0 = no SDT). full: names updated in full.

    Options for the official code's configurations (furiosa-ai/ssm-peft; defaults = our original
    behaviour, see notes/mamba.md):
    lora_dropout: dropout p on the LoRA *input* path, ``y = W x + s·B A drop(x)`` (peft's LoRA;
      official p = 0.1). While training with p > 0 the LoRA maps run activation-side
      (:class:`DropoutLoRA`), so the block cannot use the fused ``mamba_inner_fn`` and falls back
      to the unfused path (:meth:`PeftMambaBlock.fused_fallback` says why); in eval mode dropout
      is the identity and the merged weight ``W + s·B A`` is used.
    lora_x_proj_split: LoRA on x_proj as three rank-r updates of its row blocks W_Δ↓ (R, D),
      W_B (H, D), W_C (H, D) (the official x_proj_dt / x_proj_B / x_proj_C modules) instead of one
      rank-r update of the stacked (R + 2H, D) matrix.
    sdt_states: A_log states trained per SDT channel (0 = all H, our original channel-level SDT;
      the official SDLoRA trains H − round(0.75·H) .. H − round(0.95·H)); W_B, W_C keep whole columns.
    """

    lora: Tuple[str, ...] = ()
    lora_rank: int = 0
    lora_alpha: Optional[float] = None
    sdt_channels: int = 0
    full: Tuple[str, ...] = ()
    lora_dropout: float = 0.0
    lora_x_proj_split: bool = False
    sdt_states: int = 0

    def __post_init__(self):
        bad = [n for n in self.lora if n not in LORA_TARGETS]
        if bad:
            raise ValueError(f"lora: unknown targets {bad}; choose from {LORA_TARGETS}")
        if self.lora and self.lora_rank < 1:
            raise ValueError("lora_rank: must be >= 1 when lora targets are given")
        if self.sdt_channels < 0:
            raise ValueError("sdt_channels: must be >= 0")
        if self.sdt_channels and set(self.lora) & {"x_proj.weight", "A_log"}:
            raise ValueError("SDT updates A_log and x_proj's W_B/W_C columns; LoRA on them as well is not supported")
        bad = [n for n in self.full if n not in PARAM_NAMES + ("in_proj.bias", "out_proj.bias")]
        if bad:
            raise ValueError(f"full: unknown parameters {bad}")
        if set(self.full) & (set(self.lora) | ({"A_log", "x_proj.weight"} if self.sdt_channels else set())):
            raise ValueError("full: overlaps the LoRA / SDT parameters")
        if not (isinstance(self.lora_dropout, (int, float)) and 0.0 <= self.lora_dropout < 1.0):
            raise ValueError(f"lora_dropout: must be in [0, 1), got {self.lora_dropout!r}")
        if self.sdt_states < 0 or (self.sdt_states and not self.sdt_channels):
            raise ValueError("sdt_states: must be >= 0, and > 0 only together with sdt_channels")


def _key(name: str) -> str:
    return name.replace(".", "__")


class DropoutLoRA:
    """Activation-side LoRA with dropout on its input path: ``y = W x + s_k·B_k A_k drop_k(x)``.

    ``parts``: LoRAMatrix objects whose bases stacked along rows form the frozen ``W`` (out, in);
    part k adds its update to its own rows (one part, or the three x_proj blocks), each with its own
    dropout mask, as separate peft LoRA modules do. Passed in a weight dict in place of a tensor;
    :func:`synthetic.mamba_ref.linear_map` calls :meth:`linear`.
    """

    def __init__(self, parts: Sequence[LoRAMatrix], p: float):
        self.parts, self.p = list(parts), float(p)

    def linear(self, x: Tensor, eq: str) -> Tensor:
        """``einsum(eq, W + update, x)`` with ``eq`` as in mamba_forward, e.g. ``"md,bdn->bnm"``."""
        w_subs, rest = eq.split(",")
        x_subs, out_subs = rest.split("->")
        o, i = w_subs
        z = next(c for c in "zyxwvu" if c not in eq)  # a fresh subscript for the rank axis
        eq_b = f"{o}{z},{out_subs.replace(o, z)}->{out_subs}"
        base = torch.cat([m.base for m in self.parts], dim=0) if len(self.parts) > 1 else self.parts[0].base
        y = torch.einsum(eq, base, x)
        ups = []
        for m in self.parts:
            xd = torch.nn.functional.dropout(x, self.p, training=True)
            ups.append(m.config.scaling * torch.einsum(eq_b, m.lora_B, torch.einsum(eq, m.lora_A, xd)))
        return y + (torch.cat(ups, dim=out_subs.index(o)) if len(ups) > 1 else ups[0])


def channel_roles(D: int, channels: Sequence[int]) -> Tensor:
    """(D,) int8 Role codes: TRAINABLE on ``channels``, FROZEN elsewhere."""
    roles = torch.full((D,), int(Role.FROZEN), dtype=torch.int8)
    idx = torch.as_tensor(list(channels), dtype=torch.long)
    if idx.numel():
        if int(idx.min()) < 0 or int(idx.max()) >= D or idx.unique().numel() != idx.numel():
            raise ValueError(f"channels: must be distinct indices in [0, {D})")
        roles[idx] = int(Role.TRAINABLE)
    return roles


def state_roles(D: int, H: int, channels: Sequence[int], states: Sequence[Sequence[int]]) -> Tensor:
    """(D, H) int8 Role codes: TRAINABLE at (channels[k], s) for s in states[k], FROZEN elsewhere."""
    if len(states) != len(channels):
        raise ValueError(f"states: need one state list per channel ({len(channels)}), got {len(states)}")
    channel_roles(D, channels)  # validates the channels
    roles = torch.full((D, H), int(Role.FROZEN), dtype=torch.int8)
    for c, st in zip(channels, states):
        idx = torch.as_tensor(list(st), dtype=torch.long)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= H or idx.unique().numel() != idx.numel()):
            raise ValueError(f"states: must be distinct indices in [0, {H}) per channel, got {list(st)}")
        roles[int(c), idx] = int(Role.TRAINABLE)
    return roles


class PeftMambaBlock(nn.Module):
    """One Mamba block's frozen weights plus the updates of a :class:`MambaPeftConfig`.

    weights: mamba-ssm-named tensors of one block. channels: SDT's selected channels (needed iff
    ``config.sdt_channels > 0``; its length must equal it). states: per selected channel, the A_log
    states trained (needed iff ``config.sdt_states > 0``; each of that length). ``effective_weights()``
    returns the weight dict the forward uses; ``roles`` maps each parameter name to frozen/full/lora/sdt.
    """

    def __init__(self, weights: Mapping[str, Tensor], *, d_state: int, dt_rank: int, config: MambaPeftConfig,
                 channels: Optional[Sequence[int]] = None, generator: Optional[torch.Generator] = None,
                 states: Optional[Sequence[Sequence[int]]] = None):
        super().__init__()
        self.d_state, self.dt_rank, self.config = d_state, dt_rank, config
        self.frozen = nn.Module()  # buffers
        self.full = nn.ParameterDict()
        self.lora = nn.ModuleDict()
        self.sdt = nn.ModuleDict()
        self.roles: Dict[str, str] = {}
        D = weights["A_log"].shape[0]
        if config.sdt_channels:
            if channels is None or len(channels) != config.sdt_channels:
                raise ValueError(f"channels: SDT needs exactly {config.sdt_channels} selected channels, got "
                                 f"{None if channels is None else len(channels)}")
            roles = channel_roles(D, channels).to(weights["A_log"].device)
            a_roles = roles  # (D,): whole rows of A_log
            if config.sdt_states:
                if states is None or any(len(s) != config.sdt_states for s in states):
                    raise ValueError(f"states: SDT with sdt_states={config.sdt_states} needs that many states per "
                                     "selected channel")
                a_roles = state_roles(D, weights["A_log"].shape[1], channels, states).to(roles.device)  # (D, H)
            elif states is not None:
                raise ValueError("states: given but config.sdt_states is 0")
        elif channels or states:
            raise ValueError("channels/states: given but config.sdt_channels is 0")
        self.channels = None if channels is None else [int(c) for c in channels]
        self.states = None if states is None else [[int(s) for s in st] for st in states]
        for name, w in weights.items():
            w = w.detach()
            if name in config.full:
                self.full[_key(name)] = nn.Parameter(w.clone())
                self.roles[name] = "full"
            elif name in config.lora:
                parts = ((w,) if not (config.lora_x_proj_split and name == "x_proj.weight") else
                         torch.split(w, [dt_rank, d_state, d_state], dim=0))  # W_Δ↓ (R, D), W_B, W_C (H, D)
                for j, part in enumerate(parts):
                    r = min(config.lora_rank, *part.shape)  # e.g. dt_proj (D, R): rank <= R
                    self.lora[_key(name) + ("" if len(parts) == 1 else f"__part{j}")] = LoRAMatrix(
                        part, LoRAConfig(r, config.lora_alpha), generator=generator)
                self.roles[name] = "lora"
            elif config.sdt_channels and name == "A_log":
                self.sdt["A_log"] = MaskedParameter(w, a_roles)  # (D, H): trainable rows or (channel, state) entries
                self.roles[name] = "sdt"
            elif config.sdt_channels and name == "x_proj.weight":
                R = self.dt_rank
                self.frozen.register_buffer("x_proj_dt", w[:R].clone())  # (R, D) = W_Δ↓, frozen
                self.sdt["x_proj_BC"] = MaskedParameter(w[R:].T.contiguous(), roles)  # (D, 2H): [W_B; W_C]^T
                self.roles[name] = "sdt"
            else:
                self.frozen.register_buffer(_key(name), w.clone())
                self.roles[name] = "frozen"

    def _lora_parts(self, name: str) -> List[LoRAMatrix]:
        k = _key(name)
        return [self.lora[k]] if k in self.lora else [m for n, m in self.lora.items() if n.startswith(k + "__part")]

    def activation_side(self) -> bool:
        """True while LoRA maps must run activation-side: training with lora_dropout > 0."""
        return bool(self.training and self.config.lora_dropout > 0 and self.lora)

    def fused_fallback(self, backend: Backend) -> Optional[str]:
        """Why this block does not run ``backend``'s fused ``mamba_inner_fn`` now (None: it does, or
        the backend has no fused path)."""
        if backend.inner_fn is None or not self.activation_side():
            return None
        return "lora_dropout > 0: LoRA runs activation-side (W x + s·B A drop(x)), which mamba_inner_fn cannot take"

    def effective_weights(self, activation_side: Optional[bool] = None) -> Dict[str, Tensor]:
        """Weight dict for :func:`mamba_forward`; LoRA maps are merged tensors ``W + s·B A``, or
        :class:`DropoutLoRA` ops when ``activation_side`` (default: :meth:`activation_side`)."""
        act = self.activation_side() if activation_side is None else activation_side
        out: Dict[str, Tensor] = {}
        for name, role in self.roles.items():
            k = _key(name)
            if role == "full":
                out[name] = self.full[k]
            elif role == "lora" and act and name != "A_log":
                out[name] = DropoutLoRA(self._lora_parts(name), self.config.lora_dropout)
            elif role == "lora":
                parts = self._lora_parts(name)
                out[name] = parts[0]() if len(parts) == 1 else torch.cat([m() for m in parts], dim=0)
            elif role == "sdt" and name == "A_log":
                out[name] = self.sdt["A_log"]()
            elif role == "sdt":
                out[name] = torch.cat([self.frozen.x_proj_dt, self.sdt["x_proj_BC"]().T], dim=0)  # (R + 2H, D)
            else:
                out[name] = getattr(self.frozen, k)
        return out

    def forward(self, hidden: Tensor, backend: Backend) -> Tensor:
        inner = None if self.fused_fallback(backend) else backend.inner_fn  # explicit fallback, see fused_fallback
        return mamba_forward(self.effective_weights(), hidden, d_state=self.d_state, dt_rank=self.dt_rank,
                             scan_fn=backend.scan_fn, inner_fn=inner)


def residual_stack(blocks: Sequence[Callable[[Tensor], Tensor]], hidden: Tensor) -> Tensor:
    """``h ← h + block(h)`` for each block; hidden (Bt, N, d_model)."""
    for blk in blocks:
        hidden = hidden + blk(hidden)
    return hidden


class PeftMambaStack(nn.Module):
    """A residual stack of :class:`PeftMambaBlock` over the frozen model's per-layer weights."""

    def __init__(self, layer_weights: Sequence[Mapping[str, Tensor]], *, d_state: int, dt_rank: int,
                 config: MambaPeftConfig, channels: Optional[Sequence[Sequence[int]]] = None,
                 generator: Optional[torch.Generator] = None,
                 states: Optional[Sequence[Sequence[Sequence[int]]]] = None):
        super().__init__()
        chans = channels if channels is not None else [None] * len(layer_weights)
        sts = states if states is not None else [None] * len(layer_weights)
        self.blocks = nn.ModuleList(PeftMambaBlock(w, d_state=d_state, dt_rank=dt_rank, config=config, channels=c,
                                                   generator=generator, states=s)
                                    for w, c, s in zip(layer_weights, chans, sts))

    def forward(self, hidden: Tensor, backend: Backend) -> Tensor:
        return residual_stack([lambda h, b=b: b(h, backend) for b in self.blocks], hidden)

    def fused_fallback(self, backend: Backend) -> Optional[str]:
        """The first block's reason for not running fused now (all blocks share one config)."""
        return self.blocks[0].fused_fallback(backend) if len(self.blocks) else None


# ------------------------------------------------------------------------- Algorithm 1 for S6
def abar_change_scores(w_before: Mapping[str, Tensor], w_after: Mapping[str, Tensor], hidden: Tensor,
                       d_state: int, dt_rank: int) -> Tensor:
    """Per channel d: mean over batch and time of ``‖Ā_t^(d),after − Ā_t^(d),before‖_2`` (over states).

    ``Ā_t^(d) = exp(Δ_t^(d) A^(d))`` with ``A = −exp(A_log)``; both evaluated on the same block
    input ``hidden`` (Bt, N, d_model). Returns (D,) float32, non-negative.
    """
    with torch.no_grad():
        def abar(w):
            delta = delta_of(w, hidden, d_state, dt_rank).float()  # (Bt, D, N)
            A = -torch.exp(w["A_log"].float())  # (D, H)
            return torch.exp(delta[..., None] * A[None, :, None, :])  # (Bt, D, N, H)
        return torch.linalg.vector_norm(abar(w_after) - abar(w_before), dim=-1).mean(dim=(0, 2))  # (D,)


def select_channels(scores: Tensor, n_channels: int) -> List[int]:
    """Indices of the ``n_channels`` largest scores (ties broken by lower index), sorted ascending."""
    if not 0 <= n_channels <= scores.numel():
        raise ValueError(f"n_channels: must be in [0, {scores.numel()}], got {n_channels}")
    order = sorted(range(scores.numel()), key=lambda d: (-float(scores[d]), d))
    return sorted(order[:n_channels])


def official_select(delta_a_log: Tensor, n_channels: int, n_states: int = 0) -> Tuple[List[int], List[List[int]]]:
    """The official SDLoRA selection (furiosa-ai/ssm-peft ``sd_lora.py``), facts re-implemented.

    delta_a_log: (D, H) change of ``A_log`` learnt in the warm-up. Channels: the ``n_channels``
    largest ``Σ_h δ[d, h]²``; per selected channel, the ``n_states`` largest ``δ[d, h]²`` (0 = all H).
    Ties go to the lower index. Returns (channels ascending, states per channel ascending).
    """
    if delta_a_log.dim() != 2:
        raise ValueError(f"delta_a_log: expected (D, H), got shape {tuple(delta_a_log.shape)}")
    D, H = delta_a_log.shape
    if not 0 <= n_states <= H:
        raise ValueError(f"n_states: must be in [0, {H}], got {n_states}")
    sq = delta_a_log.detach().double().square().cpu()
    channels = select_channels(sq.sum(dim=1), n_channels)
    states = [select_channels(sq[c], n_states or H) for c in channels]
    return channels, states


def official_counts(D: int, H: int, channel_freeze: float, state_freeze: float) -> Tuple[int, int]:
    """(channels, states) trained per layer by the official rule: ``D − round(f_d·D)``, ``H − round(f_n·H)``."""
    for name, f in (("channel_freeze", channel_freeze), ("state_freeze", state_freeze)):
        if not 0.0 <= f < 1.0:
            raise ValueError(f"{name}: must be in [0, 1), got {f!r}")
    return max(1, D - int(round(channel_freeze * D))), max(1, H - int(round(state_freeze * H)))


# -------------------------------------------------------------------------------- the registry
ALL_NAMES = PARAM_NAMES


def _rank(b):
    return int(b["rank"])


METHODS: Dict[str, Callable[[dict], MambaPeftConfig]] = {
    "Frozen": lambda b: MambaPeftConfig(),
    "LoRA (Proj)": lambda b: MambaPeftConfig(lora=PROJ_NAMES, lora_rank=_rank(b)),
    "LoRA (S6+Proj)": lambda b: MambaPeftConfig(lora=PROJ_NAMES + S6_LORA_NAMES, lora_rank=_rank(b)),
    "SDT": lambda b: MambaPeftConfig(sdt_channels=int(b["channels"])),
    "SDT + LoRA": lambda b: MambaPeftConfig(sdt_channels=int(b["channels"]), lora=PROJ_NAMES, lora_rank=_rank(b)),
    "Full": lambda b: MambaPeftConfig(full=ALL_NAMES),
}
"""Method name -> (budget dict -> config). Budgets: ``{"rank"}``, ``{"channels"}`` or both."""


def frozen_param_count(layer_weights: Sequence[Mapping[str, Tensor]]) -> int:
    return sum(int(t.numel()) for w in layer_weights for t in w.values())


def trainable_count(module: nn.Module) -> int:
    return count_trainable(module)
