"""Lemma 1 of Galim et al. (ICML 2025), Sec. 4 and App. C.4: tuning one input projection of S6
covers ``W_B``, ``W_C`` and ``W_Δ↓``.

Model (Lemma 1's two-projection S6, :func:`theory.s6.s6_two_projection`): ``z_t = W_in,1 x_t`` feeds
``Δ_t = softplus(W_Δ↑ W_Δ↓ z_t + β_Δ)``, ``B_t = W_B z_t``, ``C_t = W_C z_t``; ``u_t = W_in,2 x_t`` is
scanned. Target ``f*`` and frozen ``f0`` share ``{A^(d)}``, ``W_Δ↑``, ``β_Δ`` (the paper takes
``β_Δ = 0``; any shared value works) and ``W_in,2``.

Construction (reconstructed; the paper's proof is in the lost appendix). With the frozen stack
    ``M0 = [W_Δ↓; W_B; W_C] ∈ R^{(R+2H)×D}``  and the target's  ``M* = [W_Δ↓*; W_B*; W_C*] W_in,1*``,
any ``Ŵ_in,1`` with ``M0 Ŵ_in,1 = M*`` makes ``W_Δ↓ ẑ_t, B_t, C_t`` — hence ``Δ_t, B̄_t, Ā_t, C_t`` —
equal to the target's at every step and for every input, so the outputs are equal.

When is ``M0 Ŵ = M*`` solvable? Exactly when every column of ``M*`` lies in ``range(M0)``, i.e.
``rank [M0 | M*] = rank M0``. A sufficient condition is that ``M0`` has full row rank ``R + 2H``,
which holds for generic ``M0`` as soon as ``D >= 2H + R``. So the paper's ``D > 2H + R`` is more
than needed: ``D = 2H + R`` (square, generically invertible ``M0``) works too, and "no parameter is
zero" is not used. For ``D < 2H + R``, ``range(M0)`` is a ``D``-dimensional subspace of ``R^{R+2H}``
and a generic ``M*`` (also of rank ``D``) has columns outside it: the construction refuses and
reports the residual of the best least-squares ``Ŵ``. (This refuses the construction, which makes
Δ, B, C match exactly; it does not prove that no other ``Ŵ`` gives the same input-output map.)

The solution set is ``Ŵ_in,1 = M0^+ M* + N Z`` for any ``Z``, with ``N`` a basis of ``null(M0)``
(:func:`input_projection_null_space`); :func:`align_input_projection` returns the minimum-norm one.
"""

from __future__ import annotations

import torch

from ._validate import check_same_dtype, check_tensor
from .report import ClaimResult, claim
from .s6 import S6Params, random_s6, s6_two_projection
from .tolerances import RTOL, rel_err

Tensor = torch.Tensor

# Relative residual ‖M0 Ŵ − M*‖ / ‖M*‖ above which the system counts as unsolvable. A solvable
# system is met to ≈ cond(M0)·eps ≲ 1e-13 on our instances; a generic unsolvable one misses by O(1).
# sqrt(eps_float64) ≈ 1.5e-8 separates the two with margin both ways.
ALIGN_RTOL = 1.5e-8


def _stack(W_B: Tensor, W_C: Tensor, W_dt_down: Tensor, names=("W_B", "W_C", "W_dt_down"), dims=None) -> Tensor:
    """``[W_Δ↓; W_B; W_C]`` (R + 2H, D), the order of mamba-ssm's ``x_proj``."""
    dims = {} if dims is None else dims
    W_B = check_tensor(names[0], W_B, shape=("H", "D"), dims=dims, allow_complex=False)
    W_C = check_tensor(names[1], W_C, shape=("H", "D"), dims=dims, allow_complex=False)
    W_dt_down = check_tensor(names[2], W_dt_down, shape=("R", "D"), dims=dims, allow_complex=False)
    check_same_dtype(**{names[0]: W_B, names[1]: W_C, names[2]: W_dt_down})
    return torch.cat([W_dt_down, W_B, W_C], dim=0)  # (R + 2H, D)


