"""How a Mamba block is computed (the backends of :mod:`synthetic.mamba.peft` and the Mamba experiments): the
reference scan in PyTorch (:mod:`synthetic.mamba.ref`, any device) or mamba-ssm's CUDA kernels, with its fused
``mamba_inner_fn`` where causal-conv1d is installed."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
from torch import nn

from synthetic.mamba.ref import MambaRef, selective_scan_reference


@dataclass(frozen=True)
class Backend:
    """How a Mamba block is computed: a ``selective_scan_fn``-compatible scan, an optional fused
    ``mamba_inner_fn``, and the block class used for frozen/target models."""

    name: str
    scan_fn: Callable
    inner_fn: Optional[Callable]
    block_cls: type
    version: str

    def make_block(self, d_model: int, d_state: int, expand: int, device) -> nn.Module:
        return self.block_cls(d_model, d_state=d_state, expand=expand, device=device)


def _reference_backend(fused: bool = False) -> Backend:
    return Backend("reference", selective_scan_reference, None, MambaRef, "n/a")


def _mamba_ssm_backend(fused: bool = True) -> Backend:
    """mamba-ssm's CUDA selective scan (imported lazily: ``import mamba_ssm`` fails without CUDA).

    The fused ``mamba_inner_fn`` needs causal-conv1d; without it (or with ``fused=False``) the
    block runs mamba-ssm's unfused path: ``nn.Conv1d`` + ``selective_scan_fn`` (CUDA kernel).
    """
    if not torch.cuda.is_available():
        raise RuntimeError("backend mamba_ssm: needs CUDA")
    import mamba_ssm
    from mamba_ssm import Mamba
    from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn

    has_conv = importlib.util.find_spec("causal_conv1d") is not None
    return Backend("mamba_ssm", selective_scan_fn, mamba_inner_fn if (fused and has_conv) else None, Mamba,
                   mamba_ssm.__version__)


BACKENDS: Dict[str, Callable[..., Backend]] = {"reference": _reference_backend, "mamba_ssm": _mamba_ssm_backend}


def mamba_ssm_available() -> bool:
    """CUDA present and mamba-ssm installed (checked without importing it)."""
    return torch.cuda.is_available() and importlib.util.find_spec("mamba_ssm") is not None


def get_backend(name: str = "auto", fused: bool = True) -> Backend:
    if name == "auto":
        name = "mamba_ssm" if mamba_ssm_available() else "reference"
    if name not in BACKENDS:
        raise ValueError(f"backend: one of {sorted(BACKENDS)} or 'auto', got {name!r}")
    return BACKENDS[name](fused=fused)
