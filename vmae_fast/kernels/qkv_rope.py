"""3D rotary position embedding of q and k, from the packed qkv projection: (N_total, 3, H, d) -> (N_total, 2, H, d).
Fuses: the q/k split of qkv, the per-token angles from (t, h, w) position ids, sin/cos, and the rotation of q and k
(one angle computation serves both) in one pass, fp32 math. Idea: V-JEPA 2's RoPE (rotate_queries_or_keys of Meta's
vjepa2 / transformers' VJEPA2RopeAttention) applied to packed varlen tokens, as flash-attention's rotary kernel does
for 1D positions.

V-JEPA 2's convention, exactly as its code computes it (tested against transformers in tests/model):
    the head dim d holds three sections of S = 2 * ((d // 3) // 2) columns, for t, h and w; columns [3S, d) pass
    through unchanged (d = 64: S = 20, 4 columns; d = 80: S = 26, 2; d = 88: S = 28, 4).
    In a section, with j the column inside it, half = S / 2 and p the token's position along that axis:
        angle_j = p * theta ** (-(j % half) / half)
        out_j   = x_j * cos(angle_j) - x_{j+1} * sin(angle_j)     j even
        out_j   = x_j * cos(angle_j) + x_{j-1} * sin(angle_j)     j odd
    (the two columns of a pair take the frequencies of j % half and (j + 1) % half: the sin/cos rows are the half-size
    table repeated twice, while the pairs are interleaved. Not a pure rotation, but what the weights were trained with.)
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._dispatch import (
    _INTERPRETED_AT_IMPORT,
    check_last_dim_contiguous,
    check_same_device,
    check_tensor,
    register_triton_op,
    use_triton,
    wrap_triton,
)

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
DEFAULT_THETA = 10000.0
# Memory-bound: one tile of tokens x flattened (head, column) pairs per program, q and k in the same program.
_BLOCK_N, _BLOCK_C, _WARPS = (64, 256, 4) if _INTERPRETED_AT_IMPORT else (16, 256, 4)


def vjepa2_section(head_dim: int) -> int:
    """Columns per axis (t, h, w) of V-JEPA 2's rotary embedding: 2 * ((head_dim // 3) // 2)."""
    return 2 * ((head_dim // 3) // 2)


@triton.jit(do_not_specialize=["N_total"])
def _qkv_rope_kernel(
    QKV,  # (N_total, 3, H, d): q = QKV[:, 0], k = QKV[:, 1]; last dim contiguous, other strides free
    Pos,  # int32 (N_total, 3): each token's (t, h, w) position
    Out,  # (N_total, 2, H, d) contiguous, QKV's dtype: rotated q and k
    N_total, heads,
    stride_n, stride_g, stride_h,  # QKV strides of token, q/k/v group, head
    stride_pn, stride_pc,  # Pos strides
    neg_log2_theta_over_half,  # fp32: -log2(theta) / half, so inv_freq_f = exp2(f * this)
    HEAD_DIM: tl.constexpr,  # d (even)
    SECTION: tl.constexpr,  # S: columns per axis (even, 3 S <= d)
    BLOCK_N: tl.constexpr,  # tokens per program
    BLOCK_C: tl.constexpr,  # (head, column) pairs per program, over H * d
):
    pid_n = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) int64 tokens
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)  # (BLOCK_C,) flat (head, column)
    row_ok = rows < N_total
    col_ok = cols < heads * HEAD_DIM
    mask = row_ok[:, None] & col_ok[None, :]
    head = cols // HEAD_DIM
    c = cols % HEAD_DIM  # column in the head
    part = c // SECTION  # 0, 1, 2: t, h, w; 3 and beyond: passed through
    j = c % SECTION
    HALF: tl.constexpr = SECTION // 2
    inv_freq = tl.exp2((j % HALF).to(tl.float32) * neg_log2_theta_over_half)  # (BLOCK_C,)

    pos_t = tl.load(Pos + rows * stride_pn, mask=row_ok, other=0).to(tl.float32)  # (BLOCK_N,)
    pos_h = tl.load(Pos + rows * stride_pn + stride_pc, mask=row_ok, other=0).to(tl.float32)
    pos_w = tl.load(Pos + rows * stride_pn + 2 * stride_pc, mask=row_ok, other=0).to(tl.float32)
    p = tl.where(part[None, :] == 0, pos_t[:, None], tl.where(part[None, :] == 1, pos_h[:, None], pos_w[:, None]))
    rotated = (part < 3)[None, :]
    angle = tl.where(rotated, p * inv_freq[None, :], 0.0)  # (BLOCK_N, BLOCK_C) fp32
    cos = tl.cos(angle)
    # even j pairs with x_{j+1} (subtracted), odd j with x_{j-1} (added); pass-through columns get 0
    sign = tl.where(c % 2 == 0, -1.0, 1.0)
    sin = tl.where(rotated, tl.sin(angle) * sign[None, :], 0.0)
    partner = c ^ 1  # the other column of the pair, inside the head because d is even

    offs = rows[:, None] * stride_n + (head * stride_h)[None, :]  # (BLOCK_N, BLOCK_C) int64
    out_offs = rows[:, None] * (2 * heads * HEAD_DIM) + cols[None, :]
    for g in tl.static_range(2):  # q, then k: the same angles
        x = tl.load(QKV + offs + g * stride_g + c[None, :], mask=mask, other=0.0).to(tl.float32)
        x_pair = tl.load(QKV + offs + g * stride_g + partner[None, :], mask=mask, other=0.0).to(tl.float32)
        y = x * cos + x_pair * sin
        tl.store(Out + out_offs + g * heads * HEAD_DIM, y.to(Out.dtype.element_ty), mask=mask)


