"""`vmae-fast extract`: videos -> clips -> batched model -> Parquet, resumable, crash-safe and shardable.

Decoding runs in DecodePool worker processes that run ahead of the model; the main thread packs clips from many
videos into model batches (runner.py) and keeps a video's embeddings until the video is complete, then hands the
whole video to the store (a video is committed whole or not at all; see store.py). feed() is that per-shard loop,
the unit an engine runs (ray_engine.py too). Input discovery and shards are in inputs.py, the device in device.py,
the fault rules in faults.py, the shard lock in shard_lock.py, the summary's human lines in cli.py.
`vmae_fast.extract(...)` is `extract` here.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import __version__, store
from .committed import committed_ids
from .device import resolve_device, use_device
from .inputs import Discovery, resolve_shard
from .runner import ModelRunner
from .shard_lock import ShardLock

_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


# --- model --------------------------------------------------------------------------------------------------------
def load_run_model(model: Any, device: torch.device, dtype: torch.dtype, backend: str, config: dict | None = None):
    if isinstance(model, torch.nn.Module):
        return model
    from .checkpoint import load_model

    source = str(model)
    if os.path.exists(os.path.expanduser(source)):
        source = os.path.abspath(os.path.expanduser(source))  # _run.json must name it from any working directory
    try:
        return load_model(source, device=device, dtype=dtype, backend=backend, config=config)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"cannot load model {str(model)!r}: {first}") from e


def parse_keep_spec(keep: Any):
    """(policy for the model or None for all tokens, canonical spec recorded in the output)."""
    if keep is None or keep == "all":
        return None, "all"
    from .tokens import parse_keep

    policy = parse_keep(keep)
    if policy is None:
        return None, "all"
    return policy, policy.spec


def build_run(model, sampling, keep_spec: str, dtype: torch.dtype, device: torch.device, embedding_dtype: str,
              shard: tuple[int, int]) -> dict:
    """The content of _run.json; `config` holds everything that changes the rows and is what config_hash covers."""
    described = model.describe()
    cfg = model.config
    model_part = {key: described.get(key) for key in ("weights_sha256", "config", "preprocessing")}
    if not described.get("weights_sha256"):
        model_part["source"] = described.get("source")  # no checksum: the source is the identity
    config = {
        "model": model_part,
        "sampling": sampling.to_dict(),
        "image_size": int(cfg.image_size),
        "keep": keep_spec,
        "dtype": _DTYPE_NAMES[dtype],
        "device_type": device.type,
        "embedding_dtype": embedding_dtype,
        "embedding_dim": int(cfg.hidden_size),
        "num_labels": int(cfg.num_labels or 0) if _has_head(model) else 0,
    }
    return {
        "format": store.FORMAT,
        "library_version": __version__,
        "config_hash": store.config_hash(config),
        "config": config,
        "model": described,
        "device": str(device),
        "num_shards": shard[1],
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _has_head(model) -> bool:
    return getattr(model, "head", None) is not None


# --- per-video bookkeeping ---------------------------------------------------------------------------------------
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


# --- cores -----------------------------------------------------------------------------------------------------------
class _CorePlan:
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



def decode_pool_options(plan: _CorePlan, workers: int, *, timeout_s: float, backend: str,
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

# --- the run --------------------------------------------------------------------------------------------------------
def _discovery_progress(bar, desc: str, discovery: Discovery) -> None:
    """Discovery's progress on the bar (called from the decode thread): entries read while listing, then the
    bar's total (this shard's videos to do) once the inputs are read."""
    if discovery.finished:
        bar.total = discovery.mine - discovery.skipped + discovery.error_count
        bar.set_description(desc, refresh=False)
    else:
        bar.set_description(f"{desc} (listing: {discovery.entries:,} read, {discovery.mine:,} this shard's)",
                            refresh=False)
    bar.refresh()


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
        with store.deferred_signals():
            self._stop.set()
            cancel = getattr(self._pool, "cancel", None)
            if cancel is not None:  # a pool waiting for slots the consumer holds yields nothing: end its loop
                cancel()
            self._thread.join(timeout_s)


@dataclass
class _Failure:
    error: BaseException


class _Extraction:
    """State of one shard's run: buffered videos, the batch being filled, counters, the store writer."""

    def __init__(self, runner: ModelRunner, writer: store.RunWriter, bar):
        self.runner, self.writer, self.bar = runner, writer, bar
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
        if len(video.rows) != num_clips:
            self._fail(task, "sample", f"decoder reported {num_clips} clips but sent {len(video.rows)}", 1)
        elif num_clips == 0:
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
        for video in list(self.videos.values()):  # cannot happen with a correct pool; never lose a video silently
            self._fail(video.task, "extract", "decoder ended without finishing this video", 1)
        self.writer.flush()

    # internals
    def _drop_queued(self, video_id: str) -> None:
        """Take the video's clips out of the batch being filled and give their slots back."""
        dropped = [entry[2] for entry in self.queue if entry[0] == video_id]
        if dropped:
            self.queue = [entry for entry in self.queue if entry[0] != video_id]
            self.runner.release(dropped)

    def _fail(self, task, stage: str, error: str, attempts: int) -> None:
        self.videos.pop(task.video_id, None)
        self._drop_queued(task.video_id)
        self.writer.add_error(str(task.path), task.video_id, str(stage), str(error), int(attempts))
        self.failed += 1
        self.progress()

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
        self.progress()

    def progress(self) -> None:
        if self.bar is not None:
            elapsed = max(time.perf_counter() - self.started, 1e-9)
            self.bar.update(1)
            self.bar.set_postfix(clips=self.clips, clips_s=f"{self.clips / elapsed:.1f}", errors=self.failed,
                                 refresh=False)


