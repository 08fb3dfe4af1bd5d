"""Segment mean over each clip's kept tokens followed by LayerNorm: (N_total, D) + cu_seqlens -> (B, D).
Fuses: the segment reduction and the LayerNorm in one program per clip (Triton), fp32 accumulation.
Idea: varlen segment reductions as in flash-attention's cu_seqlens convention; LayerNorm as in Triton tutorial 05."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import use_triton


def mean_pool_layernorm(tokens, cu_seqlens, weight, bias, eps: float, *, backend: str = "auto"):
    """tokens: (N_total, D); cu_seqlens: int32 (B+1,); weight, bias: (D,) or both None (plain mean). -> (B, D)."""
    if use_triton(backend, tokens.device):
        raise NotImplementedError("Triton mean_pool_layernorm lands with the kernels issue")
    return _mean_pool_layernorm_torch(tokens, cu_seqlens, weight, bias, eps)


def _mean_pool_layernorm_torch(tokens, cu_seqlens, weight, bias, eps):
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()  # (B,)
    segment = torch.repeat_interleave(torch.arange(lengths.numel(), device=tokens.device), lengths)  # (N_total,)
    sums = torch.zeros(lengths.numel(), tokens.shape[-1], device=tokens.device, dtype=torch.float32)
    sums.index_add_(0, segment, tokens.float())
    mean = sums / lengths.clamp(min=1).unsqueeze(1).float()
    if weight is None:
        return mean.to(tokens.dtype)
    return F.layer_norm(mean, (mean.shape[-1],), weight.float(), bias.float(), eps).to(tokens.dtype)
