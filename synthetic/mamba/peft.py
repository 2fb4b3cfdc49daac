"""PEFT on Mamba blocks: LoRA, SDT and Algorithm 1's channel selection for S6 (Galim et al., ICML 2025,
Secs. 5-6).

Every method wraps the *frozen weights* of one Mamba block (mamba-ssm names, :mod:`synthetic.mamba.ref`)
and, on each forward, builds the block's **effective weights** (frozen + update) and calls the
functional block :func:`synthetic.mamba.ref.mamba_forward` with the backend's scan. So the adapters
are in the compute path by construction, with either backend and even with mamba-ssm's fused
``mamba_inner_fn`` (which reads the x_proj/dt_proj/out_proj weights it is *given*; we pass the
effective ones) — unlike wrapping ``nn.Linear`` submodules, which the fused path bypasses.

Parameter roles are declared where the wrapper creates each parameter (``PeftMambaBlock.roles``):
- ``frozen``: a buffer, never updated;
- ``full``: an ``nn.Parameter`` holding the whole tensor;
- ``lora``: ``W + s·B A`` (:class:`theory.peft.LoRAMatrix`) — on in_proj, out_proj, x_proj,
  dt_proj weights, and on ``A_log`` treated as a D×H matrix (the paper's "LoRA (S6)");
- ``sdt``: SDT on S6 at channel level (Algorithm 1, step 4 for S6): for each selected channel d,
  row ``A_log[d, :]`` (or its selected states) and column d of ``W_B`` and ``W_C`` (rows R..R+2H of x_proj)
  are trainable; everything else is frozen. The index sets and the adapter are :mod:`ssm_peft`'s
  (:func:`ssm_peft.selection.sdt_indices`, :class:`ssm_peft.sparse.SparseDelta` storing the trainable entries'
  values), the ones its peft tuner registers on real models, so frozen entries stay bit-identical under AdamW.

- ``dora``: :class:`theory.peft.DoRAMatrix` (LoRA factors + row magnitudes) on in_proj/out_proj;
- ``added`` (``PeftMambaBlock.added``, all trainable): prefix vectors, initial state ``h_0``, state offset
  ``h'`` (:class:`ssm_peft.state.StateAdapter`, terms from :func:`ssm_peft.state.mamba1_state_terms`),
  Additional-scan's states; prompt vectors on :class:`PeftMambaStack` (see :data:`BENCHMARK_METHODS`).

Algorithm 1 for S6 (channel level): warm up the S6 parameters (A_log, x_proj, dt_proj) on a copy,
score channel d by the mean change of ``Ā_t^(d) = exp(Δ_t^(d) A^(d))`` over a probe batch
(:func:`abar_change_scores`, i.e. :func:`ssm_peft.selection.abar_change`), keep the top channels per layer
(:func:`ssm_peft.selection.select_channels`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ssm_peft.layouts import MixerDims
from ssm_peft.selection import abar_change, sdt_indices, select_channels  # noqa: F401  (select_channels: re-exported)
from ssm_peft.sparse import SparseDelta
from ssm_peft.state import StateAdapter, mamba1_state_terms
from theory.peft import DoRAMatrix, LoRAConfig, LoRAMatrix, PrefixParameters, count_trainable

from synthetic.mamba.backends import (BACKENDS, Backend, get_backend,  # noqa: F401 (re-exported: the old home)
                                      mamba_ssm_available)
from synthetic.mamba.ref import PARAM_NAMES, delta_of, fp32_at_least, mamba_forward, mamba_s6_inputs

Tensor = torch.Tensor

PROJ_NAMES = ("in_proj.weight", "out_proj.weight")
S6_LORA_NAMES = ("x_proj.weight", "dt_proj.weight", "A_log")
S6_NAMES = ("x_proj.weight", "dt_proj.weight", "dt_proj.bias", "A_log")  # what the SDT warm-up updates
LORA_TARGETS = PROJ_NAMES + S6_LORA_NAMES


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
    # The benchmark's other methods (:data:`BENCHMARK_METHODS`); see :class:`PeftMambaBlock`.
    dora: Tuple[str, ...] = ()  # weight names given a DoRA update of rank lora_rank (subset of DORA_TARGETS)
    prompt_len: int = 0  # prompt tuning: M vectors prepended to the stack's input
    prefix_len: int = 0  # prefix-tuning: M vectors prepended to every block's input
    initial_state: bool = False  # a learned initial state h_0 (D, H) per block
    state_offset: bool = False  # state-offset tuning: y_t += SiLU(z_t) ⊙ (C_t · h') with h' (D, H) per block
    additional_states: int = 0  # Additional-scan: states added per channel (A_log, W_B, W_C rows trainable)

    def __post_init__(self):
        self._check_benchmark_fields()
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

    def _check_benchmark_fields(self):
        bad = [n for n in self.dora if n not in DORA_TARGETS]
        if bad:
            raise ValueError(f"dora: unknown targets {bad}; choose from {DORA_TARGETS}")
        if self.dora and self.lora_rank < 1:
            raise ValueError("lora_rank: must be >= 1 when dora targets are given (DoRA's rank)")
        if set(self.dora) & (set(self.lora) | set(self.full)):
            raise ValueError("dora: overlaps the LoRA / full parameters")
        for name in ("prompt_len", "prefix_len", "additional_states"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}: must be an integer >= 0, got {v!r}")
        if self.additional_states and self.sdt_channels:
            raise ValueError("additional_states: not supported together with SDT (both change x_proj's W_B/W_C)")


def _key(name: str) -> str:
    return name.replace(".", "__")


class DropoutLoRA:
    """Activation-side LoRA with dropout on its input path: ``y = W x + s_k·B_k A_k drop_k(x)``.

    ``parts``: LoRAMatrix objects whose bases stacked along rows form the frozen ``W`` (out, in);
    part k adds its update to its own rows (one part, or the three x_proj blocks), each with its own
    dropout mask, as separate peft LoRA modules do. Passed in a weight dict in place of a tensor;
    :func:`synthetic.mamba.ref.linear_map` calls :meth:`linear`.
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
        D, H = weights["A_log"].shape
        sdt_idx = {}  # SDT: parameter name -> flat indices of its trainable entries
        if config.sdt_channels:
            if channels is None or len(channels) != config.sdt_channels:
                raise ValueError(f"channels: SDT needs exactly {config.sdt_channels} selected channels, got "
                                 f"{None if channels is None else len(channels)}")
            if config.sdt_states:
                if states is None or any(len(s) != config.sdt_states for s in states):
                    raise ValueError(f"states: SDT with sdt_states={config.sdt_states} needs that many states per "
                                     "selected channel")
            elif states is not None:
                raise ValueError("states: given but config.sdt_states is 0")
            entry = {"channels": channels, "states": states or [range(H)] * len(channels)}
            sdt_idx = sdt_indices(MixerDims("mamba1", D=D, H=H, R=dt_rank, d_inner=D), entry)
        elif channels or states:
            raise ValueError("channels/states: given but config.sdt_channels is 0")
        self.channels = None if channels is None else [int(c) for c in channels]
        self.states = None if states is None else [[int(s) for s in st] for st in states]
        for name, w in weights.items():
            w = w.detach()
            if name in config.dora:
                r = min(config.lora_rank, *w.shape)
                self.lora[_key(name)] = DoRAMatrix(w, LoRAConfig(r, config.lora_alpha), generator=generator)
                self.roles[name] = "dora"  # LoRA factors + magnitude (out,), trainable
            elif name in config.full:
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
            elif name in sdt_idx:  # A_log (D, H) and x_proj (R + 2H, D): the selected entries, stored as values
                self.frozen.register_buffer(_key(name), w.clone())
                idx = torch.as_tensor(sdt_idx[name], dtype=torch.long, device=w.device)
                self.sdt[_key(name)] = SparseDelta(w.shape, idx, w.dtype, w.device, values=w.reshape(-1)[idx])
                self.roles[name] = "sdt"
            else:
                self.frozen.register_buffer(_key(name), w.clone())
                self.roles[name] = "frozen"
        self.added = _benchmark_parameters(weights, config, d_state, generator)  # name -> module, all trainable
        self.added_roles = {k: "trainable" for k in self.added}

    @property
    def d_state_effective(self) -> int:
        """``H`` plus Additional-scan's added states."""
        return self.d_state + self.config.additional_states

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
            elif role == "dora":
                out[name] = self.lora[k]()
            elif role == "lora" and act and name != "A_log":
                out[name] = DropoutLoRA(self._lora_parts(name), self.config.lora_dropout)
            elif role == "lora":
                parts = self._lora_parts(name)
                out[name] = parts[0]() if len(parts) == 1 else torch.cat([m() for m in parts], dim=0)
            elif role == "sdt":
                out[name] = self.sdt[k](getattr(self.frozen, k))
            else:
                out[name] = getattr(self.frozen, k)
        if "additional_scan" in self.added:
            out = _with_added_states(out, self.added["additional_scan"], self.dt_rank, self.d_state)
        return out

    def forward(self, hidden: Tensor, backend: Backend) -> Tensor:
        if self.added:
            return _benchmark_block_forward(self, hidden, backend)
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
        self.prompt = None  # prompt tuning: (d_model, M) trainable vectors prepended to the input
        if config.prompt_len:
            w0 = layer_weights[0]["in_proj.weight"]
            self.prompt = PrefixParameters(w0.shape[1], config.prompt_len, dtype=w0.dtype).to(w0.device)

    def forward(self, hidden: Tensor, backend: Backend) -> Tensor:
        if self.prompt is None:
            return residual_stack([lambda h, b=b: b(h, backend) for b in self.blocks], hidden)
        M = self.prompt.prefix.shape[1]
        hidden = torch.cat([self.prompt.prefix.T.expand(hidden.shape[0], -1, -1), hidden], dim=1)  # (Bt, M + N, d)
        return residual_stack([lambda h, b=b: b(h, backend) for b in self.blocks], hidden)[:, M:]

    def fused_fallback(self, backend: Backend) -> Optional[str]:
        """The first block's reason for not running fused now (all blocks share one config)."""
        return self.blocks[0].fused_fallback(backend) if len(self.blocks) else None


