"""Non-causal multi-head attention over packed variable-length sequences (one sequence per clip).
Fuses: QK^T, scale, online softmax (base 2) and PV, fp32 accumulation, in one flash-style kernel over a tile map.
Idea: FlashAttention-2 (Dao, 2023) varlen API; Triton tutorial 06 (fused attention); tile map as in
flash-linear-attention's prepare_chunk_indices, computed inside the kernel."""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._dispatch import interpreter_enabled, register_triton_op, use_triton, wrap_triton
from ._validate import check_cu_seqlens, check_max_seqlen

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256  # the Triton path keeps a (BLOCK_M, d) fp32 accumulator in registers
BLOCK_B = 128  # clips scanned per step when a program looks up its tile in cu_seqlens

# Hopper-oriented configs (BLOCK_M x BLOCK_N tiles, warps, pipeline depth), pruned per head dim and dtype below.
_GPU_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [
        (128, 128, 8, 3), (128, 64, 4, 3), (128, 64, 8, 3), (128, 64, 4, 4), (128, 32, 8, 2), (64, 64, 4, 3),
        (64, 32, 4, 2),
    ]
]
# The interpreter runs every program in numpy: one small config, no benchmarking, keeps CI fast and still crosses
# several tiles (BLOCK_M != BLOCK_N, full and tail key blocks) at the tested lengths.
_INTERPRETER_CONFIGS = [triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=4, num_stages=1)]


def _prune_configs(configs, named_args, **kwargs):
    """Drop tiles that cannot fit: K and V stages in shared memory (<= 160 KiB of the H100's 227 KiB per block) and
    the fp32 accumulator + score tile in registers (<= 128 registers per thread for the two; fp32 operands count
    twice, tf32x3 splits them into high and low halves). Checked against ptxas for sm_90: kept 16-bit configs
    compile without spills at d = 24..128."""
    args = {**named_args, **kwargs}
    elt = args["Q"].element_size()
    width = args["BLOCK_D0"] + args["BLOCK_D1"]
    kept = []
    for c in configs:
        bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        smem = (c.num_stages * 2 * bn + bm) * width * elt
        regs = (bm * width + bm * bn) * (2 if elt == 4 else 1) // (32 * c.num_warps)
        if smem <= 160 * 1024 and regs <= 128:
            kept.append(c)
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]


def head_dim_blocks(head_dim: int) -> tuple[int, int]:
    """Split d into power-of-two column blocks (BLOCK_D0, BLOCK_D1), BLOCK_D1 = 0 for one block.

    tl.dot needs power-of-two sizes >= 16. A single padded block of next_pow2(d) is simplest, but for d = 80 (ViT-H)
    and 88 (ViT-g) it would do 128 columns of work: 1.6x / 1.45x the FLOPs and K/V bytes. Two blocks (64 + 16 = 80,
    64 + 32 = 96) cut that to 1.0x / 1.09x for one more dot per step; we split only when the two blocks are narrower
    than the padded one (d = 24 -> 32, d = 112 -> 128 stay single)."""
    padded = max(16, triton.next_power_of_2(head_dim))
    first = padded // 2
    rest = head_dim - first
    if first >= 16 and rest > 0:
        second = max(16, triton.next_power_of_2(rest))
        if first + second < padded:
            return first, second
    return padded, 0


