"""DecodePool: a decode function (decode_clips by default) in worker processes, so a decoder that hangs, segfaults
or aborts costs one video, not the run. Workers are replaced, tasks retried (PyAV after decord), events streamed
to the consumer.

Transport: the workers write each clip's frames straight into a slot of one shared-memory ring (shm.ClipRing);
only small messages cross process boundaries (pipes: "task", "slots" one way, "clip slot k", "done", "error" the
other). Every slot has one owner at a time:

    free --grant--> a worker (it may fill it) --"clip" message--> the consumer (a ClipsEvent) --release--> free

The parent grants each worker up to ceil(max_pending_clips / workers) slots; a worker that has used them all waits
for more (the consumer is slower: that is not a hang). A dead worker's granted slots go back to the free list at
once; clips it had already sent stay the consumer's until released (its task's ResetEvent or ErrorEvent says to
drop them). With zero_copy=True a clip's frames are a view of its slot, valid until pool.release(clips); by
default they are copied out and the slot is free again before the event is yielded.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.spawn
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from ..faults import BUG, VIDEO, EnvironmentFault, VideoError, WorkerBug, classify
from . import progress as heartbeat
from .decode import DECODE_BACKENDS, decode_clips, one_line
from .sampling import Clip, Sampling, VideoTask
from .shm import ClipRing

# Extra seconds before a worker that has not yet acknowledged its task counts as hung (a fresh process still
# importing the parent's main module).
_STARTUP_GRACE_S = 30.0


@dataclass(frozen=True)
class ClipsEvent:
    """Clips of `task`, in clip order (zero or more events per attempt)."""

    task: VideoTask
    clips: list[Clip]


@dataclass(frozen=True)
class ResetEvent:
    """A retry of `task` starts: discard every clip received for it so far."""

    task: VideoTask


@dataclass(frozen=True)
class DoneEvent:
    """`task` finished: num_clips clips (views: clips x crops, of the last attempt) were sent; decode_s: seconds its
    worker spent in the decoder (wall clock), decode_cpu_s: CPU seconds of that worker process meanwhile (None when
    decoded in-process); duration_s: the decoder's info["duration_s"] (seconds of video the clips are sampled
    from; None when the decode function does not say)."""

    task: VideoTask
    num_clips: int
    decode_s: float
    backend: str
    decode_cpu_s: float | None = None
    duration_s: float | None = None


@dataclass(frozen=True)
class ErrorEvent:
    """`task` failed for good after `attempts` attempts; discard its clips. stage: "open" | "decode" | "sample"."""

    task: VideoTask
    stage: str
    error: str
    attempts: int


Event = ClipsEvent | ResetEvent | DoneEvent | ErrorEvent
DecodeFn = Callable[..., Iterator[Clip]]


def _task_messages(decode, task, sampling, image_size, backend, threads, alloc=None, cpu_clock=None) -> Iterator[tuple]:
    """Decode one task as messages; never raises.

    ("clip", Clip) for every clip, then ("done", num_clips, decode_s, backend, cpu_s, duration_s), ("error", stage,
    text) for the video's own fault, or ("fault", faults.ENVIRONMENT | faults.BUG, text, traceback) for the rest.
    decode_s counts time inside the decoder only, not time spent by whoever consumes the messages; cpu_s: the
    cpu_clock() seconds over the same spans (None without a clock).
    """
    info: dict = {}
    num_clips, decode_s, cpu_s = 0, 0.0, 0.0
    options = {"threads": threads, "info": info}
    if alloc is not None:
        options["alloc"] = alloc
    clock = cpu_clock or (lambda: 0.0)
    t0, c0 = time.perf_counter(), clock()
    try:
        for clip in decode(task, sampling, image_size, backend, **options):
            decode_s += time.perf_counter() - t0
            cpu_s += clock() - c0
            num_clips += 1
            yield ("clip", clip)
            t0, c0 = time.perf_counter(), clock()
        decode_s += time.perf_counter() - t0
        cpu_s += clock() - c0
        yield ("done", num_clips, decode_s, info.get("backend", backend), cpu_s if cpu_clock else None,
               info.get("duration_s"))
    except VideoError as e:
        yield ("error", e.stage, e.message)
    except Exception as e:  # noqa: BLE001 - classified (faults.py): the video's fault is its error record, the
        kind = classify(e)  # environment's or our bug's ("fault") is the run's: retried, then raised
        if kind == VIDEO:
            yield ("error", "decode", one_line(e))
        else:
            yield ("fault", kind, one_line(e), traceback.format_exc())


def _clip_fields(clip: Clip) -> tuple:
    """A Clip without its frames: what a "clip" message carries next to the slot number."""
    return (clip.clip_index, clip.start_frame, clip.end_frame, clip.start_s, clip.end_s, clip.padded_frames,
            clip.frame_indices, clip.crop_index)


def _worker_main(inbox, outbox, ack, progress, beats, ring, sampling, image_size, threads, decode, nice):
    """Worker process: take ("task", seq, task, backend) and ("slots", [k, ...]) from inbox; put (kind, seq, ...)
    messages on outbox; decode into the slots granted to it.

    ack (shared int) is set to seq before decoding starts: unlike a message it cannot be lost if the decoder kills
    the process a moment later, so the parent knows whether the task had begun. progress counts clips sent (the
    parent's heartbeat and its count of clips still in the pipe); beats counts the decoder's own work (packets
    read while opening and decoding, video.progress), so a long open is not taken for a hang.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which stops the workers
    heartbeat.attach(beats)
    _die_with_parent()
    if nice:
        os.nice(nice)
    for name in ("av", "decord"):  # before the first task's clock starts (already loaded under forkserver)
        try:
            __import__(name)
        except ImportError:
            pass
    credits: deque[int] = deque()  # slots granted by the parent that this worker has not sent back filled
    handed: list[int] = []  # the ones given to the decode function during the current task

    def receive():
        try:
            msg = inbox.recv()
        except (EOFError, OSError):  # the parent is gone
            os._exit(0)
        if msg is None:  # asked to stop
            os._exit(0)
        return msg

    def send(msg) -> None:
        try:
            outbox.send(msg)
        except OSError:  # BrokenPipeError: the parent is gone
            os._exit(0)

    def alloc() -> np.ndarray:
        while not credits:  # every granted slot holds a clip the consumer has not taken: wait for a grant
            msg = receive()
            if msg[0] != "slots":
                raise RuntimeError(f"decode worker: expected a slot grant during a task, got {msg[0]!r}")
            credits.extend(msg[1])
        slot = credits.popleft()
        handed.append(slot)
        return ring.slot(slot)

    while True:
        msg = receive()
        if msg[0] == "slots":
            credits.extend(msg[1])
            continue
        _, seq, task, backend = msg
        ack.value = seq
        handed.clear()
        for message in _task_messages(decode, task, sampling, image_size, backend, threads, alloc, time.process_time):
            if message[0] != "clip":
                send((message[0], seq, *message[1:]))
                continue
            clip = message[1]
            slot = ring.index_of(clip.frames)
            if slot is None or slot not in handed:  # a decode function that made its own array: copy it in
                frames = np.asarray(clip.frames)
                if frames.shape != ring.shape or frames.dtype != np.uint8:
                    error = f"the decode function gave frames {frames.dtype}{frames.shape}, expected uint8{ring.shape}"
                    send(("error", seq, "decode", error))
                    break
                np.copyto(alloc(), frames)
                slot = handed[-1]
            handed.remove(slot)
            progress.value += 1
            send(("clip", seq, slot, _clip_fields(clip)))
        credits.extendleft(handed)  # handed out but never sent (the task failed mid-clip): still this worker's


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when its parent, the forkserver, dies, so that a worker stuck inside a decoder
    does not outlive a main process killed with SIGKILL. The forkserver exits when the last holder of its
    "alive" pipe is gone: the main process, and every forkserver child, which inherits a copy so that it could
    start processes itself. A decode worker never does, so it drops that copy; then the main process's death ends
    the forkserver and, through PR_SET_PDEATHSIG, its workers. Elsewhere a worker notices a dead parent at its
    next pipe read or write."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    alive = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(alive, int) and mp.parent_process() is not None:
        try:
            os.close(alive)
        except OSError:
            pass
        server._forkserver_alive_fd = None
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent was already gone before the call
        os._exit(0)


def _mp_context():
    """forkserver where it exists, else spawn: never fork.

    fork would copy a parent that may hold torch/CUDA state and running threads (unsafe after fork). forkserver
    forks each worker from a small server process that imported only this module, numpy, PyAV and decord, so
    starting or replacing a worker costs a fork, not a fresh interpreter and its imports. Workers run
    vmae_fast.video code only and, unlike other spawn/forkserver children, do not import the parent's main module
    (_preparation_data) unless the decode function lives there: a script without `if __name__ == "__main__":`
    works, and a Ray actor's workers do not import Ray again (its main module is Ray's worker script).
    """
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["vmae_fast.video", "av", "decord"])  # missing ones are skipped
        return ctx
    return mp.get_context("spawn")