def _pinv_parts(M0: Tensor):
    """SVD of M0 with the numerical rank (threshold ``max(rows, cols)·eps·σ_max``)."""
    U, S, Vh = torch.linalg.svd(M0, full_matrices=True)  # (K, K), (min,), (D, D)
    tol = max(M0.shape) * torch.finfo(M0.dtype).eps * (S.max() if S.numel() else 0.0)
    rank = int((S > tol).sum())
    return U, S, Vh, rank


def input_projection_null_space(W_B: Tensor, W_C: Tensor, W_dt_down: Tensor) -> Tensor:
    """Orthonormal basis ``N`` (D, D − rank M0) of ``null(M0)``, ``M0 = [W_Δ↓; W_B; W_C]``.

    Adding ``N Z`` (any ``Z`` of shape (D − rank, D)) to an aligned ``Ŵ_in,1`` keeps ``M0 Ŵ = M*``.
    """
    M0 = _stack(W_B, W_C, W_dt_down)
    _, _, Vh, rank = _pinv_parts(M0)
    return Vh[rank:].T  # (D, D − rank)


def align_input_projection(W_B: Tensor, W_C: Tensor, W_dt_down: Tensor,
                           W_B_star: Tensor, W_C_star: Tensor, W_dt_down_star: Tensor,
                           W_in1_star: Tensor) -> Tensor:
    """Lemma 1: ``Ŵ_in,1`` (D, D) with ``M0 Ŵ_in,1 = M*``, the minimum-norm solution ``M0^+ M*``.

    W_B, W_C, W_B_star, W_C_star: (H, D); W_dt_down, W_dt_down_star: (R, D); W_in1_star: (D, D);
    real, one dtype. ``M0 = [W_Δ↓; W_B; W_C]``, ``M* = [W_Δ↓*; W_B*; W_C*] W_in,1*``.

    Raises ``ValueError`` if ``‖M0 Ŵ − M*‖ / ‖M*‖ > ALIGN_RTOL`` for the least-squares ``Ŵ``,
    reporting that residual, ``rank M0`` and ``D`` vs ``2H + R`` (generically unsolvable iff
    ``D < 2H + R``; solvable whenever ``M0`` has full row rank).
    """
    dims: dict = {}
    M0 = _stack(W_B, W_C, W_dt_down, dims=dims)  # (K, D), K = R + 2H
    M_target = _stack(W_B_star, W_C_star, W_dt_down_star, ("W_B_star", "W_C_star", "W_dt_down_star"), dims=dims)
    D = dims["D"]
    W_in1_star = check_tensor("W_in1_star", W_in1_star, shape=(D, D), allow_complex=False)
    check_same_dtype(W_B=W_B, W_B_star=W_B_star, W_in1_star=W_in1_star)
    M_star = M_target @ W_in1_star  # (K, D)
    U, S, Vh, rank = _pinv_parts(M0)
    # Ŵ = V_r Σ_r^{-1} U_r^T M*   (minimum-norm least squares)
    W_hat = Vh[:rank].T @ ((U[:, :rank].T @ M_star) / S[:rank, None])  # (D, D)
    resid = float(torch.linalg.matrix_norm(M0 @ W_hat - M_star))
    scale = float(torch.linalg.matrix_norm(M_star))
    if resid > ALIGN_RTOL * scale:
        H, R = dims["H"], dims["R"]
        raise ValueError(
            f"W_in1_star: no W_in1_hat with M0 W_in1_hat = M* exists (best least-squares relative residual "
            f"{resid / scale:.3g} > {ALIGN_RTOL:.1e}): M* has columns outside range(M0), rank M0 = {rank} "
            f"< R + 2H = {R + 2 * H}; D = {D} {'<' if D < 2 * H + R else '>='} 2H + R = {2 * H + R}"
            + (" (generically impossible when D < 2H + R)" if D < 2 * H + R else ""))
    return W_hat  # (D, D)


def alignment_residual(W_B, W_C, W_dt_down, W_B_star, W_C_star, W_dt_down_star, W_in1_star) -> float:
    """``min_Ŵ ‖M0 Ŵ − M*‖ / ‖M*‖`` (the quantity :func:`align_input_projection` tests)."""
    M0 = _stack(W_B, W_C, W_dt_down)
    W_in1_star = check_tensor("W_in1_star", W_in1_star, shape=(M0.shape[1], M0.shape[1]), allow_complex=False)
    M_star = _stack(W_B_star, W_C_star, W_dt_down_star, ("W_B_star", "W_C_star", "W_dt_down_star")) @ W_in1_star
    U, S, Vh, rank = _pinv_parts(M0)
    proj = U[:, :rank] @ (U[:, :rank].T @ M_star)  # projection of M* onto range(M0)
    return float(torch.linalg.matrix_norm(M_star - proj) / torch.linalg.matrix_norm(M_star))


