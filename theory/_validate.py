"""Input checks shared by every construction.

Each check raises ``ValueError`` whose message names the argument and the rule it broke,
e.g. ``"A_bar: expected shape (D, H) = (4, 3), got (4, 2)"``.

Inputs are numpy-friendly: :func:`check_tensor` accepts array-likes (numpy arrays, nested lists)
and returns a tensor (``torch.as_tensor``; a numpy float/complex array keeps its dtype, anything
else becomes float64 / complex128), and :func:`check_int` accepts any integer ``operator.index``
accepts (numpy integers) and returns a Python int. Callers use the returned value.

Dtypes: a function that supports only some dtypes passes them as ``dtypes`` (e.g. :data:`SSM_DTYPES`
for the SSM paths, whose ``torch.linalg.vander`` / FFT have no float16 kernels), so anything else is
refused up front with the supported list instead of failing inside torch.

Sizes: :func:`check_size` refuses to materialise a tensor whose estimated size exceeds a limit
(``max_bytes`` argument, else the environment variable ``THEORY_MAX_BYTES``, else
:data:`DEFAULT_MAX_BYTES`), naming the argument that sets the size.
"""

from __future__ import annotations

import operator
import os
from typing import Optional, Sequence, Union

import numpy as np
import torch

Dim = Union[int, str, None]  # an int fixes a size, a str names a size to keep consistent, None is free

REAL_DTYPES = (torch.float32, torch.float64)
COMPLEX_DTYPES = (torch.complex64, torch.complex128)
SSM_DTYPES = REAL_DTYPES + COMPLEX_DTYPES  # what theory.ssm / theory.proposition1 compute in

MAX_BYTES_ENV = "THEORY_MAX_BYTES"
DEFAULT_MAX_BYTES = 4 * 2**30  # 4 GiB: far above any instance the checks draw, far below a 19-96 GB mistake


def check_tensor(
    name: str,
    x,
    *,
    shape: Optional[Sequence[Dim]] = None,
    dims: Optional[dict] = None,
    floating: bool = True,
    allow_complex: bool = True,
    finite: bool = True,
    dtypes: Optional[Sequence[torch.dtype]] = None,
) -> torch.Tensor:
    """Check that ``x`` is a tensor of the given shape, a floating (or complex) dtype, finite.

    ``shape`` entries: an int fixes the size, a str names a symbol whose size is recorded in
    ``dims`` (a dict shared across calls so that e.g. ``"D"`` must agree between arguments),
    ``None`` leaves it free. Returns ``x`` itself if it is a tensor, else ``x`` converted by
    :func:`as_tensor`. ``dtypes``: the dtypes accepted (None: any floating, or complex if allowed).
    """
    x = as_tensor(name, x, floating=floating)
    if floating:
        if x.is_complex():
            if not allow_complex:
                raise ValueError(f"{name}: expected a real floating dtype, got {x.dtype}")
        elif not x.is_floating_point():
            raise ValueError(f"{name}: expected a floating dtype (float32/float64), got {x.dtype}")
    if dtypes is not None and x.dtype not in dtypes:
        raise ValueError(f"{name}: dtype {_dtype_name(x.dtype)} is not supported here "
                         f"(supported: {', '.join(_dtype_name(d) for d in dtypes)})")
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
    if finite:
        check_finite(name, x)
    return x


def check_finite(name: str, x: torch.Tensor) -> torch.Tensor:
    """Every entry of ``x`` is finite (no NaN, no inf)."""
    if x.numel() and (x.is_floating_point() or x.is_complex()):
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name}: must be finite (found NaN or inf)")
    return x


def _dtype_name(d: torch.dtype) -> str:
    return str(d).replace("torch.", "")


def max_bytes_limit(max_bytes: Optional[float] = None) -> int:
    """The size limit in bytes: ``max_bytes`` if given, else ``$THEORY_MAX_BYTES``, else 4 GiB."""
    if max_bytes is None:
        env = os.environ.get(MAX_BYTES_ENV)
        if env is None:
            return DEFAULT_MAX_BYTES
        try:
            max_bytes = float(env)
        except ValueError:
            raise ValueError(f"{MAX_BYTES_ENV}: expected a number of bytes, got {env!r}") from None
        name = MAX_BYTES_ENV
    else:
        name = "max_bytes"
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, float)) or not (max_bytes > 0) \
            or max_bytes == float("inf"):
        raise ValueError(f"{name}: must be a positive finite number of bytes, got {max_bytes!r}")
    return int(max_bytes)


