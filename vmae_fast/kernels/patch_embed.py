"""Tubelet patch embedding: frames -> normalized tubelets -> GEMM -> + bias (+ position table) -> kept tokens, packed.
Fuses: uint8 /255, mean/std, tubelet unfold (pure index math, no copy), GEMM, bias, position add (VideoMAE's sin/cos
table; none for V-JEPA 2, whose positions are rotary) and the gather of kept tokens in one kernel (Triton).
Idea: the Conv3d of VideoMAE's PatchEmbed written as a GEMM over tubelets."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._dispatch import (
    _INTERPRETED_AT_IMPORT,
    check_last_dim_contiguous,
    check_same_device,
    check_tensor,
    check_vector,
    register_triton_op,
    use_triton,
    wrap_triton,
)
from ._validate import _host_read_allowed

# The tubelet is read as ROWS contiguous runs of the frames: uint8 (..., W, 3) frames give ts*P runs of 3P bytes
# ((x, c) interleaved), float (..., 3, H, W) frames give 3*ts*P runs of P values. Each run is padded to RUN_PAD, a
# multiple of RUN_ALIGN = 16 values (48 for 3P = 48 uint8 values; 16 for P = 16 floats), and K steps through the
# padded runs BLOCK_K values at a time: run = k // RUN_PAD, offset j = k % RUN_PAD, so every aligned group of 16
# values of a K tile is one contiguous piece of a run (16-byte vector loads of uint8 frames). Padding runs to a power
# of two instead (64 for 48) would waste 25 % of the MMA work at P = 16 (34 % at P = 14). The weight is laid out in
# the same (run, padded offset) order with zeros in the padding, once: prepare_weight(), which the model calls at
# load (the op re-lays it per call when given only the Conv3d weight). Autotuned over the output tile; under the
# interpreter one wide config (autotuning there would time numpy, not a GPU; wide tiles mean fewer interpreted steps).
_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 4, 4), (128, 64, 8, 3), (64, 128, 4, 3),
                         (64, 128, 8, 3), (64, 64, 4, 3)]
]
# Checked offline with Triton's sm_90 compile + ptxas (no GPU, tools/kernel_resources.py): every config compiles to
# HGMMA with 16-byte loads and no spills for fp16/bf16 weights at P = 14 and 16.
RUN_ALIGN = 16  # runs padded to a multiple of this many values
_K_TILE = 64  # values of K per step
if _INTERPRETED_AT_IMPORT:
    _CONFIGS = [triton.Config({"BLOCK_M": 16, "BLOCK_N": 256}, num_warps=4, num_stages=1)]
    _K_TILE = 128


def _prune_configs(configs, named_args, **kwargs):
    """fp32 weights (tf32x3 splits each operand in two): only tiles with <= 32 accumulators per thread and 8 warps
    compiled without spills for sm_90 (ptxas); 16-bit weights keep every config."""
    if named_args["Wp"].element_size() < 4:
        return configs
    kept = [c for c in configs if c.num_warps == 8 and c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 32 * 32 * 8]
    return kept or configs[-1:]


@triton.autotune(configs=_CONFIGS, key=["D", "ROWS", "RUN_PAD", "NORMALIZE", "HAS_POS"],
                 prune_configs_by={"early_config_prune": _prune_configs})
@triton.jit(do_not_specialize=["M", "num_clips"])
def _patch_embed_kernel(
    Frames,  # uint8 (B, T, H, W, 3) with (W, 3) contiguous, or float (B, T, 3, H, W) with W contiguous
    Wp,  # (D, ROWS * RUN_PAD) weight laid out in run order, zeros in the padding, contiguous (prepare_weight)
    Bias,  # (D,)
    Pos,  # (N, D) sin/cos position table, last dim contiguous (unused unless HAS_POS)
    Mean,  # (3,) float pixel mean in [0, 1] units (unused unless NORMALIZE)
    Std,  # (3,) float pixel std (unused unless NORMALIZE)
    TokenIds,  # (M,) int64 flat ids b*N + n of the kept tokens (unused unless HAS_IDS)
    Out,  # (M, D) output, contiguous, weight's dtype
    M, num_clips, D, N, n_h, n_w,
    stride_b, stride_t, stride_c, stride_h, stride_w, stride_pos,
    P: tl.constexpr, TS: tl.constexpr,
    ROWS: tl.constexpr,  # runs per tubelet: ts*P (uint8) or 3*ts*P (float)
    RUN: tl.constexpr,  # values per run: 3P (uint8) or P (float)
    RUN_PAD: tl.constexpr,  # RUN rounded up to a multiple of 16
    BLOCK_K: tl.constexpr,  # values of the padded runs per K step
    NORMALIZE: tl.constexpr, HAS_IDS: tl.constexpr, HAS_POS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # One grid axis (2^31 - 1 programs; axis 1 would cap the row tiles at 65,535, ~4 M kept tokens). Feature tiles
    # vary fastest so the programs sharing a block of tubelets run together (tubelets reused from L2).
    pid = tl.program_id(0)
    tiles_n = tl.cdiv(D, BLOCK_N)
    pid_m = (pid // tiles_n).to(tl.int64)
    pid_n = pid % tiles_n
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) output rows
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) features
    row_ok = rows < M
    col_ok = cols < D
    if HAS_IDS:
        token = tl.load(TokenIds + rows, mask=row_ok, other=0)
    else:
        token = rows
    # Ids that were not value-checked (CUDA, no sync) and fall outside the batch read nothing and yield NaN rows.
    token_ok = row_ok & (token >= 0) & (token < num_clips * N)
    token = tl.where(token_ok, token, 0)
    clip = token // N
    n = token % N  # token index in the clip, (t, h, w) order
    t = n // (n_h * n_w)
    h = (n // n_w) % n_h
    w = n % n_w
    # The unfold is separable: address = tubelet origin (per row) + run start + offset in the run (per K step).
    origin = clip * stride_b + t * (TS * stride_t) + h * (P * stride_h)  # (BLOCK_M,) int64
    if NORMALIZE:  # uint8 pixels are (x, c) interleaved, stride 3 (checked): a constant lets loads vectorize
        origin += w * (P * 3)
        # (pixel/255 - mean)/std folded into one FMA per value: pixel * 1/(255 std[c]) + (-mean[c]/std[c]), the
        # three channels' factors computed once here, picked per value (c = j % 3) in the loop
        std0, std1, std2 = tl.load(Std).to(tl.float32), tl.load(Std + 1).to(tl.float32), tl.load(Std + 2).to(tl.float32)
        scale0, scale1, scale2 = 1.0 / (255.0 * std0), 1.0 / (255.0 * std1), 1.0 / (255.0 * std2)
        shift0 = -tl.load(Mean).to(tl.float32) / std0
        shift1 = -tl.load(Mean + 1).to(tl.float32) / std1
        shift2 = -tl.load(Mean + 2).to(tl.float32) / std2
    else:
        origin += w * (P * stride_w)

    kk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, ROWS * RUN_PAD, BLOCK_K):
        k = k0 + kk  # (BLOCK_K,) position in the padded runs
        run = k // RUN_PAD  # run index in (c, dt, y) order; constant over each aligned group of 16
        j = k % RUN_PAD  # offset inside the run; contiguous over each aligned group of 16
        y = run % P
        dt = (run // P) % TS
        k_off = dt * stride_t + y * stride_h + j
        if not NORMALIZE:  # float frames: one run per channel; uint8 runs hold all three channels
            k_off += (run // (P * TS)) * stride_c
        k_ok = (j < RUN) & (run < ROWS)
        a = tl.load(Frames + origin[:, None] + k_off[None, :], mask=token_ok[:, None] & k_ok[None, :], other=0)
        if NORMALIZE:
            channel = j % 3
            scale = tl.where(channel == 0, scale0, tl.where(channel == 1, scale1, scale2))
            shift = tl.where(channel == 0, shift0, tl.where(channel == 1, shift1, shift2))
            a = a.to(tl.float32) * scale[None, :] + shift[None, :]
        w_off = cols[None, :].to(tl.int64) * (ROWS * RUN_PAD) + k[:, None]  # (BLOCK_K, BLOCK_N)
        b = tl.load(Wp + w_off, mask=col_ok[None, :] & (run < ROWS)[:, None], other=0.0)
        acc = tl.dot(a.to(b.dtype), b, acc, input_precision=DOT_PRECISION)

    acc += tl.load(Bias + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_POS:
        pos = tl.load(Pos + n[:, None] * stride_pos + cols[None, :], mask=token_ok[:, None] & col_ok[None, :],
                      other=0.0)
        acc += pos.to(tl.float32)
    acc = tl.where(token_ok[:, None], acc, float("nan"))
    tl.store(Out + rows[:, None] * D + cols[None, :], acc.to(Out.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


def run_layout(uint8: bool, patch_size: int, tubelet_size: int, pow2: bool = False) -> tuple[int, int, int]:
    """(ROWS, RUN, RUN_PAD): runs per tubelet, values per run, values per padded run (a multiple of RUN_ALIGN; or
    with pow2, a power of two: the layout this one replaced, kept for benchmarks and tests)."""
    P, ts = patch_size, tubelet_size
    rows, run = (ts * P, 3 * P) if uint8 else (3 * ts * P, P)
    return rows, run, max(RUN_ALIGN, triton.next_power_of_2(run)) if pow2 else triton.cdiv(run, RUN_ALIGN) * RUN_ALIGN


@dataclass(frozen=True)
class PreparedWeight:
    """patch_embed's weight in the Triton kernel's layout, for one kind of frames (what prepare_weight returns).
    data: (D, ROWS * RUN_PAD) contiguous, the Conv3d weight's dtype and device."""

    data: torch.Tensor
    uint8: bool  # the layout for uint8 (B, T, H, W, 3) frames; False: float (B, T, 3, H, W)
    patch_size: int
    tubelet_size: int


