"""The engine-independent core of extraction: one shard's loop, decode events in, whole videos out.

Decoding runs in DecodePool worker processes that run ahead of the model; feed() hands each decode event to an
Extraction, which packs clips from many videos into model batches (runner.py) and keeps a video's embeddings until
the video is complete, then hands the whole video to the store's writer (a video is committed whole or not at all;
see store/layout.py). CorePlan decides who gets the cores. Both engines (local_engine.py, ray_engine.py) run this
loop; neither reaches into the other.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..faults import InternalError
from ..store import RunWriter, deferred_signals
from ..video import DoneEvent, ErrorEvent, ResetEvent
from .runner import ModelRunner


@dataclass
class _Video:
    """A video being decoded: its views' row fields and, once embedded, their results, keyed by the row key's
    (clip_index, crop_index): the views of one clip never overwrite each other."""

    task: Any
    generation: int = 0
    num_clips: int | None = None  # views (clips x crops) the decoder sent, from its DoneEvent
    duration_s: float | None = None  # the decoder's (DoneEvent.duration_s), for the video row
    rows: dict = field(default_factory=dict)  # (clip, crop) -> (start_frame, end_frame, start_s, end_s, padded)
    results: dict = field(default_factory=dict)  # (clip, crop) -> (embedding (D,), logits (C,) | None, num_tokens)


def _view_key(clip) -> tuple[int, int]:
    return (int(clip.clip_index), int(clip.crop_index))


class CorePlan:
    """Who gets the cores, and the defaults that follow from it.

    CUDA: the GPU is rarely the bottleneck, decoding is: every core but one decodes (at most 16 workers), batches
    of 32. CPU: the model is the bottleneck (a ViT-S 16x224 clip takes ~0.6 s of two cores, decoding it ~0.08 s of
    one): the model runs with every core and the decode workers at niceness 10, so they take the cycles the model
    leaves and the OS scheduler keeps re-balancing; one decoder thread per worker; batches of 8 (a CPU gains
    nothing from larger ones, and the first batch waits for fewer decoded clips). With the default --workers the
    pool starts with one worker and grows (up to the core count) while the model spends more than a quarter of
    its time waiting for clips: the decode/model ratio, measured. An explicit --workers is kept as given.
    """

    WAIT_SHARE = 0.25  # model waiting for clips above this share of a window: add a decode worker
    WINDOW = 2  # batches per measurement window

    def __init__(self, device_type: str, cores: int, workers: int | None, batch_size: int | None):
        self.cpu = device_type == "cpu"
        self.grow = workers is None and self.cpu
        if workers is None:
            workers = 1 if self.cpu else max(1, min(cores - 1, 16))
        self.workers, self.max_workers = workers, (max(workers, cores) if self.grow else workers)
        self.batch_size = batch_size if batch_size is not None else (8 if self.cpu else 32)
        self.model_threads = cores if self.cpu and workers > 0 else None
        self.pool_options = {"threads": 1, "nice": 10} if self.cpu and workers > 0 else {}
        self._mark: tuple[int, float, float] | None = None  # (batches, wait_s, compute_s) at the window's start
        self.added: list[int] = []  # batch counts at which a worker was added

    def update(self, pool, batches: int, wait_s: float, compute_s: float) -> None:
        """Called after each clip event: at the end of every window, add a worker if the model waited too long."""
        if not self.grow or pool.workers >= self.max_workers or batches < 1:
            return
        if self._mark is None:  # the first batch waited for the pipeline to fill: measure from its end
            self._mark = (batches, wait_s, compute_s)
            return
        start, wait0, compute0 = self._mark
        if batches - start < self.WINDOW:
            return
        waited, computed = wait_s - wait0, compute_s - compute0
        if waited > self.WAIT_SHARE * (waited + computed):
            pool.workers += 1
            self.added.append(batches)
        self._mark = (batches, wait_s, compute_s)


def decode_pool_options(plan: CorePlan, workers: int, *, timeout_s: float, backend: str,
                        decode_options: dict | None = None, decode=None) -> dict:
    """DecodePool arguments for a run with this plan: the pool may hold two model batches of decoded clips (so
    decoders keep working while the model computes); with workers, frames stay in the pool's shared slots until
    the runner has gathered them. decode_options (the caller's extra arguments) win over the defaults."""
    options = {"timeout_s": timeout_s, "backend": backend,
               "max_pending_clips": max(2 * plan.batch_size, 4 * max(plan.max_workers, 1)), **plan.pool_options}
    if decode is not None:
        options["decode"] = decode
    options.update(decode_options or {})
    if workers > 0:
        options.setdefault("zero_copy", True)
        options.setdefault("slots", options["max_pending_clips"] + plan.batch_size)
    return options


class _Prefetch:
    """Iterates DecodePool.run in a background thread and hands its events over through a bounded queue.

    The pool gives a worker its next video only while someone iterates it; iterated from the main thread, a worker
    that finished a video would sit idle while the model computes. Here the thread keeps workers busy; the queue
    bound (plus the pool's own) keeps decoded clips in memory bounded. Only this thread touches the generator.
    """

    _END = object()

    def __init__(self, pool, tasks, max_events: int):
        self._stop = threading.Event()
        self._pool = pool
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, max_events))
        self._thread = threading.Thread(target=self._run, args=(pool, tasks), daemon=True, name="vmae-fast-decode")
        self._thread.start()

    def _tasks(self, tasks):
        for task in tasks:
            if self._stop.is_set():  # no new videos once the consumer has stopped
                return
            yield task

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, pool, tasks) -> None:
        events = pool.run(self._tasks(tasks))
        try:
            for event in events:
                if not self._put(event):
                    break
            else:
                self._put(self._END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer and raised there
            self._put(_Failure(e))
        finally:
            events.close()  # a generator stopped early kills its busy workers

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def stop(self, timeout_s: float) -> None:
        """Stop the thread and wait for it (its pool is closed next: never while the thread still uses it, so a
        second Ctrl-C waits until this returns)."""
        with deferred_signals():
            self._stop.set()
            cancel = getattr(self._pool, "cancel", None)
            if cancel is not None:  # a pool waiting for slots the consumer holds yields nothing: end its loop
                cancel()
            self._thread.join(timeout_s)


@dataclass
class _Failure:
    error: BaseException


class Extraction:
    """State of one shard's run: buffered videos, the batch being filled, counters, the store writer.

    progress: called as progress(extraction) each time a video is finished (committed to the writer, or its error
    row), from the thread that feeds the events; its counters (ok, failed, clips, started, ...) say where the run
    is. The local engine moves its tqdm bar there; the Ray engine reports the counters instead.
    """

    def __init__(self, runner: ModelRunner, writer: RunWriter,
                 progress: Callable[[Extraction], None] | None = None):
        self.runner, self.writer, self.progress = runner, writer, progress
        self.videos: dict[str, _Video] = {}
        self.queue: list = []  # (video_id, generation, clip) waiting for a batch
        self.ok = self.failed = self.clips = 0
        self.decode_s = 0.0
        self.decode_cpu_s: float | None = 0.0  # None once a video was decoded in-process (no separate CPU clock)
        self.video_seconds = 0.0
        self.started = time.perf_counter()
        self.wait_s = 0.0  # waiting for the next decode event (feed)
        self.first_clip_at: float | None = None  # perf_counter() of the first decoded clip

    # events from the DecodePool
    def on_clips(self, task, clips) -> None:
        video = self.videos.setdefault(task.video_id, _Video(task))
        for clip in clips:
            video.rows[_view_key(clip)] = (clip.start_frame, clip.end_frame, clip.start_s, clip.end_s,
                                           clip.padded_frames)
            self.queue.append((task.video_id, video.generation, clip))
        while len(self.queue) >= self.runner.batch_size:
            batch, self.queue = self.queue[: self.runner.batch_size], self.queue[self.runner.batch_size:]
            self._take(self.runner.submit(batch))

    def on_reset(self, task) -> None:
        video = self.videos.get(task.video_id)
        if video is not None:  # a retry starts: results of the earlier attempt (queued or in flight) are void
            video.generation += 1
            video.rows.clear()
            video.results.clear()
        self._drop_queued(task.video_id)

    def on_done(self, task, num_clips: int, decode_s: float, decode_cpu_s: float | None = None,
                duration_s: float | None = None) -> None:
        self.decode_s += decode_s
        self.decode_cpu_s = None if decode_cpu_s is None or self.decode_cpu_s is None else \
            self.decode_cpu_s + decode_cpu_s
        video = self.videos.setdefault(task.video_id, _Video(task))
        video.num_clips, video.duration_s = num_clips, duration_s
        if len(video.rows) != num_clips:  # the pool and this loop disagree: ours, never the video's error row
            raise InternalError(f"the decoder reported {num_clips} clips (views) of {task.video_id!r} but sent "
                                f"{len(video.rows)}; nothing is recorded for this video")
        if num_clips == 0:
            self._fail(task, "sample", "no clips: the video (or its time range) holds no decodable frames", 1)
        else:
            self._maybe_commit(video)

    def on_error(self, task, stage: str, error: str, attempts: int) -> None:
        self._fail(task, stage, error, attempts)

    def finish(self) -> None:
        if self.queue:
            batch, self.queue = self.queue, []
            self._take(self.runner.submit(batch))
        self._take(self.runner.collect())
        if self.videos:  # cannot happen with a correct pool: ours, never lost silently nor recorded as the videos'
            unfinished = sorted(self.videos)
            raise InternalError(f"the decoder ended without finishing {len(unfinished)} video(s) "
                                f"({', '.join(map(repr, unfinished[:3]))}); nothing is recorded for them")
        self.writer.flush()

    # internals
    def _drop_queued(self, video_id: str) -> None:
        """Take the video's clips out of the batch being filled and give their slots back."""
        dropped = [entry[2] for entry in self.queue if entry[0] == video_id]
        if dropped:
            self.queue = [entry for entry in self.queue if entry[0] != video_id]
            self.runner.release(dropped)

    def add_error(self, path: str, video_id: str, stage: str, error: str, attempts: int) -> None:
        """Record a video's error row (its own fault: a decode error, or one met while discovering the inputs)."""
        self.writer.add_error(str(path), video_id, str(stage), str(error), int(attempts))
        self.failed += 1
        self._finished()

    def _fail(self, task, stage: str, error: str, attempts: int) -> None:
        self.videos.pop(task.video_id, None)
        self._drop_queued(task.video_id)
        self.add_error(str(task.path), task.video_id, stage, error, attempts)

    def _take(self, finished: list) -> None:
        for entries, embeddings, logits, num_tokens in finished:
            touched = {}
            for i, (video_id, generation, clip) in enumerate(entries):
                video = self.videos.get(video_id)
                if video is None or video.generation != generation:
                    continue  # the video failed or restarted after this clip was queued
                video.results[_view_key(clip)] = (embeddings[i], None if logits is None else logits[i],
                                                  int(num_tokens[i]))
                touched[video_id] = video
            for video in touched.values():
                self._maybe_commit(video)

    def _maybe_commit(self, video: _Video) -> None:
        if video.num_clips is None or len(video.results) < video.num_clips:
            return
        task = video.task
        order = sorted(video.results)  # (clip_index, crop_index): a clip's views side by side
        results = [video.results[key] for key in order]
        rows = [video.rows[key] for key in order]
        self.writer.add_video({
            "video_id": [task.video_id] * len(order),
            "path": [str(task.path)] * len(order),
            "clip_index": [key[0] for key in order],
            "crop_index": [key[1] for key in order],
            "start_frame": [r[0] for r in rows],
            "end_frame": [r[1] for r in rows],
            "start_s": [float(r[2]) for r in rows],
            "end_s": [float(r[3]) for r in rows],
            "padded_frames": [r[4] for r in rows],
            "num_tokens": [r[2] for r in results],
            "embedding": np.stack([r[0] for r in results]),
            "logits": np.stack([r[1] for r in results]) if results[0][1] is not None else None,
        }, duration_s=video.duration_s)
        del self.videos[task.video_id]
        self.ok += 1
        self.clips += len(order)
        self.video_seconds += max(r[3] for r in rows) - min(r[2] for r in rows)
        self._finished()

    def _finished(self) -> None:
        if self.progress is not None:
            self.progress(self)


def feed(state: Extraction, pool, tasks, *, timeout_s: float, plan: CorePlan | None = None):
    """The per-shard loop, the unit every engine runs: decode `tasks` (an iterable of VideoTasks) in `pool` (a
    DecodePool, workers running ahead in a _Prefetch thread) and hand each event to `state`: clips to the batching
    runner, a finished video to its writer (committed whole), a failed one as its error row. A generator that
    yields each event once handled, so that the caller writes (writer.maybe_flush), reports or records discovery
    errors between events; plan, if given, may add decode workers. state.wait_s counts the time spent waiting for
    events. Closing it early (an exception, Ctrl-C) stops the decoders within a second; state.finish() after it
    runs the last batch and writes what is buffered.

        with DecodePool(...) as pool:
            runner.release = pool.release
            for _ in feed(state, pool, tasks, timeout_s=timeout_s):
                writer.maybe_flush()
        state.finish()
    """
    prefetch = _Prefetch(pool, tasks, max_events=pool.slots + 16 if pool.workers else pool.max_pending_clips)
    events = iter(prefetch)
    try:
        while True:
            t0 = time.perf_counter()
            event = next(events, None)
            state.wait_s += time.perf_counter() - t0
            if event is None:
                return
            if isinstance(event, DoneEvent):
                state.on_done(event.task, event.num_clips, event.decode_s, event.decode_cpu_s, event.duration_s)
            elif isinstance(event, ErrorEvent):
                state.on_error(event.task, event.stage, event.error, event.attempts)
            elif isinstance(event, ResetEvent):
                state.on_reset(event.task)
            else:
                if state.first_clip_at is None:
                    state.first_clip_at = time.perf_counter()
                state.on_clips(event.task, event.clips)
                if plan is not None:
                    plan.update(pool, state.runner.count, state.wait_s, state.runner.compute_s)
            yield event
    finally:
        prefetch.stop(timeout_s=timeout_s + 5)  # a hung decoder is killed after timeout_s at the latest
