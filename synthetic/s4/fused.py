"""A fused deep-S4 layer for CUDA in Triton (issue 31; Galim et al., ICML 2025, Sec. 6.1, eq. 4, S4D kernel).

One layer of :mod:`synthetic.s4.model`, ``y = ReLU(W (S4(x) + u ⊙ x) + β)``, in two passes over the
activations (R, D, N, B) instead of the Toeplitz form's gather, product, bias and ReLU passes:

  (1) ``s = T(K) a`` (:func:`fused_conv`, one Triton kernel): ``a = ReLU(pre_prev)``, the previous layer's
      activation applied as each tile is loaded (the raw input for layer 0), and ``T(K)`` the lower-triangular
      Toeplitz matrix of ``K_k = 2 Re(Σ_h G_h λ_h^k) + u δ_{k0}`` (skip folded into lag 0), built tile by tile
      from K in registers (never materialised; the tiles above the diagonal are skipped);
  (2) ``pre = β + W s`` (one cuBLAS ``baddbmm`` over D: the channel mix needs every channel of a position, which
      a convolution tile does not hold).

The ReLU of the last layer is the only elementwise pass left. The kernel K (R, D, N) comes from
:func:`synthetic.s4.conv.s4d_kernel` (O(R·D·Hc·N) work, no pass over the activations; autograd carries dK to
(A, C, Δ, u)).

Backward of (1), ``ds`` given (two kernels, no N×N intermediate): ``da = T(K)ᵀ ds`` and
``dx = da ⊙ [pre_prev > 0]`` in one kernel (the mask in its epilogue); ``dK_k = Σ_{t,b} ds[t, b] a[t−k, b]``
directly by lag bands: a program per (lag band of BT lags, run·channel, batch chunk) accumulates the band's BT×BT
tile over the tile pairs (i, i−band) with tensor-core dots (ReLU on load) and sums its diagonals once, writing only
2·BT lag partials (summed over chunks by torch; :func:`synthetic.s4.conv.diagonal_sums` of ``ds aᵀ`` is its twin).

Without CUDA (and without ``TRITON_INTERPRET=1``) the same ops run as a torch emulation using only the
tensors they are passed (the Toeplitz product), so importing this module and the CPU path need no Triton.
With ``TRITON_INTERPRET=1`` the Triton kernels run on CPU tensors (Triton's interpreter; slow, tiny shapes).

Reference twins: :func:`synthetic.s4.conv.toeplitz_form` (same signature as :func:`fused_form`) and the float64
:func:`synthetic.s4.conv.conv_reference`; ``tests/test_s4_fused.py`` holds them together, values and gradients.
"""

from __future__ import annotations

import functools
import os
from typing import Dict, List, Optional, Tuple

import torch

from synthetic.s4.conv import diagonal_sums, s4d_kernel, toeplitz, toeplitz_index

Tensor = torch.Tensor

# Tile configs of the convolution kernels (forward and dx), tried by the autotuner on CUDA: (BT rows of the output,
# BJ inner positions, BB batch columns, num_warps, num_stages, BATCH_M). tl.dot needs every tile side >= 16.
# BATCH_M puts the batch on the MMA's M axis (the product computed transposed, sᵀ = aᵀ Tᵀ): then the operand read
# from memory (x or ds, contiguous along the batch) is the A operand, which Hopper's wgmma may take from registers,
# and the Toeplitz tile built from K is the B operand; without it the loaded tile is a B operand that is not
# K-major, which TF32 wgmma does not read as is (Triton rearranges it). Both compile to wgmma for sm_90; which is
# faster is measured, not assumed. Shared memory per config ~ num_stages x (BT·BJ + BJ·BB) x 4 bytes: at most
# 147 KB here (H100: 227 KB); none spills registers (scripts/check_fused_sm90.py, Triton 3.9).
# The interpreter runs the first config only (autotuning there would run every config).
CONFIGS = ((64, 32, 64, 4, 3, False), (64, 64, 128, 8, 3, False), (128, 32, 64, 8, 3, False),
           (64, 32, 128, 4, 4, True), (64, 32, 256, 8, 3, True), (128, 32, 128, 8, 3, True))
