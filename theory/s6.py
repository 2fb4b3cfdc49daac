"""S6, Mamba's selective SSM (Galim et al., ICML 2025, Sec. 3.1; Gu & Dao 2024), as an explicit recurrence.

Per time step, input ``x_t ∈ R^D``:
  ``Δ_t = softplus(W_Δ↑ W_Δ↓ x_t + β_Δ)``,  ``B_t = W_B x_t``,  ``C_t = W_C x_t``  (B_t, C_t ∈ R^H),
  ``Ā_t^(d) = exp(Δ_t^(d) A^(d))``,  ``B̄_t^(d) = Δ_t^(d) B_t``,
  ``h_t^(d) = Ā_t^(d) h_{t−1}^(d) + B̄_t^(d) u_t^(d)``,  ``y_t^(d) = C_t · h_t^(d)``.

Parameter layout follows mamba-ssm: ``A = −exp(A_log)`` of shape (D, H); ``x_proj`` weight
``[W_Δ↓; W_B; W_C]`` of shape (R + 2H, D); ``dt_proj`` weight ``W_Δ↑`` (D, R) with bias ``β_Δ`` (D,).
:func:`selective_scan` has the semantics of mamba-ssm's ``selective_scan_ref`` with
``delta_softplus=False``, ``D=None``, ``z=None`` (the softplus is applied by :func:`s6_forward`).

Lemma 1's two-projection variant: ``z_t = W_in,1 x_t`` feeds Δ, B, C and ``u_t = W_in,2 x_t`` is
scanned (:func:`s6_two_projection`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ._validate import check_int, check_same_dtype, check_tensor

Tensor = torch.Tensor


@dataclass(frozen=True)
class S6Params:
    """S6 parameters in mamba-ssm's layout.

    A_log: (D, H), ``A = −exp(A_log)``; x_proj: (R + 2H, D) = [W_Δ↓; W_B; W_C];
    dt_proj_weight: (D, R) = W_Δ↑; dt_proj_bias: (D,) = β_Δ.
    """

    A_log: Tensor  # (D, H)
    x_proj: Tensor  # (R + 2H, D)
    dt_proj_weight: Tensor  # (D, R)
    dt_proj_bias: Tensor  # (D,)

    def __post_init__(self):
        dims: dict = {}
        for name, shape in (("A_log", ("D", "H")), ("dt_proj_weight", ("D", "R")), ("dt_proj_bias", ("D",))):
            object.__setattr__(self, name, check_tensor(name, getattr(self, name), shape=shape, dims=dims,
                                                        allow_complex=False))
        rows = dims["R"] + 2 * dims["H"]
        object.__setattr__(self, "x_proj",
                           check_tensor("x_proj", self.x_proj, shape=(rows, "D"), dims=dims, allow_complex=False))
        check_same_dtype(A_log=self.A_log, x_proj=self.x_proj, dt_proj_weight=self.dt_proj_weight,
                         dt_proj_bias=self.dt_proj_bias)

    @property
    def D(self) -> int:
        return self.A_log.shape[0]

    @property
    def H(self) -> int:
        return self.A_log.shape[1]

    @property
    def R(self) -> int:
        return self.dt_proj_weight.shape[1]

    @property
    def A(self) -> Tensor:
        """``A = −exp(A_log)``, (D, H): negative real diagonals by construction."""
        return -torch.exp(self.A_log)

    @property
    def W_dt_down(self) -> Tensor:
        return self.x_proj[: self.R]  # (R, D)

    @property
    def W_B(self) -> Tensor:
        return self.x_proj[self.R : self.R + self.H]  # (H, D)

    @property
    def W_C(self) -> Tensor:
        return self.x_proj[self.R + self.H :]  # (H, D)

    @staticmethod
    def from_parts(A_log, W_dt_down, W_B, W_C, W_dt_up, beta_dt) -> "S6Params":
        """Build from the paper's named pieces (stacks ``x_proj = [W_Δ↓; W_B; W_C]``)."""
        return S6Params(A_log, torch.cat([W_dt_down, W_B, W_C], dim=0), W_dt_up, beta_dt)


