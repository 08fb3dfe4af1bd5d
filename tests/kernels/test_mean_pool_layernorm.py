"""mean_pool_layernorm (Triton, under TRITON_INTERPRET=1 on CPU) against a per-segment float64 loop."""

from __future__ import annotations

from itertools import pairwise

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
from vmae_fast.kernels import mean_pool_layernorm
from vmae_fast.kernels.mean_pool_layernorm import MAX_D, _mean_pool_layernorm_triton

DTYPES = [torch.float32, torch.float16, torch.bfloat16]  # no tl.dot here, so bf16 is fine in the interpreter too


def reference(tokens, cu_seqlens, weight, bias, eps):
    """Loop over segments in float64: mean, then LayerNorm from its formula (or the plain mean without weight)."""
    bounds = cu_seqlens.tolist()
    rows = []
    for a, b in pairwise(bounds):
        m = tokens[a:b].double().mean(0)
        if weight is not None:
            m = (m - m.mean()) / torch.sqrt(((m - m.mean()) ** 2).mean() + eps) * weight.double() + bias.double()
        rows.append(m)
    return torch.stack(rows)


def make(cu, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    cu_seqlens = torch.tensor(cu, dtype=torch.int32, device=DEVICE)
    tokens = (torch.randn(cu[-1], D, generator=g) + torch.randn(D, generator=g)).to(dtype).to(DEVICE)
    weight = (1 + 0.5 * torch.randn(D, generator=g)).to(DEVICE)
    bias = (0.5 * torch.randn(D, generator=g)).to(DEVICE)
    return tokens, cu_seqlens, weight, bias


CASES = [([0, 1, 100, 300], 100), ([0, 37], 1408), ([0, 5, 6, 70, 71], 64), ([0, 3, 4], 1)]


# Forced splits change only how rows are summed (dtype-independent), so they run in fp32 alone.
SPLIT_CASES = [(dtype, None) for dtype in DTYPES] + [(torch.float32, 5)]


@pytest.mark.parametrize("dtype,splits", SPLIT_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("cu,D", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("norm", [True, False], ids=["layernorm", "mean"])
def test_mean_pool_layernorm_matches_reference(cu, D, dtype, norm, splits):
    """`splits` row ranges per segment: 5 leaves trailing ranges empty in the short segments (lengths 1, 3)."""
    tokens, cu_seqlens, weight, bias = make(cu, D, dtype)
    if not norm:
        weight = bias = None
    eps = 1e-5
    ref = reference(tokens, cu_seqlens, weight, bias, eps)
    # Baseline: the torch path (fp32 index_add + F.layer_norm, one rounding to the dtype).
    baseline = mean_pool_layernorm(tokens, cu_seqlens, weight, bias, eps, backend="torch")
    out = poisoned((len(cu) - 1, D), dtype)
    _mean_pool_layernorm_triton(tokens, cu_seqlens, weight, bias, eps, out=out, splits=splits)  # all written?
    atol = 1e-5 if dtype == torch.float32 else interpreter_bf16_atol(ref, dtype)
    assert_close_to_baseline(out, ref, baseline, atol=atol, what=f"mean_pool_layernorm cu={cu} D={D} {dtype}")
    if splits is None:
        public = mean_pool_layernorm(tokens, cu_seqlens, weight, bias, eps, backend="triton")
        assert public.dtype == dtype and torch.equal(public, out)


def test_strided_tokens_and_registered_op():
    """A (N, D) column slice of a wider tensor (row stride > D) through torch.ops.vmae_fast.mean_pool_layernorm."""
    wide, cu_seqlens, weight, bias = make([0, 2, 9], 120, torch.float32, seed=1)
    tokens = wide[:, 10:110]
    out = torch.ops.vmae_fast.mean_pool_layernorm(tokens, cu_seqlens, weight[:100], bias[:100], 1e-6)
    assert_close(out, reference(tokens, cu_seqlens, weight[:100], bias[:100], 1e-6), atol=1e-5, what="strided")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's 0/0
def test_unchecked_offsets_never_read_out_of_bounds():
    """What CUDA does with check=False (values not read on the host): an empty segment gives a NaN row, offsets past
    the end are clamped to N_total. Launched directly so the CPU-side value checks do not stop it."""
    tokens = make([0, 6], 32, torch.float32, seed=2)[0]
    cu_seqlens = torch.tensor([0, 0, 4, 99, 1000], dtype=torch.int32, device=DEVICE)
    out = _mean_pool_layernorm_triton(tokens, cu_seqlens, None, None, 1e-5, splits=2)
    assert torch.isnan(out[0]).all(), "empty segment must give NaN"
    assert_close(out[1], tokens[0:4].double().mean(0), atol=1e-6, what="segment [0, 4)")
    assert_close(out[2], tokens[4:6].double().mean(0), atol=1e-6, what="segment [4, 99) clamped to [4, 6)")
    assert torch.isnan(out[3]).all(), "segment [99, 1000) clamped to empty must give NaN"


def _bad_inputs():
    tokens, _, _, _ = make([0, 3, 8], 16, torch.float32, seed=3)
    meta = torch.empty(16, device="meta")
    i32 = torch.int32
    return [
        ("integer tokens", {"tokens": tokens.long()}, TypeError, "int64"),
        ("tokens 3-D", {"tokens": tokens.view(8, 2, 8)}, ValueError, r"\(8, 2, 8\)"),
        ("non-contiguous last dim", {"tokens": tokens.t().contiguous().t()}, ValueError, "contiguous last dim"),
        ("cu_seqlens int64", {"cu_seqlens": torch.tensor([0, 3, 8])}, TypeError, "int32"),
        ("cu_seqlens list", {"cu_seqlens": [0, 3, 8]}, TypeError, "list"),
        ("cu_seqlens not from 0", {"cu_seqlens": torch.tensor([1, 3, 8], dtype=i32)}, ValueError, "start at 0"),
        ("cu_seqlens decreasing", {"cu_seqlens": torch.tensor([0, 5, 3, 8], dtype=i32)}, ValueError, "non-decreasing"),
        ("cu_seqlens past the tokens", {"cu_seqlens": torch.tensor([0, 3, 9], dtype=i32)}, ValueError, "9"),
        ("cu_seqlens 2-D", {"cu_seqlens": torch.tensor([[0, 8]], dtype=i32)}, ValueError, r"\(1, 2\)"),
        ("cu_seqlens on another device", {"cu_seqlens": torch.tensor([0, 8], dtype=i32, device="meta")},
         ValueError, "meta"),
        ("empty segment", {"cu_seqlens": torch.tensor([0, 3, 3, 8], dtype=i32)}, ValueError, "empty segments"),
        ("weight without bias", {"bias": None}, ValueError, "both"),
        ("weight wrong length", {"weight": torch.ones(15)}, ValueError, r"\(16,\), got \(15,\)"),
        ("bias on another device", {"bias": meta}, ValueError, "meta"),
        ("negative eps", {"eps": -1e-5}, ValueError, "eps"),
        ("too wide for triton", {"tokens": torch.ones(8, MAX_D + 1), "weight": None, "bias": None},
         ValueError, str(MAX_D)),
    ]


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0])
def test_mean_pool_layernorm_rejects_bad_input(case):
    _, overrides, error, message = case
    tokens, cu_seqlens, weight, bias = make([0, 3, 8], 16, torch.float32, seed=3)
    args = {"tokens": tokens, "cu_seqlens": cu_seqlens, "weight": weight, "bias": bias, "eps": 1e-5,
            "backend": "triton"} | on_device(overrides)
    with pytest.raises(error, match=message):
        mean_pool_layernorm(**args)
