"""The causal convolution of a deep-S4 layer in several forms (Galim et al., ICML 2025, eq. 4; S4D kernel).

Every form computes the same thing, the convolution with the skip folded into lag 0,

    ``s_t = Σ_{k=0}^{t} K_k x_{t−k}``,  ``K_k = 2 Re(Σ_h G_h λ_h^k) + u δ_{k0}``,  ``λ = Ā = exp(ΔA)``, ``G = C B̄``,

on x (R, D, N, B) (or (D, N, B) shared by the R runs) -> (R, D, N, B), with one signature
``form(p, x, idx)`` (``p`` the layer's parameters with a run axis, ``idx`` the N×N Toeplitz index, used
only by the Toeplitz form):

- ``toeplitz`` (:func:`toeplitz_form`): one batched matmul with the N×N lower-triangular Toeplitz matrix
  of K per (run, channel), custom backward (:class:`ToeplitzConv`). O(N²) per (channel, batch column).
- ``fft`` (:func:`fft_form`): ``irfft(rfft(K) · rfft(x))`` zero-padded to 2N. O(N log N).
- ``fused`` (:func:`synthetic.s4.fused.fused_form`, CUDA): the Toeplitz product as one Triton kernel that builds
  the Toeplitz tiles from K in registers and skips those above the diagonal (:mod:`synthetic.s4.fused`; in a
  stack, the previous layer's ReLU is applied as the input is loaded). Without CUDA it runs the Toeplitz product.
- ``chunked`` (:func:`chunked_form`): the Toeplitz matrix of a sum of Hc decaying modes is semiseparable.
  With chunks of length Q (nc = ⌈N/Q⌉ chunks, x zero-padded to nc·Q):
  (1) intra-chunk: the Q×Q Toeplitz product of ``K_0..K_{Q−1}`` (skip included) on every chunk;
  (2) chunk-end states ``h_c = Σ_j λ^{Q−1−j} x_{cQ+j}`` (a (2Hc × Q) real matmul: Re and Im rows);
  (3) state pass ``S_c = Σ_{c'<c} μ^{c−1−c'} h_{c'}`` with ``μ = λ^Q`` (an nc×nc complex matmul per mode);
  (4) ``s_{cQ+i} += 2 Re Σ_h G_h λ_h^{i+1} S_{c,h}`` (a (Q × 2Hc) real matmul).
  O(N·(Q + 4Hc) + 4Hc·N·nc/Q) per (channel, batch column) instead of O(N²).

Reference twin: :func:`conv_reference` (float64 explicit recurrence ``theory.ssm.ssm_recurrence`` plus
``u ⊙ x``); ``tests/test_s4_conv.py`` holds every form to it, values and gradients.
The registry of the forms by name, ``CONV_FORMS``, and :func:`~synthetic.s4.forms.choose_form` (a form from a
measured crossover table, ``python -m synthetic.bench --scaling``) live in :mod:`synthetic.s4.forms`.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

Tensor = torch.Tensor


# ------------------------------------------------------------------------------------- the kernel
def s4d_modes(p: Dict[str, Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The kernel's modes ``K_k = 2 Re(Σ_i G_i Ā_i^k)``: ``log Ā = ΔA = x + i y`` and ``G = C B̄``, each (..., D, Hc).

    Real arithmetic only (inductor-friendly). ``exp(ΔA) − 1`` uses ``expm1`` so B̄ keeps full
    relative precision for tiny ``ΔA`` (Δ can be 1e-3).
    """
    A_re = -torch.exp(p["log_A_re"])  # (..., D, Hc)
    A_im = p["A_im"]
    dt = torch.exp(p["log_dt"])[..., None]  # (..., D, 1)
    x, y = dt * A_re, dt * A_im  # ΔA = x + i y
    e_re = torch.expm1(x) * torch.cos(y) - 2 * torch.sin(y / 2) ** 2  # Re(exp(ΔA) − 1)
    e_im = torch.exp(x) * torch.sin(y)
    den = A_re * A_re + A_im * A_im  # |A|^2 > 0 since Re A < 0
    f_re = (e_re * A_re + e_im * A_im) / den  # (exp(ΔA) − 1) / A
    f_im = (e_im * A_re - e_re * A_im) / den
    Bb_re = f_re * p["B_re"] - f_im * p["B_im"]  # B̄ = f · B
    Bb_im = f_re * p["B_im"] + f_im * p["B_re"]
    G_re = p["C_re"] * Bb_re - p["C_im"] * Bb_im  # C B̄
    G_im = p["C_re"] * Bb_im + p["C_im"] * Bb_re
    return x, y, G_re, G_im