# ------------------------------------------------------------------------- Algorithm 1 for S6
def abar_change_scores(w_before: Mapping[str, Tensor], w_after: Mapping[str, Tensor], hidden: Tensor,
                       d_state: int, dt_rank: int) -> Tensor:
    """Per channel d: mean over batch and time of ``‖Ā_t^(d),after − Ā_t^(d),before‖_2`` (over states),
    :func:`ssm_peft.selection.abar_change` with Δ of both weight sets on the same block input ``hidden``
    (Bt, N, d_model). Returns (D,) float32, non-negative."""
    with torch.no_grad():
        before, after = ((delta_of(w, hidden, d_state, dt_rank).float(), -torch.exp(w["A_log"].float()))
                         for w in (w_before, w_after))
        return abar_change(*before, *after, "mamba1")[0]


# ----------------------------------------------------------- the benchmark's other methods (Sec. 3-4)
DORA_TARGETS = PROJ_NAMES + ("x_proj.weight", "dt_proj.weight")  # linear maps (A_log is not one)
BITFIT_NAMES = ("conv1d.bias", "dt_proj.bias", "in_proj.bias", "out_proj.bias")  # the biases present in a block


def _benchmark_parameters(weights: Mapping[str, Tensor], config: MambaPeftConfig, d_state: int,
                          generator: Optional[torch.Generator]) -> nn.ModuleDict:
    """The trainable modules the benchmark's methods add to one block (every parameter trainable):

    - ``prefix``: :class:`theory.peft.PrefixParameters` (d_model, M), zero at start;
    - ``initial_state``: :class:`ssm_peft.state.StateAdapter` ``h_0`` (D, H), float32, zero at start;
    - ``state_offset``: :class:`ssm_peft.state.StateAdapter` ``h'`` (D, H), float32, zero at start (Kang et al.);
    - ``additional_scan``: ``A_log`` (D, n) = log(H+1..H+n) (S4D-real continued), ``W_B`` (n, D) ~ U(±1/√D)
      (nn.Linear's bound), ``W_C`` (n, D) = 0 (so the block starts as the frozen one).
    """
    W_in = weights["in_proj.weight"]
    D, dev, dt = weights["A_log"].shape[0], W_in.device, W_in.dtype
    added = nn.ModuleDict()
    if config.prefix_len:
        added["prefix"] = PrefixParameters(W_in.shape[1], config.prefix_len, dtype=dt).to(dev)
    for method in ("initial_state", "state_offset"):
        if getattr(config, method):
            added[method] = StateAdapter(method, "mamba1", (D, d_state), torch.float32, dev)
    if config.additional_states:
        n = config.additional_states
        m = nn.Module()
        m.A_log = nn.Parameter(torch.log(torch.arange(d_state + 1, d_state + n + 1, dtype=torch.float32)).repeat(D, 1).to(dev))
        W_B = (2 * torch.rand(n, D, generator=generator) - 1) / math.sqrt(D)
        m.W_B = nn.Parameter(W_B.to(dev, dt))  # (n, D)
        m.W_C = nn.Parameter(torch.zeros(n, D, device=dev, dtype=dt))  # (n, D)
        added["additional_scan"] = m
    return added


