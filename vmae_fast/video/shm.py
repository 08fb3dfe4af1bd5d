"""ClipRing: one block of shared memory cut into clip slots, written by decode workers and read in place by the
parent (see pool.py for who owns which slot when).

The block is an anonymous file (Linux memfd; elsewhere a temporary file unlinked the moment it is created) that
reaches the workers as an inherited file descriptor, never by name: nothing appears in /dev/shm, nothing can be
left behind by a SIGKILL, and Docker's small default /dev/shm does not limit it. Its memory is freed when the last
process holding the descriptor or a mapping goes away; numpy views of a slot keep the parent's mapping alive, so a
view can never outlive the memory it shows.
"""

from __future__ import annotations

import mmap
import os
import tempfile

import numpy as np

NAME = "vmae_fast-clips"  # what /proc/<pid>/fd and /proc/<pid>/maps show for the block ("memfd:" + NAME)


def _anonymous_fd(size: int) -> int:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create(NAME, os.MFD_CLOEXEC)
    else:  # macOS and other POSIX systems: a file with no name from the moment it exists
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, path = tempfile.mkstemp(prefix=NAME + "-", dir=shm)
        os.unlink(path)
    try:
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        raise
    return fd


class ClipRing:
    """`count` slots, each a uint8 array of `shape` (num_frames, S, S, 3), in one shared block.

    The parent creates it; pickled into a worker's Process arguments it travels as a duplicated file descriptor
    (multiprocessing's own fd passing, as for a Pipe), and the worker maps the same memory. slot(i) is a writable
    view; index_of(array) finds the slot an array is a view of (None for any other array).
    """

    def __init__(self, count: int, shape: tuple[int, ...], *, _fd: int | None = None):
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"a clip ring needs at least one slot, got {count!r}")
        self.count, self.shape = count, tuple(int(x) for x in shape)
        self.slot_bytes = int(np.prod(self.shape))
        size = count * self.slot_bytes
        fd = _anonymous_fd(size) if _fd is None else _fd
        try:
            self._mmap = mmap.mmap(fd, size)
        finally:
            if _fd is not None:  # a worker's inherited copy: the mapping is all it needs
                os.close(fd)
        self._fd = None if _fd is not None else fd  # the parent keeps its fd to hand on to new workers
        self.array = np.frombuffer(self._mmap, dtype=np.uint8).reshape(count, *self.shape)
        self._base = self.array.ctypes.data

    def slot(self, i: int) -> np.ndarray:
        return self.array[i]

    def index_of(self, frames: np.ndarray) -> int | None:
        """The slot `frames` is exactly (a whole-slot view), or None."""
        if not isinstance(frames, np.ndarray) or frames.shape != self.shape or frames.dtype != np.uint8:
            return None
        offset = frames.ctypes.data - self._base
        if offset < 0 or offset % self.slot_bytes or offset // self.slot_bytes >= self.count:
            return None
        return offset // self.slot_bytes if frames.flags.c_contiguous else None

    def __reduce__(self):
        if self._fd is None:
            raise TypeError("a worker's ClipRing cannot be passed on")
        from multiprocessing import reduction

        return _rebuild, (self.count, self.shape, reduction.DupFd(self._fd))

    def close(self) -> None:
        """Drop this process's descriptor and mapping; views still alive keep the mapping until they go."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.array = None
        try:
            self._mmap.close()
        except BufferError:  # the consumer still holds slot views: the mapping goes with the last of them
            pass


def _rebuild(count: int, shape: tuple[int, ...], dup) -> ClipRing:
    return ClipRing(count, shape, _fd=dup.detach())