def s4d_kernel(p: Dict[str, Tensor], N: int) -> Tensor:
    """``K_k = 2 Re(Σ_i C_i B̄_i Ā_i^k)`` plus the skip on lag 0, k = 0..N-1: (..., D, N)."""
    x, y, G_re, G_im = s4d_modes(p)  # (..., D, Hc)
    k = torch.arange(N, device=x.device, dtype=x.dtype)  # (N,)
    mag = torch.exp(x[..., None] * k)  # |Ā|^k  (..., D, Hc, N)
    ang = y[..., None] * k
    K = 2 * (mag * (G_re[..., None] * torch.cos(ang) - G_im[..., None] * torch.sin(ang))).sum(-2)  # (..., D, N)
    lag0 = torch.zeros_like(K)
    lag0[..., 0] = 1.0
    return K + p["u"][..., None] * lag0  # skip inside: S4(x) + u ⊙ x = (K + u δ_0) * x


def toeplitz_index(N: int, device) -> Tensor:
    """(N, N) indices into ``[K_0..K_{N-1}, 0]``: ``t − s`` on and below the diagonal, ``N`` above."""
    t = torch.arange(N, device=device)
    d = t[:, None] - t[None, :]
    return torch.where(d >= 0, d, torch.full_like(d, N))


def toeplitz(K: Tensor, idx: Tensor) -> Tensor:
    """Lower-triangular Toeplitz matrices ``T[..., t, s] = K[..., t − s]`` (0 above the diagonal): (..., N, N)."""
    K_ext = torch.cat([K, torch.zeros_like(K[..., :1])], dim=-1)  # (..., N+1)
    return K_ext[..., idx]


def diagonal_sums(M: Tensor) -> Tensor:
    """``out[..., k] = Σ_t M[..., t, t − k]`` for k = 0..N-1 (sub-diagonal sums), no scatter/atomics.

    Skew trick: after flipping columns, entry (t, s') sits at flat index t(2N−1) + (t + s') of the
    zero-padded (N, 2N) matrix, so viewing it as (N, 2N−1) puts diagonal ``t − s = k`` in column N−1+k.
    """
    N = M.shape[-1]
    P = torch.nn.functional.pad(M.flip(-1), (0, N))  # (..., N, 2N)
    P = P.reshape(*M.shape[:-2], 2 * N * N)[..., : N * (2 * N - 1)].reshape(*M.shape[:-2], N, 2 * N - 1)
    return P.sum(-2)[..., N - 1:]  # (..., N)


class ToeplitzConv(torch.autograd.Function):
    """``y = T(K) x``: causal convolution as a batched matmul; backward ``dK = diagonal_sums(dy xᵀ)``.

    K: (R, D, N); x: (R, D, N, B) or (D, N, B) shared by the runs -> (R, D, N, B). A custom backward
    because autograd's gather backward is a scatter-add with up to N atomic adds per tap.
    """

    @staticmethod
    def forward(ctx, K, x, idx):
        T = toeplitz(K, idx)  # (R, D, N, N)
        ctx.save_for_backward(T, x)
        return torch.matmul(T, x)

    @staticmethod
    def backward(ctx, dy):
        T, x = ctx.saved_tensors
        dK = dx = None
        if ctx.needs_input_grad[0]:
            dT = torch.matmul(dy, x.transpose(-1, -2))  # (R, D, N, N)
            dK = diagonal_sums(dT)
        if ctx.needs_input_grad[1]:
            dx = torch.matmul(T.transpose(-1, -2), dy)
            if x.dim() < dx.dim():
                dx = dx.sum(0)
        return dK, dx, None