# The name of a worker process that needs nothing of the parent's main module: see _preparation_data.
_NO_MAIN = "vmae-decode"


def _preparation_data(name, *args, **kwargs):
    """multiprocessing.spawn.get_preparation_data, which forkserver and spawn call (with the process's name) for what
    a child sets up before it unpickles its target; for our decode workers (name _NO_MAIN) without the parent's main
    module. That module (a user's script, Ray's default_worker.py in an actor, ...) would be run again in every worker
    as __mp_main__: an unguarded script starts the whole job again there and its workers die ("An attempt has been
    made to start a new process before the current process has finished its bootstrapping phase"), and in a Ray
    actor every worker imports Ray (~0.3 s of CPU). Other processes' data is unchanged."""
    data = _spawn_preparation_data(name, *args, **kwargs)
    if name == _NO_MAIN:
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
    return data


_spawn_preparation_data = getattr(mp.spawn.get_preparation_data, "_vmae_fast_original", mp.spawn.get_preparation_data)
_preparation_data._vmae_fast_original = _spawn_preparation_data  # a reload of this module wraps the original again
mp.spawn.get_preparation_data = _preparation_data


class _Worker:
    def __init__(self, ctx, pool: DecodePool):
        inbox, self.to_worker = ctx.Pipe(duplex=False)
        self.from_worker, outbox = ctx.Pipe(duplex=False)
        self.ack = ctx.RawValue("q", 0)  # seq of the job the worker has begun (see _worker_main)
        self.progress = ctx.RawValue("q", 0)  # clips sent by this worker
        self.beats = ctx.RawValue("q", 0)  # packets its decoder read (video.progress.tick)
        self.process = ctx.Process(
            # a decode function of the parent's main module (a script's): only then does the worker import that module
            target=_worker_main, name="vmae-decode-main" if pool._main_decode else _NO_MAIN,
            args=(inbox, outbox, self.ack, self.progress, self.beats, pool._ring, pool.sampling, pool.image_size,
                  pool.threads, pool.decode, pool.nice),
            daemon=True)
        self.process.start()
        # the parent keeps only its ends: a worker's death then ends a read with EOFError instead of a hang
        inbox.close()
        outbox.close()
        self.job = None  # [seq, task, attempt, backend, clips_sent] while it holds a task
        self.credits: set[int] = set()  # slots granted to it and not yet received back in a "clip" message
        self.received = 0  # clips received from it
        self.ack_seen = False
        self.last_progress = time.monotonic()
        self.seen_progress = 0
        self.seen_beats = 0

    @property
    def started(self) -> bool:
        """The worker has begun its current job (read from shared memory; survives the worker's death)."""
        return self.job is not None and self.ack.value == self.job[0]

    def send(self, job) -> None:
        self.job = job
        self.ack_seen = False
        self.last_progress = time.monotonic()
        self.to_worker.send(("task", job[0], job[1], job[3]))

    def stop(self, kill: bool) -> None:
        """Stop the process (SIGKILL when kill or when it does not exit within 2 s) and release its resources."""
        if self.process.is_alive() and not kill:
            try:
                self.to_worker.send(None)
            except OSError:
                pass
            self.process.join(2.0)
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.process.close()
        self.to_worker.close()
        self.from_worker.close()


