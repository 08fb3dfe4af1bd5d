"""Shared pytest setup."""

import os

import pytest

# Kernels: run Triton kernels on CPU through the interpreter; must be set before triton (or vmae_fast.kernels) imports.
os.environ.setdefault("TRITON_INTERPRET", "1")


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
