"""Relative tolerances keyed by dtype, used by every numerical check.

float64: 1e-9 — the constructions are exact algebra; what is left is rounding through at most a
few hundred multiply-adds (kernels to length N <= ~64, Vandermonde solves of size <= 8), which
stays many orders of magnitude below 1e-9 on the well-conditioned instances the strategies draw.
float32: 1e-4 — the same computations in single precision (≈1e-7 unit roundoff times the same
growth).
"""

import torch

RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``‖a − b‖ / max(‖b‖, tiny)`` (Frobenius), as a Python float."""
    a, b = a.detach(), b.detach()
    num = torch.linalg.vector_norm((a - b).flatten())
    den = torch.linalg.vector_norm(b.flatten()).clamp_min(torch.finfo(b.real.dtype).tiny)
    return float(num / den)
