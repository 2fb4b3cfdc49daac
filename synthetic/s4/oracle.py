"""Theorem 1's construction in the deep-S4 experiment's own parameterisation (Galim et al., ICML 2025, Sec. 5
and Sec. 6.1): the exact SDT-P + LoRA solution and its trainable set, for the frozen/target pairs Figure 2 trains.

The experiment's layer is ``y = σ(W (K x + u ⊙ x) + β)`` with S4D modes stored one per conjugate pair
(``log_A_re, A_im, B, C, log_dt``; ``synthetic.s4.model``) and its target has a skip too (``u* != 0``).
:func:`theorem1_oracle` converts both stacks to ``theory.deep.DeepSSM`` (``model.to_theory_model``), runs
``theory.theorem1.construct_theorem1`` (σ = identity) or ``theory.theorem1_relu.construct_theorem1_relu``
(σ = ReLU, inputs in ``[0, 9]`` of the experiment's length N) with ``target_residual=True``, and converts the
result back. The conversion keeps ``log_dt`` and ``B`` frozen (as SDT does) and sets, per tuned mode,
``A = Log(Ā_new) / Δ`` (principal branch) and ``C = (C B̄)_new / B̄(A)`` with the experiment's own ZOH
``B̄(A) = (exp(ΔA) − 1)/A · B``: the kernel depends on ``Ā`` and the product ``C B̄`` only, so any branch of
the logarithm gives the same layer. Pruned modes get ``C = 0``.

The trainable set (:func:`oracle_masks`) is the construction's: per layer the tuned (channel, mode) entries of
``A`` and ``C``; ``u`` and ``β`` of every channel; LoRA of rank ``|S_{j+1}|`` on ``W_j`` for every layer but the
last, whose ``W`` is trained in full; everything else frozen and the untuned modes pruned (``C = 0``, frozen).
At a smaller budget ``(c, s)`` the first ``c`` channels of each layer's block and the first ``s`` of their modes are
tuned, the LoRA rank is ``min(c, rank)`` and every other mode is pruned (SDT-P on the construction's layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from synthetic.s4 import model as sm

Tensor = torch.Tensor
F64 = torch.float64


@dataclass(frozen=True)
class Oracle:
    """The exact solution and the construction's layout.

    layers: per-layer parameter dicts (float64, CPU, no run axis) of the exact solution, with ``W`` the full
    updated projection; lora: per layer ``(lora_A (r, D), lora_B (D, r))`` or None (last layer: W in full);
    tuned: per layer (D, Hc) bool, the tuned modes; channels: per layer the processed block; mse64: the
    float64 MSE of the solution against the target on the inputs it was checked on.
    """

    layers: Tuple[Dict[str, Tensor], ...]
    lora: Tuple[Optional[Tuple[Tensor, Tensor]], ...]
    tuned: Tuple[Tensor, ...]
    channels: Tuple[Tuple[int, ...], ...]
    full_W_layers: Tuple[int, ...]
    mse64: float
    activation: str


def _cpu64(layers: Sequence[Dict[str, Tensor]]) -> List[Dict[str, Tensor]]:
    return [{k: v.detach().to("cpu", F64) for k, v in p.items()} for p in layers]


def _back(frozen: Dict[str, Tensor], layer, tuned: Tensor) -> Dict[str, Tensor]:
    """One theory layer (conjugate-pair DiagonalSSM) in the experiment's parameters, Δ and B kept frozen."""
    from theory.ssm import discretize_zoh

    p = {k: v.clone() for k, v in frozen.items()}
    dt = torch.exp(p["log_dt"])  # (D,)
    A0 = torch.complex(-torch.exp(p["log_A_re"]), p["A_im"])  # (D, Hc) frozen
    A_bar = torch.where(tuned, layer.ssm.A_bar, torch.exp(dt[:, None] * A0))  # pruned modes (Ā = 0): keep frozen A
    A = torch.where(tuned, torch.log(A_bar) / dt[:, None], A0)  # principal branch; Re A < 0 since |Ā| < 1
    B = torch.complex(p["B_re"], p["B_im"])
    _, B_bar = discretize_zoh(A, B, dt)  # (D, Hc): the experiment's B̄ at the new A
    C = torch.where(tuned, layer.ssm.C * layer.ssm.B_bar / B_bar, torch.zeros_like(B_bar))  # same C B̄ as the construction
    p["log_A_re"] = torch.where(tuned, torch.log(-A.real), p["log_A_re"])
    p["A_im"] = torch.where(tuned, A.imag, p["A_im"])
    p["C_re"] = torch.where(tuned, C.real, torch.zeros_like(p["C_re"]))  # untuned modes: pruned
    p["C_im"] = torch.where(tuned, C.imag, torch.zeros_like(p["C_im"]))
    p["u"], p["W"], p["beta"] = layer.u.clone(), layer.W.clone(), layer.beta.clone()
    return p


