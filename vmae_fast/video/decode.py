"""decode_clips(): one video -> model-ready clips, through the chosen decoder backend (default: PyAV).

Frames are decoded in one sequential pass per video (sorted indices; frames shared by overlapping clips decoded
once); each backend yields the upright views of each frame (crop.py: short side resized to image_size, or to
Sampling.resize when the model's processor resizes larger than its crop, then the center crop, or with
Sampling.crops=3 the start, center and end crops of the long side, all cut from one decoded frame), timed by their
presentation timestamps. Backends, one file each: pyav_reader.py (default: measured fastest per core, passes the
hostile corpus, see README), decord_reader.py, torchcodec_reader.py (optional; NVDEC with
device="cuda"). All of them follow the same frame plan: sampling.plan_clips over the PyAV packet index.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..faults import BUG, ENVIRONMENT, EnvironmentFault, InvalidOption, MissingDependency, VideoError, classify
from .crop import CROP_INDICES
from .pyav_reader import PyAVReader
from .sampling import Clip, ClipPlan, Sampling, VideoTask, duration_s, plan_clips

# Lower-case file extensions (with the dot) treated as videos when scanning directories: `Path(p).suffix.lower()`.
VIDEO_EXTENSIONS = {
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".flv", ".wmv",
    ".3gp", ".ogv", ".asf", ".vob",
}
DECODE_BACKENDS = ("auto", "pyav", "decord", "torchcodec")
# what "auto" means on the CPU: 1.5-1.9x decord per core on H.264 with B-frames (docs, "Which decoder")
DEFAULT_DECODE_BACKEND = "pyav"


def check_path(path: str) -> None:
    if "://" in path:  # a URL: FFmpeg's protocols decide
        return
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise VideoError("open", f"dangling symlink: {path} -> {os.readlink(path)}")
    if not p.exists():
        if not p.parent.is_dir():  # the folder is gone too: a network mount that dropped, not this video's fault
            raise EnvironmentFault(f"{path} is gone with its folder {p.parent} (a network mount that dropped?); if "
                                   "the path is wrong, fix the input list")
        raise VideoError("open", f"file not found: {path}")
    if p.is_dir():
        raise VideoError("open", f"is a directory, not a video file: {path}")
    if p.stat().st_size == 0:
        raise VideoError("open", f"empty file (0 bytes): {path}")



def _open_reader(path: str, image_size: int, backend: str, threads: int, device: str = "cpu", remote=None,
                 resize: int | None = None):
    """(reader, fallback) for `backend`: "auto" is DEFAULT_DECODE_BACKEND on the CPU and torchcodec on CUDA; "decord"
    falls back to PyAV for files decord cannot open (fallback: the PyAV reader to continue with if decord fails
    mid-way). remote: the RemoteVideo of a URL (PyAV streams it; decord and torchcodec get its local copy).
    resize: the short side before the crop (Sampling.resize; None: image_size)."""
    check_path(path)
    pyav = PyAVReader(path, image_size, threads, remote, resize)  # header + packet index: "open" errors, timestamps
    if remote is not None and (backend in ("decord", "torchcodec") or device != "cpu"):
        path = remote.local_path()  # these take a path only: the whole file, fetched once
    if backend == "torchcodec" or device != "cpu":
        from .torchcodec_reader import TorchCodecReader

        return TorchCodecReader(path, image_size, pyav, threads=threads or 1, device=device, resize=resize), None
    if backend in ("auto", "pyav"):
        return pyav, None
    pix_fmt, rotation = pyav.probe_first_frame()
    if pix_fmt.startswith(("gray", "ya")) or rotation % 360:
        # decord expands gray as limited range (24 -> 9; PyAV converts gray as full range, like FFmpeg) and
        # mishandles a display rotation (4-channel transposed frames at native size, unrotated when scaling)
        return pyav, None
    from .decord_reader import DecordReader

    try:
        return DecordReader(path, (pyav.width, pyav.height), pyav.decode_size, image_size, threads,
                            timestamps=pyav.timestamps, resize=resize), pyav
    except VideoError:
        raise
    except Exception:  # noqa: BLE001 - decord raises its own types (DECORDError, RuntimeError, ...)
        return pyav, None


def check_device(device: str, backend: str) -> None:
    """ValueError for a malformed device or a backend that cannot decode there; faults.MissingDependency (an
    environment fault, a RuntimeError) when the device or torchcodec is missing."""
    if not isinstance(device, str) or not (device == "cpu" or device == "cuda" or
                                           (device.startswith("cuda:") and device[5:].isdigit())):
        raise InvalidOption(f"decode device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device == "cpu":
        return
    if backend not in ("auto", "torchcodec"):
        raise InvalidOption(f"decoding on {device} (NVDEC) needs the torchcodec backend, got backend={backend!r}")
    from .torchcodec_reader import status

    why = status()
    if why:
        raise MissingDependency(f"decoding on {device} needs torchcodec built for this torch and CUDA, which does not "
                           f"load here: {why}")
    # torch here only: the decode workers (DecodePool's forkserver preloads this package) and the Ray engine's
    # coordinator and admission processes never import it, each ~1.5 s of CPU to start (docs/ray.md)
    import torch

    if not torch.cuda.is_available():
        raise MissingDependency(f"decoding on {device}: torch sees no CUDA device here (torch {torch.__version__})")
    index = int(device[5:]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise MissingDependency(f"decoding on {device}: there are only {torch.cuda.device_count()} CUDA devices")


def require_backend(backend: str) -> None:
    """Raise faults.MissingDependency (an environment fault, never a video's error) when the backend's library is
    missing."""
    if backend not in DECODE_BACKENDS:
        raise InvalidOption(f"backend must be one of {DECODE_BACKENDS}, got {backend!r}")
    try:
        __import__("av")  # every backend reads the packet index with PyAV
        if backend == "decord":
            __import__("decord")
    except ImportError as e:
        raise MissingDependency(f"decoder backend {backend!r} needs a package that does not import here "
                           f"({one_line(e)}); install it or choose another --decode-backend") from None
    if backend == "torchcodec":
        from .torchcodec_reader import status

        why = status()
        if why:
            raise MissingDependency(f"decoder backend 'torchcodec' does not load here: {why}")


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
    device: str = "cpu",
) -> Iterator[Clip]:
    """Decode the clips of one video, in clip order, the views of a clip in crop order (see Sampling, Clip).

    backend: "auto" (= DEFAULT_DECODE_BACKEND, PyAV), "pyav", or "decord" (decord, PyAV for the files it cannot open or
    decode and for gray or rotated ones, which it gets wrong).
    threads: decoder threads (0: the backend's default, all cores). at_s: only the clip whose [start_s, end_s)
    covers this time, or the nearest clip when at_s falls between clips (all its views). info: if given,
    info["backend"] is set to the decoder actually used, info["frames_decoded"] to the frames its decoder produced
    so far (None for decord, which does not say) and info["duration_s"] to the seconds of video the clips are
    sampled from (the task's time range, else the whole video, by frame timestamps). alloc: if given, called once
    per clip (view) for a writable uint8 array (num_frames, image_size, image_size, 3) that receives the clip's
    frames and becomes Clip.frames (DecodePool passes a shared-memory slot, so frames are written once, where the
    model reads them); default: a new array per clip.
    device: "cpu", or "cuda"/"cuda:N" to decode with NVDEC through torchcodec (backend "auto" or "torchcodec");
    Clip.frames is then a torch.uint8 tensor on that device and alloc must be None.
    Raises VideoError(stage, message); clips already yielded are valid only if the iteration ends without an error
    (a video is all its clips or an error, never a part).
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be an int >= 1, got {image_size!r}")
    if sampling.resize is not None and sampling.resize < image_size:
        raise ValueError(f"sampling.resize {sampling.resize} (the short side before the crop) must be >= image_size "
                         f"{image_size}")
    check_device(device, backend)
    if device != "cpu" and alloc is not None:
        raise ValueError(f"alloc (host buffers) cannot receive frames decoded on {device}")
    require_backend(backend)
    info = {} if info is None else info
    path = os.fspath(task.path)
    remote = None
    if "://" in path:
        from .remote import RemoteVideo, is_url

        remote = RemoteVideo(path) if is_url(path) else None  # one cache for every pass over the URL's bytes
    try:
        yield from _decode(task, path, sampling, image_size, backend, threads, at_s, info, alloc, device, remote)
    finally:
        if remote is not None:
            remote.close()


def _decode(task, path, sampling, image_size, backend, threads, at_s, info, alloc, device, remote):
    reader, fallback = _open_reader(path, image_size, backend, threads, device, remote, sampling.resize)
    crops = sampling.crops
    done = 0  # clips (views) yielded so far
    while True:
        info["backend"] = reader.name
        plans = plan_clips(reader.timestamps, sampling, last_duration=reader.last_duration,
                           start_s=task.start_s, end_s=task.end_s)
        info["duration_s"] = duration_s(reader.timestamps, last_duration=reader.last_duration, start_s=task.start_s,
                                        end_s=task.end_s)
        if at_s is not None:  # the clip covering at_s, else the nearest one (windows leave gaps of < 1 step)
            plans = [min(plans, key=lambda p: max(p.start_s - at_s, at_s - p.end_s, 0.0))]
        try:
            for clip in _assemble(reader, plans[done // crops:], image_size, alloc, crops, done % crops):
                done += 1
                info["frames_decoded"] = getattr(reader, "frames_decoded", None)
                yield clip
            return
        except (VideoError, EnvironmentFault):  # a URL's network failure is not the video's (remote.py)
            raise
        except Exception as e:  # a decoder's failure is this video's error (or a fallback)
            kind = classify(e)
            if kind == ENVIRONMENT or (kind == BUG and reader.name == "pyav"):
                raise  # memory, a network file system, or our bug (PyAV's errors are typed): the run's problem
            if reader.name == "decord":  # decord failed mid-way: go on with PyAV
                reader, fallback = fallback or PyAVReader(path, image_size, threads, remote, sampling.resize), None
                continue
            raise VideoError("decode", f"{reader.name} failed on {path}: {one_line(e)}") from None


def _assemble(reader, plans: list[ClipPlan], image_size: int, alloc=None, crops: int = 1,
              skip: int = 0) -> Iterator[Clip]:
    """One sequential pass over the union of the plans' frames; each clip's views are yielded (in crop order, each
    stacked into alloc() when given, see decode_clips) once its last frame is in. skip: views of the first plan
    yielded before (a decoder that failed mid-way)."""
    if not plans:
        return
    wanted = np.unique(np.concatenate([p.frame_indices for p in plans]))
    cache: dict[int, list] = {}  # upright (S, S, 3) views of each frame still needed by a later clip
    crop_indices = CROP_INDICES[crops]
    k = 0
    for idx, frame_views in reader.frames(wanted, crops):
        cache[idx] = frame_views
        while k < len(plans) and plans[k].last_frame <= idx:
            p = plans[k]
            for v in range(skip if k == 0 else 0, crops):
                frames = _stack([cache[int(j)][v] for j in p.frame_indices], alloc)
                yield Clip(p.clip_index, p.start_frame, p.end_frame, p.start_s, p.end_s, p.padded_frames, frames,
                           p.frame_indices.copy(), crop_indices[v])
            k += 1
            keep_from = int(plans[k].frame_indices[0]) if k < len(plans) else idx + 1
            for j in [j for j in cache if j < keep_from]:
                del cache[j]
    if k < len(plans):
        raise VideoError("decode", f"the decoder stopped before frame {plans[k].last_frame}")


def _stack(crops: list, alloc):
    """(T, S, S, 3) from T crops: into alloc() when given; torch tensors (frames decoded on a GPU) stay torch."""
    if not isinstance(crops[0], np.ndarray):
        import torch  # already loaded: the frames are its tensors

        return torch.stack(crops)
    return np.stack(crops, out=alloc() if alloc else None)