# ---- model level ---------------------------------------------------------------------------------

def align_s6_input_projection(frozen: S6Params, target: S6Params, W_in1_star: Tensor) -> Tensor:
    """Lemma 1 on :class:`S6Params`: ``Ŵ_in,1`` for the frozen model (its own ``W_B, W_C, W_Δ↓``) to
    equal the target with ``W_in1_star``. Both must share ``A``, ``W_Δ↑`` and ``β_Δ`` exactly."""
    for name in ("A_log", "dt_proj_weight", "dt_proj_bias"):
        f, t = getattr(frozen, name), getattr(target, name)
        if f.shape != t.shape or not bool(torch.equal(f, t)):
            raise ValueError(f"target.{name}: Lemma 1 needs it shared with the frozen model (it differs)")
    return align_input_projection(frozen.W_B, frozen.W_C, frozen.W_dt_down,
                                  target.W_B, target.W_C, target.W_dt_down, W_in1_star)


def lemma1_pair(D: int, H: int, R: int, *, generator: torch.Generator, dtype=torch.float64):
    """A random (frozen, target, W_in1_star, W_in2) with shared ``A``, ``W_Δ↑``, ``β_Δ``, ``W_in,2``."""
    g = generator
    frozen = random_s6(D, H, R, generator=g, dtype=dtype)
    other = random_s6(D, H, R, generator=g, dtype=dtype)
    target = S6Params(frozen.A_log, other.x_proj, frozen.dt_proj_weight, frozen.dt_proj_bias)
    W_in1_star = torch.randn(D, D, generator=g, dtype=dtype) / D**0.5
    W_in2 = torch.randn(D, D, generator=g, dtype=dtype) / D**0.5
    return frozen, target, W_in1_star, W_in2


@claim("Lemma 1: tuning W_in,1 covers W_B, W_C, W_dt_down (S6)", order=20)
def check_lemma1(n: int, seed: int) -> ClaimResult:
    """Outputs of the frozen S6 with Ŵ_in,1 vs the target on random inputs, for D in {2H+R, ..., 2H+R+3}
    (D = 2H+R included: the paper's D > 2H+R is not needed); D < 2H+R must be refused."""
    name = "Lemma 1: tuning W_in,1 covers W_B, W_C, W_dt_down (S6)"
    g = torch.Generator().manual_seed(seed)
    worst, problems = 0.0, []
    for i in range(n):
        H, R = int(torch.randint(1, 4, (1,), generator=g)), int(torch.randint(1, 3, (1,), generator=g))
        D = 2 * H + R + int(torch.randint(0, 4, (1,), generator=g))
        N = int(torch.randint(1, 16, (1,), generator=g))
        frozen, target, W_in1_star, W_in2 = lemma1_pair(D, H, R, generator=g)
        W_hat = align_s6_input_projection(frozen, target, W_in1_star)
        x = torch.randn(2, D, N, generator=g, dtype=torch.float64)
        worst = max(worst, rel_err(s6_two_projection(frozen, W_hat, W_in2, x),
                                   s6_two_projection(target, W_in1_star, W_in2, x)))
        Ds = max(1, 2 * H + R - 1 - int(torch.randint(0, 2, (1,), generator=g)))  # D < 2H + R
        f2, t2, W2, _ = lemma1_pair(Ds, H, R, generator=g)
        try:
            align_s6_input_projection(f2, t2, W2)
            problems.append(f"instance {i}: D={Ds} < 2H+R={2 * H + R} was not refused")
        except ValueError:
            pass
    ok = worst <= RTOL[torch.float64] and not problems
    note = ("holds for D >= 2H+R (paper assumes D > 2H+R); exact condition range(M*) ⊆ range(M0); "
            "D < 2H+R refused") if ok else "; ".join(problems[:2])
    return ClaimResult(name, n, worst, "verified" if ok else "FAILED", note)
