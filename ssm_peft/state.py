"""State-offset and initial-state tuning inside transformers' scans (Galim et al., ICML 2025, Sec. 3 and
Proposition 1; state-offset tuning: Kang et al., "State-offset tuning", ``y_t = C_t (h_t + h')``).

Both methods change the recurrence ``h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t x_t``, ``y_t = C_t h_t + D x_t``:

- initial state ``h_0`` (trainable, zero at start): ``h_t`` starts from ``h_0`` instead of 0, so
  ``y_t`` gains ``C_t (exp(A Σ_{s≤t} Δ_s) ⊙ h_0)`` and the final state gains ``exp(A Σ_s Δ_s) ⊙ h_0``.
  By Proposition 1 this is what a prefix does to the state (``h_0`` = the state a prefix leaves).
- state offset ``h'`` (trainable, zero at start): ``y_t = C_t (h_t + h') + D x_t``; the state itself is
  unchanged, so a cached generation carries no extra state.

Mamba-1 layout: ``h_0, h'`` are (D, H); the gate multiplies both terms (``y ⊙ SiLU(z)`` as the mixer does).
Mamba-2 layout: (nheads, P, N); the scan's own ``initial_states`` input takes ``h_0`` exactly, the offset is
added per head, ``y[h, p] += Σ_n C[g(h), n] h'[h, p, n]`` (the gate is applied later by the mixer's norm).

The terms are added to what the scan returns, so any scan implementation (the torch loop, mamba-ssm's
``selective_scan_fn``) gives the same adapted result. A fused kernel (``mamba_inner_fn``,
``mamba_split_conv1d_scan_combined``) takes neither term: while a state adapter is active the dispatcher
makes it return None, which is transformers' own signal to run the unfused path (documented there as
"Only kernels can use this shortcircuit, fallback to normal torch otherwise").

The dispatcher replaces a transformers modeling module's scan functions by wrappers once; a wrapper acts
only while a mixer with a state adapter is running (a per-thread stack filled by the mixer's forward
hooks) and otherwise calls the original unchanged.
"""

from __future__ import annotations

