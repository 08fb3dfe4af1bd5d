"""PyAV (FFmpeg) decoder backend, the default: decodes only what the clips need, converts only the frames they use.

Per video, one demux pass (packet timestamps and keyframe flags, no decoding) gives the frame index, then one
decoding pass that
- asks libavcodec to skip every unwanted non-reference frame (skip_frame=NONREF, set per packet from its PTS: no
  other frame predicts from such a frame, so the frames kept are bit-identical),
- seeks to the keyframe before a wanted frame across long gaps,
- crops the center square and scales only it to image_size (swscale, bilinear), and only for wanted frames; with
  three crops (Sampling.crops=3), or a resize larger than the crop (Sampling.resize, V-JEPA 2), it scales the whole
  frame once (short side `resize`, default image_size) and cuts the center crop, or the start, center and end crops,
  of the upright frame from it.
Containers are opened without decoding frames to probe them (~65 ms less per 1080p H.264 open); the decoder's
reorder depth, which that probe would guess by decoding, comes from the packet order instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise

import av
import numpy as np

from ..faults import ENVIRONMENT, EnvironmentFault, VideoError, classify
from . import progress
from .crop import center_square, decode_size, upright, views

# PyAV seeks over a gap between wanted frames only when the keyframe it lands on is more than this many frames
# ahead: decoding a few frames (non-reference ones skipped) is cheaper than flushing a frame-threaded decoder.
_SEEK_MIN_GAP = 16
# avformat_find_stream_info reads headers without decoding frames (codec options for the probe only)
_PROBE_WITHOUT_DECODING = {"skip_frame": "all"}
_MAX_REORDER = 16  # H.264/HEVC hold back at most 16 frames
# Each shortcut can be switched off here (tools/bench_decode.py --ablation measures what each one buys).
_SKIP_NONREF = True  # skip_frame=NONREF for unwanted frames
_CROP_BEFORE_SCALE = True  # scale only the center square (else: scale the whole frame, then crop)


def _av_open(path: str, probe_by_decoding: bool = False, remote=None):
    """remote: a remote.RemoteVideo to read `path` (a URL) through: every open reads its one local cache."""
    source = path if remote is None else remote.open()
    try:
        if probe_by_decoding:
            return av.open(source, metadata_errors="ignore")
        return av.open(source, metadata_errors="ignore", options=_PROBE_WITHOUT_DECODING)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        if classify(e) == ENVIRONMENT:  # EIO, ESTALE, ETIMEDOUT, HTTP 5xx, ...: may pass, not the file's fault
            raise EnvironmentFault(f"cannot open {path}: {e}") from None
        raise VideoError("open", f"cannot open {path}: {e}") from None


def reorder_depth(pts_in_decode_order: np.ndarray) -> int:
    """The most frames that precede a frame in decode order and follow it in presentation order (H.264's
    num_reorder_frames), i.e. how many frames the decoder must hold back to output in order; capped at 16."""
    pts = np.asarray(pts_in_decode_order, dtype=np.int64)
    n = len(pts)
    later = np.zeros(n, dtype=np.int64)  # later[d]: frames decoded up to 16 before d that are shown after d
    for lag in range(1, min(_MAX_REORDER, n - 1) + 1):
        later[lag:] += pts[:-lag] > pts[lag:]
    return int(later.max()) if n else 0


class _GraphScaler:
    """Decoded frame -> uint8 RGB scaled by swscale (bilinear) in an FFmpeg filter graph, rebuilt when the stream
    changes size or pixel format mid-way; subclasses say which window is scaled to what size."""

    def __init__(self, image_size: int, sample_aspect: float, time_base, processor: bool = False):
        self.image_size, self.sample_aspect, self.time_base = image_size, sample_aspect, time_base
        self.processor = processor  # crop.decode_size's rule for the long side
        self._key = None
        self._graph = None

    def _filters(self, width: int, height: int) -> list[tuple[str, str]]:
        raise NotImplementedError

    def _build(self, width: int, height: int, pix_fmt: str) -> None:
        graph = av.filter.Graph()
        nodes = [graph.add_buffer(width=width, height=height, format=pix_fmt, time_base=self.time_base),
                 *(graph.add(name, args) for name, args in self._filters(width, height)),
                 graph.add("format", "rgb24"), graph.add("buffersink")]
        for a, b in pairwise(nodes):
            a.link_to(b)
        graph.configure()
        self._graph, self._key = graph, (width, height, pix_fmt)

    def __call__(self, frame) -> np.ndarray:
        key = (frame.width, frame.height, frame.format.name)
        if key != self._key:  # first frame, or the stream changed size or pixel format mid-way
            self._build(*key)
        self._graph.push(frame)
        return self._graph.pull().to_ndarray()


class _SquareScaler(_GraphScaler):
    """-> (S, S, 3): the center square (crop.center_square) scaled to S x S. The crop only offsets plane pointers,
    so only the kept pixels are scaled (1080p -> 224: 1.3 instead of 2.1 ms a frame,
    bench/results/decode-crops.json)."""

    def _filters(self, width: int, height: int) -> list[tuple[str, str]]:
        x, y, w, h = center_square(width, height, max(1, round(width * self.sample_aspect)))
        s = self.image_size
        return [("crop", f"{w}:{h}:{x}:{y}"), ("scale", f"{s}:{s}:flags=bilinear")]


class _FrameScaler(_GraphScaler):
    """-> the whole frame at the decode size (short side S, display aspect), in coded orientation: what three
    crops are cut from (one scale of the whole frame costs 0.58-0.61x scaling three squares:
    bench/results/decode-crops.json)."""

    def _filters(self, width: int, height: int) -> list[tuple[str, str]]:
        w, h = decode_size(max(1, round(width * self.sample_aspect)), height, self.image_size, self.processor)
        return [("scale", f"{w}:{h}:flags=bilinear")]


class PyAVReader:
    """PyAV (FFmpeg) decoding of one video file; frames() yields the upright (S, S, 3) views of each frame.

    The demux pass collects every packet's PTS and keyframe flag: the frame count, the timestamps of a
    variable-frame-rate file, the keyframes to seek to across long gaps and the decoder's reorder depth.
    """

    name = "pyav"

    def __init__(self, path: str, image_size: int, threads: int = 0, remote=None, resize: int | None = None):
        self.path, self.image_size, self.threads, self.remote = path, image_size, threads, remote
        self.resize = resize  # Sampling.resize: transformers' processor geometry with this short side, or None
        self.short = resize or image_size  # short side before the crop
        container = _av_open(path, remote=remote)
        try:
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams}) or ["none"]
                raise VideoError("open", f"no video stream in {path} (streams: {', '.join(kinds)})")
            stream = container.streams.video[0]
            if not (stream.codec_context.width and stream.codec_context.height):
                # the headers do not say: let FFmpeg find out by decoding (slower open, same result)
                container.close()
                container = _av_open(path, probe_by_decoding=True, remote=remote)
                stream = container.streams.video[0]
            self.stream_index = stream.index
            self.width, self.height = stream.codec_context.width, stream.codec_context.height
            if not self.width or not self.height:
                raise VideoError("open", f"video stream has no frame size ({self.width}x{self.height}) in {path}")
            # Non-square pixels (anamorphic DV, some broadcasts): size by the display aspect ratio, as players do.
            sar = stream.sample_aspect_ratio
            self.sample_aspect = float(sar) if sar and sar > 0 else 1.0
            self.display_width = max(1, round(self.width * self.sample_aspect))
            self.time_base = stream.time_base
            pts, keys, last_duration = [], [], 0
            try:
                for packet in container.demux(stream):
                    progress.tick()  # a long file's index pass is work, not a hang (pool.py's watchdog)
                    if packet.size == 0:
                        continue
                    pts.append(packet.pts if packet.pts is not None else packet.dts)
                    keys.append(packet.is_keyframe)
                    last_duration = packet.duration or 0
            except av.FFmpegError as e:  # damaged tail: keep the packets read so far, the decoder decides
                if classify(e) == ENVIRONMENT:  # a read that failed for a moment is no damage
                    raise EnvironmentFault(f"cannot read packets of {path}: {e}") from None
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
            self.reorder_depth = 0  # unknown: the decoder keeps its own guess
        else:
            self.reorder_depth = reorder_depth(np.asarray(pts, dtype=np.int64))
        progress.tick()  # the index of a long file takes a while too (~0.1 s per 100k packets, 3 steps)
        order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
        self.pts = np.asarray(pts, dtype=np.int64)[order]
        self.keyframe_indices = np.flatnonzero(np.asarray(keys, dtype=bool)[order])
        # Seconds since the first video frame: container start times depend on the FFmpeg version (decord's FFmpeg
        # puts an mkv's first frame at 0.021 s when AAC priming starts its audio early, PyAV's at 0).
        self.timestamps = (self.pts - self.pts[0]).astype(np.float64) * float(self.time_base)
        self.last_duration = float(last_duration * self.time_base) if last_duration else None
        progress.tick()
        self._pts_to_index = {int(p): i for i, p in enumerate(self.pts)}
        progress.tick()
        self.decode_size = decode_size(self.display_width, self.height, self.short, resize is not None)
        self.rotation_k = 0  # display rotation in quarter turns (np.rot90), read from the first decoded frame
        self.frames_decoded = 0  # frames the decoder produced (the rest of those passed were skipped or seeked over)

    def probe_first_frame(self) -> tuple[str, int]:
        """(pixel format, display rotation in degrees) of the first frame: decodes it (what decode.py needs to
        route a file away from decord)."""
        container, stream = self._open_stream(threads=1)
        try:
            for frame in container.decode(stream):
                return frame.format.name, int(frame.rotation or 0)
        except av.FFmpegError:
            pass
        finally:
            container.close()
        return "", 0

    def _key_before(self, index: int) -> int:
        """Index of the last keyframe at or before frame `index` (0 when none is)."""
        k = int(np.searchsorted(self.keyframe_indices, index, "right")) - 1
        return int(self.keyframe_indices[k]) if k >= 0 else 0

    def _open_stream(self, threads: int | None = None):
        container = _av_open(self.path, remote=self.remote)
        stream = container.streams[self.stream_index]
        stream.thread_type = "AUTO"  # frame + slice threads
        stream.codec_context.thread_count = self.threads if threads is None else threads
        self._set_reorder_depth(stream.codec_context)
        return container, stream

    def _set_reorder_depth(self, codec) -> None:
        """Hold back as many frames as the packet order needs (a decoder guessing too few drops B-frames)."""
        codec.reorder_depth = max(codec.reorder_depth, self.reorder_depth)

    def _cutter(self, crops: int):
        """decoded frame -> list of `crops` upright uint8 (S, S, 3) views (crop.views order). One view at resize S:
        only the center square is scaled (unless that shortcut is off); otherwise (three views, or a resize larger
        than the crop) the frame is scaled once to short side `resize`, turned upright, and cut."""
        s = self.image_size
        if crops == 1 and self.resize is None and _CROP_BEFORE_SCALE:
            square = _SquareScaler(s, self.sample_aspect, self.time_base)
            return lambda frame: [upright(square(frame), self.rotation_k)]
        whole = _FrameScaler(self.short, self.sample_aspect, self.time_base, processor=self.resize is not None)
        return lambda frame: views(upright(whole(frame), self.rotation_k), s, crops, self.resize)

    def frames(self, indices: np.ndarray, crops: int = 1) -> Iterator[tuple[int, list[np.ndarray]]]:
        """Yield (index, list of `crops` upright uint8 (S, S, 3) views) for sorted unique frame indices, in order.

        Two shortcuts, each switched off for the rest of the video (and the file reopened) if a wanted frame goes
        missing after it: seeking to the keyframe before a wanted frame when a long gap holds one, and asking
        the decoder to skip non-reference frames nobody wants (skip_frame=NONREF per packet). A wanted frame still
        missing without them is damage: VideoError("decode").
        """
        cut = self._cutter(crops)
        wanted = set(indices.tolist())
        seek_ok = not self.ordered_only  # both need timestamps to know where the decoder is
        skip_ok = seek_ok and _SKIP_NONREF
        first_frame = True
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
                        self._set_reorder_depth(codec)  # a flush may reset the decoder's guess
                        seeked, pos, damaged = True, key - 1, False
                    jump = False
                    for packet in container.demux(stream):
                        progress.tick()
                        if skip_ok and packet.pts is not None:
                            j = self._pts_to_index.get(packet.pts)
                            codec.skip_frame = "DEFAULT" if j is None or j in wanted else "NONREF"
                        try:
                            decoded = stream.decode(packet)
                        except av.FFmpegError:  # a damaged packet: skip it, the decoder resynchronizes
                            damaged = True
                            continue
                        for frame in decoded:
                            self.frames_decoded += 1
                            if first_frame:
                                self.rotation_k = round((frame.rotation or 0) / 90) % 4
                                first_frame = False
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
                            yield idx, cut(frame)
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
