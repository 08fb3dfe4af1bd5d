"""Segment mean over each clip's kept tokens followed by LayerNorm: (N_total, D) + cu_seqlens -> (B, D).
Fuses: fp32 segment sums split over row ranges (many programs stream the tokens once), then mean + LayerNorm per clip.
Idea: flash-attention's cu_seqlens convention; split-K style partial sums; LayerNorm as in Triton tutorial 05."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._dispatch import (
    check_last_dim_contiguous,
    check_tensor,
    check_vector,
    register_triton_op,
    use_triton,
    wrap_triton,
)
from ._validate import check_cu_seqlens

# The finalizing program holds a whole fp32 row; the Triton path refuses wider rows.
MAX_D = 16384
# One program per clip would keep only B SMs busy (B = 32 clips on a 132-SM H100 reads at a fraction of HBM speed),
# so each segment is split into row ranges summed by separate programs into an fp32 (B, splits, D) workspace, and a
# second, tiny launch adds the partial sums and applies the LayerNorm. About this many programs in the first launch
# (a constant: no device query on the hot path), each with at least _MIN_ROWS_PER_SPLIT rows on average.
_TARGET_PROGRAMS = 1024
_MIN_ROWS_PER_SPLIT = 32
_SUM_BLOCK_D = 256  # columns per partial-sum program: 512 contiguous bytes of a bf16 row


@triton.jit
def _segment_sum_kernel(
    X,  # (N_total, D) tokens, last dim contiguous, row stride stride_x
    CU,  # (B+1,) int32 segment offsets
    Partial,  # (B, SPLITS, D) fp32 partial sums, contiguous
    N_total, D, stride_x, SPLITS,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    split = tl.program_id(0)
    clip = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    # Clamp to [0, N_total] so offsets that were not value-checked (CUDA, no sync) can never read out of bounds.
    start = tl.minimum(tl.maximum(tl.load(CU + clip).to(tl.int64), 0), N_total)
    end = tl.minimum(tl.maximum(tl.load(CU + clip + 1).to(tl.int64), start), N_total)
    chunk = tl.cdiv(end - start, SPLITS)
    lo = start + split * chunk  # past `end` for the trailing splits of a short segment: an empty range, zeros
    hi = tl.minimum(end, lo + chunk)
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for row0 in range(lo, hi, BLOCK_T):
        rows = row0 + tl.arange(0, BLOCK_T)
        mask = (rows < hi)[:, None] & col_ok[None, :]
        acc += tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(Partial + (clip * SPLITS + split) * D + cols, tl.sum(acc, axis=0), mask=col_ok)


@triton.jit
def _mean_layernorm_kernel(
    Partial,  # (B, SPLITS, D) fp32 partial sums, contiguous
    CU,  # (B+1,) int32 segment offsets
    W,  # (D,) LayerNorm weight (unused when HAS_NORM is False)
    Bias,  # (D,) LayerNorm bias (unused when HAS_NORM is False)
    Y,  # (B, D) output, contiguous, tokens' dtype
    N_total, D, SPLITS, eps,
    HAS_NORM: tl.constexpr, BLOCK_D: tl.constexpr,
):
    clip = tl.program_id(0).to(tl.int64)
    start = tl.minimum(tl.maximum(tl.load(CU + clip).to(tl.int64), 0), N_total)
    end = tl.minimum(tl.maximum(tl.load(CU + clip + 1).to(tl.int64), start), N_total)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    total = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for split in range(SPLITS):
        total += tl.load(Partial + (clip * SPLITS + split) * D + cols, mask=col_ok, other=0.0)
    # An empty segment gives 0/0 = NaN, as torch's mean of nothing: visible, never garbage.
    mean = total / (end - start).to(tl.float32)  # (BLOCK_D,)
    if HAS_NORM:
        mu = tl.sum(tl.where(col_ok, mean, 0.0), axis=0) / D
        centered = tl.where(col_ok, mean - mu, 0.0)
        var = tl.sum(centered * centered, axis=0) / D
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
        b = tl.load(Bias + cols, mask=col_ok, other=0.0).to(tl.float32)
        mean = centered * tl.math.rsqrt(var + eps) * w + b
    tl.store(Y + clip * D + cols, mean.to(Y.dtype.element_ty), mask=col_ok)


def _num_splits(N_total: int, B: int, D: int) -> int:
    """Row ranges per segment, from shapes only: enough programs to fill the GPU, enough rows for each."""
    d_blocks = triton.cdiv(D, _SUM_BLOCK_D)
    want = max(1, _TARGET_PROGRAMS // max(1, B * d_blocks))
    return max(1, min(want, N_total // max(1, B) // _MIN_ROWS_PER_SPLIT, 64))


def _mean_pool_layernorm_triton(tokens, cu_seqlens, weight, bias, eps, out=None, splits=None):
    """Launch on checked inputs. Shapes only, no host read of values: traceable by torch.compile, capturable in a
    CUDA graph. `out` (B, D) contiguous in tokens' dtype and `splits` (row ranges per segment) are for tests."""
    N_total, D = tokens.shape
    B = cu_seqlens.shape[0] - 1
    if out is None:
        out = torch.empty((B, D), device=tokens.device, dtype=tokens.dtype)
    splits = splits or _num_splits(N_total, B, D)
    partial = torch.empty((B, splits, D), device=tokens.device, dtype=torch.float32)
    block_d = min(triton.next_power_of_2(D), _SUM_BLOCK_D)
    wrap_triton(_segment_sum_kernel)[(splits, B, triton.cdiv(D, block_d))](
        tokens, cu_seqlens, partial, N_total, D, tokens.stride(0), splits,
        BLOCK_T=16, BLOCK_D=block_d, num_warps=4,  # 4K fp32 accumulators: 32 per thread
    )
    block_d = triton.next_power_of_2(D)
    wrap_triton(_mean_layernorm_kernel)[(B,)](
        partial, cu_seqlens, weight if weight is not None else partial, bias if bias is not None else partial, out,
        N_total, D, splits, eps,
        HAS_NORM=weight is not None, BLOCK_D=block_d, num_warps=8 if block_d >= 2048 else 4,
    )
    return out


