"""Exact Jacobian ranks for the Theorem 1 probe (Galim et al., ICML 2025, Sec. 5; ``capacity_probe.py``):
the same maps as :func:`capacity_probe.budget_map` and :func:`capacity_probe.target_map` (trainable parameters ↦
transfer matrix ``T(z)`` and bias response ``b(z)`` at ``K`` points), differentiated in exact
arithmetic over the prime field ``GF(p)`` at a random integer point.

Why: some float64 probe rows have no clean gap between the singular values (e.g. D = 10, L = 4,
L* = 2, r = 4: σ_r/σ_{r+1} = 1.4), so their numerical rank is a guess. Over ``GF(p)`` there is no
rounding; the rank is computed by Gaussian elimination on integers.

What the number means (and does not): the maps are rational with integer coefficients. At an integer
point ``θ0`` and integer points ``z_k`` where every ``1 − a z_k`` is invertible mod p, the Jacobian
over ``GF(p)`` is the reduction of the rational Jacobian at that point, and a minor that is nonzero mod p
is nonzero over Q. Hence ``rank_p ≤ rank_Q J(θ0) ≤ generic rank``: the result is a certified LOWER
bound on the generic rank (the dimension of the reached family). It equals the generic rank with
probability ≥ 1 − deg/p over the random point (Schwartz–Zippel), so it is the generic rank in all
likelihood, but only the lower bound is proved. The evaluation at K points loses no rank for
``K ≥ 2n + 1`` (``ProbeConfig.n_points``; over GF(p) the same degree argument holds for distinct z_k).

Field arithmetic is numpy int64 with ``p < 2^29``: products of two residues and sums of up to 24 of
them stay below 2^63.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from ._validate import check_int
from .layout import budget_shapes, target_dim_formula

P_DEFAULT = 536870909  # the largest prime below 2^29 (checked by the tests with sympy.isprime)
_MAX_D = 12  # int64 headroom: 2·D·p² < 2^63 needs D <= 15; 12 leaves margin


P_MAX = 2**29  # int64 field arithmetic (module docstring): every p must be below this


def _is_prime(n: int) -> bool:
    """Trial division (n < 2^29: divisors up to 23,170)."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    return all(n % d for d in range(3, math.isqrt(n) + 1, 2))


def check_prime(p, name: str = "p") -> int:
    """``p`` is a prime below :data:`P_MAX` (the field GF(p); int64 arithmetic overflows above it). Returns it as an
    int; ValueError naming ``name`` otherwise (a composite p is not a field: a rank mod p would mean nothing)."""
    p = check_int(name, p)
    if p >= P_MAX:
        raise ValueError(f"{name}: must be below 2^29 = {P_MAX} (int64 field arithmetic: sums of products of residues "
                         f"overflow above it), got {p}")
    if p < 2:
        raise ValueError(f"{name}: must be a prime (GF(p) is a field only then), got {p}")
    if not _is_prime(p):
        d = next(d for d in range(2, math.isqrt(p) + 1) if p % d == 0)
        raise ValueError(f"{name}: must be a prime (GF(p) is a field only then), got {p} = {d} x {p // d}")
    return p


def _check_points(K: int, p: int) -> None:
    if p - 3 < K:  # K distinct points in [2, p − 2]
        raise ValueError(f"p: {p} leaves {max(p - 3, 0)} evaluation points in [2, p - 2], fewer than the "
                         f"{K} distinct points the probe needs (cfg.n_points); use a larger prime")


def _distinct_points(rng: np.random.Generator, K: int, p: int) -> np.ndarray:
    """K distinct evaluation points in [2, p − 2] (drawn until distinct; collisions are rare for K << p)."""
    _check_points(K, p)
    while True:
        z = rng.integers(2, p - 1, K, dtype=np.int64)
        if np.unique(z).size == K:
            return z


