"""Deep S4 / deep S6 stacks (Galim et al., ICML 2025, eq. (4) and Sec. 5).

One layer, input x (B, D, N), SSM mechanism ``S`` (S4 or S6), projection ``W`` (D, D), bias ``β``,
residual coefficient ``u`` (D,), activation ``σ`` (identity or ReLU):

- ``skip="outside"`` (paper eq. 4):  ``y = σ(W S(x) + β + u ⊙ x)``
- ``skip="inside"``  (official code): ``y = σ(W (S(x) + u ⊙ x) + β)``

The two differ in what a low-rank update of ``W`` can do; every result says which one it uses.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Tuple, Union

import torch

from ._validate import check_choice, check_int, check_tensor
from .s6 import S6Params, random_s6, s6_forward
from .ssm import DiagonalSSM, ssm_convolution, ssm_recurrence

Tensor = torch.Tensor
SKIPS = ("outside", "inside")
ACTIVATIONS = ("identity", "relu")


@dataclass(frozen=True)
class DeepLayer:
    """One deep-SSM layer: mechanism (``DiagonalSSM`` for S4 or ``S6Params`` for S6), W (D, D), beta (D,), u (D,)."""

    ssm: Union[DiagonalSSM, S6Params]
    W: Tensor  # (D, D)
    beta: Tensor  # (D,)
    u: Tensor  # (D,)

    def __post_init__(self):
        D = self.ssm.D
        object.__setattr__(self, "W", check_tensor("W", self.W, shape=(D, D), allow_complex=False))
        object.__setattr__(self, "beta", check_tensor("beta", self.beta, shape=(D,), allow_complex=False))
        object.__setattr__(self, "u", check_tensor("u", self.u, shape=(D,), allow_complex=False))


@dataclass(frozen=True)
class DeepSSM:
    """A stack of ``L`` layers with one activation and one skip placement."""

    layers: Tuple[DeepLayer, ...]
    activation: str = "identity"
    skip: str = "outside"

    def __post_init__(self):
        if len(self.layers) == 0:
            raise ValueError("layers: need at least one layer")
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("skip", self.skip, SKIPS)
        D = {layer.ssm.D for layer in self.layers}
        if len(D) != 1:
            raise ValueError(f"layers: every layer must have the same channel count D, got {sorted(D)}")
        kinds = {type(layer.ssm) for layer in self.layers}
        if len(kinds) != 1:
            raise ValueError("layers: mixing S4 and S6 mechanisms in one stack is not supported")

    @property
    def L(self) -> int:
        return len(self.layers)

    @property
    def D(self) -> int:
        return self.layers[0].ssm.D

    @property
    def kind(self) -> str:
        return "s6" if isinstance(self.layers[0].ssm, S6Params) else "s4"

    def with_layers(self, layers) -> "DeepSSM":
        return replace(self, layers=tuple(layers))


def mechanism(ssm, x: Tensor, reference: bool = False) -> Tensor:
    """Apply one SSM mechanism to x (B, D, N): S4 by FFT convolution (or recurrence), S6 by its scan."""
    if isinstance(ssm, S6Params):
        return s6_forward(ssm, x)
    return ssm_recurrence(ssm, x) if reference else ssm_convolution(ssm, x)


def layer_forward(layer: DeepLayer, x: Tensor, activation: str, skip: str, reference: bool = False) -> Tensor:
    """One layer of :class:`DeepSSM` on x (B, D, N) -> (B, D, N)."""
    s = mechanism(layer.ssm, x, reference)  # (B, D, N)
    res = layer.u[None, :, None] * x  # (B, D, N)
    if skip == "outside":
        pre = torch.einsum("ij,bjn->bin", layer.W, s) + layer.beta[None, :, None] + res
    else:
        pre = torch.einsum("ij,bjn->bin", layer.W, s + res) + layer.beta[None, :, None]
    return torch.relu(pre) if activation == "relu" else pre


def deep_forward(model: DeepSSM, x: Tensor, reference: bool = False) -> Tensor:
    """The whole stack on x (B, D, N) -> (B, D, N)."""
    x = check_tensor("x", x, shape=(None, model.D, None), allow_complex=False)
    for layer in model.layers:
        x = layer_forward(layer, x, model.activation, model.skip, reference)
    return x


def random_s4_ssm(D: int, H: int, *, generator: Optional[torch.Generator] = None,
                  dtype: torch.dtype = torch.float64, conj_pairs: bool = False) -> DiagonalSSM:
    """Random stable diagonal SSM: real ``a`` in (−0.95, 0.95), or complex pairs with |a| < 0.95."""
    D = check_int("D", D, lo=1)
    H = check_int("H", H, lo=1)
    g = generator
    if conj_pairs:
        r = 0.3 + 0.65 * torch.rand(D, H, generator=g, dtype=dtype)
        th = torch.pi * torch.rand(D, H, generator=g, dtype=dtype)
        a = torch.polar(r, th)
        b = torch.complex(torch.randn(D, H, generator=g, dtype=dtype), torch.randn(D, H, generator=g, dtype=dtype))
        c = torch.complex(torch.randn(D, H, generator=g, dtype=dtype), torch.randn(D, H, generator=g, dtype=dtype))
        return DiagonalSSM(a, b / H**0.5, c)
    a = 1.9 * torch.rand(D, H, generator=g, dtype=dtype) - 0.95
    b = torch.randn(D, H, generator=g, dtype=dtype)
    c = torch.randn(D, H, generator=g, dtype=dtype) / H**0.5
    return DiagonalSSM(a, b, c)


def random_deep(L: int, D: int, H: int, *, kind: str = "s4", R: int = 2, activation: str = "identity",
                skip: str = "outside", residual: bool = True, bias: bool = True,
                generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float64) -> DeepSSM:
    """A random deep S4/S6 model. ``residual=False`` sets ``u = 0``; ``bias=False`` sets ``β = 0``."""
    L = check_int("L", L, lo=1)
    check_choice("kind", kind, ("s4", "s6"))
    g = generator
    layers = []
    for _ in range(L):
        ssm = random_s4_ssm(D, H, generator=g, dtype=dtype) if kind == "s4" else random_s6(D, H, R, generator=g, dtype=dtype)
        W = torch.randn(D, D, generator=g, dtype=dtype) / D**0.5
        beta = torch.randn(D, generator=g, dtype=dtype) if bias else torch.zeros(D, dtype=dtype)
        u = torch.randn(D, generator=g, dtype=dtype) if residual else torch.zeros(D, dtype=dtype)
        layers.append(DeepLayer(ssm, W, beta, u))
    return DeepSSM(tuple(layers), activation=activation, skip=skip)
