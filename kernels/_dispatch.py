"""Backend choice shared by every op: CUDA tensors -> Triton, CPU tensors -> plain torch,
TRITON_INTERPRET=1 lets the Triton path run on CPU. Forcing Triton where it cannot run is an error."""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "torch")


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(backend: str, device: torch.device) -> bool:
    """True when the op should launch its Triton kernel for tensors on `device`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    runnable = triton_available() and (device.type == "cuda" or (device.type == "cpu" and interpreter_enabled()))
    if backend == "triton" and not runnable:
        raise ValueError(
            f"backend='triton' cannot run on {device}: Triton needs CUDA tensors, or TRITON_INTERPRET=1 for CPU "
            f"tensors (triton importable: {triton_available()})"
        )
    return runnable if backend == "triton" else device.type == "cuda" and runnable
