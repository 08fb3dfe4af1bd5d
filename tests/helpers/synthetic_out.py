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


def write_video_output(out, videos: int, dim: int, *, parts: int = 8, topics: int = 1000, copies: float = 0.01,
                       seed: int = 0, embedding_dtype: str = "float16", chunk: int = 50_000) -> dict:
    """An extract output of `videos` videos with its video table, written part by part (memory: one part's vectors,
    never all of them): OUT/clips/part-00000-<seq>.parquet with one clip per video (embedding_dtype, as extract
    --embedding-dtype writes it) and OUT/videos/<same name> with each video's row (video_schema; its embedding is
    its one clip's, in float32). Vectors: unit, around `topics` random topic centers (cosine ~0.5 within a topic);
    a fraction `copies` of the videos are near-duplicates of the video before them in their part (cosine ~0.999).
    For tools/bench_dedup.py --video-memory (10^5..10^6 videos of 768-d) and tests. Returns {"videos", "copies"}."""
    from vmae_fast.store.schemas import video_schema

    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((topics, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "_run.json").write_text(json.dumps({"config_hash": "c0ffee", "config": {}}))
    bounds = np.linspace(0, videos, parts + 1).astype(np.int64)
    planted = 0
    for seq in range(parts):
        lo, hi = int(bounds[seq]), int(bounds[seq + 1])
        vectors = np.empty((hi - lo, dim), np.float32)
        for s in range(0, hi - lo, chunk):  # float32 chunks: no float64 copy of a part
            m = min(chunk, hi - lo - s)
            x = centers[rng.integers(0, topics, m)] + rng.standard_normal((m, dim), dtype=np.float32) / np.sqrt(dim)
            vectors[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        copy = np.flatnonzero(rng.random(hi - lo) < copies)
        copy = copy[copy > 0]
        noise = 0.03 / np.sqrt(dim) * rng.standard_normal((len(copy), dim), dtype=np.float32)
        vectors[copy] = vectors[copy - 1] + noise
        planted += len(copy)
        stored = vectors.astype(embedding_dtype)
        del vectors
        ids = [f"videos/v{v:08d}.mp4" for v in range(lo, hi)]
        n = hi - lo
        zeros, twos = np.zeros(n), np.full(n, 2.0)
        clips = pa.table({
            "video_id": pa.array(ids, pa.string()), "path": pa.array([f"/data/{v}" for v in ids], pa.string()),
            "clip_index": pa.array(np.zeros(n, np.int32)), "start_frame": pa.array(np.zeros(n, np.int64)),
            "end_frame": pa.array(np.full(n, 61, np.int64)), "start_s": pa.array(zeros), "end_s": pa.array(twos),
            "padded_frames": pa.array(np.zeros(n, np.int16)), "num_tokens": pa.array(np.full(n, 1568, np.int32)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(stored.ravel()), dim),
        })
        video_rows = pa.table({
            "video_id": clips.column("video_id"), "path": clips.column("path"),
            "num_views": pa.array(np.ones(n, np.int32)), "num_clips": pa.array(np.ones(n, np.int32)),
            "num_crops": pa.array(np.ones(n, np.int8)), "start_s": pa.array(zeros), "end_s": pa.array(twos),
            "duration_s": pa.array(twos),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(stored.astype(np.float32).ravel()), dim),
        }, schema=video_schema(dim, 0))
        del stored
        name = f"part-00000-{seq:06d}.parquet"
        pq.write_table(video_rows, out / "videos" / name)  # the videos part first, then the clips part (commit)
        pq.write_table(clips, out / "clips" / name)
    return {"videos": videos, "copies": planted}
