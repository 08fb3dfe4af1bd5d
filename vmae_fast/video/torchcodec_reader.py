"""torchcodec decoder backend (optional): FFmpeg on the CPU, or NVDEC on a CUDA GPU (decode_clips(device="cuda"),
`vmae-fast extract --decode-device cuda`), so a GPU box stops being bound by its CPU cores' decoding.

The frame plan is the one every backend shares (sampling.plan_clips over the PyAV packet index: same indices,
same timestamps); torchcodec only decodes the planned frames by index (seek_mode="exact"), and each frame it returns
is checked against the plan by its PTS. The center square is cut and resized with torch on the frames' device
(bilinear, antialiased; three crops: the whole frame resized, then cut), so on CUDA the frames never leave the GPU:
Clip.frames is then a torch.uint8 CUDA tensor.
torchcodec loads only next to a torch build it was made for (the PyPI wheels 0.15-0.17 link libtorch_cuda and
libnvrtc.so.13, so they do not load beside a CPU-only torch): status() says why in one line.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..faults import VideoError
from .crop import center_square, crop_offsets, decode_size

_BATCH = 32  # frames per get_frames_at call


def status() -> str | None:
    """None when torchcodec's VideoDecoder loads here, else one line saying why not."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except Exception as e:  # noqa: BLE001 - ImportError, OSError (a missing CUDA library), RuntimeError
        text = str(e).strip().splitlines()
        return f"{type(e).__name__}: {text[0] if text else ''}"[:240]
    return None


def square_resize(frames, image_size: int, sample_aspect: float = 1.0):
    """uint8 (N, H, W, 3) torch tensor (any device) -> uint8 (N, S, S, 3): the center square (crop.center_square)
    resized to S x S, bilinear with antialiasing (what PIL and torchvision do when downscaling), on the same device."""
    import torch
    import torch.nn.functional as F

    h, w = frames.shape[1:3]
    x, y, cw, ch = center_square(w, h, max(1, round(w * sample_aspect)))
    square = frames[:, y : y + ch, x : x + cw].permute(0, 3, 1, 2).float()  # (N, 3, ch, cw)
    if (ch, cw) != (image_size, image_size):
        square = F.interpolate(square, size=(image_size, image_size), mode="bilinear", antialias=True,
                               align_corners=False)
    return square.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def resize_views(frames, image_size: int, crops: int = 1, sample_aspect: float = 1.0, rotation_k: int = 0,
                 resize: int | None = None) -> list:
    """uint8 (N, H, W, 3) torch tensor (any device) -> `crops` upright uint8 (N, S, S, 3) views (crop.views order),
    on the same device. One view at resize S (the default): the center square resized (square_resize); otherwise
    (three views, or a larger resize) the whole frame resized to the decode size (short side `resize`, display
    aspect), turned upright, cut at the start/center/end of its long side and centered across it."""
    import torch
    import torch.nn.functional as F

    short, processor = resize or image_size, resize is not None
    if crops == 1 and not processor:
        square = square_resize(frames, image_size, sample_aspect)
        return [torch.rot90(square, rotation_k, dims=(1, 2)) if rotation_k else square]
    h, w = frames.shape[1:3]
    tw, th = decode_size(max(1, round(w * sample_aspect)), h, short, processor)
    whole = frames.permute(0, 3, 1, 2).float()
    if (th, tw) != (h, w):
        whole = F.interpolate(whole, size=(th, tw), mode="bilinear", antialias=True, align_corners=False)
    whole = whole.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    if rotation_k:
        whole = torch.rot90(whole, rotation_k, dims=(1, 2))
    s = image_size
    h, w = whole.shape[1:3]
    if w >= h:
        (top,) = crop_offsets(h, s, 1, processor)
        return [whole[:, top : top + s, x : x + s].contiguous() for x in crop_offsets(w, s, crops, processor)]
    (left,) = crop_offsets(w, s, 1, processor)
    return [whole[:, y : y + s, left : left + s].contiguous() for y in crop_offsets(h, s, crops, processor)]


class TorchCodecReader:
    """torchcodec decoding of one file on `device` ("cpu", "cuda", "cuda:N"); frames() yields the upright (S, S, 3)
    views of each frame: numpy arrays on the CPU, torch.uint8 tensors on CUDA.

    index: the PyAVReader of the same file (the shared frame plan: timestamps, frame count, pixel aspect)."""

    name = "torchcodec"

    def __init__(self, path: str, image_size: int, index, threads: int = 1, device: str = "cpu",
                 resize: int | None = None):
        from torchcodec.decoders import VideoDecoder

        self.path, self.image_size, self.device, self.resize = path, image_size, device, resize
        self.timestamps, self.last_duration = index.timestamps, index.last_duration
        self.sample_aspect = index.sample_aspect
        self.first_pts_s = float(index.pts[0] * index.time_base)
        try:
            self.decoder = VideoDecoder(path, stream_index=index.stream_index, dimension_order="NHWC",
                                        num_ffmpeg_threads=threads, device=device, seek_mode="exact")
        except (RuntimeError, ValueError) as e:
            raise VideoError("open", f"torchcodec cannot open {path}: {e}") from None
        if len(self.decoder) != len(self.timestamps):
            raise VideoError("open", f"torchcodec counts {len(self.decoder)} frames in {path}, the packet index "
                                     f"{len(self.timestamps)}: frame numbers would not match the plan")
        # torchcodec versions whose metadata has `rotation` turn frames upright themselves; older ones do not
        self.rotation_k = 0
        if not hasattr(self.decoder.metadata, "rotation"):
            self.rotation_k = round(index.probe_first_frame()[1] / 90) % 4
        self.frames_decoded = 0

    def frames(self, indices: np.ndarray, crops: int = 1) -> Iterator[tuple[int, list]]:
        """Yield (index, list of `crops` uint8 (S, S, 3) views) for sorted unique indices; each frame's PTS must be
        the planned one."""
        tolerance = 0.5 * float(np.min(np.diff(self.timestamps))) if len(self.timestamps) > 1 else 1e-3
        for lo in range(0, len(indices), _BATCH):
            chunk = indices[lo : lo + _BATCH]
            try:
                batch = self.decoder.get_frames_at(chunk.tolist())
            except (RuntimeError, ValueError) as e:
                raise VideoError("decode", f"torchcodec failed on frames {int(chunk[0])}..{int(chunk[-1])} of "
                                           f"{self.path}: {e}") from None
            self.frames_decoded += len(chunk)
            got = batch.pts_seconds.double().numpy() - self.first_pts_s
            off = np.abs(got - self.timestamps[chunk])
            if (off > max(tolerance, 1e-4)).any():
                k = int(np.argmax(off))
                raise VideoError("decode", f"torchcodec returned the frame at {got[k]:.4f} s for frame "
                                           f"{int(chunk[k])} (planned at {self.timestamps[chunk[k]]:.4f} s) in "
                                           f"{self.path}")
            per_view = resize_views(batch.data, self.image_size, crops, self.sample_aspect, self.rotation_k,
                                    self.resize)
            if per_view[0].device.type == "cpu":
                per_view = [v.numpy() for v in per_view]
            for i, idx in enumerate(chunk.tolist()):
                yield idx, [v[i] for v in per_view]
