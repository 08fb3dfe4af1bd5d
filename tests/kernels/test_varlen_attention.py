"""varlen_attention (kernels/varlen_attention.py) against a plain fp64 reference that loops over segments.

CPU CI: the Triton kernel runs in the interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before triton imports),
fp32 and fp16 only (the interpreter's bf16 tl.dot is broken), shapes kept small (H = 2, <= 300 tokens).
GPU: `TRITON_INTERPRET=0 python -m pytest tests/kernels/test_varlen_attention.py` runs the same tests compiled, plus
bf16.

Tolerances: fp32 -> |kernel - ref| <= 2e-5 elementwise: fp32 accumulation over <= 300 keys of O(1) values rounds
to ~1e-6 (measured <= 1e-6 on CPU); any indexing or masking bug moves outputs by O(0.1). fp16/bf16 -> flash-attention's
rule max|kernel - ref| <= 2 * max|same math in fp16/bf16 - ref| + atol, atol = twice the dtype's rounding step at the
outputs' magnitude.
"""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest
import torch
import triton

from tests.helpers.kernel_checks import (
    DEVICE,
    NEEDS_TRITON,
    ON_GPU,
    assert_close,
    assert_close_to_baseline,
    max_abs_err,
    poisoned,
)
from vmae_fast.kernels import varlen_attention

va = importlib.import_module("vmae_fast.kernels.varlen_attention")  # the module (the package exports the function)

pytestmark = NEEDS_TRITON
H = 2
FP32_ATOL = 2e-5
DTYPES = [
    torch.float32,
    torch.float16,
    pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
        not ON_GPU, reason="bf16 tl.dot gives garbage under the Triton 3.9 interpreter; runs on a GPU")),
]
# per case: (max abs error, allowed, what the same math in the low precision reaches), printed and checked by
# test_report_errors (-s shows them)
ERRORS: dict[str, tuple[float, float, float | None]] = {}


def reference(q, k, v, cu_seqlens, scale, dtype=torch.float64):
    """Plain attention per segment: einsum + softmax in `dtype` (fp64: the reference; fp16/bf16: the baseline that
    shows how much error the low precision alone costs). Returns (N_total, H, d) in `dtype`, on the CPU."""
    q, k, v = (t.detach().cpu().to(dtype) for t in (q, k, v))
    out = torch.zeros(q.shape, dtype=dtype)
    for a, b in pairwise(cu_seqlens.tolist()):
        scores = torch.einsum("nhd,mhd->hnm", q[a:b], k[a:b]) * scale  # (H, n, n)
        probs = torch.softmax(scores, dim=-1)
        out[a:b] = torch.einsum("hnm,mhd->nhd", probs, v[a:b])
    return out


def packed_qkv(n_total, head_dim, dtype, guard=3, seed=0):
    """q, k, v as strided views of one packed (N_total, 3, H, d) tensor (what the model's qkv projection gives),
    placed inside a larger buffer whose `guard` rows before and after are NaN: a read past either end shows."""
    gen = torch.Generator().manual_seed(seed)
    buf = torch.full((n_total + 2 * guard, 3, H, head_dim), float("nan"), dtype=dtype)
    buf[guard:guard + n_total] = torch.randn(n_total, 3, H, head_dim, generator=gen).to(dtype)
    qkv = buf.to(DEVICE)[guard:guard + n_total]  # (N_total, 3, H, d)
    q, k, v = qkv.unbind(1)  # each (N_total, H, d), token stride 3*H*d, head stride d
    return q, k, v


def cu(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)


def check_against_reference(out, q, k, v, cu_seqlens, scale, what):
    ref = reference(q, k, v, cu_seqlens, scale)
    if q.dtype == torch.float32:
        assert_close(out.cpu(), ref, atol=FP32_ATOL, what=what)
        err = max_abs_err(out.cpu(), ref)
        ERRORS[what] = (err, FP32_ATOL, None)
    else:
        baseline = reference(q, k, v, cu_seqlens, scale, dtype=q.dtype)
        step = (ref.to(q.dtype) + 0.3 - 0.3 - ref.to(q.dtype)).abs().max().item()  # rounding at this magnitude
        err = assert_close_to_baseline(out.cpu(), ref, baseline, atol=2 * step, what=what)
        same_math = max_abs_err(baseline, ref)
        ERRORS[what] = (err, 2 * same_math + 2 * step, same_math)
    return err


# ---------------------------------------------------------------------------------------------------------------
# Numerics


