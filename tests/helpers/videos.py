"""Real encoded test videos (PyAV encoders; no network, no sample files), with the facts tests check against.

Every frame carries its own number: a gray square at the frame center has brightness `frame_level(i)`, so after any
resize + center crop `frame_number(frame)` tells which source frame (modulo PERIOD) landed in a clip. A white square
moves along the top edge (motion for keep policies); the rest is a static color gradient. With markers=True the two
ends of the long side carry colored bands outside the center square (START_COLOR at the left / top, END_COLOR at the
right / bottom of the coded frame), so `edge_markers(view)` tells which spatial crop a view is.

    make_video(path, codec="h264", width=64, height=48, frames=48, fps=30, ...) -> Expected
    make_video_zoo(dir)  -> {name: (path, Expected)}   good files, one per awkward case
    make_bad_files(dir)  -> {name: path}               files that must end as one error each
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

PERIOD = 27  # frame numbers are encoded modulo PERIOD as brightness 24 + 8 * (i % PERIOD) in 24..232
LEVEL_TOLERANCE = 3.0  # codecs at high quality move a flat patch's mean by <= ~2 levels; levels are 8 apart

# codec name -> (PyAV encoder, default pixel format, encoder options)
_CODECS = {
    "h264": ("libx264", "yuv420p", {"crf": "8", "preset": "ultrafast", "bf": "0"}),
    "h264_bframes": ("libx264", "yuv420p", {"crf": "6", "preset": "fast", "bf": "3", "g": "12"}),
    "hevc": ("libx265", "yuv420p", {"crf": "12", "preset": "ultrafast", "x265-params": "log-level=error"}),
    "vp9": ("libvpx-vp9", "yuv420p", {"crf": "12", "b": "0", "deadline": "realtime", "cpu-used": "8"}),
    "mjpeg": ("mjpeg", "yuvj420p", {"qmin": "1", "qmax": "2"}),
}


@dataclass(frozen=True)
class Expected:
    """What a correct decoder must report for a generated video."""

    path: Path
    width: int
    height: int
    num_frames: int
    fps: float  # average frame rate: (num_frames - 1) / (last pts - first pts) for VFR files
    timestamps: tuple[float, ...]  # presentation time of every frame, seconds
    codec: str
    pix_fmt: str
    backend: str | None = None  # decoder decode_clips must end up using (None: either)
    audio: bool = False
    tags: tuple[str, ...] = field(default=())
    rotation: int = 0  # display rotation, degrees counter-clockwise

    @property
    def duration(self) -> float:
        """Seconds from the first frame's start to the last frame's end."""
        last = self.timestamps[-1] - self.timestamps[-2] if self.num_frames > 1 else 1.0 / self.fps
        return self.timestamps[-1] + last - self.timestamps[0]


def frame_level(i: int) -> int:
    """Brightness (0..255) of the center square of frame i."""
    return 24 + 8 * (i % PERIOD)


START_COLOR, END_COLOR = (255, 0, 255), (0, 255, 255)  # markers: magenta and cyan, unlike the gradient


def marker_width(width: int, height: int) -> int:
    """Coded pixels of each marker band: a quarter of what the center square leaves of the long side."""
    return max(2, (max(width, height) - min(width, height)) // 4)


def frame_image(i: int, width: int, height: int, markers: bool = False) -> np.ndarray:
    """Frame i as uint8 (height, width, 3) RGB: static gradient, moving white square on top, numbered center square;
    markers: START_COLOR / END_COLOR bands at the two ends of the long side (none on a square frame)."""
    ys, xs = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = 40 + (xs * 150) // max(width - 1, 1)
    img[..., 1] = 40 + (ys * 150) // max(height - 1, 1)
    img[..., 2] = 110
    short = min(width, height)
    size = max(2, short // 4)
    x = (i * max(1, width // 16)) % max(1, width - size)
    img[: max(1, size // 2 + 1), x : x + size] = 255  # moving square, top band (never in the center crop's center)
    cy, cx = height // 2, width // 2
    img[cy - size // 2 : cy - size // 2 + size, cx - size // 2 : cx - size // 2 + size] = frame_level(i)
    if markers and width != height:
        b = marker_width(width, height)
        if width > height:
            img[:, :b], img[:, width - b :] = START_COLOR, END_COLOR
        else:
            img[:b], img[height - b :] = START_COLOR, END_COLOR
    return img


def edge_markers(view: np.ndarray, depth: int = 2) -> dict[str, str]:
    """{edge: "start" | "end"} for the edges of a decoded (S, S, 3) view ("left", "right", "top", "bottom") whose
    outer `depth` pixels show a marker band's color (within 60 levels per channel: codecs blur saturated chroma)."""
    strips = {"left": view[:, :depth], "right": view[:, -depth:], "top": view[:depth], "bottom": view[-depth:]}
    found = {}
    for edge, strip in strips.items():
        mean = strip.reshape(-1, 3).astype(np.float64).mean(0)
        for name, color in (("start", START_COLOR), ("end", END_COLOR)):
            if np.abs(mean - color).max() < 60:
                found[edge] = name
    return found


