"""Decoder internals for decode benchmarks and ablations (tools/bench_decode.py).

No compatibility promise (see vmae_fast.testing).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..video import pyav_reader as _pyav_reader
from ..video.crop import crop_offsets, decode_size
from ..video.pyav_reader import PyAVReader
from ..video.torchcodec_reader import status as torchcodec_status

# shortcut of the PyAV backend -> (its switch in pyav_reader, the value that turns it off)
PYAV_SHORTCUTS = {
    "skip_nonref": ("_SKIP_NONREF", False),  # skip_frame=NONREF for the frames no clip wants
    "crop_before_scale": ("_CROP_BEFORE_SCALE", False),  # one crop: scale the center square only
    "probe_without_decoding": ("_PROBE_WITHOUT_DECODING", {}),  # open a container without decoding frames
}


@contextmanager
def pyav_without(shortcut: str) -> Iterator[None]:
    """Decode with one shortcut of the PyAV backend switched off (in this process) while the block runs."""
    if shortcut not in PYAV_SHORTCUTS:
        raise ValueError(f"shortcut must be one of {sorted(PYAV_SHORTCUTS)}, got {shortcut!r}")
    name, off = PYAV_SHORTCUTS[shortcut]
    old = getattr(_pyav_reader, name)
    setattr(_pyav_reader, name, off)
    try:
        yield
    finally:
        setattr(_pyav_reader, name, old)


__all__ = ["PYAV_SHORTCUTS", "PyAVReader", "crop_offsets", "decode_size", "pyav_without", "torchcodec_status"]
