"""Helpers for the kernel tests: where the kernels run (the one decision, shared with conftest.py), NaN-poisoned
buffers, and a closeness check that says where and by how much it failed."""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers.kernel_target import kernel_target

# The same tests run on CPU under the interpreter (CI) and compiled on a GPU (plain `pytest` there).
DEVICE = torch.device(kernel_target(torch.cuda.is_available(), os.environ.get("TRITON_INTERPRET"))[0])
ON_GPU = DEVICE.type == "cuda"
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
TRITON_RUNS = ON_GPU or INTERPRETED
# Module-level mark of the tests that launch Triton kernels: only the odd TRITON_INTERPRET=0 on a machine without a
# GPU leaves them nowhere to run.
NEEDS_TRITON = pytest.mark.skipif(not TRITON_RUNS, reason="Triton kernels need a CUDA GPU or TRITON_INTERPRET=1 (the "
                                                          "interpreter on CPU); TRITON_INTERPRET=0 without a GPU")


def interpreter_bf16_atol(ref: torch.Tensor, dtype: torch.dtype) -> float:
    """The Triton 3.9 interpreter casts fp32 -> bf16 by truncation, not round-to-nearest (seen: 4.59217 -> 4.5625,
    torch gives 4.59375), so on CPU a bf16 store may be one ulp off: allow 2^-7 * max|ref| there, nothing on a GPU."""
    if dtype != torch.bfloat16 or ON_GPU:
        return 0.0
    return 2.0 ** -7 * ref.abs().max().item()


def on_device(overrides: dict) -> dict:
    """Move the CPU tensors of a bad-input case to DEVICE (tensors on 'meta' stay: they test device mismatches), so
    the same case raises the same error when the tests run on a GPU."""
    return {k: v.to(DEVICE) if isinstance(v, torch.Tensor) and v.device.type == "cpu" else v
            for k, v in overrides.items()}


def poisoned(shape, dtype, device=DEVICE) -> torch.Tensor:
    """An output buffer full of NaN: an element the kernel never writes stays NaN and fails the comparison."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def max_abs_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return (out.double() - ref.double()).abs().max().item() if out.numel() else 0.0


def assert_close(out: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float = 0.0, what: str = "") -> None:
    """|out - ref| <= atol + rtol * |ref| elementwise, NaN never passes; on failure name the first bad index, the
    values there and the max abs/rel errors."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    out64, ref64 = out.double().cpu(), ref.double().cpu()
    err = (out64 - ref64).abs()
    bad = ~(err <= atol + rtol * ref64.abs())  # NaN compares False, so it is bad
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0])
        finite = ~torch.isnan(err)
        max_abs = err[finite].max().item() if finite.any() else float("nan")
        max_rel = (err[finite] / ref64.abs()[finite].clamp_min(1e-12)).max().item() if finite.any() else float("nan")
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {out.numel()} elements off (atol {atol:g}, rtol {rtol:g}); first at "
            f"{first}: got {out64[first].item():.6g}, want {ref64[first].item():.6g}; "
            f"NaN count {int(torch.isnan(out64).sum())}; max abs err {max_abs:.3g}, max rel err {max_rel:.3g}")


def assert_close_to_baseline(out: torch.Tensor, ref: torch.Tensor, baseline: torch.Tensor, atol: float,
                             what: str = "") -> float:
    """flash-attention's rule for low precision: max|out - ref| <= 2 * max|baseline - ref| + atol, where `ref` is the
    fp64/fp32 reference and `baseline` the same computation done plainly in the low-precision dtype. Returns the
    kernel's max abs error (for reporting)."""
    allowed = 2 * max_abs_err(baseline, ref) + atol
    assert_close(out, ref, atol=allowed, what=f"{what} (allowed = 2 x baseline err + {atol:g} = {allowed:.3g})")
    return max_abs_err(out, ref)
