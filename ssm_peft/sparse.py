"""Weight-level adapters: the tensor a kernel reads is computed from the frozen base and the trainable values.

Both classes are ``torch.nn.utils.parametrize`` parametrizations. Registered on a module's parameter
(``A_log``, ``x_proj.weight``, ``in_proj.weight``, ``dt_proj.bias``, ...), every read of that attribute,
by the module's own ``forward`` or by a fused kernel handed ``self.x_proj.weight`` (mamba's
``mamba_inner_fn``), returns the adapted tensor. Nothing wraps a module's forward, so no path can skip
the adapter.

- :class:`SparseDelta` (SDT): ``W_eff = W`` except at the flat indices ``index``, where
  ``W_eff[index] = W[index] + delta``. Only ``delta`` (n,) is trainable; ``index`` (n,) int64 is a buffer
  saved with the adapter. Frozen entries are copied from ``W``, never recomputed, so they stay
  bit-identical under any optimizer (AdamW's weight decay acts on ``delta`` only, pulling toward ``W``).
  With ``values=W.flatten()[index]`` the trainable tensor holds the entries themselves instead,
  ``W_eff[index] = values`` (``theory.peft.MaskedParameter``'s parameterisation, whose weight decay pulls the
  entries toward 0: the synthetic experiments' convention, kept so their committed results reproduce).
- :class:`LowRankDelta` (the LoRA of SDLoRA, peft's formula ``W + (alpha / r) · B A`` with peft's init:
  A Kaiming-uniform(a = sqrt(5)), B = 0), applied to the weight rather than around ``nn.Linear.forward``,
  because peft refuses LoRA on Mamba's out_proj and a fused kernel reads the weight directly.

Dtypes: the trainable tensors are float32 when the base is float16/bfloat16 (float64 stays float64);
the sum is formed in that dtype and rounded once to the base's dtype. ``merged`` tensors equal the
forward's exactly (the same function), so merging is exact.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

Tensor = torch.Tensor


def delta_dtype(base_dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision bases, the base's own dtype for float32/float64."""
    if not base_dtype.is_floating_point:
        raise ValueError(f"base: a floating dtype is needed, got {base_dtype}")
    return torch.float64 if base_dtype == torch.float64 else torch.float32