def _inv(x: np.ndarray, p: int) -> np.ndarray:
    """Elementwise inverse mod p (x != 0 mod p), by Fermat: x^(p−2)."""
    flat = [pow(int(v), p - 2, p) for v in x.reshape(-1)]
    return np.array(flat, dtype=np.int64).reshape(x.shape)


class _Dual:
    """A value (shape S) with its gradient (P, *S) over GF(p)."""

    __slots__ = ("v", "g", "p")

    def __init__(self, v: np.ndarray, g: np.ndarray, p: int):
        self.v, self.g, self.p = v % p, g % p, p


def _param(theta: np.ndarray, offset: int, shape: Tuple[int, ...], P: int, p: int) -> _Dual:
    n = math.prod(shape)
    g = np.zeros((P, n), dtype=np.int64)
    g[np.arange(offset, offset + n), np.arange(n)] = 1
    return _Dual(theta[offset: offset + n].reshape(shape), g.reshape((P,) + shape), p)


def _const(v: np.ndarray, P: int, p: int) -> _Dual:
    return _Dual(np.asarray(v, dtype=np.int64), np.zeros((P,) + np.shape(v), dtype=np.int64), p)


def _matmul(a: _Dual, b: _Dual) -> _Dual:
    """(..., n, m) @ (..., m, k) with the product rule; each matmul reduced mod p before summing."""
    p = a.p
    v = (a.v @ b.v) % p
    g = ((a.g @ b.v[None]) % p + (a.v[None] @ b.g) % p) % p
    return _Dual(v, g, p)


def _kernel_tf(a: _Dual, bc: _Dual, z: np.ndarray, inv_cache) -> _Dual:
    """``κ(z_k)_d = Σ_i bc_{d,i} / (1 − a_{d,i} z_k)``: a, bc (s, h) -> (K, s)."""
    p = a.p
    den = (1 - a.v[None] * z[:, None, None]) % p  # (K, s, h)
    if bool((den == 0).any()):
        raise ValueError("z: 1 − a z is 0 mod p at the drawn point; draw another seed")
    inv = _inv(den, p)  # (K, s, h)
    inv2 = (inv * inv) % p
    v = ((bc.v[None] * inv) % p).sum(-1) % p  # (K, s)
    # d/d(bc) = inv ; d/d(a) = bc z inv²
    g = ((bc.g[:, None] * inv[None]) % p).sum(-1)
    g = (g + ((a.g[:, None] * ((bc.v[None] * z[:, None, None]) % p * inv2 % p)[None]) % p).sum(-1)) % p
    return _Dual(v, g, p)


def _compose(layers: List[Tuple[_Dual, _Dual]], D: int, K: int, P: int, p: int) -> np.ndarray:
    """``T = T_L ⋯ T_1``, ``b = Σ_j T_{>j} β_j`` from per-layer (T_j (K, D, D), β_j (D,)); returns the
    Jacobian (P, K·D·D + K·D) mod p."""
    T = _const(np.broadcast_to(np.eye(D, dtype=np.int64), (K, D, D)).copy(), P, p)
    b = _const(np.zeros((K, D, 1), dtype=np.int64), P, p)
    for Tj, beta in layers:
        T = _matmul(Tj, T)
        b = _matmul(Tj, b)
        b = _Dual(b.v + beta.v[None, :, None], b.g + beta.g[:, None, :, None], p)
    return np.concatenate([T.g.reshape(P, -1), b.g.reshape(P, -1)], axis=1) % p


def _layer_tf(W: _Dual, m: _Dual) -> _Dual:
    """``T_j(z_k) = W diag(m_k)``: W (D, D), m (K, D) -> (K, D, D)."""
    p = W.p
    v = (W.v[None] * m.v[:, None, :]) % p
    g = ((W.g[:, None] * m.v[None, :, None, :]) % p + (W.v[None, None] * m.g[:, :, None, :]) % p) % p
    return _Dual(v, g, p)


