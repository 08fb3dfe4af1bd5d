"""What `vmae-fast serve` knows of an extract output: its indexes (clip level, and video level when built), loaded
once, and the lookups a query needs: a stored clip's or video's vector, rows by id, the videos by name, and the one
file each video id may be served from.

    catalog = Catalog("out")
    catalog.search_clip("a.mp4", 3, k=10)        # {"query": {...}, "level": "clip", "matches": [...]}
    catalog.search_video("a.mp4", k=10)          # video level (needs `vmae-fast index OUT --level video`)
    catalog.search_vector(vector, k=10)          # float (D,)
    catalog.media_path("a.mp4")                  # the file the output's rows name for that video, or NotFound

A query's vector is the stored one: read back from the FAISS index where it holds full vectors (flat, IVF-Flat,
HNSW: exact up to float32), else (PQ codes are lossy) from the Parquet rows (`clip_vector`, a scan of OUT/clips).
Results never carry a file path of this machine: a match names its video, and `media` is the URL the service plays
it from.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..faults import InvalidInput, UnusableOutput
from ..store import out_path
from ..video import VIDEO_EXTENSIONS
from .index import LEVELS, Index, clip_vector
from .search import resolve_media_path

MAX_K = 1000  # matches a query may ask for
EXACT_KINDS = ("flat", "ivf", "hnsw")  # kinds whose FAISS index keeps every vector in float32
# every match has these keys (None where they do not apply: clip_index at video level, num_clips at clip level)
MATCH_KEYS = ("row", "score", "video_id", "clip_index", "crop_index", "start_s", "end_s", "num_clips")


class NotFound(InvalidInput):
    """A video, clip, row or index level the output does not have (the service answers 404)."""


class _Level:
    """One loaded index and its lookups by video: rows of a video in index order (`rows_of`)."""

    def __init__(self, index: Index):
        self.index = index
        self.level = index.level
        meta = index.metadata
        if meta is None or "video_id" not in meta.column_names:
            raise UnusableOutput(f"the {self.level}-level index has no video_id column; rebuild it with "
                                 "`vmae-fast index`")
        ids = pc.dictionary_encode(meta.column("video_id").combine_chunks())
        codes = ids.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        self.video_ids: list[str] = ids.dictionary.to_pylist()  # one per video, in order of first row
        self.slot = {video_id: i for i, video_id in enumerate(self.video_ids)}
        self.order = np.argsort(codes, kind="stable")  # rows grouped by video, each video's rows in index order
        self.offsets = np.searchsorted(codes[self.order], np.arange(len(self.video_ids) + 1))
        self.clip_index = (meta.column("clip_index").to_numpy(zero_copy_only=False)
                           if "clip_index" in meta.column_names else None)
        self.paths = meta.column("path") if "path" in meta.column_names else None
        self.exact = index.kind in EXACT_KINDS
        if self.exact and index.kind == "ivf":  # IVF lists: reconstruct() needs the row -> list map (8 B a row)
            faiss.extract_index_ivf(index.faiss_index).make_direct_map()

    def rows_of(self, video_id: str) -> np.ndarray:
        """Index rows of a video (int64, in index order); NotFound when the index has none."""
        slot = self.slot.get(video_id)
        if slot is None:
            unit = "clips" if self.level == "clip" else "videos"
            raise NotFound(f"no video {video_id!r} in the {self.level}-level index ({len(self.index)} {unit})")
        return self.order[self.offsets[slot]:self.offsets[slot + 1]]

    def vector(self, row: int) -> np.ndarray:
        return self.index.faiss_index.reconstruct(int(row))


def _video_file(named: Path) -> Path | None:
    """The regular file `named` leads to, when it and where its symlinks lead both have a video extension (a row
    names a video: not /etc/passwd behind a symlink); else None."""
    real = Path(os.path.realpath(named))
    if named.suffix.lower() not in VIDEO_EXTENSIONS or real.suffix.lower() not in VIDEO_EXTENSIONS:
        return None
    return real if real.is_file() else None


class Catalog:
    """The indexes of OUT and everything a query needs (see the module docstring). Thread-safe for queries."""

    def __init__(self, out: str | os.PathLike, *, check: bool = True):
        self.out = out_path(out)
        self.levels: dict[str, _Level] = {"clip": _Level(Index.load(out, "clip", check=check))}
        if Index.paths(out, "video")["manifest"].is_file():
            self.levels["video"] = _Level(Index.load(out, "video", check=check))
        self.dim = self.levels["clip"].index.dim
        self._media: dict[str, Path] = {}  # video id -> the file its rows name (ids of the rows only)
        self._media_lock = threading.Lock()
        self._search_ids = sorted(self.levels["clip"].video_ids)
        self._search_keys = [v.casefold() for v in self._search_ids]

    # --- what the output holds ---------------------------------------------------------------------------------------
    def level(self, level: str) -> _Level:
        if level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
        if level not in self.levels:
            raise NotFound(f"no {level}-level index in {str(self.out)!r}; build it with "
                           f"`vmae-fast index {self.out} --level {level}` and restart the server")
        return self.levels[level]

    def stats(self) -> dict[str, Any]:
        """Per level: what the index is and its measured quality (Index.stats), and a one-line description."""
        levels = {}
        for name, lv in self.levels.items():
            s = {k: v for k, v in lv.index.stats.items() if k not in ("added", "train_rule")}
            levels[name] = {**s, "videos": len(lv.video_ids), "describe": lv.index.describe(),
                            "query_vectors": "stored in the index" if lv.exact else "read from the Parquet rows"}
        return {"out": self.out.name, "dim": self.dim, "levels": levels}

    def videos(self, text: str = "", limit: int = 20) -> list[str]:
        """Video ids containing `text` (case-insensitive), those starting with it first, at most `limit`."""
        if not 1 <= limit <= MAX_K:
            raise ValueError(f"limit must be in 1..{MAX_K}, got {limit}")
        key = text.casefold()
        starts = [v for v, k in zip(self._search_ids, self._search_keys, strict=True) if k.startswith(key)]
        if len(starts) >= limit:
            return starts[:limit]
        seen = set(starts)
        more = [v for v, k in zip(self._search_ids, self._search_keys, strict=True) if key in k and v not in seen]
        return (starts + more)[:limit]

    def clips(self, video_id: str) -> list[dict[str, Any]]:
        """The clips of a video in the clip index: [{"row", "clip_index", "start_s", "end_s"}], in clip order."""
        lv = self.levels["clip"]
        rows = lv.rows_of(video_id)
        return [{"row": int(r), **{k: v for k, v in m.items() if k in ("clip_index", "start_s", "end_s")}}
                for r, m in zip(rows.tolist(), lv.index.metadata.take(rows).to_pylist(), strict=True)]

    def metadata(self, rows: list[int], level: str = "clip") -> list[dict[str, Any]]:
        """The metadata of index rows (what a match carries, without its score); NotFound naming unknown rows."""
        lv = self.level(level)
        n = len(lv.index)
        bad = [r for r in rows if not 0 <= r < n]
        if bad:
            raise NotFound(f"no row {bad[0]} in the {level}-level index (rows 0..{n - 1})"
                           + (f" ({len(bad)} unknown rows)" if len(bad) > 1 else ""))
        table = lv.index.metadata.take(pa.array(rows, pa.int64())) if rows else lv.index.metadata.slice(0, 0)
        return [self._public({"row": r, **m}) for r, m in zip(rows, table.to_pylist(), strict=True)]

    # --- queries -------------------------------------------------------------------------------------------------
    def clip_vector(self, video_id: str, clip_index: int, crop_index: int | None = None) -> tuple[np.ndarray, dict]:
        """The stored embedding of a clip (float32 (D,), unit length when read from the index) and its metadata."""
        lv = self.levels["clip"]
        rows = lv.rows_of(video_id)
        if lv.clip_index is None:
            raise UnusableOutput("the clip index has no clip_index column; rebuild it with `vmae-fast index`")
        hit = rows[lv.clip_index[rows] == clip_index]
        if len(hit) == 0:
            have = np.sort(lv.clip_index[rows])
            raise NotFound(f"video {video_id!r} has no clip {clip_index} (it has clips {have[0]}..{have[-1]})")
        if lv.exact and crop_index in (None, 1):  # the clip index holds the center view
            row = int(hit[0])
            meta = self._public(lv.index.metadata.slice(row, 1).to_pylist()[0])
            return lv.vector(row), {**meta, "row": row}
        try:
            vector, meta = clip_vector(self.out, video_id, clip_index, crop_index)
        except ValueError as e:
            raise NotFound(str(e)) from None
        return vector, self._public(meta)

    def video_vector(self, video_id: str) -> tuple[np.ndarray, dict]:
        """The video-level embedding of a video (mean of its views, unit length) and its metadata."""
        lv = self.level("video")
        rows = lv.rows_of(video_id)
        row = int(rows[0])
        meta = self._public({"row": row, **lv.index.metadata.slice(row, 1).to_pylist()[0]})
        if lv.exact:
            return lv.vector(row), meta
        from ..store.reader import iter_videos  # PQ codes are lossy: the video table's own row

        for table in iter_videos(self.out, ["video_id", "embedding"]):
            hit = table.filter(pc.equal(table.column("video_id"), video_id))
            if hit.num_rows:
                flat = hit.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
                return flat[: self.dim].astype(np.float32), meta
        raise NotFound(f"no video {video_id!r} in {str(self.out)!r}")

    def search(self, vector: np.ndarray, k: int = 10, level: str = "clip") -> list[dict[str, Any]]:
        """Top-k matches of one vector (float (D,)) in a level's index: dicts with row, score, video_id, clip_index,
        crop_index, start_s, end_s (clip level) or num_clips (video level), and media (the URL playing it)."""
        lv = self.level(level)
        if not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise ValueError(f"k must be an integer in 1..{MAX_K}, got {k!r}")
        v = np.asarray(vector, dtype=np.float32)
        if v.ndim != 1:
            raise ValueError(f"a query vector must be one-dimensional (D,), got shape {v.shape}")
        if v.shape[0] != self.dim:
            raise ValueError(f"the vector has {v.shape[0]} dimensions, the index has {self.dim}")
        if not np.isfinite(v).all():
            raise ValueError("the vector contains NaN or infinity")
        if not np.any(v):
            raise ValueError("the vector is all zeros: it has no direction to compare")
        return [self._public({**dict.fromkeys(MATCH_KEYS), **m.to_dict()}) for m in lv.index.search(v, k)[0]]

    def search_clip(self, video_id: str, clip_index: int, crop_index: int | None = None, k: int = 10,
                    level: str = "clip") -> dict[str, Any]:
        vector, meta = self.clip_vector(video_id, clip_index, crop_index)
        return {"query": {"type": "clip", **meta}, "level": level, "matches": self.search(vector, k, level)}

    def search_video(self, video_id: str, k: int = 10, level: str = "video") -> dict[str, Any]:
        vector, meta = self.video_vector(video_id)
        return {"query": {"type": "video", **meta}, "level": level, "matches": self.search(vector, k, level)}

    def search_vector(self, vector, k: int = 10, level: str = "clip") -> dict[str, Any]:
        return {"query": {"type": "vector"}, "level": level, "matches": self.search(vector, k, level)}

    # --- media ---------------------------------------------------------------------------------------------------
    def media_path(self, video_id: str) -> Path:
        """The video file the output's rows name for `video_id`, resolved (symlinks followed) to a regular file with a
        video extension; NotFound for anything else. The request never names a path: it only picks a video id, a key
        of the rows, so `..`, absolute paths and encoded tricks match no video. Which file a row names is remembered
        (for ids the rows have, never for others: an unknown id costs no memory); where it leads is checked on every
        request, so a file replaced by a symlink to something else after it was served is not served."""
        named = None
        if video_id in self.levels["clip"].slot:
            with self._media_lock:
                named = self._media.get(video_id)
                if named is None:
                    named = self._named_media(video_id)
                    if named is not None:  # a file missing now may appear later: looked for again then
                        self._media[video_id] = named
        path = _video_file(named) if named is not None else None
        if path is None:
            raise NotFound(f"the video of {video_id!r} is not available on this server")
        return path

    def _named_media(self, video_id: str) -> Path | None:
        """The file the first row of a video names (as stored, or relative to OUT or its folder), if it exists."""
        lv = self.levels["clip"]
        if lv.paths is None:
            return None
        named = resolve_media_path(self.out, lv.paths[int(lv.rows_of(video_id)[0])].as_py())
        return Path(named) if named is not None else None

    def media_url(self, video_id: str | None) -> str | None:
        if not video_id or video_id not in self.levels["clip"].slot:
            return None
        return "/media/" + quote(video_id, safe="")

    def _public(self, match: dict[str, Any]) -> dict[str, Any]:
        """A row's or match's fields for a client: no file path of this machine, the media URL instead."""
        out = {k: v for k, v in match.items() if k != "path"}
        out["media"] = self.media_url(match.get("video_id"))
        return out