class DecodePool:
    """Decode many videos in `workers` processes (0: in this process) and stream events.

    with DecodePool(4, Sampling(), 224) as pool:
        for event in pool.run(tasks): ...   # ClipsEvent / ResetEvent / DoneEvent / ErrorEvent

    Each task ends with exactly one DoneEvent or ErrorEvent; videos interleave, a video's clips come in order.
    `workers` may be raised while run() is being iterated (from any thread): new workers start at its next turn.
    timeout_s: a worker holding a task that sends nothing, decodes no clip and reads no packet (video.progress) for
    timeout_s seconds (while it has a free slot to decode into, i.e. is not waiting for the consumer) is killed. A
    worker that hangs, segfaults,
    aborts or exits is replaced and the task retried (ResetEvent first) until max_attempts; retries of
    backend="auto" use PyAV, since decord is what usually crashes. The ErrorEvent of a crash or hang has stage
    "open" when no clip had been sent, else "decode". A worker lost before it took its task (killed while idle)
    costs no attempt. VideoErrors are final at once (the file will not change).
    max_pending_clips: clips the workers may decode ahead of the consumer, over all workers (each worker is granted
    ceil(max_pending_clips / workers) slots), so memory stays bounded when the consumer is slower than the decoders.
    zero_copy: ClipsEvent frames are views of shared memory, valid until `release(clips)` gives their slots back
    (release every clip, including those of a task that is reset or fails); default: frames are private copies.
    slots: clip slots in the shared ring (default: the workers' grants, plus max_pending_clips more for the
    consumer to hold with zero_copy); a zero-copy consumer that holds every slot and waits for more deadlocks.
    threads: decoder threads per worker (default cpu_count // workers, at least 1). nice: added to the workers'
    scheduling niceness (e.g. 10: decoders run on the cycles a busy model leaves; see extract's resource plan).
    decode: the function that turns a task into clips, called as decode(task, sampling, image_size, backend,
    threads=, info=, alloc=) like decode_clips (the default); workers import it by name, so it must be a
    module-level function. alloc() gives a writable uint8 (num_frames, image_size, image_size, 3) slot: frames
    written there travel without a copy (other arrays are copied into a slot).
    """

    def __init__(self, workers: int, sampling: Sampling, image_size: int, timeout_s: float = 60.0,
                 max_attempts: int = 2, backend: str = "auto", max_pending_clips: int | None = None, *,
                 threads: int | None = None, decode: DecodeFn | None = None, zero_copy: bool = False,
                 slots: int | None = None, nice: int = 0):
        if not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an int >= 0, got {workers!r}")
        if backend not in DECODE_BACKENDS:
            raise ValueError(f"backend must be one of {DECODE_BACKENDS}, got {backend!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        self.workers, self.sampling, self.image_size = workers, sampling, image_size
        self.timeout_s, self.max_attempts, self.backend = timeout_s, max_attempts, backend
        self.max_pending_clips = max_pending_clips if max_pending_clips is not None else 4 * max(1, workers)
        if not isinstance(self.max_pending_clips, int) or self.max_pending_clips < 1:
            raise ValueError(f"max_pending_clips must be an int >= 1, got {max_pending_clips!r}")
        self.grant = -(-self.max_pending_clips // max(1, workers))  # slots per worker
        self.zero_copy = zero_copy
        self.slots = slots if slots is not None else max(1, workers * self.grant
                                                         + (self.max_pending_clips if zero_copy else 0))
        if not isinstance(self.slots, int) or self.slots < 1:
            raise ValueError(f"slots must be an int >= 1, got {slots!r}")
        cpus = os.cpu_count() or 1
        self.threads = threads if threads is not None else (0 if workers == 0 else max(1, cpus // workers))
        self.decode = decode if decode is not None else decode_clips
        if not isinstance(nice, int) or not 0 <= nice <= 19:
            raise ValueError(f"nice must be an int in [0, 19], got {nice!r}")
        self.nice = nice
        self._main_decode = False  # the decode function is the parent's main module's: workers import that module
        if workers > 0:
            try:
                self._main_decode = b"__main__" in pickle.dumps(self.decode)
            except Exception as e:  # noqa: BLE001 - lambdas, closures, bound methods of unpicklable objects
                raise TypeError(f"decode must be a module-level function that worker processes can import by name, "
                                f"got {self.decode!r} ({one_line(e)})") from None
        self._ctx = None
        self._pool: list[_Worker] = []
        self._seq = 0
        self._ring: ClipRing | None = None
        self._lock = threading.Lock()  # guards _free and _held: release() may come from another thread
        self._free: list[int] = []  # slots nobody holds
        self._held: set[int] = set()  # slots of clips handed to the consumer (zero_copy) and not yet released
        self._wake: tuple[int, int] | None = None  # a pipe release() writes to, so a waiting run() loop looks again
        self.replaced = 0  # workers replaced after a crash or a timeout (for summaries and tests)
        self._cancelled = False

    def __enter__(self) -> DecodePool:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop every worker (idle ones politely, busy ones with SIGKILL) and unmap the ring; idempotent. Zero-copy
        clips still held keep their memory alive until they are dropped."""
        pool, self._pool = self._pool, []
        for w in pool:
            w.stop(kill=w.job is not None)
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._wake is not None:
            for fd in self._wake:
                os.close(fd)
            self._wake = None
        with self._lock:
            self._free, self._held = [], set()

    def release(self, clips: Iterable[Clip]) -> None:
        """Give the slots of zero-copy clips back; their frames must not be used afterwards. Thread-safe. Clips whose
        frames are not slot views (workers=0, zero_copy=False, after close()) are ignored; a slot released twice is
        a ValueError."""
        ring = self._ring
        if ring is None:
            return
        slots = [i for i in (ring.index_of(c.frames) for c in clips) if i is not None]
        if not slots:
            return
        with self._lock:
            twice = [i for i in slots if i not in self._held]
            if twice or len(set(slots)) != len(slots):
                raise ValueError(f"clip slots {sorted(set(twice)) or slots} released twice (or never handed out)")
            self._held.difference_update(slots)
            self._free.extend(slots)
        if self._wake is not None:
            try:
                os.write(self._wake[1], b"x")
            except (BlockingIOError, OSError):  # already signalled (pipe full) or closing
                pass

    def pending_clips(self) -> int:
        """Decoded clips sent by workers and not yet received by run()."""
        return sum(w.progress.value - w.received for w in self._pool)

    def held_clips(self) -> int:
        """Zero-copy clips handed to the consumer and not yet released."""
        with self._lock:
            return len(self._held)

    def slot_owners(self) -> dict[str, int]:
        """Who holds the ring's slots now: {"free", "workers" (granted, being filled or in a pipe), "consumer"}."""
        with self._lock:
            free, held = len(self._free), len(self._held)
        return {"free": free, "workers": sum(len(w.credits) for w in self._pool), "consumer": held}

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._pool]

    def cancel(self) -> None:
        """Make a run() being iterated in another thread end at its next turn (within a wake-up), even while it
        waits for slots its consumer holds: its busy workers are killed as when it is closed early. Thread-safe."""
        self._cancelled = True
        if self._wake is not None:
            try:
                os.write(self._wake[1], b"x")
            except OSError:
                pass

    def run(self, tasks: Iterable[VideoTask]) -> Iterator[Event]:
        """Decode every task; yields events as they arrive (tasks are pulled lazily from the iterable)."""
        self._cancelled = False
        if self.workers == 0:
            yield from self._run_inline(tasks)
        else:
            yield from self._run_workers(tasks)

    def _run_inline(self, tasks):
        for task in tasks:
            attempt, retry = 1, []
            while True:
                for m in _task_messages(self.decode, task, self.sampling, self.image_size, self.backend,
                                        self.threads):
                    if m[0] == "clip":
                        yield ClipsEvent(task, [m[1]])
                    elif m[0] == "done":
                        yield DoneEvent(task, m[1], m[2], m[3], None, m[5])
                    elif m[0] == "fault":
                        yield from self._fault(task, attempt, self.backend, *m[1:], retries=retry)
                    else:
                        yield ErrorEvent(task, m[1], m[2], attempt)
                if not retry:
                    break
                retry.clear()
                attempt += 1

    def _fault(self, task, attempt: int, backend: str, kind: str, text: str, trace: str, retries):
        """An environment fault (retried until max_attempts, then EnvironmentFault) or our bug (WorkerBug at once,
        with the decoder's traceback) while decoding `task`: never the video's error record."""
        if kind == BUG:
            raise WorkerBug(f"decoding {task.path} failed in our code ({text}): a bug; the decoder's "
                            f"traceback:\n{trace.rstrip()}")
        if attempt < self.max_attempts:
            yield ResetEvent(task)
            retries.append((task, attempt + 1, backend))
            return
        raise EnvironmentFault(f"{text} while decoding {task.path} (attempt {attempt} of {self.max_attempts}): the "
                               f"machine's fault, not the video's")

    # --- workers and slots ---------------------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        if self._ctx is None:
            self._ctx = _mp_context()
        if self._ring is None:
            self._ring = ClipRing(self.slots, (self.sampling.num_frames, self.image_size, self.image_size, 3))
            with self._lock:
                self._free, self._held = list(range(self.slots)), set()
        if self._wake is None:
            self._wake = os.pipe()
            os.set_blocking(self._wake[1], False)
        return _Worker(self._ctx, self)

    def _grow(self) -> None:
        while len(self._pool) < self.workers:
            self._pool.append(self._spawn())

    def _replace(self, i: int) -> _Worker:
        """Kill the worker at i, reclaim the slots granted to it, start a new one there."""
        w = self._pool[i]
        w.job = None
        w.stop(kill=True)
        self._reclaim(w)
        self._pool[i] = self._spawn()
        self.replaced += 1
        return self._pool[i]

    def _reclaim(self, w: _Worker) -> None:
        with self._lock:
            self._free.extend(w.credits)
        w.credits.clear()

    def _grant(self) -> None:
        """Top up every live worker's slots, busy ones first, one slot per worker per turn."""
        want = sorted((w for w in self._pool if len(w.credits) < self.grant), key=lambda w: w.job is None)
        grants: dict[int, list[int]] = {}
        with self._lock:
            while want and self._free:
                for w in list(want):
                    if not self._free:
                        break
                    grants.setdefault(id(w), []).append(self._free.pop())
                    if len(w.credits) + len(grants[id(w)]) >= self.grant:
                        want.remove(w)
        for w in self._pool:
            slots = grants.get(id(w))
            if not slots:
                continue
            try:
                w.to_worker.send(("slots", slots))
                w.credits.update(slots)
            except OSError:  # it died: the death is handled where it is noticed
                with self._lock:
                    self._free.extend(slots)

    def _clip(self, slot: int, fields: tuple) -> Clip:
        """The Clip of a "clip" message: a view of its slot (zero_copy) or a copy, whose slot is free again."""
        view = self._ring.slot(slot)
        with self._lock:
            if self.zero_copy:
                self._held.add(slot)
            else:
                view = view.copy()
                self._free.append(slot)
        return Clip(*fields[:6], view, *fields[6:])

    def _drop_slot(self, slot: int) -> None:
        with self._lock:
            self._free.append(slot)

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake[0], 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    # --- the loop ------------------------------------------------------------------------------------------------
    def _run_workers(self, tasks):
        from multiprocessing.connection import wait

        self._grow()
        os.set_blocking(self._wake[0], False)
        source = iter(tasks)
        retries: deque = deque()
        early_deaths = 0  # consecutive workers lost before they began a task
        exhausted = False
        try:
            while not self._cancelled:
                self._grow()  # `workers` may have been raised meanwhile (extract's CPU plan does)
                for i, w in enumerate(self._pool):  # hand work to idle workers: retries first, then new tasks
                    if w.job is not None:
                        continue
                    if not w.process.is_alive():  # died while idle (e.g. the OOM killer): replace it
                        w = self._replace(i)
                    if retries:
                        task, attempt, backend = retries.popleft()
                    elif not exhausted:
                        task = next(source, None)
                        if task is None:
                            exhausted = True
                            continue
                        attempt, backend = 1, self.backend
                    else:
                        continue
                    self._seq += 1  # unique over the pool's life: stale messages and acks never match
                    try:
                        w.send([self._seq, task, attempt, backend, 0])
                    except OSError:  # it died before receiving the task: no attempt spent, try another worker
                        self._replace(i)
                        retries.appendleft((task, attempt, backend))
                self._grant()
                busy = [w for w in self._pool if w.job is not None]
                if not busy:
                    if exhausted and not retries:
                        return
                    continue
                wait([w.from_worker for w in busy] + [w.process.sentinel for w in busy] + [self._wake[0]],
                     timeout=min(0.5, self.timeout_s / 2))  # the watchdog looks at least twice per timeout
                self._drain_wake()
                for i, w in enumerate(self._pool):
                    if w.job is None:
                        continue
                    yield from self._drain(w, retries)
                    if w.job is None:
                        continue
                    failure, killed = None, False
                    if not w.process.is_alive():
                        yield from self._drain(w, retries)  # messages sent just before it died
                        if w.job is None:
                            continue
                        failure = _describe_exit(w.process.exitcode)
                        killed = w.process.exitcode == -signal.SIGKILL  # not by us: most likely the OOM killer
                    else:
                        now = time.monotonic()
                        if w.started and not w.ack_seen:  # the hang clock starts when the task is taken
                            w.ack_seen, w.last_progress = True, now
                        beats = w.beats.value
                        if w.progress.value != w.seen_progress or beats != w.seen_beats or not w.credits:
                            # a clip sent, a packet read (a long file's open), or waiting for the consumer's slots
                            w.seen_progress, w.seen_beats, w.last_progress = w.progress.value, beats, now
                        elif now - w.last_progress > self.timeout_s + (0 if w.started else _STARTUP_GRACE_S):
                            failure = f"no progress for {self.timeout_s:g} s (decoder hung); worker killed"
                    if failure is None:
                        continue
                    _seq, task, attempt, backend, clips_sent = w.job
                    started = w.started
                    self._replace(i)
                    if not started:  # died before taking the task (e.g. killed while idle): no attempt spent
                        early_deaths += 1
                        if early_deaths > 10 + 2 * self.workers:
                            raise EnvironmentFault(f"decode workers keep dying before starting a task ({failure})")
                        retries.appendleft((task, attempt, backend))
                        continue
                    early_deaths = 0
                    stage = "decode" if clips_sent else "open"
                    if attempt < self.max_attempts:
                        yield ResetEvent(task)
                        retries.append((task, attempt + 1, "pyav" if backend == "auto" else backend))
                    elif killed:  # the environment's fault (memory), not the video's: the run stops
                        raise EnvironmentFault(f"decode worker {failure.removeprefix('decoder process ')} while "
                                               f"decoding {task.path} (attempt {attempt} of {self.max_attempts}): "
                                               "most likely the kernel's OOM killer (dmesg says); give the workers "
                                               "more memory or use fewer --workers")
                    else:
                        yield ErrorEvent(task, stage, failure, attempt)
        finally:
            # Stopped early (consumer closed the generator, an exception, Ctrl-C): busy workers hold unwanted
            # work, kill them (their slots come back); idle ones stay for the next run() until close().
            for i, w in enumerate(self._pool):
                if w.job is not None:
                    w.job = None
                    w.stop(kill=True)
                    self._reclaim(w)
                    self._pool[i] = None
            self._pool = [w for w in self._pool if w is not None]

    def _drain(self, w: _Worker, retries: deque):
        """Turn every message waiting from w into events (stale ones from an earlier job are dropped); an
        environment fault is queued in `retries` or raised, a bug raised (_fault)."""
        while w.job is not None:
            try:
                if not w.from_worker.poll():
                    return
                msg = w.from_worker.recv()
            except (EOFError, OSError):
                return
            w.last_progress = time.monotonic()
            kind, seq = msg[0], msg[1]
            if kind == "clip":
                w.credits.discard(msg[2])
                w.received += 1
            job = w.job
            if seq != job[0]:
                if kind == "clip":
                    self._drop_slot(msg[2])
                continue
            task, attempt = job[1], job[2]
            if kind == "clip":
                job[4] += 1
                yield ClipsEvent(task, [self._clip(msg[2], msg[3])])
            elif kind == "done":
                w.job = None
                yield DoneEvent(task, *msg[2:])
            elif kind == "fault":
                w.job = None
                yield from self._fault(task, attempt, job[3], *msg[2:], retries=retries)
            else:
                w.job = None
                yield ErrorEvent(task, msg[2], msg[3], attempt)


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"decoder process killed by {name}"
    return f"decoder process exited unexpectedly (exit code {exitcode})"