def read_level(frame: np.ndarray) -> float:
    """Mean brightness of the central eighth of a decoded (S, S, 3) uint8 frame (inside the numbered square)."""
    s = frame.shape[0]
    r = max(1, s // 16)
    c = s // 2
    return float(frame[c - r : c + r, c - r : c + r].astype(np.float64).mean())


def frame_number(frame: np.ndarray) -> int:
    """Source frame number modulo PERIOD read back from a decoded (S, S, 3) frame."""
    return round((read_level(frame) - 24) / 8) % PERIOD


def make_video(
    path: str | os.PathLike,
    codec: str = "h264",
    width: int = 64,
    height: int = 48,
    frames: int = 48,
    fps: float = 30,
    *,
    pix_fmt: str | None = None,
    pts_ms: list[int] | None = None,
    audio: bool = False,
    options: dict[str, str] | None = None,
    backend: str | None = None,
    tags: tuple[str, ...] = (),
    rotation: int = 0,
    markers: bool = False,
) -> Expected:
    """Encode `frames` numbered frames (see module doc) into `path`; the container follows the extension.

    codec: one of "h264", "h264_bframes", "hevc", "vp9", "mjpeg" (or a PyAV encoder name).
    pts_ms: variable frame rate: presentation time of every frame in milliseconds (time base 1/1000); fps is then
    only the nominal rate given to the encoder. audio: add a 1 kHz AAC (mp4/mkv) or Opus (webm) track.
    rotation: display rotation in degrees counter-clockwise (a phone's portrait video is coded landscape with 90 or
    270): frames are coded as drawn, players turn them. markers: colored bands at the ends of the long side
    (frame_image).
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder, default_fmt, default_opts = _CODECS.get(codec, (codec, "yuv420p", {}))
    pix_fmt = pix_fmt or default_fmt
    opts = {**default_opts, **(options or {})}
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=rate, options=opts)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if rotation:
            stream.set_display_rotation(rotation)
        if pts_ms is not None:
            if len(pts_ms) != frames:
                raise ValueError(f"pts_ms must have {frames} entries, got {len(pts_ms)}")
            stream.time_base = Fraction(1, 1000)
            stream.codec_context.time_base = Fraction(1, 1000)
        astream = None
        if audio:
            acodec = "libopus" if path.suffix.lower() == ".webm" else "aac"
            astream = container.add_stream(acodec, rate=48000)
            astream.layout = "mono"
        gray = pix_fmt.startswith("gray")
        for i in range(frames):
            img = frame_image(i, width, height, markers)
            if gray:
                frame = av.VideoFrame.from_ndarray(_gray(img), format="gray")
            else:
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = pts_ms[i] if pts_ms is not None else i
            if pts_ms is not None:
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if astream is not None:
            seconds = (pts_ms[-1] / 1000 if pts_ms is not None else frames / fps) + 0.1
            _write_tone(container, astream, seconds)
    if pts_ms is not None:
        timestamps = tuple(p / 1000 for p in pts_ms)
    else:
        timestamps = tuple(i / float(rate) for i in range(frames))
    avg_fps = (frames - 1) / (timestamps[-1] - timestamps[0]) if frames > 1 else float(rate)
    return Expected(path, width, height, frames, avg_fps, timestamps, codec, pix_fmt, backend, audio, tags, rotation)


def _gray(img: np.ndarray) -> np.ndarray:
    """Luma-like gray image keeping the numbered square's exact level (it is gray already)."""
    return np.ascontiguousarray(((img[..., 0].astype(np.uint16) + img[..., 1] + img[..., 2]) // 3).astype(np.uint8))


def _write_tone(container, astream, seconds: float) -> None:
    import av

    rate, n = 48000, 1024
    total = int(seconds * rate)
    for start in range(0, total, n):
        t = (np.arange(start, start + n) / rate).astype(np.float32)
        samples = (0.2 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        for packet in astream.encode(frame):
            container.mux(packet)
    for packet in astream.encode():
        container.mux(packet)


def vfr_pts_ms(frames: int, seed: int = 0) -> list[int]:
    """Irregular presentation times (ms): gaps drawn from 20..80 ms, about 20 fps on average."""
    rng = random.Random(seed)
    pts, t = [], 0
    for _ in range(frames):
        pts.append(t)
        t += rng.choice([20, 33, 50, 67, 80])
    return pts


def make_video_zoo(directory: str | os.PathLike) -> dict[str, tuple[Path, Expected]]:
    """Write one good video per awkward case under `directory` (nested folders included).

    Sizes are small (64x48 unless the case is about size) so the whole zoo encodes in a few seconds.
    """
    d = Path(directory)
    zoo: dict[str, tuple[Path, Expected]] = {}

    def add(name: str, path: Path, codec: str = "h264", frames: int = 40, **kwargs) -> None:
        exp = make_video(path, codec, frames=frames, tags=(name,), **kwargs)
        zoo[name] = (exp.path, exp)

    add("h264_bframes", d / "h264_bframes.mp4", "h264_bframes", frames=80)
    add("vp9", d / "vp9.webm", "vp9")
    add("hevc", d / "hevc.mkv", "hevc")
    add("mjpeg", d / "mjpeg.avi", "mjpeg", fps=25)
    add("h264_10bit", d / "h264_10bit.mp4", pix_fmt="yuv420p10le")
    add("hevc_10bit", d / "hevc_10bit.mkv", "hevc", pix_fmt="yuv420p10le")
    add("gray", d / "gray.mkv", "hevc", pix_fmt="gray")
    # decord cannot decode 16x16 frames at their native size (its NDArray copy check fails): PyAV fallback
    add("tiny", d / "tiny.mp4", width=16, height=16, options={"crf": "0"})
    add("hd1080", d / "hd1080.mp4", width=1920, height=1080, frames=20)
    add("portrait", d / "portrait.mp4", width=48, height=80)
    add("rotated", d / "rotated_phone.mp4", width=64, height=48, rotation=90)  # coded landscape, shown portrait
    add("vfr", d / "vfr.mkv", frames=60, pts_ms=vfr_pts_ms(60))
    add("short", d / "short.mp4", frames=10)
    add("audio", d / "with_audio.mp4", audio=True)
    add("non_ascii", d / "vidéo_日本語 ü.mp4")
    add("upper_ext", d / "UPPER.MP4")
    add("nested", d / "nested" / "a" / "b" / "deep.mov", fps=24)
    return zoo


# make_bad_files name -> the stage of the error each must end as
BAD_STAGES = {"empty": "open", "truncated": "open", "text": "open", "audio_only": "open", "directory": "open",
              "dangling_symlink": "open", "garbage_mid": "decode"}


def make_bad_files(directory: str | os.PathLike, good: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write files that look like videos but are not decodable (each must become one error, never a crash).

    good: an H.264 mp4 to damage (made here when None). Names: empty, truncated, text, audio_only, directory,
    dangling_symlink, garbage_mid (a valid file whose middle bytes are random: decoders may recover, see the tests).
    """
    import av

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if good is None:
        good = _make_source(d)
    data = Path(good).read_bytes()
    bad = {}
    bad["empty"] = d / "empty.mp4"
    bad["empty"].write_bytes(b"")
    bad["truncated"] = d / "truncated.mp4"
    bad["truncated"].write_bytes(data[: len(data) // 2])
    bad["text"] = d / "text.mp4"
    bad["text"].write_text("this is not a video\n" * 20)
    bad["audio_only"] = d / "audio_only.mp4"
    with av.open(str(bad["audio_only"]), "w") as c:
        a = c.add_stream("aac", rate=48000)
        a.layout = "mono"
        _write_tone(c, a, 1.0)
    bad["directory"] = d / "directory.mp4"
    bad["directory"].mkdir(exist_ok=True)
    bad["dangling_symlink"] = d / "dangling.mp4"
    if bad["dangling_symlink"].is_symlink():
        bad["dangling_symlink"].unlink()
    bad["dangling_symlink"].symlink_to(d / "does_not_exist.mp4")
    bad["garbage_mid"] = d / "garbage_mid.mp4"
    rng = np.random.default_rng(0)
    damaged = bytearray(data)
    lo, hi = len(data) * 2 // 5, len(data) * 3 // 5
    damaged[lo:hi] = rng.integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    bad["garbage_mid"].write_bytes(bytes(damaged))
    return bad


def _make_source(d: Path) -> Path:
    """A 60-frame H.264 mp4 (moov at the end, keyframe every 10 frames) used as the base of damaged files."""
    exp = make_video(d / "_source" / "source.mp4", codec="h264", frames=60, options={"g": "10"})
    return exp.path


# --- checks shared by the decoder and pool tests ----------------------------------------------------------------
def expected_clips(exp, sampling):
    """Reference plan written independently of plan_clips: frame indices, padding and [start_s, end_s) per clip."""
    step = sampling.frame_step or max(1, round(exp.fps / 7.5))
    n, need = exp.num_frames, (sampling.num_frames - 1) * step + 1
    starts = list(range(0, n - need + 1, sampling.num_frames * step)) or [0]
    out = []
    for s in starts:
        idx = [s + k * step for k in range(sampling.num_frames)]
        real = [i for i in idx if i < n]
        idx = real + [real[-1]] * (len(idx) - len(real))
        last = real[-1]
        dur = exp.timestamps[last + 1] - exp.timestamps[last] if last + 1 < n else exp.timestamps[1] - exp.timestamps[0]
        out.append((idx, len(idx) - len(real), exp.timestamps[s], exp.timestamps[last] + dur))
    return out


def check_clips(clips, exp, sampling, image_size: int = 32):
    """Clip count, indices, padding, times (1 ms: container time bases are 1/1000 or finer) and pixel frame numbers."""
    ref = expected_clips(exp, sampling)
    assert len(clips) == len(ref), f"{exp.path.name}: {len(clips)} clips, expected {len(ref)}"
    for clip, (idx, padded, start_s, end_s) in zip(clips, ref, strict=True):
        assert clip.frames.dtype == np.uint8 and clip.frames.shape == (sampling.num_frames, image_size, image_size, 3)
        assert clip.frame_indices.tolist() == idx, f"{exp.path.name} clip {clip.clip_index}"
        assert clip.padded_frames == padded
        assert (clip.start_frame, clip.end_frame) == (idx[0], max(idx) + 1)
        assert clip.start_s == pytest.approx(start_s, abs=1e-3) and clip.end_s == pytest.approx(end_s, abs=1e-3)
        seen = [frame_number(f) for f in clip.frames]
        assert seen == [i % PERIOD for i in idx], f"{exp.path.name} clip {clip.clip_index}: pixels say {seen}"
    assert [c.clip_index for c in clips] == list(range(len(clips)))


def independent_views(exp, image_size: int, crops: int, resize: int | None = None) -> list[list[np.ndarray]]:
    """Every frame of exp decoded in order (one thread, nothing skipped), turned upright as np.rot90 by the
    display rotation, and cut as DESIGN.md says, written here without vmae_fast: one crop = the center square of
    the coded frame scaled to S x S; three = the frame scaled so its short side is S, then S x S windows at offset
    0, (L - S) // 2 and L - S of the long side L. With `resize` R (V-JEPA 2's processor, transformers' rules: short
    side R, long side int(R * long / short), then torchvision's center_crop at int(round((L - S) / 2)), half to even)
    the frame is scaled that way, and every window is also centered across the short side at int(round((R - S) /
    2)). Scaling: swscale bilinear through an FFmpeg filter graph."""
    import av

    def graph(frame, filters):
        g = av.filter.Graph()
        chain = [g.add_buffer(width=frame.width, height=frame.height, format=frame.format.name,
                              time_base=frame.time_base)]
        chain += [g.add(name, args) for name, args in filters] + [g.add("format", "rgb24"), g.add("buffersink")]
        for a, b in pairwise(chain):
            a.link_to(b)
        g.configure()
        return g

    short = resize or image_size
    out = []
    with av.open(str(exp.path)) as c:
        stream = c.streams.video[0]
        stream.codec_context.thread_count = 1
        g = None
        for frame in c.decode(stream):
            w, h = frame.width, frame.height
            if crops == 1 and short == image_size:
                side = min(w, h)
                filters = [("crop", f"{side}:{side}:{(w - side) // 2}:{(h - side) // 2}"),
                           ("scale", f"{image_size}:{image_size}:flags=bilinear")]
            else:
                size = int if resize else round  # transformers floors the long side of a shortest_edge resize
                sw, sh = (size(w * short / h), short) if w >= h else (short, size(h * short / w))
                filters = [("scale", f"{sw}:{sh}:flags=bilinear")]
            g = g or graph(frame, filters)
            g.push(frame)
            img = np.rot90(g.pull().to_ndarray(), exp.rotation // 90)
            if crops == 1 and short == image_size:
                out.append([img])
                continue
            long = max(img.shape[:2])

            def center(length):  # torchvision's center_crop offset with a processor's resize, else floor
                return int(round((length - image_size) / 2.0)) if resize else (length - image_size) // 2
            across = center(min(img.shape[:2]))
            offsets = [center(long)] if crops == 1 else [0, center(long), long - image_size]
            if img.shape[1] >= img.shape[0]:
                out.append([img[across : across + image_size, x : x + image_size] for x in offsets])
            else:
                out.append([img[y : y + image_size, across : across + image_size] for y in offsets])
    return out


def make_small_videos(directory: Path) -> Path:
    """Eight short H.264 videos (1-4 clips each at the tiny model's sampling), three of them in `sub/`."""
    for i in range(8):
        make_video(directory / ("sub" if i % 3 == 0 else "") / f"clip{i}.mp4", frames=14 + 9 * i)
    return directory