class SparseDelta(nn.Module):
    """``W_eff = W`` with ``W_eff.flatten()[index] = W.flatten()[index] + delta`` (see the module docstring).

    shape: the base's shape; index: (n,) distinct flat indices into it; dtype: the base's dtype.
    ``delta`` (n,) starts at zero, so the adapted tensor starts equal to the base. values: (n,) the base's
    entries at ``index``: then the trainable ``values`` (a copy, in their own dtype) replace those entries.
    """

    def __init__(self, shape, index: Tensor, dtype: torch.dtype, device=None, values: Optional[Tensor] = None):
        super().__init__()
        index = torch.as_tensor(index, dtype=torch.long, device=device).flatten()
        numel = math.prod(shape)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= numel):
            raise ValueError(f"index: flat indices must lie in [0, {numel}) for shape {tuple(shape)}")
        if index.unique().numel() != index.numel():
            raise ValueError("index: flat indices must be distinct")
        self.shape = tuple(shape)
        self.register_buffer("index", index)
        self.stores_values = values is not None
        if values is None:
            self.delta = nn.Parameter(torch.zeros(index.numel(), dtype=delta_dtype(dtype), device=device))  # (n,)
        else:
            if values.shape != index.shape:
                raise ValueError(f"values: shape {tuple(values.shape)} must equal index's {tuple(index.shape)}")
            self.values = nn.Parameter(values.detach().clone().to(device))  # (n,)
        self.enabled = True

    def forward(self, base: Tensor) -> Tensor:
        if not self.enabled or self.index.numel() == 0:
            return base
        flat = base.reshape(-1)
        if self.stores_values:
            return flat.scatter(0, self.index, self.values.to(base.dtype)).reshape(base.shape)
        values = (flat[self.index].to(self.delta.dtype) + self.delta).to(base.dtype)  # (n,)
        return flat.scatter(0, self.index, values).reshape(base.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, trainable={self.index.numel()}" + (", values" if self.stores_values else "")


class LowRankDelta(nn.Module):
    """``W_eff = W + (alpha / r) · B A`` for a 2-D base W (out, in): A (r, in), B (out, r), peft's init.

    row_blocks: sizes of consecutive row blocks of W (summing to ``out``), each with its own rank-r LoRA
    (``W_eff[block j] = W[block j] + (alpha / r) · B[block j] A[j]``, A then (k, r, in)): the official code's
    x_proj, split into three linears W_Δ↓ (R rows), W_B, W_C (H rows each), each given LoRA; trainable
    ``r · (k · in + out)`` instead of ``r · (in + out)``.
    """

    def __init__(self, shape, rank: int, alpha: Optional[float], dtype: torch.dtype, device=None,
                 generator: Optional[torch.Generator] = None, row_blocks: Optional[Sequence[int]] = None):
        super().__init__()
        if len(shape) != 2:
            raise ValueError(f"LoRA needs a 2-D weight, got shape {tuple(shape)}")
        out_f, in_f = shape
        blocks = None if row_blocks is None else tuple(int(b) for b in row_blocks)
        if blocks is not None and (sum(blocks) != out_f or min(blocks, default=0) < 1):
            raise ValueError(f"row_blocks: positive sizes summing to the weight's {out_f} rows, got {row_blocks!r}")
        max_rank = self.max_rank(shape, blocks)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= max_rank:
            raise ValueError(f"rank: must be an integer in [1, {max_rank}] for a {tuple(shape)} weight"
                             + ("" if blocks is None else f" in row blocks {blocks}") + f", got {rank!r}")
        self.rank, self.scaling = rank, (float(alpha) if alpha is not None else float(rank)) / rank
        self.row_blocks = blocks
        wdt = delta_dtype(dtype)
        a_shape = (rank, in_f) if blocks is None else (len(blocks), rank, in_f)
        self.lora_A = nn.Parameter(torch.empty(a_shape, dtype=wdt, device=device))  # (r, in) or (k, r, in)
        self.lora_B = nn.Parameter(torch.zeros(out_f, rank, dtype=wdt, device=device))  # (out, r)
        # peft's LoRA init (nn.Linear's default, Kaiming-uniform with a = sqrt(5)): bound = 1 / sqrt(in)
        bound = 1.0 / math.sqrt(in_f)
        with torch.no_grad():
            a = torch.rand(a_shape, generator=generator, dtype=wdt) * 2 * bound - bound
            self.lora_A.copy_(a.to(self.lora_A.device))
        self.enabled = True

    @staticmethod
    def max_rank(shape, row_blocks: Optional[Sequence[int]] = None) -> int:
        """The largest rank a (out, in) weight takes: min(out, in), or per row block min(rows_j, in)."""
        out_f, in_f = shape
        return min(in_f, *(row_blocks or (out_f,)))

    def delta_weight(self) -> Tensor:
        """``(alpha / r) · B A`` (out, in) in the trainable dtype (per row block when ``row_blocks``)."""
        if self.row_blocks is None:
            return self.scaling * (self.lora_B @ self.lora_A)
        parts = torch.split(self.lora_B, self.row_blocks, dim=0)  # (rows_j, r) each
        return self.scaling * torch.cat([b @ a for b, a in zip(parts, self.lora_A)], dim=0)

    def forward(self, base: Tensor) -> Tensor:
        if not self.enabled:
            return base
        return (base.to(self.lora_A.dtype) + self.delta_weight()).to(base.dtype)

    def extra_repr(self) -> str:
        blocks = "" if self.row_blocks is None else f", row_blocks={self.row_blocks}"
        return f"rank={self.rank}, scaling={self.scaling:g}{blocks}"
