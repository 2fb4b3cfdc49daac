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

Backward of (1), ``ds`` given: ``da = T(K)ᵀ ds`` and ``dx = da ⊙ [pre_prev > 0]`` in one kernel (the mask in
its epilogue); ``dT = ds aᵀ`` over the causal tiles only (tensor-core dots, ReLU on load), then
``dK_k = Σ_t dT[t, t−k]`` (a third kernel reading dT once; :func:`synthetic.s4.conv.diagonal_sums` is its twin).

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

# Tile sizes (T rows, inner positions J, batch columns B, warps) tried by the autotuner on CUDA; tl.dot needs
# every tile side >= 16. The interpreter uses the first (autotuning there would run every config).
CONFIGS = ((64, 32, 64, 4), (64, 64, 128, 8), (128, 32, 64, 8), (32, 32, 128, 4))


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
    """The Triton kernels: convolution, its two backward products, the diagonal sums (built on first use, so that
    importing this module needs no Triton)."""
    import triton
    import triton.language as tl

    @triton.jit
    def conv_fwd(K_ptr, x_ptr, s_ptr, N, B, D, sxr, RELU_IN: tl.constexpr, DOT_PREC: tl.constexpr,
                 BT: tl.constexpr, BJ: tl.constexpr, BB: tl.constexpr):
        """s[t, b] = Σ_{j<=t} K[t−j] act(x[j, b]) for one (run, channel), a BT×BB output tile."""
        rd = tl.program_id(0).to(tl.int64)  # run * D + channel
        pt = tl.program_id(1)
        t = pt * BT + tl.arange(0, BT)
        b = tl.program_id(2) * BB + tl.arange(0, BB)
        K_row = K_ptr + rd * N
        x_base = x_ptr + (rd // D) * sxr + (rd % D) * N * B  # sxr = 0: x shared by the runs
        acc = tl.zeros((BT, BB), dtype=tl.float32)
        for j0 in range(0, (pt + 1) * BT, BJ):  # causal: inner positions up to the tile's last row
            j = j0 + tl.arange(0, BJ)
            lag = t[:, None] - j[None, :]  # (BT, BJ)
            Tt = tl.load(K_row + lag, mask=(lag >= 0) & (t[:, None] < N), other=0.0)  # Toeplitz tile from K
            xt = tl.load(x_base + j[:, None] * B + b[None, :], mask=(j[:, None] < N) & (b[None, :] < B), other=0.0)
            if RELU_IN:
                xt = tl.maximum(xt, 0.0)
            acc += tl.dot(Tt, xt, input_precision=DOT_PREC)
        tl.store(s_ptr + rd * N * B + t[:, None] * B + b[None, :], acc, mask=(t[:, None] < N) & (b[None, :] < B))

    @triton.jit
    def conv_bwd_dx(K_ptr, ds_ptr, x_ptr, dx_ptr, N, B, D, sxr, RELU_IN: tl.constexpr, DOT_PREC: tl.constexpr,
                    BT: tl.constexpr, BJ: tl.constexpr, BB: tl.constexpr):
        """dx[j, b] = [x[j, b] > 0] Σ_{t>=j} K[t−j] ds[t, b] (mask only with RELU_IN), a BT×BB tile of rows j."""
        rd = tl.program_id(0).to(tl.int64)
        j = tl.program_id(1) * BT + tl.arange(0, BT)
        b = tl.program_id(2) * BB + tl.arange(0, BB)
        K_row = K_ptr + rd * N
        ds_base = ds_ptr + rd * N * B
        acc = tl.zeros((BT, BB), dtype=tl.float32)
        for t0 in range(tl.program_id(1) * BT, N, BJ):  # anti-causal: outputs at or after the tile's first row
            t = t0 + tl.arange(0, BJ)
            lag = t[None, :] - j[:, None]  # (BT, BJ)
            Tt = tl.load(K_row + lag, mask=(lag >= 0) & (t[None, :] < N) & (j[:, None] < N), other=0.0)
            dst = tl.load(ds_base + t[:, None] * B + b[None, :], mask=(t[:, None] < N) & (b[None, :] < B), other=0.0)
            acc += tl.dot(Tt, dst, input_precision=DOT_PREC)
        io = (j[:, None] < N) & (b[None, :] < B)
        if RELU_IN:
            x_base = x_ptr + (rd // D) * sxr + (rd % D) * N * B
            xt = tl.load(x_base + j[:, None] * B + b[None, :], mask=io, other=0.0)
            acc = tl.where(xt > 0, acc, 0.0)
        tl.store(dx_ptr + rd * N * B + j[:, None] * B + b[None, :], acc, mask=io)

    @triton.jit
    def conv_bwd_dT(ds_ptr, x_ptr, dT_ptr, N, B, D, sxr, RELU_IN: tl.constexpr, DOT_PREC: tl.constexpr,
                    BT: tl.constexpr, BJ: tl.constexpr, BB: tl.constexpr):
        """dT[t, s] = Σ_b ds[t, b] act(x[s, b]) on a BT×BT tile; tiles wholly above the diagonal are written as 0."""
        rd = tl.program_id(0).to(tl.int64)
        pt, ps = tl.program_id(1), tl.program_id(2)
        t = pt * BT + tl.arange(0, BT)
        s = ps * BT + tl.arange(0, BT)
        ds_base = ds_ptr + rd * N * B
        x_base = x_ptr + (rd // D) * sxr + (rd % D) * N * B
        acc = tl.zeros((BT, BT), dtype=tl.float32)
        n_b = tl.where(ps <= pt, B, 0)  # the causal tiles only
        for b0 in range(0, n_b, BB):
            bb = b0 + tl.arange(0, BB)
            dst = tl.load(ds_base + t[:, None] * B + bb[None, :], mask=(t[:, None] < N) & (bb[None, :] < B), other=0.0)
            xs = tl.load(x_base + s[None, :] * B + bb[:, None], mask=(s[None, :] < N) & (bb[:, None] < B), other=0.0)
            if RELU_IN:
                xs = tl.maximum(xs, 0.0)
            acc += tl.dot(dst, xs, input_precision=DOT_PREC)  # (BT, BB) x (BB, BT)
        tl.store(dT_ptr + rd * N * N + t[:, None] * N + s[None, :], acc, mask=(t[:, None] < N) & (s[None, :] < N))

    @triton.jit
    def diag_sums(dT_ptr, dK_ptr, N, BK: tl.constexpr, BT: tl.constexpr):
        """dK[k] = Σ_{t>=k} dT[t, t−k] for a block of BK lags of one (run, channel): reads dT once, no copies."""
        rd = tl.program_id(0).to(tl.int64)
        k = tl.program_id(1) * BK + tl.arange(0, BK)
        base = dT_ptr + rd * N * N
        acc = tl.zeros((BK,), dtype=tl.float32)
        for t0 in range(tl.program_id(1) * BK, N, BT):  # rows t >= the block's first lag
            t = t0 + tl.arange(0, BT)
            s = t[None, :] - k[:, None]  # (BK, BT): the column of diagonal k in row t
            v = tl.load(base + t[None, :] * N + s, mask=(s >= 0) & (t[None, :] < N) & (k[:, None] < N), other=0.0)
            acc += tl.sum(v, axis=1)
        tl.store(dK_ptr + rd * N + k, acc, mask=k < N)

    kernels = {"fwd": conv_fwd, "dx": conv_bwd_dx, "dT": conv_bwd_dT}
    if not interpret:
        configs = [triton.Config({"BT": bt, "BJ": bj, "BB": bb}, num_warps=w) for bt, bj, bb, w in CONFIGS]
        kernels = {k: triton.autotune(configs=configs, key=["N", "B", "RELU_IN"])(f) for k, f in kernels.items()}
    kernels["diag"] = diag_sums
    return kernels


DIAG_BK, DIAG_BT = 32, 64  # lags per program and rows per step of the diagonal sums (no autotuning: a light pass)


def _diagonal_sums(dT: Tensor) -> Tensor:
    """:func:`synthetic.s4.conv.diagonal_sums` of dT (R, D, N, N) as one Triton pass -> (R, D, N)."""
    R, D, N = dT.shape[0], dT.shape[1], dT.shape[-1]
    dK = torch.empty(R, D, N, device=dT.device, dtype=torch.float32)
    _kernels(interpreting())["diag"][(R * D, -(-N // DIAG_BK))](dT, dK, N, BK=DIAG_BK, BT=DIAG_BT)
    return dK


def _launch(name: str, tensors: Tuple[Tensor, ...], N: int, B: int, D: int, sxr: int, relu_in: bool,
            rows: int, grid_cols) -> None:
    """Launch kernel ``name`` with grid (rows, ⌈N/BT⌉, grid_cols(meta))."""
    interp = interpreting()
    kern = _kernels(interp)[name]
    prec = "tf32" if (not interp and torch.backends.cuda.matmul.allow_tf32) else "ieee"
    kw = dict(RELU_IN=bool(relu_in), DOT_PREC=prec)
    if interp:
        bt, bj, bb, _ = CONFIGS[0]
        meta = {"BT": bt, "BJ": bj, "BB": bb}
        kern[(rows, -(-N // bt), grid_cols(meta))](*tensors, N, B, D, sxr, **kw, **meta)
    else:
        kern[lambda meta: (rows, -(-N // meta["BT"]), grid_cols(meta))](*tensors, N, B, D, sxr, **kw)


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
    _launch("fwd", (K, x, s), N, B, D, sxr, relu_in, R * D, lambda m: -(-B // m["BB"]))
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
    dT = torch.empty(R, D, N, N, device=x.device, dtype=torch.float32)
    _launch("dT", (ds, x, dT), N, B, D, sxr, relu_in, R * D, lambda m: -(-N // m["BT"]))
    dK = _diagonal_sums(dT)  # (R, D, N)
    if not need_dx:
        return dK, ds.new_empty(0)
    dx = torch.empty(R, D, N, B, device=x.device, dtype=torch.float32)
    _launch("dx", (K, ds, x, dx), N, B, D, sxr, relu_in, R * D, lambda m: -(-B // m["BB"]))
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
    """The convolution form ``fused`` (``synthetic.s4.conv.CONV_FORMS``): ``T(K) x`` with K from (A, C, Δ, u)
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