def _with_added_states(w: Dict[str, Tensor], add: nn.Module, dt_rank: int, H: int) -> Dict[str, Tensor]:
    """Effective weights with ``n`` added states: ``A_log`` (D, H + n), x_proj rows ``[W_Δ↓; W_B; W_B'; W_C; W_C']``."""
    xp = w["x_proj.weight"]  # (R + 2H, D)
    out = dict(w)
    out["x_proj.weight"] = torch.cat([xp[:dt_rank + H], add.W_B, xp[dt_rank + H:], add.W_C], dim=0)  # (R + 2(H+n), D)
    out["A_log"] = torch.cat([w["A_log"], add.A_log], dim=1)  # (D, H + n)
    return out


def _benchmark_block_forward(block: "PeftMambaBlock", hidden: Tensor, backend: Backend) -> Tensor:
    """A block with the benchmark's additions: prefix positions prepended (outputs there dropped); with an
    initial state or state offset, the unfused path plus :func:`ssm_peft.state.mamba1_state_terms` (gated by SiLU(z))."""
    added = block.added
    M = 0
    if "prefix" in added:
        M = added["prefix"].prefix.shape[1]
        hidden = torch.cat([added["prefix"].prefix.T.expand(hidden.shape[0], -1, -1), hidden], dim=1)
    w = block.effective_weights()
    H = block.d_state_effective
    if "initial_state" not in added and "state_offset" not in added:
        out = mamba_forward(w, hidden, d_state=H, dt_rank=block.dt_rank, scan_fn=backend.scan_fn,
                            inner_fn=None if block.fused_fallback(backend) else backend.inner_fn)
        return out[:, M:] if M else out
    x, z, dt_low, B, C = mamba_s6_inputs(w, hidden, H, block.dt_rank)
    delta = torch.einsum("dr,brn->bdn", w["dt_proj.weight"], dt_low)  # (Bt, D, N)
    y = backend.scan_fn(x, delta, -torch.exp(w["A_log"].float()), B, C, w["D"].float(), z=z,
                        delta_bias=w["dt_proj.bias"].float(), delta_softplus=True)  # (Bt, D, N), gated
    h0 = added["initial_state"].state if "initial_state" in added else None
    off = added["state_offset"].state if "state_offset" in added else None
    terms, _ = mamba1_state_terms(delta, -torch.exp(fp32_at_least(w["A_log"])), C, z, delta_bias=w["dt_proj.bias"],
                                  delta_softplus=True, h0=h0, offset=off)  # (Bt, D, N), gated
    y = y + terms.to(y.dtype)
    out = torch.einsum("md,bdn->bnm", w["out_proj.weight"], y)
    b_out = w.get("out_proj.bias")
    out = out if b_out is None else out + b_out
    return out[:, M:] if M else out


