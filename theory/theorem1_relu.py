"""Theorem 1 of Galim et al. (ICML 2025, Sec. 5) with the experiment's ReLU (Sec. 6.1, Figure 2): the
same SDT-P + LoRA budget makes a frozen deep S4 with a ReLU after every layer equal a smaller ReLU
target exactly, on every input sequence with entries in ``[0, x_max]``.

The theorem is stated with linear activations; the synthetic experiment's layer is
``y = ReLU(W (K x + u ⊙ x) + β)`` (skip inside the projection, as the official code), inputs are
integers in ``{0..9}`` and the target is a ReLU deep S4 of ``L*`` layers. This module keeps every
kernel, ``u`` and ``W`` of the linear construction (``theorem1.construct_theorem1``, skip inside) and
changes only the biases ``β`` (which Theorem 1 trains), so the budget is the same: ``⌈D/⌊L/L*⌋⌉``
updated channels per layer, ``H*`` states each, LoRA rank ``⌈D/⌊L/L*⌋⌉`` on every projection but the last,
the last projection in full, ``u`` and ``β``.

Why it works. In the linear construction the signal entering frozen layer ``j`` is ``G_j z`` (``z``:
the target's partially processed signal, ``G_j`` the coordinate matrix) and the routing makes ``G_j``
the identity on the block ``S_j`` the layer processes: ``G_j[S_j, :] = E^T``, ``G_j[:, S_j] = E``. With
ReLU, let the signal be ``G_j z + o_j`` with a constant offset ``o_j`` that is zero on ``S_j``:
- the processed channels ``S_j`` see exactly ``z_{S_j}`` (no offset, so no transient from a constant
  convolved by a kernel); every other channel passes through (kernel pruned, ``u = 1``), offset included;
- the layer's pre-activation is ``G_{j+1} z' + o_{j+1}`` when ``β_j = β_j^lin − W_j o_j + o_{j+1}``;
- rows outside the next block ``S_{j+1}`` carry mixtures that may be negative: ``o_{j+1}`` there is a
  bound of ``|G_{j+1} z'|`` plus ``margin``, so ReLU is the identity on them for every admissible input;
- rows ``S_{j+1}`` carry exactly ``z'_{S_{j+1}}`` (offset 0), and ``G_{j+1}[:, S_{j+1}] = E`` means these
  coordinates appear nowhere else. Inside the first group they are raw inputs ``x ≥ 0`` (ReLU is the
  identity); in a later group they are the previous target layer's pre-activation ``v``, and the
  frozen ReLU applies the *target's* ReLU to them, just before they are processed ("lazy" ReLU: each
  block of ``v_l`` is rectified in the layer before the one that convolves it);
- the model's last layer (``W`` in full) has pre-activation exactly ``v_{L*}``, so its ReLU is the target's.
The offsets are sound bounds, not estimates: ``|K * y|_∞ ≤ ‖K‖_1 |y|_∞`` with
``‖K‖_1 ≤ Σ_i |c_i b_i| / (1 − |a_i|)``, propagated through the target's layers from ``|x| ≤ x_max``.

Assumptions (each refused when violated): frozen and target use ReLU, skip inside, diagonal S4 (real or
conjugate-pair, both alike), target without residual (Theorem 1's target; as in ``theorem1``) unless
``target_residual=True`` (the experiment's target, ``u* != 0``: processed channels take ``u = u*``); target poles ``|a*| < 1`` (the ℓ1
bound); inputs in ``[0, x_max]`` with ``x_max`` finite (nonnegative: a raw channel routed to the next
block is rectified unshifted; bounded: the offsets are finite). Outside them the construction is not
claimed: negative inputs or inputs far above ``x_max`` break it (shown in the tests and the report).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import List, Optional, Tuple

import torch

from ._validate import check_int
from .deep import DeepSSM, deep_forward, random_deep
from .ssm import ssm_kernel
from .report import ClaimResult, claim
from .theorem1 import LayerUpdate, Theorem1Budget, construct_theorem1
from .tolerances import BREAK_RTOL, DEEP_RTOL, rel_err

Tensor = torch.Tensor
F64 = torch.float64


@dataclass(frozen=True)
class Theorem1ReluUpdate:
    """The updated ReLU model, the linear construction's per-layer record and budget (unchanged but for β),
    the offsets ``o_j`` (D,) carried into each layer (``o_0 = 0``), and the input bound they were made for."""

    model: DeepSSM
    layers: Tuple[LayerUpdate, ...]
    budget: Theorem1Budget
    offsets: Tuple[Tensor, ...]  # (L,) of (D,)
    x_max: float


def kernel_l1_bound(ssm, seq_len: Optional[int] = None) -> Tensor:
    """``Σ_k |K_k| ≤ Σ_i |c_i b_i| / (1 − |a_i|)`` per channel (D,), for a diagonal SSM with |a| < 1
    (conjugate-pair form: ``K_k = 2 Re Σ_i c_i b_i a_i^k``, so twice that). With ``seq_len`` = N: the exact
    ``Σ_{k<N} |K_k|`` instead, the operator bound for sequences of length <= N (much tighter for poles near 1)."""
    if seq_len is not None:
        return ssm_kernel(ssm, check_int("seq_len", seq_len, lo=1)).abs().sum(-1)  # (D,)
    a = ssm.A_bar.abs()
    if bool((a >= 1).any()):
        raise ValueError("target: needs |a*| < 1 (a stable kernel) for the input-to-signal bound; got max |a*| = "
                         f"{float(a.max()):.3g}")
    return (2 if ssm.conj_pairs else 1) * ((ssm.C * ssm.B_bar).abs() / (1 - a)).sum(-1)  # (D,)


def _coordinates(update, target: DeepSSM) -> List[Tensor]:
    """The linear construction's coordinate matrices ``G_j`` (D, D) of the signal entering each layer,
    recomputed from the updated projections: ``G_{j+1} = W_j G_j`` inside a group and
    ``W_j G_j (W*_l)^{-1}`` at the end of group ``l``."""
    recs, model = update.layers, update.model
    D = model.D
    G = [torch.eye(D, dtype=F64)]
    for j in range(model.L - 1):
        G_eff = G[j]
        if recs[j + 1].target_layer != recs[j].target_layer:
            G_eff = torch.linalg.solve(target.layers[recs[j].target_layer].W.T, G_eff.T).T  # G (W*_l)^{-1}
        G.append(model.layers[j].W @ G_eff)
    return G


def construct_theorem1_relu(frozen: DeepSSM, target: DeepSSM, x_max: float = 9.0,
                            margin: float = 1.0, *, target_residual: bool = False,
                            seq_len: Optional[int] = None) -> Theorem1ReluUpdate:
    """Update ``frozen`` (L layers, ReLU, skip inside, residual, bias) to equal ``target`` (L* < L layers,
    ReLU, no residual) on every input (B, D, N) with entries in ``[0, x_max]``.

    x_max: the input bound (the experiment's integers 0..9: 9). margin: the smallest pre-activation of
    a shifted row (> 0; any positive value is exact, a larger one only costs range). Raises ValueError
    naming the argument when an assumption of the module docstring fails. ``target_residual=True``: the
    target may have a residual (the experiment's target), as in ``theorem1.construct_theorem1``; its
    operator bound is then ``‖K*‖_1 + |u*|``. ``seq_len`` = N: exact for inputs of length <= N only, with
    offsets from the kernels' first N taps (:func:`kernel_l1_bound`); None: every length."""
    for name, m in (("frozen", frozen), ("target", target)):
        if not isinstance(m, DeepSSM):
            raise ValueError(f"{name}: expected a DeepSSM, got {type(m).__name__}")
        if m.activation != "relu":
            raise ValueError(f"{name}: this construction is for ReLU layers (activation='relu'), got "
                             f"{m.activation!r}; use theorem1.construct_theorem1 for linear ones")
        if m.kind != "s4":
            raise ValueError(f"{name}: the ReLU construction is for deep S4, got kind {m.kind!r}")
    if frozen.skip != "inside":
        raise ValueError(f"frozen.skip: the ReLU construction needs the skip inside the projection (the "
                         f"experiment's layer), got {frozen.skip!r}")
    if not (isinstance(x_max, (int, float)) and math.isfinite(x_max) and x_max >= 0):
        raise ValueError(f"x_max: must be a finite number >= 0 (inputs lie in [0, x_max]), got {x_max!r}")
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin > 0):
        raise ValueError(f"margin: must be a finite number > 0, got {margin!r}")
    lin = construct_theorem1(replace(frozen, activation="identity"), replace(target, activation="identity"),
                             target_residual=target_residual)
    recs, D, L = lin.layers, frozen.D, frozen.L
    kappa = [kernel_l1_bound(t.ssm, seq_len) + t.u.abs() for t in target.layers]  # (D,) per target layer: ‖K* + u* δ_0‖_1
    G = _coordinates(lin, target)
    bound = torch.full((D,), float(x_max), dtype=F64)  # |z| entering the current group (|v_{l-1}| or x)
    offsets = [torch.zeros(D, dtype=F64)]
    layers = list(lin.model.layers)
    for j in range(L):
        rec = recs[j]
        l = rec.target_layer
        blk = list(rec.channels)
        bound = bound.clone()
        bound[blk] = kappa[l][blk] * bound[blk]  # processed coordinates: |K* z| <= ‖K*‖_1 |z|
        last_in_group = j + 1 == L or recs[j + 1].target_layer != l
        if last_in_group:  # new coordinates v_l = W*_l ẑ + β*_l
            t = target.layers[l]
            bound = t.W.abs() @ bound + t.beta.abs()
        W = layers[j].W
        if j + 1 < L:
            o_next = G[j + 1].abs() @ bound + margin  # rows outside S_{j+1}: >= margin for every input
            o_next[list(recs[j + 1].channels)] = 0.0  # rows S_{j+1}: exactly z'_{S_{j+1}} (rectified if v)
        else:
            o_next = torch.zeros(D, dtype=F64)  # last layer: the pre-activation is v_{L*} itself
        beta = layers[j].beta - W @ offsets[j] + o_next
        layers[j] = replace(layers[j], beta=beta)
        if j + 1 < L:
            offsets.append(o_next)
    model = DeepSSM(tuple(layers), activation="relu", skip="inside")
    shift = max(float(o.abs().max()) for o in offsets)
    budget = replace(lin.budget, note=lin.budget.note + f"; ReLU: same budget, biases shifted (max offset "
                     f"{shift:.3g} for inputs in [0, {x_max:g}]) so each ReLU is the identity or the target's")
    return Theorem1ReluUpdate(model, recs, budget, tuple(offsets), float(x_max))


def pre_activations(model: DeepSSM, x: Tensor) -> List[Tensor]:
    """Each layer's pre-activation (B, D, N) on x (the mechanism check: shifted rows stay >= margin)."""
    from .deep import layer_forward

    out = []
    for layer in model.layers:
        pre = layer_forward(layer, x, "identity", model.skip)
        out.append(pre)
        x = torch.relu(pre)
    return out


def random_relu_instance(L: int, L_star: int, D: int, H: int, H_star: int, *,
                         generator: torch.Generator) -> Tuple[DeepSSM, DeepSSM]:
    """A random frozen ReLU deep S4 (skip inside, residual, bias) and a ReLU target (no residual), float64."""
    frozen = random_deep(L, D, H, activation="relu", skip="inside", residual=True, bias=True, generator=generator)
    target = random_deep(L_star, D, H_star, activation="relu", skip="inside", residual=False, bias=True,
                         generator=generator)
    return frozen, target


def integer_inputs(B: int, D: int, N: int, x_max: int, generator: torch.Generator) -> Tensor:
    """The experiment's inputs: integers in {0..x_max}, float64 (B, D, N)."""
    return torch.randint(0, x_max + 1, (B, D, N), generator=generator).to(F64)


NAME = "Theorem 1 with ReLU (experiment's layer): same budget, exact on inputs in [0, 9]"


@claim(NAME, order=43)
def check_theorem1_relu(n: int, seed: int) -> ClaimResult:
    """Random (L, L*, D, H, H*) incl. L* ∤ L and L* >= 2 (where the lazy ReLU is needed); integer inputs 0..9:
    the update equals the target; budget recounted as the linear one's (same kernels, u, W; only β differs);
    necessity: the linear construction's biases (no shifts), and negative inputs, break equality."""
    g = torch.Generator().manual_seed(seed)
    worst, ok, broke_lin, broke_neg, tried = 0.0, True, 0, 0, 0
    for i in range(n):
        Ls = 1 + i % 2
        L = Ls + 1 + int(torch.randint(0, 3, (1,), generator=g))
        D = int(torch.randint(2, 6, (1,), generator=g))
        H = int(torch.randint(2, 4, (1,), generator=g))
        Hs = int(torch.randint(1, H + 1, (1,), generator=g))
        frozen, target = random_relu_instance(L, Ls, D, H, Hs, generator=g)
        up = construct_theorem1_relu(frozen, target, x_max=9.0)
        x = integer_inputs(4, D, 24, 9, g)
        y_t = deep_forward(target, x)
        worst = max(worst, rel_err(deep_forward(up.model, x), y_t))
        lin = construct_theorem1(replace(frozen, activation="identity"), replace(target, activation="identity"))
        # same budget as the linear construction: identical kernels, u and W; only β changed
        for a, b in zip(up.model.layers, lin.model.layers):
            ok &= bool(torch.equal(a.W, b.W) and torch.equal(a.u, b.u) and torch.equal(a.ssm.A_bar, b.ssm.A_bar)
                       and torch.equal(a.ssm.C, b.ssm.C) and torch.equal(a.ssm.B_bar, b.ssm.B_bar))
        need = math.ceil(D / (L // Ls))
        ok &= up.budget.max_channels <= need and up.budget.max_lora_rank <= need and up.budget.full_W_layers == (L - 1,)
        if L // Ls >= 2:  # a group with an intermediate ReLU: the shifts and the sign of x matter
            tried += 1
            naive = replace(lin.model, activation="relu")
            broke_lin += rel_err(deep_forward(naive, x), y_t) > BREAK_RTOL
            broke_neg += rel_err(deep_forward(up.model, -x), deep_forward(target, -x)) > BREAK_RTOL
    ok &= worst <= DEEP_RTOL[F64]
    note = (f"same channels/rank/last-W-full budget as the linear case, β shifted; L*=1 (the experiment) and L*=2 "
            f"(lazy ReLU at group boundaries); without shifts {broke_lin}/{tried}, with negative inputs "
            f"{broke_neg}/{tried} instances break (inputs must be in [0, x_max])")
    return ClaimResult(NAME, n, worst, "verified" if ok else "FAILED", note)


FORM_NAME = "Theorem 1 in the experiment's own form: conjugate-pair S4D, a target with a skip (u* != 0), linear and ReLU"


def _conj_pair_deep(L: int, D: int, H: int, activation: str, g: torch.Generator) -> DeepSSM:
    """A random deep S4 with conjugate-pair modes (the experiment's form), skip inside, residual and bias."""
    from .deep import DeepLayer, random_s4_ssm

    base = random_deep(L, D, H, activation=activation, skip="inside", residual=True, bias=True, generator=g)
    return base.with_layers([DeepLayer(random_s4_ssm(D, H, generator=g, conj_pairs=True), l.W, l.beta, l.u)
                             for l in base.layers])


@claim(FORM_NAME, order=46)
def check_theorem1_experiment_form(n: int, seed: int) -> ClaimResult:
    """Random conjugate-pair instances whose target has a skip (as ``synthetic.s4``'s target): with
    ``target_residual=True`` the linear and the ReLU construction (offsets from the first N taps) equal the target on
    integer inputs 0..9; the same budget as Theorem 1's; without the option the target is refused; zeroing the
    processed channels' u (Theorem 1's rule for a target without skip) misses it."""
    g = torch.Generator().manual_seed(seed)
    worst, ok, missed = 0.0, True, 0
    for i in range(n):
        act = ("identity", "relu")[i % 2]
        L = 2 + int(torch.randint(0, 3, (1,), generator=g))
        D = int(torch.randint(2, 6, (1,), generator=g))
        H = int(torch.randint(1, 4, (1,), generator=g))
        frozen, target = _conj_pair_deep(L, D, H, act, g), _conj_pair_deep(1, D, 1 + i % H, act, g)
        N = 20
        x = integer_inputs(3, D, N, 9, g)
        if act == "identity":
            up = construct_theorem1(frozen, target, target_residual=True)
        else:
            up = construct_theorem1_relu(frozen, target, x_max=9.0, target_residual=True, seq_len=N)
        y = deep_forward(target, x)
        worst = max(worst, rel_err(deep_forward(up.model, x), y))
        ok &= up.budget.max_channels <= math.ceil(D / L) and up.budget.full_W_layers == (L - 1,)
        try:
            construct_theorem1(replace(frozen, activation="identity"), replace(target, activation="identity"))
            ok = False  # a residual target must be refused without the option
        except ValueError:
            pass
        zero_u = up.model.with_layers([replace(l, u=torch.where(l.u == 1, l.u, torch.zeros_like(l.u)))
                                       for l in up.model.layers])
        missed += rel_err(deep_forward(zero_u, x), y) > BREAK_RTOL
    ok &= worst <= DEEP_RTOL[torch.float64] and missed == n
    note = (f"the form synthetic.s4.oracle trains from (linear and ReLU alternately); processed channels take u = u*: "
            f"with u = 0 there {missed}/{n} miss the target")
    return ClaimResult(FORM_NAME, n, worst, "verified" if ok else "FAILED", note)
