"""Tubelet patch embedding: frames -> normalized tubelets -> GEMM -> + bias + sin/cos position -> kept tokens, packed.
Fuses: uint8 /255, mean/std, tubelet unfold (pure index math, no copy), GEMM, bias, position add and the gather of
kept tokens in one kernel (Triton). Idea: the Conv3d of VideoMAE's PatchEmbed written as a GEMM over tubelets."""

from __future__ import annotations

import torch

from ._dispatch import use_triton


def patch_embed(frames, weight, bias, pos_table, mean=None, std=None, token_ids=None, *,
                patch_size: int, tubelet_size: int, backend: str = "auto"):
    """frames: uint8 (B, T, H, W, 3) (normalized here with mean/std, (3,) each, in [0, 1] pixel units) or float
    (B, T, 3, H, W) already normalized (mean/std must be None). weight: (D, 3*tubelet_size*patch_size**2), the Conv3d
    weight flattened in (C, t, y, x) order; bias: (D,); pos_table: (N, D) with N = T/ts * H/P * W/P tokens per clip in
    (t, h, w) order; token_ids: int64 (N_kept,) flat ids b*N + n of the kept tokens in output order, or None (all).
    Returns (N_kept, D) in weight's dtype."""
    if use_triton(backend, frames.device):
        raise NotImplementedError("Triton patch_embed lands with the kernels issue")
    return _patch_embed_torch(frames, weight, bias, pos_table, mean, std, token_ids, patch_size, tubelet_size)


def _patch_embed_torch(frames, weight, bias, pos_table, mean, std, token_ids, patch_size, tubelet_size):
    if frames.dtype == torch.uint8:
        x = frames.permute(0, 1, 4, 2, 3).float().div_(255.0)  # (B, T, 3, H, W)
        x = (x - mean.float().view(1, 1, 3, 1, 1)) / std.float().view(1, 1, 3, 1, 1)
    else:
        x = frames
    B, T, C, H, W = x.shape
    ts, P = tubelet_size, patch_size
    n_t, n_h, n_w = T // ts, H // P, W // P
    N = n_t * n_h * n_w
    x = x.reshape(B, n_t, ts, C, n_h, P, n_w, P).permute(0, 1, 4, 6, 3, 2, 5, 7)  # (B, t, h, w, C, ts, P, P)
    x = x.reshape(B * N, C * ts * P * P)
    pos = pos_table.unsqueeze(0).expand(B, N, -1).reshape(B * N, -1)
    if token_ids is not None:  # gather before the GEMM: dropped tokens cost nothing
        x, pos = x[token_ids], pos[token_ids]
    out = torch.addmm(bias.to(x.dtype), x.to(weight.dtype), weight.t()) if x.dtype == weight.dtype else \
        torch.addmm(bias.float(), x.float(), weight.float().t())
    return (out.float() + pos.float()).to(weight.dtype)
