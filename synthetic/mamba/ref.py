"""A reference Mamba block in pure torch (Galim et al., ICML 2025, Sec. 3.1 and Sec. 6 "real Mamba").

Same parameter names, shapes and initialisation scheme as mamba-ssm's ``Mamba`` (``mamba_simple.py``),
so weights move between the two by ``state_dict``; no mamba-ssm import anywhere in this module.

Block, on hidden states ``h`` (Bt, N, d_model), with ``D = expand · d_model`` inner channels,
``H = d_state`` states and ``R = dt_rank``:
  1. ``[x; z] = W_in h``                                  in_proj.weight (2D, d_model)
  2. ``x = SiLU(causal depthwise conv1d(x))``             conv1d.weight (D, 1, d_conv), conv1d.bias (D,)
  3. ``[δ; B; C] = x_proj x``                             x_proj.weight (R + 2H, D) = [W_Δ↓; W_B; W_C]
  4. ``Δ = softplus(W_Δ↑ δ + β_Δ)``                       dt_proj.weight (D, R), dt_proj.bias (D,)
  5. S6 scan with ``A = −exp(A_log)`` (D, H), skip ``D`` (D,), gate ``y ⊙ SiLU(z)``
  6. ``out = W_out y``                                    out_proj.weight (d_model, D)

:func:`selective_scan_reference` has the signature and semantics of mamba-ssm's ``selective_scan_fn``
(real ``A``, time-varying ``B, C`` of shape (Bt, H, N)); it is the batched twin of
:func:`theory.s6.selective_scan` (tested against it in float64) with the skip, gate and softplus added.
:func:`mamba_forward` is the block as a pure function of a weight dict, so PEFT wrappers can pass
*effective* weights (frozen + update) to either backend's scan; :class:`MambaRef` is the module.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

# Names of a Mamba block's parameters (mamba-ssm layout), in creation order.
PARAM_NAMES = ("in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
               "dt_proj.bias", "A_log", "D", "out_proj.weight")
OPTIONAL_NAMES = ("in_proj.bias", "out_proj.bias")


def selective_scan_reference(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                             D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                             delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                             return_last_state: bool = False):
    """Selective scan with the signature and semantics of mamba-ssm's ``selective_scan_fn`` (real A).

    u, delta, z: (Bt, D, N); A: (D, H) real; B, C: (Bt, H, N); D, delta_bias: (D,).
    ``Δ = softplus(delta + delta_bias)`` (softplus optional), then per channel d and state n
    ``h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t u_t``, ``y_t = C_t · h_t + D u_t``, then ``y ⊙ SiLU(z)``.
    The discretised ``Ā, B̄u`` are computed for all steps at once; only the first-order recurrence
    runs as a loop over N (a chunked closed form was tried and is 5-20x slower on CPU at our sizes).
    fp16/bf16 inputs are computed in fp32, as mamba-ssm does. Returns y (Bt, D, N) in u's dtype
    [and the last state (Bt, D, H)].
    """
    if A.is_complex():
        raise ValueError("A: complex A is not supported by the reference scan (Mamba's A is real)")
    if B.dim() != 3 or C.dim() != 3:
        raise ValueError("B, C: expected time-varying (Bt, H, N) tensors")
    Bt, Dc, N = u.shape
    H = A.shape[1]
    if delta.shape != u.shape or A.shape[0] != Dc or B.shape != (Bt, H, N) or C.shape != (Bt, H, N):
        raise ValueError(f"shapes: u {tuple(u.shape)}, delta {tuple(delta.shape)}, A {tuple(A.shape)}, "
                         f"B {tuple(B.shape)}, C {tuple(C.shape)} do not match (Bt, D, N), (D, H), (Bt, H, N)")
    dtype_in = u.dtype
    wdt = torch.float64 if dtype_in == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(wdt) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(wdt)[:, None]
    if delta_softplus:
        delta = torch.nn.functional.softplus(delta)
    A_bar = torch.exp(delta[..., None] * A[None, :, None, :])  # (Bt, D, N, H)
    B_bar_u = (delta * u)[..., None] * B.transpose(1, 2)[:, None]  # (Bt, D, N, H)
    h = u.new_zeros(Bt, Dc, H)  # (Bt, D, H)
    hs = []
    for A_bar_t, B_bar_u_t in zip(A_bar.unbind(2), B_bar_u.unbind(2)):  # unbind: one backward op, not N slices
        h = A_bar_t * h + B_bar_u_t
        hs.append(h)
    y = torch.einsum("bdnh,bhn->bdn", torch.stack(hs, dim=2), C)  # (Bt, D, N)
    if D is not None:
        y = y + D.to(wdt)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(wdt))
    y = y.to(dtype_in)
    return (y, h) if return_last_state else y


ScanFn = Callable[..., Tensor]


def _opt(w: Mapping[str, Optional[Tensor]], name: str) -> Optional[Tensor]:
    return w.get(name) if hasattr(w, "get") else None


def linear_map(w, x: Tensor, eq: str) -> Tensor:
    """``einsum(eq, w, x)`` for a weight tensor ``w``; an object with ``.linear(x, eq)`` (e.g. an
    activation-side LoRA with dropout, :class:`synthetic.mamba.peft.DropoutLoRA`) applies itself."""
    return torch.einsum(eq, w, x) if isinstance(w, Tensor) else w.linear(x, eq)


def mamba_s6_inputs(w: Mapping[str, Tensor], hidden: Tensor, d_state: int, dt_rank: int):
    """Steps 1-3 of the block: ``(x, z, δ_low, B, C)`` from hidden (Bt, N, d_model).

    x, z: (Bt, D, N) (x after conv + SiLU); dt_low: (Bt, R, N) = W_Δ↓ x; B, C: (Bt, H, N).
    """
    Bt, N, _ = hidden.shape
    xz = linear_map(w["in_proj.weight"], hidden, "ed,bnd->ben")  # (Bt, 2D, N)
    b_in = _opt(w, "in_proj.bias")
    if b_in is not None:
        xz = xz + b_in[None, :, None]
    x, z = xz.chunk(2, dim=1)  # (Bt, D, N) each
    conv_w = w["conv1d.weight"]  # (D, 1, W)
    x = F.silu(F.conv1d(x, conv_w, w.get("conv1d.bias"), padding=conv_w.shape[-1] - 1,
                        groups=conv_w.shape[0])[..., :N])  # (Bt, D, N): causal depthwise conv
    x_dbl = linear_map(w["x_proj.weight"], x, "rd,bdn->brn")  # (Bt, R + 2H, N)
    dt_low, B, C = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=1)
    return x, z, dt_low, B.contiguous(), C.contiguous()


def fp32_at_least(t: Tensor) -> Tensor:
    """``t`` in float32, or float64 if it is float64: the scan's working precision (half types go up
    to float32 as mamba-ssm does; a float64 block stays float64 throughout)."""
    return t if t.dtype == torch.float64 else t.float()


def mamba_forward(w: Mapping[str, Tensor], hidden: Tensor, *, d_state: int, dt_rank: int,
                  scan_fn: ScanFn = selective_scan_reference, inner_fn: Optional[Callable] = None) -> Tensor:
    """The Mamba block as a pure function of its weights; hidden (Bt, N, d_model) -> (Bt, N, d_model).

    ``scan_fn`` is a ``selective_scan_fn``-compatible scan (ours, or mamba-ssm's CUDA kernel).
    With ``inner_fn`` (mamba-ssm's fused ``mamba_inner_fn``, which needs causal-conv1d), steps 2-6
    run in one fused kernel that reads the x_proj/dt_proj/out_proj weights *we pass*, so adapted
    (effective) weights are in the compute path either way. The fused kernel needs weight tensors:
    if a linear map is given as an activation-side op (:func:`linear_map`), pass ``inner_fn=None``
    (``ValueError`` otherwise).
    """
    A = -torch.exp(fp32_at_least(w["A_log"]))  # (D, H)
    if inner_fn is not None:
        ops = [k for k in ("in_proj.weight", "x_proj.weight", "dt_proj.weight", "out_proj.weight")
               if not isinstance(w[k], Tensor)]
        if ops:
            raise ValueError(f"inner_fn: the fused path needs weight tensors, got activation-side ops for {ops}")
        b_in = _opt(w, "in_proj.bias")
        xz = torch.einsum("ed,bnd->ben", w["in_proj.weight"], hidden)  # (Bt, 2D, N)
        if b_in is not None:
            xz = xz + b_in[None, :, None]
        return inner_fn(xz, w["conv1d.weight"], w.get("conv1d.bias"), w["x_proj.weight"], w["dt_proj.weight"],
                        w["out_proj.weight"], _opt(w, "out_proj.bias"), A, None, None, w["D"].float(),
                        delta_bias=w["dt_proj.bias"].float(), delta_softplus=True)
    x, z, dt_low, B, C = mamba_s6_inputs(w, hidden, d_state, dt_rank)
    delta = linear_map(w["dt_proj.weight"], dt_low, "dr,brn->bdn")  # (Bt, D, N), bias added in the scan
    y = scan_fn(x, delta, A, B, C, fp32_at_least(w["D"]), z=z, delta_bias=fp32_at_least(w["dt_proj.bias"]),
                delta_softplus=True)  # (Bt, D, N)
    out = linear_map(w["out_proj.weight"], y, "md,bdn->bnm")  # (Bt, N, d_model)
    b_out = _opt(w, "out_proj.bias")
    return out if b_out is None else out + b_out


def delta_of(w: Mapping[str, Tensor], hidden: Tensor, d_state: int, dt_rank: int) -> Tensor:
    """``Δ = softplus(W_Δ↑ W_Δ↓ x + β_Δ)`` (Bt, D, N) for the block's input ``hidden``."""
    _, _, dt_low, _, _ = mamba_s6_inputs(w, hidden, d_state, dt_rank)
    return F.softplus(linear_map(w["dt_proj.weight"], dt_low, "dr,brn->bdn") + w["dt_proj.bias"][None, :, None])


class MambaRef(nn.Module):
    """Pure-torch Mamba block with mamba-ssm's parameter names, shapes and initialisation scheme.

    d_model: model width; d_state: H; expand: D / d_model; dt_rank: R ("auto" = ceil(d_model/16)).
    forward(hidden (Bt, N, d_model)) -> (Bt, N, d_model), using :func:`selective_scan_reference`.

    dtype: every parameter's dtype (default torch's default dtype), ``A_log`` and ``D`` included, so a
    float64 block is float64 throughout. fp32_ssm_params: keep ``A_log`` and ``D`` in float32 whatever
    ``dtype`` is, as mamba-ssm's ``Mamba`` does (for a block that must mirror its numerics, e.g. a
    bf16 block held against it).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank="auto",
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4, conv_bias: bool = True,
                 bias: bool = False, device=None, dtype=None, fp32_ssm_params: bool = False):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        D = self.d_inner
        self.in_proj = nn.Linear(d_model, 2 * D, bias=bias, **kw)
        self.conv1d = nn.Conv1d(D, D, kernel_size=d_conv, groups=D, padding=d_conv - 1, bias=conv_bias, **kw)
        self.x_proj = nn.Linear(D, self.dt_rank + 2 * d_state, bias=False, **kw)
        self.dt_proj = nn.Linear(self.dt_rank, D, bias=True, **kw)
        std = self.dt_rank ** -0.5  # keeps Δ's pre-activation variance O(1) at initialisation
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        # β_Δ = softplus^{-1}(Δ0) with Δ0 log-uniform in [dt_min, dt_max]: initial step sizes span the range
        dt0 = torch.exp(torch.rand(D, **kw) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt0 = dt0.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt0 + torch.log(-torch.expm1(-dt0)))
        ssm_dtype = torch.float32 if fp32_ssm_params else (dtype or torch.get_default_dtype())
        # S4D-real initialisation: A^(d) = −(1, 2, ..., H) for every channel, stored as A_log
        A = torch.arange(1, d_state + 1, dtype=ssm_dtype, device=device).repeat(D, 1)  # (D, H)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(D, dtype=ssm_dtype, device=device))  # skip term
        self.out_proj = nn.Linear(D, d_model, bias=bias, **kw)

    def weights(self) -> Dict[str, Tensor]:
        return dict(self.named_parameters())

    def forward(self, hidden: Tensor) -> Tensor:
        return mamba_forward(self.weights(), hidden, d_state=self.d_state, dt_rank=self.dt_rank)


def block_weights(block: nn.Module) -> Dict[str, Tensor]:
    """Detached copies of a Mamba block's parameters by mamba-ssm name (works for mamba-ssm's
    ``Mamba`` and :class:`MambaRef`); checks that every required name is present."""
    w = {k: v.detach().clone() for k, v in block.named_parameters()}
    missing = [k for k in PARAM_NAMES if k not in w]
    if missing:
        raise ValueError(f"block: missing Mamba parameters {missing}")
    return w
