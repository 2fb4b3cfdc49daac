"""Lemma 2 of Galim et al. (ICML 2025), Sec. 5.1, eq. (5) (proof in App. D.1): the fewest scalar
parameters to change so that a frozen S4 channel equals a target S4 channel.

One channel. Frozen: ``H`` states ``(a_i, b_i, c_i)``; target: ``H* <= H`` states ``(a*_j, b*_j, c*_j)``.
The kernel is ``K_k = Σ_i c_i b_i a_i^k`` (lag 0 included), so only the eigenvalue ``a_i`` and the
gain ``g_i = b_i c_i`` of each state matter. The paper's count, eq. (5):

    min over P of  ‖[diag(Ā) ⊙ B̄ ⊙ C^T]_{H*+1:H}‖_0  +  ‖[Ā]_{1:H*,1:H*} − Ā*‖_0  +  ‖[B̄ ⊙ C^T]_{1:H*} − B̄* ⊙ C*^T‖_0

(zero the redundant states; align the kept states' eigenvalues; align their gains), ``P`` ranging over
state permutations of the frozen model. Read as an algorithm it is an assignment problem: each target
state ``j`` is matched to a distinct frozen state ``σ(j)``; unmatched frozen states are zeroed. Cost of
matching target ``j`` to frozen ``i`` (:func:`assignment_costs`):

    [a_i ≠ a*_j] + gain_cost(i, j) − [b_i c_i ≠ 0]          (the last term: the zeroing it saves)

with ``gain_cost = 0`` if ``b_i c_i = b*_j c*_j``, else 1 (change ``c_i := b*_j c*_j / b_i``, tuning
``C`` only as SDT does; if ``b_i = 0`` change ``b_i`` instead), or 2 if ``b_i = c_i = 0``. A zeroed
state costs 1 if ``b_i c_i ≠ 0`` (set ``c_i := 0``) and 0 otherwise. The total is
``Σ_i [b_i c_i ≠ 0] + Σ_j cost(σ(j), j)``; :func:`minimal_update` minimises it exactly with
``scipy.optimize.linear_sum_assignment``, :func:`minimal_update_bruteforce` (the reference twin)
by enumerating all injective maps, and :func:`paper_formula_count` evaluates eq. (5) literally.

Why it is the minimum (and the assumptions that make it so, checked or stated):
- target eigenvalues ``a*_j`` pairwise distinct and gains ``b*_j c*_j ≠ 0`` (checked): then the
  target kernel determines its states, as the sequences ``k ↦ a^k`` of distinct ``a`` are linearly
  independent. The paper assumes only ``a*_j b*_j c*_j ≠ 0``; with a repeated ``a*`` eq. (5)
  over-counts (see ``repeated_target_counterexample`` in the tests and :func:`merge_target_states`).
- frozen eigenvalues ``a_i`` pairwise distinct (checked): two frozen states sharing an eigenvalue
  act as one, and tuning one gain can fix their sum, again below eq. (5).
- no coincidences other than exact (planted) equalities (stated, not checkable): no sum of two or more
  frozen gains equals a target gain or zero. Then a final model equal to the target has, for each
  ``a*_j``, at least one state moved to/at ``a*_j`` with its gain made right, and every other state
  with non-zero gain must change; grouping several frozen states on one target eigenvalue never costs
  less than using one and zeroing the rest.
- a frozen state with ``a_i = 0`` still contributes ``b_i c_i`` at lag 0 (``0^0 = 1``), so the exact
  zeroing condition is ``b_i c_i ≠ 0``. Eq. (5) tests ``a_i b_i c_i ≠ 0`` and so under-counts by one per
  redundant state with ``a_i = 0 ≠ b_i c_i`` (excluded by the paper's "all parameters non-zero").

Equality of two real numbers ("already matching") uses a relative tolerance ``MATCH_RTOL``: planted
matches are exact copies, or equal products ``b_i c_i = b*_j c*_j`` formed from different factors, which
round to within one ulp; generic values differ at O(1). Zero tests (``b_i c_i ≠ 0``) are exact: a
redundant state is one whose ``c_i`` (or ``b_i``) is exactly 0.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ._validate import check_same_dtype, check_tensor
from .report import ClaimResult, claim
from .ssm import DiagonalSSM, ssm_kernel
from .tolerances import BREAK_RTOL, RTOL, rel_err

Tensor = torch.Tensor

# Two values count as equal when |x − y| <= MATCH_RTOL · max(|x|, |y|): a planted equal gain built
# from different factors (c_i = g*/b_i) is off by <= 1 ulp ≈ 2e-16; generic values differ at O(1).
MATCH_RTOL = 1e-12


def _close(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.abs(x - y) <= MATCH_RTOL * np.maximum(np.abs(x), np.abs(y))


@dataclass(frozen=True)
class Lemma2Update:
    """Result of :func:`minimal_update` for one channel.

    a, b, c: (H,) updated parameters; changed: (3, H) bool, rows (a, b, c), True where the entry
    differs from the frozen one; num_changed: ``changed.sum()``; assignment: (H*,) int64, the frozen
    state matched to each target state; zeroed: (H,) bool, redundant states whose gain was set to 0.
    """

    a: Tensor
    b: Tensor
    c: Tensor
    changed: Tensor
    num_changed: int
    assignment: Tensor
    zeroed: Tensor


def _check_channel(a, b, c, a_star, b_star, c_star) -> Tuple[Tensor, ...]:
    dims: dict = {}
    a, b, c = (check_tensor(name, v, shape=("H",), dims=dims, allow_complex=False)
               for name, v in (("a", a), ("b", b), ("c", c)))
    a_star, b_star, c_star = (check_tensor(name, v, shape=("H_star",), dims=dims, allow_complex=False)
                              for name, v in (("a_star", a_star), ("b_star", b_star), ("c_star", c_star)))
    check_same_dtype(a=a, b=b, c=c, a_star=a_star, b_star=b_star, c_star=c_star)
    H, H_star = dims["H"], dims["H_star"]
    if H_star < 1 or H < H_star:
        raise ValueError(f"a_star: need 1 <= H* <= H (the frozen model is at least as large), got H* = {H_star}, H = {H}")
    g_star = (b_star * c_star).numpy()
    if bool((g_star == 0).any()):
        raise ValueError(f"b_star, c_star: every target gain b*_j c*_j must be non-zero (zero at j = "
                         f"{np.nonzero(g_star == 0)[0].tolist()}); drop those states, they do not contribute")
    for name, v in (("a_star", a_star.numpy()), ("a", a.numpy())):
        same = _close(v[:, None], v[None, :]) & ~np.eye(v.size, dtype=bool)
        if same.any():
            i, k = (int(t) for t in np.argwhere(same)[0])
            hint = (" — merge them first (merge_target_states): a target with a repeated eigenvalue is not "
                    "minimal and eq. (5) over-counts for it") if name == "a_star" else (
                    " — Lemma 2's count assumes distinct frozen eigenvalues (states sharing one act as one)")
            raise ValueError(f"{name}: eigenvalues must be pairwise distinct, {name}[{i}] = {name}[{k}] = {float(v[i])!r}{hint}")
    return a, b, c, a_star, b_star, c_star


def assignment_costs(a, b, c, a_star, b_star, c_star) -> Tuple[np.ndarray, np.ndarray]:
    """``(cost (H, H*), zero_cost (H,))``: cost of matching frozen ``i`` to target ``j`` net of the
    zeroing it saves, and the cost of zeroing frozen ``i`` (see the module docstring)."""
    a, b, c, a_s, b_s, c_s = (t.detach().cpu().numpy() for t in (a, b, c, a_star, b_star, c_star))
    g, g_s = b * c, b_s * c_s  # (H,), (H*,)
    zero_cost = (g != 0).astype(np.int64)  # (H,): set c_i := 0 (exact zero test; a_i = 0 included)
    a_cost = (~_close(a[:, None], a_s[None, :])).astype(np.int64)  # (H, H*)
    gain_cost = np.where(_close(g[:, None], g_s[None, :]), 0,
                         np.where(((b != 0) | (c != 0))[:, None], 1, 2))  # (H, H*)
    return a_cost + gain_cost - zero_cost[:, None], zero_cost


def apply_update_rules(a: Sequence, b: Sequence, c: Sequence, a_star: Sequence, b_star: Sequence,
                       c_star: Sequence, assignment: Sequence[int], change_a: Sequence[bool],
                       change_gain: Sequence[bool], zero: Sequence[bool]) -> Tuple[List, List, List]:
    """The update itself, on plain sequences (floats or sympy symbols), given the decisions.

    For target ``j`` matched to frozen ``i = assignment[j]``: if ``change_a[j]``, ``a_i := a*_j``; if
    ``change_gain[j]``, ``c_i := b*_j c*_j / b_i`` (or ``b_i := b*_j c*_j / c_i`` when ``b_i = 0``, or
    ``(b_i, c_i) := (b*_j, c*_j)`` when both are 0). For frozen ``i`` with ``zero[i]``: ``c_i := 0``.
    Returns new lists ``(a, b, c)``.
    """
    a, b, c = list(a), list(b), list(c)
    for j, i in enumerate(assignment):
        if change_a[j]:
            a[i] = a_star[j]
        if change_gain[j]:
            g_star = b_star[j] * c_star[j]
            if b[i] != 0:
                c[i] = g_star / b[i]
            elif c[i] != 0:
                b[i] = g_star / c[i]
            else:
                b[i], c[i] = b_star[j], c_star[j]
    for i, z in enumerate(zero):
        if z:
            c[i] = 0 * c[i]
    return a, b, c


def _build(a, b, c, a_star, b_star, c_star, assignment: np.ndarray, expected: int) -> Lemma2Update:
    """Turn an assignment into the update, its change mask and count (checked against ``expected``)."""
    an, bn, cn, a_s, b_s, c_s = (t.detach().cpu().numpy() for t in (a, b, c, a_star, b_star, c_star))
    H = an.size
    change_a = [not _close(an[i], a_s[j]) for j, i in enumerate(assignment)]
    change_gain = [not _close(bn[i] * cn[i], b_s[j] * c_s[j]) for j, i in enumerate(assignment)]
    matched = set(int(i) for i in assignment)
    zero = [i not in matched and bn[i] * cn[i] != 0 for i in range(H)]
    a_new, b_new, c_new = apply_update_rules(an.tolist(), bn.tolist(), cn.tolist(), a_s.tolist(), b_s.tolist(),
                                             c_s.tolist(), [int(i) for i in assignment], change_a, change_gain, zero)
    out = [torch.tensor(v, dtype=a.dtype) for v in (a_new, b_new, c_new)]  # (H,) each
    changed = torch.stack([o != t for o, t in zip(out, (a, b, c))])  # (3, H): entries actually changed
    num = int(changed.sum())
    if num != expected:  # the count is of entries actually changed; it must equal the cost minimised
        raise AssertionError(f"internal: {num} entries changed but the assignment cost is {expected}")
    return Lemma2Update(out[0], out[1], out[2], changed, num,
                        torch.as_tensor(np.asarray(assignment, dtype=np.int64)), torch.tensor(zero, dtype=torch.bool))


def minimal_update(a: Tensor, b: Tensor, c: Tensor, a_star: Tensor, b_star: Tensor, c_star: Tensor) -> Lemma2Update:
    """Lemma 2 as an algorithm: the fewest changed scalars of ``(a, b, c)`` making the frozen channel's
    kernel equal the target's, by an exact assignment (``linear_sum_assignment``).

    a, b, c: (H,) real; a_star, b_star, c_star: (H*,) real, 1 <= H* <= H, same dtype. Raises
    ``ValueError`` if the assumptions in the module docstring that can be checked fail.
    """
    a, b, c, a_star, b_star, c_star = _check_channel(a, b, c, a_star, b_star, c_star)
    cost, zero_cost = assignment_costs(a, b, c, a_star, b_star, c_star)  # (H, H*), (H,)
    rows, cols = linear_sum_assignment(cost.T)  # rows: target j, cols: frozen i
    assignment = np.empty(cost.shape[1], dtype=np.int64)
    assignment[rows] = cols
    total = int(zero_cost.sum() + cost.T[rows, cols].sum())
    return _build(a, b, c, a_star, b_star, c_star, assignment, total)


def minimal_update_bruteforce(a: Tensor, b: Tensor, c: Tensor, a_star: Tensor, b_star: Tensor,
                              c_star: Tensor) -> Lemma2Update:
    """Reference twin of :func:`minimal_update`: enumerate all ``H!/(H−H*)!`` injective maps (H <= 8)."""
    a, b, c, a_star, b_star, c_star = _check_channel(a, b, c, a_star, b_star, c_star)
    if a.shape[0] > 8:
        raise ValueError(f"a: brute force is limited to H <= 8, got H = {a.shape[0]}")
    cost, zero_cost = assignment_costs(a, b, c, a_star, b_star, c_star)
    H, H_star = cost.shape
    best, best_map = None, None
    for perm in itertools.permutations(range(H), H_star):
        total = int(zero_cost.sum() + cost[list(perm), range(H_star)].sum())
        if best is None or total < best:
            best, best_map = total, np.array(perm, dtype=np.int64)
    return _build(a, b, c, a_star, b_star, c_star, best_map, best)


def paper_formula_count(a: Tensor, b: Tensor, c: Tensor, a_star: Tensor, b_star: Tensor, c_star: Tensor) -> int:
    """Eq. (5) evaluated literally, minimising over all injective maps (= permutations ``P``):
    ``#{unmatched i: a_i b_i c_i ≠ 0} + #{j: a_σ(j) ≠ a*_j} + #{j: b_σ(j) c_σ(j) ≠ b*_j c*_j}``.

    Only shapes and finiteness are checked: this is the paper's number, to compare with
    :func:`minimal_update` (they agree under the module docstring's assumptions)."""
    dims: dict = {}
    a, b, c = (check_tensor(name, v, shape=("H",), dims=dims, allow_complex=False)
               for name, v in (("a", a), ("b", b), ("c", c)))
    a_star, b_star, c_star = (check_tensor(name, v, shape=("H_star",), dims=dims, allow_complex=False)
                              for name, v in (("a_star", a_star), ("b_star", b_star), ("c_star", c_star)))
    an, bn, cn, a_s, b_s, c_s = (t.detach().cpu().numpy() for t in (a, b, c, a_star, b_star, c_star))
    H, H_star = an.size, a_s.size
    if H_star > H:
        raise ValueError(f"a_star: need H* <= H, got H* = {H_star}, H = {H}")
    active = (an * bn * cn != 0)  # (H,): the paper's "non-zero hidden dimension"
    a_mis = ~_close(an[:, None], a_s[None, :])  # (H, H*)
    g_mis = ~_close((bn * cn)[:, None], (b_s * c_s)[None, :])  # (H, H*)
    best = None
    for perm in itertools.permutations(range(H), H_star):
        rest = np.ones(H, dtype=bool)
        rest[list(perm)] = False
        total = int(active[rest].sum() + a_mis[list(perm), range(H_star)].sum() + g_mis[list(perm), range(H_star)].sum())
        best = total if best is None else min(best, total)
    return best


def merge_target_states(a_star: Tensor, b_star: Tensor, c_star: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """A minimal realisation of a single-channel target: states with equal ``a*`` merged (gains added,
    kept as ``b* = 1, c* = Σ g*``), states whose (merged) gain is 0 dropped. Same kernel.

    a_star, b_star, c_star: (H*,) real. Returns three (H*',) tensors, H*' <= H*."""
    dims: dict = {}
    a_star, b_star, c_star = (check_tensor(name, v, shape=("H_star",), dims=dims, allow_complex=False)
                              for name, v in (("a_star", a_star), ("b_star", b_star), ("c_star", c_star)))
    groups: dict = {}
    for a_j, g_j in zip(a_star.tolist(), (b_star * c_star).tolist()):
        key = next((k for k in groups if _close(np.float64(k), np.float64(a_j))), a_j)
        groups[key] = groups.get(key, 0.0) + g_j
    kept = [(k, g) for k, g in groups.items() if g != 0]
    a_new = torch.tensor([k for k, _ in kept], dtype=a_star.dtype)
    c_new = torch.tensor([g for _, g in kept], dtype=a_star.dtype)
    return a_new, torch.ones_like(a_new), c_new


# ---- model level ---------------------------------------------------------------------------------

def minimal_update_ssm(frozen: DiagonalSSM, target: DiagonalSSM) -> Tuple[DiagonalSSM, List[Lemma2Update], int]:
    """:func:`minimal_update` channel by channel on real :class:`DiagonalSSM` s (``A_bar``, ``B_bar``, ``C``).

    frozen: D channels of H states; target: D channels of H* <= H states. Returns the updated SSM,
    the per-channel records and the total number of changed scalars."""
    if frozen.conj_pairs or target.conj_pairs:
        raise ValueError("frozen, target: Lemma 2 is implemented for the real form only")
    if frozen.D != target.D:
        raise ValueError(f"target: must have the frozen model's D = {frozen.D} channels, got {target.D}")
    records = [minimal_update(frozen.A_bar[d], frozen.B_bar[d], frozen.C[d],
                              target.A_bar[d], target.B_bar[d], target.C[d]) for d in range(frozen.D)]
    updated = DiagonalSSM(torch.stack([r.a for r in records]), torch.stack([r.b for r in records]),
                          torch.stack([r.c for r in records]))
    return updated, records, sum(r.num_changed for r in records)


# ---- report row ----------------------------------------------------------------------------------

def planted_channel(H: int, H_star: int, g: torch.Generator, dtype=torch.float64, kinds=None):
    """A random channel pair with planted structure: each target state is (0) generic, (1) an exact copy
    of a frozen state, (2) shares its ``a`` only, or (3) its gain ``b c`` only (from different factors);
    unused frozen states are generic or redundant (``c_i = 0``). Eigenvalues on a jittered grid
    (gaps >= 0.06, ``|a| >= 0.08``); ``|b|, |c| ∈ [0.5, 1.5]``. ``kinds`` (H*,) fixes the plant.

    Returns ``(params, planted_cost)``: the six tensors as a dict, and the number of changes the planted
    map needs (2, 0, 1, 1 per target kind + 1 per non-redundant unused frozen state), an upper bound
    on the minimum."""
    grid = torch.linspace(-0.9, 0.9, 19, dtype=dtype)
    grid = grid[grid.abs() > 0.05]
    pool = grid[torch.randperm(grid.numel(), generator=g)[:H + H_star]]
    pool = pool + 0.02 * (2 * torch.rand(H + H_star, generator=g, dtype=dtype) - 1)
    a, a_star = pool[:H].clone(), pool[H:].clone()

    def gains(n):
        return (0.5 + torch.rand(n, generator=g, dtype=dtype)) * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).to(dtype)

    b, c, b_star, c_star = gains(H), gains(H), gains(H_star), gains(H_star)
    frozen_of = torch.randperm(H, generator=g)[:H_star].tolist()
    kinds = torch.randint(0, 4, (H_star,), generator=g).tolist() if kinds is None else list(kinds)
    for j, (kind, i) in enumerate(zip(kinds, frozen_of)):
        if kind == 1:
            a[i], b[i], c[i] = a_star[j], b_star[j], c_star[j]
        elif kind == 2:
            a[i] = a_star[j]
        elif kind == 3:
            c[i] = b_star[j] * c_star[j] / b[i]
    used = {i for k, i in zip(kinds, frozen_of) if k != 0}
    for i in range(H):
        if i not in used and bool(torch.rand(1, generator=g) < 0.5):
            c[i] = 0.0
    cost = sum((2, 0, 1, 1)[k] for k in kinds) + sum(1 for i in range(H) if i not in frozen_of and c[i] != 0)
    return dict(a=a, b=b, c=c, a_star=a_star, b_star=b_star, c_star=c_star), cost


def _kernel(a, b, c, N):
    return ssm_kernel(DiagonalSSM(a[None], b[None], c[None]), N)[0]  # (N,)


@claim("Lemma 2: minimal S4 update (assignment) == eq. (5), target reproduced", order=30)
def check_lemma2(n: int, seed: int) -> ClaimResult:
    """Planted random channels (H <= 6): the assignment update reproduces the target kernel to lag
    2(H + H*), its count equals the brute-force minimum over injective maps and eq. (5) literally,
    and reverting any single changed entry breaks equality."""
    name = "Lemma 2: minimal S4 update (assignment) == eq. (5), target reproduced"
    g = torch.Generator().manual_seed(seed)
    worst, problems, saved = 0.0, [], 0
    for i in range(n):
        H = int(torch.randint(1, 7, (1,), generator=g))
        H_star = int(torch.randint(1, H + 1, (1,), generator=g))
        inst, _ = planted_channel(H, H_star, g)
        up = minimal_update(**inst)
        N = 2 * (H + H_star)
        K_star = _kernel(inst["a_star"], inst["b_star"], inst["c_star"], N)
        worst = max(worst, rel_err(_kernel(up.a, up.b, up.c, N), K_star))
        brute = minimal_update_bruteforce(**inst).num_changed
        paper = paper_formula_count(**inst)
        if not (up.num_changed == brute == paper):
            problems.append(f"instance {i}: assignment {up.num_changed}, brute force {brute}, eq. (5) {paper}")
        saved += (H + H_star) - up.num_changed  # naive: change a and c of H* states, zero the other H − H*
        for row, col in torch.nonzero(up.changed).tolist():
            params = [up.a.clone(), up.b.clone(), up.c.clone()]
            params[row][col] = inst["abc"[row]][col]
            if rel_err(_kernel(*params, N), K_star) <= BREAK_RTOL:
                problems.append(f"instance {i}: reverting entry {'abc'[row]}[{col}] keeps equality (not minimal)")
    ok = worst <= RTOL[torch.float64] and not problems
    note = (f"count == brute force == eq. (5); reverts break equality; planted structure saved {saved} "
            f"changes vs naive H+H* (distinct eigenvalues assumed)") if ok else "; ".join(problems[:2])
    return ClaimResult(name, n, worst, "verified" if ok else "FAILED", note)


def counterexamples() -> List[dict]:
    """Instances inside the paper's stated hypothesis (every a*_j b*_j c*_j ≠ 0; the last one also breaks
    its "all frozen parameters non-zero") where eq. (5) is not the minimum. Each gives the eq. (5)
    count, an explicit cheaper (or the necessary) update, and its number of changed scalars."""
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return [
        dict(what="repeated target eigenvalue: a* = (0.5, 0.5), gains (0.3, 0.4); frozen state (0.5, 0.7) "
                  "already realises their sum, only the other frozen state must be zeroed",
             frozen=(t(0.5, -0.2), t(1.0, 1.0), t(0.7, 0.9)), target=(t(0.5, 0.5), t(1.0, 1.0), t(0.3, 0.4)),
             update=(t(0.5, -0.2), t(1.0, 1.0), t(0.7, 0.0)), changed=1),
        dict(what="repeated frozen eigenvalue: frozen a = (0.5, 0.5), gains (0.3, 0.2), target (0.5, 0.9): "
                  "one gain change fixes the sum",
             frozen=(t(0.5, 0.5), t(1.0, 1.0), t(0.3, 0.2)), target=(t(0.5), t(1.0), t(0.9)),
             update=(t(0.5, 0.5), t(1.0, 1.0), t(0.7, 0.2)), changed=1),
        dict(what="redundant frozen state with a = 0 (outside 'all parameters non-zero'): eq. (5) counts 0, "
                  "but b c = 0.4 feeds lag 0 and must be zeroed",
             frozen=(t(0.5, 0.0), t(1.0, 1.0), t(0.9, 0.4)), target=(t(0.5), t(1.0), t(0.9)),
             update=(t(0.5, 0.0), t(1.0, 1.0), t(0.9, 0.0)), changed=1),
    ]


@claim("Lemma 2 as stated: eq. (5) is the minimum (repeated eigenvalues allowed)", order=31)
def check_lemma2_as_stated(n: int, seed: int) -> ClaimResult:
    """Deterministic counterexamples (``n``, ``seed`` unused): eq. (5) vs an explicit update whose
    kernel equals the target's (checked to lag 16) and whose change count is counted from the tensors."""
    name = "Lemma 2 as stated: eq. (5) is the minimum (repeated eigenvalues allowed)"
    worst, notes = 0.0, []
    for ex in counterexamples():
        fa, fb, fc = ex["frozen"]
        ta, tb, tc = ex["target"]
        ua, ub, uc = ex["update"]
        worst = max(worst, rel_err(_kernel(ua, ub, uc, 16), _kernel(ta, tb, tc, 16)))
        changed = int(sum(int((u != f).sum()) for u, f in zip(ex["update"], ex["frozen"])))
        paper = paper_formula_count(fa, fb, fc, ta, tb, tc)
        # the frozen channel itself differs from the target, so with one change the minimum is exactly 1
        frozen_ok = rel_err(_kernel(fa, fb, fc, 16), _kernel(ta, tb, tc, 16)) <= BREAK_RTOL
        if changed != 1 or frozen_ok or paper == changed:
            worst = float("inf")
        notes.append(f"eq.(5)={paper} vs min {changed}")
    verdict = "finding" if worst <= RTOL[torch.float64] else "FAILED"
    return ClaimResult(name, len(notes), worst, verdict,
                       "repeated a*: " + notes[0] + "; repeated frozen a: " + notes[1] + "; frozen a=0: " + notes[2]
                       + " (holds with distinct eigenvalues, see row above)")