def _scatter_channels(kappa: _Dual, blk, D: int) -> _Dual:
    """(K, s) -> (K, D) with zeros outside the block."""
    K, P = kappa.v.shape[0], kappa.g.shape[0]
    v = np.zeros((K, D), dtype=np.int64)
    g = np.zeros((P, K, D), dtype=np.int64)
    if blk:
        v[:, list(blk)] = kappa.v
        g[:, :, list(blk)] = kappa.g
    return _Dual(v, g, kappa.p)


def budget_jacobian_mod_p(cfg, seed: int = 0, p: int = P_DEFAULT) -> np.ndarray:
    """``cfg``: a ``capacity_probe.ProbeConfig``. The Jacobian of :func:`capacity_probe.budget_map`'s layout (same parameters in the same order: per layer
    a, c of the tuned block, u, β, then LoRA A, B or the last W) at a random integer point, mod p."""
    if cfg.D > _MAX_D:
        raise ValueError(f"cfg.D: at most {_MAX_D} for int64 field arithmetic, got {cfg.D}")
    p = check_prime(p)
    seed = check_int("seed", seed, lo=0)
    rng = np.random.default_rng(seed)
    D, Hs, K = cfg.D, cfg.H_star, cfg.n_points
    z = _distinct_points(rng, K, p)
    frozen_W = [rng.integers(0, p, (D, D), dtype=np.int64) for _ in range(cfg.L)]
    frozen_b = [rng.integers(1, p, (D, Hs), dtype=np.int64) for _ in range(cfg.L)]
    shapes = budget_shapes(cfg.blocks, cfg.L, D, Hs, cfg.rank)
    sizes = [math.prod(sh) for _, _, sh in shapes]
    P = sum(sizes)
    theta = rng.integers(0, p, P, dtype=np.int64)
    params, off = {}, 0
    for (name, j, sh), n in zip(shapes, sizes):
        params[(name, j)] = _param(theta, off, sh, P, p)
        off += n
    layers = []
    for j, blk in enumerate(cfg.blocks):
        a, c = params[("a", j)], params[("c", j)]
        b0 = frozen_b[j][list(blk)] if blk else np.zeros((0, Hs), dtype=np.int64)
        bc = _Dual(c.v * b0, c.g * b0[None], p)
        kappa = _scatter_channels(_kernel_tf(a, bc, z, None), blk, D)  # (K, D)
        u = params[("u", j)]
        if cfg.skip != "inside":
            raise ValueError("cfg.skip: the exact probe is implemented for skip='inside' only")
        m = _Dual(kappa.v + u.v[None], kappa.g + u.g[:, None], p)  # κ + u
        if ("W", j) in params:
            W = params[("W", j)]
        elif ("lora_A", j) in params:
            BA = _matmul(params[("lora_B", j)], params[("lora_A", j)])
            W = _Dual(frozen_W[j] + BA.v, BA.g, p)
        else:
            W = _const(frozen_W[j], P, p)
        layers.append((_layer_tf(W, m), params[("beta", j)]))
    return _compose(layers, D, K, P, p)


def target_jacobian_mod_p(cfg, seed: int = 0, p: int = P_DEFAULT) -> np.ndarray:
    """The Jacobian of :func:`capacity_probe.target_map` (per target layer a*, b*, c*, W*, β*) mod p."""
    p = check_prime(p)
    seed = check_int("seed", seed, lo=0)
    rng = np.random.default_rng(seed + 1_000_003)
    D, Hs, K, Ls = cfg.D, cfg.H_star, cfg.n_points, cfg.L_star
    z = _distinct_points(rng, K, p)
    per = [("a", (D, Hs)), ("b", (D, Hs)), ("c", (D, Hs)), ("W", (D, D)), ("beta", (D,))]
    P = Ls * sum(math.prod(s) for _, s in per)
    theta = rng.integers(0, p, P, dtype=np.int64)
    layers, off = [], 0
    for _ in range(Ls):
        d = {}
        for name, sh in per:
            d[name] = _param(theta, off, sh, P, p)
            off += math.prod(sh)
        bc = _Dual(d["b"].v * d["c"].v, d["b"].g * d["c"].v[None] + d["c"].g * d["b"].v[None], p)
        kappa = _kernel_tf(d["a"], bc, z, None)  # (K, D)
        layers.append((_layer_tf(d["W"], kappa), d["beta"]))
    return _compose(layers, D, K, P, p)


