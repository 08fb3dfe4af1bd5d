"""patch_embed (Triton, under TRITON_INTERPRET=1 on CPU) against normalize + F.conv3d + flatten + pos + gather."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers.kernel_checks import (
    DEVICE,
    NEEDS_TRITON,
    ON_GPU,
    assert_close,
    assert_close_to_baseline,
    on_device,
    poisoned,
)
from vmae_fast.kernels import patch_embed
from vmae_fast.kernels.patch_embed import _patch_embed_triton, patch_embed_grid, prepare_weight, run_layout

pytestmark = NEEDS_TRITON

MEAN = (0.485, 0.456, 0.406)  # ImageNet, as the original checkpoints
STD = (0.229, 0.224, 0.225)
# The Triton 3.9 interpreter's bf16 tl.dot returns garbage (DESIGN.md), so bf16 runs on a GPU only.
DTYPES = [torch.float32, torch.float16,
          pytest.param(torch.bfloat16, marks=pytest.mark.skipif(not ON_GPU, reason="interpreter bf16 tl.dot broken"))]


def normalized(frames_u8, mean, std):
    """uint8 (B, T, H, W, 3) -> float64 (B, T, 3, H, W), /255 then (x - mean) / std."""
    x = frames_u8.permute(0, 1, 4, 2, 3).double() / 255
    return (x - mean.double().view(1, 1, 3, 1, 1)) / std.double().view(1, 1, 3, 1, 1)


def reference(x, weight4, bias, pos_table, token_ids, P, ts, dtype=torch.float64):
    """Conv3d patch embedding as VideoMAE's PatchEmbed, computed in `dtype` (float64 = the reference; a low precision
    dtype = the plain baseline: inputs rounded to it, fp32 math, one rounding of the output)."""
    if dtype != torch.float64:
        x, weight4, bias = x.to(dtype).float(), weight4.to(dtype).float(), bias.to(dtype).float()
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    y = F.conv3d(x.transpose(1, 2).to(compute), weight4.to(compute), bias.to(compute), stride=(ts, P, P))
    y = y.flatten(2).transpose(1, 2) + pos_table.to(compute)  # (B, N, D), tokens in (t, h, w) order
    y = y.reshape(-1, y.shape[-1])
    y = y if token_ids is None else y[token_ids]
    return y if dtype == torch.float64 else y.to(dtype)


def make(B, T, H, W, P, ts, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    K = 3 * ts * P * P
    frames = torch.randint(0, 256, (B, T, H, W, 3), generator=g, dtype=torch.uint8)
    weight4 = torch.randn(D, 3, ts, P, P, generator=g) * K ** -0.5
    bias = torch.randn(D, generator=g) * 0.1
    N = (T // ts) * (H // P) * (W // P)
    pos_table = torch.randn(N, D, generator=g)
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    return [t.to(DEVICE) for t in (frames, weight4.to(dtype), bias.to(dtype), pos_table, mean, std)]


# (B, T, H, W, patch, tubelet, D): patch 14 and 16, tubelet 1 and 2, K = 1176 / 1536 / 768 / 588 (masked K loop),
# D = 100 and 1408 (not powers of two) and 48, non-square frames.
SHAPES = {
    "p14-t2-D100": (2, 4, 28, 42, 14, 2, 100),
    "p16-t2-D48": (2, 2, 32, 32, 16, 2, 48),
    "p16-t1-D100": (1, 3, 32, 48, 16, 1, 100),
    "p14-t1-D1408": (1, 1, 28, 14, 14, 1, 1408),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("keep", ["all", "subset"])
def test_uint8_frames_match_conv3d(shape, dtype, keep):
    B, T, H, W, P, ts, D = shape
    frames, weight4, bias, pos_table, mean, std = make(B, T, H, W, P, ts, D, dtype)
    N = pos_table.shape[0]
    g = torch.Generator().manual_seed(1)
    # A subset in shuffled order, clips of the batch mixed: the output follows token_ids' order.
    token_ids = None if keep == "all" else torch.randperm(B * N, generator=g)[: max(1, B * N // 2)].to(DEVICE)
    x = normalized(frames, mean, std)
    ref = reference(x, weight4, bias, pos_table, token_ids, P, ts)
    baseline = reference(x, weight4, bias, pos_table, token_ids, P, ts, dtype=dtype)
    M = B * N if token_ids is None else token_ids.numel()
    out = poisoned((M, D), dtype)
    _patch_embed_triton(frames, weight4.reshape(D, -1), bias, pos_table, mean, std, token_ids, P, ts, out=out)
    atol = 1e-4 if dtype == torch.float32 else 0.0  # fp32: K ~ 1e3 products of O(1) terms in fp32
    assert_close_to_baseline(out, ref, baseline, atol=atol, what=f"patch_embed uint8 {shape} {keep} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [SHAPES["p14-t2-D100"], SHAPES["p16-t1-D100"]], ids=["p14-t2", "p16-t1"])
def test_float_frames_match_conv3d(shape, dtype):
    """Already-normalized (B, T, 3, H, W) frames (HF pixel_values layout) in the weight's dtype."""
    B, T, H, W, P, ts, D = shape
    frames, weight4, bias, pos_table, mean, std = make(B, T, H, W, P, ts, D, dtype, seed=2)
    x = normalized(frames, mean, std).to(dtype).contiguous()
    token_ids = torch.tensor([3, 0, pos_table.shape[0] * B - 1], device=DEVICE)
    ref = reference(x, weight4, bias, pos_table, token_ids, P, ts)
    baseline = reference(x, weight4, bias, pos_table, token_ids, P, ts, dtype=dtype)
    out = poisoned((3, D), dtype)
    _patch_embed_triton(x, weight4.reshape(D, -1), bias, pos_table, None, None, token_ids, P, ts, out=out)
    atol = 1e-4 if dtype == torch.float32 else 0.0
    assert_close_to_baseline(out, ref, baseline, atol=atol, what=f"patch_embed float {shape} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("uint8", [True, False], ids=["uint8", "float"])
def test_no_position_table(uint8, dtype):
    """pos_table=None (V-JEPA 2: rotary positions, nothing added): Conv3d + bias only, on the Triton kernel (a
    NaN-poisoned output), the torch path and the registered op."""
    B, T, H, W, P, ts, D = SHAPES["p16-t2-D48"]
    frames, weight4, bias, pos_table, mean, std = make(B, T, H, W, P, ts, D, dtype, seed=6)
    zeros = torch.zeros_like(pos_table)
    x = normalized(frames, mean, std)
    token_ids = torch.tensor([5, 0, 2], device=DEVICE)
    ref = reference(x, weight4, bias, zeros, token_ids, P, ts)
    baseline = reference(x, weight4, bias, zeros, token_ids, P, ts, dtype=dtype)
    inputs = (frames, mean, std) if uint8 else (x.to(dtype).contiguous(), None, None)
    out = poisoned((3, D), dtype)
    _patch_embed_triton(inputs[0], weight4.reshape(D, -1), bias, None, inputs[1], inputs[2], token_ids, P, ts, out=out)
    atol = 1e-4 if dtype == torch.float32 else 0.0
    assert_close_to_baseline(out, ref, baseline, atol=atol, what=f"patch_embed no pos {dtype}")
    kw = {"patch_size": P, "tubelet_size": ts}
    torch_path = patch_embed(inputs[0], weight4.reshape(D, -1), bias, None, inputs[1], inputs[2], token_ids,
                             backend="torch", **kw)
    assert_close_to_baseline(torch_path, ref, baseline, atol=atol, what="torch path no pos")
    op = torch.ops.vmae_fast.patch_embed(inputs[0], weight4.reshape(D, -1), bias, None, inputs[1], inputs[2],
                                         token_ids, P, ts)
    assert_close_to_baseline(op, ref, baseline, atol=atol, what="registered op no pos")


def test_strided_frames_and_torch_path_and_registered_op():
    """A crop view of bigger frames (strides, no copy) gives the same tokens as the cropped copy; the torch path and
    torch.ops.vmae_fast.patch_embed agree with the reference."""
    B, T, H, W, P, ts, D = 1, 2, 32, 16, 16, 2, 40
    frames, weight4, bias, pos_table, mean, std = make(B, T, H + 5, W + 3, P, ts, D, torch.float32, seed=3)
    crop = frames[:, :, 2:2 + H, 1:1 + W, :]
    ref = reference(normalized(crop, mean, std), weight4, bias, pos_table[: (T // ts) * 2], None, P, ts)
    w2 = weight4.reshape(D, -1)
    pos = pos_table[: ref.shape[0]].contiguous()
    kw = {"patch_size": P, "tubelet_size": ts}
    out = patch_embed(crop, w2, bias, pos, mean, std, backend="triton", **kw)
    assert out.dtype == torch.float32
    assert_close(out, ref, atol=1e-4, what="crop")
    assert_close(patch_embed(crop, w2, bias, pos, mean, std, backend="torch", **kw), ref, atol=1e-4, what="torch")
    op = torch.ops.vmae_fast.patch_embed(crop, w2, bias, pos, mean, std, None, P, ts)
    assert_close(op, ref, atol=1e-4, what="registered op")


def test_unchecked_token_ids_give_nan_rows_not_out_of_bounds_reads():
    """What CUDA does with check=False: ids outside [0, B*N) read nothing and give NaN rows; the others are right."""
    B, T, H, W, P, ts, D = 1, 2, 16, 16, 16, 2, 24
    frames, weight4, bias, pos_table, mean, std = make(B, T, H, W, P, ts, D, torch.float32, seed=4)
    token_ids = torch.tensor([0, -5, 1, 1 << 40], device=DEVICE)  # N = 1: only id 0 is valid
    out = _patch_embed_triton(frames, weight4.reshape(D, -1), bias, pos_table, mean, std, token_ids, P, ts)
    ref = reference(normalized(frames, mean, std), weight4, bias, pos_table, None, P, ts)
    assert_close(out[0], ref[0], atol=1e-4, what="valid id")
    assert torch.isnan(out[1:]).all(), "out-of-range ids must give NaN rows"


def _bad_inputs():
    frames, weight4, bias, _, mean, std = make(1, 2, 32, 16, 16, 2, 8, torch.float32, seed=5)
    x = normalized(frames, mean, std).float().contiguous()
    weight = weight4.reshape(8, -1)
    meta = torch.empty(3, device="meta")
    i64 = torch.int64
    return [
        ("frames 4-D", {"frames": frames[0]}, ValueError, r"\(2, 32, 16, 3\)"),
        ("uint8 frames with 4 channels", {"frames": torch.zeros(1, 2, 32, 16, 4, dtype=torch.uint8)},
         ValueError, r"\(1, 2, 32, 16, 4\)"),
        ("int16 frames", {"frames": frames.short()}, TypeError, "int16"),
        ("bool frames", {"frames": frames > 0}, TypeError, "bool"),
        ("frames not a tensor", {"frames": frames.numpy()}, TypeError, "ndarray"),
        ("float frames channels last", {"frames": x.permute(0, 1, 3, 4, 2).contiguous(), "mean": None, "std": None},
         ValueError, r"\(1, 2, 32, 16, 3\)"),
        ("H not divisible by patch", {"frames": frames[:, :, :31]}, ValueError, "H=31"),
        ("W not divisible by patch", {"frames": frames[:, :, :, :15]}, ValueError, "W=15"),
        ("T not divisible by tubelet", {"frames": frames[:, :1]}, ValueError, "T=1"),
        ("weight K mismatch", {"weight": weight[:, :-1]}, ValueError, r"\(D, 1536\).*\(8, 1535\)"),
        ("weight 5-D (not flattened)", {"weight": weight4}, ValueError, r"\(8, 3, 2, 16, 16\)"),
        ("integer weight", {"weight": weight.long()}, TypeError, "int64"),
        ("float64 weight", {"weight": weight.double()}, TypeError, "float64"),
        ("bias wrong length", {"bias": bias[:7]}, ValueError, r"\(8,\), got \(7,\)"),
        ("pos_table wrong rows", {"pos_table": torch.zeros(3, 8)}, ValueError, r"\(2, 8\).*\(3, 8\)"),
        ("pos_table wrong width", {"pos_table": torch.zeros(2, 9)}, ValueError, r"\(2, 8\).*\(2, 9\)"),
        ("uint8 without mean", {"mean": None}, ValueError, "mean"),
        ("uint8 without std", {"std": None}, ValueError, "std"),
        ("mean of 4", {"mean": torch.zeros(4)}, ValueError, r"\(3,\), got \(4,\)"),
        ("integer std", {"std": torch.ones(3, dtype=i64)}, TypeError, "int64"),
        ("float frames with mean/std", {"frames": x}, ValueError, "already normalized"),
        ("token_ids int32", {"token_ids": torch.tensor([0, 1], dtype=torch.int32)}, TypeError, "int32"),
        ("token_ids 2-D", {"token_ids": torch.tensor([[0, 1]])}, ValueError, r"\(1, 2\)"),
        ("token id too large", {"token_ids": torch.tensor([0, 2])}, ValueError, r"\[0, 2\).*max 2"),
        ("negative token id", {"token_ids": torch.tensor([-1, 0])}, ValueError, "min -1"),
        ("token_ids list", {"token_ids": [0, 1]}, TypeError, "list"),
        ("weight on another device", {"weight": torch.empty(8, 1536, device="meta")}, ValueError, "meta"),
        ("mean on another device", {"mean": meta}, ValueError, "meta"),
        ("non-contiguous weight", {"weight": torch.zeros(1536, 8).t()}, ValueError, "contiguous last dim"),
        ("non-contiguous frames", {"frames": frames.transpose(2, 3).contiguous().transpose(2, 3)[..., :1]
                                   .expand(1, 2, 32, 16, 3)}, ValueError, "contiguous last dim"),
        ("uint8 pixels not contiguous", {"frames": torch.zeros(1, 2, 32, 32, 3, dtype=torch.uint8)[:, :, :, ::2]},
         ValueError, "stride 3 along W"),
        ("patch size 0", {"patch_size": 0}, ValueError, "patch_size"),
        ("prepared weight of the float layout", {"prepared_weight": prepare_weight(weight, False, 16, 2)}, ValueError,
         r"prepare_weight\(weight, uint8=True, .*\) for these frames, got one prepared for uint8=False"),
        ("prepared weight in fp16", {"prepared_weight": prepare_weight(weight.half(), True, 16, 2)}, ValueError,
         r"of this weight: contiguous \(8, 1536\) torch.float32 on .*, got \(8, 1536\) torch.float16"),
        ("prepared weight not a tensor", {"prepared_weight": [1.0]}, TypeError, "prepare_weight"),
        ("unknown backend", {"backend": "gpu"}, ValueError, "backend"),
    ]


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0])
def test_patch_embed_rejects_bad_input(case):
    _, overrides, error, message = case
    frames, weight4, bias, pos_table, mean, std = make(1, 2, 32, 16, 16, 2, 8, torch.float32, seed=5)
    args = {"frames": frames, "weight": weight4.reshape(8, -1), "bias": bias, "pos_table": pos_table, "mean": mean,
            "std": std, "token_ids": None, "patch_size": 16, "tubelet_size": 2, "backend": "triton"}
    args |= on_device(overrides)
    with pytest.raises(error, match=message):
        patch_embed(**args)


@pytest.mark.parametrize("uint8", [True, False], ids=["uint8", "float"])
@pytest.mark.parametrize("shape", [SHAPES["p14-t2-D100"], SHAPES["p16-t1-D100"]], ids=["p14-t2", "p16-t1"])
def test_prepared_weight_and_power_of_two_padding_give_the_same_tokens(shape, uint8):
    """The weight laid out once (prepare_weight, what the model does at load) gives bit for bit what the per-call
    layout gives; runs padded to a power of two (the previous layout, 48 -> 64 values) agree to rounding."""
    B, T, H, W, P, ts, D = shape
    frames, weight4, bias, pos_table, mean, std = make(B, T, H, W, P, ts, D, torch.float32, seed=6)
    if not uint8:
        frames, mean, std = normalized(frames, mean, std).float().contiguous(), None, None
    weight = weight4.reshape(D, -1)
    per_call = _patch_embed_triton(frames, weight, bias, pos_table, mean, std, None, P, ts)
    prepared = prepare_weight(weight, uint8, P, ts)
    once = patch_embed(frames, weight, bias, pos_table, mean, std, patch_size=P, tubelet_size=ts,
                       prepared_weight=prepared, backend="triton")
    assert torch.equal(once, per_call)
    pow2 = _patch_embed_triton(frames, weight, bias, pos_table, mean, std, None, P, ts, pow2=True)
    assert_close(pow2, per_call, atol=1e-4, what="runs padded to a power of two vs to 16")


def test_run_layout_pads_runs_to_16_not_to_a_power_of_two():
    """uint8 P=16: 32 runs of 48 values, no padding (a power of two would be 64: 25 % more MMA work); P=14: 42 -> 48
    (12.5 %, instead of 34 %); float P=16: 96 runs of 16."""
    assert run_layout(True, 16, 2) == (32, 48, 48) and run_layout(True, 14, 2) == (28, 42, 48)
    assert run_layout(False, 16, 2) == (96, 16, 16) and run_layout(False, 14, 2) == (84, 14, 16)
    assert run_layout(True, 16, 2, pow2=True) == (32, 48, 64) and run_layout(False, 14, 2, pow2=True) == (84, 14, 16)
    w = torch.arange(2 * 3 * 2 * 4 * 4, dtype=torch.float32).reshape(2, 3 * 2 * 4 * 4)  # D=2, P=4, ts=2
    laid = prepare_weight(w, True, 4, 2)  # runs (dt, y) of (x, c) interleaved values, 12 padded to 16
    laid = laid.data
    assert laid.shape == (2, 8 * 16)
    w5 = w.reshape(2, 3, 2, 4, 4)
    assert laid[1, 16 * 5 + 3 * 2 + 1].item() == w5[1, 1, 1, 1, 2].item()  # run (dt=1, y=1), x=2, c=1
    assert laid.reshape(2, 8, 16)[:, :, 12:].abs().sum() == 0  # zeros in the padding


def test_grid_is_one_axis_so_millions_of_tokens_fit():
    """CUDA caps grid axes 1 and 2 at 65,535 blocks: the row tiles share axis 0 (2^31 - 1) with the feature tiles.
    5 M kept tokens of ViT-B at 64-row tiles are 78,125 row tiles, more than axis 1 allowed."""
    (programs,) = patch_embed_grid(5_000_000, 768, 64, 128)
    assert programs == 78_125 * 6 < 2**31 - 1
    assert len(patch_embed_grid(10, 100, 16, 256)) == 1


@pytest.mark.skipif(not ON_GPU, reason="9 M rows: seconds on a GPU, hours in the interpreter")
def test_more_row_tiles_than_grid_axis_1_allows_on_gpu():
    """M = 9 M rows (> 65,535 tiles of 128 rows): every row is computed (ids repeat one clip's tokens)."""
    frames, weight4, bias, pos_table, mean, std = make(1, 2, 32, 16, 16, 2, 16, torch.float16, seed=7)
    N = pos_table.shape[0]  # 2 tokens
    token_ids = torch.arange(9_000_000, device=DEVICE) % N
    out = _patch_embed_triton(frames, weight4.reshape(16, -1), bias, pos_table, mean, std, token_ids, 16, 2)
    want = reference(normalized(frames, mean, std), weight4, bias, pos_table, None, 16, 2)  # (N, 16) float64
    # every row (the last tiles too) equals its clip token's; the autotuner may pick another tile for 9 M rows than
    # for 2, so fp16 rounding, not bits: 2e-3 of the values' scale
    err = (out.view(-1, N, 16).float() - want.view(1, N, 16).float().to(out.device)).abs().amax(dim=(1, 2))
    assert torch.isfinite(err).all() and err.max().item() <= 2e-3 * want.abs().max().item(), err.max().item()
