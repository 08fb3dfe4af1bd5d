"""layer_norm (Triton, under TRITON_INTERPRET=1 on CPU) against a float64 LayerNorm written from its formula."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.kernel_checks import (
    DEVICE,
    assert_close,
    assert_close_to_baseline,
    interpreter_bf16_atol,
    on_device,
    poisoned,
)
from vmae_fast.kernels import layer_norm
from vmae_fast.kernels.layer_norm import MAX_D, _launch

DTYPES = [torch.float32, torch.float16, torch.bfloat16]  # no tl.dot here, so bf16 is fine in the interpreter too


def reference(x, weight, bias, eps, residual=None):
    """float64 LayerNorm of x (+ residual rounded to x's dtype first, as the unfused model computes it)."""
    if residual is not None:
        x = x + residual
    x = x.double()
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight.double()
    if bias is not None:
        y = y + bias.double()
    return y


def make(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = shape[-1]
    x = (torch.randn(shape, generator=g) * 2 + 0.5).to(dtype).to(DEVICE)
    residual = torch.randn(shape, generator=g).to(dtype).to(DEVICE)
    weight = (1 + 0.5 * torch.randn(D, generator=g)).to(DEVICE)
    bias = (0.5 * torch.randn(D, generator=g)).to(DEVICE)
    return x, residual, weight, bias


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(7, 100), (2, 3, 64), (3, 1408), (1, 1)], ids=str)
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
def test_layer_norm_matches_reference(shape, dtype, with_residual):
    x, residual, weight, bias = make(shape, dtype)
    eps = 1e-6
    r = residual if with_residual else None
    ref = reference(x, weight, bias, eps, r)
    # Baseline: the same LayerNorm done plainly by torch in the low-precision dtype (stats in fp32, one rounding).
    baseline = torch.nn.functional.layer_norm(((x + r) if with_residual else x).float(), (shape[-1],),
                                              weight, bias, eps).to(dtype)
    out = layer_norm(x, weight, bias, eps, r, backend="triton")
    y = out[0] if with_residual else out
    assert y.dtype == dtype and y.shape == x.shape
    atol = 1e-5 if dtype == torch.float32 else interpreter_bf16_atol(ref, dtype)
    assert_close_to_baseline(y, ref, baseline, atol=atol, what=f"layer_norm y {shape} {dtype}")
    if with_residual:  # the unfused sum bit for bit (up to the interpreter's bf16 truncation on CPU)
        assert_close(out[1], x + residual, atol=interpreter_bf16_atol(x + residual, dtype), what="x + residual")


def test_layer_norm_every_element_written_and_strided_rows():
    """NaN-poisoned outputs; 2-D input whose rows are strided (a column slice of a wider tensor)."""
    dtype = torch.float16
    wide, residual, weight, bias = make((9, 160), dtype, seed=1)
    x = wide[:, :100]  # row stride 160, last dim contiguous
    r = residual[:, 20:120]
    y, s = poisoned((9, 100), dtype), poisoned((9, 100), dtype)
    _launch(x, r, weight[:100], bias[:100], 1e-5, y=y, s=s)
    assert_close(s, x + r, atol=0, what="x + residual")
    assert_close(y, reference(x, weight[:100], bias[:100], 1e-5, r), atol=4e-3, what="strided layer_norm")
    y2 = layer_norm(x, weight[:100], bias[:100], 1e-5, r, backend="triton")[0]
    assert torch.equal(y, y2)


def test_layer_norm_without_affine_and_torch_path_agree():
    x, _, _, _ = make((5, 3, 48), torch.float32, seed=2)
    ref = reference(x, None, None, 1e-5)
    assert_close(layer_norm(x, None, None, 1e-5, backend="triton"), ref, atol=1e-5, what="no affine, triton")
    assert_close(layer_norm(x, None, None, 1e-5, backend="torch"), ref, atol=1e-5, what="no affine, torch")


def test_layer_norm_registered_op_runs():
    """torch.ops.vmae_fast.layer_norm / add_layer_norm: on CPU their kernel is the interpreter (or the torch path)."""
    x, residual, weight, bias = make((4, 40), torch.float32, seed=3)
    y = torch.ops.vmae_fast.layer_norm(x, weight, bias, 1e-5)
    y2, s = torch.ops.vmae_fast.add_layer_norm(x, residual, weight, bias, 1e-5)
    assert_close(y, reference(x, weight, bias, 1e-5), atol=1e-5, what="op layer_norm")
    assert_close(y2, reference(x, weight, bias, 1e-5, residual), atol=1e-5, what="op add_layer_norm")
    assert torch.equal(s, x + residual)


def _bad_inputs():
    x, residual, _weight, _bias = make((4, 32), torch.float32, seed=4)
    meta = torch.empty(32, device="meta")
    return [
        ("integer x", {"x": torch.ones(4, 32, dtype=torch.int32)}, TypeError, "torch.int32"),
        ("x not a tensor", {"x": [[1.0] * 32]}, TypeError, "list"),
        ("weight wrong length", {"weight": torch.ones(31)}, ValueError, r"\(32,\), got \(31,\)"),
        ("bias wrong length", {"bias": torch.ones(33)}, ValueError, r"\(32,\), got \(33,\)"),
        ("weight 2-D", {"weight": torch.ones(1, 32)}, ValueError, r"\(1, 32\)"),
        ("integer weight", {"weight": torch.ones(32, dtype=torch.int64)}, TypeError, "int64"),
        ("residual shape", {"residual": torch.ones(4, 33)}, ValueError, r"\(4, 33\)"),
        ("residual dtype", {"residual": residual.half()}, ValueError, "float16"),
        ("weight on another device", {"weight": meta}, ValueError, "meta"),
        ("non-contiguous last dim", {"x": x.t().contiguous().t()}, ValueError, "contiguous last dim"),
        ("non-contiguous weight", {"weight": torch.ones(64)[::2]}, ValueError, "contiguous"),
        ("negative eps", {"eps": -1.0}, ValueError, "eps"),
        ("unknown backend", {"backend": "cuda"}, ValueError, "backend"),
        ("too wide for triton", {"x": torch.ones(1, MAX_D + 1), "weight": None, "bias": None, "residual": None},
         ValueError, str(MAX_D)),
        ("zero-width rows", {"x": torch.ones(3, 0), "weight": None, "bias": None, "residual": None},
         ValueError, r"\(3, 0\)"),
    ]


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0])
def test_layer_norm_rejects_bad_input(case):
    _, overrides, error, message = case
    x, residual, weight, bias = make((4, 32), torch.float32, seed=4)
    args = {"x": x, "weight": weight, "bias": bias, "eps": 1e-5, "residual": residual, "backend": "triton"}
    args |= on_device(overrides)
    with pytest.raises(error, match=message):
        layer_norm(**args)


def test_forcing_triton_where_it_cannot_run_is_an_error():
    with pytest.raises(ValueError, match="cannot run on meta"):
        layer_norm(torch.empty(2, 8, device="meta"), None, None, 1e-5, backend="triton")
