"""Memory-traffic bound of a deep-S4 benchmark iteration (issue 31's roofline line): how far a measured time is
from the time the activations' unavoidable reads and writes take at the device's measured copy bandwidth.

With ``A = 4·D·N·B`` bytes (one float32 activation tensor of one run) and L frozen / L* target layers, a perfectly
fused step still moves, per iteration of R runs:

- forward only (Frozen's row, R = 1): ``A·(1 + 2(L* + L) + 2)``: the input written once, each layer reads its
  input and writes its output (target forward for y, then the frozen stack), the loss reads output and target;
- training step (R runs): ``A·(2 + 2L*)`` shared (input, target forward) plus ``R·A·(2L + 2 + 4L)``: per layer
  forward read + write, the loss, and per layer backward read dpre, the saved input, the pre-activation mask and
  write the input's gradient (4 passes; the parameter gradients are reductions of those same reads).

Divided by R for a per-run figure. The bandwidth is measured in the same call (:func:`copy_bandwidth`: a device
copy, bytes read + written over time), so ``over_bound = measured / bound`` compares like with like.
"""

from __future__ import annotations

import time
from typing import Dict

import torch


def traffic_bytes(D: int, N: int, B: int, L: int, L_target: int, R: int, forward_only: bool) -> float:
    """Bytes a perfectly fused iteration must move, per run (see the module docstring)."""
    A = 4.0 * D * N * B
    if forward_only:
        return A * (1 + 2 * (L_target + L) + 2)
    return (A * (2 + 2 * L_target) + R * A * (2 * L + 2 + 4 * L)) / R


def copy_bandwidth(device: torch.device, gib: float = 1.0, reps: int = 10) -> float:
    """Achieved bytes/s of ``dst.copy_(src)`` on ``device`` (read + write counted), best of ``reps``."""
    n = int(gib * 2**30) // 4
    src = torch.empty(n, device=device, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    del src, dst
    return 2 * 4 * n / best


def roofline_row(ms_per_iter: float, bytes_per_iter: float, bandwidth: float) -> Dict:
    """The roofline fields of one benchmark row: bytes, bound (ms), achieved GB/s and measured / bound."""
    bound_ms = bytes_per_iter / bandwidth * 1e3
    return {"traffic_bytes": round(bytes_per_iter), "traffic_bound_ms": round(bound_ms, 4),
            "achieved_GBps": round(bytes_per_iter / (ms_per_iter * 1e-3) / 1e9, 1) if ms_per_iter > 0 else None,
            "over_bound": round(ms_per_iter / bound_ms, 2) if bound_ms > 0 else None}
