"""Frame geometry, in one place for every decoder: the decode size (short side = image_size, aspect kept; or a larger
`resize` short side before the crop, as V-JEPA 2's processor resizes to crop * 256 / 224), the source window of the
center crop, the spatial views of a frame (one center crop, or three crops at the start, the center and the end of
the long side, as the VideoMAE papers' multi-view test), and turning a frame upright."""

from __future__ import annotations

import av
import numpy as np

CROPS = (1, 3)
# crop_index of the views of each `crops` setting: 0 = start (left / top), 1 = center, 2 = end (right / bottom)
CROP_INDICES = {1: (1,), 3: (0, 1, 2)}


def check_crops(crops: int) -> int:
    """`crops` when it is 1 or 3, else ValueError naming the value."""
    if crops not in CROPS or isinstance(crops, bool):
        raise ValueError(f"crops must be 1 (center) or 3 (start, center, end of the long side), got {crops!r}")
    return int(crops)


def decode_size(width: int, height: int, image_size: int, processor: bool = False) -> tuple[int, int]:
    """(w, h) with the short side = image_size and the aspect ratio kept: the long side rounded, or with `processor`
    floored, as transformers' processors size a `shortest_edge` resize (int(S * long / short): what V-JEPA 2's
    VJEPA2VideoProcessor does, Sampling.resize)."""
    size = (lambda x: int(x)) if processor else round
    if width <= height:
        return image_size, max(image_size, size(height * image_size / width))
    return max(image_size, size(width * image_size / height)), image_size


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


def crop_offsets(length: int, image_size: int, crops: int, processor: bool = False) -> list[int]:
    """Offsets along a side of `length` pixels (>= image_size) of the views of `crops`: [center] for 1,
    [start, center, end] for 3 (the end crop touches the far edge). The center is (length - S) // 2, or with
    `processor` torchvision's center_crop offset int(round((length - S) / 2)) (half to even: 131.5 -> 132), which
    transformers' processors use (Sampling.resize)."""
    center = int(round((length - image_size) / 2.0)) if processor else (length - image_size) // 2
    return [center] if crops == 1 else [0, center, length - image_size]


def views(frame: np.ndarray, image_size: int, crops: int = 1, resize: int | None = None) -> list[np.ndarray]:
    """Upright (h, w, 3) frame -> `crops` views (S, S, 3) in crop_index order, cut along its long side (left /
    center / right when landscape, top / center / bottom when portrait; a square frame gives the same view three
    times) and centered across it. Resizes first (bilinear, swscale) if the short side is not `resize` (default S).
    With `resize` (transformers' processor geometry, Sampling.resize) the long side of that resize is floored and
    the centers are torchvision's center_crop offsets (crop_offsets). Views are slices of the frame."""
    h, w = frame.shape[:2]
    short, processor = resize or image_size, resize is not None
    if min(h, w) != short:
        tw, th = decode_size(w, h, short, processor)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24").to_ndarray(
            width=tw, height=th, format="rgb24", interpolation="BILINEAR")
        h, w = frame.shape[:2]
    s = image_size
    if w >= h:
        (top,) = crop_offsets(h, s, 1, processor)
        return [frame[top : top + s, x : x + s] for x in crop_offsets(w, s, crops, processor)]
    (left,) = crop_offsets(w, s, 1, processor)
    return [frame[y : y + s, left : left + s] for y in crop_offsets(h, s, crops, processor)]


def center_crop(frame: np.ndarray, image_size: int) -> np.ndarray:
    """(h, w, 3) -> (S, S, 3) center crop; resizes first (bilinear, swscale) if the short side is not S."""
    return views(frame, image_size, 1)[0]


def upright(image: np.ndarray, rotation_k: int) -> np.ndarray:
    """An image (a frame or a square crop) turned as a player shows the video: rotation_k quarter turns
    counter-clockwise (np.rot90). A quarter turn of a centered square crop is the center crop of the turned frame;
    the start and end crops are cut after turning (views of the upright frame)."""
    return np.rot90(image, rotation_k) if rotation_k else image
