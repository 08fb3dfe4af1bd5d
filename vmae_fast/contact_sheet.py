"""Contact sheet for `vmae-fast search --show`: one row per query and per match, each a label (rank, score, video,
time range) over a few frames of the clip, written as a PNG.

Pillow is not a dependency of vmae_fast, so this draws with numpy alone: a built-in 5x7 bitmap font (upper case,
digits, common punctuation) and a minimal PNG writer (zlib-compressed 8-bit RGB, filter 0).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

THUMB = 112  # thumbnail side, pixels
FRAMES_PER_ROW = 4
SCALE = 2  # font pixel size
MARGIN = 8
BACKGROUND = (24, 24, 28)
TEXT = (235, 235, 235)
QUERY_TEXT = (255, 205, 60)
MISSING = (70, 70, 76)

# 5x7 glyphs: 7 rows, top to bottom, 5 bits each (bit 4 = leftmost column).
_FONT = {
    "0": (14, 17, 19, 21, 25, 17, 14), "1": (4, 12, 4, 4, 4, 4, 14), "2": (14, 17, 1, 2, 4, 8, 31),
    "3": (31, 2, 4, 2, 1, 17, 14), "4": (2, 6, 10, 18, 31, 2, 2), "5": (31, 16, 30, 1, 1, 17, 14),
    "6": (6, 8, 16, 30, 17, 17, 14), "7": (31, 1, 2, 4, 8, 8, 8), "8": (14, 17, 17, 14, 17, 17, 14),
    "9": (14, 17, 17, 15, 1, 2, 12),
    "A": (14, 17, 17, 17, 31, 17, 17), "B": (30, 17, 17, 30, 17, 17, 30), "C": (14, 17, 16, 16, 16, 17, 14),
    "D": (28, 18, 17, 17, 17, 18, 28), "E": (31, 16, 16, 30, 16, 16, 31), "F": (31, 16, 16, 30, 16, 16, 16),
    "G": (14, 17, 16, 23, 17, 17, 15), "H": (17, 17, 17, 31, 17, 17, 17), "I": (14, 4, 4, 4, 4, 4, 14),
    "J": (7, 2, 2, 2, 2, 18, 12), "K": (17, 18, 20, 24, 20, 18, 17), "L": (16, 16, 16, 16, 16, 16, 31),
    "M": (17, 27, 21, 21, 17, 17, 17), "N": (17, 17, 25, 21, 19, 17, 17), "O": (14, 17, 17, 17, 17, 17, 14),
    "P": (30, 17, 17, 30, 16, 16, 16), "Q": (14, 17, 17, 17, 21, 18, 13), "R": (30, 17, 17, 30, 20, 18, 17),
    "S": (15, 16, 16, 14, 1, 1, 30), "T": (31, 4, 4, 4, 4, 4, 4), "U": (17, 17, 17, 17, 17, 17, 14),
    "V": (17, 17, 17, 17, 17, 10, 4), "W": (17, 17, 17, 21, 21, 21, 10), "X": (17, 17, 10, 4, 10, 17, 17),
    "Y": (17, 17, 17, 10, 4, 4, 4), "Z": (31, 1, 2, 4, 8, 16, 31),
    " ": (0, 0, 0, 0, 0, 0, 0), ".": (0, 0, 0, 0, 0, 12, 12), ":": (0, 12, 12, 0, 12, 12, 0),
    "-": (0, 0, 0, 31, 0, 0, 0), "_": (0, 0, 0, 0, 0, 0, 31), "/": (0, 1, 2, 4, 8, 16, 0),
    "#": (10, 10, 31, 10, 31, 10, 10), "(": (2, 4, 8, 8, 8, 4, 2), ")": (8, 4, 2, 2, 2, 4, 8),
    "%": (24, 25, 2, 4, 8, 19, 3), "+": (0, 4, 4, 31, 4, 4, 0), "=": (0, 0, 31, 0, 31, 0, 0),
    ",": (0, 0, 0, 0, 12, 4, 8), "?": (14, 17, 1, 2, 4, 0, 4), "'": (4, 4, 8, 0, 0, 0, 0),
    "[": (14, 8, 8, 8, 8, 8, 14), "]": (14, 2, 2, 2, 2, 2, 14), "<": (2, 4, 8, 16, 8, 4, 2),
    ">": (8, 4, 2, 1, 2, 4, 8), "*": (0, 4, 21, 14, 21, 4, 0), "!": (4, 4, 4, 4, 4, 0, 4),
}
_GLYPHS = {
    ch: np.array([[(row >> (4 - col)) & 1 for col in range(5)] for row in rows], dtype=bool)
    for ch, rows in _FONT.items()
}


def text_width(text: str, scale: int = SCALE) -> int:
    return len(text) * 6 * scale


def draw_text(image: np.ndarray, text: str, x: int, y: int, color=TEXT, scale: int = SCALE) -> None:
    """Draw text (upper-cased; unknown characters as '?') into image uint8 (H, W, 3) in place, clipped at the edges."""
    w = image.shape[1]
    for i, ch in enumerate(text.upper()):
        glyph = _GLYPHS.get(ch, _GLYPHS["?"]).repeat(scale, 0).repeat(scale, 1)  # (7*scale, 5*scale)
        gx = x + i * 6 * scale
        if gx >= w:
            break
        region = image[y:y + glyph.shape[0], gx:gx + glyph.shape[1]]
        region[glyph[:region.shape[0], :region.shape[1]]] = color


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write uint8 (H, W, 3) RGB as a PNG (8-bit truecolor, no interlace)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    raw = np.concatenate([np.zeros((h, 1), np.uint8), image.reshape(h, w * 3)], axis=1)  # filter byte 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b""))
    Path(path).write_bytes(png)


def clip_thumbnails(path: str | None, start_s: float | None, end_s: float | None, sampling: dict,
                    count: int = FRAMES_PER_ROW, size: int = THUMB) -> np.ndarray | None:
    """`count` frames spread over the clip of `path` covering [start_s, end_s), decoded at `size` with the run's
    sampling: uint8 (count, size, size, 3), or None when the video cannot be read."""
    from .video import Sampling, VideoError, VideoTask, decode_clips

    if not path or start_s is None or end_s is None:
        return None
    try:
        clip = next(decode_clips(VideoTask(path), Sampling(**sampling), size, at_s=(start_s + end_s) / 2), None)
    except (VideoError, OSError, ValueError):
        return None
    if clip is None:
        return None
    picks = np.linspace(0, len(clip.frames) - 1, count).round().astype(int)
    return clip.frames[picks]


def contact_sheet(rows: list[tuple[str, np.ndarray | None, bool]]) -> np.ndarray:
    """rows: (label, frames uint8 (F, S, S, 3) or None, is_query) -> sheet image uint8 (H, W, 3)."""
    label_h = 7 * SCALE + 6
    row_h = label_h + THUMB + MARGIN
    width = 2 * MARGIN + FRAMES_PER_ROW * THUMB + (FRAMES_PER_ROW - 1) * 4
    sheet = np.empty((MARGIN + len(rows) * row_h, width, 3), np.uint8)
    sheet[:] = BACKGROUND
    max_chars = (width - 2 * MARGIN) // (6 * SCALE)
    for r, (label, frames, is_query) in enumerate(rows):
        y = MARGIN + r * row_h
        if len(label) > max_chars:
            label = label[: max_chars - 2] + ".."
        draw_text(sheet, label, MARGIN, y, QUERY_TEXT if is_query else TEXT)
        for i in range(FRAMES_PER_ROW):
            x = MARGIN + i * (THUMB + 4)
            tile = sheet[y + label_h:y + label_h + THUMB, x:x + THUMB]
            if frames is not None and i < len(frames):
                tile[:] = frames[i]  # decoded at THUMB x THUMB
            else:
                tile[:] = MISSING
                if i == 0:
                    draw_text(sheet, "NO FRAMES", x + 4, y + label_h + THUMB // 2 - 7)
        if is_query:  # a line under the query row sets it apart from the matches
            sheet[y + row_h - MARGIN // 2 - 1: y + row_h - MARGIN // 2 + 1, MARGIN:width - MARGIN] = QUERY_TEXT
    return sheet


def _label(prefix: str, name: str | None, suffix: str) -> str:
    """prefix + file name + suffix, the name shortened from the left to fit one row of the sheet."""
    max_chars = (2 * MARGIN + FRAMES_PER_ROW * THUMB + (FRAMES_PER_ROW - 1) * 4 - 2 * MARGIN) // (6 * SCALE)
    name = os.path.basename(name or "?")
    room = max(4, max_chars - len(prefix) - len(suffix))
    return prefix + (name if len(name) <= room else ".." + name[-(room - 2):]) + suffix


def draw_results(out: str | os.PathLike, results: list[dict], png: str | os.PathLike) -> str:
    """Contact sheet of `vmae-fast search` results (run_query output) written to `png`; returns the path."""
    from .search import resolve_media_path
    from .store import load_run

    sampling = load_run(out)["config"]["sampling"]
    rows = []
    for result in results:
        q = result["query"]
        if q["type"] == "vector":
            rows.append((_label("QUERY: VECTOR ", q["file"], f" ROW {q['row']}"), None, True))
        else:
            path = q["path"] if q["type"] == "video" else resolve_media_path(out, q.get("path"))
            rows.append((_label("QUERY ", q.get("video_id") or q.get("path"), f" {q['start_s']:.1f}-{q['end_s']:.1f} S"),
                         clip_thumbnails(path, q["start_s"], q["end_s"], sampling), True))
        for rank, m in enumerate(result["matches"], 1):
            start, end = m.get("start_s"), m.get("end_s")
            span = f" {start:.1f}-{end:.1f} S" if start is not None and end is not None else ""
            if m.get("clip_index") is None and start is not None and end is not None:
                start = end = (start + end) / 2  # a video-level match: show the clip in its middle
            label = _label(f"#{rank} {m['score']:.3f} ", m.get("video_id"), span)
            path = resolve_media_path(out, m.get("path"))
            frames = clip_thumbnails(path, start, end, sampling) if start is not None else None
            rows.append((label, frames, False))
    write_png(png, contact_sheet(rows))
    return os.fspath(png)