def prepare_weight(weight: torch.Tensor, uint8: bool, patch_size: int, tubelet_size: int) -> PreparedWeight:
    """The (D, 3*ts*P*P) Conv3d weight re-laid in the kernel's run order, each run zero-padded to RUN_PAD. uint8: the
    layout for uint8 (B, T, H, W, 3) frames (runs (dt, y), values (x, c) interleaved); else for float (B, T, 3, H, W)
    frames (runs (c, dt, y), values x). Build it once (the model does at load) and pass it as
    patch_embed(prepared_weight=...)."""
    return PreparedWeight(_relayout(weight, uint8, patch_size, tubelet_size), bool(uint8), patch_size, tubelet_size)


def _relayout(weight, uint8, patch_size, tubelet_size, pow2: bool = False) -> torch.Tensor:
    """(D, ROWS * RUN_PAD) contiguous; plain torch ops, so torch.compile and CUDA graphs take it along per call."""
    D = weight.shape[0]
    P, ts = patch_size, tubelet_size
    rows, run, run_pad = run_layout(uint8, P, ts, pow2)
    w = weight.reshape(D, 3, ts, P, P)
    if uint8:
        w = w.permute(0, 2, 3, 4, 1).reshape(D, rows, run)
    else:
        w = w.reshape(D, rows, run)
    return torch.nn.functional.pad(w, (0, run_pad - run)).reshape(D, rows * run_pad).contiguous()