import threading
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ssm_peft.layouts import HF_SCAN_FUNCTIONS, hf_module
from ssm_peft.sparse import delta_dtype

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------- the formulas
def mamba1_state_terms(dt: Tensor, A: Tensor, C: Tensor, z: Optional[Tensor], *, delta_bias: Optional[Tensor],
                       delta_softplus: bool, h0: Optional[Tensor] = None,
                       offset: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
    """The extra output and final state of a Mamba-1 scan with an initial state and/or a state offset.

    dt (Bt, D, L) before bias and softplus; A (D, H) = −exp(A_log); C (Bt, H, L); z (Bt, D, L) or None;
    delta_bias (D,) or None; h0, offset (D, H) or None. Returns y_extra (Bt, D, L) =
    ``SiLU(z) ⊙ (C_t · (exp(A cumsum(Δ)_t) ⊙ h0) + C_t · h')`` and, with h0, the final-state extra
    (Bt, D, H) ``exp(A Σ_t Δ_t) ⊙ h0`` (else None). Computed in float32 at least (float64 when the state or C is).
    """
    wdt = torch.promote_types(torch.promote_types(torch.float32, (h0 if h0 is not None else offset).dtype), C.dtype)
    C = C.to(wdt)
    y = torch.zeros(C.shape[0], A.shape[0], C.shape[-1], dtype=wdt, device=C.device)  # (Bt, D, L)
    final = None
    if offset is not None:
        y = y + torch.einsum("bhl,dh->bdl", C, offset.to(wdt))
    if h0 is not None:
        delta = dt.to(wdt)
        if delta_bias is not None:
            delta = delta + delta_bias.to(wdt)[:, None]
        if delta_softplus:
            delta = F.softplus(delta)  # (Bt, D, L)
        decay = torch.exp(A.to(wdt)[None, :, None, :] * torch.cumsum(delta, dim=-1)[..., None])  # (Bt, D, L, H)
        y = y + torch.einsum("bhl,bdlh,dh->bdl", C, decay, h0.to(wdt))
        final = decay[:, :, -1] * h0.to(wdt)  # (Bt, D, H)
    if z is not None:
        y = y * F.silu(z.to(wdt))
    return y, final


def mamba1_step_offset(C: Tensor, offset: Tensor) -> Tensor:
    """One-token state offset before the gate: C (Bt, H), offset (D, H) -> (Bt, D) ``C · h'``."""
    wdt = torch.promote_types(torch.float32, offset.dtype)
    return torch.einsum("bh,dh->bd", C.to(wdt), offset.to(wdt))


def mamba2_offset(C: Tensor, offset: Tensor) -> Tensor:
    """Mamba-2 state offset: C (..., G, N), offset (nheads, P, N) -> (..., nheads, P), ``Σ_n C[g(h), n] h'[h, p, n]``."""
    wdt = torch.promote_types(torch.float32, offset.dtype)
    nheads, G = offset.shape[0], C.shape[-2]
    C_h = C.to(wdt).repeat_interleave(nheads // G, dim=-2)  # (..., nheads, N)
    return torch.einsum("...hn,hpn->...hp", C_h, offset.to(wdt))


# ---------------------------------------------------------------------------------- the adapter
class StateAdapter(nn.Module):
    """A mixer's trainable initial state or state offset. shape: (D, H) (mamba1) or (nheads, P, N) (mamba2)."""

    def __init__(self, method: str, layout: str, shape, dtype: torch.dtype, device=None):
        super().__init__()
        if method not in ("initial_state", "state_offset"):
            raise ValueError(f"method: 'initial_state' or 'state_offset', got {method!r}")
        self.method, self.layout, self.enabled = method, layout, True
        self.state = nn.Parameter(torch.zeros(tuple(shape), dtype=delta_dtype(dtype), device=device))
        self._handles = []

    @property
    def h0(self) -> Optional[Tensor]:
        return self.state if self.method == "initial_state" else None

    @property
    def offset(self) -> Optional[Tensor]:
        return self.state if self.method == "state_offset" else None

    def attach(self, mixer: nn.Module) -> None:
        """Install the scan wrappers of the mixer's modeling module and the push/pop hooks on the mixer."""
        install(hf_module(mixer), self.layout)
        self._handles = [mixer.register_forward_pre_hook(lambda m, a: _push(self)),
                         mixer.register_forward_hook(lambda m, a, o: _pop(self), always_call=True)]

    def detach_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def extra_repr(self) -> str:
        return f"{self.method}, shape={tuple(self.state.shape)}"


_LOCAL = threading.local()


def _stack():
    if not hasattr(_LOCAL, "stack"):
        _LOCAL.stack = []
    return _LOCAL.stack


def _push(adapter: StateAdapter) -> None:
    _stack().append(adapter)


def _pop(adapter: StateAdapter) -> None:
    stack = _stack()
    if stack and stack[-1] is adapter:
        stack.pop()


def active() -> Optional[StateAdapter]:
    """The state adapter of the mixer running now (None outside one, or when it is disabled)."""
    stack = _stack()
    return stack[-1] if stack and stack[-1].enabled else None


# ------------------------------------------------------------------------------- the wrappers
def _fused(original):
    def fused(*args, **kwargs):
        if active() is not None:
            return None  # transformers then runs its unfused path, where the scan wrapper acts
        return original(*args, **kwargs)
    return fused


def _mamba1_scan(original):
    def scan(hidden_states, dt, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
             return_last_state=False, **kwargs):
        out = original(hidden_states, dt, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                       return_last_state=return_last_state, **kwargs)
        ad = active()
        if ad is None:
            return out
        y, last = out if return_last_state else (out, None)
        y_extra, final = mamba1_state_terms(dt, A, C, z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                                            h0=ad.h0, offset=ad.offset)
        y = (y.to(y_extra.dtype) + y_extra).to(y.dtype)
        if not return_last_state:
            return y
        return y, (last if final is None else (last.to(final.dtype) + final).to(last.dtype))
    return scan


def _mamba2_scan(original):
    def scan(hidden_states, dt, A, B, C, chunk_size, D=None, dt_bias=None, initial_states=None, dt_softplus=False,
             dt_limit=(0.0, float("inf")), return_final_states=False, **kwargs):
        ad = active()
        if ad is not None and ad.h0 is not None and initial_states is None:
            initial_states = ad.h0[None].expand(hidden_states.shape[0], *ad.h0.shape)  # (Bt, nheads, P, N)
        out = original(hidden_states, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias, initial_states=initial_states,
                       dt_softplus=dt_softplus, dt_limit=dt_limit, return_final_states=return_final_states, **kwargs)
        if ad is None or ad.offset is None:
            return out
        y, last = out if return_final_states else (out, None)
        y = (y.to(ad.offset.dtype) + mamba2_offset(C, ad.offset)).to(y.dtype)  # (Bt, L, nheads, P)
        return (y, last) if return_final_states else y
    return scan


def _step(offset_term):
    """The one-token update's wrapper: adds ``SiLU(z) ⊙ offset_term(C, h')`` while a state offset is active (an
    initial state lives in the cached state already, so it needs nothing here)."""
    def make(original):
        def step(state, hidden_states, dt, A, B, C, D=None, dt_bias=None, dt_softplus=False, z=None, **kwargs):
            out = original(state, hidden_states, dt, A, B, C, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus, z=z,
                           **kwargs)
            ad = active()
            if ad is None or ad.offset is None:
                return out
            extra = offset_term(C, ad.offset)  # (Bt, D) or (Bt, nheads, P)
            if z is not None:
                extra = extra * F.silu(z.to(extra.dtype))
            return (out.to(extra.dtype) + extra).to(out.dtype)
        return step
    return make


WRAPPERS = {"mamba1": (_fused, _mamba1_scan, _step(mamba1_step_offset)),
            "mamba2": (_fused, _mamba2_scan, _step(mamba2_offset))}


def install(module, layout: str) -> None:
    """Wrap ``module``'s fused, scan and step functions (once; a function replaced since is wrapped again)."""
    for fn_name, make in zip(HF_SCAN_FUNCTIONS[layout], WRAPPERS[layout]):
        current = getattr(module, fn_name, None)
        if current is None:
            raise NotImplementedError(f"{module.__name__} has no {fn_name}: this transformers version is outside "
                                      "the tested range (see ssm_peft._peft_registry)")
        if getattr(current, "_ssm_peft_original", None) is not None:
            continue
        wrapper = make(current)
        wrapper._ssm_peft_original = current
        setattr(module, fn_name, wrapper)
