"""Video -> clips: sampling plans, decoding (decord, PyAV fallback) and a crash-isolating pool of decode workers.

decode_clips() turns one video into model-ready clips: uint8 (num_frames, S, S, 3), short side resized to S while
decoding, center crop. Frames are decoded in one sequential pass per video (sorted indices; frames shared by
overlapping clips decoded once) and timed by their presentation timestamps, never by index / fps.
DecodePool runs decode_clips in worker processes so that a decoder that hangs, segfaults or aborts costs one
video, not the run.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue
import signal
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

# Lower-case file extensions (with the dot) treated as videos when scanning directories: `Path(p).suffix.lower()`.
VIDEO_EXTENSIONS = {
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".flv", ".wmv",
    ".3gp", ".ogv", ".asf", ".vob",
}
DEFAULT_SAMPLE_FPS = 7.5  # default frame spacing: about 1/7.5 s, i.e. frame step 4 at 30 fps
STAGES = ("open", "decode", "sample")
# PyAV seeks over a gap between wanted frames only when the keyframe it lands on is more than this many frames
# ahead: decoding a few frames (non-reference ones skipped) is cheaper than flushing a frame-threaded decoder.
_SEEK_MIN_GAP = 16
# Extra seconds before a worker that has not yet acknowledged its task counts as hung (a fresh process still
# importing the parent's main module).
_STARTUP_GRACE_S = 30.0
BACKENDS = ("auto", "decord", "pyav")


class VideoError(Exception):
    """A video that cannot become clips. stage: "open" (file/container/stream), "decode" (frames), "sample" (plan)."""

    def __init__(self, stage: str, message: str):
        if stage not in STAGES:
            raise ValueError(f"VideoError stage must be one of {STAGES}, got {stage!r}")
        super().__init__(message)
        self.stage = stage
        self.message = message

    def __reduce__(self):  # picklable across processes despite the two-argument constructor
        return (VideoError, (self.stage, self.message))

    def __str__(self) -> str:
        return f"{self.stage}: {self.message}"


# --- sampling --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sampling:
    """Which frames make a clip and which clips a video gives.

    num_frames: frames per clip (the model's num_frames).
    frame_step: take every frame_step-th frame; fps: or choose the step so frames are about 1/fps s apart (step =
    round(average fps / fps), at least 1). Neither: fps=7.5 (step 4 at 30 fps). The average fps comes from the
    frame timestamps ((n - 1) / (last - first)), so variable-frame-rate files get a sensible step.
    clip_stride_s: sliding windows starting every clip_stride_s seconds (by frame timestamps); default: the clip's
    span (num_frames * step frames), no overlap, no gap. clips_per_video: instead, N clips spread uniformly.
    Only whole clips are taken, except that a video (or time range) shorter than one clip gives one clip padded by
    repeating its last sampled frame. A tail shorter than a clip after the last window is not covered.
    """

    num_frames: int = 16
    frame_step: int | None = None
    fps: float | None = None
    clip_stride_s: float | None = None
    clips_per_video: int | None = None

    def __post_init__(self):
        if not isinstance(self.num_frames, int) or self.num_frames < 1:
            raise ValueError(f"num_frames must be an int >= 1, got {self.num_frames!r}")
        if self.frame_step is not None and self.fps is not None:
            raise ValueError(f"give frame_step or fps, not both (got frame_step={self.frame_step}, fps={self.fps})")
        if self.frame_step is not None and (not isinstance(self.frame_step, int) or self.frame_step < 1):
            raise ValueError(f"frame_step must be an int >= 1, got {self.frame_step!r}")
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"fps must be a positive number, got {self.fps!r}")
        if self.clip_stride_s is not None and self.clips_per_video is not None:
            raise ValueError(f"give clip_stride_s or clips_per_video, not both (got {self.clip_stride_s}, "
                             f"{self.clips_per_video})")
        if self.clip_stride_s is not None and not (self.clip_stride_s > 0 and math.isfinite(self.clip_stride_s)):
            raise ValueError(f"clip_stride_s must be a positive number of seconds, got {self.clip_stride_s!r}")
        if self.clips_per_video is not None and (not isinstance(self.clips_per_video, int)
                                                 or self.clips_per_video < 1):
            raise ValueError(f"clips_per_video must be an int >= 1, got {self.clips_per_video!r}")

    def step_for(self, avg_fps: float) -> int:
        """Frame step for a video whose average frame rate is avg_fps."""
        if self.frame_step is not None:
            return self.frame_step
        target = self.fps if self.fps is not None else DEFAULT_SAMPLE_FPS
        if not (avg_fps > 0 and math.isfinite(avg_fps)):
            return 1
        return max(1, round(avg_fps / target))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class VideoTask:
    """One video to decode; start_s / end_s restrict clips to frames with start_s <= pts < end_s (seconds)."""

    path: str
    video_id: str | None = None  # None: str(path)
    start_s: float | None = None
    end_s: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "path", os.fspath(self.path))
        if self.video_id is None:
            object.__setattr__(self, "video_id", self.path)
        if self.start_s is not None and self.end_s is not None and not self.end_s > self.start_s:
            raise ValueError(f"end_s must be > start_s, got start_s={self.start_s}, end_s={self.end_s}")


@dataclass
class Clip:
    """One model input.

    frames: np.uint8 (num_frames, S, S, 3) RGB. frame_indices: np.int64 (num_frames,) source frame of each slot
    (padding repeats the last sampled frame). start_frame: first source frame; end_frame: last sampled source frame
    + 1 (exclusive). start_s: PTS of the first frame; end_s: PTS of the last sampled frame + that frame's duration
    (next PTS - its PTS; for the last frame of a file, its duration in the container, else the median frame
    interval), so
    [start_s, end_s) is the time the clip covers. padded_frames: slots filled by repeating the last frame.
    """

    clip_index: int
    start_frame: int
    end_frame: int
    start_s: float  # seconds since the first video frame (PTS - first PTS)
    end_s: float
    padded_frames: int
    frames: np.ndarray
    frame_indices: np.ndarray = field(repr=False, default=None)


@dataclass(frozen=True)
class ClipPlan:
    """A clip before decoding: the same fields as Clip without the pixels."""

    clip_index: int
    frame_indices: np.ndarray  # int64 (num_frames,)
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float
    padded_frames: int

    @property
    def last_frame(self) -> int:
        return self.end_frame - 1


def plan_clips(
    timestamps: np.ndarray,
    sampling: Sampling,
    *,
    last_duration: float | None = None,
    start_s: float | None = None,
    end_s: float | None = None,
) -> list[ClipPlan]:
    """Clip plans for a video whose frames have presentation times `timestamps` (float64 (n,), seconds, sorted).

    last_duration: duration of the last frame (default: the median frame interval). Clips are in time order with
    clip_index 0, 1, ... Raises VideoError("sample") when no frame lies in [start_s, end_s).
    """
    ts = np.asarray(timestamps, dtype=np.float64)
    n = len(ts)
    if n == 0:
        raise VideoError("sample", "the video has no frames")
    gaps = np.diff(ts)
    typical = float(np.median(gaps)) if n > 1 and np.median(gaps) > 0 else None
    span_s = ts[-1] - ts[0]
    avg_fps = (n - 1) / span_s if n > 1 and span_s > 0 else (1.0 / last_duration if last_duration else 30.0)
    last_duration = last_duration if last_duration and last_duration > 0 else (typical or 1.0 / avg_fps)
    durations = np.append(gaps, last_duration)

    lo, hi = 0, n - 1
    if start_s is not None or end_s is not None:
        lo = int(np.searchsorted(ts, start_s, "left")) if start_s is not None else 0
        hi = int(np.searchsorted(ts, end_s, "left")) - 1 if end_s is not None else n - 1
        if lo > hi:
            raise VideoError("sample", f"no frame in [{start_s}, {end_s}) s; the video's frames span "
                                       f"{ts[0]:.3f}..{ts[-1] + last_duration:.3f} s")
    step = sampling.step_for(avg_fps)
    t = sampling.num_frames
    need = (t - 1) * step + 1  # source frames one clip spans
    last_start = hi - need + 1
    if last_start < lo:
        starts = [lo]
    elif sampling.clips_per_video is not None:
        starts = sorted({round(x) for x in np.linspace(lo, last_start, sampling.clips_per_video)})
    elif sampling.clip_stride_s is not None:
        starts, k = [], 0
        while True:
            s = int(np.searchsorted(ts, ts[lo] + k * sampling.clip_stride_s - 1e-9, "left"))
            s = max(s, starts[-1] + 1) if starts else s
            if s > last_start:
                break
            starts.append(s)
            k = max(k + 1, math.floor((ts[s] - ts[lo]) / sampling.clip_stride_s + 1e-9) + 1)
    else:
        starts = list(range(lo, last_start + 1, t * step))

    plans = []
    for clip_index, s in enumerate(starts):
        idx = s + step * np.arange(t, dtype=np.int64)
        real = idx <= hi
        last_real = int(idx[real][-1])
        idx[~real] = last_real
        plans.append(ClipPlan(clip_index, idx, int(idx[0]), last_real + 1, float(ts[idx[0]]),
                              float(ts[last_real] + durations[last_real]), int((~real).sum())))
    return plans


# --- decoding --------------------------------------------------------------------------------------------------------
def _decode_size(width: int, height: int, image_size: int) -> tuple[int, int]:
    """(w, h) with the short side = image_size and the aspect ratio kept (long side rounded)."""
    if width <= height:
        return image_size, max(image_size, round(height * image_size / width))
    return max(image_size, round(width * image_size / height)), image_size


def _center_crop(frame: np.ndarray, image_size: int) -> np.ndarray:
    """(h, w, 3) -> (S, S, 3) center crop; resizes first (bilinear, swscale) if the short side is not S."""
    h, w = frame.shape[:2]
    if min(h, w) != image_size:
        import av

        tw, th = _decode_size(w, h, image_size)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24").to_ndarray(
            width=tw, height=th, format="rgb24", interpolation="BILINEAR")
        h, w = frame.shape[:2]
    top, left = (h - image_size) // 2, (w - image_size) // 2
    return frame[top : top + image_size, left : left + image_size]


def _check_path(path: str) -> None:
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


def _first_frame_rotation(stream, packet, final: bool) -> float | None:
    """The display rotation (degrees counter-clockwise, FFmpeg's display matrix) of the first frame `packet`
    decodes to; None until a frame comes out (0 when `final` or the packet is damaged)."""
    import av

    try:
        for frame in stream.decode(packet):
            return frame.rotation or 0
    except av.FFmpegError:
        return 0
    return 0 if final else None


def _av_open(path: str):
    import av

    try:
        return av.open(path, metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VideoError("open", f"cannot open {path}: {e}") from None


class _PyAVReader:
    """PyAV (FFmpeg) decoding: threaded, frames scaled to the decode size by swscale (bilinear) only when needed.

    A demux pass (no decoding) first collects every packet's PTS and keyframe flag: that gives the frame count,
    the timestamps of a variable-frame-rate file, and the keyframes to seek to across long gaps between clips.
    """

    name = "pyav"

    def __init__(self, path: str, image_size: int, threads: int = 0):
        import av

        self.path, self.image_size, self.threads = path, image_size, threads
        container = _av_open(path)
        try:
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams}) or ["none"]
                raise VideoError("open", f"no video stream in {path} (streams: {', '.join(kinds)})")
            stream = container.streams.video[0]
            self.stream_index = stream.index
            self.width, self.height = stream.codec_context.width, stream.codec_context.height
            self.pix_fmt = stream.codec_context.pix_fmt or ""
            # Non-square pixels (anamorphic DV, some broadcasts): size by the display aspect ratio, as players do.
            sar = stream.sample_aspect_ratio
            self.display_width = max(1, round(self.width * sar)) if sar and sar > 0 else self.width
            if not self.width or not self.height:
                raise VideoError("open", f"video stream has no frame size ({self.width}x{self.height}) in {path}")
            self.time_base = stream.time_base
            pts, keys, last_duration = [], [], 0
            rotation = None  # display rotation (phone videos), read from the first decoded frame
            try:
                for packet in container.demux(stream):
                    if packet.size == 0:
                        continue
                    pts.append(packet.pts if packet.pts is not None else packet.dts)
                    keys.append(packet.is_keyframe)
                    last_duration = packet.duration or 0
                    if rotation is None and len(pts) <= 16:
                        rotation = _first_frame_rotation(stream, packet, final=len(pts) == 16)
            except av.FFmpegError as e:  # damaged tail: keep the packets read so far, the decoder decides
                if not pts:
                    raise VideoError("open", f"cannot read packets of {path}: {e}") from None
            rate = stream.average_rate or stream.guessed_rate
        finally:
            container.close()
        if not pts:
            raise VideoError("open", f"no video frames in {path}")
        # Packets without timestamps (raw elementary streams): time = index / rate, frames matched by order only.
        self.ordered_only = any(p is None for p in pts)
        if self.ordered_only:
            fps = float(rate) if rate else 25.0
            pts = [round(i / fps / self.time_base) for i in range(len(pts))]
        order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
        self.pts = np.asarray(pts, dtype=np.int64)[order]
        self.keyframe_indices = np.flatnonzero(np.asarray(keys, dtype=bool)[order])
        # Seconds since the first video frame: container start times depend on the FFmpeg version (decord's FFmpeg
        # puts an mkv's first frame at 0.021 s when AAC priming starts its audio early, PyAV's at 0).
        self.timestamps = (self.pts - self.pts[0]).astype(np.float64) * float(self.time_base)
        self.last_duration = float(last_duration * self.time_base) if last_duration else None
        self._pts_to_index = {int(p): i for i, p in enumerate(self.pts)}
        self.decode_size = _decode_size(self.display_width, self.height, image_size)
        self.rotation_k = round((rotation or 0) / 90) % 4  # quarter turns counter-clockwise, as np.rot90

    def _key_before(self, index: int) -> int:
        """Index of the last keyframe at or before frame `index` (0 when none is)."""
        k = int(np.searchsorted(self.keyframe_indices, index, "right")) - 1
        return int(self.keyframe_indices[k]) if k >= 0 else 0

    def _open_stream(self):
        container = _av_open(self.path)
        stream = container.streams[self.stream_index]
        stream.thread_type = "AUTO"  # frame + slice threads
        stream.codec_context.thread_count = self.threads
        return container, stream

    def frames(self, indices: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (index, uint8 (h, w, 3) at decode_size) for sorted unique frame indices, in order.

        Two shortcuts, each switched off for the rest of the video (and the file reopened) if a wanted frame goes
        missing after it: seeking to the keyframe before a wanted frame when a long gap holds one, and asking
        the decoder to skip non-reference frames nobody wants (skip_frame=NONREF per packet; ~1.4x on H.264 at
        step 4). A wanted frame still missing without them is damage: VideoError("decode").
        """
        import av

        w, h = self.decode_size
        wanted = set(indices.tolist())
        seek_ok = skip_ok = not self.ordered_only  # both need timestamps to know where the decoder is
        i = 0  # next position in indices to deliver
        while i < len(indices):  # one pass per (re)open of the file
            container, stream = self._open_stream()
            codec = stream.codec_context
            try:
                pos, seeked, damaged, retry = -1, False, False, False  # pos: index of the last frame decoded
                while i < len(indices) and not retry:
                    key = self._key_before(int(indices[i]))
                    if seek_ok and key > pos + _SEEK_MIN_GAP:  # a keyframe lies well ahead: jump to it
                        container.seek(int(self.pts[key]), stream=stream, backward=True)
                        seeked, pos, damaged = True, key - 1, False
                    jump = False
                    for packet in container.demux(stream):
                        if skip_ok and packet.pts is not None:
                            j = self._pts_to_index.get(packet.pts)
                            codec.skip_frame = "DEFAULT" if j is None or j in wanted else "NONREF"
                        try:
                            decoded = stream.decode(packet)
                        except av.FFmpegError:  # a damaged packet: skip it, the decoder resynchronizes
                            damaged = True
                            continue
                        for frame in decoded:
                            by_order = self.ordered_only or frame.pts is None
                            idx = pos + 1 if by_order else self._pts_to_index.get(frame.pts)
                            if idx is None or (idx <= pos and not seeked):
                                continue
                            # After damage, frames up to the next keyframe predict from broken pictures: treat
                            # them as missing (a wanted one fails the video) rather than embed garbage.
                            damaged = (damaged or frame.is_corrupt) and not (frame.key_frame and not frame.is_corrupt)
                            if damaged:
                                continue
                            if idx > indices[i]:  # the wanted frame never came
                                if not (seeked or skip_ok):
                                    raise VideoError("decode", f"frame {int(indices[i])} (t="
                                                     f"{self.timestamps[indices[i]]:.3f} s) could not be decoded "
                                                     f"from {self.path}")
                                seek_ok, skip_ok = seek_ok and not seeked, skip_ok and seeked
                                retry = True
                                break
                            seeked, pos = False, idx
                            if idx < indices[i]:
                                continue
                            yield idx, frame.to_ndarray(width=w, height=h, format="rgb24", interpolation="BILINEAR")
                            i += 1
                            if i == len(indices):
                                return
                            if seek_ok and self._key_before(int(indices[i])) > pos + _SEEK_MIN_GAP:
                                jump = True
                                break
                        if retry or jump:
                            break
                    else:  # the stream ended before the wanted frame
                        if not (seek_ok or skip_ok):
                            raise VideoError("decode", f"the stream ended after frame {pos} of {len(self.pts)}; "
                                                       f"frame {int(indices[i])} could not be decoded from {self.path}")
                        seek_ok = skip_ok = False
                        retry = True
            finally:
                container.close()


class _DecordReader:
    """decord decoding with frames scaled to the decode size by decord itself (fast path for common files)."""

    name = "decord"
    rotation_k = 0  # files with a display rotation go to PyAV

    def __init__(self, path: str, native_size: tuple[int, int], decode_size: tuple[int, int], threads: int = 0,
                 batch: int = 32, timestamps: np.ndarray | None = None):
        import decord

        self.path, self.batch = path, batch
        self.decode_size = decode_size
        w, h = decode_size if decode_size != native_size else (-1, -1)  # -1: no scaling
        self.reader = decord.VideoReader(path, ctx=decord.cpu(0), width=w, height=h, num_threads=threads)
        n = len(self.reader)
        if n == 0:
            raise RuntimeError("decord found no frames")
        ts = np.asarray(self.reader.get_frame_timestamp(np.arange(n)), dtype=np.float64).reshape(n, 2)
        self.last_duration = float(ts[-1, 1] - ts[-1, 0]) if ts[-1, 1] > ts[-1, 0] else None
        # decord counts from its FFmpeg's container start; the exact PTS from the packet scan are preferred (same
        # clock as PyAV) whenever both see the same frames.
        if timestamps is not None and len(timestamps) == n:
            self.timestamps = timestamps
        else:
            self.timestamps = ts[:, 0] - ts[0, 0]

    def frames(self, indices: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (index, uint8 (h, w, 3)) for sorted unique indices; get_batch on sorted chunks (decord decodes
        forward within a GOP and seeks across gaps)."""
        for lo in range(0, len(indices), self.batch):
            chunk = indices[lo : lo + self.batch]
            batch = self.reader.get_batch(chunk.tolist()).asnumpy()
            yield from zip(chunk.tolist(), batch)


def _open_reader(path: str, image_size: int, backend: str, threads: int):
    """The reader for `backend`; "auto" tries decord and falls back to PyAV when decord cannot open the file."""
    _check_path(path)
    pyav = _PyAVReader(path, image_size, threads)  # header + packet scan: uniform "open" errors, native size
    if backend == "pyav" or (backend == "auto" and (pyav.pix_fmt.startswith(("gray", "ya")) or pyav.rotation_k)):
        # decord expands gray as limited range (24 -> 9; PyAV converts gray as full range, like FFmpeg) and
        # mishandles a display rotation (4-channel transposed frames at native size, unrotated when scaling)
        return pyav, None
    try:
        return _DecordReader(path, (pyav.width, pyav.height), pyav.decode_size, threads,
                             timestamps=pyav.timestamps), pyav
    except VideoError:
        raise
    except Exception as e:  # noqa: BLE001 - decord raises its own types (DECORDError, RuntimeError, ...)
        if backend == "decord":
            raise VideoError("open", f"decord cannot open {path}: {_one_line(e)}") from None
        return pyav, None


def _one_line(e: BaseException) -> str:
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
) -> Iterator[Clip]:
    """Decode the clips of one video, in clip order (see Sampling, Clip).

    backend: "auto" (decord, PyAV when decord cannot open or decode the file), "decord" or "pyav".
    threads: decoder threads (0: the backend's default, all cores). at_s: only the clip whose [start_s, end_s)
    covers this time, or the nearest clip when at_s falls between clips. info: if given, info["backend"] is set
    to the decoder actually used. Raises VideoError(stage, message); clips already yielded are valid only if the
    iteration ends without an error (a video is all its clips or an error, never a part).
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
            for clip in _assemble(reader, plans[done:], image_size):
                done += 1
                yield clip
            return
        except VideoError:
            raise
        except Exception as e:  # noqa: BLE001 - any decoder failure is this video's error (or a fallback)
            if reader.name == "decord" and backend == "auto":  # decord failed mid-way: go on with PyAV
                reader, fallback = fallback or _PyAVReader(path, image_size, threads), None
                continue
            raise VideoError("decode", f"{reader.name} failed on {path}: {_one_line(e)}") from None


def _assemble(reader, plans: list[ClipPlan], image_size: int) -> Iterator[Clip]:
    """One sequential pass over the union of the plans' frames; each clip is yielded once its last frame is in."""
    if not plans:
        return
    wanted = np.unique(np.concatenate([p.frame_indices for p in plans]))
    cache: dict[int, np.ndarray] = {}
    k = 0
    for idx, frame in reader.frames(wanted):
        crop = _center_crop(frame, image_size)
        # upright like a player shows it; a quarter turn of a centered square crop = the crop of the turned frame
        cache[idx] = np.rot90(crop, reader.rotation_k) if reader.rotation_k else crop
        while k < len(plans) and plans[k].last_frame <= idx:
            p = plans[k]
            frames = np.stack([cache[int(j)] for j in p.frame_indices])
            yield Clip(p.clip_index, p.start_frame, p.end_frame, p.start_s, p.end_s, p.padded_frames, frames,
                       p.frame_indices.copy())
            k += 1
            keep_from = int(plans[k].frame_indices[0]) if k < len(plans) else idx + 1
            for j in [j for j in cache if j < keep_from]:
                del cache[j]
    if k < len(plans):
        raise VideoError("decode", f"the decoder stopped before frame {plans[k].last_frame}")


# --- worker pool -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipsEvent:
    """Clips of `task`, in clip order (zero or more events per attempt)."""

    task: VideoTask
    clips: list[Clip]


@dataclass(frozen=True)
class ResetEvent:
    """A retry of `task` starts: discard every clip received for it so far."""

    task: VideoTask


@dataclass(frozen=True)
class DoneEvent:
    """`task` finished: num_clips clips (of the last attempt) were sent; decode_s: seconds its worker spent."""

    task: VideoTask
    num_clips: int
    decode_s: float
    backend: str


@dataclass(frozen=True)
class ErrorEvent:
    """`task` failed for good after `attempts` attempts; discard its clips. stage: "open" | "decode" | "sample"."""

    task: VideoTask
    stage: str
    error: str
    attempts: int


Event = ClipsEvent | ResetEvent | DoneEvent | ErrorEvent

# Test hooks (honored only by DecodePool(..., test_hooks=True) workers, never in-process): a task whose file name
# contains one of these markers misbehaves after sending its first clip; with "-once" only on its first attempt.
TEST_HOOK_MARKERS = ("vmae-test-segfault", "vmae-test-abort", "vmae-test-hang", "vmae-test-exit")


def _run_test_hook(path: str, attempt: int) -> None:
    name = Path(path).name
    for marker in TEST_HOOK_MARKERS:
        if marker in name and ("-once" not in name or attempt == 1):
            time.sleep(0.2)  # let the queue's feeder thread flush the clip already sent
            if marker.endswith("segfault"):
                os.kill(os.getpid(), signal.SIGSEGV)
            elif marker.endswith("abort"):
                os.abort()
            elif marker.endswith("exit"):
                os._exit(3)
            else:
                time.sleep(3600)


def _task_messages(task, sampling, image_size, backend, threads) -> Iterator[tuple]:
    """Decode one task as messages; never raises for a bad video.

    ("clip", Clip) for every clip, then ("done", num_clips, decode_s, backend) or ("error", stage, text).
    decode_s counts time inside the decoder only, not time spent by whoever consumes the messages.
    """
    info: dict = {}
    num_clips, decode_s = 0, 0.0
    t0 = time.perf_counter()
    try:
        for clip in decode_clips(task, sampling, image_size, backend, threads=threads, info=info):
            decode_s += time.perf_counter() - t0
            num_clips += 1
            yield ("clip", clip)
            t0 = time.perf_counter()
        decode_s += time.perf_counter() - t0
        yield ("done", num_clips, decode_s, info.get("backend", backend))
    except VideoError as e:
        yield ("error", e.stage, e.message)
    except Exception as e:  # noqa: BLE001 - any failure of one video becomes its error record, never the run's
        yield ("error", "decode", _one_line(e))


def _worker_main(task_conn, out_queue, ack, progress, sampling, image_size, threads, test_hooks):
    """Worker process: receive (seq, task, attempt, backend) on task_conn, put (seq, message) on out_queue.

    ack (shared int) is set to seq before decoding starts: unlike a queued message it cannot be lost if the
    decoder kills the process a moment later, so the parent knows whether the task had begun.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which stops the workers
    for name in ("av", "decord"):  # before the first task's clock starts (already loaded under forkserver)
        try:
            __import__(name)
        except ImportError:
            pass
    out_queue.cancel_join_thread()  # never block exit on unread messages (the parent may be gone)
    parent = mp.parent_process()

    def put(item):
        while True:
            try:
                out_queue.put(item, timeout=1.0)
                return
            except queue.Full:  # the consumer is slow: wait, unless it is gone
                if parent is not None and not parent.is_alive():
                    os._exit(0)

    while True:
        try:
            msg = task_conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        seq, task, attempt, backend = msg
        ack.value = seq
        for message in _task_messages(task, sampling, image_size, backend, threads):
            if message[0] == "clip":
                progress.value += 1
            put((seq, message))
            if test_hooks and message[0] == "clip":
                _run_test_hook(task.path, attempt)


def _mp_context():
    """forkserver where it exists, else spawn: never fork.

    fork would copy a parent that may hold torch/CUDA state and running threads (unsafe after fork). forkserver
    forks each worker from a small server process that imported only this module, numpy, PyAV and decord, so
    starting or replacing a worker costs a fork, not a fresh interpreter and its imports. Workers run
    vmae_fast.video code only; like every spawn/forkserver child they import the parent's main module (guard
    scripts with `if __name__ == "__main__":`), so torch reaches them only if that module imports it at top level.
    """
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["vmae_fast.video", "av", "decord"])  # missing ones are skipped
        return ctx
    return mp.get_context("spawn")


class _Worker:
    def __init__(self, ctx, pool: DecodePool, queue_size: int):
        self.task_conn, child_conn = ctx.Pipe(duplex=False)[::-1]
        self.queue = ctx.Queue(maxsize=queue_size)
        self.ack = ctx.RawValue("q", 0)  # seq of the job the worker has begun (see _worker_main)
        self.progress = ctx.RawValue("q", 0)  # clips decoded by this worker, read by the parent as a heartbeat
        self.process = ctx.Process(
            target=_worker_main, name="vmae-decode",
            args=(child_conn, self.queue, self.ack, self.progress, pool.sampling, pool.image_size, pool.threads,
                  pool.test_hooks),
            daemon=True)
        self.process.start()
        child_conn.close()
        # The parent only reads: closing its copy of the write end lets a read of a message cut short by the
        # worker's death end with EOFError instead of blocking forever.
        self.queue._writer.close()
        self.job = None  # [seq, task, attempt, backend, clips_sent] while it holds a task
        self.ack_seen = False
        self.last_progress = time.monotonic()
        self.seen_progress = 0

    @property
    def started(self) -> bool:
        """The worker has begun its current job (read from shared memory; survives the worker's death)."""
        return self.job is not None and self.ack.value == self.job[0]

    def send(self, job) -> None:
        self.job = job
        self.ack_seen = False
        self.last_progress = time.monotonic()
        self.task_conn.send((job[0], job[1], job[2], job[3]))

    def stop(self, kill: bool) -> None:
        """Stop the process (SIGKILL when kill or when it does not exit within 2 s) and release its resources."""
        if self.process.is_alive() and not kill:
            try:
                self.task_conn.send(None)
            except OSError:
                pass
            self.process.join(2.0)
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.process.close()
        self.task_conn.close()
        self.queue.close()
        self.queue.join_thread()


class DecodePool:
    """Decode many videos in `workers` processes (0: in this process) and stream events.

    with DecodePool(4, Sampling(), 224) as pool:
        for event in pool.run(tasks): ...   # ClipsEvent / ResetEvent / DoneEvent / ErrorEvent

    Each task ends with exactly one DoneEvent or ErrorEvent; videos interleave, a video's clips come in order.
    timeout_s: a worker holding a task that sends nothing and decodes no clip for timeout_s seconds (while its
    output queue is empty, i.e. not waiting for the consumer) is killed. A worker that hangs, segfaults, aborts or
    exits is replaced and the task retried (ResetEvent first) until max_attempts; retries of backend="auto" use
    PyAV, since decord is what usually crashes. The ErrorEvent of a crash or hang has stage "open" when no clip
    had been sent, else "decode". A worker lost before it took its task (killed while idle) costs no attempt.
    VideoErrors are final at once (the file will not change).
    max_pending_clips: decoded clips waiting for the consumer, over all workers (each worker's queue holds
    ceil(max_pending_clips / workers)), so memory stays bounded when the consumer is slower than the decoders.
    threads: decoder threads per worker (default cpu_count // workers, at least 1).
    test_hooks: for tests only: honor TEST_HOOK_MARKERS in file names (see _run_test_hook).
    """

    def __init__(self, workers: int, sampling: Sampling, image_size: int, timeout_s: float = 60.0,
                 max_attempts: int = 2, backend: str = "auto", max_pending_clips: int | None = None, *,
                 threads: int | None = None, test_hooks: bool = False):
        if not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an int >= 0, got {workers!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        self.workers, self.sampling, self.image_size = workers, sampling, image_size
        self.timeout_s, self.max_attempts, self.backend = timeout_s, max_attempts, backend
        self.max_pending_clips = max_pending_clips if max_pending_clips is not None else 4 * max(1, workers)
        if self.max_pending_clips < 1:
            raise ValueError(f"max_pending_clips must be >= 1, got {max_pending_clips!r}")
        cpus = os.cpu_count() or 1
        self.threads = threads if threads is not None else (0 if workers == 0 else max(1, cpus // workers))
        self.test_hooks = test_hooks
        self._ctx = None
        self._pool: list[_Worker] = []
        self._seq = 0
        self.replaced = 0  # workers replaced after a crash or a timeout (for summaries and tests)

    def __enter__(self) -> DecodePool:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop every worker (idle ones politely, busy ones with SIGKILL); idempotent."""
        pool, self._pool = self._pool, []
        for w in pool:
            w.stop(kill=w.job is not None)

    def pending_clips(self) -> int:
        """Decoded clips sitting in worker queues, not yet received by run()."""
        total = 0
        for w in self._pool:
            try:
                total += w.queue.qsize()
            except NotImplementedError:  # macOS has no sem_getvalue
                return -1
        return total

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._pool]

    def run(self, tasks: Iterable[VideoTask]) -> Iterator[Event]:
        """Decode every task; yields events as they arrive (tasks are pulled lazily from the iterable)."""
        if self.workers == 0:
            yield from self._run_inline(tasks)
        else:
            yield from self._run_workers(tasks)

    def _run_inline(self, tasks):
        for task in tasks:
            for m in _task_messages(task, self.sampling, self.image_size, self.backend, self.threads):
                if m[0] == "clip":
                    yield ClipsEvent(task, [m[1]])
                elif m[0] == "done":
                    yield DoneEvent(task, m[1], m[2], m[3])
                else:
                    yield ErrorEvent(task, m[1], m[2], 1)

    def _spawn(self) -> _Worker:
        if self._ctx is None:
            self._ctx = _mp_context()
        return _Worker(self._ctx, self, max(1, -(-self.max_pending_clips // self.workers)))

    def _run_workers(self, tasks):
        from multiprocessing.connection import wait

        while len(self._pool) < self.workers:
            self._pool.append(self._spawn())
        source = iter(tasks)
        retries: deque = deque()
        early_deaths = 0  # consecutive workers lost before they began a task
        exhausted = False
        try:
            while True:
                for i, w in enumerate(self._pool):  # hand work to idle workers: retries first, then new tasks
                    if w.job is not None:
                        continue
                    if not w.process.is_alive():  # died while idle (e.g. the OOM killer): replace it
                        w.stop(kill=True)
                        w = self._pool[i] = self._spawn()
                        self.replaced += 1
                    if retries:
                        task, attempt, backend = retries.popleft()
                    elif not exhausted:
                        task = next(source, None)
                        if task is None:
                            exhausted = True
                            continue
                        attempt, backend = 1, self.backend
                    else:
                        continue
                    self._seq += 1  # unique over the pool's life: stale messages and acks never match
                    try:
                        w.send([self._seq, task, attempt, backend, 0])
                    except OSError:  # it died before receiving the task: no attempt spent, try another worker
                        w.job = None
                        w.stop(kill=True)
                        self._pool[i] = self._spawn()
                        self.replaced += 1
                        retries.appendleft((task, attempt, backend))
                busy = [w for w in self._pool if w.job is not None]
                if not busy:
                    if exhausted and not retries:
                        return
                    continue
                # mp.Queue has no public waitable handle; its reader Connection is one (stable since 3.4)
                wait([w.queue._reader for w in busy] + [w.process.sentinel for w in busy], timeout=0.5)
                for i, w in enumerate(self._pool):
                    if w.job is None:
                        continue
                    yield from self._drain(w)
                    if w.job is None:
                        continue
                    failure = None
                    if not w.process.is_alive():
                        yield from self._drain(w)  # messages sent just before it died
                        if w.job is None:
                            continue
                        failure = _describe_exit(w.process.exitcode)
                    else:
                        now = time.monotonic()
                        if w.started and not w.ack_seen:  # the hang clock starts when the task is taken
                            w.ack_seen, w.last_progress = True, now
                        if w.progress.value != w.seen_progress or not w.queue.empty():
                            w.seen_progress, w.last_progress = w.progress.value, now
                        elif now - w.last_progress > self.timeout_s + (0 if w.started else _STARTUP_GRACE_S):
                            failure = f"no progress for {self.timeout_s:g} s (decoder hung); worker killed"
                    if failure is None:
                        continue
                    _seq, task, attempt, backend, clips_sent = w.job
                    started = w.started
                    w.job = None
                    w.stop(kill=True)
                    self._pool[i] = self._spawn()
                    self.replaced += 1
                    if not started:  # died before taking the task (e.g. killed while idle): no attempt spent
                        early_deaths += 1
                        if early_deaths > 10 + 2 * self.workers:
                            raise RuntimeError(f"decode workers keep dying before starting a task ({failure})")
                        retries.appendleft((task, attempt, backend))
                        continue
                    early_deaths = 0
                    stage = "decode" if clips_sent else "open"
                    if attempt < self.max_attempts:
                        yield ResetEvent(task)
                        retries.append((task, attempt + 1, "pyav" if backend == "auto" else backend))
                    else:
                        yield ErrorEvent(task, stage, failure, attempt)
        finally:
            # Stopped early (consumer closed the generator, an exception, Ctrl-C): busy workers hold unwanted
            # work, kill them; idle ones stay for the next run() until close().
            for i, w in enumerate(self._pool):
                if w.job is not None:
                    w.job = None
                    w.stop(kill=True)
                    self._pool[i] = None
            self._pool = [w for w in self._pool if w is not None]

    def _drain(self, w: _Worker):
        """Turn every message waiting in w's queue into events (stale ones from an earlier job are dropped)."""
        while w.job is not None:
            try:
                seq, msg = w.queue.get_nowait()
            except queue.Empty:
                return
            except (EOFError, OSError):
                return
            w.last_progress = time.monotonic()
            job = w.job
            if seq != job[0]:
                continue
            task, attempt = job[1], job[2]
            kind = msg[0]
            if kind == "clip":
                job[4] += 1
                yield ClipsEvent(task, [msg[1]])
            elif kind == "done":
                w.job = None
                yield DoneEvent(task, msg[1], msg[2], msg[3])
            else:
                w.job = None
                yield ErrorEvent(task, msg[1], msg[2], attempt)


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"decoder process killed by {name}"
    return f"decoder process exited unexpectedly (exit code {exitcode})"
