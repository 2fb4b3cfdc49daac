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


def theory_forward_extra(layers: List[Dict[str, Tensor]], x: Tensor) -> Tensor:
    """Float64 reference twin of :func:`synthetic.s4.model.deep_forward_extra` built on ``theory``:
    x (B, D, N) -> (B, D, N).

    layers: per-layer dicts without a run axis (effective parameters, W after DoRA), with the extra keys of
    :data:`synthetic.s4.model.EXTRA_SHAPES`. Per layer: additional modes are appended to the layer's modes (B = 1)
    and the whole layer becomes a ``theory.ssm.DiagonalSSM`` (via :func:`to_theory_model`); the mechanism is the
    explicit recurrence ``theory.ssm.ssm_recurrence`` started at ``h_0``; the offset adds ``2 Re(C h')``;
    then ``ReLU(W (s + u ⊙ x) + β)``. Prompt / prefix positions are prepended and dropped as in the fast model.
    """
    from theory.ssm import ssm_recurrence

    def f64(t):
        return t.detach().to("cpu", torch.float64)

    x = f64(x)
    Bt = x.shape[0]
    M = layers[0]["prompt"].shape[-1] if "prompt" in layers[0] else 0
    if M:
        x = torch.cat([f64(layers[0]["prompt"])[None].expand(Bt, -1, -1), x], dim=-1)  # (B, D, M + N)
    for p in layers:
        q = {k: f64(v) for k, v in p.items()}
        if "add_C_re" in q:
            ones = torch.ones_like(q["add_C_re"])
            for k, a in (("log_A_re", "add_log_A_re"), ("A_im", "add_A_im"), ("C_re", "add_C_re"), ("C_im", "add_C_im")):
                q[k] = torch.cat([q[k], q[a]], dim=1)  # (D, Hc + Ha)
            q["B_re"] = torch.cat([q["B_re"], ones], dim=1)
            q["B_im"] = torch.cat([q["B_im"], 0 * ones], dim=1)
        layer = to_theory_model([q]).layers[0]  # reads the layer parameters, not the extra keys
        Mp = q["prefix"].shape[-1] if "prefix" in q else 0
        xin = torch.cat([q["prefix"][None].expand(Bt, -1, -1), x], dim=-1) if Mp else x
        h0 = torch.complex(q["h0_re"], q["h0_im"]) if "h0_re" in q else None
        s = ssm_recurrence(layer.ssm, xin, h0)  # (B, D, N'): C h_t from h_0
        if "offset_re" in q:
            s = s + 2 * (layer.ssm.C * torch.complex(q["offset_re"], q["offset_im"])).sum(-1).real[None, :, None]
        pre = torch.einsum("ij,bjn->bin", layer.W, s + layer.u[None, :, None] * xin) + layer.beta[None, :, None]
        x = torch.relu(pre)[..., Mp:]
    return x[..., M:]
