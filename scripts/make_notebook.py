"""Build ``paper_checks.ipynb`` from the cells below and execute it, saving outputs.

    python scripts/make_notebook.py            # write + execute (CPU, a few minutes)
    python scripts/make_notebook.py --no-exec  # write only

The notebook only calls the package (no logic lives only here); ``tests/test_notebook.py`` re-executes
it in CI so it cannot rot. Edit the cells here, not in the .ipynb.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CELLS = []


def md(src: str) -> None:
    CELLS.append(("markdown", src.strip("\n")))


def code(src: str) -> None:
    CELLS.append(("code", src.strip("\n")))


# ----------------------------------------------------------------------------------------------
md(r"""
# Checking *Parameter-Efficient Fine-Tuning of State Space Models* (Galim et al., ICML 2025)

Each section states one result, calls the toolkit's construction on a small instance, prints the
numerical check, adds a tiny symbolic check where one exists, and draws a picture where it helps.
Everything runs on a CPU in float64 in a few minutes; the experiment sections redraw the committed
GPU results from `figures/*.json`.

Notation: $D$ channels, $H$ states per channel, per-channel diagonal SSM
$h_t = \bar A h_{t-1} + \bar B x_t,\ y_t = C h_t$, kernel $K_k = C\bar A^k \bar B = \sum_i c_i b_i a_i^k$.
""")
code(r"""
import json
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import sympy as sp
import torch

torch.set_default_dtype(torch.float64)
from theory.report import format_table, run_report

print(format_table(run_report(n=10, seed=0)))
""")
