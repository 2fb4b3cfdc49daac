"""PEFT on Mamba-II (SSD) blocks: LoRA, DoRA, SDT with heads as channels and B/C states as states, and
Algorithm 1's selection for them (Galim et al., ICML 2025, Secs. 5-6 and App. C.2; the Mamba-I counterpart
is :mod:`synthetic.mamba.peft`, whose ``Backend`` and ``Method`` types and helpers are reused here).

Every method wraps the frozen weights of one block (mamba-ssm ``Mamba2`` names, :mod:`synthetic.mamba2.ref`)
and builds the block's effective weights (frozen + update) on each forward, passed to the functional block
:func:`synthetic.mamba2.ref.mamba2_forward` with the backend's SSD scan.

in_proj's rows are ``[z; x | B; C; δ]``: the first ``2D`` rows are the linear projection (the S6 block's
``W_in``), the last ``2GN + Hh`` rows are the SSM's input-dependent parameters (Mamba-I's ``x_proj`` and
``dt_proj``: ``W_B``, ``W_C``, ``W_Δ``). Targets: ``in_proj.weight`` (whole), ``in_proj.zx`` (the projection
rows), ``in_proj.ssm`` (the ``[B; C; δ]`` rows), ``out_proj.weight``, and any parameter name in full.

**SDT on Mamba-II (Algorithm 1 for SSD)**. A head is Mamba-II's channel: its P channels share one decay
``a_h`` and one step ``Δ_t^(h)``, and ``Ā_t^(h) = exp(Δ_t^(h) a_h)`` is a scalar per head. A state is one of the
N coordinates of a group's ``B_t, C_t``, produced by one row of ``W_B`` and one of ``W_C``. Selection:
  1. warm up the SSM parameters (``A_log``, ``dt_bias``, the ``[B; C; δ]`` rows of in_proj) on a copy;
  2. score head h by the mean change of ``Ā_t^(h)`` over a probe batch (:func:`head_change_scores`), keep the
     top ``k`` heads per layer;
  3. score state n of group g by the warm-up change of its rows, ``‖ΔW_B[g,n]‖ + ‖ΔW_C[g,n]‖``
     (:func:`state_change_scores`): the states of a head share its eigenvalue, so Ā cannot rank them (the
     Mamba-I/S4 rule ranks states by their A); B/C's rows are the only per-state parameters. Keep the top ``s``
     states per group.
  4. train ``A_log[h]`` for the selected heads and the ``W_B``, ``W_C`` rows of the selected states in every
     group that holds a selected head (rows are shared by the group's heads); everything else is frozen.
The scores, the selection and the trainable index sets are :mod:`ssm_peft`'s (:func:`ssm_peft.selection.abar_change`,
:func:`ssm_peft.selection.bc_change_scores`, :func:`ssm_peft.selection.sdt_indices`), the adapter its
:class:`ssm_peft.sparse.SparseDelta` (storing the trainable entries' values), as on a real ``Mamba2Mixer``.
Why so few states can do: for an LTI head only ``Δ a`` and ``Δ C·B`` matter (:mod:`theory.mamba2`), so one
state per head reaches every LTI target head (a head with its own B/C: the heads of a group share the rows, which
the lemma does not cover); more states help only through the selective (input-dependent) ``B_t, C_t``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ssm_peft.layouts import MixerDims
from ssm_peft.selection import abar_change, bc_change_scores, sdt_indices, select_channels
from ssm_peft.sparse import SparseDelta
from synthetic.mamba.backends import Backend, mamba_ssm_available  # noqa: F401 (mamba_ssm_available: re-exported)
from synthetic.mamba.peft import (Method, frozen_param_count, residual_stack,  # noqa: F401 (re-exported)
                                  trainable_count)
from synthetic.mamba2.ref import (PARAM_NAMES, Mamba2Ref, effective_delta, mamba2_dims, mamba2_forward,
                                  ssd_scan_chunked)
from theory.peft import DoRAMatrix, LoRAConfig, LoRAMatrix

Tensor = torch.Tensor

PIECES = ("in_proj.zx", "in_proj.ssm")  # row blocks of in_proj: [z; x] and [B; C; δ]
LORA_TARGETS = ("in_proj.weight",) + PIECES + ("out_proj.weight",)
FULL_TARGETS = PARAM_NAMES + PIECES + ("in_proj.bias", "out_proj.bias")
WARMUP_FULL = ("A_log", "dt_bias", "in_proj.ssm")  # what Algorithm 1's warm-up trains


# ------------------------------------------------------------------------------------- backends
def _reference_backend() -> Backend:
    return Backend("reference", ssd_scan_chunked, None, Mamba2Ref, "n/a")


def _mamba_ssm_backend() -> Backend:
    """mamba-ssm's Triton SSD kernel ``mamba_chunk_scan_combined`` as the scan, its ``Mamba2`` as the block
    class of the frozen/target models (imported lazily: mamba-ssm fails to import without CUDA)."""
    if not torch.cuda.is_available():
        raise RuntimeError("backend mamba_ssm: needs CUDA")
    import mamba_ssm
    from mamba_ssm import Mamba2
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    return Backend("mamba_ssm", mamba_chunk_scan_combined, None, Mamba2, mamba_ssm.__version__)


BACKENDS: Dict[str, Callable[[], Backend]] = {"reference": _reference_backend, "mamba_ssm": _mamba_ssm_backend}


def get_backend(name: str = "auto") -> Backend:
    if name == "auto":
        name = "mamba_ssm" if mamba_ssm_available() else "reference"
    if name not in BACKENDS:
        raise ValueError(f"backend: one of {sorted(BACKENDS)} or 'auto', got {name!r}")
    return BACKENDS[name]()


# ------------------------------------------------------------------------------------ the config
@dataclass(frozen=True)
class Mamba2PeftConfig:
    """Which parameters of each block are updated, and how.

    lora / dora: targets given a rank-``lora_rank`` LoRA / DoRA update (subsets of :data:`LORA_TARGETS`; the
    rank is clamped to each matrix's smaller side). full: targets trained in full (:data:`FULL_TARGETS`).
    sdt_heads, sdt_states: SDT's heads per layer and states per group (both > 0, or both 0).
    """

    lora: Tuple[str, ...] = ()
    lora_rank: int = 0
    lora_alpha: Optional[float] = None
    dora: Tuple[str, ...] = ()
    full: Tuple[str, ...] = ()
    sdt_heads: int = 0
    sdt_states: int = 0

    @property
    def sdt_channels(self) -> int:
        """Heads are Mamba-II's channels (the name the shared Mamba trainer reads)."""
        return self.sdt_heads

    def __post_init__(self):
        for name, allowed in (("lora", LORA_TARGETS), ("dora", LORA_TARGETS), ("full", FULL_TARGETS)):
            bad = [t for t in getattr(self, name) if t not in allowed]
            if bad:
                raise ValueError(f"{name}: unknown targets {bad}; choose from {allowed}")
        if (self.lora or self.dora) and (isinstance(self.lora_rank, bool) or self.lora_rank < 1):
            raise ValueError("lora_rank: must be an integer >= 1 when lora or dora targets are given")
        named = list(self.lora) + list(self.dora) + list(self.full)
        if len(set(named)) != len(named):
            raise ValueError(f"lora/dora/full: a target may appear once, got {named}")
        whole = "in_proj.weight" in named
        if whole and set(PIECES) & set(named):
            raise ValueError("in_proj.weight: given whole, its row blocks in_proj.zx / in_proj.ssm cannot be given too")
        for v, n in ((self.sdt_heads, "sdt_heads"), (self.sdt_states, "sdt_states")):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{n}: must be an integer >= 0, got {v!r}")
        if bool(self.sdt_heads) != bool(self.sdt_states):
            raise ValueError("sdt_heads, sdt_states: SDT needs both > 0 (heads per layer, states per group), or both 0")
        if self.sdt_heads and ({"in_proj.weight", "in_proj.ssm", "A_log"} & set(named)):
            raise ValueError("SDT trains A_log and the B/C rows of in_proj; in_proj.weight, in_proj.ssm or A_log as "
                             "a lora/dora/full target as well is not supported")


def in_proj_rows(d_inner: int, ngroups: int, d_state: int, nheads: int) -> Dict[str, Tuple[int, int]]:
    """Row ranges of in_proj: ``zx`` [z; x], ``BC`` [B; C], ``dt`` δ (``ssm`` = BC + dt)."""
    a, b = 2 * d_inner, 2 * d_inner + 2 * ngroups * d_state
    return {"zx": (0, a), "BC": (a, b), "dt": (b, b + nheads), "ssm": (a, b + nheads)}


def _dims(weights: Mapping[str, Tensor], ngroups: int) -> MixerDims:
    d_inner, nheads, P, N = mamba2_dims(weights, ngroups)
    return MixerDims("mamba2", D=nheads, H=N, G=ngroups, P=P, d_inner=d_inner)


def _key(name: str) -> str:
    return name.replace(".", "__")


class PeftMamba2Block(nn.Module):
    """One Mamba2 block's frozen weights plus the updates of a :class:`Mamba2PeftConfig`.

    heads: SDT's selected heads (needed iff ``config.sdt_heads``; that many); states: SDT's states per group (one
    list of ``config.sdt_states`` per group). ``roles`` maps each target to frozen / full / lora / dora / sdt.
    """

    def __init__(self, weights: Mapping[str, Tensor], *, ngroups: int, config: Mamba2PeftConfig,
                 heads: Optional[Sequence[int]] = None, states: Optional[Sequence[Sequence[int]]] = None,
                 generator: Optional[torch.Generator] = None, chunk_size: int = 64):
        super().__init__()
        self.config, self.ngroups, self.chunk_size = config, ngroups, chunk_size
        d_inner, nheads, _, N = mamba2_dims(weights, ngroups)
        self.rows = in_proj_rows(d_inner, ngroups, N, nheads)
        self.frozen, self.full, self.lora, self.sdt = nn.Module(), nn.ParameterDict(), nn.ModuleDict(), nn.ModuleDict()
        self.roles: Dict[str, str] = {}
        if config.sdt_heads:
            if heads is None or len(heads) != config.sdt_heads or states is None or \
                    any(len(s) != config.sdt_states for s in states):
                raise ValueError(f"heads, states: SDT needs {config.sdt_heads} heads and {config.sdt_states} states "
                                 f"per group, got {heads} and {states}")
        elif heads or states:
            raise ValueError("heads/states: given but config.sdt_heads is 0")
        self.heads = None if heads is None else [int(h) for h in heads]
        self.states = None if states is None else [[int(s) for s in st] for st in states]
        split = config.sdt_heads or set(PIECES) & set(config.lora + config.dora + config.full)
        tensors = {k: v.detach() for k, v in weights.items() if not (split and k == "in_proj.weight")}
        if split:
            W = weights["in_proj.weight"].detach()
            tensors["in_proj.zx"] = W[slice(*self.rows["zx"])]
            if config.sdt_heads:  # A_log's selected heads, in_proj's selected B/C rows (offset to the [B; C; δ] block)
                idx = sdt_indices(_dims(weights, ngroups), {"channels": self.heads, "states": self.states},
                                  in_features=W.shape[1])
                idx["in_proj.ssm"] = [i - self.rows["ssm"][0] * W.shape[1] for i in idx.pop("in_proj.weight")]
                for name, w in (("A_log", weights["A_log"].detach()), ("in_proj.ssm", W[slice(*self.rows["ssm"])])):
                    self.frozen.register_buffer(_key(name), w.clone())
                    i = torch.as_tensor(idx[name], dtype=torch.long, device=w.device)
                    self.sdt[_key(name)] = SparseDelta(w.shape, i, w.dtype, w.device, values=w.reshape(-1)[i])
                    self.roles[name] = "sdt"
                del tensors["A_log"]
            else:
                tensors["in_proj.ssm"] = W[slice(*self.rows["ssm"])]
        for name, w in tensors.items():
            k = _key(name)
            if name in config.dora or name in config.lora:
                cls = DoRAMatrix if name in config.dora else LoRAMatrix
                self.lora[k] = cls(w, LoRAConfig(min(config.lora_rank, *w.shape), config.lora_alpha), generator=generator)
                self.roles[name] = "dora" if name in config.dora else "lora"
            elif name in config.full:
                self.full[k] = nn.Parameter(w.clone())
                self.roles[name] = "full"
            else:
                self.frozen.register_buffer(k, w.clone())
                self.roles[name] = "frozen"

    def _get(self, name: str) -> Tensor:
        role, k = self.roles[name], _key(name)
        if role in ("lora", "dora"):
            return self.lora[k]()
        return self.full[k] if role == "full" else getattr(self.frozen, k)

    def effective_weights(self) -> Dict[str, Tensor]:
        """The weight dict :func:`mamba2_forward` takes (mamba-ssm names; in_proj re-assembled from its row blocks)."""
        out = {n: self._get(n) for n in self.roles if n not in PIECES and self.roles[n] != "sdt"}
        if self.config.sdt_heads:
            out["A_log"] = self.sdt["A_log"](self.frozen.A_log)
            ssm = self.sdt["in_proj__ssm"](self.frozen.in_proj__ssm)  # (2GN + Hh, d_model)
            out["in_proj.weight"] = torch.cat([self._get("in_proj.zx"), ssm], dim=0)
        elif "in_proj.zx" in self.roles:
            out["in_proj.weight"] = torch.cat([self._get("in_proj.zx"), self._get("in_proj.ssm")], dim=0)
        return out

    def fused_fallback(self, backend: Backend) -> Optional[str]:
        """No fused path on Mamba-II here (the scan kernel reads the effective weights' outputs)."""
        return None

    def forward(self, hidden: Tensor, backend: Backend) -> Tensor:
        return mamba2_forward(self.effective_weights(), hidden, ngroups=self.ngroups, chunk_size=self.chunk_size,
                              scan_fn=backend.scan_fn)


class PeftMamba2Stack(nn.Module):
    """A residual stack of :class:`PeftMamba2Block` over the frozen model's per-layer weights; heads/states: per layer."""

    def __init__(self, layer_weights: Sequence[Mapping[str, Tensor]], *, ngroups: int, config: Mamba2PeftConfig,
                 heads=None, states=None, generator: Optional[torch.Generator] = None, chunk_size: int = 64):
        super().__init__()
        n = len(layer_weights)
        self.blocks = nn.ModuleList(
            PeftMamba2Block(w, ngroups=ngroups, config=config, heads=h, states=s, generator=generator,
                            chunk_size=chunk_size)
            for w, h, s in zip(layer_weights, heads or [None] * n, states or [None] * n))

    def forward(self, hidden: Tensor, backend: Backend) -> Tensor:
        return residual_stack([lambda h, b=b: b(h, backend) for b in self.blocks], hidden)

    def fused_fallback(self, backend: Backend) -> Optional[str]:
        return None


# ----------------------------------------------------------------------- Algorithm 1 for SSD
def head_change_scores(w_before: Mapping[str, Tensor], w_after: Mapping[str, Tensor], hidden: Tensor,
                       ngroups: int) -> Tensor:
    """Per head h: mean over batch and time of ``|Ā_t^(h),after − Ā_t^(h),before|``, ``Ā = exp(Δ_t a_h)``,
    both on the block input ``hidden`` (Bt, L, d_model) (:func:`ssm_peft.selection.abar_change`). (Hh,) float32."""
    with torch.no_grad():
        before, after = ((effective_delta(w, hidden, ngroups).float(), -torch.exp(w["A_log"].float()))
                         for w in (w_before, w_after))
        return abar_change(*before, *after, "mamba2")[0]


def state_change_scores(w_before: Mapping[str, Tensor], w_after: Mapping[str, Tensor], ngroups: int) -> Tensor:
    """(G, N): ``‖ΔW_B[g, n]‖ + ‖ΔW_C[g, n]‖`` (:func:`ssm_peft.selection.bc_change_scores`)."""
    return bc_change_scores(w_before["in_proj.weight"], w_after["in_proj.weight"], _dims(w_before, ngroups))


def select_heads_states(head_scores: Tensor, state_scores: Tensor, n_heads: int, n_states: int):
    """Top ``n_heads`` heads and, per group, top ``n_states`` states (ties by lower index; sorted)."""
    if not 1 <= n_states <= state_scores.shape[1]:
        raise ValueError(f"n_states: must be in [1, {state_scores.shape[1]}] (d_state), got {n_states}")
    return select_channels(head_scores, n_heads), [select_channels(s, n_states) for s in state_scores]


# -------------------------------------------------------------------------------- the registry
def _rank(b):
    return int(b["rank"])


def _parse_budgets(strings: Sequence[str], keys: Tuple[str, ...], option: str) -> List[dict]:
    """``"<heads>x<states>[:<rank>]"`` strings -> budget dicts with ``keys`` (heads are Mamba-II's channels);
    ValueError naming the option otherwise."""
    out = []
    for s in strings:
        try:
            head, _, rank = s.partition(":")
            vals = [int(v) for v in head.split("x")] + ([int(rank)] if rank else [])
            if len(vals) != len(keys):
                raise ValueError
        except ValueError:
            want = "x".join("<" + k + ">" for k in keys[:2]) + (":<rank>" if len(keys) > 2 else "")
            raise ValueError(f"--{option}: expected '{want}', got {s!r}") from None
        out.append(dict(zip(keys, vals)))
    return out


PROJ = ("in_proj.weight", "out_proj.weight")
METHODS: Dict[str, Method] = {m.name: m for m in (
    Method("Frozen", lambda b: Mamba2PeftConfig(), lambda c: [{}], trains=False),
    Method("LoRA (Proj)", lambda b: Mamba2PeftConfig(lora=PROJ, lora_rank=_rank(b)),
           lambda c: [{"rank": r} for r in c.lora_ranks]),
    Method("LoRA (SSM+Proj)", lambda b: Mamba2PeftConfig(lora=("in_proj.zx", "in_proj.ssm", "out_proj.weight"),
                                                         lora_rank=_rank(b), full=("A_log",)),
           lambda c: [{"rank": r} for r in c.lora_ranks]),
    Method("SDT", lambda b: Mamba2PeftConfig(sdt_heads=int(b["heads"]), sdt_states=int(b["states"])),
           lambda c: _parse_budgets(c.sdt, ("heads", "states"), "sdt")),
    Method("SDT + LoRA", lambda b: Mamba2PeftConfig(sdt_heads=int(b["heads"]), sdt_states=int(b["states"]),
                                                    lora=("in_proj.zx", "out_proj.weight"), lora_rank=_rank(b)),
           lambda c: _parse_budgets(c.sdt_lora, ("heads", "states", "rank"), "sdt-lora")),
    Method("DoRA (Proj)", lambda b: Mamba2PeftConfig(dora=PROJ, lora_rank=_rank(b)),
           lambda c: [{"rank": r} for r in c.dora_ranks]),
    Method("Full", lambda b: Mamba2PeftConfig(full=PARAM_NAMES), lambda c: [{}]),
)}
"""Method name -> :class:`synthetic.mamba.peft.Method`. LoRA (SSM+Proj): rank-r LoRA on in_proj's projection rows
[z; x], separately on its SSM rows [B; C; δ] (Mamba-I's x_proj/dt_proj), on out_proj, and A_log (one scalar per
head: a vector, so trained in full where Mamba-I's LoRA (S6) treats the (D, H) A_log as a matrix). SDT + LoRA:
SDT on the SSM part, LoRA on the projections (in_proj's [z; x] rows and out_proj)."""
