"""Video -> clips: sampling plans, decoder backends (PyAV, decord, torchcodec) and a crash-isolating pool of decode
workers.

    sampling.py            VideoTask, Sampling, plan_clips, ClipPlan, Clip
    crop.py                decode size, center square, spatial views (1 or 3 crops), upright
    pyav_reader.py         PyAV (FFmpeg) backend, the default
    decord_reader.py       decord backend (optional)
    torchcodec_reader.py   torchcodec backend (optional; NVDEC on CUDA)
    decode.py              decode_clips(): one video -> clips, backend choice and fallback
    pool.py                DecodePool: worker processes, events, hang/crash handling, slot grants
    shm.py                 ClipRing: the shared-memory clip slots workers decode into
"""

from ..faults import STAGES, VideoError
from .decode import DECODE_BACKENDS, DEFAULT_DECODE_BACKEND, VIDEO_EXTENSIONS, check_device, decode_clips
from .pool import ClipsEvent, DecodePool, DoneEvent, ErrorEvent, Event, ResetEvent
from .sampling import DEFAULT_SAMPLE_FPS, Clip, ClipPlan, Sampling, VideoTask, plan_clips

__all__ = [
    "DECODE_BACKENDS", "DEFAULT_DECODE_BACKEND", "DEFAULT_SAMPLE_FPS", "STAGES", "VIDEO_EXTENSIONS", "Clip", "ClipPlan",
    "ClipsEvent", "DecodePool", "DoneEvent", "ErrorEvent", "Event", "ResetEvent", "Sampling", "VideoError", "VideoTask",
    "check_device", "decode_clips", "plan_clips",
]
