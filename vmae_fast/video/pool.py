"""DecodePool: decode_clips in worker processes, so a decoder that hangs, segfaults or aborts costs one video, not
the run. Workers are replaced, tasks retried (PyAV after decord), events streamed to the consumer."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .decode import BACKENDS, decode_clips, one_line
from .errors import VideoError
from .sampling import Clip, Sampling, VideoTask

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
    """`task` finished: num_clips clips (of the last attempt) were sent; decode_s: seconds its worker spent."""

    task: VideoTask
    num_clips: int
    decode_s: float
    backend: str


@dataclass(frozen=True)
class ErrorEvent:
    """`task` failed for good after `attempts` attempts; discard its clips. stage: "open" | "decode" | "sample"."""

    task: VideoTask
    stage: str
    error: str
    attempts: int


Event = ClipsEvent | ResetEvent | DoneEvent | ErrorEvent

# Test hooks (honored only by DecodePool(..., test_hooks=True) workers, never in-process): a task whose file name
# contains one of these markers misbehaves after sending its first clip; with "-once" only on its first attempt.
TEST_HOOK_MARKERS = ("vmae-test-segfault", "vmae-test-abort", "vmae-test-hang", "vmae-test-exit")


def _run_test_hook(path: str, attempt: int) -> None:
    name = Path(path).name
    for marker in TEST_HOOK_MARKERS:
        if marker in name and ("-once" not in name or attempt == 1):
            time.sleep(0.2)  # let the queue's feeder thread flush the clip already sent
            if marker.endswith("segfault"):
                os.kill(os.getpid(), signal.SIGSEGV)
            elif marker.endswith("abort"):
                os.abort()
            elif marker.endswith("exit"):
                os._exit(3)
            else:
                time.sleep(3600)


def _task_messages(task, sampling, image_size, backend, threads) -> Iterator[tuple]:
    """Decode one task as messages; never raises for a bad video.

    ("clip", Clip) for every clip, then ("done", num_clips, decode_s, backend) or ("error", stage, text).
    decode_s counts time inside the decoder only, not time spent by whoever consumes the messages.
    """
    info: dict = {}
    num_clips, decode_s = 0, 0.0
    t0 = time.perf_counter()
    try:
        for clip in decode_clips(task, sampling, image_size, backend, threads=threads, info=info):
            decode_s += time.perf_counter() - t0
            num_clips += 1
            yield ("clip", clip)
            t0 = time.perf_counter()
        decode_s += time.perf_counter() - t0
        yield ("done", num_clips, decode_s, info.get("backend", backend))
    except VideoError as e:
        yield ("error", e.stage, e.message)
    except Exception as e:  # noqa: BLE001 - any failure of one video becomes its error record, never the run's
        yield ("error", "decode", one_line(e))


def _worker_main(task_conn, out_queue, ack, progress, sampling, image_size, threads, test_hooks):
    """Worker process: receive (seq, task, attempt, backend) on task_conn, put (seq, message) on out_queue.

    ack (shared int) is set to seq before decoding starts: unlike a queued message it cannot be lost if the
    decoder kills the process a moment later, so the parent knows whether the task had begun.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which stops the workers
    for name in ("av", "decord"):  # before the first task's clock starts (already loaded under forkserver)
        try:
            __import__(name)
        except ImportError:
            pass
    out_queue.cancel_join_thread()  # never block exit on unread messages (the parent may be gone)
    parent = mp.parent_process()

    def put(item):
        while True:
            try:
                out_queue.put(item, timeout=1.0)
                return
            except queue.Full:  # the consumer is slow: wait, unless it is gone
                if parent is not None and not parent.is_alive():
                    os._exit(0)

    while True:
        try:
            msg = task_conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        seq, task, attempt, backend = msg
        ack.value = seq
        for message in _task_messages(task, sampling, image_size, backend, threads):
            if message[0] == "clip":
                progress.value += 1
            put((seq, message))
            if test_hooks and message[0] == "clip":
                _run_test_hook(task.path, attempt)


def _mp_context():
    """forkserver where it exists, else spawn: never fork.

    fork would copy a parent that may hold torch/CUDA state and running threads (unsafe after fork). forkserver
    forks each worker from a small server process that imported only this module, numpy, PyAV and decord, so
    starting or replacing a worker costs a fork, not a fresh interpreter and its imports. Workers run
    vmae_fast.video code only; like every spawn/forkserver child they import the parent's main module (guard
    scripts with `if __name__ == "__main__":`), so torch reaches them only if that module imports it at top level.
    """
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["vmae_fast.video", "av", "decord"])  # missing ones are skipped
        return ctx
    return mp.get_context("spawn")


