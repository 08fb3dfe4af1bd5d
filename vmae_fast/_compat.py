"""The module paths of vmae_fast 0.1's flat layout, kept for one release.

`import vmae_fast.pipeline` (and .inputs, .committed, .views, .ray_engine, .index, .search) still works: the module
it gets forwards every name to where it lives now and warns once, naming the public place to import it from
(docs/public-api.md). Removed in 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

REMOVED_IN = "0.3"

# old module -> the modules that hold its names now, searched in order
MOVED = {
    "vmae_fast.pipeline": ("vmae_fast.extraction", "vmae_fast.extraction.local_engine", "vmae_fast.extraction.core",
                           "vmae_fast.extraction.spec", "vmae_fast.extraction.devices"),
    "vmae_fast.inputs": ("vmae_fast.extraction.inputs", "vmae_fast.ids"),
    "vmae_fast.committed": ("vmae_fast.store.committed", "vmae_fast.ids"),
    "vmae_fast.views": ("vmae_fast.store.videos", "vmae_fast.store.reader", "vmae_fast.store.layout",
                        "vmae_fast.store.schemas", "vmae_fast.extraction.spec", "vmae_fast.cli"),  # cli: format_labels
    "vmae_fast.ray_engine": ("vmae_fast.extraction.ray_engine", "vmae_fast.cli"),  # cli: format_actors
    "vmae_fast.index": ("vmae_fast.retrieval.index", "vmae_fast.retrieval.plan", "vmae_fast.store.layout"),
    "vmae_fast.search": ("vmae_fast.retrieval.search",),
}

# old module -> where to import its names from now: the public names and modules (docs/public-api.md), named in the
# warning; MOVED's modules are internal (they may change in any release), so the warning never sends anyone there
PUBLIC_HOMES = {
    "vmae_fast.pipeline": ("vmae_fast.extract", "vmae_fast.extraction"),
    "vmae_fast.inputs": ("vmae_fast.extraction", "vmae_fast.ids"),
    "vmae_fast.committed": ("vmae_fast.store", "vmae_fast.ids"),
    "vmae_fast.views": ("vmae_fast.read_videos", "vmae_fast.store"),
    "vmae_fast.ray_engine": ("vmae_fast.extract",),  # engine="ray"
    "vmae_fast.index": ("vmae_fast.Index", "vmae_fast.retrieval"),
    "vmae_fast.search": ("vmae_fast.embed_video_at", "vmae_fast.retrieval"),
}


class VmaeFastDeprecationWarning(FutureWarning):
    """An old import path of vmae_fast was used (shown by default: FutureWarning, not DeprecationWarning)."""


class MovedModule(types.ModuleType):
    """Stands at an old module path: attribute lookups go to the modules that hold the names now."""

    __targets__: tuple[str, ...] = ()

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        for target in self.__targets__:
            module = importlib.import_module(target)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"{self.__name__} moved to {self.__targets__[0]}, which has no attribute {name!r}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        return importlib.machinery.ModuleSpec(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        return MovedModule(spec.name)

    def exec_module(self, module) -> None:
        module.__targets__ = MOVED[module.__name__]
        warnings.warn(f"{module.__name__} moved to {', '.join(PUBLIC_HOMES[module.__name__])}; the old path works "
                      f"until vmae_fast {REMOVED_IN}", VmaeFastDeprecationWarning, stacklevel=2)


def install() -> None:
    """Put the finder on sys.meta_path (last: it only answers for the old paths, which no file provides)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
