"""Frame geometry: the decode size (short side = image_size, aspect kept) and the center crop of a decoded frame."""

from __future__ import annotations

import numpy as np


def decode_size(width: int, height: int, image_size: int) -> tuple[int, int]:
    """(w, h) with the short side = image_size and the aspect ratio kept (long side rounded)."""
    if width <= height:
        return image_size, max(image_size, round(height * image_size / width))
    return max(image_size, round(width * image_size / height)), image_size


def center_crop(frame: np.ndarray, image_size: int) -> np.ndarray:
    """(h, w, 3) -> (S, S, 3) center crop; resizes first (bilinear, swscale) if the short side is not S."""
    h, w = frame.shape[:2]
    if min(h, w) != image_size:
        import av

        tw, th = decode_size(w, h, image_size)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24").to_ndarray(
            width=tw, height=th, format="rgb24", interpolation="BILINEAR")
        h, w = frame.shape[:2]
    top, left = (h - image_size) // 2, (w - image_size) // 2
    return frame[top : top + image_size, left : left + image_size]
