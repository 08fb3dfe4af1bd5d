"""Video-level results from multi-view testing: every view (clip x crop) of a video -> one row of OUT/videos.

The VideoMAE papers evaluate a video on several temporal clips x 3 spatial crops (Kinetics-400: 5 x 3, SSv2: 2 x 3)
and average the softmax over the views. This module is that arithmetic, in one place for the writer (which commits
a video's row with its clips), the readers (outputs from before the video table) and the video-level index:

    embedding   mean of the views' embeddings, NOT renormalized (the index normalizes when it needs unit vectors)
    probs       mean over the views of softmax(logits) (when the model has a head), softmax in float64
    top_labels  the TOP (5) most probable labels by id2label, with top_probs

    VideoAccumulator                        running per-video sums over clip rows in any batches
    video_columns / aggregate_video         one video's row
    video_labels                            the labels of video rows (`vmae-fast labels`)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

from .schemas import TOP, video_schema


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, C) logits in float64 (max subtracted first: no overflow)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def label_names(id2label: dict | None, num_labels: int) -> list[str]:
    """Label name of every class index (keys of id2label may be str or int; missing ones are LABEL_<i>, as in HF)."""
    names = {int(k): str(v) for k, v in (id2label or {}).items()}
    return [names.get(i, f"LABEL_{i}") for i in range(num_labels)]


def top_indices(probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest probabilities of each row (n, C), best first; ties keep the lower class index."""
    p = np.atleast_2d(np.asarray(probs))
    k = min(int(k), p.shape[1])
    return np.argsort(-p, axis=1, kind="stable")[:, :k]


class VideoAccumulator:
    """Per-video running sums over clip rows fed in batches in any order (a video's rows may span batches):
    float64 sums of embeddings and of softmax(logits), view counts, clip indices and crop indices seen, the time
    span. `table()` gives one row per video in first-seen order with the video_schema columns.

    Memory: one embedding (and one probability vector) per video, in float64.
    """

    def __init__(self, embedding_dim: int, num_labels: int = 0):
        self.dim, self.num_labels = embedding_dim, num_labels
        self.order: dict[str, int] = {}
        self._emb = np.zeros((0, embedding_dim), np.float64)
        self._probs = np.zeros((0, num_labels), np.float64)
        self.counts: list[int] = []
        self.paths: list[str | None] = []
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.clips: list[set] = []
        self.crops: list[set] = []

    def __len__(self) -> int:
        return len(self.order)

    def _slots(self, video_ids: list[str]) -> np.ndarray:
        new = [v for v in dict.fromkeys(video_ids) if v not in self.order]
        if new:
            need = len(self.order) + len(new)
            if need > len(self._emb):  # grow by doubling: amortized O(1) copies per video
                size = max(2 * len(self._emb), need)
                self._emb = np.concatenate([self._emb, np.zeros((size - len(self._emb), self.dim))])
                self._probs = np.concatenate([self._probs, np.zeros((size - len(self._probs), self.num_labels))])
            for v in new:
                self.order[v] = len(self.order)
            self.counts += [0] * len(new)
            self.paths += [None] * len(new)
            self.starts += [math.inf] * len(new)
            self.ends += [-math.inf] * len(new)
            self.clips += [set() for _ in new]
            self.crops += [set() for _ in new]
        return np.fromiter((self.order[v] for v in video_ids), np.int64, len(video_ids))

    def add(self, video_ids: list[str], embeddings: np.ndarray, logits: np.ndarray | None = None, *,
            path: list[str] | None = None, clip_index: list[int] | None = None, crop_index: list[int] | None = None,
            start_s: list[float] | None = None, end_s: list[float] | None = None) -> None:
        """Rows of clips: video_ids (n,), embeddings (n, D), logits (n, C) when counting probabilities; the other
        columns (named as in the clips table) are optional (crop_index absent: 1, as in outputs written before crops
        existed)."""
        slots = self._slots(list(video_ids))
        np.add.at(self._emb, slots, np.asarray(embeddings, np.float64))
        if self.num_labels:
            if logits is None:
                raise ValueError("the clips have no logits column; probabilities need the model's head")
            np.add.at(self._probs, slots, softmax(logits))
        for i, s in enumerate(slots.tolist()):
            self.counts[s] += 1
            if path is not None and self.paths[s] is None:
                self.paths[s] = path[i]
            if clip_index is not None:
                self.clips[s].add(int(clip_index[i]))
            self.crops[s].add(1 if crop_index is None else int(crop_index[i]))
            if start_s is not None:
                self.starts[s] = min(self.starts[s], float(start_s[i]))
            if end_s is not None:
                self.ends[s] = max(self.ends[s], float(end_s[i]))

    def columns(self, id2label: dict | None = None, top: int = TOP,
                durations: dict[str, float] | None = None) -> dict[str, Any]:
        """Column arrays of the video rows (video_schema order). durations: video_id -> duration_s (the decoder's);
        a video without one gets the span of its views (end_s - start_s)."""
        n = len(self.order)
        counts = np.array(self.counts, np.float64).reshape(n, 1)
        starts = [s if math.isfinite(s) else 0.0 for s in self.starts]
        ends = [e if math.isfinite(e) else 0.0 for e in self.ends]
        ids = list(self.order)
        cols: dict[str, Any] = {
            "video_id": ids,
            "path": [p if p is not None else v for p, v in zip(self.paths, ids, strict=True)],
            "num_views": self.counts,
            "num_clips": [len(c) if c else k for c, k in zip(self.clips, self.counts, strict=True)],
            "num_crops": [len(c) for c in self.crops],
            "start_s": starts,
            "end_s": ends,
            "duration_s": [(durations or {}).get(v, e - s) for v, s, e in zip(ids, starts, ends, strict=True)],
            "embedding": (self._emb[:n] / np.maximum(counts, 1)).astype(np.float32),
        }
        if self.num_labels:
            probs = self._probs[:n] / np.maximum(counts, 1)
            names = label_names(id2label, self.num_labels)
            best = top_indices(probs, top) if n else np.zeros((0, 0), np.int64)
            cols["probs"] = probs.astype(np.float32)
            cols["top_labels"] = [[names[j] for j in row] for row in best.tolist()]
            cols["top_probs"] = [probs[i, row].astype(np.float32).tolist() for i, row in enumerate(best)]
        return cols

    def table(self, id2label: dict | None = None, top: int = TOP, durations: dict[str, float] | None = None,
              metadata: dict[str, str] | None = None):
        """The video rows as a pyarrow Table with video_schema (and `metadata` as its key-value metadata)."""
        schema = video_schema(self.dim, self.num_labels, top, metadata)
        return columns_table(self.columns(id2label, top, durations), schema)