@triton.jit
def _attention_step(acc0, acc1, m_i, l_i, q0, q1, k_ptrs, v_ptrs, offs_n, seq_end, qk_scale, stride_kn, stride_vn,
                    HEAD_DIM: tl.constexpr, BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr,
                    MASK_N: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """One BLOCK_N block of keys/values (rows offs_n) folded into the running softmax of BLOCK_M queries.
    MASK_N: the block runs past the end of the sequence (only the last block of a sequence)."""
    offs_d0 = tl.arange(0, BLOCK_D0)
    rows_k = offs_n.to(tl.int64)[:, None]
    col_mask0 = offs_d0[None, :] < HEAD_DIM
    mask0 = col_mask0
    if MASK_N:
        mask0 = mask0 & (offs_n[:, None] < seq_end)
    k0 = tl.load(k_ptrs + rows_k * stride_kn + offs_d0[None, :], mask=mask0, other=0.0)  # (BLOCK_N, BLOCK_D0)
    qk = tl.dot(q0, tl.trans(k0), input_precision=INPUT_PRECISION)  # (BLOCK_M, BLOCK_N) fp32
    if BLOCK_D1 > 0:
        offs_d1 = BLOCK_D0 + tl.arange(0, BLOCK_D1)
        mask1 = offs_d1[None, :] < HEAD_DIM
        if MASK_N:
            mask1 = mask1 & (offs_n[:, None] < seq_end)
        k1 = tl.load(k_ptrs + rows_k * stride_kn + offs_d1[None, :], mask=mask1, other=0.0)  # (BLOCK_N, BLOCK_D1)
        qk = tl.dot(q1, tl.trans(k1), qk, input_precision=INPUT_PRECISION)
    if MASK_N:
        qk = tl.where(offs_n[None, :] < seq_end, qk, float("-inf"))
    # Online softmax in base 2: qk_scale already holds softmax_scale * log2(e).
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    p = tl.math.exp2(qk * qk_scale - m_new[:, None])  # (BLOCK_M, BLOCK_N) fp32
    alpha = tl.math.exp2(m_i - m_new)  # rescales what was accumulated under the previous maximum
    l_i = l_i * alpha + tl.sum(p, 1)
    rows_v = offs_n.to(tl.int64)[:, None]
    v0 = tl.load(v_ptrs + rows_v * stride_vn + offs_d0[None, :], mask=mask0, other=0.0)  # (BLOCK_N, BLOCK_D0)
    p_in = p.to(v0.dtype)  # fp16/bf16 operands for the tensor cores; exact for fp32
    acc0 = tl.dot(p_in, v0, acc0 * alpha[:, None], input_precision=INPUT_PRECISION)
    if BLOCK_D1 > 0:
        v1 = tl.load(v_ptrs + rows_v * stride_vn + offs_d1[None, :], mask=mask1, other=0.0)  # (BLOCK_N, BLOCK_D1)
        acc1 = tl.dot(p_in, v1, acc1 * alpha[:, None], input_precision=INPUT_PRECISION)
    return acc0, acc1, m_new, l_i


@triton.autotune(configs=_INTERPRETER_CONFIGS if interpreter_enabled() else _GPU_CONFIGS,
                 key=["HEAD_DIM", "BLOCK_D0", "BLOCK_D1"],  # the autotuner adds the tensors' dtypes to the key
                 prune_configs_by={"early_config_prune": _prune_configs})
@triton.jit(do_not_specialize=["N_total", "num_seqs"])
def _varlen_attention_kernel(
    Q,  # (N_total, H, d), last dim contiguous, token/head strides arbitrary
    K,  # (N_total, H, d), last dim contiguous
    V,  # (N_total, H, d), last dim contiguous
    Out,  # (N_total, H, d), last dim contiguous; dtype of Q
    CuSeqlens,  # int32 (num_seqs + 1,), segment b is rows [CuSeqlens[b], CuSeqlens[b+1])
    qk_scale,  # fp32: softmax_scale / ln 2 (the softmax runs in base 2)
    N_total, num_seqs,  # ints that change every batch: not specialized
    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_on, stride_oh,
    HEAD_DIM: tl.constexpr,  # d
    BLOCK_D0: tl.constexpr,  # columns [0, BLOCK_D0) of d, power of two
    BLOCK_D1: tl.constexpr,  # columns [BLOCK_D0, BLOCK_D0 + BLOCK_D1), 0 when d fits in one block
    INPUT_PRECISION: tl.constexpr,  # tl.dot precision for fp32 operands ("tf32x3"); no effect for fp16/bf16
    BLOCK_B: tl.constexpr,  # clips scanned per step of the tile lookup
    BLOCK_M: tl.constexpr,  # queries per program
    BLOCK_N: tl.constexpr,  # keys per inner step
):
    # Grid: (cdiv(N_total, BLOCK_M) + num_seqs, H) >= the number of (clip, query block) tiles; the rest exit.
    tile = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64)

    # Tile map: clip b owns tiles [first_b, first_b + cdiv(len_b, BLOCK_M)) in clip order. Every program finds its
    # clip from cu_seqlens (a few hundred bytes from L2), so no host sync or extra launch builds the map, and the
    # grid does not depend on max_seqlen. Offsets are clamped to [0, N_total]: even an unchecked, malformed
    # cu_seqlens can never make the kernel read or write outside the tensors.
    seq_start = 0
    seq_end = 0
    m_block = 0
    tiles_before = 0
    for b0 in range(0, num_seqs, BLOCK_B):
        offs_b = b0 + tl.arange(0, BLOCK_B)
        in_batch = offs_b < num_seqs
        lo = tl.load(CuSeqlens + offs_b, mask=in_batch, other=0)
        hi = tl.load(CuSeqlens + offs_b + 1, mask=in_batch, other=0)
        lo = tl.minimum(tl.maximum(lo, 0), N_total)
        hi = tl.minimum(tl.maximum(hi, lo), N_total)
        n_tiles = tl.cdiv(hi - lo, BLOCK_M)
        last = tl.cumsum(n_tiles, 0) + tiles_before  # one past the clip's last tile
        first = last - n_tiles
        mine = (first <= tile) & (tile < last)
        seq_start += tl.sum(tl.where(mine, lo, 0))
        seq_end += tl.sum(tl.where(mine, hi, 0))
        m_block += tl.sum(tl.where(mine, tile - first, 0))
        tiles_before += tl.sum(n_tiles)
    if seq_end <= seq_start:  # a spare program: no tile left for it
        return

    offs_m = seq_start + m_block * BLOCK_M + tl.arange(0, BLOCK_M)  # query rows, int32 < N_total
    row_ok = offs_m < seq_end
    rows_q = offs_m.to(tl.int64)[:, None]
    offs_d0 = tl.arange(0, BLOCK_D0)
    q_ptrs = Q + head * stride_qh
    q_mask0 = row_ok[:, None] & (offs_d0[None, :] < HEAD_DIM)
    q0 = tl.load(q_ptrs + rows_q * stride_qn + offs_d0[None, :], mask=q_mask0, other=0.0)  # (BLOCK_M, BLOCK_D0)
    acc0 = tl.zeros([BLOCK_M, BLOCK_D0], dtype=tl.float32)
    if BLOCK_D1 > 0:
        offs_d1 = BLOCK_D0 + tl.arange(0, BLOCK_D1)
        q_mask1 = row_ok[:, None] & (offs_d1[None, :] < HEAD_DIM)
        q1 = tl.load(q_ptrs + rows_q * stride_qn + offs_d1[None, :], mask=q_mask1, other=0.0)  # (BLOCK_M, BLOCK_D1)
        acc1 = tl.zeros([BLOCK_M, BLOCK_D1], dtype=tl.float32)
    else:  # placeholders, never read: one code path for both layouts
        q1 = q0
        acc1 = acc0
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max of the scaled scores (base 2)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running softmax denominator

    k_ptrs = K + head * stride_kh
    v_ptrs = V + head * stride_vh
    # Full key blocks without row masks, then at most one masked tail block.
    full_end = seq_start + ((seq_end - seq_start) // BLOCK_N) * BLOCK_N
    for start_n in range(seq_start, full_end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        acc0, acc1, m_i, l_i = _attention_step(acc0, acc1, m_i, l_i, q0, q1, k_ptrs, v_ptrs, offs_n, seq_end,
                                               qk_scale, stride_kn, stride_vn, HEAD_DIM, BLOCK_D0, BLOCK_D1,
                                               False, INPUT_PRECISION)
    if full_end < seq_end:
        offs_n = full_end + tl.arange(0, BLOCK_N)
        acc0, acc1, m_i, l_i = _attention_step(acc0, acc1, m_i, l_i, q0, q1, k_ptrs, v_ptrs, offs_n, seq_end,
                                               qk_scale, stride_kn, stride_vn, HEAD_DIM, BLOCK_D0, BLOCK_D1,
                                               True, INPUT_PRECISION)

    # Every row has at least one key (the clip is non-empty), so l_i > 0.
    inv_l = 1.0 / l_i
    o_ptrs = Out + head * stride_oh + rows_q * stride_on
    tl.store(o_ptrs + offs_d0[None, :], (acc0 * inv_l[:, None]).to(Out.dtype.element_ty), mask=q_mask0)
    if BLOCK_D1 > 0:
        tl.store(o_ptrs + offs_d1[None, :], (acc1 * inv_l[:, None]).to(Out.dtype.element_ty), mask=q_mask1)


def _varlen_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                             softmax_scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Launch on checked inputs. Shapes only, no host read of tensor values: traceable by torch.compile and
    capturable in a CUDA graph. `out` (N_total, H, d) in q's dtype is for tests (NaN-poisoned buffers)."""
    n_total, heads, head_dim = q.shape
    if out is None:
        out = torch.empty((n_total, heads, head_dim), dtype=q.dtype, device=q.device)
    num_seqs = cu_seqlens.shape[0] - 1
    cu_seqlens = cu_seqlens.contiguous()  # the kernel reads it with stride 1 (a no-op for the usual tensor)
    if n_total == 0 or heads == 0:
        return out
    block_d0, block_d1 = head_dim_blocks(head_dim)

    def grid(meta):
        # sum_b cdiv(len_b, BLOCK_M) <= cdiv(N_total, BLOCK_M) + num_seqs: an upper bound known without a sync.
        return (triton.cdiv(n_total, meta["BLOCK_M"]) + num_seqs, heads)

    wrap_triton(_varlen_attention_kernel)[grid](
        q, k, v, out, cu_seqlens, softmax_scale * 1.4426950408889634,
        n_total, num_seqs,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, BLOCK_D0=block_d0, BLOCK_D1=block_d1,
        # fp32 inputs: "tf32x3" (three tf32 MMAs, error near fp32 rounding, on the tensor cores). Plain "tf32" keeps a
        # 10-bit mantissa (~3e-4 relative, too coarse for the fp32 reference mode); "ieee" runs tl.dot on FMA units
        # and spilled registers at every tile tried (ptxas sm_90). fp16/bf16 products are exact in fp32: no effect.
        INPUT_PRECISION="tf32x3" if q.dtype == torch.float32 else "tf32",
        BLOCK_B=BLOCK_B,
    )
    return out


def _varlen_attention_launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                             softmax_scale: float) -> torch.Tensor:
    """Body of the custom op vmae_fast::varlen_attention (inputs already checked)."""
    return _varlen_attention_triton(q, k, v, cu_seqlens, softmax_scale)


def _varlen_attention_op_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                               softmax_scale: float) -> torch.Tensor:
    return _varlen_attention_torch(q, k, v, cu_seqlens, softmax_scale)


