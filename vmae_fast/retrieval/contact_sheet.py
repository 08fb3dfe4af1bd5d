"""Contact sheet for `vmae-fast search --show`: one row per query and per match, each a label (rank, score, video,
time range) over a few frames of the clip, drawn with Pillow and written as a PNG.

Labels use DejaVu Sans when the system has it (Debian: fonts-dejavu-core; Latin, Greek, Cyrillic, Arabic, Hebrew,
...), else Pillow's bundled font; VMAE_FAST_FONT=/path/to/font.ttf picks another (e.g. a CJK font).
"""

from __future__ import annotations

import functools
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..store import load_run
from ..video import Sampling, VideoError, VideoTask, decode_clips
from .search import resolve_media_path

THUMB = 112  # thumbnail side, pixels
FRAMES_PER_ROW = 4
FONT_SIZE = 15
LABEL_H = 22
MARGIN = 8
BACKGROUND = (24, 24, 28)
TEXT = (235, 235, 235)
QUERY_TEXT = (255, 205, 60)
MISSING = (70, 70, 76)
FONT_PATHS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",  # Debian/Ubuntu fonts-dejavu-core
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",  # Fedora
    "/usr/share/fonts/TTF/DejaVuSans.ttf",  # Arch
)


@functools.lru_cache(maxsize=4)
def label_font(size: int = FONT_SIZE):
    """A TrueType font for labels: $VMAE_FAST_FONT, DejaVu Sans, matplotlib's copy of it, or Pillow's own."""
    candidates = [os.environ.get("VMAE_FAST_FONT"), *FONT_PATHS]
    try:
        import matplotlib

        candidates.append(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data/fonts/ttf/DejaVuSans.ttf"))
    except ImportError:
        pass
    for path in candidates:
        if path and os.path.isfile(path):
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


def fit_text(text: str, width: float, font) -> str:
    """text, shortened from the left with '…' until it is at most `width` pixels wide in `font`."""
    if font.getlength(text) <= width:
        return text
    for cut in range(1, len(text)):
        shorter = "…" + text[cut:]
        if font.getlength(shorter) <= width:
            return shorter
    return "…"


def clip_thumbnails(path: str | None, start_s: float | None, end_s: float | None, sampling: dict,
                    count: int = FRAMES_PER_ROW, size: int = THUMB) -> np.ndarray | None:
    """`count` frames spread over the clip of `path` covering [start_s, end_s), decoded at `size` with the run's
    sampling: uint8 (count, size, size, 3), or None when the video cannot be read."""
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


def contact_sheet(rows: list[tuple[str, np.ndarray | None, bool]]):
    """rows: (label, frames uint8 (F, S, S, 3) or None, is_query) -> PIL RGB image."""
    row_h = LABEL_H + THUMB + MARGIN
    width = 2 * MARGIN + FRAMES_PER_ROW * THUMB + (FRAMES_PER_ROW - 1) * 4
    sheet = Image.new("RGB", (width, MARGIN + len(rows) * row_h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = label_font()
    for r, (label, frames, is_query) in enumerate(rows):
        y = MARGIN + r * row_h
        draw.text((MARGIN, y), fit_text(label, width - 2 * MARGIN, font), fill=QUERY_TEXT if is_query else TEXT,
                  font=font)
        for i in range(FRAMES_PER_ROW):
            x = MARGIN + i * (THUMB + 4)
            top = y + LABEL_H
            if frames is not None and i < len(frames):
                sheet.paste(Image.fromarray(np.ascontiguousarray(frames[i])).resize((THUMB, THUMB)), (x, top))
            else:
                draw.rectangle((x, top, x + THUMB - 1, top + THUMB - 1), fill=MISSING)
                if i == 0:
                    draw.text((x + 6, top + THUMB // 2 - 8), "no frames", fill=TEXT, font=font)
        if is_query:  # a line under the query row sets it apart from the matches
            line_y = y + row_h - MARGIN // 2 - 1
            draw.rectangle((MARGIN, line_y, width - MARGIN - 1, line_y + 1), fill=QUERY_TEXT)
    return sheet


def draw_results(out: str | os.PathLike, results: list[dict], png: str | os.PathLike) -> str:
    """Contact sheet of `vmae-fast search` results (run_query output) written to `png`; returns the path."""
    sampling = load_run(out)["config"]["sampling"]
    rows = []
    for result in results:
        q = result["query"]
        if q["type"] == "vector":
            rows.append((f"query: vector {q['row']} of {os.path.basename(q['file'])}", None, True))
        else:
            path = q["path"] if q["type"] == "video" else resolve_media_path(out, q.get("path"))
            name = q.get("video_id") or os.path.basename(q.get("path") or "?")
            rows.append((f"query  {q['start_s']:.1f}–{q['end_s']:.1f} s  {name}",
                         clip_thumbnails(path, q["start_s"], q["end_s"], sampling), True))
        for rank, m in enumerate(result["matches"], 1):
            start, end = m.get("start_s"), m.get("end_s")
            span = f"{start:.1f}–{end:.1f} s" if start is not None and end is not None else "time unknown"
            if m.get("clip_index") is None and start is not None and end is not None:
                start = end = (start + end) / 2  # a video-level match: show the clip in its middle
            label = f"#{rank}  {m['score']:.3f}  {span}  {m.get('video_id') or '?'}"
            path = resolve_media_path(out, m.get("path"))
            frames = clip_thumbnails(path, start, end, sampling) if start is not None else None
            rows.append((label, frames, False))
    contact_sheet(rows).save(png, format="PNG")
    return os.fspath(png)