def rank_mod_p(M: np.ndarray, p: int = P_DEFAULT) -> int:
    """Rank of an integer matrix over GF(p) by Gaussian elimination (rows reduced in place, vectorised).

    M: a 2-D array-like of integers (any numpy integer dtype or Python ints; a float matrix is refused: its
    entries are not elements of GF(p)); p: a prime below 2^29 (:func:`check_prime`)."""
    p = check_prime(p)
    M = np.asarray(M) if not hasattr(M, "numpy") else M.numpy()
    if M.dtype == object:  # Python ints too large for int64: reduce them exactly first
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in M.reshape(-1)):
            raise TypeError(f"M: expected an integer matrix, got entries of types "
                            f"{sorted({type(v).__name__ for v in M.reshape(-1)})}")
        M = np.vectorize(lambda v: int(v) % p, otypes=[np.int64])(M)
    if M.dtype.kind not in "iub":
        raise TypeError(f"M: expected an integer matrix (entries in GF(p) are integers), got dtype {M.dtype}")
    if M.ndim != 2:
        raise ValueError(f"M: expected a 2-D matrix, got shape {M.shape}")
    A = (M % p).astype(np.int64) if M.dtype.kind == "u" else M.astype(np.int64) % p
    if A.shape[0] > A.shape[1]:
        A = A.T.copy()
    rows, cols = A.shape
    r = 0
    for c in range(cols):
        if r == rows:
            break
        nz = np.nonzero(A[r:, c])[0]
        if nz.size == 0:
            continue
        piv = r + int(nz[0])
        if piv != r:
            A[[r, piv]] = A[[piv, r]]
        A[r] = (A[r] * pow(int(A[r, c]), p - 2, p)) % p
        below = A[r + 1:, c].copy()
        idx = np.nonzero(below)[0]
        if idx.size:
            A[r + 1 + idx] = (A[r + 1 + idx] - (below[idx, None] * A[r][None]) % p) % p
        r += 1
    return r


@dataclass(frozen=True)
class ExactRow:
    """One probe configuration's exact ranks: ``budget_rank_p`` and ``target_rank_p`` are rank over GF(p)
    at a random integer point (certified lower bounds on the generic ranks); ``jacobian_excludes``: is
    the budget's certified rank below the target family's dimension (formula; upper bound by its gauge
    symmetries, and equal to the target's rank mod p where that is computed)."""

    D: int
    L: int
    L_star: int
    rank: int
    budget_rank_p: int
    target_rank_p: int
    target_dim: int
    p: int
    seed: int

    @property
    def jacobian_excludes(self) -> Optional[bool]:
        """False: certified not excluded (lower bound >= target dim). None: undecided by this test (a lower
        bound below the target dimension does not prove exclusion)."""
        return False if self.budget_rank_p >= self.target_dim else None


def exact_row(cfg, seed: int = 0, p: int = P_DEFAULT) -> ExactRow:
    """``cfg``: a ``capacity_probe.ProbeConfig`` (duck-typed: D, L, L_star, H_star, rank, skip, blocks, n_points;
    this module does not import ``capacity_probe``; the command ``capacity`` imports it)."""
    return ExactRow(cfg.D, cfg.L, cfg.L_star, cfg.rank, rank_mod_p(budget_jacobian_mod_p(cfg, seed, p), p),
                    rank_mod_p(target_jacobian_mod_p(cfg, seed, p), p),
                    target_dim_formula(cfg.D, cfg.L_star, cfg.H_star), p, seed)