class _Worker:
    def __init__(self, ctx, pool: DecodePool, queue_size: int):
        self.task_conn, child_conn = ctx.Pipe(duplex=False)[::-1]
        self.queue = ctx.Queue(maxsize=queue_size)
        self.ack = ctx.RawValue("q", 0)  # seq of the job the worker has begun (see _worker_main)
        self.progress = ctx.RawValue("q", 0)  # clips decoded by this worker, read by the parent as a heartbeat
        self.process = ctx.Process(
            target=_worker_main, name="vmae-decode",
            args=(child_conn, self.queue, self.ack, self.progress, pool.sampling, pool.image_size, pool.threads,
                  pool.test_hooks),
            daemon=True)
        self.process.start()
        child_conn.close()
        # The parent only reads: closing its copy of the write end lets a read of a message cut short by the
        # worker's death end with EOFError instead of blocking forever.
        self.queue._writer.close()
        self.job = None  # [seq, task, attempt, backend, clips_sent] while it holds a task
        self.ack_seen = False
        self.last_progress = time.monotonic()
        self.seen_progress = 0

    @property
    def started(self) -> bool:
        """The worker has begun its current job (read from shared memory; survives the worker's death)."""
        return self.job is not None and self.ack.value == self.job[0]

    def send(self, job) -> None:
        self.job = job
        self.ack_seen = False
        self.last_progress = time.monotonic()
        self.task_conn.send((job[0], job[1], job[2], job[3]))

    def stop(self, kill: bool) -> None:
        """Stop the process (SIGKILL when kill or when it does not exit within 2 s) and release its resources."""
        if self.process.is_alive() and not kill:
            try:
                self.task_conn.send(None)
            except OSError:
                pass
            self.process.join(2.0)
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.process.close()
        self.task_conn.close()
        self.queue.close()
        self.queue.join_thread()