def _fmt_bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def check_size(name: str, numel: int, dtype: torch.dtype, *, what: str, copies: int = 1,
               max_bytes: Optional[float] = None, lower: Optional[str] = None) -> int:
    """Refuse to allocate ``copies`` tensors of ``numel`` entries of ``dtype`` when their bytes exceed the
    limit (:func:`max_bytes_limit`). ``name``: the argument that sets the size; ``what``: the tensor, e.g.
    ``"the powers Ā^k, (D, H, N) = (64, 200, 10**7)"``; ``lower``: what to lower (default ``name``).
    Returns the estimated bytes."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    nbytes = int(numel) * itemsize * int(copies)
    limit = max_bytes_limit(max_bytes)
    if nbytes > limit:
        raise ValueError(f"{name}: {what} would allocate about {_fmt_bytes(nbytes)} ({_dtype_name(dtype)}), above "
                         f"the limit of {_fmt_bytes(limit)}; lower {lower or name}, or raise the limit with "
                         f"max_bytes=... or the environment variable {MAX_BYTES_ENV}")
    return nbytes


def as_tensor(name: str, x, *, floating: bool = True, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``x`` as a tensor: a tensor is returned as is (or cast to ``dtype`` if given); an array-like goes
    through ``torch.as_tensor`` (no copy for a numpy array of the final dtype). Without ``dtype``, a
    numpy floating or complex array keeps its dtype, and anything else (lists, integer arrays, Python
    numbers) becomes float64, or complex128 if complex, when ``floating``."""
    if isinstance(x, torch.Tensor):
        return x if dtype is None else x.to(dtype)
    try:
        arr = np.asarray(x)
    except Exception:  # e.g. ragged nested lists
        arr = None
    if arr is None or arr.dtype.kind not in "biufc":
        raise ValueError(f"{name}: expected a torch.Tensor or an array-like of numbers, got {type(x).__name__}")
    if dtype is None and floating:
        keep = isinstance(x, (np.ndarray, np.generic)) and arr.dtype.kind in "fc"
        if not keep:
            dtype = torch.complex128 if arr.dtype.kind == "c" else torch.float64
    return torch.as_tensor(arr, dtype=dtype)


def check_same_dtype(**tensors: torch.Tensor) -> None:
    """All given tensors share a dtype (real/complex pairs of one precision are allowed)."""
    tensors = {n: as_tensor(n, t) for n, t in tensors.items() if t is not None}
    real = {n: (t.real.dtype if t.is_complex() else t.dtype) for n, t in tensors.items()}
    if len(set(real.values())) > 1:
        desc = ", ".join(f"{n}={d}" for n, d in real.items())
        raise ValueError(f"dtypes must agree: {desc}")


def check_int(name: str, v, *, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    """``v`` is an integer (anything ``operator.index`` accepts: int, numpy integers; not bool) with
    ``lo <= v <= hi`` (bounds optional). Returns it as a Python int."""
    if isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{name}: expected an int, got {type(v).__name__} {v!r}")
    try:
        v = operator.index(v)
    except TypeError:
        raise ValueError(f"{name}: expected an int, got {type(v).__name__} {v!r}") from None
    if lo is not None and v < lo:
        raise ValueError(f"{name}: must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ValueError(f"{name}: must be <= {hi}, got {v}")
    return v


def check_positive(name: str, x: torch.Tensor) -> torch.Tensor:
    """Every entry of ``x`` is > 0."""
    x = as_tensor(name, x)
    if x.numel() and not bool((x > 0).all()):
        raise ValueError(f"{name}: every entry must be > 0 (min {x.min().item():.3g})")
    return x


def check_choice(name: str, v, choices) -> str:
    """``v`` is one of ``choices``."""
    if v not in choices:
        raise ValueError(f"{name}: must be one of {sorted(choices)}, got {v!r}")
    return v