def feed(state: _Extraction, pool, tasks, *, timeout_s: float, plan: _CorePlan | None = None):
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
    from .video import DoneEvent, ErrorEvent, ResetEvent

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


def extract(inputs, out, model: Any = "random:small", *, clip_frames: int | None = None,
            frame_step: int | None = None, fps: float | None = None, clip_stride_s: float | None = None,
            clips_per_video: int | None = None, crops: int | None = None, views: str | None = None,
            keep: str | None = "all", batch_size: int | None = None,
            workers: int | None = None, device: str | None = None, dtype: str | None = None,
            shard: str | tuple[int, int] | None = None, overwrite: bool = False, embedding_dtype: str = "float32",
            timeout_s: float = 120.0, progress: bool | None = None, backend: str = "auto",
            decode_backend: str = "auto", decode_device: str = "cpu", part_rows: int = 100_000,
            commit_interval_s: float = 60.0,
            decode_options: dict | None = None, retry_errors: bool = False, break_lock: bool = False,
            engine: str = "local", ray_address: str | None = None, ray_options: dict | None = None) -> dict:
    """Embed every clip of `inputs` into the Parquet dataset `out`; returns the run summary (see format_summary).

    inputs: video files, folders (recursive) or list files (.txt/.csv/.parquet). model: a source for load_model
    (HF folder, .pth, hub id, "random:<preset>") or an already loaded VideoMAE. Rerunning the same call resumes;
    a different configuration into the same `out` raises ValueError unless overwrite=True.
    crops: 1 (default, the center crop) or 3 (start, center, end of the long side: the papers' multi-view test);
    views: "CLIPSxCROPS", e.g. "5x3", shorthand for clips_per_video=5, crops=3 (not with either, nor with
    clip_stride_s). Every view is a clips row (key video_id, clip_index, crop_index); each video also gets one row
    of OUT/videos (views.py: mean embedding, mean softmax, top labels), committed with its clips.
    decode_device: "cpu", or "cuda"/"cuda:N" to decode with NVDEC through torchcodec in this process (workers=0;
    frames stay on the GPU, then go through the model's host buffer: the GPU-resident batch is owed a GPU run).
    batch_size / workers: None follows the bottleneck (see _CorePlan: 8 clips and one growing, niced worker on
    CPU; 32 clips and cores - 1 workers with CUDA).
    decode_options: extra DecodePool arguments (max_attempts, threads, max_pending_clips, decode, nice); by
    default the pool may hold two model batches of decoded clips, so decoders keep working while the model
    computes.
    retry_errors: redo the videos with error rows this shard wrote (store.retire_errors moves those rows out of
    the dataset first; the new outcome replaces them). break_lock: take the shard's lock even when another host
    holds it (shard_lock.py; a live holder on this host is never overridden).
    Faults (faults.py): a video's own fault is its error row; an environment fault (EnvironmentFault: a worker
    killed by the OOM killer, a file system that fails for a moment) or our bug stops the run, finished videos
    committed first and nothing recorded for the video at fault, so the rerun does it.
    engine: "local" (this process and its decode workers) or "ray" (ray_engine.extract_ray: a Ray Data job on
    the cluster at ray_address, actors per ray_options; same output).
    """
    if engine != "local" or ray_address is not None or ray_options is not None:  # Ray Data: ray_engine.py
        from .ray_engine import extract_ray

        return extract_ray(**locals())
    from .video import DecodePool, Sampling

    t_start = time.perf_counter()
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"--batch-size must be a positive integer, got {batch_size!r}")
    if embedding_dtype not in store.EMBEDDING_DTYPES:
        raise ValueError(f"--embedding-dtype must be one of {store.EMBEDDING_DTYPES}, got {embedding_dtype!r}")
    if frame_step is not None and fps is not None:
        raise ValueError("give --frame-step or --fps, not both")
    if views is not None:
        from .views import parse_views

        given = [name for name, value in (("--clips-per-video", clips_per_video), ("--crops", crops),
                                          ("--clip-stride-s", clip_stride_s)) if value is not None]
        if given:
            raise ValueError(f"--views {views} sets --clips-per-video and --crops: give --views or "
                             f"{' and '.join(given)}, not both")
        clips_per_video, crops = parse_views(views)
    if crops is not None:
        from .video.crop import check_crops

        try:
            check_crops(crops)
        except ValueError:
            raise ValueError(f"--crops must be 1 (the center crop) or 3 (start, center and end of the long side), "
                             f"got {crops!r}") from None
    if clip_stride_s is not None and clips_per_video is not None:
        raise ValueError("give --clip-stride-s or --clips-per-video, not both")
    if timeout_s is not None and timeout_s <= 0:
        raise ValueError(f"--timeout-s must be positive, got {timeout_s}")
    if workers is not None and workers < 0:
        raise ValueError(f"--workers must be >= 0, got {workers}")
    from .video.decode import check_device, decode_clips, require_backend

    require_backend(decode_backend)  # a missing decoder library ends the run in one line, never an error row a video
    check_device(decode_device, decode_backend)  # NVDEC: torchcodec and the GPU must be there
    shard_index, num_shards, shard_source = resolve_shard(shard)
    discovery = Discovery(inputs, (shard_index, num_shards))  # read while the run goes: see inputs.py
    discovery.prime()  # errors among the first entries (all of a short list) stop the run before it writes

    if isinstance(model, torch.nn.Module):
        dev = next(model.parameters()).device
        torch_dtype = next(model.parameters()).dtype
    else:
        from .checkpoint import resolve_dtype  # imports the model and kernels: only when a model is loaded

        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
    use_device(dev)  # once, before any CUDA work: kernels, streams, events and graphs of this rank's GPU
    if decode_device == "cuda" and dev.type == "cuda":
        decode_device = str(dev)  # NVDEC on this rank's GPU too
    plan = _CorePlan(dev.type, os.cpu_count() or 2, workers, batch_size)
    workers, batch_size = plan.workers, plan.batch_size
    if decode_device != "cpu":  # NVDEC: frames stay on the GPU, so this process decodes (nothing to ship)
        workers = 0
    keep_policy, keep_spec = parse_keep_spec(keep)
    net = load_run_model(model, dev, torch_dtype, backend)
    cfg = net.config
    if clip_frames is not None and clip_frames != cfg.num_frames:
        raise ValueError(f"--clip-frames {clip_frames} does not match the model, which takes {cfg.num_frames} frames")
    sampling = Sampling(num_frames=int(cfg.num_frames), frame_step=frame_step, fps=fps, clip_stride_s=clip_stride_s,
                        clips_per_video=clips_per_video, crops=1 if crops is None else int(crops))
    run = build_run(net, sampling, keep_spec, torch_dtype, dev, embedding_dtype, (shard_index, num_shards))
    lock = ShardLock(out, shard_index, break_lock=break_lock).acquire()  # one writer per shard, before OUT is touched
    try:  # from here on the lock is released whatever happens (the run's finally below, or this except)
        out = store.prepare_output(out, run, shard=shard_index, num_shards=num_shards, overwrite=overwrite)
        retried = store.retire_errors(out, shard_index) if retry_errors and not overwrite else 0

        if not overwrite:  # this shard's committed ids (clips or errors), compact: committed.py
            discovery.skip = committed_ids(out, shard_index, num_shards)

        writer = store.RunWriter(out, run, shard_index, part_rows=part_rows, commit_interval_s=commit_interval_s)
        runner = ModelRunner(net, batch_size, keep_policy, dev, int(cfg.num_frames), int(cfg.image_size))
        if progress is None:
            progress = sys.stderr.isatty()
        bar = None
        if progress:
            from tqdm import tqdm

            desc = f"extract {shard_index}/{num_shards}" if num_shards > 1 else "extract"
            bar = tqdm(total=None, unit="video", file=sys.stderr, dynamic_ncols=True, desc=desc)
            discovery.progress = functools.partial(_discovery_progress, bar, desc)  # the total is known at its end
        state = _Extraction(runner, writer, bar)

        def record_discovery_errors() -> None:  # unreadable folders of this shard, met during the walk
            for error in discovery.take_errors():
                state.writer.add_error(**error)
                state.failed += 1
                state.progress()

        threads = torch.get_num_threads()
        if plan.model_threads and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(plan.model_threads)
    except BaseException:
        lock.release()
        raise
    try:
        decode = functools.partial(decode_clips, device=decode_device) if decode_device != "cpu" else None
        pool_options = decode_pool_options(plan, workers, timeout_s=timeout_s, backend=decode_backend,
                                           decode_options=decode_options, decode=decode)
        with DecodePool(workers, sampling, int(cfg.image_size), **pool_options) as pool:
            runner.release = pool.release
            # the ring bounds the decoded clips in memory; the queue only hands events over (+ non-clip events)
            for _ in feed(state, pool, discovery, timeout_s=timeout_s, plan=plan):
                record_discovery_errors()
                writer.maybe_flush()
        record_discovery_errors()
        state.finish()
    except BaseException:
        # keep what is complete: those videos need not be redone after Ctrl-C or a decoder crash; the original
        # error matters more than one raised by this flush
        with contextlib.suppress(Exception):
            writer.flush()
        raise
    finally:
        lock.release()
        torch.set_num_threads(threads)
        if bar is not None:
            bar.close()

    wall = time.perf_counter() - t_start
    return {
        "out": str(out),
        "shard": f"{shard_index}/{num_shards}",
        "shard_source": shard_source,
        "model": run["model"].get("source"),
        "device": str(dev),
        "dtype": _DTYPE_NAMES[torch_dtype],
        "keep": keep_spec,
        "workers": pool.workers if workers else 0,
        "model_threads": torch.get_num_threads() if dev.type == "cpu" else None,
        "batch_size": batch_size,
        "videos": discovery.mine + discovery.error_count,
        "videos_ok": state.ok,
        "videos_failed": state.failed,
        "videos_skipped": discovery.skipped,
        "errors_retried": retried,  # error rows moved out by --retry-errors (their videos were redone)
        "videos_other_shards": discovery.entries - discovery.mine,
        "discovery_s": discovery.seconds,  # reading the inputs, hashing and checking (while the run went on)
        "first_clip_s": None if state.first_clip_at is None else state.first_clip_at - t_start,  # from the start
        "clips": state.clips,
        "video_seconds": state.video_seconds,
        "wall_s": wall,
        "compute_s": runner.compute_s,
        "gather_s": runner.gather_s,
        "batches": runner.count,
        "padded_rows": runner.padded_rows,
        "oom_halvings": [list(h) for h in runner.oom_halvings],  # CUDA out of memory: [rows, batch size after]
        "wait_s": state.wait_s,
        "write_s": writer.write_s,
        "decode_s": state.decode_s,
        "decode_cpu_s": state.decode_cpu_s if workers else None,
        "clips_per_s": state.clips / wall if wall > 0 else 0.0,
        "parts_written": writer.clips.files_written + writer.errors.files_written,
    }
