"""Whose fault is it? The one place that decides what a failure costs.

- The video's own fault (cannot open, corrupt stream, no video track, an HTTP 4xx): an error row; the run goes on.
  `vmae-fast extract --retry-errors` redoes those videos later.
- The environment's fault (a decoder library that does not import, MemoryError, a decode worker killed by SIGKILL
  that our watchdog did not send, i.e. most likely the kernel's OOM killer, a network or file-system error that
  may pass: EIO, ESTALE, ETIMEDOUT, connection resets, HTTP 5xx, a mount that vanished): the task is retried
  within the pool's attempts, then the run stops with EnvironmentFault. The video is not recorded, so the rerun
  (same command) does it; finished videos are committed first.
- Our bug (any other exception, e.g. a TypeError in our code, or InternalError: two parts of ours that disagree):
  the run stops at once with the traceback (a bug is deterministic: retrying or recording it as the video's fault
  would hide it). Nothing is recorded for the video at hand.
- The user's problem: a UserError, raised where the mistake is known, printed by the CLI as one line. Its kinds:
  InvalidOption (a bad option value, named as the user gave it), InvalidInput (the content of something the user
  gave: a list file, a query, InvalidModel: a checkpoint whose keys or shapes are no model's), MissingFile (a
  file or folder the user named is not there), UnusableOutput (OUT cannot serve the command: another run's
  configuration, no clips, no index or a stale one), ShardLocked, GPUOutOfMemory; and an OSError whose errno is
  about a file, disk or port the user chose (USER_ERRNOS: permission denied, no such file, disk full, address in
  use). A plain ValueError, TypeError or ImportError says nothing of whose mistake it is: it is treated as ours.

CLI exit status (exit_status): 0 done (every input processed or recorded as an error), 1 our bug (traceback + a
request to report it), 2 the user's problem (one line; also a missing dependency), 3 `index`: the recall target was
not met, 75 an environment fault (one line; rerun to resume; 75 is sysexits' EX_TEMPFAIL, which job schedulers may
requeue on), 130 interrupted (SIGINT), 143 terminated (SIGTERM).

Other modules (decoders, URL streams) raise EnvironmentFault for what they know to be transient, or let the
original exception through: classify() knows OSError errnos, PyAV/decord errors and the builtins.

Public API (`__all__`): the exceptions UserError (InvalidOption, UnsupportedOption, InvalidInput, InvalidModel,
MissingFile, UnusableOutput, OutputNotADirectory, ShardLocked, GPUOutOfMemory), EnvironmentFault
(MissingDependency), VideoError (its STAGES), InternalError and WorkerBug; classify() and its classes VIDEO,
ENVIRONMENT, BUG; exit_status() and the statuses EXIT_BUG, EXIT_USER, EXIT_RECALL, EXIT_ENVIRONMENT,
EXIT_INTERRUPTED, EXIT_TERMINATED; TRANSIENT_ERRNOS, USER_ERRNOS.
"""

from __future__ import annotations

import errno

VIDEO = "video"
ENVIRONMENT = "environment"
BUG = "bug"

EXIT_BUG = 1
EXIT_USER = 2
EXIT_RECALL = 3  # `vmae-fast index`: built, but the recall target was not met
EXIT_ENVIRONMENT = 75
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

# errnos of reads that may succeed a moment later: a network file system or socket, a busy machine
TRANSIENT_ERRNOS = frozenset(getattr(errno, name) for name in (
    "EIO", "ESTALE", "ETIMEDOUT", "ENOTCONN", "ECONNRESET", "ECONNREFUSED", "ECONNABORTED", "EHOSTUNREACH",
    "EHOSTDOWN", "ENETUNREACH", "ENETDOWN", "ENETRESET", "EAGAIN", "ENOMEM", "EMFILE", "ENFILE", "EREMOTEIO",
    "ENOLINK", "ECOMM", "EPROTO", "EBUSY", "EINTR") if hasattr(errno, name))
# errnos of a file, folder, disk or port the user named or chose, in a state only they can change (the OSError names
# it): the user's problem, even where no code of ours knew to expect it
USER_ERRNOS = frozenset(getattr(errno, name) for name in (
    "ENOENT", "ENOTDIR", "EISDIR", "EEXIST", "EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT", "ENAMETOOLONG", "ELOOP",
    "EADDRINUSE", "EADDRNOTAVAIL") if hasattr(errno, name))


class UserError(Exception):
    """A problem the user fixes (bad argument, missing input, unloadable model, unwritable output, a held lock):
    the CLI prints its message as one line and exits 2."""


class InvalidOption(UserError, ValueError):
    """An option of a run (a CLI flag, a keyword of the Python API) whose value cannot be, or that contradicts
    another: the message names the option as the user gave it (extraction/spec.py). A ValueError too, for callers
    that catch one."""


