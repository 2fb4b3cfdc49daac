"""Where the SSM parameters of each supported Mamba mixer live, and which methods can act on it.

Two layouts cover every supported class (Galim et al., ICML 2025, Sec. 5 and App. C.2 name the same
parameters):

- ``mamba1`` (S6, one A per channel and state): ``A_log`` (D, H); ``x_proj.weight`` (R + 2H, D) with rows
  ``[W_Δ↓; W_B; W_C]``; Δ from ``dt_proj.weight`` (D, R) and ``dt_proj.bias`` (D,). SDT's channel d is
  row d of A_log, column d of W_B and W_C, row d of dt_proj. Classes: transformers ``MambaMixer``,
  ``FalconMambaMixer``, ``JambaMambaMixer``; mamba-ssm ``Mamba``; ours ``MambaRef``.
- ``mamba2`` (SSD, one A per head): ``A_log`` (nheads,), ``dt_bias`` (nheads,); ``in_proj.weight`` rows
  ``[z (d_inner); x (d_inner); B (G·N); C (G·N); dt (nheads)]``. SDT's channel is a head, its state n of
  group g is the B row and the C row of (g, n). Classes: transformers ``Mamba2Mixer``, ``Zamba2MambaMixer``
  (Zamba2's Mamba layers; its shared attention blocks are not SSMs and are left to peft's LoRA);
  mamba-ssm ``Mamba2``; ours ``Mamba2Ref``.

State-offset and initial-state tuning act inside the scan, so they need a scan this package can reach:
transformers' mixers call module-level scan functions (``mamba_selective_scan``, ``mamba2_chunk_scan``
and the one-token updates), which :mod:`ssm_peft.state` intercepts. mamba-ssm's modules and our
reference blocks do not expose theirs: :func:`MixerSpec.check_method` refuses with the reason.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from torch import nn

SDT, STATE_OFFSET, INITIAL_STATE = "sdt", "state_offset", "initial_state"

# Module-level functions a transformers mixer of each layout calls: (fused, full-sequence scan, one-token update).
HF_SCAN_FUNCTIONS = {
    "mamba1": ("mamba_inner_fn", "mamba_selective_scan", "mamba_selective_state_update"),
    "mamba2": ("mamba2_split_conv1d_scan_combined", "mamba2_chunk_scan", "mamba2_selective_state_update"),
}


@dataclass(frozen=True)
class MixerSpec:
    """A mixer class's layout and what it refuses. ``state_refusal``: why state-offset / initial-state
    tuning cannot act on it (None: they can, through transformers' module-level scan functions)."""

    class_name: str
    layout: str  # "mamba1" | "mamba2"
    source: str  # "transformers" | "mamba_ssm" | "reference"
    state_refusal: Optional[str] = None

    def check_method(self, method: str) -> None:
        """Raise NotImplementedError naming why ``method`` cannot act on this mixer class."""
        if method in (STATE_OFFSET, INITIAL_STATE) and self.state_refusal:
            raise NotImplementedError(f"{method} tuning on {self.class_name}: {self.state_refusal}")


_NO_SCAN_MAMBA_SSM = ("mamba-ssm's module calls its CUDA scan kernels (mamba_inner_fn / selective_scan_fn, "
                      "mamba_chunk_scan_combined) from inside its forward with no initial-state or offset input this "
                      "package can reach; load the checkpoint as a transformers model instead")
_NO_SCAN_REFERENCE = ("our reference block computes its scan inside mamba_forward / mamba2_forward; the synthetic "
                      "experiments add the state terms there (synthetic/mamba/peft.py calls "
                      "ssm_peft.state.mamba1_state_terms)")

MIXERS: Dict[str, MixerSpec] = {s.class_name: s for s in (
    MixerSpec("MambaMixer", "mamba1", "transformers"),
    MixerSpec("FalconMambaMixer", "mamba1", "transformers"),
    MixerSpec("JambaMambaMixer", "mamba1", "transformers"),
    MixerSpec("Mamba2Mixer", "mamba2", "transformers"),
    MixerSpec("Zamba2MambaMixer", "mamba2", "transformers"),
    MixerSpec("Mamba", "mamba1", "mamba_ssm", _NO_SCAN_MAMBA_SSM),
    MixerSpec("Mamba2", "mamba2", "mamba_ssm", _NO_SCAN_MAMBA_SSM),
    MixerSpec("MambaRef", "mamba1", "reference", _NO_SCAN_REFERENCE),
    MixerSpec("Mamba2Ref", "mamba2", "reference", _NO_SCAN_REFERENCE),
)}
"""Mixer class name -> :class:`MixerSpec` (looked up by the class's own name, so no import of the library)."""

# Mixers known to be SSM-like but not supported, with the reason (checked before "no mixer found").
UNSUPPORTED: Dict[str, str] = {
    "FalconH1Mixer": "Falcon-H1's Mamba-2 mixer scales its in_proj/out_proj outputs by multipliers (mup) read in its "
                     "forward; not covered by the tests of this package",
    "NemotronHMamba2Mixer": "not covered by the tests of this package",
    "BambaMixer": "not covered by the tests of this package",
    "GraniteMoeHybridMambaLayer": "not covered by the tests of this package",
}


def _first_attr(module: nn.Module, names: Tuple[str, ...]) -> int:
    for n in names:
        if hasattr(module, n):
            return int(getattr(module, n))
    raise AttributeError(f"{type(module).__name__}: none of the attributes {names}")


@dataclass(frozen=True)
class MixerDims:
    """Sizes of one mixer. mamba1: D channels, H states, R = dt rank. mamba2: D = nheads (its channels),
    H = N states per group, G groups, P = head_dim, d_inner = nheads · P."""

    layout: str
    D: int
    H: int
    R: int = 0
    G: int = 1
    P: int = 1
    d_inner: int = 0

    def bc_rows(self, group: int, state: int) -> Tuple[int, int]:
        """mamba2: the in_proj rows of B[g, n] and C[g, n]. mamba1: the x_proj rows of W_B[n] and W_C[n]."""
        if self.layout == "mamba1":
            return self.R + state, self.R + self.H + state
        base = 2 * self.d_inner
        return base + group * self.H + state, base + self.G * self.H + group * self.H + state


def mixer_dims(module: nn.Module, layout: str) -> MixerDims:
    """Read a mixer's sizes from its parameter shapes (and, for mamba2, its state size and group count)."""
    A_log = module.A_log
    if layout == "mamba1":
        D, H = A_log.shape
        R = module.x_proj.weight.shape[0] - 2 * H
        return MixerDims("mamba1", D=int(D), H=int(H), R=int(R), d_inner=int(D))
    nheads = A_log.numel()
    N = _first_attr(module, ("ssm_state_size", "d_state"))
    G = _first_attr(module, ("n_groups", "ngroups"))
    d_inner = (module.in_proj.weight.shape[0] - 2 * G * N - nheads) // 2
    return MixerDims("mamba2", D=int(nheads), H=int(N), G=int(G), P=int(d_inner // nheads), d_inner=int(d_inner))


def mixer_class(module: nn.Module) -> Optional[type]:
    """The supported (or known unsupported) mixer class of ``module``, looking through the subclass that
    ``torch.nn.utils.parametrize`` creates (``ParametrizedMambaMixer``); None if it is not a mixer."""
    for cls in type(module).__mro__:
        if cls.__name__ in MIXERS or cls.__name__ in UNSUPPORTED:
            return cls
    return None


def find_mixers(model: nn.Module) -> List[Tuple[str, nn.Module, MixerSpec]]:
    """Every supported SSM mixer in ``model``, as (qualified name, module, spec), in module order.

    Raises NotImplementedError for a known but unsupported mixer class, ValueError when none is found.
    """
    found = []
    for name, module in model.named_modules():
        found_cls = mixer_class(module)
        cls = found_cls.__name__ if found_cls is not None else None
        if cls in UNSUPPORTED:
            raise NotImplementedError(f"{cls} at {name!r}: {UNSUPPORTED[cls]}")
        if cls in MIXERS:
            found.append((name, module, MIXERS[cls]))
    if not found:
        raise ValueError(f"{type(model).__name__}: no SSM mixer of a supported class ({sorted(MIXERS)}) found")
    return found


def hf_module(module: nn.Module):
    """The Python module (e.g. transformers.models.mamba.modeling_mamba) whose scan functions a mixer calls."""
    return sys.modules[mixer_class(module).__module__]


@dataclass
class FusedCalls:
    """What :func:`fused_path` saw: ``calls`` of a mixer's fused function, ``kernel`` of them that returned an
    output (the fused kernel ran; transformers' torch fallback returns None and the mixer runs its unfused path)."""

    calls: int = 0
    kernel: int = 0


@contextlib.contextmanager
def fused_path(model: nn.Module, enabled: bool = True):
    """Count (``enabled``) or switch off (``enabled=False``) the fused training path of ``model``'s transformers
    mixers, within the block; yields a :class:`FusedCalls`.

    transformers' mixers call a module-level fused function in training without a cache (Mamba-1
    ``mamba_inner_fn``, Mamba-2 ``mamba2_split_conv1d_scan_combined``) and run their unfused path (conv1d, the
    full-sequence scan, out_proj; on a GPU mamba-ssm's and causal-conv1d's kernels) when it returns None, so
    returning None here is transformers' own switch. Restores the functions on exit.
    """
    record, patched = FusedCalls(), []
    for name, mixer, spec in find_mixers(model):
        if spec.source != "transformers":
            raise NotImplementedError(f"fused_path: {type(mixer).__name__} at {name!r} is not a transformers mixer")
        module, fn_name = hf_module(mixer), HF_SCAN_FUNCTIONS[spec.layout][0]
        if any(m is module and f == fn_name for m, f, _ in patched):
            continue
        original = getattr(module, fn_name)

        def wrapper(*args, _orig=original, **kwargs):
            record.calls += 1
            if not enabled:
                return None
            out = _orig(*args, **kwargs)
            record.kernel += out is not None
            return out
        setattr(module, fn_name, wrapper)
        patched.append((module, fn_name, original))
    try:
        yield record
    finally:
        for module, fn_name, original in reversed(patched):
            setattr(module, fn_name, original)
