"""Which frames make a clip: VideoTask (what to read), Sampling (how to sample it: clips in time, crops in space),
plan_clips (the frame plan), ClipPlan / Clip (a clip before and after decoding). Times come from frame timestamps,
never from index / fps."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from ..faults import VideoError
from .crop import check_crops

DEFAULT_SAMPLE_FPS = 7.5  # default frame spacing: about 1/7.5 s, i.e. frame step 4 at 30 fps


@dataclass(frozen=True)
class Sampling:
    """Which frames make a clip and which clips (views) a video gives.

    num_frames: frames per clip (the model's num_frames).
    frame_step: take every frame_step-th frame; fps: or choose the step so frames are about 1/fps s apart (step =
    round(average fps / fps), at least 1). Neither: fps=7.5 (step 4 at 30 fps). The average fps comes from the
    frame timestamps ((n - 1) / (last - first)), so variable-frame-rate files get a sensible step.
    clip_stride_s: sliding windows starting every clip_stride_s seconds (by frame timestamps); default: the clip's
    span (num_frames * step frames), no overlap, no gap. clips_per_video: instead, N clips spread uniformly.
    Only whole clips are taken, except that a video (or time range) shorter than one clip gives one clip padded by
    repeating its last sampled frame. A tail shorter than a clip after the last window is not covered.
    crops: spatial views of every clip: 1 = the center crop; 3 = crops at the start, the center and the end of the
    long side after the short-side resize (the VideoMAE papers' multi-view test: clips_per_video=5, crops=3 is
    "5x3"). Each view is its own Clip (crop_index 0, 1, 2; 1 for crops=1), cut from frames decoded once.
    resize: transformers' processor geometry (V-JEPA 2's VJEPA2VideoProcessor): the short side scaled to `resize`
    (int(crop * 256 / 224), so the center crop keeps 87.5 % of it), the long side to int(resize * long / short), the
    crops cut at torchvision's center_crop offsets (crop.crop_offsets); None: VideoMAE's way, one crop being the
    center square scaled to the crop size. Set from the model's preprocessing, like num_frames.
    """

    num_frames: int = 16
    frame_step: int | None = None
    fps: float | None = None
    clip_stride_s: float | None = None
    clips_per_video: int | None = None
    crops: int = 1
    resize: int | None = None

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
        check_crops(self.crops)
        if self.resize is not None and (not isinstance(self.resize, int) or isinstance(self.resize, bool)
                                        or self.resize < 1):
            raise ValueError(f"resize must be an int >= 1 (the short side before the crop) or None, got "
                             f"{self.resize!r}")

    def step_for(self, avg_fps: float) -> int:
        """Frame step for a video whose average frame rate is avg_fps."""
        if self.frame_step is not None:
            return self.frame_step
        target = self.fps if self.fps is not None else DEFAULT_SAMPLE_FPS
        if not (avg_fps > 0 and math.isfinite(avg_fps)):
            return 1
        return max(1, round(avg_fps / target))

    def to_dict(self) -> dict:
        """The fields as recorded in _run.json; `resize` only when set (the runs written before it existed, and every
        VideoMAE run, keep their configuration hash)."""
        d = asdict(self)
        if self.resize is None:
            del d["resize"]
        return d


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
    interval), so [start_s, end_s) is the time the clip covers. padded_frames: slots filled by repeating the last frame.
    crop_index: which spatial view (crop.CROP_INDICES: 0 start, 1 center, 2 end of the long side); the clips of one
    clip_index share everything but frames and crop_index.
    """

    clip_index: int
    start_frame: int
    end_frame: int
    start_s: float  # seconds since the first video frame (PTS - first PTS)
    end_s: float
    padded_frames: int
    frames: np.ndarray
    frame_indices: np.ndarray = field(repr=False, default=None)
    crop_index: int = 1


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
    ts, durations, avg_fps = _frame_times(timestamps, last_duration)
    lo, hi = _frame_range(ts, durations, start_s, end_s)
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


def _frame_times(timestamps: np.ndarray, last_duration: float | None) -> tuple[np.ndarray, np.ndarray, float]:
    """(timestamps float64 (n,), how long each frame lasts (n,), average fps): a frame lasts until the next PTS, the
    last one last_duration (default: the median frame interval)."""
    ts = np.asarray(timestamps, dtype=np.float64)
    n = len(ts)
    if n == 0:
        raise VideoError("sample", "the video has no frames")
    gaps = np.diff(ts)
    typical = float(np.median(gaps)) if n > 1 and np.median(gaps) > 0 else None
    span_s = ts[-1] - ts[0]
    avg_fps = (n - 1) / span_s if n > 1 and span_s > 0 else (1.0 / last_duration if last_duration else 30.0)
    last_duration = last_duration if last_duration and last_duration > 0 else (typical or 1.0 / avg_fps)
    return ts, np.append(gaps, last_duration), avg_fps


def _frame_range(ts: np.ndarray, durations: np.ndarray, start_s: float | None, end_s: float | None) -> tuple[int, int]:
    """(first, last) index of the frames with start_s <= pts < end_s; VideoError("sample") when there is none."""
    n = len(ts)
    lo = int(np.searchsorted(ts, start_s, "left")) if start_s is not None else 0
    hi = int(np.searchsorted(ts, end_s, "left")) - 1 if end_s is not None else n - 1
    if lo > hi:
        raise VideoError("sample", f"no frame in [{start_s}, {end_s}) s; the video's frames span "
                                   f"{ts[0]:.3f}..{ts[-1] + durations[-1]:.3f} s")
    return lo, hi


def duration_s(timestamps: np.ndarray, *, last_duration: float | None = None, start_s: float | None = None,
               end_s: float | None = None) -> float:
    """Seconds of video in [start_s, end_s) (default: all of it) by frame timestamps: from the first frame in range
    to the end of the last one (the clock of the clips' start_s / end_s)."""
    ts, durations, _ = _frame_times(timestamps, last_duration)
    lo, hi = _frame_range(ts, durations, start_s, end_s)
    return float(ts[hi] + durations[hi] - ts[lo])
