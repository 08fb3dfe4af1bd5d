"""Video -> clips: sampling plans, decoder backends (decord, PyAV) and a crash-isolating pool of decode workers.

    sampling.py       VideoTask, Sampling, plan_clips, ClipPlan, Clip
    crop.py           decode size and center crop
    pyav_reader.py    PyAV (FFmpeg) backend
    decord_reader.py  decord backend
    decode.py         decode_clips(): one video -> clips, backend choice and fallback
    pool.py           DecodePool: worker processes, events, hang/crash handling
"""

from .decode import BACKENDS, DEFAULT_BACKEND, VIDEO_EXTENSIONS, decode_clips
from .errors import STAGES, VideoError
from .pool import ClipsEvent, DecodePool, DoneEvent, ErrorEvent, Event, ResetEvent
from .sampling import DEFAULT_SAMPLE_FPS, Clip, ClipPlan, Sampling, VideoTask, plan_clips

__all__ = [
    "BACKENDS", "DEFAULT_BACKEND", "DEFAULT_SAMPLE_FPS", "STAGES", "VIDEO_EXTENSIONS", "Clip", "ClipPlan", "ClipsEvent", "DecodePool",
    "DoneEvent", "ErrorEvent", "Event", "ResetEvent", "Sampling", "VideoError", "VideoTask", "decode_clips",
    "plan_clips",
]
