"""Relative tolerances keyed by dtype, used by every numerical check.

float64: 1e-9 — the constructions are exact algebra; what is left is rounding through at most a
few hundred multiply-adds (kernels to length N <= ~64, Vandermonde solves of size <= 8), which
stays many orders of magnitude below 1e-9 on the well-conditioned instances the strategies draw.
float32: 1e-4 — the same computations in single precision (≈1e-7 unit roundoff times the same
growth).
"""

import torch

RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}

# A deep construction (Theorem 1) composes up to L layers of solves with the coordinate matrices G and
# target projections (condition numbers up to ~1e4 on the drawn instances), so its outputs carry ~10-100x
# more rounding than one layer: worst seen 1.1e-10 over 200 instances. 1e-8 leaves that margin and is
# still ~1e6 below the O(1e-2..1) error of any inexact update.
DEEP_RTOL = {torch.float64: 1e-8}

# Numerical rank: singular values at or below RANK_RTOL times the scale (σ_max, or max |entry|) count as
# zero. Rounding leaves structural zeros at ~1e-14 relative; genuine directions of the matrices ranked here
# are >= ~1e-6 relative (the gap σ_r/σ_{r+1} is reported where it matters), so 1e-9 sits between.
RANK_RTOL = 1e-9

# A change "breaks equality" only if it moves the compared quantity by more than BREAK_RTOL (relative):
# far above the equality tolerance RTOL, so a near-miss is never counted as a break; the planted breaks
# move it by O(1e-2..1).
BREAK_RTOL = 1e-6


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``‖a − b‖ / max(‖b‖, tiny)`` (Frobenius), as a Python float."""
    a, b = a.detach(), b.detach()
    num = torch.linalg.vector_norm((a - b).flatten())
    den = torch.linalg.vector_norm(b.flatten()).clamp_min(torch.finfo(b.real.dtype).tiny)
    return float(num / den)
