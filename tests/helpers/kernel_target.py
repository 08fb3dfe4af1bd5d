"""Where the kernel tests run: the one decision, applied by tests/conftest.py before anything imports triton and read
back by tests/helpers/kernel_checks.py (DEVICE). No torch or triton import here."""

from __future__ import annotations


def kernel_target(cuda_available: bool, triton_interpret: str | None) -> tuple[str, str]:
    """(device type the kernel tests use, TRITON_INTERPRET value to set) for a machine and its environment.

    TRITON_INTERPRET unset or empty: compiled kernels on CUDA when a GPU is there ("cuda", "0"), else the interpreter
    on CPU ("cpu", "1"). Set explicitly: "0" means compiled (on CUDA; without a GPU Triton cannot run and the kernel
    tests skip), anything else the interpreter on CPU tensors, also on a GPU machine. Applying the answer and asking
    again gives the same answer, so conftest.py (before triton is imported) and kernel_checks.DEVICE agree."""
    if triton_interpret is None or triton_interpret == "":
        return ("cuda", "0") if cuda_available else ("cpu", "1")
    if triton_interpret == "0":
        return ("cuda" if cuda_available else "cpu"), "0"
    return "cpu", "1"
