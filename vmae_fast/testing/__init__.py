"""Helpers for vmae_fast's own tests and tools/ benchmarks: the internals they must reach, under declared names.

Not for applications: nothing here is promised between releases. What is here is what tools/ may use beyond the
public API (tests/project/test_public_api.py fails on a tool that reaches a private name), so a change inside a
kernel or a decoder shows here, in one file, which benchmark it touches.

    kernels.py   torch + triton only: the Triton kernels and their launch configurations (offline compiles,
                 tools/kernel_resources.py) and patch_embed's replaced weight layout (an A/B, tools/bench_kernels.py)
    video.py     the PyAV reader, frame geometry and the decoder shortcuts an ablation switches off
                 (tools/bench_decode.py)
    retrieval.py the service's Catalog and an output's rows as an index streams them (tools/bench_serve.py,
                 tools/bench_dedup.py)

The submodules are imported when first used: `vmae_fast.testing.kernels` never imports a decoder.
"""

import importlib as _importlib

__all__ = ["kernels", "retrieval", "video"]


def __getattr__(name: str):
    if name in __all__:
        return _importlib.import_module(f"{__name__}.{name}")  # the import binds it here
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
