"""What every benchmark row records about where it ran, and how the tools import vmae_fast from a bare checkout.

Shared by tools/bench_kernels.py, tools/bench_model.py and tools/gpu_check.py (torch and triton only).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def import_vmae_fast():
    """vmae_fast from the installed package, or from this checkout when it is not installed (a bare GPU machine)."""
    try:
        importlib.import_module("vmae_fast")
    except ModuleNotFoundError:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
    for name in ("vmae_fast.kernels", "vmae_fast.tokens", "vmae_fast.checkpoint"):  # used as attributes by the tools
        importlib.import_module(name)
    return importlib.import_module("vmae_fast")


def git_commit() -> str | None:
    """HEAD of this checkout, with -dirty when tracked files differ (VMAE_FAST_COMMIT where there is no git)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("VMAE_FAST_COMMIT")
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def version(distribution: str) -> str | None:
    """Installed version, read from the package metadata (importing transformers would take seconds)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def environment(device: torch.device, commit: str | None = None) -> dict:
    """Device, versions (python, torch, triton, CUDA, transformers), git commit and the interpreter switch."""
    return {"device": device_name(device), "device_type": device.type, "python": platform.python_version(),
            "torch": torch.__version__, "triton": version("triton"), "cuda": torch.version.cuda,
            "transformers": version("transformers"), "commit": commit or git_commit(),
            "triton_interpret": os.environ.get("TRITON_INTERPRET", "0")}
