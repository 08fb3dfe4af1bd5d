"""Queries for `vmae-fast search`: turn a video moment, a stored clip or a .npy file into query vectors, run them
against an Index and format the ranked matches (table for people, dicts for --json).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

from .. import store
from ..extraction.spec import RunSpec
from ..faults import InvalidInput, InvalidOption, UnusableOutput
from ..video import VideoError, VideoTask, decode_clips
from ..video.crop import CROP_INDICES
from .index import Index, clip_vector

# --- one clip, embedded as a run did ----------------------------------------------------------------------------------
_MODEL_CACHE: dict = {}


def embed_video_at(out: str | os.PathLike, path: str | os.PathLike, at_s: float, device: str | None = None,
                   crop_index: int = 1):
    """Embed the clip of `path` covering time `at_s` exactly as the run in `out` did; returns (np.float32 (D,), Clip).

    The clip grid and the views are the run's sampling, so the result matches the stored row (video_id, clip_index,
    crop_index) of that clip (up to the device's numerics when `device` differs from the run's). When at_s falls
    between clips, the nearest clip is taken. crop_index: which spatial view (0 start, 1 center, 2 end of the long
    side); default 1, the center, the view a run of one crop holds and the clip-level index holds for three crops.
    """
    if at_s is None or at_s < 0:
        raise ValueError(f"at_s must be a time >= 0 in seconds, got {at_s!r}")
    spec = RunSpec.from_run(out, device=device)  # the run's model, sampling, keep policy and dtype
    crops = CROP_INDICES[spec.crops]
    if isinstance(crop_index, bool) or crop_index not in crops:
        raise ValueError(f"crop_index must be one of {list(crops)} for {out}, which holds {spec.crops} crop(s) per "
                         f"clip, got {crop_index!r}")
    key = (spec.model, str(spec.resolve_device()), spec.dtype, spec.clip_frames)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()  # one model at a time: they can be large
        _MODEL_CACHE[key] = spec.load()  # with the run's frame count (a V-JEPA 2 run's --clip-frames)
    loaded = _MODEL_CACHE[key]
    net, sampling = loaded.model, loaded.sampling
    config = store.load_run(out)["config"]
    expected = config["model"].get("weights_sha256")
    if expected and net.describe().get("weights_sha256") != expected:
        raise UnusableOutput(f"the weights at {spec.model} changed since {out} was written (checksum differs)")
    task = VideoTask(path=os.path.abspath(path), video_id=str(path))
    # every view of the clip, decoded as the run did (three crops are cut from one scale of the whole frame)
    views = list(decode_clips(task, sampling, int(config["image_size"]), at_s=float(at_s)))
    if not views:
        raise InvalidInput(f"{path}: no clips could be sampled")
    (clip,) = [v for v in views if v.crop_index == crop_index]
    frames = torch.from_numpy(np.ascontiguousarray(clip.frames))[None].to(loaded.device)
    with torch.inference_mode():
        embedding = net(frames, keep=loaded.keep_policy).embeddings[0].float().cpu().numpy()
    if spec.embedding_dtype == "float16":  # match the stored row
        embedding = embedding.astype(np.float16).astype(np.float32)
    return embedding, clip


def video_duration(path: str | os.PathLike) -> float:
    """Length of a video in seconds from its container (PyAV), for checking a query time; ValueError if unreadable."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InvalidInput(f"video {path!r} is a folder: name one video file")
    if not os.path.isfile(path):
        raise InvalidInput(f"video {path!r} does not exist")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise InvalidInput(f"{path!r} has no video stream")
            stream = container.streams.video[0]
            if stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
            if container.duration:
                return container.duration / 1e6  # av.time_base: microseconds
            # no duration in the headers: read the last packet's timestamp
            last = max((p.pts + (p.duration or 0)) * p.time_base for p in container.demux(stream) if p.pts is not None)
            return float(last - (stream.start_time or 0) * stream.time_base)
    except av.FFmpegError as e:
        raise InvalidInput(f"cannot read video {path!r}: {e}") from None


def parse_clip_id(text: str) -> tuple[str, int]:
    """'VIDEO_ID:CLIP_INDEX' -> (video_id, clip_index); the video id may itself contain ':'."""
    video_id, sep, index = text.rpartition(":")
    if not sep or not video_id or not index.strip().lstrip("-").isdigit():
        raise InvalidOption(f"--clip must be VIDEO_ID:CLIP_INDEX (e.g. clips/a.mp4:3), got {text!r}")
    return video_id, int(index)