@pytest.mark.parametrize("head_dim", [24, 64, 80, 88], ids=lambda d: f"d{d}")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
def test_kernel_matches_reference(dtype, head_dim):
    """cu_seqlens [0, 1, 100, 300] (lengths 1, 99, 200: one-token clip, partial tiles, several key blocks), q/k/v
    strided views of one packed qkv, output buffer poisoned with NaN so an unwritten element fails."""
    cu_seqlens = cu([1, 99, 200])
    q, k, v = packed_qkv(300, head_dim, dtype, seed=head_dim)
    scale = head_dim ** -0.5
    out = poisoned(q.shape, dtype)
    result = va._varlen_attention_triton(q, k, v, cu_seqlens, scale, out=out)
    assert result.data_ptr() == out.data_ptr()
    check_against_reference(out, q, k, v, cu_seqlens, scale, f"{dtype} d={head_dim} [0,1,100,300]")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
def test_awkward_lengths_public_api(dtype):
    """Lengths 1, 15, 63, 100 plus an empty clip, through the public launcher (input checks + triton_op)."""
    lengths = [1, 15, 0, 63, 100]
    cu_seqlens = cu(lengths)
    q, k, v = packed_qkv(sum(lengths), 32, dtype, seed=1)
    out = varlen_attention(q, k, v, cu_seqlens, max(lengths), backend="triton")
    assert out.shape == q.shape and out.dtype == dtype and out.device == q.device and out.is_contiguous()
    check_against_reference(out, q, k, v, cu_seqlens, 32 ** -0.5, f"{dtype} d=32 lengths {lengths}")


@pytest.mark.parametrize("head_dim", [32, 128], ids=lambda d: f"d{d}")
def test_more_head_dims_fp16(head_dim):
    """The other power-of-two head dims (HF ViT-S/16 heads, 128) with a custom scale, one short run of two clips."""
    cu_seqlens = cu([37, 33])
    q, k, v = packed_qkv(70, head_dim, torch.float16, seed=2)
    out = poisoned(q.shape, torch.float16)
    va._varlen_attention_triton(q, k, v, cu_seqlens, 0.3, out=out)
    check_against_reference(out, q, k, v, cu_seqlens, 0.3, f"fp16 d={head_dim} scale 0.3")


@pytest.mark.parametrize("tile", sorted({(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in va._GPU_CONFIGS}),
                         ids=lambda t: f"M{t[0]}-N{t[1]}")
def test_every_gpu_tile_shape(tile, monkeypatch):
    """Each (BLOCK_M, BLOCK_N) of the GPU autotune list computes the same function (the interpreter otherwise only
    runs its own small tile): clips shorter and longer than a tile, d = 80 (two column blocks)."""
    block_m, block_n = tile
    config = triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=4, num_stages=2)
    monkeypatch.setattr(va._varlen_attention_kernel, "configs", [config])  # one config: used as is, no tuning
    cu_seqlens = cu([1, 130, 63, 70])
    q, k, v = packed_qkv(264, 80, torch.float16, seed=7)
    out = poisoned(q.shape, torch.float16)
    va._varlen_attention_triton(q, k, v, cu_seqlens, 80 ** -0.5, out=out)
    check_against_reference(out, q, k, v, cu_seqlens, 80 ** -0.5, f"fp16 d=80 tile {block_m}x{block_n}")


@pytest.mark.skipif(not ON_GPU, reason="long sequences are too slow in the interpreter; runs on a GPU")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
@pytest.mark.parametrize("head_dim", [64, 88], ids=lambda d: f"d{d}")
def test_long_ragged_on_gpu(dtype, head_dim):
    """GPU only: the lengths the model sees (1568 = ViT 16x224, 4096 the longest supported) with ragged neighbours,
    so the autotuned tiles (BLOCK_M up to 128) cross full and partial tiles."""
    lengths = [1568, 1, 784, 4096, 200]
    cu_seqlens = cu(lengths)
    q, k, v = packed_qkv(sum(lengths), head_dim, dtype, seed=3)
    out = poisoned(q.shape, dtype)
    va._varlen_attention_triton(q, k, v, cu_seqlens, head_dim ** -0.5, out=out)
    check_against_reference(out, q, k, v, cu_seqlens, head_dim ** -0.5, f"{dtype} d={head_dim} long ragged")


