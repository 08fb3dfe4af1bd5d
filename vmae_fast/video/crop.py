"""Frame geometry, in one place for every decoder: the decode size (short side = image_size, aspect kept), the
source window of the center crop, the center crop of a decoded frame, and turning a crop upright."""

from __future__ import annotations

import numpy as np


def decode_size(width: int, height: int, image_size: int) -> tuple[int, int]:
    """(w, h) with the short side = image_size and the aspect ratio kept (long side rounded)."""
    if width <= height:
        return image_size, max(image_size, round(height * image_size / width))
    return max(image_size, round(width * image_size / height)), image_size


def center_square(width: int, height: int, display_width: int | None = None) -> tuple[int, int, int, int]:
    """(x, y, w, h) in coded pixels of the centered region that is square on screen (side: the display's short
    side); display_width: the width shown (coded width x sample aspect ratio; default: square pixels).

    Scaling this window to image_size x image_size gives the center crop of the frame resized so its short side is
    image_size, without scaling the parts the crop throws away.
    """
    dw = display_width or width
    side = min(dw, height)  # display pixels
    w = max(1, min(width, round(side * width / dw)))
    h = max(1, min(height, side))
    return (width - w) // 2, (height - h) // 2, w, h


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


def upright(crop: np.ndarray, rotation_k: int) -> np.ndarray:
    """A square crop turned as a player shows the video: rotation_k quarter turns counter-clockwise (np.rot90).
    A quarter turn of a centered square crop is the center crop of the turned frame."""
    return np.rot90(crop, rotation_k) if rotation_k else crop