def patch_embed_grid(M: int, D: int, block_m: int, block_n: int) -> tuple[int]:
    """One axis: row tiles x feature tiles (CUDA allows 2^31 - 1 blocks along x, 65,535 along y and z)."""
    return (triton.cdiv(M, block_m) * triton.cdiv(D, block_n),)


def _patch_embed_triton(frames, weight, bias, pos_table, mean, std, token_ids, patch_size, tubelet_size,
                        prepared_weight=None, out=None, pow2: bool = False):
    """Launch on checked inputs. Shapes only, no host read of values: traceable by torch.compile, capturable in a
    CUDA graph. prepared_weight: prepare_weight(...).data for these frames (None: re-laid here, a D x K copy).
    `out` (N_kept, D) contiguous in weight's dtype is for tests (NaN-poisoned buffers); pow2 for benchmarks (runs
    padded to a power of two, 48 -> 64 values: the layout before RUN_ALIGN)."""
    channels_last = frames.dtype == torch.uint8
    if channels_last:
        B, T, H, W, _ = frames.shape
        stride_b, stride_t, stride_h, stride_w, stride_c = frames.stride()
    else:
        B, T, _, H, W = frames.shape
        stride_b, stride_t, stride_c, stride_h, stride_w = frames.stride()
    D = weight.shape[0]
    n_h, n_w = H // patch_size, W // patch_size
    N = (T // tubelet_size) * n_h * n_w
    M = token_ids.shape[0] if token_ids is not None else B * N
    if out is None:
        out = torch.empty((M, D), device=frames.device, dtype=weight.dtype)
    if M == 0:
        return out
    rows, run, run_pad = run_layout(channels_last, patch_size, tubelet_size, pow2)
    if prepared_weight is None:
        prepared_weight = _relayout(weight, channels_last, patch_size, tubelet_size, pow2)
    dummy = bias  # stands in for pointers a constexpr switch leaves unused

    def grid(meta):
        return patch_embed_grid(M, D, meta["BLOCK_M"], meta["BLOCK_N"])

    wrap_triton(_patch_embed_kernel)[grid](
        frames, prepared_weight, bias, pos_table if pos_table is not None else dummy,
        mean if mean is not None else dummy, std if std is not None else dummy,
        token_ids if token_ids is not None else dummy, out,
        M, B, D, N, n_h, n_w,
        stride_b, stride_t, stride_c, stride_h, stride_w, pos_table.stride(0) if pos_table is not None else 0,
        P=patch_size, TS=tubelet_size, ROWS=rows, RUN=run, RUN_PAD=run_pad, BLOCK_K=_K_TILE,
        NORMALIZE=channels_last, HAS_IDS=token_ids is not None, HAS_POS=pos_table is not None,
        # fp32 weights: "tf32x3" (three tf32 MMAs, error near fp32 rounding, on the tensor cores), as varlen_attention;
        # plain tf32 keeps a 10-bit mantissa. No effect for fp16/bf16.
        DOT_PRECISION="tf32x3" if weight.dtype == torch.float32 else "tf32",
    )
    return out


def _patch_embed_launcher(frames: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                          pos_table: torch.Tensor | None,
                          mean: torch.Tensor | None, std: torch.Tensor | None, token_ids: torch.Tensor | None,
                          patch_size: int, tubelet_size: int,
                          prepared_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Body of the custom op vmae_fast::patch_embed (inputs already checked)."""
    return _patch_embed_triton(frames, weight, bias, pos_table, mean, std, token_ids, patch_size, tubelet_size,
                               prepared_weight)


def _patch_embed_torch(frames, weight, bias, pos_table, mean, std, token_ids, patch_size, tubelet_size,
                       prepared_weight=None):
    """The plain-torch path (prepared_weight is the Triton layout: not used here)."""
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
    if token_ids is not None:  # gather before the GEMM: dropped tokens cost nothing
        x = x[token_ids]
    out = torch.addmm(bias.to(x.dtype), x.to(weight.dtype), weight.t()) if x.dtype == weight.dtype else \
        torch.addmm(bias.float(), x.float(), weight.float().t())
    if pos_table is None:  # V-JEPA 2: rotary positions, nothing to add
        return out.to(weight.dtype)
    pos = pos_table.unsqueeze(0).expand(B, N, -1).reshape(B * N, -1)
    if token_ids is not None:
        pos = pos[token_ids]
    return (out.float() + pos.float()).to(weight.dtype)


# CPU kernel = the torch path (or the interpreter, TRITON_INTERPRET=1).
patch_embed_op = register_triton_op("patch_embed", _patch_embed_launcher, _patch_embed_torch)


def _check_patch_embed_inputs(frames, weight, bias, pos_table, mean, std, token_ids, patch_size, tubelet_size,
                              check: bool):
    """Shape/dtype/device checks (metadata only); token id values when on the CPU, or on CUDA when `check`."""
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"frames must be a torch.Tensor, got {type(frames).__name__}")
    for name, v in (("patch_size", patch_size), ("tubelet_size", tubelet_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if frames.dtype == torch.uint8:
        if frames.dim() != 5 or frames.shape[-1] != 3:
            raise ValueError(f"uint8 frames must be (B, T, H, W, 3), got shape {tuple(frames.shape)}")
        B, T, H, W, _ = frames.shape
        if mean is None or std is None:
            raise ValueError("uint8 frames need mean and std ((3,) each, in [0, 1] pixel units) to normalize; got "
                             f"mean={'None' if mean is None else tuple(mean.shape)}, "
                             f"std={'None' if std is None else tuple(std.shape)}")
        check_vector("mean", mean, 3, frames.device)
        check_vector("std", std, 3, frames.device)
    elif frames.is_floating_point():
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"float frames must be (B, T, 3, H, W), already normalized, got shape "
                             f"{tuple(frames.shape)}")
        B, T, _, H, W = frames.shape
        if mean is not None or std is not None:
            raise ValueError("float frames are taken as already normalized: pass mean=None and std=None (or pass "
                             "uint8 (B, T, H, W, 3) frames to normalize inside the kernel)")
    else:
        raise TypeError(f"frames must be uint8 (B, T, H, W, 3) or float (B, T, 3, H, W), got {frames.dtype}")
    if T % tubelet_size or H % patch_size or W % patch_size:
        raise ValueError(f"frames of T={T}, H={H}, W={W} do not tile into tubelets of {tubelet_size}x{patch_size}x"
                         f"{patch_size}: T must be divisible by tubelet_size, H and W by patch_size")
    check_last_dim_contiguous("frames", frames)
    if frames.dtype == torch.uint8 and W > 1 and frames.stride(-2) != 3:
        raise ValueError(f"uint8 frames must have contiguous (W, 3) pixels (stride 3 along W), got strides "
                         f"{tuple(frames.stride())} for shape {tuple(frames.shape)}; call .contiguous() first")
    N = (T // tubelet_size) * (H // patch_size) * (W // patch_size)
    K = 3 * tubelet_size * patch_size * patch_size

    check_tensor("weight", weight, ndim=2)
    if weight.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"weight must be float16, bfloat16 or float32 (the output dtype), got {weight.dtype}")
    if weight.shape[1] != K or weight.shape[0] == 0:
        raise ValueError(f"weight must be (D, 3*tubelet_size*patch_size**2) = (D, {K}) (Conv3d weight reshaped to "
                         f"(D, -1)), got shape {tuple(weight.shape)}")
    D = weight.shape[0]
    check_vector("bias", bias, D, frames.device)
    if pos_table is not None:
        check_tensor("pos_table", pos_table, ndim=2)
        if tuple(pos_table.shape) != (N, D):
            raise ValueError(f"pos_table must be (N, D) = ({N}, {D}) for these frames and weight (or None: no "
                             f"position table), got shape {tuple(pos_table.shape)}")
        check_last_dim_contiguous("pos_table", pos_table)
    check_same_device(frames.device, weight=weight, pos_table=pos_table)
    check_last_dim_contiguous("weight", weight)
    if token_ids is not None:
        if not isinstance(token_ids, torch.Tensor):
            raise TypeError(f"token_ids must be an int64 tensor or None, got {type(token_ids).__name__}")
        if token_ids.dtype != torch.int64:
            raise TypeError(f"token_ids must be int64 flat ids b*N + n, got {token_ids.dtype}")
        if token_ids.dim() != 1:
            raise ValueError(f"token_ids must be 1-D (N_kept,), got shape {tuple(token_ids.shape)}")
        check_same_device(frames.device, token_ids=token_ids)
        read_values = token_ids.device.type == "cpu" or check
        if read_values and token_ids.numel() and _host_read_allowed(token_ids):
            lo, hi = int(token_ids.min()), int(token_ids.max())
            if lo < 0 or hi >= B * N:
                raise ValueError(f"token_ids must lie in [0, B*N) = [0, {B * N}) for {B} clips of {N} tokens, "
                                 f"got min {lo}, max {hi}")


def _check_prepared_weight(prepared, frames, weight, patch_size, tubelet_size) -> None:
    uint8 = frames.dtype == torch.uint8
    how = f"prepare_weight(weight, uint8={uint8}, patch_size={patch_size}, tubelet_size={tubelet_size})"
    if not isinstance(prepared, PreparedWeight):
        raise TypeError(f"prepared_weight must be {how} (a PreparedWeight) or None, got {type(prepared).__name__}")
    got = (prepared.uint8, prepared.patch_size, prepared.tubelet_size)
    if got != (uint8, patch_size, tubelet_size):
        raise ValueError(f"prepared_weight must be {how} for these frames, got one prepared for uint8={got[0]}, "
                         f"patch_size={got[1]}, tubelet_size={got[2]}")
    rows, _, run_pad = run_layout(uint8, patch_size, tubelet_size)
    want, data = (weight.shape[0], rows * run_pad), prepared.data
    if tuple(data.shape) != want or data.dtype != weight.dtype or not data.is_contiguous() or \
            data.device != weight.device:
        raise ValueError(f"prepared_weight must be {how} of this weight: contiguous {want} {weight.dtype} on "
                         f"{weight.device}, got {tuple(data.shape)} {data.dtype} on {data.device}")


def patch_embed(frames, weight, bias, pos_table, mean=None, std=None, token_ids=None, *,
                patch_size: int, tubelet_size: int, prepared_weight: PreparedWeight | None = None,
                backend: str = "auto", check: bool = True):
    """frames: uint8 (B, T, H, W, 3) (normalized here with mean/std, (3,) each, in [0, 1] pixel units) or float
    (B, T, 3, H, W) already normalized (mean/std must be None). weight: (D, 3*tubelet_size*patch_size**2), the Conv3d
    weight flattened in (C, t, y, x) order; bias: (D,); pos_table: (N, D) with N = T/ts * H/P * W/P tokens per clip in
    (t, h, w) order, added to every clip's tokens (VideoMAE), or None (V-JEPA 2: no table); token_ids: int64
    (N_kept,) flat ids b*N + n of the kept tokens in output order, or None (all).
    Returns (N_kept, D) in weight's dtype (fp32 accumulation; the tubelet values are rounded to weight's dtype for
    the matrix units, as the unfused Conv3d in that dtype does).

    weight: float16, bfloat16 or float32 (fp32 uses tf32x3 products on the GPU, near-fp32 error). Frames may be strided
    views (e.g. a crop) as long as the last dim is contiguous (uint8: each (W, 3) pixel row contiguous); they are never
    copied. prepared_weight: prepare_weight(weight, uint8=frames.dtype == torch.uint8, ...), the weight in the Triton
    kernel's layout, built once by the caller (the model does at load); None re-lays it per call (a D x K copy,
    2.4 MB for ViT-B). The torch path ignores it.
    check: read token_ids on the host to check 0 <= id < B*N. Free on the CPU (always checked); one sync on CUDA, so
    hot paths (the model) pass check=False (also skipped while torch.compile traces or a CUDA graph is captured). An
    unchecked out-of-range id yields a NaN row and reads nothing out of bounds.
    Raises TypeError (types, dtypes) or ValueError (shapes, strides, devices, values), naming what was got."""
    _check_patch_embed_inputs(frames, weight, bias, pos_table, mean, std, token_ids, patch_size, tubelet_size, check)
    if prepared_weight is not None:
        _check_prepared_weight(prepared_weight, frames, weight, patch_size, tubelet_size)
    if use_triton(backend, frames.device):
        return patch_embed_op(frames, weight, bias, pos_table, mean, std, token_ids, patch_size, tubelet_size,
                              prepared_weight.data if prepared_weight is not None else None)
    return _patch_embed_torch(frames, weight, bias, pos_table, mean, std, token_ids, patch_size, tubelet_size)