def theorem1_oracle(frozen: Sequence[Dict[str, Tensor]], target: Sequence[Dict[str, Tensor]], N: int,
                    activation: str = "relu", x_max: float = 9.0, check_batch: int = 4,
                    generator: Optional[torch.Generator] = None) -> Oracle:
    """The exact update of ``frozen`` (L layer dicts, no run axis) to ``target`` (L* layer dicts) in float64.

    activation: "identity" (Theorem 1) or "relu" (the experiment; exact on inputs in [0, x_max] of length <= N).
    The solution is checked against the target on ``check_batch`` integer input sequences (B, D, N) from
    ``generator`` through the float64 twin ``theory.deep.deep_forward``; ``mse64`` is that check's MSE.
    Raises ValueError (from the theory package) when the pair violates the construction's assumptions.
    """
    from theory.deep import deep_forward
    from theory.theorem1 import construct_theorem1
    from theory.theorem1_relu import construct_theorem1_relu

    if activation not in ("identity", "relu"):
        raise ValueError(f"activation: must be 'identity' or 'relu', got {activation!r}")
    f64, t64 = _cpu64(frozen), _cpu64(target)
    f_th, t_th = sm.to_theory_model(f64, activation), sm.to_theory_model(t64, activation)
    if activation == "identity":
        up = construct_theorem1(f_th, t_th, target_residual=True)
    else:
        up = construct_theorem1_relu(f_th, t_th, x_max=x_max, target_residual=True, seq_len=N)
    layers = tuple(_back(f, m, rec.mask.trainable) for f, m, rec in zip(f64, up.model.layers, up.layers))
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    x = torch.randint(0, int(x_max) + 1, (check_batch, f_th.D, N), generator=g).to(F64)  # (B, D, N)
    mine = deep_forward(sm.to_theory_model(list(layers), activation), x)
    mse = float(((mine - deep_forward(t_th, x)) ** 2).mean())
    lora = tuple(None if rec.full_W else (rec.lora_A, rec.lora_B) for rec in up.layers)
    return Oracle(layers, lora, tuple(rec.mask.trainable for rec in up.layers), tuple(rec.channels for rec in up.layers),
                  tuple(rec.layer for rec in up.layers if rec.full_W), mse, activation)


def oracle_budget(oracle: Oracle) -> Dict[str, int]:
    """The construction's own budget as ``{"channels": c, "states": s}`` (largest block, modes per channel)."""
    c = max(len(ch) for ch in oracle.channels)
    s = max(int(t.sum(1).max()) for t in oracle.tuned)
    return {"channels": c, "states": s}


def layout(oracle: Oracle, budget: Dict[str, int]) -> Tuple[List[Tensor], List[int]]:
    """Tuned (D, Hc) masks and LoRA ranks per layer at ``budget`` (the first c channels of each block, the first s
    tuned modes of each); the construction's own at :func:`oracle_budget`."""
    c, s = budget["channels"], budget["states"]
    tuned, ranks = [], []
    for t, ch, lo in zip(oracle.tuned, oracle.channels, oracle.lora):
        m = torch.zeros_like(t)
        for d in ch[:c]:
            modes = torch.nonzero(t[d]).flatten()[:s]
            m[d, modes] = True
        tuned.append(m)
        ranks.append(0 if lo is None else min(c, int(lo[0].shape[0])))
    return tuned, ranks


def pruned_base(frozen: Sequence[Dict[str, Tensor]], oracle: Oracle, budget: Dict[str, int]) -> List[Dict[str, Tensor]]:
    """The frozen layers with every mode untuned at ``budget`` pruned (``C = 0``; new dicts, the rest shared)."""
    tuned, _ = layout(oracle, budget)
    out = []
    for b, t in zip(frozen, tuned):
        p = dict(b)
        t = t.to(b["C_re"].device)
        for k in ("C_re", "C_im"):
            p[k] = torch.where(t, b[k], torch.zeros_like(b[k]))
        out.append(p)
    return out


