"""Diagonal SSM per channel: the S4 mechanism of Galim et al. (ICML 2025), Sec. 3.1, eqs. (1)-(3).

One SSM per channel ``d``:  ``h_t = Ā h_{t-1} + B̄ x_t``,  ``y_t = C h_t``  (t = 1..N), with
``Ā = diag(a_1..a_H)``, so the convolution kernel is ``K_k = C Ā^k B̄ = Σ_i c_i b_i a_i^k`` and
``y = K * x`` (causal, lag 0 included) plus the free response of the initial state,
``y_t ⊃ C Ā^t h_0``.

Two forms:
- real: ``A_bar, B_bar, C`` real, shape (D, H);
- complex-conjugate-pair (S4D): complex ``(D, H)`` tensors holding one member of each pair; the
  output is ``2·Re(...)`` (the pair's sum). ``real_realisation`` turns it into a real
  block-diagonal SSM with 2H states.

Layout: inputs and outputs are (B, D, N) = (batch, channels, length).

Dtypes: float32 and float64 (complex64 and complex128 for the conjugate-pair form); float16 and
bfloat16 are refused (``ValueError`` from :mod:`theory._validate`: ``torch.linalg.vander`` and the FFT
have no half-precision CPU kernels). Functions that build the powers ``Ā^k`` for k < N, O(D·H·N)
entries, check the estimated size first (``max_bytes``, else ``$THEORY_MAX_BYTES``, else 4 GiB), and
refuse an unstable ``|Ā| > 1`` whose powers or outputs would overflow the dtype over N steps.
Two implementations of the same map, held together by tests:
``ssm_recurrence`` (explicit loop, the reference) and ``ssm_convolution`` (FFT).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ._validate import REAL_DTYPES, SSM_DTYPES, check_int, check_positive, check_same_dtype, check_size, check_tensor

Tensor = torch.Tensor


@dataclass(frozen=True)
class DiagonalSSM:
    """Discrete diagonal SSM, one per channel.

    A_bar, B_bar, C: (D, H), real, or complex for the conjugate-pair form (output 2·Re).
    """

    A_bar: Tensor  # (D, H)
    B_bar: Tensor  # (D, H)
    C: Tensor  # (D, H)

    def __post_init__(self):
        dims: dict = {}
        for name in ("A_bar", "B_bar", "C"):
            object.__setattr__(self, name, check_tensor(name, getattr(self, name), shape=("D", "H"), dims=dims,
                                                        dtypes=SSM_DTYPES))
        check_same_dtype(A_bar=self.A_bar, B_bar=self.B_bar, C=self.C)
        kinds = {t.is_complex() for t in (self.A_bar, self.B_bar, self.C)}
        if len(kinds) != 1:
            raise ValueError("A_bar, B_bar, C: must be all real or all complex (conjugate-pair form)")

    @property
    def D(self) -> int:
        return self.A_bar.shape[0]

    @property
    def H(self) -> int:
        return self.A_bar.shape[1]

    @property
    def conj_pairs(self) -> bool:
        return self.A_bar.is_complex()

    @property
    def dtype(self) -> torch.dtype:
        return self.A_bar.real.dtype


def discretize_zoh(A: Tensor, B: Tensor, delta: Tensor) -> Tuple[Tensor, Tensor]:
    """Zero-order hold for a diagonal ``A``: ``Ā = exp(ΔA)``, ``B̄ = (ΔA)^{-1}(exp(ΔA) − I) ΔB``.

    A, B: (D, H) real or complex; delta: (D,) positive step per channel.
    Since ``A`` is diagonal, ``B̄_i = (exp(Δ a_i) − 1)/a_i · b_i``; at ``a_i = 0`` its limit ``Δ b_i``.
    Returns ``(A_bar, B_bar)``, both (D, H).
    """
    dims: dict = {}
    A = check_tensor("A", A, shape=("D", "H"), dims=dims, dtypes=SSM_DTYPES)
    B = check_tensor("B", B, shape=("D", "H"), dims=dims, dtypes=SSM_DTYPES)
    delta = check_tensor("delta", delta, shape=("D",), dims=dims, allow_complex=False, dtypes=REAL_DTYPES)
    check_positive("delta", delta)
    dA = delta[:, None] * A  # (D, H)
    A_bar = torch.exp(dA)  # (D, H)
    # (exp(ΔA) - 1) / (ΔA) with the removable singularity at 0 filled by its limit 1.
    small = dA.abs() < 1e-12
    safe = torch.where(small, torch.ones_like(dA), dA)
    phi = torch.where(small, torch.ones_like(dA), torch.expm1(safe) / safe)  # (D, H)
    B_bar = phi * delta[:, None] * B  # (D, H)
    return A_bar, B_bar


def check_powers(a: Tensor, N: int, *, copies: int = 1, max_bytes=None, name: str = "N",
                 size: bool = True) -> None:
    """Before building ``a^k`` for k < N (``a``: ``Ā``, (..., H)): refuse when ``copies`` tensors of that
    size exceed the size limit (``ValueError`` naming ``name``; skipped with ``size=False``), and when
    ``|a| > 1`` makes ``|a|^{N−1}`` overflow the dtype (an unstable SSM over a long sequence:
    ``ValueError`` naming A_bar)."""
    if size:
        check_size(name, a.numel() * N, a.dtype, copies=copies, max_bytes=max_bytes,
                   what=f"the powers Ā^k, shape {tuple(a.shape) + (N,)}"
                        + (f" ({copies} live copies)" if copies > 1 else ""),
                   lower=f"{name} (the length)")
    if N > 1 and a.numel():
        amax = float(a.detach().abs().max())
        log_max = math.log(torch.finfo(a.real.dtype if a.is_complex() else a.dtype).max)
        if amax > 1 and (N - 1) * math.log(amax) >= log_max:
            raise ValueError(
                f"A_bar: unstable, max |Ā| = {amax:.6g} > 1, and |Ā|^{N - 1} ≈ 10^{(N - 1) * math.log10(amax):.4g} "
                f"overflows {str(a.dtype).replace('torch.', '')} at length {N}; keep |Ā| < 1 (Re(A) < 0 before "
                f"discretisation) or shorten the sequence below {int(log_max / math.log(amax)) + 1} steps")


def check_overflow(name: str, out: Tensor, A_bar: Tensor) -> Tensor:
    """``out`` computed from finite inputs is finite; else ``ValueError`` saying it overflowed (and that
    ``|Ā| ≥ 1`` is why, when it is)."""
    if out.numel() and not bool(torch.isfinite(out).all()):
        amax = float(A_bar.detach().abs().max()) if A_bar.numel() else 0.0
        why = (f"max |Ā| = {amax:.6g} >= 1: the SSM is unstable and the result grows as |Ā|^t" if amax >= 1 else
               "the inputs are too large for the dtype")
        raise ValueError(f"{name}: overflowed to inf/NaN from finite inputs; {why}")
    return out


def _powers(a: Tensor, N: int, *, copies: int = 1, max_bytes=None, name: str = "N") -> Tensor:
    """``a^k`` for k = 0..N-1 as the last axis: (..., N). Exact integer powers (negative a is fine).
    Checked first by :func:`check_powers` (size and overflow)."""
    check_powers(a, N, copies=copies, max_bytes=max_bytes, name=name)
    if N == 1:
        return torch.ones_like(a)[..., None]
    return torch.linalg.vander(a, N=N)


def ssm_kernel(ssm: DiagonalSSM, N: int, *, max_bytes=None) -> Tensor:
    """Convolution kernel ``K_k = C Ā^k B̄ = Σ_i c_i b_i a_i^k``, k = 0..N-1, shape (D, N), real.

    For the conjugate-pair form the kernel is ``2·Re(Σ_i c_i b_i a_i^k)``. Materialises the powers
    (D, H, N): refused above the size limit (``max_bytes``, see :func:`theory._validate.check_size`)
    and, for ``|Ā| > 1``, where they would overflow (:func:`check_powers`).
    """
    N = check_int("N", N, lo=1)
    K = torch.einsum("dh,dhn->dn", ssm.C * ssm.B_bar, _powers(ssm.A_bar, N, max_bytes=max_bytes))  # (D, N)
    return check_overflow("kernel", 2 * K.real if ssm.conj_pairs else K, ssm.A_bar)


def _check_input(ssm: DiagonalSSM, x: Tensor, h0: Optional[Tensor]) -> None:
    x = check_tensor("x", x, shape=(None, ssm.D, None), allow_complex=False, dtypes=REAL_DTYPES)
    if x.dtype != ssm.dtype:
        raise ValueError(f"x: dtype {x.dtype} must match the SSM's {ssm.dtype}")
    if h0 is not None:
        h0 = check_tensor("h0", h0, shape=(ssm.D, ssm.H), dtypes=SSM_DTYPES)
        if h0.is_complex() != ssm.conj_pairs:
            raise ValueError("h0: must be complex exactly when the SSM is in conjugate-pair form")


def ssm_recurrence(
    ssm: DiagonalSSM, x: Tensor, h0: Optional[Tensor] = None, return_state: bool = False
):
    """Explicit recurrence ``h_t = Ā h_{t-1} + B̄ x_t``, ``y_t = C h_t`` (the reference).

    x: (B, D, N) real; h0: (D, H) initial state (zeros if None), shared across the batch,
    or (B, D, H). Returns y (B, D, N); with ``return_state`` also the final state (B, D, H).
    An output that overflows (unstable ``|Ā| ≥ 1`` over a long sequence) raises ``ValueError``.
    """
    if h0 is not None and h0.dim() == 3:
        h0 = check_tensor("h0", h0, shape=(x.shape[0], ssm.D, ssm.H))
        _check_input(ssm, x, None)
    else:
        _check_input(ssm, x, h0)
    Bt, D, N = x.shape
    cdtype = ssm.A_bar.dtype
    h = torch.zeros(Bt, D, ssm.H, dtype=cdtype, device=x.device)  # (B, D, H)
    if h0 is not None:
        h = h + h0.to(cdtype)
    ys = []
    for t in range(N):
        h = ssm.A_bar * h + ssm.B_bar * x[:, :, t, None]  # (B, D, H)
        y = (ssm.C * h).sum(-1)  # (B, D)
        ys.append(2 * y.real if ssm.conj_pairs else y)
    y = check_overflow("y", torch.stack(ys, dim=-1) if ys else x.new_zeros(Bt, D, 0), ssm.A_bar)  # (B, D, N)
    return (y, h) if return_state else y


def causal_conv_fft(K: Tensor, x: Tensor) -> Tensor:
    """Causal convolution ``y_t = Σ_{k=0}^{t} K_k x_{t-k}`` via zero-padded FFT.

    K: (D, N_K) real kernel with N_K >= N; x: (B, D, N). Returns (B, D, N).
    """
    K = check_tensor("K", K, shape=(None, None), allow_complex=False, dtypes=REAL_DTYPES)
    x = check_tensor("x", x, shape=(None, K.shape[0], None), allow_complex=False, dtypes=REAL_DTYPES)
    N = x.shape[-1]
    if K.shape[-1] < N:
        raise ValueError(f"K: kernel length {K.shape[-1]} must be >= sequence length {N}")
    n_fft = 2 * N
    Kf = torch.fft.rfft(K[:, :N], n=n_fft)  # (D, F)
    xf = torch.fft.rfft(x, n=n_fft)  # (B, D, F)
    return torch.fft.irfft(Kf * xf, n=n_fft)[..., :N]  # (B, D, N)


def initial_state_response(ssm: DiagonalSSM, h0: Tensor, N: int, *, max_bytes=None) -> Tensor:
    """Free response of the initial state: ``C Ā^t h_0`` for t = 1..N, shape (D, N) (or (B, D, N)).
    Size and overflow checked as :func:`ssm_kernel`."""
    N = check_int("N", N, lo=0)
    pw = _powers(ssm.A_bar, N + 1, max_bytes=max_bytes)[..., 1:]  # (D, H, N): a^1..a^N
    r = torch.einsum("dh,...dh,dhn->...dn", ssm.C, h0.to(ssm.A_bar.dtype), pw)
    return check_overflow("initial_state_response", 2 * r.real if ssm.conj_pairs else r, ssm.A_bar)


def ssm_convolution(ssm: DiagonalSSM, x: Tensor, h0: Optional[Tensor] = None, *, max_bytes=None) -> Tensor:
    """Same map as :func:`ssm_recurrence`, computed as ``K * x`` (FFT) plus the initial-state response.

    x: (B, D, N); h0: (D, H) or (B, D, H) or None. Returns (B, D, N). ``max_bytes``: as :func:`ssm_kernel`.
    """
    _check_input(ssm, x, h0 if h0 is None or h0.dim() == 2 else h0[0])
    N = x.shape[-1]
    y = causal_conv_fft(ssm_kernel(ssm, max(N, 1), max_bytes=max_bytes), x)  # (B, D, N)
    if h0 is not None:
        y = y + initial_state_response(ssm, h0, N, max_bytes=max_bytes)
    return check_overflow("y", y, ssm.A_bar)


def real_realisation(ssm: DiagonalSSM) -> Tuple[Tensor, Tensor, Tensor]:
    """The conjugate-pair SSM as a real SSM with 2H states (2×2 rotation-scaling blocks).

    For a pair (a, ā) with gains (b, c): the real state ``s = (Re h, Im h)`` follows
    ``s_t = [[Re a, −Im a], [Im a, Re a]] s_{t−1} + (Re b, Im b) x_t`` and the output is
    ``2·Re(c h) = (2 Re c, −2 Im c) · s``.
    Returns dense per-channel ``(A, B, C)`` of shapes (D, 2H, 2H), (D, 2H), (D, 2H).
    """
    if not ssm.conj_pairs:
        raise ValueError("ssm: real_realisation needs the complex conjugate-pair form")
    a, b, c = ssm.A_bar, ssm.B_bar, ssm.C
    D, H = a.shape
    A = torch.zeros(D, 2 * H, 2 * H, dtype=ssm.dtype, device=a.device)  # (D, 2H, 2H)
    idx = torch.arange(H, device=a.device)
    A[:, 2 * idx, 2 * idx] = a.real
    A[:, 2 * idx, 2 * idx + 1] = -a.imag
    A[:, 2 * idx + 1, 2 * idx] = a.imag
    A[:, 2 * idx + 1, 2 * idx + 1] = a.real
    B = torch.stack([b.real, b.imag], dim=-1).reshape(D, 2 * H)  # (D, 2H)
    C = torch.stack([2 * c.real, -2 * c.imag], dim=-1).reshape(D, 2 * H)  # (D, 2H)
    return A, B, C


def dense_recurrence(A: Tensor, B: Tensor, C: Tensor, x: Tensor, h0: Optional[Tensor] = None) -> Tensor:
    """Per-channel SSM with dense real ``A``: ``h_t = A h_{t−1} + B x_t``, ``y_t = C h_t``.

    A: (D, S, S); B, C: (D, S); x: (B, D, N); h0: (D, S) or None. Returns (B, D, N).
    """
    dims: dict = {}
    A = check_tensor("A", A, shape=("D", "S", "S"), dims=dims, allow_complex=False, dtypes=REAL_DTYPES)
    B = check_tensor("B", B, shape=("D", "S"), dims=dims, allow_complex=False, dtypes=REAL_DTYPES)
    C = check_tensor("C", C, shape=("D", "S"), dims=dims, allow_complex=False, dtypes=REAL_DTYPES)
    x = check_tensor("x", x, shape=(None, "D", None), dims=dims, allow_complex=False, dtypes=REAL_DTYPES)
    h = x.new_zeros(x.shape[0], A.shape[0], A.shape[1])  # (B, D, S)
    if h0 is not None:
        h = h + h0
    ys = []
    for t in range(x.shape[-1]):
        h = torch.einsum("dij,bdj->bdi", A, h) + B * x[:, :, t, None]  # (B, D, S)
        ys.append((C * h).sum(-1))  # (B, D)
    return torch.stack(ys, dim=-1)  # (B, D, N)
