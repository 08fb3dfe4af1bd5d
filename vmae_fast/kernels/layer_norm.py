"""LayerNorm over the last dim with an optional fused residual add: y = LN(x + residual), also returning x + residual.
Fuses: residual add + mean/var + affine in one pass over the row (Triton), fp32 statistics.
Idea: Triton tutorial 05 (layer norm) and flash-attention's fused dropout-add-LayerNorm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._dispatch import (
    check_last_dim_contiguous,
    check_same_device,
    check_tensor,
    check_vector,
    register_triton_op,
    use_triton,
    wrap_triton,
)

# A whole row lives in registers; beyond this the Triton path refuses (VideoMAE-g has D = 1408).
MAX_D = 16384


@triton.jit
def _layer_norm_kernel(
    X,  # (M, D), last dim contiguous, row stride stride_x
    R,  # (M, D) residual, last dim contiguous, row stride stride_r (unused when HAS_RESIDUAL is False)
    W,  # (D,) weight (unused when HAS_WEIGHT is False)
    Bias,  # (D,) bias (unused when HAS_BIAS is False)
    Y,  # (M, D) output, contiguous, x's dtype
    S,  # (M, D) x + residual, contiguous, x's dtype (unused when HAS_RESIDUAL is False)
    M, D, stride_x, stride_r, eps,
    HAS_RESIDUAL: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < M
    col_ok = cols < D
    mask = row_ok[:, None] & col_ok[None, :]
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(R + rows[:, None] * stride_r + cols[None, :], mask=mask, other=0.0)
        # Round the sum to the input dtype before the statistics, as the unfused `LN(x + r)` does.
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        tl.store(S + rows[:, None] * D + cols[None, :], x, mask=mask)
    x = x.to(tl.float32)
    mean = tl.sum(x, axis=1) / D  # (BLOCK_M,)
    xc = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / D  # biased variance, as F.layer_norm
    y = xc * tl.math.rsqrt(var + eps)[:, None]
    if HAS_WEIGHT:
        y = y * tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        y = y + tl.load(Bias + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows[:, None] * D + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


def _launch_config(D: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_D, num_warps): about 4K elements per program so small rows still keep loads in flight."""
    block_d = triton.next_power_of_2(D)
    block_m = max(1, min(16, 4096 // block_d))
    num_warps = min(16, max(1, block_m * block_d // 512))
    return block_m, block_d, num_warps


def _launch(x2, residual2, weight, bias, eps, y=None, s=None):
    """x2, residual2: (M, D) views with a contiguous last dim. Returns y (M, D) and s = x + residual (M, D) (y again
    without residual). Shapes only, no host read of values: traceable by torch.compile, capturable in a CUDA graph.
    `y`, `s`: preallocated contiguous outputs, for tests (NaN-poisoned buffers)."""
    M, D = x2.shape
    if y is None:
        y = torch.empty((M, D), device=x2.device, dtype=x2.dtype)
    if s is None:
        s = torch.empty((M, D), device=x2.device, dtype=x2.dtype) if residual2 is not None else y
    block_m, block_d, num_warps = _launch_config(D)
    r = residual2 if residual2 is not None else x2
    if M == 0:
        return y, s
    wrap_triton(_layer_norm_kernel)[(triton.cdiv(M, block_m),)](
        x2, r, weight if weight is not None else x2, bias if bias is not None else x2, y, s,
        M, D, x2.stride(0), r.stride(0), eps,
        HAS_RESIDUAL=residual2 is not None, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        BLOCK_M=block_m, BLOCK_D=block_d, num_warps=num_warps,
    )
    return y, s


def _layer_norm_launcher(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                         eps: float) -> torch.Tensor:
    return _launch(x, None, weight, bias, eps)[0]


def _add_layer_norm_launcher(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None,
                             bias: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch(x, residual, weight, bias, eps)


def _layer_norm_torch(x, weight, bias, eps, residual=None):
    if residual is not None:
        x = x + residual
    w = weight.float() if weight is not None else None
    b = bias.float() if bias is not None else None
    y = F.layer_norm(x.float(), (x.shape[-1],), w, b, eps).to(x.dtype)
    return y if residual is None else (y, x)


def _add_layer_norm_torch(x, residual, weight, bias, eps):
    return _layer_norm_torch(x, weight, bias, eps, residual)


# Ops on 2-D (M, D) views; the public function reshapes. CPU kernel = the torch path (or the interpreter).
layer_norm_op = register_triton_op("layer_norm", _layer_norm_launcher, _layer_norm_torch)
add_layer_norm_op = register_triton_op("add_layer_norm", _add_layer_norm_launcher, _add_layer_norm_torch)


def _rows_view(name: str, t: torch.Tensor) -> torch.Tensor:
    """(..., D) -> (M, D) without a copy: the kernel takes one row stride."""
    if t.dim() == 2:
        return t
    try:
        return t.view(-1, t.shape[-1])
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(t.shape)} and strides {tuple(t.stride())} cannot be viewed as "
                         f"(rows, D) without a copy; call .contiguous() first") from None


def layer_norm(x, weight, bias, eps: float, residual=None, *, backend: str = "auto"):
    """LayerNorm over the last dim, optionally of x + residual.

    x: (..., D) float32/float16/bfloat16, last dim contiguous (2-D inputs may have any row stride; higher ranks must
    be viewable as (rows, D)); residual: None or the same shape and dtype as x; weight, bias: (D,) float or None
    (no affine); eps: float. Statistics in fp32. Returns y (..., D) in x's dtype, or (y, x + residual) when residual
    is given (the sum rounded to x's dtype, as the unfused code computes it, and the statistics taken from it)."""
    check_tensor("x", x)
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"x must be (..., D) with D >= 1, got shape {tuple(x.shape)}")
    D = x.shape[-1]
    if residual is not None:
        check_tensor("residual", residual)
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError(f"residual must match x: shape {tuple(x.shape)} dtype {x.dtype}, got shape "
                             f"{tuple(residual.shape)} dtype {residual.dtype}")
        check_same_device(x.device, residual=residual)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            check_vector(name, t, D, x.device)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a float >= 0, got {eps!r}")
    triton_path = use_triton(backend, x.device)
    if triton_path and D > MAX_D:
        if backend == "triton":
            raise ValueError(f"the Triton layer_norm keeps a row in registers and supports D <= {MAX_D}, got D = {D}; "
                             f"use backend='torch'")
        triton_path = False
    if not triton_path:
        return _layer_norm_torch(x, weight, bias, eps, residual)
    check_last_dim_contiguous("x", x)
    x2 = _rows_view("x", x)
    if residual is None:
        return layer_norm_op(x2, weight, bias, float(eps)).view(x.shape)
    check_last_dim_contiguous("residual", residual)
    y, s = add_layer_norm_op(x2, _rows_view("residual", residual), weight, bias, float(eps))
    return y.view(x.shape), s.view(x.shape)