def full_diagonal_sums(M: Tensor) -> Tensor:
    """``out[..., Q−1+k] = Σ_t M[..., t, t − k]`` for k = −(Q−1)..Q−1 (every diagonal of a square M): (..., 2Q−1).

    The skew trick of :func:`diagonal_sums` keeping the diagonals above the main one too.
    """
    Q = M.shape[-1]
    P = torch.nn.functional.pad(M.flip(-1), (0, Q))  # (..., Q, 2Q)
    P = P.reshape(*M.shape[:-2], 2 * Q * Q)[..., : Q * (2 * Q - 1)].reshape(*M.shape[:-2], Q, 2 * Q - 1)
    return P.sum(-2)  # (..., 2Q−1)


def block_toeplitz_index(nc: int, Q: int, device) -> Tensor:
    """(nc, Q, Q) indices into ``[K_0..K_{nc·Q−1}, 0]``: block lag d holds ``d·Q + i − j`` (``nc·Q`` where negative)."""
    i = torch.arange(Q, device=device)
    lag = torch.arange(nc, device=device)[:, None, None] * Q + i[:, None] - i[None, :]  # (nc, Q, Q)
    return torch.where(lag >= 0, lag, torch.full_like(lag, nc * Q))


def to_chunks(x: Tensor, Q: int) -> Tensor:
    """(..., nc·Q, B) -> chunk-major (..., Q, nc·B): column ``c·B + b`` of row i is ``x[c·Q + i, b]``."""
    nc, B = x.shape[-2] // Q, x.shape[-1]
    return x.reshape(*x.shape[:-2], nc, Q, B).transpose(-3, -2).reshape(*x.shape[:-2], Q, nc * B)


def from_chunks(y: Tensor, nc: int) -> Tensor:
    """The inverse of :func:`to_chunks`: (..., Q, nc·B) -> (..., nc·Q, B)."""
    Q, B = y.shape[-2], y.shape[-1] // nc
    return y.reshape(*y.shape[:-2], Q, nc, B).transpose(-3, -2).reshape(*y.shape[:-2], nc * Q, B)


class BlockToeplitzConv(torch.autograd.Function):
    """:class:`ToeplitzConv` by blocks: ``y_c = Σ_{d=0}^{c} T_d x_{c−d}`` over chunks of length Q, where
    ``T_d[i, j] = K_{dQ+i−j}`` (Q×Q; T_0 lower-triangular). The zero blocks above the diagonal are skipped, so
    the products cost ``N²·(nc+1)/(2nc)`` instead of ``N²`` per column. In the chunk-major layout
    (:func:`to_chunks`) the chunks ``c < nc − d`` are the first ``(nc−d)·B`` columns, so each block lag d is one
    GEMM on a strided view (no copies): ``Y[:, dB:] += T_d X[:, :(nc−d)B]``; backward
    ``dX[:, :(nc−d)B] += T_dᵀ dY[:, dB:]``, ``dT_d = dY[:, dB:] X[:, :(nc−d)B]ᵀ`` and ``dK`` from the diagonal sums
    of each ``dT_d`` (:func:`full_diagonal_sums`).

    K: (R, D, nc·Q); xc: (R, D, Q, nc·B) or (D, Q, nc·B) chunk-major; bidx = ``block_toeplitz_index(nc, Q)``
    -> (R, D, Q, nc·B) chunk-major. A test holds it to :class:`ToeplitzConv`.
    """

    @staticmethod
    def forward(ctx, K, xc, bidx):
        nc = bidx.shape[0]
        B = xc.shape[-1] // nc
        T = torch.cat([K, torch.zeros_like(K[..., :1])], dim=-1)[..., bidx]  # (R, D, nc, Q, Q)
        y = torch.matmul(T[:, :, 0], xc)  # d = 0: (R, D, Q, nc·B)
        for d in range(1, nc):
            y[..., d * B:] += torch.matmul(T[:, :, d], xc[..., : (nc - d) * B])
        ctx.save_for_backward(T, xc)
        return y

    @staticmethod
    def backward(ctx, dy):
        T, xc = ctx.saved_tensors
        R, D, nc, Q = T.shape[0], T.shape[1], T.shape[2], T.shape[3]
        B = dy.shape[-1] // nc
        dK = dx = None
        if ctx.needs_input_grad[0]:
            dK = dy.new_zeros(R, D, nc, Q)
            for d in range(nc):
                dT = torch.matmul(dy[..., d * B:], xc[..., : (nc - d) * B].transpose(-1, -2))  # (R, D, Q, Q)
                full = full_diagonal_sums(dT)  # (R, D, 2Q−1): lags dQ − (Q−1) .. dQ + Q − 1
                dK[:, :, d] += full[..., Q - 1:]
                if d:
                    dK[:, :, d - 1, 1:] += full[..., : Q - 1]
            dK = dK.reshape(R, D, nc * Q)
        if ctx.needs_input_grad[1]:
            Tt = T.transpose(-1, -2)
            dx = torch.matmul(Tt[:, :, 0], dy)  # (R, D, Q, nc·B)
            for d in range(1, nc):
                dx[..., : (nc - d) * B] += torch.matmul(Tt[:, :, d], dy[..., d * B:])
            if xc.dim() < dx.dim():
                dx = dx.sum(0)
        return dK, dx, None