class DecodePool:
    """Decode many videos in `workers` processes (0: in this process) and stream events.

    with DecodePool(4, Sampling(), 224) as pool:
        for event in pool.run(tasks): ...   # ClipsEvent / ResetEvent / DoneEvent / ErrorEvent

    Each task ends with exactly one DoneEvent or ErrorEvent; videos interleave, a video's clips come in order.
    timeout_s: a worker holding a task that sends nothing and decodes no clip for timeout_s seconds (while its
    output queue is empty, i.e. not waiting for the consumer) is killed. A worker that hangs, segfaults, aborts or
    exits is replaced and the task retried (ResetEvent first) until max_attempts; retries of backend="auto" use
    PyAV, since decord is what usually crashes. The ErrorEvent of a crash or hang has stage "open" when no clip
    had been sent, else "decode". A worker lost before it took its task (killed while idle) costs no attempt.
    VideoErrors are final at once (the file will not change).
    max_pending_clips: decoded clips waiting for the consumer, over all workers (each worker's queue holds
    ceil(max_pending_clips / workers)), so memory stays bounded when the consumer is slower than the decoders.
    threads: decoder threads per worker (default cpu_count // workers, at least 1).
    test_hooks: for tests only: honor TEST_HOOK_MARKERS in file names (see _run_test_hook).
    """

    def __init__(self, workers: int, sampling: Sampling, image_size: int, timeout_s: float = 60.0,
                 max_attempts: int = 2, backend: str = "auto", max_pending_clips: int | None = None, *,
                 threads: int | None = None, test_hooks: bool = False):
        if not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an int >= 0, got {workers!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        self.workers, self.sampling, self.image_size = workers, sampling, image_size
        self.timeout_s, self.max_attempts, self.backend = timeout_s, max_attempts, backend
        self.max_pending_clips = max_pending_clips if max_pending_clips is not None else 4 * max(1, workers)
        if self.max_pending_clips < 1:
            raise ValueError(f"max_pending_clips must be >= 1, got {max_pending_clips!r}")
        cpus = os.cpu_count() or 1
        self.threads = threads if threads is not None else (0 if workers == 0 else max(1, cpus // workers))
        self.test_hooks = test_hooks
        self._ctx = None
        self._pool: list[_Worker] = []
        self._seq = 0
        self.replaced = 0  # workers replaced after a crash or a timeout (for summaries and tests)

    def __enter__(self) -> DecodePool:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop every worker (idle ones politely, busy ones with SIGKILL); idempotent."""
        pool, self._pool = self._pool, []
        for w in pool:
            w.stop(kill=w.job is not None)

    def pending_clips(self) -> int:
        """Decoded clips sitting in worker queues, not yet received by run()."""
        total = 0
        for w in self._pool:
            try:
                total += w.queue.qsize()
            except NotImplementedError:  # macOS has no sem_getvalue
                return -1
        return total

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._pool]

    def run(self, tasks: Iterable[VideoTask]) -> Iterator[Event]:
        """Decode every task; yields events as they arrive (tasks are pulled lazily from the iterable)."""
        if self.workers == 0:
            yield from self._run_inline(tasks)
        else:
            yield from self._run_workers(tasks)

    def _run_inline(self, tasks):
        for task in tasks:
            for m in _task_messages(task, self.sampling, self.image_size, self.backend, self.threads):
                if m[0] == "clip":
                    yield ClipsEvent(task, [m[1]])
                elif m[0] == "done":
                    yield DoneEvent(task, m[1], m[2], m[3])
                else:
                    yield ErrorEvent(task, m[1], m[2], 1)

    def _spawn(self) -> _Worker:
        if self._ctx is None:
            self._ctx = _mp_context()
        return _Worker(self._ctx, self, max(1, -(-self.max_pending_clips // self.workers)))

    def _run_workers(self, tasks):
        from multiprocessing.connection import wait

        while len(self._pool) < self.workers:
            self._pool.append(self._spawn())
        source = iter(tasks)
        retries: deque = deque()
        early_deaths = 0  # consecutive workers lost before they began a task
        exhausted = False
        try:
            while True:
                for i, w in enumerate(self._pool):  # hand work to idle workers: retries first, then new tasks
                    if w.job is not None:
                        continue
                    if not w.process.is_alive():  # died while idle (e.g. the OOM killer): replace it
                        w.stop(kill=True)
                        w = self._pool[i] = self._spawn()
                        self.replaced += 1
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
                        w.job = None
                        w.stop(kill=True)
                        self._pool[i] = self._spawn()
                        self.replaced += 1
                        retries.appendleft((task, attempt, backend))
                busy = [w for w in self._pool if w.job is not None]
                if not busy:
                    if exhausted and not retries:
                        return
                    continue
                # mp.Queue has no public waitable handle; its reader Connection is one (stable since 3.4)
                wait([w.queue._reader for w in busy] + [w.process.sentinel for w in busy], timeout=0.5)
                for i, w in enumerate(self._pool):
                    if w.job is None:
                        continue
                    yield from self._drain(w)
                    if w.job is None:
                        continue
                    failure = None
                    if not w.process.is_alive():
                        yield from self._drain(w)  # messages sent just before it died
                        if w.job is None:
                            continue
                        failure = _describe_exit(w.process.exitcode)
                    else:
                        now = time.monotonic()
                        if w.started and not w.ack_seen:  # the hang clock starts when the task is taken
                            w.ack_seen, w.last_progress = True, now
                        if w.progress.value != w.seen_progress or not w.queue.empty():
                            w.seen_progress, w.last_progress = w.progress.value, now
                        elif now - w.last_progress > self.timeout_s + (0 if w.started else _STARTUP_GRACE_S):
                            failure = f"no progress for {self.timeout_s:g} s (decoder hung); worker killed"
                    if failure is None:
                        continue
                    _seq, task, attempt, backend, clips_sent = w.job
                    started = w.started
                    w.job = None
                    w.stop(kill=True)
                    self._pool[i] = self._spawn()
                    self.replaced += 1
                    if not started:  # died before taking the task (e.g. killed while idle): no attempt spent
                        early_deaths += 1
                        if early_deaths > 10 + 2 * self.workers:
                            raise RuntimeError(f"decode workers keep dying before starting a task ({failure})")
                        retries.appendleft((task, attempt, backend))
                        continue
                    early_deaths = 0
                    stage = "decode" if clips_sent else "open"
                    if attempt < self.max_attempts:
                        yield ResetEvent(task)
                        retries.append((task, attempt + 1, "pyav" if backend == "auto" else backend))
                    else:
                        yield ErrorEvent(task, stage, failure, attempt)
        finally:
            # Stopped early (consumer closed the generator, an exception, Ctrl-C): busy workers hold unwanted
            # work, kill them; idle ones stay for the next run() until close().
            for i, w in enumerate(self._pool):
                if w.job is not None:
                    w.job = None
                    w.stop(kill=True)
                    self._pool[i] = None
            self._pool = [w for w in self._pool if w is not None]

    def _drain(self, w: _Worker):
        """Turn every message waiting in w's queue into events (stale ones from an earlier job are dropped)."""
        while w.job is not None:
            try:
                seq, msg = w.queue.get_nowait()
            except queue.Empty:
                return
            except (EOFError, OSError):
                return
            w.last_progress = time.monotonic()
            job = w.job
            if seq != job[0]:
                continue
            task, attempt = job[1], job[2]
            kind = msg[0]
            if kind == "clip":
                job[4] += 1
                yield ClipsEvent(task, [msg[1]])
            elif kind == "done":
                w.job = None
                yield DoneEvent(task, msg[1], msg[2], msg[3])
            else:
                w.job = None
                yield ErrorEvent(task, msg[1], msg[2], attempt)


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"decoder process killed by {name}"
    return f"decoder process exited unexpectedly (exit code {exitcode})"
