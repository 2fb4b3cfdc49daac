"""Input checks shared by every construction.

Each check raises ``ValueError`` whose message names the argument and the rule it broke,
e.g. ``"A_bar: expected shape (D, H) = (4, 3), got (4, 2)"``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

Dim = Union[int, str, None]  # an int fixes a size, a str names a size to keep consistent, None is free


def check_tensor(
    name: str,
    x,
    *,
    shape: Optional[Sequence[Dim]] = None,
    dims: Optional[dict] = None,
    floating: bool = True,
    allow_complex: bool = True,
    finite: bool = True,
) -> torch.Tensor:
    """Check that ``x`` is a tensor of the given shape, a floating (or complex) dtype, finite.

    ``shape`` entries: an int fixes the size, a str names a symbol whose size is recorded in
    ``dims`` (a dict shared across calls so that e.g. ``"D"`` must agree between arguments),
    ``None`` leaves it free. Returns ``x`` unchanged.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if floating:
        if x.is_complex():
            if not allow_complex:
                raise ValueError(f"{name}: expected a real floating dtype, got {x.dtype}")
        elif not x.is_floating_point():
            raise ValueError(f"{name}: expected a floating dtype (float32/float64), got {x.dtype}")
    if shape is not None:
        if x.dim() != len(shape):
            names = ", ".join(str(s) for s in shape)
            raise ValueError(f"{name}: expected {len(shape)} dimensions ({names}), got shape {tuple(x.shape)}")
        for axis, (want, got) in enumerate(zip(shape, x.shape)):
            if want is None:
                continue
            if isinstance(want, str):
                if dims is None:
                    continue
                if want in dims and dims[want] != got:
                    raise ValueError(
                        f"{name}: dimension {axis} is {want} = {dims[want]} elsewhere, got {got} "
                        f"(shape {tuple(x.shape)})"
                    )
                dims.setdefault(want, got)
            elif want != got:
                raise ValueError(f"{name}: dimension {axis} must be {want}, got shape {tuple(x.shape)}")
    if finite and x.numel() and (x.is_floating_point() or x.is_complex()):
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name}: must be finite (found NaN or inf)")
    return x


def check_same_dtype(**tensors: torch.Tensor) -> None:
    """All given tensors share a dtype (real/complex pairs of one precision are allowed)."""
    real = {n: (t.real.dtype if t.is_complex() else t.dtype) for n, t in tensors.items() if t is not None}
    if len(set(real.values())) > 1:
        desc = ", ".join(f"{n}={d}" for n, d in real.items())
        raise ValueError(f"dtypes must agree: {desc}")


def check_int(name: str, v, *, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    """``v`` is an int with ``lo <= v <= hi`` (bounds optional)."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{name}: expected an int, got {type(v).__name__} {v!r}")
    if lo is not None and v < lo:
        raise ValueError(f"{name}: must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ValueError(f"{name}: must be <= {hi}, got {v}")
    return v


def check_positive(name: str, x: torch.Tensor) -> torch.Tensor:
    """Every entry of ``x`` is > 0."""
    if x.numel() and not bool((x > 0).all()):
        raise ValueError(f"{name}: every entry must be > 0 (min {x.min().item():.3g})")
    return x


def check_choice(name: str, v, choices) -> str:
    """``v`` is one of ``choices``."""
    if v not in choices:
        raise ValueError(f"{name}: must be one of {sorted(choices)}, got {v!r}")
    return v