def oracle_masks(state: sm.RunState, oracle: Oracle, budget: Dict[str, int]) -> None:
    """Set ``state``'s masks and rank masks to the construction's trainable set at ``budget``. With ``state``
    created on :func:`pruned_base` (untuned modes frozen at ``C = 0``) a run starts at the frozen model, pruned."""
    tuned, ranks = layout(oracle, budget)
    for l, (t, r) in enumerate(zip(tuned, ranks)):
        dev = state.mask[l]["W"].device
        t = t.to(dev)
        for k in sm.SSM_LORA_PARAMS:  # A (both parts) and C (both parts) of the tuned modes
            state.mask[l][k][:] = t
        state.mask[l]["u"][:] = True
        state.mask[l]["beta"][:] = True
        if l in oracle.full_W_layers:
            state.mask[l]["W"][:] = True
        else:
            state.rank_mask[l]["proj"][:, :r] = 1.0


@torch.no_grad()
def start_at(state: sm.RunState, oracle: Oracle, noise: float, generator: torch.Generator) -> None:
    """Put the runs of ``state`` (configured by :func:`oracle_masks` at the construction's budget) at the exact
    solution, then perturb every trainable entry by ``noise`` times that tensor's RMS over its trainable entries
    (Gaussian, from ``generator``). LoRA factors are the construction's ``(lora_A, lora_B)``."""
    for l, p in enumerate(oracle.layers):
        tr, mk = state.train[l], state.mask[l]
        for k in sm.ALL_PARAMS:
            if k == "W" and l not in oracle.full_W_layers:
                continue
            v = p[k].to(tr[k].device, tr[k].dtype)
            tr[k].copy_(torch.where(mk[k], v.expand_as(tr[k]), tr[k]))
        if oracle.lora[l] is not None:
            A, B = oracle.lora[l]
            r = A.shape[0]
            lo = state.lora[l]
            lo["proj_A"].zero_()
            lo["proj_B"].zero_()
            lo["proj_A"][:, :r] = A.to(lo["proj_A"])
            lo["proj_B"][:, :, :r] = B.to(lo["proj_B"])
    if noise:
        for t, m in _trainable_tensors(state):
            sel = t[m]
            rms = float(sel.pow(2).mean().sqrt()) if sel.numel() else 0.0
            xi = torch.randn(t.shape, generator=generator, dtype=F64).to(t)
            t.add_(torch.where(m, noise * rms * xi, torch.zeros_like(t)))


def _trainable_tensors(state: sm.RunState):
    """(tensor, bool mask of its trainable entries) for the masked copies and the ranked LoRA factors."""
    for l in range(len(state.base)):
        for k in sm.ALL_PARAMS:
            yield state.train[l][k], state.mask[l][k]
        rp = state.rank_mask[l]["proj"] > 0  # (R, rp)
        lo = state.lora[l]
        yield lo["proj_A"], rp[..., None].expand_as(lo["proj_A"])
        yield lo["proj_B"], rp[:, None, :].expand_as(lo["proj_B"])


def selection_agreement(selection_masks: Sequence[Tensor], oracle: Oracle) -> Dict[str, float]:
    """How Algorithm 1's selection (per layer a (D, Hc) SDTMask.trainable) relates to the construction's.

    The construction works for *any* partition of the D channels into the group's blocks and any H* modes with
    B̄ != 0, so the question is whether the selection is such a layout: ``valid_layout`` (1.0 or 0.0) needs the
    selected channel sets of the layers of each target layer's group to be pairwise disjoint and to cover every
    channel, with at least H* modes each; ``jaccard`` is the mean over layers of |sel ∩ block| / |sel ∪ block|
    against the construction's own blocks; ``pairwise_overlap`` the mean fraction of a layer's selected channels
    also selected by another layer."""
    chans = [set(torch.nonzero(m.any(1)).flatten().tolist()) for m in selection_masks]
    D = selection_masks[0].shape[0]
    H_star = min(int(t.sum(1).max()) for t in oracle.tuned)
    jac = [len(a & set(b)) / max(1, len(a | set(b))) for a, b in zip(chans, oracle.channels)]
    over = [len(a & set().union(*(c for j, c in enumerate(chans) if j != i))) / max(1, len(a))
            for i, a in enumerate(chans)]
    disjoint = all(not (chans[i] & chans[j]) for i in range(len(chans)) for j in range(i + 1, len(chans)))
    cover = set().union(*chans) == set(range(D))
    enough = all(int(m[d].sum()) >= H_star for m, c in zip(selection_masks, chans) for d in c)
    return {"valid_layout": float(disjoint and cover and enough), "jaccard": sum(jac) / len(jac),
            "pairwise_overlap": sum(over) / len(over), "covered_channels": len(set().union(*chans)) / D}
