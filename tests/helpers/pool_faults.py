"""Decode functions that misbehave, for DecodePool and extract fault tests (DecodePool(..., decode=...)).

decode_with_faults decodes like decode_clips, but a task whose file name contains one of MARKERS misbehaves right
after its first clip was sent: the worker segfaults, aborts, hangs or exits (the video's faults: a decoder that
crashes on a bad file), is killed by SIGKILL as the OOM killer does, or raises what a missing library, a full
memory, a stale network file handle or a bug in our code raises. With "-once" in the name only the first attempt
misbehaves (a `<file>.attempted` marker beside the video remembers it across worker processes).
Workers import these functions by name, so they live in a module, not in a test.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

from vmae_fast.video import decode_clips

MARKERS = ("vmae-test-segfault", "vmae-test-abort", "vmae-test-hang", "vmae-test-exit", "vmae-test-sigkill",
           "vmae-test-importerror", "vmae-test-memoryerror", "vmae-test-estale", "vmae-test-typeerror")


def _first_attempt(path: str) -> bool:
    try:
        os.close(os.open(path + ".attempted", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _misbehave(marker: str) -> None:
    if marker.endswith("importerror"):
        raise ImportError("No module named 'av'")
    if marker.endswith("memoryerror"):
        raise MemoryError
    if marker.endswith("estale"):
        raise OSError(errno.ESTALE, "Stale file handle")
    if marker.endswith("typeerror"):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")
    if marker.endswith("sigkill"):
        os.kill(os.getpid(), signal.SIGKILL)
    if marker.endswith("segfault"):
        os.kill(os.getpid(), signal.SIGSEGV)
    elif marker.endswith("abort"):
        os.abort()
    elif marker.endswith("exit"):
        os._exit(3)
    time.sleep(3600)  # hang


def decode_with_faults(task, sampling, image_size, backend="auto", **options):
    name = Path(task.path).name
    marker = next((m for m in MARKERS if m in name), None)
    faulty = marker is not None and ("-once" not in name or _first_attempt(task.path))
    for i, clip in enumerate(decode_clips(task, sampling, image_size, backend, **options)):
        yield clip  # the worker sends it before asking for the next one
        if faulty and i == 0:
            _misbehave(marker)


def decode_own_arrays(task, sampling, image_size, backend="auto", *, alloc=None, **options):
    """decode_clips that ignores the pool's slots (frames in arrays of its own): the pool must copy them in."""
    yield from decode_clips(task, sampling, image_size, backend, **options)


def decode_wrong_shape(task, sampling, image_size, backend="auto", *, alloc=None, **options):
    """Clips with frames of the wrong size: the task must end as an error, the worker must live on."""
    for clip in decode_clips(task, sampling, image_size, backend, **options):
        clip.frames = clip.frames[:, :-1]
        yield clip
