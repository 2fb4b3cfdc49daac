"""The float64 reference twin of the fast deep-S4 layers (``synthetic.s4.model``, ``synthetic.s4.conv``): the same
stack as a ``theory.deep.DeepSSM`` (conjugate-pair ``theory.ssm.DiagonalSSM``, skip inside), so every fast path is
held against the theory package's explicit recurrence / FFT convolution."""

from __future__ import annotations

from typing import Dict, List

import torch

Tensor = torch.Tensor


def to_theory_model(layers: List[Dict[str, Tensor]], activation: str = "relu"):
    """The same stack as ``theory.deep.DeepSSM`` (float64, conjugate-pair DiagonalSSM, skip inside, ReLU or
    ``activation="identity"``).

    layers: per-layer dicts without a run axis. Uses ``theory.ssm.discretize_zoh`` for Ā, B̄.
    """
    from theory.deep import DeepLayer, DeepSSM
    from theory.ssm import DiagonalSSM, discretize_zoh

    out = []
    for p in layers:
        q = {k: v.detach().to("cpu", torch.float64) for k, v in p.items()}
        A = torch.complex(-torch.exp(q["log_A_re"]), q["A_im"])
        B = torch.complex(q["B_re"], q["B_im"])
        C = torch.complex(q["C_re"], q["C_im"])
        A_bar, B_bar = discretize_zoh(A, B, torch.exp(q["log_dt"]))
        out.append(DeepLayer(DiagonalSSM(A_bar, B_bar, C), q["W"], q["beta"], q["u"]))
    return DeepSSM(tuple(out), activation=activation, skip="inside")
