"""Embedding a video someone uploaded to `vmae-fast serve`, in a worker process, so that a hostile or broken file
costs one request, never the server.

The server writes the upload (bounded in size) to a file of its own, then `UploadEmbedder.embed(path, at_s)` hands it
to a worker process that runs `embed_upload`: the video's length from its container, then `search.embed_video_at`
(the clip covering at_s, decoded and embedded exactly as the run in OUT embedded its clips). As extraction treats its
decode workers (video/pool.py), a worker that crashes (segfault, abort, killed for memory) or goes silent for
timeout_s is killed and replaced, and the request fails with UploadRejected (the service answers 422); the video's
own faults (not a video, no frame at that time) are UploadRejected with the decoder's message. The model is loaded
by the worker at its first query and stays loaded there; the server process never decodes an upload.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import signal
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

STARTUP_GRACE_S = 120.0  # a fresh worker imports torch and loads the model before its first answer


class UploadRejected(ValueError):
    """The uploaded file could not be embedded: the file's fault (the service answers 422)."""


class UploadTooLarge(ValueError):
    """The upload is larger than the server accepts (the service answers 413)."""


class Busy(RuntimeError):
    """Every upload slot is taken for longer than a request may wait (the service answers 503)."""


def embed_upload(out: str, path: str, at_s: float, device: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The embedding (float32 (D,)) of the clip of `path` covering `at_s`, as the run in `out` embeds clips, and
    that clip's {"at_s", "clip_index", "start_s", "end_s", "duration_s"}. ValueError for the file's own faults."""
    from ..video import VideoError
    from .search import embed_video_at, video_duration

    if not np.isfinite(at_s) or at_s < 0:
        raise ValueError(f"at_s must be a time >= 0 in seconds, got {at_s}")
    duration = video_duration(path)
    if at_s >= duration:
        raise ValueError(f"at_s {at_s:g} s is beyond the end of the uploaded video, which lasts {duration:.2f} s")
    try:
        vector, clip = embed_video_at(out, path, at_s, device=device)
    except VideoError as e:
        raise ValueError(f"cannot decode the uploaded video: {e}") from None
    return vector, {"at_s": at_s, "clip_index": clip.clip_index, "start_s": clip.start_s, "end_s": clip.end_s,
                    "duration_s": duration}


def _worker_main(conn, out: str, device: str | None, embed: Callable) -> None:
    """Answer ("ok", vector, clip) / ("rejected", message) / ("bug", traceback) for each (path, at_s) received."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the server's terminal is the server's to handle
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):  # the server is gone
            return
        if job is None:
            return
        path, at_s = job
        try:
            vector, clip = embed(out, path, at_s, device)
            reply = ("ok", np.asarray(vector, np.float32), clip)
        except ValueError as e:
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            # the server's own file name means nothing to the client (and is none of its business)
            message = re.sub(r"\[Errno -?\d+\] ", "", message.replace(repr(path), "the upload"))
            reply = ("rejected", message.replace(path, "the upload"))
        except Exception:  # noqa: BLE001 - our bug: its traceback goes to the server's log
            reply = ("bug", traceback.format_exc())
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return


def describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


class UploadEmbedder:
    """One worker process embedding uploads one at a time (see the module docstring); thread-safe.

    timeout_s: seconds an embedding may take before its worker is killed (a fresh worker gets STARTUP_GRACE_S more
    for importing torch and loading the model). wait_s: how long a request waits for the worker while another
    upload is being embedded (then Busy). embed: the function the worker runs, called as embed(out, path, at_s,
    device) (default embed_upload); it must be a module-level function (the worker imports it by name).
    """

    def __init__(self, out: str | os.PathLike, *, timeout_s: float = 60.0, wait_s: float = 30.0,
                 device: str | None = None, embed: Callable | None = None):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.out, self.timeout_s, self.wait_s, self.device = os.fspath(out), timeout_s, wait_s, device
        self.embed_fn = embed or embed_upload
        self._ctx = mp.get_context("spawn")  # never fork a server that runs threads
        self._lock = threading.Lock()
        self._proc = None
        self._conn = None
        self.replaced = 0  # workers killed or lost (for the stats and the tests)
        self.embedded = 0

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_worker_main, args=(child, self.out, self.device, self.embed_fn),
                                       name="vmae-upload", daemon=True)
        self._proc.start()
        child.close()  # the worker's death then ends a read with EOFError
        self._conn = parent
        self._fresh = True

    def _stop(self, kill: bool) -> None:
        proc, conn, self._proc, self._conn = self._proc, self._conn, None, None
        if proc is None:
            return
        if not kill and proc.is_alive():
            try:
                conn.send(None)
            except OSError:
                pass
            proc.join(2.0)
        if proc.is_alive():
            proc.kill()
        proc.join()
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._stop(kill=False)

    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def embed(self, path: str | os.PathLike, at_s: float) -> tuple[np.ndarray, dict[str, Any]]:
        """(float32 (D,), clip dict) for the clip of the file at `path` covering at_s; UploadRejected when the file
        cannot be embedded (its message says why: the decoder's error, a crash, a timeout), Busy when the worker
        stays taken for wait_s."""
        if not self._lock.acquire(timeout=self.wait_s):
            raise Busy(f"another upload is being embedded; waited {self.wait_s:g} s: try again")
        try:
            if self._proc is None or not self._proc.is_alive():
                if self._proc is not None:
                    self._stop(kill=True)
                self._start()
            limit = self.timeout_s + (STARTUP_GRACE_S if self._fresh else 0.0)
            self._conn.send((os.fspath(path), float(at_s)))
            reply = self._wait(limit)
            self._fresh = False
        finally:
            self._lock.release()
        if reply[0] == "ok":
            self.embedded += 1
            return reply[1], reply[2]
        if reply[0] == "rejected":
            raise UploadRejected(reply[1])
        raise RuntimeError(f"embedding the upload failed in the worker:\n{reply[1]}")

    def _wait(self, limit: float):
        deadline = time.monotonic() + limit
        while True:
            try:
                if self._conn.poll(min(0.5, max(0.0, deadline - time.monotonic()))):
                    return self._conn.recv()
            except (EOFError, OSError):
                pass  # the worker died: below
            if not self._proc.is_alive() or time.monotonic() >= deadline:
                break
        alive = self._proc.is_alive()
        exitcode = self._proc.exitcode
        self._stop(kill=True)
        self.replaced += 1
        if alive:
            raise UploadRejected(f"the uploaded video took longer than {limit:g} s to decode and embed; its worker was "
                                 "stopped (the server is fine)")
        raise UploadRejected(f"the decoder crashed on the uploaded video (worker {describe_exit(exitcode)}); it was "
                             "replaced (the server is fine)")
