"""Backend choice shared by every op: CUDA tensors -> Triton, CPU tensors -> plain torch,
TRITON_INTERPRET=1 lets the Triton path run on CPU. Forcing Triton where it cannot run is an error.
Also the small input checks every launcher repeats, and the torch.library registration of the ops."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from .._options import KERNEL_BACKENDS


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# triton.jit picks the interpreter when a kernel is decorated (at import), not when it is launched.
_INTERPRETED_AT_IMPORT = interpreter_enabled()


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(backend: str, device: torch.device) -> bool:
    """True when the op should launch its Triton kernel for tensors on `device`."""
    if backend not in KERNEL_BACKENDS:
        raise ValueError(f"backend must be one of {KERNEL_BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    interpreting = interpreter_enabled() and _INTERPRETED_AT_IMPORT
    runnable = triton_available() and (device.type == "cuda" or (device.type == "cpu" and interpreting))
    if backend == "triton" and not runnable:
        raise ValueError(
            f"backend='triton' cannot run on {device}: Triton needs CUDA tensors, or TRITON_INTERPRET=1 set before "
            f"vmae_fast.kernels is imported for CPU tensors (triton importable: {triton_available()})"
        )
    return runnable if backend == "triton" else device.type == "cuda" and runnable


# ---------------------------------------------------------------------------------------------------------------
# Input checks: metadata only (shape, dtype, device, strides), so they never synchronize with the GPU.


def check_tensor(name: str, t, *, ndim: int | None = None, floating: bool = True) -> None:
    """`t` is a tensor (TypeError), of rank `ndim` (ValueError), floating point when `floating` (TypeError)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float32, float16 or bfloat16), got {t.dtype}")


def check_same_device(device: torch.device, **tensors) -> None:
    """Every non-None tensor lives on `device` (ValueError naming the first that does not)."""
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise ValueError(f"{name} must be on the same device as the input ({device}), got {t.device}")


def check_last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    """The kernels read the last dim as one contiguous run (vector loads); other dims may be strided."""
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must have a contiguous last dim (stride 1), got strides {tuple(t.stride())} "
                         f"for shape {tuple(t.shape)}; call .contiguous() first")


def check_vector(name: str, t, length: int, device: torch.device) -> None:
    """A (length,) floating-point tensor on `device` (LayerNorm weight/bias, per-channel mean/std)."""
    check_tensor(name, t, ndim=1)
    if t.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got {tuple(t.shape)}")
    check_same_device(device, **{name: t})
    check_last_dim_contiguous(name, t)


# ---------------------------------------------------------------------------------------------------------------
# torch.library registration


def wrap_triton(kernel):
    """What an op body launches, `wrap_triton(kernel)[grid](...)`: torch.library.wrap_triton(kernel), so that
    torch.compile / make_fx trace the launch into the graph, except under the interpreter, where the kernel itself is
    launched. An interpreted kernel (triton.jit returns an InterpretedFunction there, not a JITFunction) cannot be
    traced anyway; torch >= 2.13 hands it back unchanged, but torch 2.11 / 2.12 reject it ("wrap_triton only works on
    functions annotated with triton.jit or triton.autotune") or fail on an interpreted autotuner, so the choice is
    made here, the same on every torch."""
    if _INTERPRETED_AT_IMPORT:
        return kernel
    return torch.library.wrap_triton(kernel)


def cuda_build() -> bool:
    """torch was built with CUDA (or ROCm): CUDA tensors, and so the Triton route, can exist in this process."""
    return torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None


def register_triton_op(name: str, launcher: Callable, torch_impl: Callable):
    """Register `launcher` (shape-only Python + wrap_triton(kernel)[grid](...), wrap_triton from this module) as the
    custom op `vmae_fast::<name>`
    so torch.compile sees the Triton kernel and CUDA graphs capture it. Its CPU kernel is `torch_impl` (same
    arguments), or the launcher itself when kernels run in the Triton interpreter (TRITON_INTERPRET=1), which is how
    CPU tests reach the op route. Under the interpreter wrap_triton (above) hands back the plain interpreted kernel, so
    the op runs eagerly there but cannot be traced (FakeTensor / torch.compile of the Triton route need a GPU); on the
    CPU torch.compile traces the public functions' torch path instead. Returns the op (callable like the launcher).

    A CPU-only torch build without the interpreter registers the same op (name, schema, CPU kernel, fake kernel) as a
    plain torch.library.custom_op: no Triton kernel can run in such a process, and triton_op's search for the kernels
    inside the launcher imports torch._inductor and torch._dynamo, ~1.3 s of every CPU process's start (the local
    engine's, each Ray actor's) for nothing. The model's CPU forward never calls the ops (the public functions take
    their torch path), so that process never imports torch._dynamo (tests/kernels/test_dispatch.py)."""
    if _INTERPRETED_AT_IMPORT or cuda_build():
        op = torch.library.triton_op(f"vmae_fast::{name}", launcher, mutates_args=())
    else:
        op = torch.library.custom_op(f"vmae_fast::{name}", launcher, mutates_args=())
        op.register_fake(launcher)

    def cpu_kernel(*args):
        return launcher(*args) if _INTERPRETED_AT_IMPORT else torch_impl(*args)

    op.register_kernel("cpu")(cpu_kernel)
    return op