def _unit_scale(t: Tensor, dims) -> Tuple[Tensor, Tensor]:
    """``(t / s, s)`` with ``s = max |t|`` over ``dims`` (kept), 1 where that max is 0: per-(run, channel)
    scaling so that the half-precision copy uses fp16's full relative precision and cannot overflow."""
    s = t.detach().abs().amax(dim=dims, keepdim=True)
    s = torch.where(s > 0, s, torch.ones_like(s))
    return t / s, s


def _bmm_fp32_out(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` of fp16 operands with fp32 accumulation and fp32 output, batched over leading dims.

    CUDA: cuBLAS' fp16 tensor-core GEMM writing fp32 (``aten::bmm.dtype``). Elsewhere the fp16
    operands are multiplied in fp32 (same operand rounding, so CPU tests see the same error model).
    """
    lead = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a = a.expand(*lead, *a.shape[-2:]).reshape(-1, *a.shape[-2:])
    b = b.expand(*lead, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
    if a.is_cuda:
        out = torch.bmm(a, b, out_dtype=torch.float32)
    else:
        out = torch.bmm(a.float(), b.float())
    return out.reshape(*lead, *out.shape[-2:])


class ToeplitzConvHalf(torch.autograd.Function):
    """:class:`ToeplitzConv` with fp16 GEMM operands (fp32 accumulation and output): ``--precision fp16``.

    fp16 keeps 11 significant bits, the same as TF32's operand rounding, at twice TF32's tensor-core
    rate. Each operand is scaled to max |.| = 1 per (run, channel) before the cast (so neither the
    kernel, the activations nor the tiny loss gradients leave fp16's normal range) and the fp32
    product is scaled back. Same signature as :class:`ToeplitzConv`; a test holds the two together.
    """

    @staticmethod
    def forward(ctx, K, x, idx):
        T, sT = _unit_scale(toeplitz(K, idx), (-2, -1))  # (R, D, N, N), (R, D, 1, 1)
        xs, sx = _unit_scale(x, (-2, -1))  # (R, D, N, B) or (D, N, B)
        Th, xh = T.half(), xs.half()
        ctx.save_for_backward(Th, sT, xh, sx)
        ctx.x_shared = x.dim() < K.dim() + 1
        return _bmm_fp32_out(Th, xh) * (sT * sx)

    @staticmethod
    def backward(ctx, dy):
        Th, sT, xh, sx = ctx.saved_tensors
        dys, sdy = _unit_scale(dy, (-2, -1))
        dyh = dys.half()
        dK = dx = None
        if ctx.needs_input_grad[0]:
            dT = _bmm_fp32_out(dyh, xh.transpose(-1, -2)) * (sdy * sx)  # (R, D, N, N)
            dK = diagonal_sums(dT)
        if ctx.needs_input_grad[1]:
            dx = _bmm_fp32_out(Th.transpose(-1, -2), dyh) * (sT * sdy)
            if ctx.x_shared:
                dx = dx.sum(0)
        return dK, dx, None


# ------------------------------------------------------------------------------------ the forms
def toeplitz_form(p: Dict[str, Tensor], x: Tensor, idx: Tensor) -> Tensor:
    """``T(K) x`` with the N×N Toeplitz matrices: p (R, ...) layer parameters, x (R, D, N, B) or (D, N, B),
    idx = ``toeplitz_index(N)`` -> (R, D, N, B)."""
    K = s4d_kernel(p, x.shape[-2])  # (R, D, N)
    return ToeplitzConv.apply(K, x, idx)


def fft_form(p: Dict[str, Tensor], x: Tensor, idx: Optional[Tensor] = None) -> Tensor:
    """``irfft(rfft(K, 2N) · rfft(x, 2N))[:N]`` along the sequence axis (idx unused) -> (R, D, N, B).

    Zero padding to 2N makes the circular convolution causal (no wrap-around for lags < N).
    """
    N = x.shape[-2]
    n = 2 * N
    K = s4d_kernel(p, N)  # (R, D, N)
    Kf = torch.fft.rfft(K, n=n, dim=-1)  # (R, D, N+1) complex
    xf = torch.fft.rfft(x, n=n, dim=-2)  # (R, D, N+1, B) or (D, N+1, B)
    return torch.fft.irfft(Kf[..., None] * xf, n=n, dim=-2)[..., :N, :]  # (R, D, N, B)


CHUNK_TARGET = 64  # default chunk length: ~64 keeps the intra-chunk GEMMs tensor-core sized and nc small


def chunk_length(N: int, target: int = CHUNK_TARGET) -> int:
    """Q for N: the smallest Q with ⌈N/Q⌉ = ⌈N/target⌉ chunks (least zero padding), e.g. N = 200 -> 50."""
    nc = -(-N // max(1, min(target, N)))
    return -(-N // nc)


def _powers(lx: Tensor, ly: Tensor, e: Tensor) -> Tuple[Tensor, Tensor]:
    """``Re, Im of λ^e`` with ``log λ = lx + i ly`` (..., Hc) and exponents e (...,) ≥ 0 -> (..., Hc, len(e))."""
    mag = torch.exp(lx[..., None] * e)
    ang = ly[..., None] * e
    return mag * torch.cos(ang), mag * torch.sin(ang)


def chunked_form(p: Dict[str, Tensor], x: Tensor, idx: Optional[Tensor] = None, Q: int = 0) -> Tensor:
    """Chunked (semiseparable) convolution, steps (1)–(4) of the module docstring (idx unused) -> (R, D, N, B).

    Q: chunk length (0: :func:`chunk_length`). Exact up to rounding for any Q in [1, N].
    """
    N, B = x.shape[-2], x.shape[-1]
    Q = Q or chunk_length(N)
    nc = -(-N // Q)
    Np = nc * Q
    lx, ly, G_re, G_im = s4d_modes(p)  # (R, D, Hc)
    R, D, Hc = lx.shape
    if Np > N:
        x = torch.nn.functional.pad(x, (0, 0, 0, Np - N))  # (..., D, Np, B)
    xc = to_chunks(x, Q)  # (..., D, Q, nc·B)
    # (1) intra-chunk Toeplitz products, skip folded into lag 0
    KQ = s4d_kernel(p, Q)  # (R, D, Q)
    s = ToeplitzConv.apply(KQ, xc, toeplitz_index(Q, x.device))  # (R, D, Q, nc·B)
    if nc > 1:
        dev, dt = lx.device, lx.dtype
        j = torch.arange(Q, device=dev, dtype=dt)
        # (2) chunk-end states h_c = Σ_j λ^{Q−1−j} x_{cQ+j}
        V_re, V_im = _powers(lx, ly, Q - 1 - j)  # (R, D, Hc, Q)
        h = torch.matmul(torch.cat([V_re, V_im], dim=-2), xc)  # (R, D, 2Hc, nc·B)
        h = h.reshape(R, D, 2, Hc, nc, B)
        h_re, h_im = h[:, :, 0], h[:, :, 1]  # (R, D, Hc, nc, B)
        # (3) S_c = Σ_{c'<c} μ^{c−1−c'} h_{c'}, μ = λ^Q; masked exponents clamped at 0 (no overflow)
        c = torch.arange(nc, device=dev)
        m = c[:, None] - 1 - c[None, :]  # (nc, nc)
        valid = (m >= 0).to(dt)
        M_re, M_im = _powers(lx[..., None], ly[..., None], Q * m.clamp_min(0).to(dt))  # (R, D, Hc, nc, nc)
        M_re, M_im = M_re * valid, M_im * valid
        S_re = torch.matmul(M_re, h_re) - torch.matmul(M_im, h_im)  # (R, D, Hc, nc, B)
        S_im = torch.matmul(M_re, h_im) + torch.matmul(M_im, h_re)
        S = torch.cat([S_re, S_im], dim=2).reshape(R, D, 2 * Hc, nc * B)  # (R, D, 2Hc, nc·B)
        # (4) s_{cQ+i} += 2 Re Σ_h G_h λ^{i+1} S_{c,h}
        P_re, P_im = _powers(lx, ly, j + 1)  # (R, D, Hc, Q)
        GP_re = G_re[..., None] * P_re - G_im[..., None] * P_im  # Re(G λ^{i+1})
        GP_im = G_re[..., None] * P_im + G_im[..., None] * P_re  # Im(G λ^{i+1})
        Wout = 2 * torch.cat([GP_re, -GP_im], dim=-2).transpose(-1, -2)  # (R, D, Q, 2Hc)
        s = s + torch.matmul(Wout, S)  # (R, D, Q, nc·B)
    s = from_chunks(s, nc)  # (R, D, Np, B)
    return s[..., :N, :] if Np > N else s


def blocked_form(p: Dict[str, Tensor], x: Tensor, idx: Optional[Tensor] = None, Q: int = 0) -> Tensor:
    """The Toeplitz product by Q×Q blocks, zero blocks skipped (:class:`BlockToeplitzConv`; idx unused):
    exact for any kernel, ``(nc+1)/(2nc)`` of the Toeplitz form's GEMM work -> (R, D, N, B).

    Q: block length (0: :func:`chunk_length`); x is zero-padded to nc·Q positions.
    """
    N = x.shape[-2]
    Q = Q or chunk_length(N)
    nc = -(-N // Q)
    if nc * Q > N:
        x = torch.nn.functional.pad(x, (0, 0, 0, nc * Q - N))  # (..., D, nc·Q, B)
    K = s4d_kernel(p, nc * Q)  # (R, D, nc·Q)
    s = BlockToeplitzConv.apply(K, to_chunks(x, Q), block_toeplitz_index(nc, Q, x.device))  # (R, D, Q, nc·B)
    s = from_chunks(s, nc)  # (R, D, nc·Q, B)
    return s[..., :N, :] if nc * Q > N else s


def conv_reference(p: Dict[str, Tensor], x: Tensor, idx: Optional[Tensor] = None) -> Tensor:
    """Float64 reference twin of the forms: per run, ``theory.ssm.ssm_recurrence`` (explicit recurrence
    ``h_t = Ā h_{t−1} + B̄ x_t``, ``y_t = 2 Re C h_t``) plus ``u ⊙ x`` -> (R, D, N, B), float64, CPU."""
    from synthetic.s4.twin import to_theory_model
    from theory.ssm import ssm_recurrence

    R = p["u"].shape[0]
    x = x.detach().to("cpu", torch.float64)
    out = []
    for r in range(R):
        q = {k: v[r] for k, v in p.items()}
        layer = to_theory_model([q]).layers[0]
        xr = x[r] if x.dim() == 4 else x  # (D, N, B)
        y = ssm_recurrence(layer.ssm, xr.permute(2, 0, 1)).permute(1, 2, 0)  # (D, N, B)
        out.append(y + layer.u[:, None, None] * xr)
    return torch.stack(out)
