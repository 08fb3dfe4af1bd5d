"""Extract outputs written from synthetic embeddings (no video, no model): the clips parts `vmae-fast extract` would
write for given vectors, for the index, service and dedup tests and tools/bench_serve.py."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def write_dataset(
    out,
    vectors: np.ndarray,
    video: np.ndarray,
    *,
    parts: int = 3,
    row_group_size: int | None = None,
    embedding_dtype: str = "float32",
    config_hash: str = "c0ffee",
    side_views=None,
) -> None:
    """OUT/_run.json + OUT/clips/part-00000-<seq>.parquet with the DESIGN.md columns; a video's clips in one part.
    Embeddings are stored scaled (not unit) so that the index's normalization is exercised. side_views: (left,
    right) vectors like `vectors`: each clip then has three rows, crop_index 0, 1 (vectors), 2, as extract --crops 3
    writes them."""
    (out / "clips").mkdir(parents=True, exist_ok=True)
    (out / "_run.json").write_text(json.dumps({"config_hash": config_hash, "config": {}}))
    n, dim = vectors.shape
    clip_index = np.zeros(n, np.int32)
    for i in range(1, n):
        clip_index[i] = clip_index[i - 1] + 1 if video[i] == video[i - 1] else 0
    bounds = np.searchsorted(video, np.linspace(0, video[-1] + 1, parts + 1)[1:-1])  # cut between videos
    scale = np.linspace(0.5, 3.0, n, dtype=np.float32)[:, None]
    for seq, rows in enumerate(np.split(np.arange(n), bounds)):
        vid = [f"clips/v{v:05d}.mp4" for v in video[rows]]
        table = pa.table(
            {
                "video_id": pa.array(vid, pa.string()),
                "path": pa.array([f"/data/{v}" for v in vid], pa.string()),
                "clip_index": pa.array(clip_index[rows], pa.int32()),
                "start_frame": pa.array(clip_index[rows].astype(np.int64) * 64, pa.int64()),
                "end_frame": pa.array(clip_index[rows].astype(np.int64) * 64 + 61, pa.int64()),
                "start_s": pa.array(clip_index[rows] * 2.0, pa.float64()),
                "end_s": pa.array(clip_index[rows] * 2.0 + 2.0, pa.float64()),
                "padded_frames": pa.array(np.zeros(len(rows), np.int16), pa.int16()),
                "num_tokens": pa.array(np.full(len(rows), 1568, np.int32), pa.int32()),
                "embedding": pa.FixedSizeListArray.from_arrays(
                    pa.array((vectors[rows] * scale[rows]).astype(embedding_dtype).ravel()), dim
                ),
            }
        )
        if side_views is not None:  # crop-major per clip: (clip 0: crops 0, 1, 2), (clip 1: ...)
            views = np.stack([side_views[0][rows], vectors[rows], side_views[1][rows]], 1) * scale[rows][:, None]
            table = table.take(np.repeat(np.arange(len(rows)), 3)).drop_columns(["embedding"])
            table = table.append_column("crop_index", pa.array(np.tile([0, 1, 2], len(rows)), pa.int8()))
            table = table.append_column(
                "embedding", pa.FixedSizeListArray.from_arrays(pa.array(views.astype(embedding_dtype).ravel()), dim)
            )
        pq.write_table(table, out / "clips" / f"part-00000-{seq:05d}.parquet", row_group_size=row_group_size)