def test_triton_matches_torch_backend_and_op():
    """backend='triton' == backend='torch' (fp32); torch.ops.vmae_fast.varlen_attention is the same op; a strided
    cu_seqlens view gives the same result (the launcher makes it contiguous before the kernel reads it)."""
    cu_seqlens = cu([20, 44])
    q, k, v = packed_qkv(64, 64, torch.float32, seed=4)
    via_triton = varlen_attention(q, k, v, cu_seqlens, 44, backend="triton")
    via_torch = varlen_attention(q, k, v, cu_seqlens, 44, backend="torch")
    via_op = torch.ops.vmae_fast.varlen_attention(q, k, v, cu_seqlens, 64 ** -0.5)
    strided = torch.stack([cu_seqlens, torch.full_like(cu_seqlens, 10**6)], dim=1)[:, 0]  # stride 2, same values
    via_strided = varlen_attention(q, k, v, strided, 44, backend="triton")
    assert_close(via_strided, via_triton, atol=0.0, what="cu_seqlens as a strided view")
    assert_close(via_triton, via_torch, atol=FP32_ATOL, what="triton vs torch backend")
    assert_close(via_op, via_triton, atol=0.0, what="torch.ops.vmae_fast.varlen_attention vs public launcher")


@pytest.mark.parametrize("lengths", [[30, 30, 30], [5, 0, 40]], ids=["equal", "ragged-with-empty"])
def test_torch_path_matches_reference(lengths):
    """The plain-torch path (CPU default): one batched SDPA when all clips have one length, else a segment loop."""
    cu_seqlens = cu(lengths)
    q, k, v = packed_qkv(sum(lengths), 24, torch.float32, seed=5)
    out = varlen_attention(q, k, v, cu_seqlens, max(lengths), backend="torch")
    check_against_reference(out, q, k, v, cu_seqlens, 24 ** -0.5, f"torch path {lengths}")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_no_tokens(backend):
    """N_total = 0 (every clip empty) returns an empty (0, H, d) tensor on both paths."""
    q, k, v = packed_qkv(0, 32, torch.float32)
    out = varlen_attention(q, k, v, cu([0, 0]), 0, backend=backend)
    assert out.shape == (0, H, 32)


def test_malformed_offsets_stay_in_bounds():
    """Unchecked bad cu_seqlens (what check=False lets through on CUDA) may give meaningless rows but never a read or
    write outside the tensors: q/k/v sit between NaN guard rows, the output between NaN guard rows that must stay NaN,
    and every row the kernel writes must be finite."""
    n_total, head_dim = 40, 32
    q, k, v = packed_qkv(n_total, head_dim, torch.float32, guard=8, seed=6)
    for bad in ([0, 25, 10, 40], [-20, 10, 40], [0, 30, 500], [5, 50, 90], [0, 2**31 - 1]):
        out_buf = poisoned((n_total + 16, H, head_dim), torch.float32)
        out = out_buf[8:8 + n_total]
        va._varlen_attention_triton(q, k, v, torch.tensor(bad, dtype=torch.int32, device=DEVICE), 0.2, out=out)
        assert torch.isnan(out_buf[:8]).all() and torch.isnan(out_buf[8 + n_total:]).all(), f"wrote outside for {bad}"
        written = ~torch.isnan(out).all(dim=(1, 2))
        assert torch.isfinite(out[written]).all(), f"NaN read from a guard row for cu_seqlens {bad}"


def test_head_dim_blocks():
    """Power-of-two column blocks: 80 and 88 split as 64+16 and 64+32 instead of a 128-wide padded tile."""
    got = {d: va.head_dim_blocks(d) for d in (8, 24, 32, 64, 80, 88, 96, 112, 128, 160, 256)}
    assert got == {8: (16, 0), 24: (32, 0), 32: (32, 0), 64: (64, 0), 80: (64, 16), 88: (64, 32), 96: (64, 32),
                   112: (128, 0), 128: (128, 0), 160: (128, 32), 256: (256, 0)}


def test_config_pruning():
    """The GPU autotune list keeps several tiles for bf16 d=64, fewer for fp32 or d=256, and never none."""
    def kept(dtype, head_dim):
        d0, d1 = va.head_dim_blocks(head_dim)
        q = torch.empty(1, 1, head_dim, dtype=dtype)
        return va._prune_configs(va._GPU_CONFIGS, {"Q": q}, BLOCK_D0=d0, BLOCK_D1=d1)

    assert len(kept(torch.bfloat16, 64)) >= 4
    assert all(c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 128 * 64 for c in kept(torch.float32, 128))
    for dtype in (torch.float16, torch.float32):
        for head_dim in (24, 88, 128, 256):
            assert kept(dtype, head_dim), (dtype, head_dim)


