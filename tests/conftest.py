"""Shared pytest setup.

Where the Triton kernels run is decided here, once, before anything imports triton (triton.jit picks the interpreter
when a kernel is decorated): plain `pytest` on a machine with a CUDA GPU runs the compiled kernels on CUDA
(TRITON_INTERPRET=0); without one, the Triton interpreter runs them on CPU tensors (TRITON_INTERPRET=1). An explicit
TRITON_INTERPRET in the environment wins. tests/kernel_checks.py derives DEVICE from the same decision
(tests/kernel_target.py).
"""

import os

import pytest
import torch
from kernel_target import kernel_target

_DEVICE, _INTERPRET = kernel_target(torch.cuda.is_available(), os.environ.get("TRITON_INTERPRET"))
os.environ["TRITON_INTERPRET"] = _INTERPRET


def pytest_report_header(config):
    where = {"cuda": "compiled Triton on CUDA", "cpu": "the Triton interpreter on CPU" if _INTERPRET == "1" else
             "CPU, Triton cannot run (TRITON_INTERPRET=0 and no CUDA GPU): kernel tests skip"}[_DEVICE]
    return f"vmae_fast kernels: {where} (TRITON_INTERPRET={_INTERPRET})"


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    """Good test videos, one per awkward case: {name: (path, Expected)} (tests/videos.py)."""
    from tests.videos import make_video_zoo

    return make_video_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="session")
def bad(tmp_path_factory):
    """Files that must each end as one error: {name: path} (tests/videos.py)."""
    from tests.videos import make_bad_files

    return make_bad_files(tmp_path_factory.mktemp("bad"))