def selective_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Optional[Tensor] = None,
    return_state: bool = False,
):
    """``h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t u_t``, ``y_t = C_t · h_t`` per channel.

    u, delta: (Bt, D, N) (delta already positive); A: (D, H); B, C: (Bt, H, N) shared by channels;
    h0: (Bt, D, H) or (D, H) or None. Returns y (Bt, D, N) [and the final state (Bt, D, H)].
    """
    dims: dict = {}
    u = check_tensor("u", u, shape=("Bt", "D", "N"), dims=dims, allow_complex=False)
    delta = check_tensor("delta", delta, shape=("Bt", "D", "N"), dims=dims, allow_complex=False)
    A = check_tensor("A", A, shape=("D", "H"), dims=dims, allow_complex=False)
    B = check_tensor("B", B, shape=("Bt", "H", "N"), dims=dims, allow_complex=False)
    C = check_tensor("C", C, shape=("Bt", "H", "N"), dims=dims, allow_complex=False)
    Bt, D, N = u.shape
    h = u.new_zeros(Bt, D, A.shape[1])  # (Bt, D, H)
    if h0 is not None:
        h = h + h0
    ys = []
    for t in range(N):
        dA = torch.exp(delta[:, :, t, None] * A)  # (Bt, D, H)
        dBu = delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]  # (Bt, D, H)
        h = dA * h + dBu
        ys.append((h * C[:, None, :, t]).sum(-1))  # (Bt, D)
    y = torch.stack(ys, dim=-1)  # (Bt, D, N)
    return (y, h) if return_state else y


def s6_inputs(params: S6Params, x: Tensor):
    """The input-dependent quantities: ``(Δ, B, C)`` of shapes (Bt, D, N), (Bt, H, N), (Bt, H, N)."""
    x = check_tensor("x", x, shape=(None, params.D, None), allow_complex=False)
    if x.dtype != params.A_log.dtype:
        raise ValueError(f"x: dtype {x.dtype} must match the parameters' {params.A_log.dtype}")
    dt_low = torch.einsum("rd,bdn->brn", params.W_dt_down, x)  # (Bt, R, N)
    delta = F.softplus(torch.einsum("dr,brn->bdn", params.dt_proj_weight, dt_low)
                       + params.dt_proj_bias[None, :, None])  # (Bt, D, N)
    B = torch.einsum("hd,bdn->bhn", params.W_B, x)  # (Bt, H, N)
    C = torch.einsum("hd,bdn->bhn", params.W_C, x)  # (Bt, H, N)
    return delta, B, C


def s6_forward(params: S6Params, x: Tensor, u: Optional[Tensor] = None, h0: Optional[Tensor] = None) -> Tensor:
    """S6 on input x (Bt, D, N): Δ, B, C computed from ``x``; the scanned input is ``u`` (default ``x``)."""
    delta, B, C = s6_inputs(params, x)
    return selective_scan(x if u is None else u, delta, params.A, B, C, h0=h0)  # (Bt, D, N)


def s6_two_projection(params: S6Params, W_in1: Tensor, W_in2: Tensor, x: Tensor) -> Tensor:
    """Lemma 1's S6: ``z = W_in,1 x`` feeds Δ, B, C; ``u = W_in,2 x`` is scanned.

    W_in1, W_in2: (D, D); x: (Bt, D, N). Returns (Bt, D, N).
    """
    D = params.D
    W_in1 = check_tensor("W_in1", W_in1, shape=(D, D), allow_complex=False)
    W_in2 = check_tensor("W_in2", W_in2, shape=(D, D), allow_complex=False)
    z = torch.einsum("ij,bjn->bin", W_in1, x)  # (Bt, D, N)
    u = torch.einsum("ij,bjn->bin", W_in2, x)  # (Bt, D, N)
    return s6_forward(params, z, u=u)


def random_s6(D: int, H: int, R: int, *, generator: Optional[torch.Generator] = None,
              dtype: torch.dtype = torch.float64) -> S6Params:
    """A random S6 with mamba-like scales: ``A_log`` so that ``A ∈ [−H, −1]``-ish, small projections."""
    D = check_int("D", D, lo=1)
    H = check_int("H", H, lo=1)
    R = check_int("R", R, lo=1)
    g = generator
    A_log = torch.log(torch.arange(1, H + 1, dtype=dtype)).repeat(D, 1) + 0.1 * torch.randn(D, H, generator=g, dtype=dtype)
    x_proj = torch.randn(R + 2 * H, D, generator=g, dtype=dtype) / D**0.5
    dt_w = torch.randn(D, R, generator=g, dtype=dtype) / R**0.5
    dt_b = torch.log(torch.expm1(torch.full((D,), 0.05, dtype=dtype)))  # softplus^{-1}(0.05): Δ≈0.05 at x=0
    return S6Params(A_log, x_proj, dt_w, dt_b)