# Tile configs of the dK kernel: (BT lag-band width = row tile, BB batch columns per step, num_warps, num_stages).
# Shared memory ~ num_stages x 2 x BT·BB x 4 bytes: at most 96 KB; none spills registers for sm_90 (Triton 3.9,
# scripts/check_fused_sm90.py; 64x64 tiles with 4 warps did). BT <= DK_MAX_BT (the scratch is sized for it).
DK_CONFIGS = ((32, 64, 4, 3), (64, 64, 8, 3), (64, 32, 8, 3), (32, 128, 8, 3))
DK_MAX_BT = 64
# Programs the dK kernel aims at (the batch is split into S chunks when runs x channels x bands are fewer): enough to
# fill an H100's 132 SMs several times over; S is fixed before the launch, so every tile config sees the same split.
DK_TARGET_PROGRAMS = 2048
DK_MIN_CHUNK = 256  # batch columns per chunk at least (a chunk's band tile is reduced once: amortise that)


def interpreting() -> bool:
    """True when Triton's interpreter is asked for (``TRITON_INTERPRET=1``): kernels then run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def uses_triton(t: Tensor) -> bool:
    """Whether the ops run their Triton kernels on ``t``: float32 on CUDA, or on the CPU when interpreting."""
    return t.dtype == torch.float32 and (t.is_cuda or (interpreting() and t.device.type == "cpu")) and triton_available()


@functools.lru_cache(maxsize=None)
def _kernels(interpret: bool):
    """The kernels of :mod:`synthetic.s4.fused_kernels` (imported on first use, so that importing this module needs
    no Triton), autotuned over CONFIGS / DK_CONFIGS on CUDA; the interpreter runs the first config of each."""
    import triton

    from synthetic.s4 import fused_kernels as fk

    kernels = {"fwd": fk.conv_fwd, "dx": fk.conv_bwd_dx, "dK": fk.conv_bwd_dK}
    if not interpret:
        configs = [triton.Config({"BT": bt, "BJ": bj, "BB": bb, "BATCH_M": bm}, num_warps=w, num_stages=st)
                   for bt, bj, bb, w, st, bm in CONFIGS]
        dk_configs = [triton.Config({"BT": bt, "BB": bb}, num_warps=w, num_stages=st) for bt, bb, w, st in DK_CONFIGS]
        kernels = {k: triton.autotune(configs=dk_configs if k == "dK" else configs,
                                      key=["N", "B", "BC", "RELU_IN"] if k == "dK" else ["N", "B", "RELU_IN"])(f)
                   for k, f in kernels.items()}
    return kernels


def _meta(name: str) -> Dict[str, object]:
    """The interpreter's tile config of kernel ``name``: the first of its list."""
    if name == "dK":
        bt, bb, _, _ = DK_CONFIGS[0]
        return {"BT": bt, "BB": bb}
    bt, bj, bb, _, _, bm = CONFIGS[0]
    return {"BT": bt, "BJ": bj, "BB": bb, "BATCH_M": bm}


