"""qkv_rope (kernels/qkv_rope.py: V-JEPA 2's 3D rotary embedding of q and k, fused with the q/k split of a packed qkv)
against a plain float64 reference written from the formula, on packed varlen batches.

CPU CI: the Triton kernel runs in the interpreter (tests/conftest.py), fp32, fp16 and bf16 (no tl.dot in this kernel;
the interpreter's truncating bf16 store gets one extra rounding step); on a GPU plain pytest runs the same tests
compiled.

Tolerances: fp32 -> |kernel - ref| <= 1e-5 elementwise for O(1) inputs: the angle p * inv_freq is rounded to fp32
(p <= 31, so ~2e-6 rad), the kernel's exp2 differs from the reference's pow by a few ulps, sin/cos/FMA round to
~1e-7; any wrong column, pair, section or position moves outputs by O(1). fp16/bf16 -> flash-attention's rule
max|kernel - ref| <= 2 * max|same formula in that dtype - ref| + atol (atol: one rounding step at the outputs'
magnitude), the baseline being transformers' way (angles, sin/cos and products in the low precision).
"""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch

from tests.helpers.kernel_checks import (
    DEVICE,
    NEEDS_TRITON,
    ON_GPU,
    assert_close,
    assert_close_to_baseline,
    interpreter_bf16_atol,
    poisoned,
)
from vmae_fast.kernels import qkv_rope
from vmae_fast.kernels.qkv_rope import _qkv_rope_torch, _qkv_rope_triton, inverse_frequencies, vjepa2_section

pytestmark = NEEDS_TRITON
FP32_ATOL = 1e-5
# no tl.dot here, so bf16 runs under the interpreter too (its bf16 stores truncate: interpreter_bf16_atol)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def reference(qkv: torch.Tensor, positions: torch.Tensor, section: int, theta: float = 10000.0,
              dtype=torch.float64) -> torch.Tensor:
    """(N, 2, H, d) from the formula, column by column: angle_j = p * theta ** (-(j % half) / half); even j:
    x_j cos - x_{j+1} sin; odd j: x_j cos + x_{j-1} sin; columns past 3 * section unchanged. float64 = the reference;
    a low-precision dtype = the plain baseline (everything computed and rounded in that dtype, as transformers
    does)."""
    x = qkv[:, :2].detach().cpu().to(dtype)
    pos = positions.cpu().to(dtype)
    half = section // 2
    out = x.clone()
    for axis in range(3):
        for j in range(section):
            col = axis * section + j
            inv = torch.tensor(theta, dtype=torch.float64) ** (-(j % half) / half)
            angle = (pos[:, axis] * inv.to(dtype)).view(-1, 1, 1)  # (N, 1, 1)
            partner = x[..., col + 1] if j % 2 == 0 else x[..., col - 1]
            sign = -1.0 if j % 2 == 0 else 1.0
            out[..., col] = x[..., col] * angle.cos() + sign * partner * angle.sin()
    return out