def _qkv_rope_triton(qkv: torch.Tensor, positions: torch.Tensor, section: int, theta: float,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """Launch on checked inputs (shapes only: traceable, capturable). `out` (N_total, 2, H, d) contiguous in qkv's
    dtype is for tests (NaN-poisoned buffers)."""
    n_total, _, heads, head_dim = qkv.shape
    if out is None:
        out = torch.empty((n_total, 2, heads, head_dim), dtype=qkv.dtype, device=qkv.device)
    if n_total == 0 or heads == 0:
        return out
    grid = (triton.cdiv(n_total, _BLOCK_N), triton.cdiv(heads * head_dim, _BLOCK_C))
    wrap_triton(_qkv_rope_kernel)[grid](
        qkv, positions, out, n_total, heads,
        qkv.stride(0), qkv.stride(1), qkv.stride(2), positions.stride(0), positions.stride(1),
        -math.log2(theta) / (section // 2),
        HEAD_DIM=head_dim, SECTION=section, BLOCK_N=_BLOCK_N, BLOCK_C=_BLOCK_C, num_warps=_WARPS,
    )
    return out


def _qkv_rope_launch(qkv: torch.Tensor, positions: torch.Tensor, section: int, theta: float) -> torch.Tensor:
    """Body of the custom op vmae_fast::qkv_rope (inputs already checked)."""
    return _qkv_rope_triton(qkv, positions, section, theta)


def inverse_frequencies(section: int, theta: float, device=None) -> torch.Tensor:
    """(section // 2,) float32: theta ** (-f / half), computed as V-JEPA 2's code does (float32 arange / half, then
    1 / theta ** that), so the torch path's angles are the reference's bit for bit."""
    half = section // 2
    omega = torch.arange(half, dtype=torch.float32, device=device) / (section / 2.0)
    return 1.0 / theta**omega


def _qkv_rope_torch(qkv: torch.Tensor, positions: torch.Tensor, section: int, theta: float) -> torch.Tensor:
    """The plain-torch path: sin/cos tables (N_total, 3S) per token, shared by q and k and the heads."""
    n_total, _, heads, head_dim = qkv.shape
    inv_freq = inverse_frequencies(section, theta, qkv.device)  # (S/2,)
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq  # (N, 3, S/2): t, h, w
    angles = angles.repeat(1, 1, 2).reshape(n_total, 1, 1, 3 * section)  # each section: the half table twice
    cos, sin = angles.cos(), angles.sin()
    x = qkv[:, :2].to(torch.float32)  # (N, 2, H, d)
    rot = x[..., : 3 * section]
    pairs = rot.unflatten(-1, (-1, 2))  # (N, 2, H, 3S/2, 2)
    partner = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # (-x_{j+1}, x_{j-1})
    out = torch.empty((n_total, 2, heads, head_dim), dtype=qkv.dtype, device=qkv.device)
    out[..., : 3 * section] = rot * cos + partner * sin
    out[..., 3 * section:] = x[..., 3 * section:]
    return out


# torch.ops.vmae_fast.qkv_rope: the Triton kernel on CUDA (and on CPU under TRITON_INTERPRET=1), the torch path for
# other CPU calls.
qkv_rope_op = register_triton_op("qkv_rope", _qkv_rope_launch, _qkv_rope_torch)


def _check_inputs(qkv, positions, section, theta) -> None:
    check_tensor("qkv", qkv, ndim=4)
    if qkv.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"qkv must be float16, bfloat16 or float32, got {qkv.dtype}")
    n_total, groups, heads, head_dim = qkv.shape
    if groups != 3:
        raise ValueError(f"qkv must be (N_total, 3, H, d) (q, k, v of the packed projection), got shape "
                         f"{tuple(qkv.shape)}")
    if head_dim % 2:
        raise ValueError(f"the head dim must be even (rotary pairs), got d = {head_dim} in qkv shape "
                         f"{tuple(qkv.shape)}")
    check_last_dim_contiguous("qkv", qkv)
    if isinstance(section, bool) or not isinstance(section, int):
        raise TypeError(f"section must be an int (columns per t/h/w axis), got {type(section).__name__}")
    if section < 2 or section % 2 or 3 * section > head_dim:
        raise ValueError(f"section must be even, >= 2 and at most d // 3 = {head_dim // 3} (three axes of it fit in "
                         f"the head dim {head_dim}), got {section}")
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not (math.isfinite(theta) and theta > 1):
        raise ValueError(f"theta must be a finite number > 1, got {theta!r}")
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"positions must be an int32 tensor (N_total, 3) of (t, h, w) ids, got "
                        f"{type(positions).__name__}")
    if positions.dtype != torch.int32:
        raise TypeError(f"positions must be int32 (N_total, 3) (t, h, w) ids, got {positions.dtype}; use "
                        f"positions.to(torch.int32)")
    if tuple(positions.shape) != (n_total, 3):
        raise ValueError(f"positions must be (N_total, 3) = ({n_total}, 3), one (t, h, w) row per token of qkv, "
                         f"got shape {tuple(positions.shape)}")
    check_same_device(qkv.device, positions=positions)