def load_vectors(file: str | os.PathLike) -> np.ndarray:
    """A .npy of query vectors: float (D,) or (n, D) -> float32 (n, D)."""
    try:
        x = np.load(file, allow_pickle=False)
    except FileNotFoundError:
        raise InvalidInput(f"vector file {os.fspath(file)!r} does not exist") from None
    except (OSError, ValueError) as e:
        raise InvalidInput(f"cannot read {os.fspath(file)!r} as a .npy array: {e}") from None
    if x.ndim not in (1, 2) or x.size == 0 or not np.issubdtype(x.dtype, np.number):
        raise InvalidInput(f"{os.fspath(file)!r} must hold a numeric (D,) or (n, D) array, got shape {x.shape} "
                           f"{x.dtype}")
    x = np.atleast_2d(x).astype(np.float32)
    zero = np.flatnonzero(~x.any(axis=1))
    if len(zero):  # no direction to compare: every match would score 0, in no meaningful order
        raise InvalidInput(f"row {zero[0]} of {os.fspath(file)!r} is all zeros: a query vector needs a direction")
    return x


def run_query(index: Index, out: str | os.PathLike, *, video: str | None = None, at_s: float = 0.0,
              clip: str | None = None, vector: str | None = None, k: int = 10,
              device: str | None = None) -> list[dict[str, Any]]:
    """Run one kind of query against `index` (built from `out`). Returns [{"query": {...}, "matches": [...]}],
    one entry per query vector (several only for an (n, D) --vector file); matches are Match.to_dict()."""
    if sum(q is not None for q in (video, clip, vector)) != 1:
        raise ValueError("give exactly one of video, clip, vector")
    if video is not None:
        vectors, queries = _video_query(out, video, at_s, device)
    elif clip is not None:
        video_id, clip_index = parse_clip_id(clip)
        v, meta = clip_vector(out, video_id, clip_index)
        vectors, queries = v[None], [{"type": "clip", **meta}]
    else:
        vectors = load_vectors(vector)
        queries = [{"type": "vector", "file": os.fspath(vector), "row": i} for i in range(len(vectors))]
    results = index.search(vectors, k)
    return [{"query": q, "matches": [m.to_dict() for m in ms]} for q, ms in zip(queries, results, strict=True)]


def _video_query(out, path: str, at_s: float, device: str | None):
    if at_s is None or not np.isfinite(at_s) or at_s < 0:
        raise InvalidOption(f"--at must be a time >= 0 in seconds, got {at_s}")
    duration = video_duration(path)
    if at_s >= duration:
        raise InvalidOption(f"--at {at_s:g} s is beyond the end of {path!r}, which lasts {duration:.2f} s")
    try:
        vector, clip = embed_video_at(out, path, at_s, device=device)
    except VideoError as e:
        raise InvalidInput(f"cannot read video {path!r}: {e}") from None
    query = {"type": "video", "path": os.path.abspath(path), "at_s": at_s, "clip_index": clip.clip_index,
             "crop_index": clip.crop_index, "start_s": clip.start_s, "end_s": clip.end_s}
    return vector[None], [query]


def describe_query(q: dict) -> str:
    if q["type"] == "video":
        return (f"{q['path']} at {q['at_s']:g} s (clip {q['clip_index']}, "
                f"{q['start_s']:.2f}-{q['end_s']:.2f} s)")
    if q["type"] == "clip":
        return f"clip {q['clip_index']} of {q['video_id']} ({_span(q)})"
    return f"vector {q['row']} of {q['file']}"


def _span(m: dict) -> str:
    if m.get("start_s") is None or m.get("end_s") is None:
        return "time unknown"
    return f"{m['start_s']:.2f}-{m['end_s']:.2f} s"


def format_results(index: Index, results: list[dict]) -> str:
    """Readable ranked lists: rank, score, time range, video (and clip)."""
    lines = []
    unit = "clips" if index.level == "clip" else "videos"
    for r in results:
        lines.append(f"query: {describe_query(r['query'])}")
        lines.append(f"top {len(r['matches'])} of {len(index)} {unit} ({index.kind} index, cosine similarity):")
        lines.append(f"{'rank':>4}  {'score':>6}  {'time':>15}  video")
        for rank, m in enumerate(r["matches"], 1):
            where = m.get("video_id") or f"row {m['row']}"
            if m.get("clip_index") is not None:
                where += f"  (clip {m['clip_index']})"
            elif m.get("num_clips") is not None:
                where += f"  ({m['num_clips']} clips)"
            lines.append(f"{rank:>4}  {m['score']:>6.3f}  {_span(m):>15}  {where}")
        lines.append("")
    return "\n".join(lines).rstrip()


def resolve_media_path(out: str | os.PathLike, path: str | None) -> str | None:
    """A match's `path` as stored by extract (absolute, or relative to where extract ran): the first that exists."""
    if not path:
        return None
    candidates = [Path(path)] if store.is_url(out) else [Path(path), Path(out) / path, Path(out).parent / path]
    for c in candidates:
        if c.is_file():
            return os.fspath(c)
    return None
