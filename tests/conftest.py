"""Shared pytest setup.

Where the Triton kernels run is decided here, once, before anything imports triton (triton.jit picks the interpreter
when a kernel is decorated): plain `pytest` on a machine with a CUDA GPU runs the compiled kernels on CUDA
(TRITON_INTERPRET=0); without one, the Triton interpreter runs them on CPU tensors (TRITON_INTERPRET=1). An explicit
TRITON_INTERPRET in the environment wins. tests/helpers/kernel_checks.py derives DEVICE from the same decision
(tests/helpers/kernel_target.py).

The fixtures here are shared by the tests of every package (a module may define its own of the same name):
zoo and bad (the test-video corpus), ckpt, model and videos (a tiny classification checkpoint, its model, three
short videos: what a test needs to run extract end to end), s3 (a real S3 server, SeaweedFS, on loopback).
"""

import os
import signal
from pathlib import Path

import pytest
import torch

from tests.helpers.kernel_target import kernel_target

_DEVICE, _INTERPRET = kernel_target(torch.cuda.is_available(), os.environ.get("TRITON_INTERPRET"))
os.environ["TRITON_INTERPRET"] = _INTERPRET
# every Ray cluster a test starts (and every process it starts) listens on 127.0.0.1 only: Ray 2.60 turns
# ray.init(_node_ip_address="127.0.0.1") into the routable address and binds every port on all interfaces, unless
# told it is a one-machine cluster (read when ray is imported: before any test module imports it)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# Ctrl-C as in a terminal: a runner that starts pytest as a background job of a non-interactive shell (`cmd &`)
# hands it SIGINT ignored, which its children inherit; the tests of Ctrl-C (tests/extraction/test_signals.py,
# tests/video/test_pool.py) then saw no signal at all
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_report_header(config):
    where = {"cuda": "compiled Triton on CUDA", "cpu": "the Triton interpreter on CPU" if _INTERPRET == "1" else
             "CPU, Triton cannot run (TRITON_INTERPRET=0 and no CUDA GPU): kernel tests skip"}[_DEVICE]
    return f"vmae_fast kernels: {where} (TRITON_INTERPRET={_INTERPRET})"


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    """Good test videos, one per awkward case: {name: (path, Expected)} (tests/helpers/videos.py)."""
    from tests.helpers.videos import make_video_zoo

    return make_video_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="session")
def bad(tmp_path_factory):
    """Files that must each end as one error: {name: path} (tests/helpers/videos.py)."""
    from tests.helpers.videos import make_bad_files

    return make_bad_files(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny random classification checkpoint: an HF folder, 32 px, 4 frames, 5 labels (helpers/hf_checkpoints.py)."""
    from tests.helpers.hf_checkpoints import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", kind="classification", seed=5)


@pytest.fixture(scope="module")
def model(ckpt):
    """The tiny checkpoint loaded on the CPU."""
    from vmae_fast.checkpoint import load_model

    return load_model(ckpt, device="cpu")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Three short H.264 videos: 1, 1 and 2 clips at the tiny model's sampling."""
    from tests.helpers.videos import make_video

    d = tmp_path_factory.mktemp("videos")
    for i, frames in enumerate((14, 23, 32)):
        make_video(d / f"v{i}.mp4", frames=frames)
    return d


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A SeaweedFS S3 server on 127.0.0.1 for the session (tests/helpers/object_store.py), and fsspec configured to
    reach it from this process (s3:// URLs); `s3.bucket()` makes a fresh bucket, `object_store.env(s3.endpoint)` is
    the environment of a vmae-fast process that writes there. Stopped at the end of the session."""
    import fsspec.config

    from tests.helpers.object_store import SeaweedS3, storage_options

    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    saved = fsspec.config.conf.get("s3")
    fsspec.config.conf["s3"] = storage_options(server.endpoint)
    try:
        yield server
    finally:
        if saved is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved
        server.stop()