class UnsupportedOption(InvalidOption, TypeError):
    """An option this call does not take: an unknown keyword, or a loaded model where a source must be named (a
    TypeError too, as Python's own for a bad argument)."""


class InvalidInput(UserError, ValueError):
    """What a file or value the user gave holds cannot be used: a list file without a `path` column or naming a
    video_id twice, a query vector of the wrong size, a clip OUT does not hold, a query video that cannot be read."""


class InvalidModel(InvalidInput):
    """A model source that is no checkpoint of a supported model: not one at all, another architecture, missing,
    unexpected or mis-shaped keys, a config.json or preset this library cannot take."""


class MissingFile(UserError, FileNotFoundError):
    """A file or folder the user named is not there (an INPUT, a model, an output folder of `extract`)."""


class UnusableOutput(UserError, ValueError):
    """OUT cannot serve the command: written with another configuration or by another version, part files without
    _run.json, no clips, no index where one is needed, or an index built from other data."""


class OutputNotADirectory(UnusableOutput, NotADirectoryError):
    """OUT exists and is not a directory."""


class ShardLocked(UserError):
    """Another live process writes this shard of this output (shard_lock.py)."""


class GPUOutOfMemory(UserError):
    """A batch of one clip does not fit in GPU memory (larger batches are halved first, runner.py)."""


class EnvironmentFault(RuntimeError):
    """The machine failed, not the video: the run stops, the video is not recorded, a rerun resumes (exit 75)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __reduce__(self):  # picklable across processes
        return (type(self), (self.message,))


class MissingDependency(EnvironmentFault):
    """A package or device the run needs is not there (a decoder library, torchcodec, the CUDA device): the user
    installs or chooses another; exit 2, not 75 (rerunning alone does not help)."""


class InternalError(RuntimeError):
    """Two parts of ours disagree (the decoder reported N clips of a video but sent M; a video the decoder never
    finished): our bug. The run stops with its traceback; nothing is recorded for the video."""


class WorkerBug(RuntimeError):
    """An unexpected exception inside a decode worker: our bug. The message holds the worker's traceback."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __reduce__(self):
        return (type(self), (self.message,))


STAGES = ("open", "decode", "sample")  # where a VideoError happened


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


def _from_decoder(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    return module == "av" or module.startswith(("av.", "decord"))


def classify(exc: BaseException) -> str:
    """VIDEO, ENVIRONMENT or BUG for an exception raised while a video was opened or decoded."""
    if isinstance(exc, EnvironmentFault):
        return ENVIRONMENT
    if isinstance(exc, VideoError):
        return VIDEO
    if isinstance(exc, (ImportError, MemoryError)):
        return ENVIRONMENT
    if type(exc).__name__ == "HTTPServerError" and _from_decoder(exc):  # HTTP 5xx: the server's moment
        return ENVIRONMENT
    if isinstance(exc, OSError):
        if exc.errno in TRANSIENT_ERRNOS or isinstance(exc, (TimeoutError, ConnectionError)):
            return ENVIRONMENT
        return VIDEO  # ENOENT, EACCES, EISDIR, EINVAL, FFmpeg's own codes: this file's state
    if _from_decoder(exc):  # PyAV's FFmpegError (InvalidData, HTTP 4xx, ...), decord's DECORDError
        return VIDEO
    return BUG


def exit_status(exc: BaseException) -> int:
    """The CLI's exit status for an exception that ended a command (see the module docstring): a UserError (or an
    OSError of USER_ERRNOS) is the user's, an EnvironmentFault (or an OSError of TRANSIENT_ERRNOS) the
    environment's, anything else ours."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, MissingDependency):
        return EXIT_USER
    if isinstance(exc, (EnvironmentFault, TimeoutError, ConnectionError)) or (
            isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS):
        return EXIT_ENVIRONMENT
    if isinstance(exc, UserError) or (isinstance(exc, OSError) and exc.errno in USER_ERRNOS):
        return EXIT_USER
    return EXIT_BUG


__all__ = ["BUG", "ENVIRONMENT", "EXIT_BUG", "EXIT_ENVIRONMENT", "EXIT_INTERRUPTED", "EXIT_RECALL", "EXIT_TERMINATED",
           "EXIT_USER", "STAGES", "TRANSIENT_ERRNOS", "USER_ERRNOS", "VIDEO", "EnvironmentFault", "GPUOutOfMemory",
           "InternalError", "InvalidInput", "InvalidModel", "InvalidOption", "MissingDependency", "MissingFile",
           "OutputNotADirectory", "ShardLocked", "UnsupportedOption", "UnusableOutput", "UserError", "VideoError",
           "WorkerBug", "classify", "exit_status"]
