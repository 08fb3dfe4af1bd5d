"""Non-causal multi-head attention over packed variable-length sequences (one sequence per clip).
Fuses: QK^T, scale, online softmax and PV in one flash-style kernel over a per-batch tile map, fp32 accumulation.
Idea: FlashAttention-2 (Dao, 2023) varlen API; Triton tutorial 06 (fused attention)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import use_triton


def varlen_attention(q, k, v, cu_seqlens, max_seqlen: int, softmax_scale: float | None = None, *,
                     backend: str = "auto"):
    """q, k, v: (N_total, H, d), last dim contiguous (strided views of one packed qkv are fine);
    cu_seqlens: int32 (B+1,), starts at 0; max_seqlen: longest segment. Returns (N_total, H, d) in q's dtype."""
    if softmax_scale is None:
        softmax_scale = q.shape[-1] ** -0.5
    if use_triton(backend, q.device):
        raise NotImplementedError("Triton varlen_attention lands with the kernels issue")
    return _varlen_attention_torch(q, k, v, cu_seqlens, softmax_scale)


def _varlen_attention_torch(q, k, v, cu_seqlens, softmax_scale):
    bounds = cu_seqlens.tolist()
    lengths = {b - a for a, b in zip(bounds[:-1], bounds[1:])}
    if len(lengths) == 1:  # equal lengths: one batched SDPA call
        n = lengths.pop()
        B = len(bounds) - 1
        qb, kb, vb = (t.reshape(B, n, *t.shape[1:]).transpose(1, 2) for t in (q, k, v))  # (B, H, n, d)
        out = F.scaled_dot_product_attention(qb, kb, vb, scale=softmax_scale)
        return out.transpose(1, 2).reshape(q.shape)
    out = torch.empty_like(q)
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b == a:
            continue
        qs, ks, vs = (t[a:b].transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # (1, H, n, d)
        out[a:b] = F.scaled_dot_product_attention(qs, ks, vs, scale=softmax_scale)[0].transpose(0, 1)
    return out
