"""decode_clips(): one video -> model-ready clips, through the backend chosen for the file (decord, PyAV fallback).

Frames are decoded in one sequential pass per video (sorted indices; frames shared by overlapping clips decoded
once), resized so the short side is image_size, center-cropped, turned upright, and timed by their presentation
timestamps.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from .crop import center_crop
from .decord_reader import DecordReader
from .errors import VideoError
from .pyav_reader import PyAVReader
from .sampling import Clip, ClipPlan, Sampling, VideoTask, plan_clips

# Lower-case file extensions (with the dot) treated as videos when scanning directories: `Path(p).suffix.lower()`.
VIDEO_EXTENSIONS = {
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".flv", ".wmv",
    ".3gp", ".ogv", ".asf", ".vob",
}
BACKENDS = ("auto", "decord", "pyav")


def check_path(path: str) -> None:
    if "://" in path:  # a URL: FFmpeg's protocols decide
        return
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise VideoError("open", f"dangling symlink: {path} -> {os.readlink(path)}")
    if not p.exists():
        raise VideoError("open", f"file not found: {path}")
    if p.is_dir():
        raise VideoError("open", f"is a directory, not a video file: {path}")
    if p.stat().st_size == 0:
        raise VideoError("open", f"empty file (0 bytes): {path}")



def _open_reader(path: str, image_size: int, backend: str, threads: int):
    """The reader for `backend`; "auto" tries decord and falls back to PyAV when decord cannot open the file."""
    check_path(path)
    pyav = PyAVReader(path, image_size, threads)  # header + packet scan: uniform "open" errors, native size
    if backend == "pyav" or (backend == "auto" and (pyav.pix_fmt.startswith(("gray", "ya")) or pyav.rotation_k)):
        # decord expands gray as limited range (24 -> 9; PyAV converts gray as full range, like FFmpeg) and
        # mishandles a display rotation (4-channel transposed frames at native size, unrotated when scaling)
        return pyav, None
    try:
        return DecordReader(path, (pyav.width, pyav.height), pyav.decode_size, threads,
                             timestamps=pyav.timestamps), pyav
    except VideoError:
        raise
    except Exception as e:  # noqa: BLE001 - decord raises its own types (DECORDError, RuntimeError, ...)
        if backend == "decord":
            raise VideoError("open", f"decord cannot open {path}: {one_line(e)}") from None
        return pyav, None


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def decode_clips(
    task: VideoTask,
    sampling: Sampling,
    image_size: int,
    backend: str = "auto",
    *,
    threads: int = 0,
    at_s: float | None = None,
    info: dict | None = None,
    alloc: Callable[[], np.ndarray] | None = None,
) -> Iterator[Clip]:
    """Decode the clips of one video, in clip order (see Sampling, Clip).

    backend: "auto" (decord, PyAV when decord cannot open or decode the file), "decord" or "pyav".
    threads: decoder threads (0: the backend's default, all cores). at_s: only the clip whose [start_s, end_s)
    covers this time, or the nearest clip when at_s falls between clips. info: if given, info["backend"] is set
    to the decoder actually used. alloc: if given, called once per clip for a writable uint8 array (num_frames,
    image_size, image_size, 3) that receives the clip's frames and becomes Clip.frames (DecodePool passes a
    shared-memory slot, so frames are written once, where the model reads them); default: a new array per clip.
    Raises VideoError(stage, message); clips already yielded are valid only if the iteration ends without an error
    (a video is all its clips or an error, never a part).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be an int >= 1, got {image_size!r}")
    info = {} if info is None else info
    path = os.fspath(task.path)
    reader, fallback = _open_reader(path, image_size, backend, threads)
    done = 0  # clips yielded so far
    while True:
        info["backend"] = reader.name
        plans = plan_clips(reader.timestamps, sampling, last_duration=reader.last_duration,
                           start_s=task.start_s, end_s=task.end_s)
        if at_s is not None:  # the clip covering at_s, else the nearest one (windows leave gaps of < 1 step)
            plans = [min(plans, key=lambda p: max(p.start_s - at_s, at_s - p.end_s, 0.0))]
        try:
            for clip in _assemble(reader, plans[done:], image_size, alloc):
                done += 1
                yield clip
            return
        except VideoError:
            raise
        except Exception as e:  # noqa: BLE001 - any decoder failure is this video's error (or a fallback)
            if reader.name == "decord" and backend == "auto":  # decord failed mid-way: go on with PyAV
                reader, fallback = fallback or PyAVReader(path, image_size, threads), None
                continue
            raise VideoError("decode", f"{reader.name} failed on {path}: {one_line(e)}") from None


def _assemble(reader, plans: list[ClipPlan], image_size: int, alloc=None) -> Iterator[Clip]:
    """One sequential pass over the union of the plans' frames; each clip is yielded once its last frame is in
    (stacked into alloc() when given, see decode_clips)."""
    if not plans:
        return
    wanted = np.unique(np.concatenate([p.frame_indices for p in plans]))
    cache: dict[int, np.ndarray] = {}
    k = 0
    for idx, frame in reader.frames(wanted):
        crop = center_crop(frame, image_size)
        # upright like a player shows it; a quarter turn of a centered square crop = the crop of the turned frame
        cache[idx] = np.rot90(crop, reader.rotation_k) if reader.rotation_k else crop
        while k < len(plans) and plans[k].last_frame <= idx:
            p = plans[k]
            frames = np.stack([cache[int(j)] for j in p.frame_indices], out=alloc() if alloc else None)
            yield Clip(p.clip_index, p.start_frame, p.end_frame, p.start_s, p.end_s, p.padded_frames, frames,
                       p.frame_indices.copy())
            k += 1
            keep_from = int(plans[k].frame_indices[0]) if k < len(plans) else idx + 1
            for j in [j for j in cache if j < keep_from]:
                del cache[j]
    if k < len(plans):
        raise VideoError("decode", f"the decoder stopped before frame {plans[k].last_frame}")