def video_columns(rows: dict[str, Any], embedding_dim: int, num_labels: int, id2label: dict | None = None,
                  duration_s: float | None = None, top: int = TOP) -> dict[str, Any]:
    """The video row (columns of one row, video_schema order) of one video's clip rows as extract commits them:
    rows holds the clips-table columns (video_id, path, clip_index, crop_index, start_s, end_s lists; embedding
    (n, D), logits (n, C) arrays). duration_s: the decoder's (None: the span of the views)."""
    acc = VideoAccumulator(embedding_dim, num_labels)
    acc.add(rows["video_id"], rows["embedding"], rows.get("logits") if num_labels else None,
            **{k: rows[k] for k in ("path", "clip_index", "crop_index", "start_s", "end_s") if k in rows})
    durations = None if duration_s is None else {v: float(duration_s) for v in acc.order}
    return acc.columns(id2label, top, durations)


def columns_table(columns: dict[str, Any] | list[dict[str, Any]], schema):
    """A pyarrow Table of video rows with `schema` from column arrays (VideoAccumulator.columns / video_columns),
    or from a list of them concatenated in order (one dict per video, as the store buffers them)."""
    parts = [columns] if isinstance(columns, dict) else list(columns)
    arrays = {}
    for f in schema:
        values = [part[f.name] for part in parts]
        if values and isinstance(values[0], np.ndarray) and values[0].ndim == 2:
            matrix = np.concatenate(values) if len(values) > 1 else values[0]
            flat = pa.array(np.ascontiguousarray(matrix, np.float32).reshape(-1), pa.float32())
            arrays[f.name] = pa.FixedSizeListArray.from_arrays(flat, type=f.type)
        else:
            arrays[f.name] = pa.array([x for value in values for x in value], f.type)
    return pa.Table.from_pydict(arrays, schema=schema)


def aggregate_video(embeddings: np.ndarray, logits: np.ndarray | None = None, id2label: dict | None = None,
                    top: int = TOP) -> dict[str, Any]:
    """One video's views -> {"num_views", "embedding" float32 (D,), and with logits "probs" float32 (C,),
    "top_labels", "top_probs"} (the arithmetic of every video row)."""
    e = np.asarray(embeddings)
    acc = VideoAccumulator(e.shape[1], 0 if logits is None else np.asarray(logits).shape[1])
    acc.add(["video"] * len(e), e, logits)
    cols = acc.columns(id2label, top)
    out = {"num_views": int(cols["num_views"][0]), "embedding": cols["embedding"][0]}
    if logits is not None:
        out.update(probs=cols["probs"][0], top_labels=cols["top_labels"][0], top_probs=cols["top_probs"][0])
    return out


def video_labels(table, top: int = TOP, id2label: dict | None = None) -> list[dict[str, Any]]:
    """[{video_id, path, num_views, num_clips, num_crops, duration_s, labels: [{label, prob}, ...]}] of video rows;
    the top `top` labels come from `probs` (any k), named by id2label."""
    probs = table.column("probs")
    num_labels = probs.type.list_size
    p = probs.combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, num_labels)
    names = label_names(id2label, num_labels)
    best = top_indices(p, top) if len(p) else np.zeros((0, 0), np.int64)
    keys = ("video_id", "path", "num_views", "num_clips", "num_crops", "duration_s")
    rows = table.select([k for k in keys if k in table.column_names]).to_pylist()
    for row, probs_row, idx in zip(rows, p, best, strict=True):
        row["labels"] = [{"label": names[j], "prob": float(probs_row[j])} for j in idx.tolist()]
    return rows
