"""`vmae-fast search --html PAGE`: one self-contained HTML file with a card per query and per match (rank, score,
video, time range, thumbnails embedded as data: URIs) whose <video> plays the matched segment through a media
fragment (`#t=start,end`) on the video's file URL or on a `--media-root` URL prefix.

Nothing in the page is fetched from elsewhere except the videos themselves; it opens offline in any browser.
"""

from __future__ import annotations

import base64
import html
import io
import os
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image

from ..store import load_run
from .contact_sheet import clip_thumbnails
from .search import describe_query, resolve_media_path

THUMBS_PER_CARD = 3
THUMB_SIZE = 112

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; background: #f4f4f6; color: #1d1d22; }
h1 { font-size: 20px; margin: 0 0 4px; } .index { color: #555; margin: 0 0 16px; }
.results { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 14px; margin-bottom: 28px;
}
.card { background: #fff; border-radius: 8px; padding: 10px 12px; box-shadow: 0 1px 3px rgba(0,0,0,.15); }
.card.query { border: 2px solid #e0a800; }
.head { display: flex; gap: 10px; align-items: baseline; } .rank { font-weight: 700; font-size: 16px; }
.score { font-variant-numeric: tabular-nums; color: #0b6; } .video-id { word-break: break-all; font-weight: 600; }
.time { color: #555; font-variant-numeric: tabular-nums; }
.thumbs { display: flex; gap: 4px; margin: 6px 0; } .thumbs img { width: 33%; border-radius: 3px; }
video { width: 100%; background: #000; border-radius: 4px; } .missing { color: #a00; }
"""


def media_url(path: str | None, video_id: str | None, media_root: str | None) -> str | None:
    """Where the page's <video> finds a video: media_root + the URL-quoted video_id (the path relative to the input
    folder), or the file:// URL of its path on this machine; None when neither is known."""
    if media_root:
        if not video_id:
            return None
        return media_root.rstrip("/") + "/" + quote(video_id.replace(os.sep, "/"))
    if not path:
        return None
    return Path(path).resolve().as_uri()  # percent-encodes spaces and non-ASCII names


def _fragment(start_s: float | None, end_s: float | None) -> str:
    if start_s is None:
        return ""
    return f"#t={start_s:.3f}" + (f",{end_s:.3f}" if end_s is not None else "")


def _jpeg_data_uri(frame: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _card(title: str, score: float | None, video_id: str | None, start_s, end_s, url: str | None, frames,
          is_query: bool) -> str:
    e = html.escape
    span = f"{start_s:.2f}–{end_s:.2f} s" if start_s is not None and end_s is not None else "time unknown"
    attrs = f' data-start="{start_s:.3f}"' if start_s is not None else ""
    attrs += f' data-end="{end_s:.3f}"' if end_s is not None else ""
    parts = [f'<article class="card{" query" if is_query else ""}"{attrs}>',
             f'<div class="head"><span class="rank">{e(title)}</span>'
             + (f'<span class="score">{score:.3f}</span>' if score is not None else "") + "</div>",
             f'<div class="video-id">{e(video_id or "?")}</div><div class="time">{e(span)}</div>']
    if frames is not None:
        parts.append('<div class="thumbs">' + "".join(
            f'<img src="{_jpeg_data_uri(f)}" alt="{e(video_id or "")} frame {i}">' for i, f in enumerate(frames))
            + "</div>")
    else:
        parts.append('<div class="thumbs missing">no frames (video not found or unreadable here)</div>')
    if url:
        parts.append(f'<video controls muted preload="metadata" src="{e(url + _fragment(start_s, end_s))}"></video>')
    parts.append("</article>")
    return "\n".join(parts)


def write_page(out: str | os.PathLike, results: list[dict], page: str | os.PathLike, *, index=None,
               media_root: str | None = None) -> str:
    """Write the results page of `vmae-fast search` results (run_query output) to `page`; returns its path."""
    sampling = load_run(out)["config"]["sampling"]
    e = html.escape
    sections = []
    for result in results:
        q = result["query"]
        cards = []
        if q["type"] != "vector":
            path = q["path"] if q["type"] == "video" else resolve_media_path(out, q.get("path"))
            vid = q.get("video_id") or os.path.basename(q.get("path") or "")
            frames = clip_thumbnails(path, q["start_s"], q["end_s"], sampling, THUMBS_PER_CARD, THUMB_SIZE)
            url = media_url(path, q.get("video_id"), media_root) if q["type"] == "clip" else media_url(path, vid, None)
            cards.append(_card("query", None, vid, q["start_s"], q["end_s"], url, frames, True))
        for rank, m in enumerate(result["matches"], 1):
            start, end = m.get("start_s"), m.get("end_s")
            path = resolve_media_path(out, m.get("path"))
            mid = (start + end) / 2 if start is not None and end is not None else None
            at = (start, end) if m.get("clip_index") is not None else (mid, mid)  # video level: its middle clip
            frames = clip_thumbnails(path, *at, sampling, THUMBS_PER_CARD, THUMB_SIZE) if start is not None else None
            url = media_url(path or m.get("path"), m.get("video_id"), media_root)
            cards.append(_card(f"#{rank}", m["score"], m.get("video_id"), start, end, url, frames, False))
        sections.append(f"<section><h2>{e(describe_query(q))}</h2>\n<div class=\"results\">\n"
                        + "\n".join(cards) + "\n</div></section>")
    about = e(index.describe()) if index is not None else ""
    doc = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
           f"<title>vmae-fast search: {e(str(out))}</title><style>{_CSS}</style></head><body>\n"
           f"<h1>vmae-fast search results</h1><p class=\"index\">{about}<br>{e(str(out))}, "
           f"{time.strftime('%Y-%m-%d %H:%M')}</p>\n" + "\n".join(sections) + "\n</body></html>\n")
    Path(page).write_text(doc, encoding="utf-8")
    return os.fspath(page)
