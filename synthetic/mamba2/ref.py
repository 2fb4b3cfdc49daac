"""A reference Mamba-II (SSD) block in pure torch (Galim et al., ICML 2025, Sec. 2 and App. C.2; Dao & Gu,
ICML 2024, "Transformers are SSMs", Sec. 6-7 and Listing 1).

Same parameter names, shapes and initialisation scheme as mamba-ssm's ``Mamba2`` (``modules/mamba2.py``,
``rmsnorm=True``, ``norm_before_gate=False``, ``D_has_hdim=False``, ``d_ssm = d_inner``), so weights move
between the two by ``state_dict``; no mamba-ssm import here. With ``D = expand · d_model`` inner channels in
``Hh = D / P`` heads of ``P = headdim`` channels, ``G = ngroups`` groups of ``N = d_state`` states:

  1. ``[z; x; B; C; δ] = W_in u``            in_proj.weight (2D + 2GN + Hh, d_model), rows in that order
  2. ``[x; B; C] = SiLU(causal depthwise conv1d([x; B; C]))``   conv1d.weight (D + 2GN, 1, d_conv), .bias
  3. per head h (group g(h) = h // (Hh/G)), ``Δ_t = softplus(δ_t,h + dt_bias_h)``, ``a_h = −exp(A_log_h)``:
        ``S_t = exp(Δ_t a_h) S_{t−1} + Δ_t x_t B_t,gᵀ``  (P, N),   ``y_t = S_t C_t,g + D_h x_t``
  4. ``y = RMSNorm_G(y ⊙ SiLU(z)) ⊙ norm.weight``  (gated RMSNorm, one group of D/G channels per B/C group)
  5. ``out = W_out y``                         out_proj.weight (d_model, D)

Step 3 has two implementations with one signature (a subset of mamba-ssm's ``mamba_chunk_scan_combined``):
:func:`ssd_scan_chunked` (the SSD block decomposition: quadratic attention-like form inside chunks, a
recurrence between chunks; vectorised, the fast path) and :func:`ssd_scan_recurrent` (the plain
time-step recurrence above, the reference twin). :func:`mamba2_forward` is the block as a pure function of a
weight dict, so PEFT wrappers pass effective weights; :class:`Mamba2Ref` is the module.
"""

from __future__ import annotations

import math
import operator
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

# Names of a Mamba2 block's parameters (mamba-ssm layout), in creation order.
PARAM_NAMES = ("in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D", "norm.weight",
               "out_proj.weight")
OPTIONAL_NAMES = ("in_proj.bias", "out_proj.bias")
RMS_EPS = 1e-5  # mamba-ssm's Mamba2 norm eps


def _work_dtype(t: Tensor) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32 (as mamba-ssm's kernels do)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _check_scan_inputs(x, dt, A, B, C, D, z, dt_bias):
    """Real dtypes only (the scan's exp and SiLU are real maps; a complex input would lose its imaginary part), a
    decay rate ``A <= 0`` per head (``a_h = −exp(A_log) < 0``; a positive A grows without bound and the chunked
    form's ``exp`` of its segment sums gives inf − inf = NaN), and the shapes below."""
    for name, t in (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z), ("dt_bias", dt_bias)):
        if t is not None and (t.is_complex() or not t.is_floating_point()):
            raise TypeError(f"{name}: expected a real floating dtype (float32/float64/float16/bfloat16), got {t.dtype}")
    b, l, h, g = _check_scan_shapes(x, dt, A, B, C, D)
    if bool((A > 0).any()):
        raise ValueError(f"A: must be <= 0 per head (a = -exp(A_log) < 0: the state decays), got max {A.max().item():.3g}")
    return b, l, h, g