def _mean_pool_layernorm_launcher(tokens: torch.Tensor, cu_seqlens: torch.Tensor, weight: torch.Tensor | None,
                                  bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Body of the custom op vmae_fast::mean_pool_layernorm (inputs already checked)."""
    return _mean_pool_layernorm_triton(tokens, cu_seqlens, weight, bias, eps)


def _mean_pool_layernorm_torch(tokens, cu_seqlens, weight, bias, eps):
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()  # (B,)
    segment = torch.repeat_interleave(torch.arange(lengths.numel(), device=tokens.device), lengths)  # (N_total,)
    sums = torch.zeros(lengths.numel(), tokens.shape[-1], device=tokens.device, dtype=torch.float32)
    sums.index_add_(0, segment, tokens.float())
    mean = sums / lengths.unsqueeze(1).float()  # an empty segment gives NaN, like the kernel
    if weight is None:
        return mean.to(tokens.dtype)
    return F.layer_norm(mean, (mean.shape[-1],), weight.float(), bias.float(), eps).to(tokens.dtype)


# CPU kernel = the torch path (or the interpreter, TRITON_INTERPRET=1).
mean_pool_layernorm_op = register_triton_op("mean_pool_layernorm", _mean_pool_layernorm_launcher,
                                            _mean_pool_layernorm_torch)


def mean_pool_layernorm(tokens, cu_seqlens, weight, bias, eps: float, *, backend: str = "auto", check: bool = True):
    """Mean of each clip's tokens, then LayerNorm (fc_norm of fine-tuned VideoMAE).

    tokens: (N_total, D) float32/float16/bfloat16, last dim contiguous (any row stride); cu_seqlens: int32 (B+1,)
    offsets on tokens' device, 0 = cu_seqlens[0] <= ... <= cu_seqlens[B] = N_total; weight, bias: (D,) float, or both
    None for the plain mean; eps: float. Mean and statistics in fp32. Returns (B, D) in tokens' dtype.

    check: read cu_seqlens on the host to check its values (start 0, non-decreasing, ends at N_total, no empty
    segment). Free on the CPU (always checked); one sync on CUDA, so hot paths (the model) pass check=False (also
    skipped while torch.compile traces or a CUDA graph is captured). Unchecked, an empty segment yields a NaN row
    (0/0, as torch's mean of nothing) and offsets are clamped to [0, N_total], so nothing is read out of bounds.
    Raises TypeError (types, dtypes) or ValueError (shapes, strides, devices, values), naming what was got."""
    check_tensor("tokens", tokens, ndim=2)
    N_total, D = tokens.shape
    if D == 0:
        raise ValueError(f"tokens must be (N_total, D) with D >= 1, got shape {tuple(tokens.shape)}")
    bounds = check_cu_seqlens(cu_seqlens, N_total, tokens.device, check_values=check)
    if bounds is not None:
        empty = [i for i in range(len(bounds) - 1) if bounds[i] == bounds[i + 1]]
        if empty:
            raise ValueError(f"mean_pool_layernorm needs at least one token per clip; cu_seqlens has empty "
                             f"segments at clip(s) {empty[:8]}")
    if (weight is None) != (bias is None):
        raise ValueError("weight and bias must both be given (LayerNorm) or both be None (plain mean), got "
                         f"weight={'None' if weight is None else tuple(weight.shape)}, "
                         f"bias={'None' if bias is None else tuple(bias.shape)}")
    if weight is not None:
        check_vector("weight", weight, D, tokens.device)
        check_vector("bias", bias, D, tokens.device)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a float >= 0, got {eps!r}")
    triton_path = use_triton(backend, tokens.device)
    if triton_path and D > MAX_D:
        if backend == "triton":
            raise ValueError(f"the Triton mean_pool_layernorm supports D <= {MAX_D}, got D = {D}; use backend='torch'")
        triton_path = False
    if not triton_path:
        return _mean_pool_layernorm_torch(tokens, cu_seqlens, weight, bias, eps)
    check_last_dim_contiguous("tokens", tokens)
    return mean_pool_layernorm_op(tokens, cu_seqlens, weight, bias, float(eps))