def test_traceable_without_host_reads():
    """Without the interpreter the op's launcher must trace with fake tensors (no .item()/.tolist(), no data
    pointer), which is what torch.compile and CUDA-graph capture need, and torch.compile(fullgraph=True) must
    capture the public launcher with check=False. Runs in a fresh process: triton picks the interpreter at import."""
    script = """
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
import vmae_fast.kernels.varlen_attention  # noqa: F401  (the module, for the patch below)
from vmae_fast.kernels import varlen_attention
from vmae_fast.kernels.varlen_attention import varlen_attention_op
import sys
# Pretend the tensors are on CUDA so the public launcher takes the op route; without the interpreter the op's CPU
# kernel is the torch path, so the compiled function still runs here.
sys.modules["vmae_fast.kernels.varlen_attention"].use_triton = lambda backend, device: True
with FakeTensorMode():
    qkv = torch.empty(100, 3, 2, 88, dtype=torch.float16)
    out = varlen_attention_op(*qkv.unbind(1), torch.empty(4, dtype=torch.int32), 0.125)
assert out.shape == (100, 2, 88) and out.dtype == torch.float16, out
calls = []
def backend(gm, example_inputs):
    calls.append([n.target for n in gm.graph.nodes if n.op == "call_function"])
    return gm.forward
@torch.compile(backend=backend, fullgraph=True)
def f(qkv, cu_seqlens):
    return varlen_attention(*qkv.unbind(1), cu_seqlens, 60, backend="triton", check=False)
qkv = torch.randn(100, 3, 2, 64)
cu_seqlens = torch.tensor([0, 1, 40, 100], dtype=torch.int32)
torch.testing.assert_close(f(qkv, cu_seqlens), varlen_attention(*qkv.unbind(1), cu_seqlens, 60, backend="torch"))
assert any(torch.ops.vmae_fast.varlen_attention.default in c for c in calls), calls
print("OK", calls)
"""
    env = {**os.environ, "TRITON_INTERPRET": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parent, check=False)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs: each raises TypeError/ValueError naming what was got, on both backends, before any kernel runs.


def _good():
    q, k, v = packed_qkv(10, 16, torch.float32)
    return {"q": q, "k": k, "v": v, "cu_seqlens": cu([4, 6]), "max_seqlen": 6}


def _other_device_cu(a):
    return {"cu_seqlens": a["cu_seqlens"].to("meta")}


