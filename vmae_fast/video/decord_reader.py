"""decord decoder backend (optional): frames scaled to the decode size by decord itself, sorted get_batch chunks.

Measured slower per core than the PyAV backend on H.264 with B-frames (README), and it decodes gray as limited
range and ignores display rotation, so it is used only when asked for (backend="decord")."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .crop import views


class DecordReader:
    """decord decoding with frames scaled to the decode size by decord itself; decode.py sends gray and rotated
    files, and files decord fails on, to PyAV."""

    name = "decord"

    def __init__(self, path: str, native_size: tuple[int, int], decode_size: tuple[int, int], image_size: int,
                 threads: int = 0, batch: int = 32, timestamps: np.ndarray | None = None, resize: int | None = None):
        import decord

        self.path, self.batch, self.image_size, self.resize = path, batch, image_size, resize
        self.decode_size = decode_size
        w, h = decode_size if decode_size != native_size else (-1, -1)  # -1: no scaling
        self.reader = decord.VideoReader(path, ctx=decord.cpu(0), width=w, height=h, num_threads=threads)
        n = len(self.reader)
        if n == 0:
            raise RuntimeError("decord found no frames")
        ts = np.asarray(self.reader.get_frame_timestamp(np.arange(n)), dtype=np.float64).reshape(n, 2)
        self.last_duration = float(ts[-1, 1] - ts[-1, 0]) if ts[-1, 1] > ts[-1, 0] else None
        # decord counts from its FFmpeg's container start; the exact PTS from the packet scan are preferred (same
        # clock as PyAV) whenever both see the same frames.
        if timestamps is not None and len(timestamps) == n:
            self.timestamps = timestamps
        else:
            self.timestamps = ts[:, 0] - ts[0, 0]

    def frames(self, indices: np.ndarray, crops: int = 1) -> Iterator[tuple[int, list[np.ndarray]]]:
        """Yield (index, list of `crops` uint8 (S, S, 3) views, crop.views order) for sorted unique indices;
        get_batch on sorted chunks (decord decodes forward within a GOP and seeks across gaps)."""
        for lo in range(0, len(indices), self.batch):
            chunk = indices[lo : lo + self.batch]
            batch = self.reader.get_batch(chunk.tolist()).asnumpy()
            for idx, frame in zip(chunk.tolist(), batch, strict=True):
                yield idx, views(frame, self.image_size, crops, self.resize)