def _launch(name: str, args: Tuple, relu_in: bool, grid) -> None:
    """Launch kernel ``name`` on ``grid(meta)`` (autotuned on CUDA, the first config under the interpreter)."""
    interp = interpreting()
    kern = _kernels(interp)[name]
    prec = "tf32" if (not interp and torch.backends.cuda.matmul.allow_tf32) else "ieee"
    kw = dict(RELU_IN=bool(relu_in), DOT_PREC=prec)
    if interp:
        meta = _meta(name)
        kern[grid(meta)](*args, **kw, **meta)
    else:
        kern[grid](*args, **kw)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _dK(ds: Tensor, x: Tensor, relu_in: bool) -> Tensor:
    """``dK_k = Σ_{t,b} ds[t, b] act(x)[t−k, b]`` (R, D, N) by the dK kernel: lag bands × (run, channel) × batch
    chunks, the band tiles reduced in the kernel, the per-chunk lag partials P (S, R·D, 2, N) summed here."""
    R, D, N, B = ds.shape
    RD = R * D
    sxr = 0 if x.dim() == 3 else D * N * B
    bands_min = _cdiv(N, DK_MAX_BT)
    S = max(1, min(_cdiv(DK_TARGET_PROGRAMS, RD * bands_min), _cdiv(B, DK_MIN_CHUNK)))
    BC = _cdiv(B, S)  # batch columns per chunk
    S = _cdiv(B, BC)
    P = torch.empty(S, RD, 2, N, device=ds.device, dtype=torch.float32)  # every slot stored by the kernel
    bt_max = DK_MAX_BT if not interpreting() else _meta("dK")["BT"]
    if any(bt > DK_MAX_BT for bt, *_ in DK_CONFIGS):
        raise ValueError(f"DK_CONFIGS: a band width above DK_MAX_BT = {DK_MAX_BT} (the scratch is sized for it)")
    # two BT×BT slots per program (band pair, run·channel, chunk): 2·⌈nd/2⌉·BT² <= (⌈N/bt_max⌉+1)·bt_max²
    scratch = torch.empty(S * RD * (_cdiv(N, bt_max) + 1) * bt_max * bt_max, device=ds.device, dtype=torch.float32)
    _launch("dK", (ds, x, P, scratch, N, B, D, sxr, BC), relu_in, lambda m: (_cdiv(_cdiv(N, m["BT"]), 2), RD, S))
    return P.sum(dim=(0, 2)).reshape(R, D, N)


# ------------------------------------------------------------------------------ the ops (torch.library)
def _conv_torch(K: Tensor, x: Tensor, relu_in: bool) -> Tensor:
    """Emulation of :func:`fused_conv` from the tensors it is passed (the Toeplitz product): the CPU path."""
    a = torch.relu(x) if relu_in else x
    return torch.matmul(toeplitz(K, toeplitz_index(K.shape[-1], K.device)), a)


@torch.library.custom_op("ssm_peft::s4_fused_conv", mutates_args=())
def fused_conv(K: Tensor, x: Tensor, relu_in: bool) -> Tensor:
    """``s = T(K) act(x)``: K (R, D, N) float32, x (R, D, N, B) or (D, N, B) shared by the runs -> (R, D, N, B).

    ``s_t = Σ_{k=0}^{t} K_k act(x_{t−k})`` with ``act = ReLU`` if ``relu_in`` (the previous layer's activation,
    fused into the load) else the identity. One Triton kernel on CUDA; the Toeplitz product elsewhere.
    """
    if not uses_triton(x):
        return _conv_torch(K, x, relu_in).contiguous()
    K, x = K.contiguous(), x.contiguous()
    R, D, N = K.shape
    B = x.shape[-1]
    s = torch.empty(R, D, N, B, device=x.device, dtype=torch.float32)
    sxr = 0 if x.dim() == 3 else D * N * B
    _launch("fwd", (K, x, s, N, B, D, sxr), relu_in, lambda m: (_cdiv(N, m["BT"]), R * D, _cdiv(B, m["BB"])))
    return s


@fused_conv.register_fake
def _(K, x, relu_in):
    return K.new_empty(K.shape[0], K.shape[1], K.shape[2], x.shape[-1])