def packed_batch(lengths, heads: int, head_dim: int, dtype, grid=(8, 4, 4), seed: int = 0):
    """A packed varlen batch: qkv (N, 3, H, d) as the view of one (N, 3 H d) GEMM output, and each token's (t, h, w)
    from its clip's own kept ids (clips keep `lengths` tokens of n_t * n_h * n_w, in token order)."""
    g = torch.Generator().manual_seed(seed)
    n_t, n_h, n_w = grid
    N_clip = n_t * n_h * n_w
    ids = torch.cat([torch.randperm(N_clip, generator=g)[:n].sort().values for n in lengths])
    positions = torch.stack((ids // (n_h * n_w), (ids // n_w) % n_h, ids % n_w), dim=1).to(torch.int32)
    flat = torch.randn(len(ids), 3 * heads * head_dim, generator=g).to(dtype)
    return flat.view(len(ids), 3, heads, head_dim).to(DEVICE), positions.to(DEVICE)


# ragged packed batches (the lengths of the clips, as cu_seqlens [0, 1, 16, 79, ...] would give them)
LENGTHS = {"one-clip-1-token": [1], "ragged-1-15-63-100": [1, 15, 63, 100], "two-full-clips": [128, 128]}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", [64, 80, 88, 16], ids=lambda d: f"d{d}")
@pytest.mark.parametrize("lengths", list(LENGTHS.values()), ids=list(LENGTHS))
def test_kernel_matches_reference(lengths, head_dim, dtype):
    heads = 3 if head_dim <= 64 else 2
    qkv, positions = packed_batch(lengths, heads, head_dim, dtype)
    section = vjepa2_section(head_dim)
    out = poisoned((qkv.shape[0], 2, heads, head_dim), dtype)
    _qkv_rope_triton(qkv, positions, section, 10000.0, out=out)
    ref = reference(qkv, positions, section)
    what = f"qkv_rope lengths {lengths} d={head_dim} {dtype} section={section}"
    if dtype == torch.float32:
        assert_close(out, ref, atol=FP32_ATOL, what=what)
    else:
        baseline = reference(qkv, positions, section, dtype=dtype)
        step = 2.0 ** -(10 if dtype == torch.float16 else 7) * ref.abs().max().item()
        assert_close_to_baseline(out, ref, baseline, atol=step + interpreter_bf16_atol(ref, dtype), what=what)


def test_positions_up_to_large_grids_and_theta():
    """Positions up to a 64-frame, 384 px clip (t < 32, h, w < 24) and another theta: still fp32-close."""
    qkv, positions = packed_batch([200, 57], 2, 64, torch.float32, grid=(32, 24, 24), seed=3)
    assert positions.max().item() >= 23
    for theta in (10000.0, 500.0):
        out = qkv_rope(qkv, positions, theta=theta, backend="triton")
        assert_close(out, reference(qkv, positions, 20, theta), atol=FP32_ATOL, what=f"theta {theta}")


def test_strided_qkv_torch_path_public_api_and_registered_op():
    """A qkv that is a strided view (a slice of a wider buffer, heads not adjacent) gives the same result as its
    contiguous copy on both backends; torch.ops.vmae_fast.qkv_rope is the same op; v is never read."""
    g = torch.Generator().manual_seed(5)
    wide = torch.randn(37, 4, 5, 80, generator=g).to(DEVICE)  # (N, groups, H + extra, d)
    qkv = wide[:, 1:, 1:4]  # (37, 3, 3, 80), strides (1600, 400, 80, 1)
    assert not qkv.is_contiguous()
    positions = torch.randint(0, 16, (37, 3), generator=g, dtype=torch.int32).to(DEVICE)
    ref = reference(qkv, positions, vjepa2_section(80))
    assert_close(qkv_rope(qkv, positions, backend="triton"), ref, atol=FP32_ATOL, what="triton strided")
    assert_close(qkv_rope(qkv, positions, backend="torch"), ref, atol=FP32_ATOL, what="torch strided")
    assert_close(torch.ops.vmae_fast.qkv_rope(qkv, positions, 26, 10000.0), ref, atol=FP32_ATOL, what="op")
    nan_v = qkv.clone()
    nan_v[:, 2] = float("nan")
    assert not torch.isnan(qkv_rope(nan_v, positions, backend="triton")).any()


def test_torch_path_equals_transformers_bit_for_bit():
    """The torch path computes the angles as transformers does (float32 arange / half, 1 / theta ** that), so on
    the CPU it equals rotate_queries_or_keys exactly; the reference here is transformers itself."""
    vjepa2 = pytest.importorskip("transformers.models.vjepa2.modeling_vjepa2")
    qkv, positions = packed_batch([40, 9], 2, 64, torch.float32, seed=6)
    qkv, positions = qkv.cpu(), positions.cpu()
    got = _qkv_rope_torch(qkv, positions, 20, 10000.0)
    for group in (0, 1):
        x = qkv[:, group].transpose(0, 1).unsqueeze(0)  # (1, H, N, d), transformers' layout
        want = torch.cat([vjepa2.rotate_queries_or_keys(x[..., a * 20:(a + 1) * 20], positions[:, a].long())
                          for a in range(3)] + [x[..., 60:]], dim=-1)[0].transpose(0, 1)
        assert torch.equal(got[:, group], want)
    assert torch.equal(inverse_frequencies(20, 10000.0), 1.0 / 10000.0 ** (torch.arange(10).float() / 10.0))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_no_tokens(backend):
    qkv = torch.empty(0, 3, 2, 16, device=DEVICE)
    out = qkv_rope(qkv, torch.empty(0, 3, dtype=torch.int32, device=DEVICE), backend=backend)
    assert out.shape == (0, 2, 2, 16)


def test_sections():
    assert [vjepa2_section(d) for d in (16, 24, 64, 80, 88, 128)] == [4, 8, 20, 26, 28, 42]


def _good():
    qkv, positions = packed_batch([3, 4], 2, 16, torch.float32, seed=9)
    return {"qkv": qkv, "positions": positions}


BAD_INPUTS = {
    "qkv 3-D": (lambda a: {"qkv": a["qkv"].flatten(2)}, ValueError, r"qkv must have 4 dims, got shape \(7, 3, 32\)"),
    "qkv two groups": (lambda a: {"qkv": a["qkv"][:, :2]}, ValueError, r"\(N_total, 3, H, d\).*\(7, 2, 2, 16\)"),
    "odd head dim": (lambda a: {"qkv": torch.zeros(7, 3, 2, 15, device=DEVICE)}, ValueError, "even.*d = 15"),
    "qkv int": (lambda a: {"qkv": a["qkv"].long()}, TypeError, "floating-point.*int64"),
    "qkv float64": (lambda a: {"qkv": a["qkv"].double()}, TypeError, "float16, bfloat16 or float32, got torch.float64"),
    "qkv list": (lambda a: {"qkv": a["qkv"].tolist()}, TypeError, "qkv must be a torch.Tensor, got list"),
    "last dim strided": (lambda a: {"qkv": a["qkv"].transpose(2, 3).contiguous().transpose(2, 3)}, ValueError,
                         "contiguous last dim"),
    "positions int64": (lambda a: {"positions": a["positions"].long()}, TypeError, "int32.*got torch.int64"),
    "positions float": (lambda a: {"positions": a["positions"].float()}, TypeError, "int32.*got torch.float32"),
    "positions list": (lambda a: {"positions": a["positions"].tolist()}, TypeError, "positions must be an int32"),
    "positions (N, 2)": (lambda a: {"positions": a["positions"][:, :2]}, ValueError, r"\(7, 3\).*got shape \(7, 2\)"),
    "positions short": (lambda a: {"positions": a["positions"][:5]}, ValueError, r"\(7, 3\).*got shape \(5, 3\)"),
    "positions elsewhere": (lambda a: {"positions": torch.empty(7, 3, dtype=torch.int32, device="meta")},
                            ValueError, "same device.*meta"),
    "section odd": (lambda a: {"section": 3}, ValueError, "section must be even.*got 3"),
    "section too wide": (lambda a: {"section": 6}, ValueError, r"at most d // 3 = 5 .*got 6"),
    "section float": (lambda a: {"section": 4.0}, TypeError, "section must be an int"),
    "theta 1": (lambda a: {"theta": 1.0}, ValueError, "theta must be a finite number > 1, got 1.0"),
    "theta nan": (lambda a: {"theta": math.nan}, ValueError, "theta must be a finite number > 1, got nan"),
    "unknown backend": (lambda a: {"backend": "gpu"}, ValueError, "backend must be one of"),
}


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs(case, backend):
    change, error, message = BAD_INPUTS[case]
    args = {**_good(), "backend": backend}
    args.update(change(args))
    with pytest.raises(error, match=message):
        qkv_rope(**args)


def test_triton_without_interpreter_is_an_error(monkeypatch):
    if ON_GPU:
        pytest.skip("CPU tensors with backend='triton' only make sense under the interpreter")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend='triton' cannot run on cpu"):
        qkv_rope(**_good(), backend="triton")


def test_reference_is_the_pairing_transformers_uses():
    """Guard on the reference itself: it is not a plain rotation. Pair (0, 1) of a section takes the frequencies of
    columns 0 and 1 (inv_freq[0] = 1, inv_freq[1] = theta ** (-1 / half)), so with x = (1, 0, ...) and p = 1 the
    two outputs are cos(1) and sin(theta ** (-1 / half)), not sin(1)."""
    qkv = torch.zeros(1, 3, 1, 16)
    qkv[0, :2, 0, 0] = 1.0
    positions = torch.tensor([[1, 0, 0]], dtype=torch.int32)
    ref = reference(qkv, positions, 4)
    assert math.isclose(ref[0, 0, 0, 0].item(), math.cos(1.0), rel_tol=1e-12)
    assert math.isclose(ref[0, 0, 0, 1].item(), math.sin(10000.0 ** (-1 / 2)), rel_tol=1e-12)
    assert_close(qkv_rope(qkv.to(DEVICE), positions.to(DEVICE), backend="triton"), ref, atol=FP32_ATOL, what="pair")


def test_cu_seqlens_free_packing_matches_per_clip_calls():
    """The op needs no segment structure: rotating a packed batch equals rotating each clip alone."""
    lengths = [5, 1, 30]
    qkv, positions = packed_batch(lengths, 2, 64, torch.float32, seed=11)
    whole = qkv_rope(qkv, positions, backend="triton")
    bounds = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    for a, b in pairwise(bounds):
        assert torch.equal(qkv_rope(qkv[a:b], positions[a:b], backend="triton"), whole[a:b])