BAD_INPUTS = {
    "cu_seqlens int64": (lambda a: {"cu_seqlens": a["cu_seqlens"].long()}, TypeError, "int32.*got torch.int64"),
    "cu_seqlens list": (lambda a: {"cu_seqlens": [0, 4, 10]}, TypeError, "cu_seqlens must be a torch.Tensor"),
    "cu_seqlens 2-D": (lambda a: {"cu_seqlens": a["cu_seqlens"][None]}, ValueError, r"1-D.*got shape \(1, 3\)"),
    "cu_seqlens single entry": (lambda a: {"cu_seqlens": a["cu_seqlens"][:1]}, ValueError, r"got shape \(1,\)"),
    "cu_seqlens not from 0": (lambda a: {"cu_seqlens": a["cu_seqlens"] + 1}, ValueError, r"start at 0, got .* = 1"),
    "cu_seqlens decreasing": (lambda a: {"cu_seqlens": cu([7, -3, 6])}, ValueError, "non-decreasing.*7 > .*4"),
    "cu_seqlens past the tokens": (lambda a: {"cu_seqlens": cu([4, 7])}, ValueError, r"tokens \(10\), got 11"),
    "cu_seqlens short of the tokens": (lambda a: {"cu_seqlens": cu([4, 5])}, ValueError, r"tokens \(10\), got 9"),
    "cu_seqlens on another device": (_other_device_cu, ValueError, "same device.*got meta"),
    "max_seqlen too small": (lambda a: {"max_seqlen": 5}, ValueError, r"5 is smaller than the longest segment.*\(6\)"),
    "max_seqlen negative": (lambda a: {"max_seqlen": -1}, ValueError, "max_seqlen must be >= 0, got -1"),
    "max_seqlen tensor": (lambda a: {"max_seqlen": torch.tensor(6)}, TypeError, "max_seqlen must be a Python int"),
    "q rank 2": (
        lambda a: {"q": a["q"].flatten(1)},
        ValueError,
        r"q must have shape \(N_total, H, d\), got .*\(10, 32\)",
    ),
    "k rank 4": (lambda a: {"k": a["k"][None]}, ValueError, r"k must have shape .*got shape \(1, 10, 2, 16\)"),
    "q not a tensor": (lambda a: {"q": a["q"].tolist()}, TypeError, "q must be a torch.Tensor, got list"),
    "mismatched tokens": (lambda a: {"k": a["k"][:9]}, ValueError, "mismatched N_total 10 vs 9"),
    "mismatched heads": (lambda a: {"v": a["v"][:, :1]}, ValueError, "mismatched heads 2 vs 1"),
    "mismatched head dims": (lambda a: {"k": a["k"][..., :8]}, ValueError, "mismatched head dim 16 vs 8"),
    "mismatched dtypes": (lambda a: {"v": a["v"].half()}, TypeError, "one dtype.*torch.float32 and v torch.float16"),
    "integer tensors": (
        lambda a: {k: a[k].long() for k in "qkv"},
        TypeError,
        "float16, bfloat16 or float32, got torch.int64",
    ),
    "float64": (lambda a: {k: a[k].double() for k in "qkv"}, TypeError, "got torch.float64"),
    "last dim not contiguous": (
        lambda a: {"q": a["q"].transpose(1, 2).contiguous().transpose(1, 2)},
        ValueError,
        r"q must have a contiguous last dim \(stride 1\), got strides \(32, 1, 2\)",
    ),
    "k on another device": (lambda a: {"k": a["k"].to("meta")}, ValueError, "one device.*k on meta"),
    "softmax_scale nan": (lambda a: {"softmax_scale": float("nan")}, ValueError, "positive finite float.*nan"),
    "softmax_scale negative": (lambda a: {"softmax_scale": -0.1}, ValueError, "positive finite float.*-0.1"),
    "softmax_scale string": (
        lambda a: {"softmax_scale": "0.1"},
        TypeError,
        "softmax_scale must be a float or None, got str",
    ),
}


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs(case, backend):
    change, error, message = BAD_INPUTS[case]
    args = _good()
    args.update(change(args))
    with pytest.raises(error, match=message):
        varlen_attention(**args, backend=backend)


@pytest.mark.parametrize("head_dim", [12, 264], ids=lambda d: f"d{d}")
def test_unsupported_head_dim_on_triton(head_dim):
    """The Triton path needs d % 8 == 0 and d <= 256 (as flash-attention); the torch path takes any d."""
    q, k, v = packed_qkv(6, head_dim, torch.float32)
    with pytest.raises(ValueError, match=f"multiples of 8 up to 256.*got {head_dim}"):
        varlen_attention(q, k, v, cu([6]), 6, backend="triton")
    assert varlen_attention(q, k, v, cu([6]), 6, backend="torch").shape == q.shape


def test_values_checked_on_cpu_even_with_check_false():
    """check=False only skips the host read for CUDA tensors; CPU offsets are free to read and always checked."""
    args = _good()
    args["cu_seqlens"] = cu([4, 7])
    with pytest.raises(ValueError, match="got 11"):
        varlen_attention(**args, check=False)


def test_triton_without_interpreter_is_an_error(monkeypatch):
    """backend='triton' on CPU tensors without TRITON_INTERPRET=1 raises instead of falling back silently."""
    if ON_GPU:
        pytest.skip("CPU tensors with backend='triton' only make sense under the interpreter")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend='triton' cannot run on cpu"):
        varlen_attention(**_good(), backend="triton")


def test_report_errors():
    """Prints the max abs errors the numerics tests reached (run with -s) and asserts what it prints: every case
    recorded a finite error within its allowance, fp32 cases within FP32_ATOL, low-precision cases within twice what
    the same math in that precision reaches (plus rounding). Runs after the numerics tests of this module (pytest
    keeps file order); alone (or on an xdist worker that ran none of them) there is nothing to check."""
    if not ERRORS:
        pytest.skip("no numerics test of this module ran in this process before it")
    for what, (err, allowed, same_math) in sorted(ERRORS.items()):
        extra = f", same math in low precision {same_math:.3g}" if same_math is not None else ""
        print(f"{what}: max abs err {err:.3g} (allowed {allowed:.3g}{extra})")
        assert math.isfinite(err) and 0 <= err <= allowed, f"{what}: error {err} not within {allowed}"
        assert (same_math is None) == (allowed == FP32_ATOL), f"{what}: fp32 cases use FP32_ATOL, the others a baseline"
    assert any(same_math is None for _, _, same_math in ERRORS.values()), "no fp32 case recorded"