# -------------------------------------------------------------------------------- the registry
ALL_NAMES = PARAM_NAMES


def _rank(b):
    return int(b["rank"])


@dataclass(frozen=True)
class Method:
    """A registry entry: everything about one PEFT method in one place.

    ``method(budget)`` -> the :class:`MambaPeftConfig` a budget dict gives; ``budgets(cfg)`` -> the budget
    dicts an experiment config sweeps (read from its fields, e.g. ``cfg.lora_ranks``); ``trains``: False
    for an untrained baseline (one run, no lr grid).
    """

    name: str
    config: Callable[[dict], MambaPeftConfig]
    budgets: Callable[[object], List[dict]]
    trains: bool = True

    def __call__(self, budget: dict) -> MambaPeftConfig:
        return self.config(budget)


def _sdt_lora_budgets(c) -> List[dict]:
    """``"<channels>:<rank>"`` strings -> budgets; ValueError naming --sdt-lora otherwise."""
    out = []
    for s in c.sdt_lora:
        try:
            ch, r = (int(v) for v in s.split(":"))
        except ValueError:
            raise ValueError(f"--sdt-lora: expected '<channels>:<rank>' (e.g. 8:1), got {s!r}") from None
        out.append({"channels": ch, "rank": r})
    return out


METHODS: Dict[str, Method] = {m.name: m for m in (
    Method("Frozen", lambda b: MambaPeftConfig(), lambda c: [{}], trains=False),
    Method("LoRA (Proj)", lambda b: MambaPeftConfig(lora=PROJ_NAMES, lora_rank=_rank(b)),
           lambda c: [{"rank": r} for r in c.lora_ranks]),
    Method("LoRA (S6+Proj)", lambda b: MambaPeftConfig(lora=PROJ_NAMES + S6_LORA_NAMES, lora_rank=_rank(b)),
           lambda c: [{"rank": r} for r in c.lora_ranks]),
    Method("SDT", lambda b: MambaPeftConfig(sdt_channels=int(b["channels"])),
           lambda c: [{"channels": ch} for ch in c.sdt]),
    Method("SDT + LoRA", lambda b: MambaPeftConfig(sdt_channels=int(b["channels"]), lora=PROJ_NAMES,
                                                   lora_rank=_rank(b)), _sdt_lora_budgets),
    Method("Full", lambda b: MambaPeftConfig(full=ALL_NAMES), lambda c: [{}]),
)}
"""Method name -> :class:`Method`. Budgets: ``{"rank"}``, ``{"channels"}`` or both."""

