"""vmae_fast: VideoMAE embeddings for large video collections.

Heavy optional parts (pyarrow, faiss, video decoders) are imported only when the names that need them are used,
so `import vmae_fast` and the model work with torch (and triton) alone.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "VideoMAEConfig": "vmae_fast.config",
    "load_model": "vmae_fast.checkpoint",
    "VideoMAE": "vmae_fast.model",
    "VideoMAEOutput": "vmae_fast.model",
    "extract": "vmae_fast.pipeline",
    "read_clips": "vmae_fast.store",
    "read_embeddings": "vmae_fast.store",
    "read_errors": "vmae_fast.store",
    "read_videos": "vmae_fast.views",
    "load_run": "vmae_fast.store",
    "embed_video_at": "vmae_fast.search",
    "Index": "vmae_fast.index",
    "CUDAGraphRunner": "vmae_fast.cuda_graphs",
}

__all__ = [
    "CUDAGraphRunner",
    "Index",
    "VideoMAE",
    "VideoMAEConfig",
    "VideoMAEOutput",
    "__version__",
    "extract",
    "load_model",
    "read_clips",
    "read_embeddings",
    "read_videos",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vmae_fast' has no attribute {name!r}")
