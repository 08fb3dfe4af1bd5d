"""The device this process computes on: --device, else cuda:LOCAL_RANK under torchrun/SLURM, else cpu.

A CUDA process must also make that device its current one (use_device): Triton launches kernels on the current
device, and torch.cuda.Event(), torch.cuda.Stream() and CUDA-graph capture default to it. Code that may run beside
another current device (a library caller's) says its device explicitly as well (runner.py, cuda_graphs.py).
"""

from __future__ import annotations

import os

import torch

from ..faults import InvalidOption


def _local_rank(environ: dict | None = None) -> int | None:
    env = os.environ if environ is None else environ
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        if env.get(name, "").strip():
            return int(env[name])
    return None


def resolve_device(device: str | torch.device | None, environ: dict | None = None, *,
                   option: str = "--device") -> torch.device:
    """cuda when available (cuda:LOCAL_RANK under torchrun/SLURM), else cpu; a CUDA request without CUDA is an
    InvalidOption, a ValueError (messages name the option as `option`)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError:
        raise InvalidOption(f"{option} must be cpu, cuda or cuda:<index>, got {device!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidOption(f"{option} {device} requested but CUDA is not available on this machine")
        if device.index is None:
            rank = _local_rank(environ)
            # with one visible GPU per task (srun --gpus-per-task=1) the local rank is not an index: wrap it
            device = torch.device("cuda", 0 if rank is None else rank % torch.cuda.device_count())
        elif device.index >= torch.cuda.device_count():
            raise InvalidOption(f"{option} {device} requested but this machine has {torch.cuda.device_count()} CUDA "
                             f"devices (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif device.type != "cpu":
        raise InvalidOption(f"{option} must be cpu, cuda or cuda:<index>, got {str(device)!r}")
    return device


def use_device(device: torch.device) -> torch.device:
    """Make a CUDA `device` this process's current device (torch.cuda.set_device), once, before any CUDA work: a
    torchrun rank k >= 1 otherwise launches its kernels, events and graphs on cuda:0. No-op for the CPU."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device
