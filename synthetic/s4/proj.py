"""The deep-S4 layer's projection ``z = W s`` (Galim et al., ICML 2025, eq. 4: the linear layer after the S4
module), with an optional split-K weight gradient for the GPU.

``dW = dz sᵀ`` is a GEMM with a 64×64 output per run and K = N·B = 800,000 at the paper's size: 16 output tiles
for 132 SMs (notes/s4_speed.md, the H200 profile). :class:`SplitKProjection` computes it as k GEMMs over
chunks of the N·B axis in one batched matmul, then a sum over the chunks: ``dW = Σ_c dz_c s_cᵀ``. The forward
and ``ds = Wᵀ dz`` are unchanged. :func:`projection` is the plain twin (autograd's bmm); a test holds the two
together in float64.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def projection(W: Tensor, s: Tensor, k: int = 1) -> Tensor:
    """``W s``: W (R, D, D), s (R, D, M) -> (R, D, M); autograd's backward (k ignored)."""
    return torch.bmm(W, s)


class SplitKProjection(torch.autograd.Function):
    """``W s`` with ``dW`` as a batched GEMM over k chunks of the M = N·B axis, then summed (the last
    ``M mod k`` columns in one more GEMM). Same signature as :func:`projection` (via ``apply``)."""

    @staticmethod
    def forward(ctx, W, s, k):
        ctx.save_for_backward(W, s)
        ctx.k = int(k)
        return torch.bmm(W, s)  # (R, D, M)

    @staticmethod
    def backward(ctx, dz):
        W, s = ctx.saved_tensors
        dW = ds = None
        if ctx.needs_input_grad[0]:
            R, D, M = s.shape
            k = max(1, min(ctx.k, M))
            m = M // k
            a = dz[..., : k * m].reshape(R, dz.shape[1], k, m).transpose(1, 2)  # (R, k, D, m)
            b = s[..., : k * m].reshape(R, D, k, m).transpose(1, 2)  # (R, k, D, m)
            dW = torch.matmul(a, b.transpose(-1, -2)).sum(1)  # (R, D, D)
            if k * m < M:
                dW = dW + torch.bmm(dz[..., k * m:], s[..., k * m:].transpose(1, 2))
        if ctx.needs_input_grad[1]:
            ds = torch.bmm(W.transpose(1, 2), dz)  # (R, D, M)
        return dW, ds, None


def split_k_projection(W: Tensor, s: Tensor, k: int) -> Tensor:
    return SplitKProjection.apply(W, s, k)