@torch.library.custom_op("ssm_peft::s4_fused_conv_bwd", mutates_args=())
def fused_conv_bwd(K: Tensor, x: Tensor, ds: Tensor, relu_in: bool,
                   need_dx: bool) -> Tuple[Tensor, Tensor]:
    """Backward of :func:`fused_conv`: ``(dK (R, D, N), dx (R, D, N, B))`` with ``dK_k = Σ_{t,b} ds[t,b] act(x)[t−k,b]``
    and ``dx = act'(x) ⊙ T(K)ᵀ ds`` (per run, not yet summed over runs for a shared x); dx is empty (0,) when
    ``need_dx`` is False."""
    if not uses_triton(x):
        a = torch.relu(x) if relu_in else x
        dK = diagonal_sums(torch.matmul(ds, a.transpose(-1, -2))).contiguous()  # (R, D, N); the fake's strides
        if not need_dx:
            return dK, ds.new_empty(0)
        T = toeplitz(K, toeplitz_index(K.shape[-1], K.device))
        dx = torch.matmul(T.transpose(-1, -2), ds)
        return dK, (dx * (x > 0) if relu_in else dx).contiguous()
    K, x, ds = K.contiguous(), x.contiguous(), ds.contiguous()
    R, D, N = K.shape
    B = x.shape[-1]
    sxr = 0 if x.dim() == 3 else D * N * B
    dK = _dK(ds, x, relu_in)  # (R, D, N)
    if not need_dx:
        return dK, ds.new_empty(0)
    dx = torch.empty(R, D, N, B, device=x.device, dtype=torch.float32)
    _launch("dx", (K, ds, x, dx, N, B, D, sxr), relu_in, lambda m: (_cdiv(N, m["BT"]), R * D, _cdiv(B, m["BB"])))
    return dK, dx


@fused_conv_bwd.register_fake
def _(K, x, ds, relu_in, need_dx):
    dx = ds.new_empty(ds.shape) if need_dx else ds.new_empty(0)
    return K.new_empty(K.shape), dx


def _setup_context(ctx, inputs, output):
    K, x, relu_in = inputs
    ctx.save_for_backward(K, x)
    ctx.relu_in = relu_in
    ctx.x_shared = x.dim() == 3


def _backward(ctx, ds):
    K, x = ctx.saved_tensors
    need_dx = ctx.needs_input_grad[1]
    dK, dx = fused_conv_bwd(K, x, ds, ctx.relu_in, need_dx)
    if not need_dx:
        return dK, None, None
    return dK, (dx.sum(0) if ctx.x_shared else dx), None


fused_conv.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------- the layer, the stack
def fused_form(p: Dict[str, Tensor], x: Tensor, idx: Optional[Tensor] = None) -> Tensor:
    """The convolution form ``fused`` (``synthetic.s4.forms.CONV_FORMS``): ``T(K) x`` with K from (A, C, Δ, u)
    by :func:`synthetic.s4.conv.s4d_kernel` and the product by :func:`fused_conv` (idx unused) -> (R, D, N, B)."""
    return fused_conv(s4d_kernel(p, x.shape[-2]), x, False)


def fused_deep_forward(layers: List[Dict[str, Tensor]], x: Tensor, linear: bool = False) -> Tensor:
    """The stack of :func:`synthetic.s4.model.deep_forward` with each layer's ReLU fused into the next layer's
    convolution load: x (D, N, B) or (R, D, N, B) -> (R, D, N, B).

    Per layer: ``s = fused_conv(K, h, act)``, ``pre = β + W s`` (baddbmm); ``h = pre`` goes to the next layer
    with ``act = ReLU`` (identity when ``linear``, Theorem 1's linear variant); the last ReLU is applied here.
    """
    h, act = x, False
    for p in layers:
        K = s4d_kernel(p, h.shape[-2])  # (R, D, N), skip in lag 0
        s = fused_conv(K, h, act)  # (R, D, N, B)
        R, D = s.shape[0], s.shape[1]
        pre = torch.baddbmm(p["beta"][..., None], p["W"], s.reshape(R, D, -1)).reshape(s.shape)  # (R, D, N, B)
        h, act = pre, not linear
    return torch.relu(h) if act else h