# torch.ops.vmae_fast.varlen_attention: the Triton kernel on CUDA (and on CPU under TRITON_INTERPRET=1), the torch
# path for other CPU calls. torch.compile sees the kernel itself; CUDA graphs capture it.
varlen_attention_op = register_triton_op("varlen_attention", _varlen_attention_launch, _varlen_attention_op_torch)


def _check_inputs(q, k, v, cu_seqlens, max_seqlen, softmax_scale, triton_path: bool, check: bool):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
        if t.dim() != 3:
            raise ValueError(f"{name} must have shape (N_total, H, d), got shape {tuple(t.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"q, k, v must share one dtype, got q {q.dtype} and {name} {t.dtype}")
        if t.shape != q.shape:
            names = ("N_total", "heads", "head dim")
            dims = [f"{label} {a} vs {b}" for label, a, b in zip(names, q.shape, t.shape, strict=True) if a != b]
            raise ValueError(f"q and {name} must have the same shape (N_total, H, d), got q {tuple(q.shape)} and "
                             f"{name} {tuple(t.shape)} (mismatched {', '.join(dims)})")
        if t.device != q.device:
            raise ValueError(f"q, k, v must be on one device, got q on {q.device} and {name} on {t.device}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.shape[-1] > 1 and t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dim (stride 1), got strides {tuple(t.stride())} "
                             f"for shape {tuple(t.shape)}; token and head strides may be anything")
    head_dim = q.shape[-1]
    if head_dim == 0:
        raise ValueError(f"head dim must be >= 1, got q shape {tuple(q.shape)}")
    if triton_path and (head_dim > MAX_HEAD_DIM or head_dim % 8):
        raise ValueError(f"the Triton path supports head dims that are multiples of 8 up to {MAX_HEAD_DIM} "
                         f"(as flash-attention), got {head_dim}; use backend='torch'")
    if triton_path and q.shape[1] > 65535:
        raise ValueError(f"the Triton path launches one grid row per head (CUDA allows 65535), got {q.shape[1]} heads")
    if softmax_scale is not None:
        if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
            raise TypeError(f"softmax_scale must be a float or None, got {type(softmax_scale).__name__}")
        if not math.isfinite(softmax_scale) or softmax_scale <= 0:
            # > 0: the kernel takes the running max of the raw scores before scaling them
            raise ValueError(f"softmax_scale must be a positive finite float or None, got {softmax_scale!r}")
    bounds = check_cu_seqlens(cu_seqlens, q.shape[0], q.device, check_values=check)
    check_max_seqlen(max_seqlen, bounds)
    return bounds


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                     softmax_scale: float | None = None, *, backend: str = "auto", check: bool = True) -> torch.Tensor:
    """Non-causal attention within each segment of a packed batch (flash-attention's varlen convention).

    q, k, v: (N_total, H, d) float16/bfloat16/float32, one dtype, one device; the last dim contiguous, token and
        head strides free (q, k, v = qkv.unbind(1) of a packed (N_total, 3, H, d) tensor works without copies).
    cu_seqlens: int32 (B+1,) on the same device: 0, then cumulative segment lengths, ending at N_total. Segments may
        be empty.
    max_seqlen: int, >= the longest segment (the kernel does not need it; kept for flash-attention compatibility).
    softmax_scale: defaults to d ** -0.5.
    backend: "auto" (CUDA -> Triton, CPU -> torch), "triton" (CUDA, or CPU with TRITON_INTERPRET=1), "torch".
    check: read cu_seqlens on the host to check its values (start 0, non-decreasing, ends at N_total, max_seqlen
        large enough). Free for CPU tensors (always checked); one sync for CUDA tensors, so pass check=False on the
        hot path (the model does; also skipped while torch.compile traces or a CUDA graph is captured). Unchecked
        bad values cannot make the kernel access memory outside q/k/v/out, but give meaningless rows.
    Returns (N_total, H, d) contiguous, in q's dtype. Accumulation is fp32; the Triton path needs d % 8 == 0, d <= 256.
    Raises TypeError (types, dtypes) or ValueError (shapes, strides, devices, values), naming what was got.
    """
    triton_path = use_triton(backend, q.device) if isinstance(q, torch.Tensor) else False
    _check_inputs(q, k, v, cu_seqlens, max_seqlen, softmax_scale, triton_path, check)
    if softmax_scale is None:
        softmax_scale = q.shape[-1] ** -0.5
    if triton_path:
        return varlen_attention_op(q, k, v, cu_seqlens, float(softmax_scale))
    return _varlen_attention_torch(q, k, v, cu_seqlens, float(softmax_scale))


def _varlen_attention_torch(q, k, v, cu_seqlens, softmax_scale):
    bounds = cu_seqlens.tolist()
    lengths = {b - a for a, b in pairwise(bounds)}
    if len(lengths) == 1:  # equal lengths: one batched SDPA call
        n = lengths.pop()
        B = len(bounds) - 1
        qb, kb, vb = (t.reshape(B, n, *t.shape[1:]).transpose(1, 2) for t in (q, k, v))  # (B, H, n, d)
        out = F.scaled_dot_product_attention(qb, kb, vb, scale=softmax_scale)
        return out.transpose(1, 2).reshape(q.shape)
    out = torch.empty_like(q)
    for a, b in pairwise(bounds):
        if b == a:
            continue
        qs, ks, vs = (t[a:b].transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # (1, H, n, d)
        out[a:b] = F.scaled_dot_product_attention(qs, ks, vs, scale=softmax_scale)[0].transpose(0, 1)
    return out
