"""Report rows for the reference core (not a paper claim, but everything else stands on it):
the explicit recurrence and the FFT convolution compute the same map, with an initial state too,
in the real and in the conjugate-pair form."""

from __future__ import annotations

import torch

from .deep import random_s4_ssm
from .report import ClaimResult, claim
from .tolerances import RTOL, rel_err
from .ssm import ssm_convolution, ssm_recurrence


@claim("Core: SSM recurrence == FFT convolution", order=0)
def check_recurrence_equals_convolution(n: int, seed: int) -> ClaimResult:
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for i in range(n):
        D, H, N = (int(v) for v in torch.randint(1, 7, (3,), generator=g))
        ssm = random_s4_ssm(D, H, generator=g, conj_pairs=bool(i % 2))
        x = torch.randn(2, D, 3 * N, generator=g, dtype=torch.float64)
        h0 = torch.randn(D, H, generator=g, dtype=torch.float64)
        if ssm.conj_pairs:
            h0 = torch.complex(h0, torch.randn(D, H, generator=g, dtype=torch.float64))
        worst = max(worst, rel_err(ssm_convolution(ssm, x, h0), ssm_recurrence(ssm, x, h0)))
    ok = worst <= RTOL[torch.float64]
    return ClaimResult("Core: SSM recurrence == FFT convolution", n, worst, "verified" if ok else "FAILED",
                       "real and conjugate-pair forms, with random initial states")