def qkv_rope(qkv: torch.Tensor, positions: torch.Tensor, section: int | None = None, theta: float = DEFAULT_THETA,
             *, backend: str = "auto") -> torch.Tensor:
    """Rotate q and k of a packed qkv projection by each token's 3D position (V-JEPA 2's rotary embedding).

    qkv: (N_total, 3, H, d) float16/bfloat16/float32, q = qkv[:, 0], k = qkv[:, 1] (v is not read); the last dim
        contiguous, other strides free (the (N, 3D) output of one qkv GEMM viewed as (N, 3, H, d) needs no copy).
        d must be even.
    positions: int32 (N_total, 3) on the same device: each token's (t, h, w) in its clip's grid. Packed varlen
        batches need nothing else: the angles depend on the token only, so kept tokens keep their own positions.
    section: columns per axis; None = V-JEPA 2's 2 * ((d // 3) // 2). Columns [3 section, d) pass through.
    theta: the frequency base (10000).
    backend: "auto" (CUDA -> Triton, CPU -> torch), "triton" (CUDA, or CPU with TRITON_INTERPRET=1), "torch".
    Returns (N_total, 2, H, d) contiguous in qkv's dtype: [:, 0] the rotated q, [:, 1] the rotated k (angles, sin/cos
    and the products in fp32, one rounding at the store). Raises TypeError / ValueError naming the shape or dtype.
    """
    head_dim = qkv.shape[-1] if isinstance(qkv, torch.Tensor) and qkv.dim() == 4 else None
    if section is None and head_dim is not None:
        section = vjepa2_section(head_dim)
    _check_inputs(qkv, positions, section, theta)
    if use_triton(backend, qkv.device):
        return qkv_rope_op(qkv, positions, section, float(theta))
    return _qkv_rope_torch(qkv, positions, section, float(theta))


__all__ = ["DEFAULT_THETA", "inverse_frequencies", "qkv_rope", "vjepa2_section"]
