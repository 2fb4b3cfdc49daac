"""The registry of the deep-S4 convolution forms and the selector behind ``--conv auto``.

:data:`CONV_FORMS` maps each ``--conv`` name to its form ``form(p, x, idx) -> (R, D, N, B)``: the four of
:mod:`synthetic.s4.conv` (toeplitz, blocked, fft, chunked) and the Triton-fused one of :mod:`synthetic.s4.fused`.
This module sits above both (``fused`` builds on ``conv``'s kernel and Toeplitz index), so neither imports the other
back. :func:`choose_form` picks among :data:`AUTO_FORMS` from a measured scaling table
(``python -m synthetic.bench --scaling``) or a default rule.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Optional, Tuple

from synthetic.s4.conv import blocked_form, chunked_form, fft_form, toeplitz_form
from synthetic.s4.fused import fused_form

CONV_FORMS = {"toeplitz": toeplitz_form, "blocked": blocked_form, "fft": fft_form, "chunked": chunked_form,
              "fused": fused_form}


# ----------------------------------------------------------------------------------- the selector
NEAR_FACTOR = 2.0  # a scaling-table row decides only within this factor of (N, D, batch) in every coordinate
# the forms ``--conv auto`` picks from: not ``fused``, whose scaling rows are eager single runs while training runs
# compiled and packed (there it was measured slower than toeplitz: notes/s4_speed.md); it stays opt-in (--conv fused)
AUTO_FORMS = tuple(f for f in CONV_FORMS if f != "fused")
DEFAULT_CROSSOVER_N = 512  # no table: Toeplitz up to N = 512 (its GEMMs win at short N), chunked above
SCALING_TABLE = "figures/bench_s4_scaling_{device}.json"  # written by ``python -m synthetic.bench --scaling``
REPO_ROOT = Path(__file__).resolve().parents[2]  # the table is looked up here, whatever the working directory


def choose_form(N: int, D: int, device_type: str, table: Optional[Dict] = None,
                path: Optional[str] = None, B: Optional[int] = None) -> Tuple[str, str]:
    """The convolution form for sequence length N, D channels and batch B on ``device_type`` ("cpu", "cuda"), and why.

    With a scaling table (``table``, or the JSON at ``path`` / :data:`SCALING_TABLE` for the device type):
    the fastest form at the measured (N', D', B') nearest to (N, D, B) in log scale (the batch matters: the
    Toeplitz form's N×N work per channel does not grow with B, its products do; B None: N and D only), among the
    rows within :data:`NEAR_FACTOR` of it in every coordinate (a sparse table says nothing about sizes far from its
    rows: the CPU default preset's D 16, N 32, batch 128 is 4-6x from every committed row, and the nearest one's
    FFT ran it 25 % slower than Toeplitz). Rows of another device type, and ``fused`` rows (:data:`AUTO_FORMS`), are
    ignored. Without such a row:
    ``toeplitz`` for N <= :data:`DEFAULT_CROSSOVER_N`, else ``chunked``.
    """
    if table is None:
        f = Path(path) if path else REPO_ROOT / SCALING_TABLE.format(device=device_type)
        if f.exists():
            try:
                table = json.loads(f.read_text())
            except (OSError, ValueError):
                table = None
    rows = [r for r in (table or {}).get("results", []) if r.get("ms_per_iter") is not None
            and r.get("device_type", device_type) == device_type and r.get("form") in AUTO_FORMS]

    def coords(r):  # per-coordinate log distances to the measured (N', D', B')
        return (abs(math.log(r["N"] / N)), abs(math.log(r["D"] / D)),
                abs(math.log(r["batch"] / B)) if B and r.get("batch") else 0.0)

    rows = [r for r in rows if max(coords(r)) <= math.log(NEAR_FACTOR)]  # never extrapolate far from a measurement
    if rows:
        best = min(sum(coords(r)) for r in rows)
        near = [r for r in rows if sum(coords(r)) == best]
        r = min(near, key=lambda r: r["ms_per_iter"])
        return r["form"], (f"measured: fastest at N={r['N']}, D={r['D']}, batch={r.get('batch')} "
                           f"({r['ms_per_iter']} ms/iter)")
    form = "toeplitz" if N <= DEFAULT_CROSSOVER_N else "chunked"
    return form, (f"default rule (no measured row within a factor {NEAR_FACTOR:g} in N, D and batch): toeplitz for "
                  f"N <= {DEFAULT_CROSSOVER_N}, else chunked")
