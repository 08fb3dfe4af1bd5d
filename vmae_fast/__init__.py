"""vmae_fast: VideoMAE embeddings for large video collections.

Public API: `vmae_fast.__all__` is exactly what `import vmae_fast` offers (dir(), attribute access), and nothing
else is promised:
- the names of `_NAMES` below (extract, read_clips, Index, load_model, ...), each the object of the public module
  that defines it;
- the public modules of `_MODULES`, each declaring its own `__all__`: the subpackages `kernels`, `video`, `store`,
  `extraction`, `retrieval` (their modules are internal: import from the subpackage), the model files `config`,
  `model`, `vjepa2`, `tokens`, `checkpoint`, `cuda_graphs`, and `faults`, `ids`, `demo`, `cli`.
`vmae_fast.testing` declares the internals that the project's tests and tools/ benchmarks reach, with no
compatibility promise. The module paths of 0.1's flat layout (vmae_fast.pipeline, .inputs, .committed, .views,
.ray_engine, .index, .search) still import for one release and warn once (VmaeFastDeprecationWarning).

Names and modules are imported when first used, so `import vmae_fast`, the model and the kernels work with torch (and
triton) alone: decoders, pyarrow and faiss load only with the parts that need them.
"""

import importlib as _importlib

from . import _compat
from ._compat import VmaeFastDeprecationWarning

__version__ = "0.1.0"

# public name -> the public module that defines it (and lists it in its __all__)
_NAMES = {
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
# public modules, reachable as attributes (vmae_fast.store.committed_ids) without importing them first
_MODULES = ("checkpoint", "cli", "config", "cuda_graphs", "demo", "extraction", "faults", "ids", "kernels", "model",
            "retrieval", "store", "tokens", "video", "vjepa2")

__all__ = ["VmaeFastDeprecationWarning", "__version__", *sorted(_NAMES), *_MODULES]

_compat.install()  # the module paths of 0.1's flat layout (vmae_fast.pipeline, ...) keep working, with a warning


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(_importlib.import_module(_NAMES[name]), name)
        globals()[name] = value  # once: the next lookup is a plain attribute
        return value
    if name in _MODULES:
        return _importlib.import_module(f"{__name__}.{name}")  # the import binds it here
    raise AttributeError(f"module 'vmae_fast' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*__all__, *(n for n in globals() if n.startswith("__") and n.endswith("__"))})