def _check_scan_shapes(x, dt, A, B, C, D):
    if x.dim() != 4 or dt.dim() != 3 or A.dim() != 1 or B.dim() != 4 or C.dim() != 4:
        raise ValueError(f"x, dt, A, B, C: expected (b, l, h, p), (b, l, h), (h,), (b, l, g, n), (b, l, g, n); got "
                         f"{tuple(x.shape)}, {tuple(dt.shape)}, {tuple(A.shape)}, {tuple(B.shape)}, {tuple(C.shape)}")
    b, l, h, _ = x.shape
    g = B.shape[2]
    if dt.shape != (b, l, h) or A.shape != (h,) or B.shape[:2] != (b, l) or C.shape != B.shape:
        raise ValueError(f"shapes: x {tuple(x.shape)}, dt {tuple(dt.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, "
                         f"C {tuple(C.shape)} do not agree on (b, l, h, g)")
    if h % g:
        raise ValueError(f"B, C: the number of groups ({g}) must divide the number of heads ({h})")
    if D is not None and D.shape != (h,):
        raise ValueError(f"D: expected shape ({h},) (one skip per head), got {tuple(D.shape)}")
    return b, l, h, g


def _prepare(x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    """Common first step of both scans: working dtype, Δ, and B/C broadcast from groups to heads."""
    b, l, h, g = _check_scan_inputs(x, dt, A, B, C, D, z, dt_bias)
    wdt = _work_dtype(x)
    x, dt, A, B, C = (t.to(wdt) for t in (x, dt, A, B, C))
    if dt_bias is not None:
        dt = dt + dt_bias.to(wdt)
    delta = F.softplus(dt) if dt_softplus else dt  # (b, l, h)
    head_group = torch.arange(h, device=x.device) // (h // g)  # head h reads group h // (h/g), as mamba-ssm
    return wdt, delta, A, B[:, :, head_group], C[:, :, head_group]  # B, C: (b, l, h, n)


def _finish(y, x, D, z, wdt, dtype_in):
    if D is not None:
        y = y + D.to(wdt)[:, None] * x.to(wdt)
    if z is not None:
        y = y * F.silu(z.to(wdt))
    return y.to(dtype_in)


def ssd_scan_recurrent(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int = 0,
                       D: Optional[Tensor] = None, z: Optional[Tensor] = None, dt_bias: Optional[Tensor] = None,
                       dt_softplus: bool = False) -> Tensor:
    """The SSD layer as its time-step recurrence (reference twin of :func:`ssd_scan_chunked`).

    x, z: (b, l, h, p); dt: (b, l, h); A: (h,) real (one scalar per head, ``a_h < 0``); B, C: (b, l, g, n);
    D, dt_bias: (h,). ``Δ = softplus(dt + dt_bias)`` (softplus optional); per head
    ``S_t = exp(Δ_t a) S_{t−1} + Δ_t x_t B_tᵀ`` (p, n), ``y_t = S_t C_t + D x_t``, then ``y ⊙ SiLU(z)``.
    ``chunk_size`` is accepted for signature compatibility and unused. Returns y (b, l, h, p) in x's dtype.
    Both scans refuse a positive A (ValueError) and complex or integer dtypes (TypeError); an empty sequence
    (l = 0) gives an empty y.
    """
    wdt, delta, A, Bh, Ch = _prepare(x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    b, l, h, p = x.shape
    if l == 0:  # an empty sequence: an empty output
        return x.new_zeros(b, 0, h, p)
    S = x.new_zeros(b, h, p, Bh.shape[-1], dtype=wdt)  # (b, h, p, n)
    xw = x.to(wdt)
    ys = []
    for t in range(l):
        decay = torch.exp(delta[:, t] * A)  # (b, h)
        S = decay[..., None, None] * S + (delta[:, t, :, None] * xw[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", S, Ch[:, t]))  # (b, h, p)
    return _finish(torch.stack(ys, dim=1), x, D, z, wdt, x.dtype)


def _segsum(a: Tensor) -> Tensor:
    """``out[..., t, s] = Σ_{s < r <= t} a[..., r]`` for t >= s, −inf above the diagonal; a (..., Q).

    Built by a masked cumulative sum (not a difference of cumsums) so no cancellation error appears."""
    Q = a.shape[-1]
    rep = a[..., None, :].expand(*a.shape, Q).transpose(-1, -2)  # rep[..., t, s] = a[..., t]
    strict = torch.tril(torch.ones(Q, Q, dtype=torch.bool, device=a.device), diagonal=-1)
    seg = torch.cumsum(rep.masked_fill(~strict, 0), dim=-2)  # (..., Q, Q)
    return seg.masked_fill(~torch.tril(torch.ones_like(strict), diagonal=0), float("-inf"))


def ssd_scan_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int = 64,
                     D: Optional[Tensor] = None, z: Optional[Tensor] = None, dt_bias: Optional[Tensor] = None,
                     dt_softplus: bool = False) -> Tensor:
    """The SSD layer by its chunked block decomposition (Dao & Gu 2024, Sec. 6; same map as
    :func:`ssd_scan_recurrent`, same arguments). Per chunk of ``Q = chunk_size`` steps:
      1. diagonal blocks: ``y_t = Σ_{s<=t in chunk} (C_t·B_s) exp(Σ_{s<r<=t} Δ_r a) Δ_s x_s``;
      2. each chunk's final state from its own inputs ``Σ_s exp(Σ_{r>s} Δ_r a) Δ_s x_s B_sᵀ``;
      3. states passed between chunks by the scalar recurrence ``S_c = exp(Σ_chunk Δ a) S_{c−1} + state_c``;
      4. off-diagonal blocks: ``y_t += exp(Σ_{r<=t in chunk} Δ_r a) S_{c−1} C_t``.
    The sequence is zero-padded to a multiple of Q (a padded step has Δ x = 0, so it changes nothing).
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: must be an integer >= 1, got {chunk_size!r}")
    wdt, delta, A, Bh, Ch = _prepare(x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    b, l, h, p = x.shape
    if l == 0:  # an empty sequence: an empty output (no chunk to form)
        return x.new_zeros(b, 0, h, p)
    n = Bh.shape[-1]
    Q = min(chunk_size, l)
    pad = (-l) % Q
    xd = delta[..., None] * x.to(wdt)  # (b, l, h, p): Δ_s x_s
    dA = delta * A  # (b, l, h)
    if pad:
        xd, dA, Bh, Ch = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (xd, dA, Bh, Ch))
    c = (l + pad) // Q
    xd, Bh, Ch = (t.reshape(b, c, Q, h, -1) for t in (xd, Bh, Ch))  # (b, c, Q, h, ·)
    dA = dA.reshape(b, c, Q, h).permute(0, 3, 1, 2)  # (b, h, c, Q)
    A_cum = torch.cumsum(dA, dim=-1)  # (b, h, c, Q)
    L = torch.exp(_segsum(dA))  # (b, h, c, Q, Q): decay from s to t within a chunk
    y = torch.einsum("bcthn,bcshn,bhcts,bcshp->bcthp", Ch, Bh, L, xd)  # 1. (b, c, Q, h, p)
    to_end = torch.exp(A_cum[..., -1:] - A_cum)  # (b, h, c, Q): decay from s to the chunk's end
    states = torch.einsum("bcshn,bhcs,bcshp->bchpn", Bh, to_end, xd)  # 2. (b, c, h, p, n)
    S = x.new_zeros(b, h, p, n, dtype=wdt)
    prev = []
    for k in range(c):  # 3. a handful of chunks: a plain loop
        prev.append(S)
        S = torch.exp(A_cum[:, :, k, -1])[..., None, None] * S + states[:, k]  # (b, h, p, n)
    prev = torch.stack(prev, dim=1)  # (b, c, h, p, n): the state entering each chunk
    y = y + torch.einsum("bcthn,bchpn,bhct->bcthp", Ch, prev, torch.exp(A_cum))  # 4.
    y = y.reshape(b, c * Q, h, p)[:, :l]
    return _finish(y, x, D, z, wdt, x.dtype)


ScanFn = Callable[..., Tensor]


def _positive_int(name: str, v) -> int:
    """``v`` as an int >= 1 (anything ``operator.index`` takes, not bool); ValueError naming ``name`` otherwise."""
    try:
        if isinstance(v, bool):
            raise TypeError
        v = operator.index(v)
    except TypeError:
        raise ValueError(f"{name}: must be a positive integer, got {v!r}") from None
    if v < 1:
        raise ValueError(f"{name}: must be a positive integer, got {v!r}")
    return v


def gated_rmsnorm(y: Tensor, z: Tensor, weight: Tensor, group_size: int, eps: float = RMS_EPS) -> Tensor:
    """mamba-ssm's ``RMSNormGated`` with ``norm_before_gate=False``: ``v = y ⊙ SiLU(z)``, then each group of
    ``group_size`` channels divided by its root mean square (+ eps), times ``weight``. y, z: (..., D);
    weight: (D,). Computed in float32 at least, returned in y's dtype."""
    wdt = _work_dtype(y)
    v = y.to(wdt) * F.silu(z.to(wdt))
    vg = v.reshape(*v.shape[:-1], -1, group_size)  # (..., D / group_size, group_size)
    vg = vg * torch.rsqrt(vg.square().mean(dim=-1, keepdim=True) + eps)
    return (vg.reshape(v.shape) * weight.to(wdt)).to(y.dtype)


def mamba2_dims(w: Mapping[str, Tensor], ngroups: int) -> Tuple[int, int, int, int]:
    """``(d_inner, nheads, headdim, d_state)`` read off the weight shapes (``ngroups`` cannot be: it is given)."""
    nheads = w["A_log"].shape[0]
    d_inner = w["out_proj.weight"].shape[1]
    conv_dim = w["conv1d.weight"].shape[0]
    if nheads < 1 or d_inner % nheads or (conv_dim - d_inner) % (2 * ngroups) or nheads % ngroups:
        raise ValueError(f"weights: inconsistent Mamba2 shapes (d_inner {d_inner}, nheads {nheads}, conv_dim "
                         f"{conv_dim}) for ngroups={ngroups}")
    return d_inner, nheads, d_inner // nheads, (conv_dim - d_inner) // (2 * ngroups)


def mamba2_ssm_inputs(w: Mapping[str, Tensor], hidden: Tensor, ngroups: int):
    """Steps 1-2: ``(z, x, B, C, dt)`` from hidden (Bt, L, d_model): z, x (Bt, L, D); B, C (Bt, L, G, N);
    dt (Bt, L, Hh) (before dt_bias and softplus)."""
    Bt, L, _ = hidden.shape
    d_inner, nheads, _, N = mamba2_dims(w, ngroups)
    zxbcdt = torch.einsum("ed,bld->ble", w["in_proj.weight"], hidden)  # (Bt, L, d_in_proj)
    if w.get("in_proj.bias") is not None:
        zxbcdt = zxbcdt + w["in_proj.bias"]
    z, xBC, dt = torch.split(zxbcdt, [d_inner, d_inner + 2 * ngroups * N, nheads], dim=-1)
    conv_w = w["conv1d.weight"]  # (conv_dim, 1, W)
    xBC = F.silu(F.conv1d(xBC.transpose(1, 2), conv_w, w.get("conv1d.bias"), padding=conv_w.shape[-1] - 1,
                          groups=conv_w.shape[0])[..., :L]).transpose(1, 2)  # (Bt, L, conv_dim): causal depthwise
    x, B, C = torch.split(xBC, [d_inner, ngroups * N, ngroups * N], dim=-1)
    # contiguous: mamba-ssm's Triton scan takes these as they are (split views have the parent's strides)
    return z, x, B.reshape(Bt, L, ngroups, N).contiguous(), C.reshape(Bt, L, ngroups, N).contiguous(), dt.contiguous()


def mamba2_forward(w: Mapping[str, Tensor], hidden: Tensor, *, ngroups: int = 1, chunk_size: int = 64,
                   scan_fn: ScanFn = ssd_scan_chunked) -> Tensor:
    """The Mamba2 block as a pure function of its weights; hidden (Bt, L, d_model) -> (Bt, L, d_model).

    ``scan_fn``: :func:`ssd_scan_chunked`, :func:`ssd_scan_recurrent` or mamba-ssm's
    ``mamba_chunk_scan_combined`` (same call). A = −exp(A_log) is formed in float32 at least, as mamba-ssm does.
    """
    z, x, B, C, dt = mamba2_ssm_inputs(w, hidden, ngroups)
    Bt, L, d_inner = x.shape
    nheads = w["A_log"].shape[0]
    wdt = _work_dtype(w["A_log"])
    A = -torch.exp(w["A_log"].to(wdt))  # (Hh,)
    y = scan_fn(x.reshape(Bt, L, nheads, -1).contiguous(), dt, A, B, C, chunk_size, D=w["D"].to(wdt), z=None,
                dt_bias=w["dt_bias"].to(wdt), dt_softplus=True)  # (Bt, L, Hh, P)
    y = gated_rmsnorm(y.reshape(Bt, L, d_inner), z, w["norm.weight"], d_inner // ngroups)  # (Bt, L, D)
    out = torch.einsum("md,bld->blm", w["out_proj.weight"], y)  # (Bt, L, d_model)
    return out if w.get("out_proj.bias") is None else out + w["out_proj.bias"]


def effective_delta(w: Mapping[str, Tensor], hidden: Tensor, ngroups: int) -> Tensor:
    """``Δ = softplus(δ + dt_bias)`` (Bt, L, Hh) for the block input ``hidden``."""
    *_, dt = mamba2_ssm_inputs(w, hidden, ngroups)
    return F.softplus(dt.to(_work_dtype(w["dt_bias"])) + w["dt_bias"])


class Mamba2Ref(nn.Module):
    """Pure-torch Mamba2 block with mamba-ssm's parameter names, shapes and initialisation scheme
    (parameters created in mamba-ssm's order: in_proj, conv1d, dt_bias, A_log, D, norm, out_proj).

    d_model; d_state: N; expand: D / d_model; headdim: P (must divide D); ngroups: G (must divide D / P).
    forward(hidden (Bt, L, d_model)) -> (Bt, L, d_model) with :func:`ssd_scan_chunked` in chunks of at most 64
    steps (the map does not depend on the chunk length; the within-chunk blocks cost O(L·Q) memory).
    """

    def __init__(self, d_model: int, d_state: int = 128, d_conv: int = 4, expand: int = 2, headdim: int = 64,
                 ngroups: int = 1, A_init_range=(1, 16), dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, bias: bool = False, conv_bias: bool = True, chunk_size: int = 256,
                 device=None, dtype=None):
        super().__init__()
        for name, v in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv), ("expand", expand),
                        ("headdim", headdim), ("ngroups", ngroups), ("chunk_size", chunk_size)):
            _positive_int(name, v)
        kw = {"device": device, "dtype": dtype}
        d_inner = expand * d_model
        if headdim < 1 or d_inner % headdim:
            raise ValueError(f"headdim: must divide d_inner = expand x d_model = {d_inner}, got {headdim}")
        nheads = d_inner // headdim
        if ngroups < 1 or nheads % ngroups:
            raise ValueError(f"ngroups: must divide nheads = {nheads}, got {ngroups}")
        if not 0 < A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"A_init_range: need 0 < low <= high, got {A_init_range}")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner, self.headdim, self.nheads, self.ngroups, self.chunk_size = d_inner, headdim, nheads, ngroups, chunk_size
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * ngroups * d_state + nheads, bias=bias, **kw)
        conv_dim = d_inner + 2 * ngroups * d_state
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, kernel_size=d_conv, groups=conv_dim, padding=d_conv - 1,
                                bias=conv_bias, **kw)
        # dt_bias = softplus^{-1}(Δ0), Δ0 log-uniform in [dt_min, dt_max]: initial step sizes span the range
        dt0 = torch.exp(torch.rand(nheads, **kw) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt0 = dt0.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt0 + torch.log(-torch.expm1(-dt0)))
        # one decay rate per head, a = −A with A ~ U(A_init_range) (mamba-ssm draws it in float32)
        A = torch.empty(nheads, dtype=torch.float32, device=device).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A).to(dtype=dtype or torch.get_default_dtype()))
        self.D = nn.Parameter(torch.ones(nheads, device=device, dtype=dtype))  # skip, one per head
        self.norm = nn.Module()
        self.norm.weight = nn.Parameter(torch.ones(d_inner, **kw))  # RMSNormGated's weight
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias, **kw)

    def weights(self) -> Dict[str, Tensor]:
        return dict(self.named_parameters())

    def forward(self, hidden: Tensor) -> Tensor:
        return mamba2_forward(self.weights(), hidden, ngroups=self.ngroups, chunk_size=min(self.chunk_size, 64))


def block_weights(block: nn.Module) -> Dict[str, Tensor]:
    """Detached copies of a Mamba2 block's parameters by mamba-ssm name (mamba-ssm's ``Mamba2`` or
    :class:`Mamba2Ref`); checks every required name is present."""
    w = {k: v.detach().clone() for k, v in block.named_parameters()}
    missing = [k for k in PARAM_NAMES if k not in w]
    if missing:
        raise ValueError(f"block: missing Mamba2 parameters {missing}")
    return w
