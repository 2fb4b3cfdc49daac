"""Expressivity probe for Theorem 1 (Galim et al., ICML 2025, Sec. 5): which LoRA ranks can possibly
let a frozen deep S4 (SDT-P on its SSMs + LoRA on its projections) match a generic smaller target?

For a linear-activation deep S4 the model is an affine, linear time-invariant map, so it is determined
by its transfer matrix ``T(z) = Σ_k h_k z^k`` (h_k: the D×D impulse response) and its bias response
``b(z) = Σ_j T_{>j}(z) β_j`` (the zero-input output, up to the common step factor ``1/(1−z)``).
The probe evaluates both at ``K`` real points ``z ∈ [−0.8, 0.8]`` (inside every pole's radius:
frozen and target ``|a| < 0.95``). With ``K ≥ 2n+1``, ``n`` = total state count, these values determine
the rational functions, so this carries the same information as the impulse response over
``N ≥ 2n`` steps; :func:`impulse_response_map` is the time-domain twin, held to it by a test.

Probe: the rank of the Jacobian of (trainable parameters ↦ response) at a random point (float64,
``torch.func.jacfwd``), i.e. the dimension of the set of functions the budget reaches, versus the same
rank for (target parameters ↦ response), the dimension of the target family.

- Jacobian rank < target dimension: generic targets are NOT reachable with this budget and this
  SDT-P layout (a lower-dimensional image cannot contain a higher-dimensional family).
- A count of free parameters (LoRA counted as the rank-r matrix variety, ``2Dr − r²``) below the
  target dimension proves insufficiency for *every* layout of that budget: any choice of which channels and
  states are tuned, at the same per-layer counts of channels, states and LoRA rank (a larger channel budget
  has more free parameters and can clear the count).
- Jacobian rank >= target dimension is necessary, not sufficient: the image may be a different
  set of that dimension. Sufficiency comes from the explicit construction in ``theorem1.py``.
  In practice the image of a budget is larger than the target family (it also reaches functions with
  residual paths), so at small D the Jacobian test excludes little; two structural arguments (stated
  in ``theorem1.py``, checked in ``theorem1_checks.py``) decide the rest of the table: the zero block (skip
  inside: an exact update of this layout has ``W_m[S_{m+1}, S_m] = 0``, so LoRA rank ``≥ min(|S_m|, |S_{m+1}|)``) and,
  for skip outside, that pass-through channels are never mixed (exact Gröbner check at D = 2:
  :func:`groebner_oracle`).

The layout probed is the construction's: layer ``m`` of a group tunes the ``H*`` first states (``a``,
``c``; ``b`` frozen) of channel block ``S_m`` (``⌈D/M⌉`` channels), prunes every other kernel entry,
and trains ``u`` and ``β``; each projection gets a rank-``r`` LoRA, the last one is trained in full.

The command ``python -m theory.capacity`` (results file, table, figure) is :mod:`theory.capacity`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ._validate import check_choice, check_int
from .layout import budget_shapes, channel_blocks, group_sizes
# Singular values below RANK_RTOL · σ_max count as zero: the Jacobians here have σ_max ~ 1..1e3 and
# structural zeros at ~1e-14 relative; the reported gap (σ_r / σ_{r+1}) shows the cut.
from .tolerances import RANK_RTOL

Tensor = torch.Tensor
F64 = torch.float64


@dataclass(frozen=True)
class ProbeConfig:
    """One probe: frozen (L, D, H), target (L*, H*), LoRA rank r, skip placement."""

    D: int
    L: int
    L_star: int
    H: int
    H_star: int
    rank: int
    skip: str = "inside"

    def __post_init__(self):
        object.__setattr__(self, "D", check_int("D", self.D, lo=1))
        object.__setattr__(self, "L_star", check_int("L_star", self.L_star, lo=1))
        object.__setattr__(self, "L", check_int("L", self.L, lo=self.L_star + 1))
        object.__setattr__(self, "H", check_int("H", self.H, lo=1))
        object.__setattr__(self, "H_star", check_int("H_star", self.H_star, lo=1, hi=self.H))
        object.__setattr__(self, "rank", check_int("rank", self.rank, lo=0, hi=self.D))
        check_choice("skip", self.skip, ("inside", "outside"))

    @property
    def blocks(self) -> List[Tuple[int, ...]]:
        """The channel block each frozen layer tunes (the construction's layout)."""
        return [blk for M in group_sizes(self.L, self.L_star) for blk in channel_blocks(self.D, M)]

    @property
    def n_points(self) -> int:
        """``K = 2n + 5`` evaluation points. ``n = D·L*·H*`` bounds the poles of every model in either
        family (each group tunes every channel once with H* states; pruned states have none), so every
        entry of a tangent vector is a rational function with numerator degree ``≤ 2n``: it cannot vanish
        on ``2n + 1`` distinct points unless it is zero, and the evaluation loses no rank."""
        return 2 * self.D * self.L_star * self.H_star + 5


def _points(K: int) -> Tensor:
    """Chebyshev points on [−0.8, 0.8] (well spread, away from the poles 1/a with |a| < 0.95)."""
    k = torch.arange(K, dtype=F64)
    return 0.8 * torch.cos(math.pi * (k + 0.5) / K)  # (K,)


def _kernel_tf(a: Tensor, bc: Tensor, z: Tensor) -> Tensor:
    """``κ(z) = Σ_i b_i c_i / (1 − a_i z)`` for each channel: a, bc (..., S), z (K,) -> (K, ...)."""
    return (bc[None] / (1 - a[None] * z.reshape(-1, *([1] * a.dim())))).sum(-1)


def _compose(layers_tf: Sequence[Tuple[Tensor, Tensor]], D: int, K: int) -> Tensor:
    """Given per-layer ``(T_j(z) (K, D, D), β_j (D,))`` return ``[T(z), b(z)]`` flattened."""
    T = torch.eye(D, dtype=F64).expand(K, D, D)
    b = torch.zeros(K, D, dtype=F64)
    for Tj, beta in layers_tf:
        T = Tj @ T  # (K, D, D)
        b = (Tj @ b[..., None])[..., 0] + beta  # (K, D)
    return torch.cat([T.reshape(-1), b.reshape(-1)])


# ----------------------------------------------------------------------------------- parameter maps
@dataclass
class ParamMap:
    """``fn(theta) -> response`` and a random point ``theta0``; ``free_dim`` bounds the image dimension."""

    fn: Callable[[Tensor], Tensor]
    theta0: Tensor
    free_dim: int


def budget_map(cfg: ProbeConfig, generator: torch.Generator, z: Optional[Tensor] = None) -> ParamMap:
    """The fine-tuning budget of ``cfg`` on a random frozen model, as a map of its trainable scalars."""
    g, D, Hs = generator, cfg.D, cfg.H_star
    z = _points(cfg.n_points) if z is None else z
    blocks = cfg.blocks
    frozen_W = [torch.randn(D, D, generator=g, dtype=F64) / D**0.5 for _ in range(cfg.L)]
    frozen_b = [torch.randn(D, Hs, generator=g, dtype=F64) for _ in range(cfg.L)]  # B̄ of the tuned states
    shapes = budget_shapes(blocks, cfg.L, D, Hs, cfg.rank)
    sizes = [math.prod(sh) for _, _, sh in shapes]
    parts = []
    for name, j, sh in shapes:
        if name == "a":
            parts.append(1.8 * torch.rand(sh, generator=g, dtype=F64) - 0.9)
        elif name == "W":
            parts.append(torch.randn(sh, generator=g, dtype=F64) / D**0.5)
        else:
            parts.append(torch.randn(sh, generator=g, dtype=F64) * (0.5 if name.startswith("lora") else 1.0))
    theta0 = torch.cat([p.reshape(-1) for p in parts])

    def fn(theta: Tensor) -> Tensor:
        chunks = dict()
        for (name, j, sh), piece in zip(shapes, torch.split(theta, sizes)):
            chunks[(name, j)] = piece.reshape(sh)
        tfs = []
        for j, blk in enumerate(blocks):
            kappa = torch.zeros(z.shape[0], D, dtype=F64)  # pruned channels: kernel 0
            if blk:
                bc = chunks[("c", j)] * frozen_b[j][list(blk)]
                kappa = kappa.index_copy(1, torch.tensor(blk), _kernel_tf(chunks[("a", j)], bc, z))
            if ("W", j) in chunks:
                W = chunks[("W", j)]
            elif ("lora_A", j) in chunks:
                W = frozen_W[j] + chunks[("lora_B", j)] @ chunks[("lora_A", j)]
            else:
                W = frozen_W[j]
            u = chunks[("u", j)]
            if cfg.skip == "inside":
                Tj = W[None] * (kappa + u)[:, None, :]  # W diag(κ + u)
            else:
                Tj = W[None] * kappa[:, None, :] + torch.diag_embed(u.expand(z.shape[0], D))
            tfs.append((Tj, chunks[("beta", j)]))
        return _compose(tfs, D, z.shape[0])

    lora_dim = (cfg.L - 1) * (2 * D * cfg.rank - cfg.rank**2)
    free = sum(2 * Hs * len(b) + 2 * D for b in blocks) + lora_dim + D * D
    return ParamMap(fn, theta0, free)


def target_map(cfg: ProbeConfig, generator: torch.Generator, z: Optional[Tensor] = None) -> ParamMap:
    """The target family: L* layers ``W* diag(κ*) x + β*`` with (a*, b*, c*, W*, β*) all free."""
    g, D, Hs, Ls = generator, cfg.D, cfg.H_star, cfg.L_star
    z = _points(cfg.n_points) if z is None else z
    per = [D * Hs, D * Hs, D * Hs, D * D, D]
    parts = []
    for _ in range(Ls):
        parts += [1.8 * torch.rand(D * Hs, generator=g, dtype=F64) - 0.9, torch.randn(D * Hs, generator=g, dtype=F64),
                  torch.randn(D * Hs, generator=g, dtype=F64), torch.randn(D * D, generator=g, dtype=F64) / D**0.5,
                  torch.randn(D, generator=g, dtype=F64)]
    theta0 = torch.cat(parts)

    def fn(theta: Tensor) -> Tensor:
        tfs = []
        for l, chunk in enumerate(torch.split(theta, [sum(per)] * Ls)):
            a, b, c, W, beta = torch.split(chunk, per)
            kappa = _kernel_tf(a.reshape(D, Hs), (b * c).reshape(D, Hs), z)  # (K, D)
            tfs.append((W.reshape(D, D)[None] * kappa[:, None, :], beta))
        return _compose(tfs, D, z.shape[0])

    return ParamMap(fn, theta0, Ls * (3 * D * Hs + D * D + D))


def impulse_response_map(cfg: ProbeConfig, generator: torch.Generator, N: int, which: str = "budget") -> ParamMap:
    """Time-domain twin of :func:`budget_map` / :func:`target_map`: the same parameters mapped to the
    impulse response ``h_0..h_{N−1}`` (D×D each) and the zero-input response over N steps, computed by
    running the model (``deep.deep_forward``) on D unit impulses and on zeros."""
    from .deep import DeepLayer, DeepSSM, deep_forward
    from .ssm import DiagonalSSM

    check_choice("which", which, ("budget", "target"))
    g_state = generator.get_state()
    pm = budget_map(cfg, generator) if which == "budget" else target_map(cfg, generator)
    generator.set_state(g_state)
    # rebuild the same frozen constants by replaying the generator exactly as the map did
    D, Hs = cfg.D, cfg.H_star
    if which == "budget":
        frozen_W = [torch.randn(D, D, generator=generator, dtype=F64) / D**0.5 for _ in range(cfg.L)]
        frozen_b = [torch.randn(D, Hs, generator=generator, dtype=F64) for _ in range(cfg.L)]
    x = torch.zeros(D + 1, D, N, dtype=F64)
    x[torch.arange(D), torch.arange(D), 0] = 1.0  # D unit impulses, then one zero input

    def fn(theta: Tensor) -> Tensor:
        layers = []
        if which == "budget":
            off = 0
            for j, blk in enumerate(cfg.blocks):
                s = len(blk)

                def take(n, shape):
                    nonlocal off
                    out = theta[off: off + n].reshape(shape)
                    off += n
                    return out

                a_t, c_t = take(s * Hs, (s, Hs)), take(s * Hs, (s, Hs))
                u, beta = take(D, (D,)), take(D, (D,))
                if j == cfg.L - 1:
                    W = take(D * D, (D, D))
                elif cfg.rank:
                    A_, B_ = take(cfg.rank * D, (cfg.rank, D)), take(D * cfg.rank, (D, cfg.rank))
                    W = frozen_W[j] + B_ @ A_
                else:
                    W = frozen_W[j]
                a = torch.zeros(D, Hs, dtype=F64)
                c = torch.zeros(D, Hs, dtype=F64)
                if blk:
                    idx = torch.tensor(blk)
                    a = a.index_copy(0, idx, a_t)
                    c = c.index_copy(0, idx, c_t * frozen_b[j][idx])
                layers.append(DeepLayer(DiagonalSSM(a, torch.ones(D, Hs, dtype=F64), c), W, beta, u))
        else:
            per = [D * Hs, D * Hs, D * Hs, D * D, D]
            for chunk in torch.split(theta, [sum(per)] * cfg.L_star):
                a, b, c, W, beta = torch.split(chunk, per)
                layers.append(DeepLayer(DiagonalSSM(a.reshape(D, Hs), b.reshape(D, Hs), c.reshape(D, Hs)),
                                        W.reshape(D, D), beta, torch.zeros(D, dtype=F64)))
        y = deep_forward(DeepSSM(tuple(layers), "identity", cfg.skip), x)  # (D+1, D, N)
        return torch.cat([(y[:D] - y[D:]).reshape(-1), y[D].reshape(-1)])

    return ParamMap(fn, pm.theta0, pm.free_dim)


# ----------------------------------------------------------------------------------- ranks
def jacobian_rank(pm: ParamMap, mode: str = "fwd") -> Tuple[int, float, Tensor]:
    """Numerical rank of ``d fn / d theta`` at ``theta0``: (rank, gap σ_r/σ_{r+1}, singular values)."""
    jac = torch.func.jacfwd(pm.fn) if mode == "fwd" else torch.func.jacrev(pm.fn)
    J = jac(pm.theta0)  # (outputs, params)
    s = torch.linalg.svdvals(J)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return 0, float("inf"), s
    r = int((s > RANK_RTOL * s[0]).sum())
    gap = float(s[r - 1] / s[r]) if r < s.numel() and float(s[r]) > 0 else float("inf")
    return r, gap, s


@dataclass(frozen=True, kw_only=True)
class ProbeRow(ProbeConfig):
    """A probe's configuration (:class:`ProbeConfig`, validated alike) and what it measured; flat, as stored."""

    budget_rank: int
    budget_gap: float
    free_dim: int
    target_dim: int
    target_gap: float
    zero_block_bound: int  # LoRA rank every exact update of this layout needs (theorem1.zero_block_bounds)
    verdict: str
    construction: bool  # the explicit construction of theorem1.py reaches every generic target

    @property
    def rank_brief(self) -> int:
        return math.ceil(self.L / self.L_star)

    @property
    def rank_zeng_lee(self) -> int:
        return math.ceil(self.D * self.L_star / self.L)


def probe(cfg: ProbeConfig, seed: int = 0) -> ProbeRow:
    """Run the probe for one configuration (budget and target drawn from ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    bm = budget_map(cfg, g)
    b_rank, b_gap, _ = jacobian_rank(bm)
    t_rank, t_gap, _ = jacobian_rank(target_map(cfg, g))
    bm_free = bm.free_dim
    q = cfg.L // cfg.L_star
    construction = cfg.skip == "inside" and cfg.rank >= math.ceil(cfg.D / q)
    zb = zero_block_bound(cfg)
    if bm_free < t_rank:
        verdict = "insufficient (count)"
    elif b_rank < t_rank:
        verdict = "insufficient (Jacobian)"
    elif cfg.skip == "outside" and cfg.D >= 2 and max(len(b) for b in cfg.blocks) < cfg.D:
        verdict = "insufficient (outside: no mixing of pass-through)"
    elif cfg.rank < zb:
        verdict = "insufficient (zero block)"
    elif construction:
        verdict = "sufficient (construction)"
    else:
        verdict = "not excluded"
    return ProbeRow(**asdict(cfg), budget_rank=b_rank, budget_gap=b_gap, free_dim=bm_free, target_dim=t_rank,
                    target_gap=t_gap, zero_block_bound=zb, verdict=verdict, construction=construction)


def zero_block_bound(cfg: ProbeConfig) -> int:
    """``max min(|S_m|, |S_{m+1}|)`` over consecutive layers of one group that both tune channels: the
    LoRA rank every exact update of this layout needs with ``skip="inside"`` (the zero block
    ``W_m[S_{m+1}, S_m] = 0`` against a generic frozen block; see ``theorem1.zero_block_bounds``)."""
    bound = 0
    for M in group_sizes(cfg.L, cfg.L_star):
        blks = channel_blocks(cfg.D, M)
        for b0, b1 in zip(blks, blks[1:]):
            bound = max(bound, min(len(b0), len(b1)))
    return bound


def run_table(configs: Sequence[ProbeConfig], seed: int = 0) -> List[ProbeRow]:
    return [probe(c, seed) for c in configs]


# ----------------------------------------------------------------------------------- S6 obstruction
def s6_obstruction_instance(D: int = 2, H_star: int = 1, R_star: int = 1, s: int = 1, seed: int = 0,
                            batch: int = 8, N: int = 12) -> Dict[str, int]:
    """Numbers behind the S6 dimension count (``theorem1.s6_obstruction_note``) on a random target:
    after a frozen layer has processed the block ``S = {0..s-1}`` in place, the next layer's input
    ``v_t ∈ R^D`` is a linear image of ``(x_t, z_t)``, ``z = S6*(x)_S``. Returns
    ``signal_rank``: rank of the stacked samples of ``[x_t; z_t]`` (D + s: the signals are linearly
    independent, so ``v_t`` keeps at most D independent combinations of them); ``proj_rank``: rank of the
    target's ``[W_Δ↓*; W_B*; W_C*]`` restricted to the processed columns S; ``needed``: the independent
    functionals of ``(x, z)`` the remaining layers must read, ``(D − s) + proj_rank + s``; ``available``: D.
    ``needed > available`` means no frozen S6 layer can process fewer than D channels of a target layer."""
    from .s6 import random_s6, s6_forward

    g = torch.Generator().manual_seed(seed)
    target = random_s6(D, H_star, R_star, generator=g)
    x = torch.randn(batch, D, N, generator=g, dtype=F64)
    z = s6_forward(target, x)[:, :s]  # (B, s, N)
    samples = torch.cat([x, z], dim=1).permute(1, 0, 2).reshape(D + s, -1)  # (D + s, B·N)
    sig = torch.linalg.svdvals(samples)
    signal_rank = int((sig > RANK_RTOL * sig[0]).sum())
    proj = target.x_proj[:, :s]  # (R* + 2H*, s)
    proj_rank = int(torch.linalg.matrix_rank(proj))
    return {"D": D, "s": s, "H_star": H_star, "R_star": R_star, "signal_rank": signal_rank,
            "proj_rank": proj_rank, "needed": (D - s) + proj_rank + s, "available": D}


# ----------------------------------------------------------------------------------- exact oracle
def groebner_oracle(skip: str, layout: Tuple[int, int], lora_rank: Optional[int] = None,
                    all_in_last: bool = False, seed: int = 0) -> bool:
    """Exact (sympy Gröbner basis over Q) solvability for the smallest case: D = 2, L = 2, L* = 1,
    H* = 1, rational random target ``W* diag(c*/(1 − a* z))`` and frozen ``W0_1``.

    Unknowns: the tuned channel's ``a, c`` in each layer (``layout = (p1, p2)``: the position each layer
    tunes, the other kernel pruned), ``u`` and ``W`` of both layers; ``W_1 = W0_1 + b aᵀ`` when
    ``lora_rank = 1``, ``W_1 = W0_1`` when 0, free when None; ``W_2`` free (the last projection).
    ``all_in_last``: layer 1 tunes nothing, layer 2 tunes both channels (the weaker budget).
    Equations: the numerators of ``T(z) − T*(z)`` coefficient-wise in z (the bias is free in both and
    left out). Returns True iff the system has a complex solution (Gröbner basis ≠ {1})."""
    import random

    import sympy as sp

    check_choice("skip", skip, ("inside", "outside"))
    rnd = random.Random(seed)

    def q():
        return sp.Rational(rnd.choice([-1, 1]) * rnd.randint(1, 9), rnd.randint(1, 9))

    z = sp.symbols("z")
    W_star = sp.Matrix(2, 2, [q() for _ in range(4)])
    a_star = [sp.Rational(1, 2), sp.Rational(-1, 3)]
    c_star = [q(), q()]
    W0 = sp.Matrix(2, 2, [q() for _ in range(4)])
    W2 = sp.Matrix(2, 2, sp.symbols("w2_0:4"))
    if lora_rank is None:
        W1 = sp.Matrix(2, 2, sp.symbols("w1_0:4"))
    elif lora_rank == 0:
        W1 = W0
    elif lora_rank == 1:
        bb, aa = sp.Matrix(sp.symbols("lb0:2")), sp.Matrix(sp.symbols("la0:2"))
        W1 = W0 + bb * aa.T
    else:
        raise ValueError(f"lora_rank: must be None, 0 or 1, got {lora_rank!r}")
    u1, u2 = sp.symbols("u1_0:2"), sp.symbols("u2_0:2")

    def layer(W, u, tuned, tag):
        k = [sp.Integer(0), sp.Integer(0)]
        for p in tuned:
            a_, c_ = sp.symbols(f"a{tag}_{p} c{tag}_{p}")
            k[p] = c_ / (1 - a_ * z)
        K, U = sp.diag(*k), sp.diag(*u)
        return W * (K + U) if skip == "inside" else W * K + U

    tuned1, tuned2 = ((), (0, 1)) if all_in_last else ((layout[0],), (layout[1],))
    T = layer(W2, u2, tuned2, "2") * layer(W1, u1, tuned1, "1")
    T_star = W_star * sp.diag(*[c_star[d] / (1 - a_star[d] * z) for d in range(2)])
    eqs = []
    for i in range(2):
        for j in range(2):
            num = sp.together(T[i, j] - T_star[i, j]).as_numer_denom()[0]
            eqs += sp.Poly(sp.expand(num), z).coeffs()
    syms = sorted(set().union(*[e.free_symbols for e in eqs]), key=str)
    G = sp.groebner(eqs, *syms, order="grevlex")
    return list(G.exprs) != [1]
