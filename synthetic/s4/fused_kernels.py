"""The Triton kernels of :mod:`synthetic.s4.fused` (issue 31): the causal convolution ``s = T(K) act(x)``, its dx and
its dK, for one (run, channel) per program row. Imported only when a kernel is first launched, so that importing
:mod:`synthetic.s4.fused` needs no Triton (the tile configs and the autotuner stay there).

Grids put the row tile (or the lag-band pair) on axis 0, the fastest-launched one: the programs that read the same
(run, channel, batch block) of x or ds run side by side and share it through L2.
"""

import triton
import triton.language as tl


@triton.jit
def conv_fwd(K_ptr, x_ptr, s_ptr, N, B, D, sxr, RELU_IN: tl.constexpr, DOT_PREC: tl.constexpr,
             BT: tl.constexpr, BJ: tl.constexpr, BB: tl.constexpr, BATCH_M: tl.constexpr):
    """s[t, b] = Σ_{j<=t} K[t−j] act(x[j, b]) for one (run, channel), a BT×BB output tile."""
    pt = tl.program_id(0)
    rd = tl.program_id(1).to(tl.int64)  # run * D + channel
    t = pt * BT + tl.arange(0, BT)
    b = tl.program_id(2) * BB + tl.arange(0, BB)
    K_row = K_ptr + rd * N
    x_base = x_ptr + (rd // D) * sxr + (rd % D) * N * B  # sxr = 0: x shared by the runs
    if BATCH_M:
        acc = tl.zeros((BB, BT), dtype=tl.float32)  # sᵀ tile
    else:
        acc = tl.zeros((BT, BB), dtype=tl.float32)
    for j0 in range(0, (pt + 1) * BT, BJ):  # causal: inner positions up to the tile's last row
        j = j0 + tl.arange(0, BJ)
        if BATCH_M:
            lag = t[None, :] - j[:, None]  # (BJ, BT)
            Tt = tl.load(K_row + lag, mask=(lag >= 0) & (t[None, :] < N), other=0.0)  # Tᵀ tile from K
            xt = tl.load(x_base + j[None, :] * B + b[:, None], mask=(j[None, :] < N) & (b[:, None] < B),
                         other=0.0)  # (BB, BJ)
            if RELU_IN:
                xt = tl.maximum(xt, 0.0)
            acc += tl.dot(xt, Tt, input_precision=DOT_PREC)
        else:
            lag = t[:, None] - j[None, :]  # (BT, BJ)
            Tt = tl.load(K_row + lag, mask=(lag >= 0) & (t[:, None] < N), other=0.0)  # Toeplitz tile from K
            xt = tl.load(x_base + j[:, None] * B + b[None, :], mask=(j[:, None] < N) & (b[None, :] < B),
                         other=0.0)  # (BJ, BB)
            if RELU_IN:
                xt = tl.maximum(xt, 0.0)
            acc += tl.dot(Tt, xt, input_precision=DOT_PREC)
    if BATCH_M:
        tl.store(s_ptr + rd * N * B + t[None, :] * B + b[:, None], acc, mask=(t[None, :] < N) & (b[:, None] < B))
    else:
        tl.store(s_ptr + rd * N * B + t[:, None] * B + b[None, :], acc, mask=(t[:, None] < N) & (b[None, :] < B))


@triton.jit
def conv_bwd_dx(K_ptr, ds_ptr, x_ptr, dx_ptr, N, B, D, sxr, RELU_IN: tl.constexpr, DOT_PREC: tl.constexpr,
                BT: tl.constexpr, BJ: tl.constexpr, BB: tl.constexpr, BATCH_M: tl.constexpr):
    """dx[j, b] = [x[j, b] > 0] Σ_{t>=j} K[t−j] ds[t, b] (mask only with RELU_IN), a BT×BB tile of rows j."""
    pj = tl.program_id(0)
    rd = tl.program_id(1).to(tl.int64)
    j = pj * BT + tl.arange(0, BT)
    b = tl.program_id(2) * BB + tl.arange(0, BB)
    K_row = K_ptr + rd * N
    ds_base = ds_ptr + rd * N * B
    if BATCH_M:
        acc = tl.zeros((BB, BT), dtype=tl.float32)  # dxᵀ tile
    else:
        acc = tl.zeros((BT, BB), dtype=tl.float32)
    for t0 in range(pj * BT, N, BJ):  # anti-causal: outputs at or after the tile's first row
        t = t0 + tl.arange(0, BJ)
        if BATCH_M:
            lag = t[:, None] - j[None, :]  # (BJ, BT)
            Tt = tl.load(K_row + lag, mask=(lag >= 0) & (t[:, None] < N) & (j[None, :] < N), other=0.0)
            dst = tl.load(ds_base + t[None, :] * B + b[:, None], mask=(t[None, :] < N) & (b[:, None] < B),
                          other=0.0)  # (BB, BJ)
            acc += tl.dot(dst, Tt, input_precision=DOT_PREC)
        else:
            lag = t[None, :] - j[:, None]  # (BT, BJ)
            Tt = tl.load(K_row + lag, mask=(lag >= 0) & (t[None, :] < N) & (j[:, None] < N), other=0.0)
            dst = tl.load(ds_base + t[:, None] * B + b[None, :], mask=(t[:, None] < N) & (b[None, :] < B),
                          other=0.0)  # (BJ, BB)
            acc += tl.dot(Tt, dst, input_precision=DOT_PREC)
    x_base = x_ptr + (rd // D) * sxr + (rd % D) * N * B
    if BATCH_M:
        offs, io = j[None, :] * B + b[:, None], (j[None, :] < N) & (b[:, None] < B)
    else:
        offs, io = j[:, None] * B + b[None, :], (j[:, None] < N) & (b[None, :] < B)
    if RELU_IN:
        xt = tl.load(x_base + offs, mask=io, other=0.0)
        acc = tl.where(xt > 0, acc, 0.0)
    tl.store(dx_ptr + rd * N * B + offs, acc, mask=io)


@triton.jit
def band_partials(acc, d, lo, nd, slot_ptr, P_row, N, BT: tl.constexpr):
    """Sum the diagonals of band d's tile ``acc[p, q]`` (lag d·BT + p − q) through the BT×BT scratch slot and
    store them into P_row (2, N): lags d·BT + m (m = p − q >= 0) into half 0, lags d·BT − m (m = q − p > 0)
    into half 1; only if d > lo (the second band of a pair only if it differs from the first). Every slot of P is
    stored by exactly one band whatever BT: half 1 at d·BT by band d (a zero), at d·BT − m by band d (m >= 1), and
    the last band zeroes its own lags' half-1 slots (no band above it)."""
    ar = tl.arange(0, BT)
    tl.store(slot_ptr + ar[:, None] * BT + ar[None, :], acc)
    tl.debug_barrier()  # the slot written by every thread before any reads it skewed
    m, p = ar[:, None], ar[None, :]  # (BT, 1), (1, BT): diagonal offset, row
    low = tl.sum(tl.load(slot_ptr + p * BT + (p - m), mask=p >= m, other=0.0), axis=1)  # Σ_p acc[p, p−m]
    high = tl.sum(tl.load(slot_ptr + p * BT + (p + m), mask=(p + m < BT) & (m > 0), other=0.0), axis=1)
    ok = (d + 0 * ar) > lo
    lag = d * BT + ar
    tl.store(P_row + lag, low, mask=ok & (lag < N))
    lag_hi = d * BT - ar
    tl.store(P_row + N + lag_hi, high, mask=ok & (lag_hi >= 0) & (lag_hi < N) & (ar > 0))
    tl.store(P_row + N + lag, tl.zeros((BT,), dtype=tl.float32),
             mask=ok & (lag < N) & ((ar == 0) | (d + 0 * ar == nd - 1)))


@triton.jit
def band_tile(ds_base, x_base, d, i_start, nd, N, B, b_lo, b_hi, RELU_IN: tl.constexpr, DOT_PREC: tl.constexpr,
              BT: tl.constexpr, BB: tl.constexpr):
    """Band d's tile ``Σ_{i=i_start}^{nd−1} Σ_{b_lo<=b<b_hi} ds[i·BT + p, b] act(x[(i−d)·BT + q, b])`` (BT, BT): the
    batch is the inner loop, with pointers advanced by BB (the pattern of a plain matmul's K loop: few live
    registers; with the batch outside and the tile pairs inside, ptxas spilled)."""
    ar = tl.arange(0, BT)
    ab = tl.arange(0, BB)
    acc = tl.zeros((BT, BT), dtype=tl.float32)
    for i in range(i_start, nd):
        t = i * BT + ar
        s = t - d * BT
        dp = ds_base + t[:, None] * B + (b_lo + ab)[None, :]  # (BT, BB)
        xp = x_base + s[None, :] * B + (b_lo + ab)[:, None]  # (BB, BT)
        for b0 in range(b_lo, b_hi, BB):
            dst = tl.load(dp, mask=(t[:, None] < N) & (ab[None, :] < b_hi - b0), other=0.0)
            xs = tl.load(xp, mask=(s[None, :] < N) & (ab[:, None] < b_hi - b0), other=0.0)
            if RELU_IN:
                xs = tl.maximum(xs, 0.0)
            acc += tl.dot(dst, xs, input_precision=DOT_PREC)
            dp += BB
            xp += BB
    return acc


@triton.jit
def conv_bwd_dK(ds_ptr, x_ptr, P_ptr, scr_ptr, N, B, D, sxr, BC, RELU_IN: tl.constexpr,
                DOT_PREC: tl.constexpr, BT: tl.constexpr, BB: tl.constexpr):
    """Lag bands d0 = q and d1 = nd−1−q of dK for one (run, channel) and one batch chunk, no N×N intermediate:

        dK[d·BT + p − q] += Σ_i Σ_b ds[i·BT + p, b] act(x[(i−d)·BT + q, b])   (p, q < BT; i = d..nd−1)

    Each band's BT×BT tile is accumulated by tensor-core dots over its tile pairs (i, i−d) and the chunk's batch
    columns (:func:`band_tile`), then its diagonals are summed once (:func:`band_partials`). Pairing band q with
    band nd−1−q gives every program nd+1 tile pairs (the middle band of an odd nd alone: (nd+1)/2), so the programs
    take equal time; the pairs of one (run, channel) are launched side by side and read its ds and x rows.
    """
    q = tl.program_id(0)
    rd = tl.program_id(1).to(tl.int64)
    sp = tl.program_id(2)
    nd = tl.cdiv(N, BT)
    d0, d1 = q, nd - 1 - q
    ds_base = ds_ptr + rd * N * B
    x_base = x_ptr + (rd // D) * sxr + (rd % D) * N * B
    b_lo = sp * BC
    b_hi = tl.minimum(b_lo + BC, B)
    slot = (((sp.to(tl.int64) * tl.num_programs(1) + rd) * tl.num_programs(0) + q) * 2) * BT * BT
    P_row = P_ptr + (sp.to(tl.int64) * tl.num_programs(1) + rd) * 2 * N
    acc = band_tile(ds_base, x_base, d0, d0, nd, N, B, b_lo, b_hi, RELU_IN, DOT_PREC, BT, BB)
    band_partials(acc, d0, d0 - 1, nd, scr_ptr + slot, P_row, N, BT)
    i1_start = tl.where(d1 > d0, d1, nd)  # the middle band (d1 == d0) once: an empty loop, nothing stored
    acc = band_tile(ds_base, x_base, d1, i1_start, nd, N, B, b_lo, b_hi, RELU_IN, DOT_PREC, BT, BB)
    band_partials(acc, d1, d0, nd, scr_ptr + slot + BT * BT, P_row, N, BT)
