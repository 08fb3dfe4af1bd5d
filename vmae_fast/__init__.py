"""vmae_fast: VideoMAE embeddings for large video collections.

The public surface is `__all__` below (plus the subpackages `vmae_fast.kernels`, `.video`, `.store`, `.extract`,
`.retrieval`, each with its own `__all__`). Names are imported when first used, so `import vmae_fast`, the model and
the kernels work with torch (and triton) alone: decoders, pyarrow and faiss load only with the parts that need them.
"""

from __future__ import annotations

import importlib

from . import _compat

__version__ = "0.1.0"

_LAZY = {
    "VideoMAEConfig": "vmae_fast.config",
    "VideoMAE": "vmae_fast.model",
    "VideoMAEOutput": "vmae_fast.model",
    "load_model": "vmae_fast.checkpoint",
    "CUDAGraphRunner": "vmae_fast.cuda_graphs",
    "extract": "vmae_fast.extraction",
    "read_clips": "vmae_fast.store",
    "read_embeddings": "vmae_fast.store",
    "read_errors": "vmae_fast.store",
    "read_videos": "vmae_fast.store",
    "load_run": "vmae_fast.store",
    "Index": "vmae_fast.retrieval",
    "embed_video_at": "vmae_fast.retrieval",
    "UserError": "vmae_fast.faults",
    "EnvironmentFault": "vmae_fast.faults",
    "VideoError": "vmae_fast.faults",
}

__all__ = ["__version__", *sorted(_LAZY)]

_compat.install()  # the module paths of 0.1's flat layout (vmae_fast.pipeline, ...) keep working, with a warning


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once: the next lookup is a plain attribute
        return value
    raise AttributeError(f"module 'vmae_fast' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