BENCHMARK_METHODS: Dict[str, Method] = {m.name: m for m in (
    Method("Prompt tuning", lambda b: MambaPeftConfig(prompt_len=int(b["prompt_len"])),
           lambda c: [{"prompt_len": m} for m in c.prompt_lens]),
    Method("Prefix-tuning", lambda b: MambaPeftConfig(prefix_len=int(b["prefix_len"])),
           lambda c: [{"prefix_len": m} for m in c.prefix_lens]),
    Method("Initial-state tuning", lambda b: MambaPeftConfig(initial_state=True), lambda c: [{}]),
    Method("State-offset tuning", lambda b: MambaPeftConfig(state_offset=True), lambda c: [{}]),
    Method("BitFit", lambda b: MambaPeftConfig(full=BITFIT_NAMES), lambda c: [{}]),
    Method("DoRA (Proj)", lambda b: MambaPeftConfig(dora=PROJ_NAMES, lora_rank=_rank(b)),
           lambda c: [{"rank": r} for r in c.dora_ranks]),
    Method("Additional-scan", lambda b: MambaPeftConfig(additional_states=int(b["states"])),
           lambda c: [{"states": n} for n in c.additional_states]),
)}
"""The benchmark's other methods. BitFit trains the biases a block has (official ssm-peft
``cfg/peft/bitfit/conv_dt.json``: conv1d and dt_proj; Mamba's in_proj/out_proj have none by default).
State-offset tuning is Kang et al.'s ``STATE_OFFSET_TUNING`` / ssm-state-tuning's ``SILU_Z_C`` variant
(``y += SiLU(z) ⊙ C_t·h'``, dense h' (D, H), zero init), not the ``OUTPUT_TUNING`` / ``SILU_Z`` one
(``y += SiLU(z) ⊙ b``, b (D,)). Budgets: ``{"prompt_len"}``, ``{"prefix_len"}``, ``{}``, ``{"rank"}``,
``{"states"}``."""
METHODS.update(BENCHMARK_METHODS)


def frozen_param_count(layer_weights: Sequence[Mapping[str, Tensor]]) -> int:
    return sum(int(t.numel()) for w in layer_weights for t in w.values())


def trainable_count(module: nn.Module) -> int:
    return count_trainable(module)
