"""PyAV (FFmpeg) decoder backend: threaded decoding, frames scaled by swscale while converting, seeks across long
gaps and skip_frame=NONREF for unwanted non-reference frames."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .crop import decode_size
from .errors import VideoError

# PyAV seeks over a gap between wanted frames only when the keyframe it lands on is more than this many frames
# ahead: decoding a few frames (non-reference ones skipped) is cheaper than flushing a frame-threaded decoder.
_SEEK_MIN_GAP = 16


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


class PyAVReader:
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
        self.decode_size = decode_size(self.display_width, self.height, image_size)
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

