"""`vmae-fast extract`: videos -> clips -> batched model -> Parquet, resumable, crash-safe and shardable.

Decoding runs in DecodePool worker processes that run ahead of the model; the main thread packs clips from many
videos into fixed-size model batches and keeps a video's embeddings until the video is complete, then hands the whole
video to the store (a video is committed whole or not at all; see store.py). On CUDA the uint8 frames go through
pinned memory with non-blocking copies and the readback of batch k overlaps the compute of batch k+1.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import functools
import hashlib
import os
import queue
import sys
import threading
import time
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__, store

LIST_EXTENSIONS = (".txt", ".csv", ".parquet")
_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


# --- inputs -----------------------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    """What the INPUT arguments name: video tasks in a stable order, plus entries that failed at discovery."""

    tasks: list  # list[video.VideoTask]
    errors: list[dict] = field(default_factory=list)  # {path, video_id, stage, error, attempts}


def _video_id(path: str) -> str:
    return Path(path).as_posix().removeprefix("./")


def _walk(root: Path, extensions: set[str], inputs: Inputs) -> list[tuple[str, str]]:
    """(path, video_id) of the videos under `root`, recursively; unreadable folders become error rows."""
    found: list[tuple[str, str]] = []
    seen_dirs: set[tuple[int, int]] = set()

    def onerror(e: OSError) -> None:
        rel = os.path.relpath(e.filename, root) if e.filename else "."
        inputs.errors.append({"path": os.path.abspath(e.filename or root), "video_id": _video_id(rel), "stage": "discover",
                                  "error": f"{type(e).__name__}: {e.strerror or e}", "attempts": 1})

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=True):
        try:  # a symlinked folder can lead back up the tree: visit every real folder once
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in seen_dirs:
                dirnames[:] = []
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
        except OSError:
            pass
        # a folder named like a video (x.mp4/) is an entry the user expects to see: it becomes an error row
        named_like_videos = [d for d in dirnames if os.path.splitext(d)[1].lower() in extensions]
        dirnames[:] = sorted(d for d in dirnames if d not in named_like_videos)
        for name in sorted(filenames + named_like_videos):
            if os.path.splitext(name)[1].lower() in extensions:
                path = os.path.join(dirpath, name)
                found.append((path, _video_id(os.path.relpath(path, root))))
    return sorted(found, key=lambda item: item[1])


def _optional_float(value: Any, where: str, column: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {column} must be a number of seconds, got {value!r}") from None


def _read_list_file(path: Path) -> list[dict]:
    """Rows {path, video_id?, start_s?, end_s?} of a .txt / .csv / .parquet list file, with their line numbers."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                rows.append({"path": line, "_where": f"{path}:{number}"})
        return rows
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            records = list(reader)
        first_line = 2  # line 1 is the header
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        columns = table.column_names
        records = table.to_pylist()
        first_line = 0
    if "path" not in columns:
        raise ValueError(f"list file {path} needs a 'path' column, found columns {list(columns)}")
    rows = []  # columns other than these four (labels, notes) are allowed and ignored
    for number, record in enumerate(records, first_line):
        where = f"{path}:{number}" if suffix == ".csv" else f"{path} row {number}"
        row = {"path": record["path"], "_where": where}
        if row["path"] is None or not str(row["path"]).strip():
            raise ValueError(f"{where}: empty path")
        if record.get("video_id") not in (None, ""):
            row["video_id"] = str(record["video_id"])
        for column in ("start_s", "end_s"):
            row[column] = _optional_float(record.get(column), where, column)
        start, end = row["start_s"], row["end_s"]
        if start is not None and start < 0:
            raise ValueError(f"{where}: start_s must be >= 0, got {start}")
        if start is not None and end is not None and end <= start:
            raise ValueError(f"{where}: end_s must be greater than start_s, got start_s={start} end_s={end}")
        rows.append(row)
    return rows


def discover_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> Inputs:
    """Turn INPUT arguments into VideoTasks.

    - a directory: every file (or entry) with a video extension in any case, recursively; video_id = path relative
      to that directory (POSIX separators).
    - a list file (.txt one path a line, .csv/.parquet with `path` and optional `video_id`, `start_s`, `end_s`);
      relative paths are relative to the list file's folder; video_id defaults to the path as written.
    - any other file: one video; video_id = its file name.
    A missing INPUT is fatal (FileNotFoundError); a video_id named twice is fatal (ValueError naming it); entries that
    cannot be read (a bad file, a dangling link, a folder named .mp4) become error rows when they are decoded.
    """
    from .video import VIDEO_EXTENSIONS, VideoTask

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    extensions = {e.lower() if e.startswith(".") else "." + e.lower() for e in VIDEO_EXTENSIONS}
    result = Inputs(tasks=[])
    origin: dict[str, str] = {}  # video_id -> where it came from, for the duplicate message

    def add(path: str, video_id: str, where: str, start_s: float | None = None, end_s: float | None = None) -> None:
        if video_id in origin:
            raise ValueError(f"video_id {video_id!r} appears twice ({origin[video_id]} and {where}); "
                             "give distinct video_id values in a list file or pass each folder once")
        origin[video_id] = where
        result.tasks.append(VideoTask(path=os.path.abspath(path), video_id=video_id, start_s=start_s, end_s=end_s))

    if not inputs:
        raise ValueError("no INPUT given: pass video files, folders or list files")
    for raw in inputs:
        path = Path(raw)
        if not os.path.lexists(path):
            raise FileNotFoundError(f"input {str(raw)!r} does not exist")
        if path.is_dir():
            for video_path, video_id in _walk(path, extensions, result):
                add(video_path, video_id, f"{raw}/{video_id}")
        elif path.suffix.lower() in LIST_EXTENSIONS:
            for row in _read_list_file(path):
                entry = Path(os.path.expanduser(str(row["path"]).strip()))
                video_path = entry if entry.is_absolute() else path.parent / entry
                video_id = row.get("video_id") or _video_id(str(entry))
                add(str(video_path), video_id, row["_where"], row.get("start_s"), row.get("end_s"))
        else:
            add(str(path), path.name, str(raw))
    return result


# --- shards and devices -------------------------------------------------------------------------------------------
def shard_of(video_id: str, num_shards: int) -> int:
    """Stable shard of a video: blake2b of its id (Python's hash() changes between processes)."""
    digest = hashlib.blake2b(video_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_shards


def resolve_shard(shard: str | tuple[int, int] | None, environ: dict | None = None) -> tuple[int, int, str]:
    """(index, count, where it came from): --shard i/n, else torchrun RANK/WORLD_SIZE, else SLURM, else 0/1."""
    env = os.environ if environ is None else environ
    if shard is not None:
        if isinstance(shard, str):
            try:
                index, count = (int(x) for x in shard.split("/"))
            except ValueError:
                raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {shard!r}") from None
        else:
            index, count = shard
        source = "--shard"
    elif "WORLD_SIZE" in env and "RANK" in env:
        index, count, source = int(env["RANK"]), int(env["WORLD_SIZE"]), "torchrun RANK/WORLD_SIZE"
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        index, count, source = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), "SLURM_PROCID/SLURM_NTASKS"
    else:
        return 0, 1, "single"
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard index must be in [0, {count}) with at least one shard, got {index}/{count}")
    return index, count, source


def _local_rank(environ: dict | None = None) -> int | None:
    env = os.environ if environ is None else environ
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        if env.get(name, "").strip():
            return int(env[name])
    return None


def resolve_device(device: str | torch.device | None, environ: dict | None = None) -> torch.device:
    """cuda when available (cuda:LOCAL_RANK under torchrun/SLURM), else cpu; a CUDA request without CUDA is an error."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device must be cpu, cuda or cuda:<index>, got {device!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device} requested but CUDA is not available on this machine")
        if device.index is None:
            rank = _local_rank(environ)
            # with one visible GPU per task (srun --gpus-per-task=1) the local rank is not an index: wrap it
            device = torch.device("cuda", 0 if rank is None else rank % torch.cuda.device_count())
    elif device.type != "cpu":
        raise ValueError(f"--device must be cpu, cuda or cuda:<index>, got {str(device)!r}")
    return device


# --- model --------------------------------------------------------------------------------------------------------
def _load_model(model: Any, device: torch.device, dtype: torch.dtype, backend: str, config: dict | None = None):
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


def _keep_policy(keep: Any):
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


# --- batching -----------------------------------------------------------------------------------------------------
@dataclass
class _Video:
    """A video being decoded: its clips' row fields and, once embedded, their results (keyed by clip_index)."""

    task: Any
    generation: int = 0
    num_clips: int | None = None
    rows: dict = field(default_factory=dict)  # clip_index -> (start_frame, end_frame, start_s, end_s, padded)
    results: dict = field(default_factory=dict)  # clip_index -> (embedding (D,), logits (C,) | None, num_tokens)


def batch_rows(n: int, batch_size: int) -> int:
    """Rows a batch of n clips runs with: batch_size when full; a short batch is padded to the next power of two up
    to 8, then to the next multiple of 8 (never beyond batch_size). A short last batch costs about its own size,
    and batch shapes stay few (what CUDA graphs and same-shape-same-bits numerics need)."""
    if n >= batch_size:
        return batch_size
    rows = 1 << max(0, n - 1).bit_length() if n <= 8 else -(-n // 8) * 8
    return min(rows, batch_size)


class _ModelRunner:
    """Runs batches of uint8 clips through the model; returns results in submission order.

    A batch of n clips runs with batch_rows(n, batch_size) rows (padding rows hold stale frames; their outputs are
    dropped), so a clip's embedding depends only on its batch's shape: bit-identical for the same shape,
    floating-point close otherwise (see README, "Resume"). The clips' frames (shared-memory slot views from the
    DecodePool) are gathered into a host buffer, then handed back with `release` at once: the buffer is what the
    model reads. On CUDA: two pinned host buffers, non-blocking H2D, and results copied back non-blocking with an
    event, so collecting batch k (the one before the newest) does not wait for batch k+1.
    """

    def __init__(self, model, batch_size: int, keep, device: torch.device, num_frames: int, image_size: int,
                 release=None):
        self.model, self.batch_size, self.keep, self.device = model, batch_size, keep, device
        self.release = release or (lambda clips: None)
        self.cuda = device.type == "cuda"
        shape = (batch_size, num_frames, image_size, image_size, 3)
        self.host = [torch.zeros(shape, dtype=torch.uint8, pin_memory=self.cuda) for _ in range(2 if self.cuda else 1)]
        self.in_flight: collections.deque = collections.deque()
        self.count = 0
        self.compute_s = 0.0
        self.gather_s = 0.0  # of compute_s: copying the clips into the host buffer
        self.padded_rows = 0  # rows computed for padding (wasted work), for the summary

    def submit(self, entries: list) -> list:
        """Start a batch of (video_id, generation, clip) entries; returns batches completed meanwhile."""
        t0 = time.perf_counter()
        n = len(entries)
        rows = batch_rows(n, self.batch_size)
        buf = self.host[self.count % len(self.host)][:rows]
        self.count += 1
        self.padded_rows += rows - n
        clips = [clip for _, _, clip in entries]
        for i, clip in enumerate(clips):  # torch copies release the GIL; a GPU-decoded frame tensor comes down
            frames = clip.frames if isinstance(clip.frames, torch.Tensor) else torch.from_numpy(clip.frames)
            buf[i].copy_(frames)
        self.release(clips)  # the slots go back to the decoders: everything below reads buf
        self.gather_s += time.perf_counter() - t0
        frames = buf.to(self.device, non_blocking=True) if self.cuda else buf
        with torch.inference_mode():
            out = self.model(frames, keep=self.keep)
        embeddings = out.embeddings[:n].float()
        logits = out.logits[:n].float() if out.logits is not None else None
        num_tokens = (out.cu_seqlens[1:n + 1] - out.cu_seqlens[:n]).to(torch.int32)
        if self.cuda:
            host = [t.to("cpu", non_blocking=True) if t is not None else None for t in (embeddings, logits, num_tokens)]
            event = torch.cuda.Event()
            event.record()
            self.in_flight.append((entries, *host, event))
        else:
            self.in_flight.append((entries, embeddings, logits, num_tokens, None))
        self.compute_s += time.perf_counter() - t0
        return self.collect(keep_last=1 if self.cuda else 0)

    def collect(self, keep_last: int = 0) -> list:
        """Finished batches as (entries, embeddings np (n, D), logits np (n, C) | None, num_tokens np (n,))."""
        done = []
        while len(self.in_flight) > keep_last:
            entries, embeddings, logits, num_tokens, event = self.in_flight.popleft()
            t0 = time.perf_counter()
            if event is not None:
                event.synchronize()
            self.compute_s += time.perf_counter() - t0
            done.append((entries, embeddings.numpy(), None if logits is None else logits.numpy(), num_tokens.numpy()))
        return done


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


# --- the run --------------------------------------------------------------------------------------------------------
class _Prefetch:
    """Iterates DecodePool.run in a background thread and hands its events over through a bounded queue.

    The pool gives a worker its next video only while someone iterates it; iterated from the main thread, a worker
    that finished a video would sit idle while the model computes. Here the thread keeps workers busy; the queue
    bound (plus the pool's own) keeps decoded clips in memory bounded. Only this thread touches the generator.
    """

    _END = object()

    def __init__(self, pool, tasks, max_events: int):
        self._stop = threading.Event()
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
        self._stop.set()
        self._thread.join(timeout_s)


@dataclass
class _Failure:
    error: BaseException


class _Extraction:
    """State of one shard's run: buffered videos, the batch being filled, counters, the store writer."""

    def __init__(self, runner: _ModelRunner, writer: store.RunWriter, bar):
        self.runner, self.writer, self.bar = runner, writer, bar
        self.videos: dict[str, _Video] = {}
        self.queue: list = []  # (video_id, generation, clip) waiting for a batch
        self.ok = self.failed = self.clips = 0
        self.decode_s = 0.0
        self.decode_cpu_s: float | None = 0.0  # None once a video was decoded in-process (no separate CPU clock)
        self.video_seconds = 0.0
        self.started = time.perf_counter()

    # events from the DecodePool
    def on_clips(self, task, clips) -> None:
        video = self.videos.setdefault(task.video_id, _Video(task))
        for clip in clips:
            video.rows[clip.clip_index] = (clip.start_frame, clip.end_frame, clip.start_s, clip.end_s,
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

    def on_done(self, task, num_clips: int, decode_s: float, decode_cpu_s: float | None = None) -> None:
        self.decode_s += decode_s
        self.decode_cpu_s = None if decode_cpu_s is None or self.decode_cpu_s is None else \
            self.decode_cpu_s + decode_cpu_s
        video = self.videos.setdefault(task.video_id, _Video(task))
        video.num_clips = num_clips
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
                video.results[clip.clip_index] = (embeddings[i], None if logits is None else logits[i],
                                                  int(num_tokens[i]))
                touched[video_id] = video
            for video in touched.values():
                self._maybe_commit(video)

    def _maybe_commit(self, video: _Video) -> None:
        if video.num_clips is None or len(video.results) < video.num_clips:
            return
        task = video.task
        order = sorted(video.results)
        results = [video.results[i] for i in order]
        rows = [video.rows[i] for i in order]
        self.writer.add_video({
            "video_id": [task.video_id] * len(order),
            "path": [str(task.path)] * len(order),
            "clip_index": order,
            "start_frame": [r[0] for r in rows],
            "end_frame": [r[1] for r in rows],
            "start_s": [float(r[2]) for r in rows],
            "end_s": [float(r[3]) for r in rows],
            "padded_frames": [r[4] for r in rows],
            "num_tokens": [r[2] for r in results],
            "embedding": np.stack([r[0] for r in results]),
            "logits": np.stack([r[1] for r in results]) if results[0][1] is not None else None,
        })
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


def extract(inputs, out, model: Any = "random:small", *, clip_frames: int | None = None,
            frame_step: int | None = None, fps: float | None = None, clip_stride_s: float | None = None,
            clips_per_video: int | None = None, keep: str | None = "all", batch_size: int | None = None,
            workers: int | None = None, device: str | None = None, dtype: str | None = None,
            shard: str | tuple[int, int] | None = None, overwrite: bool = False, embedding_dtype: str = "float32",
            timeout_s: float = 120.0, progress: bool | None = None, backend: str = "auto",
            decode_backend: str = "auto", decode_device: str = "cpu", part_rows: int = 100_000,
            commit_interval_s: float = 60.0,
            decode_options: dict | None = None) -> dict:
    """Embed every clip of `inputs` into the Parquet dataset `out`; returns the run summary (see format_summary).

    inputs: video files, folders (recursive) or list files (.txt/.csv/.parquet). model: a source for load_model
    (HF folder, .pth, hub id, "random:<preset>") or an already loaded VideoMAE. Rerunning the same call resumes;
    a different configuration into the same `out` raises ValueError unless overwrite=True.
    decode_device: "cpu", or "cuda"/"cuda:N" to decode with NVDEC through torchcodec in this process (workers=0;
    frames stay on the GPU, then go through the model's host buffer: the GPU-resident batch is owed a GPU run).
    batch_size / workers: None follows the bottleneck (see _CorePlan: 8 clips and one growing, niced worker on
    CPU; 32 clips and cores - 1 workers with CUDA).
    decode_options: extra DecodePool arguments (max_attempts, threads, max_pending_clips, decode, nice); by
    default the pool may hold two model batches of decoded clips, so decoders keep working while the model
    computes.
    """
    from .video import DecodePool, DoneEvent, ErrorEvent, ResetEvent, Sampling

    t_start = time.perf_counter()
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"--batch-size must be a positive integer, got {batch_size!r}")
    if embedding_dtype not in store.EMBEDDING_DTYPES:
        raise ValueError(f"--embedding-dtype must be one of {store.EMBEDDING_DTYPES}, got {embedding_dtype!r}")
    if frame_step is not None and fps is not None:
        raise ValueError("give --frame-step or --fps, not both")
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
    found = discover_inputs(inputs)

    if isinstance(model, torch.nn.Module):
        dev = next(model.parameters()).device
        torch_dtype = next(model.parameters()).dtype
    else:
        from .checkpoint import resolve_dtype  # imports the model and kernels: only when a model is loaded

        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
    plan = _CorePlan(dev.type, os.cpu_count() or 2, workers, batch_size)
    workers, batch_size = plan.workers, plan.batch_size
    if decode_device != "cpu":  # NVDEC: frames stay on the GPU, so this process decodes (nothing to ship)
        workers = 0
    keep_policy, keep_spec = _keep_policy(keep)
    net = _load_model(model, dev, torch_dtype, backend)
    cfg = net.config
    if clip_frames is not None and clip_frames != cfg.num_frames:
        raise ValueError(f"--clip-frames {clip_frames} does not match the model, which takes {cfg.num_frames} frames")
    sampling = Sampling(num_frames=int(cfg.num_frames), frame_step=frame_step, fps=fps, clip_stride_s=clip_stride_s,
                        clips_per_video=clips_per_video)
    run = build_run(net, sampling, keep_spec, torch_dtype, dev, embedding_dtype, (shard_index, num_shards))
    out = store.prepare_output(out, run, shard=shard_index, num_shards=num_shards, overwrite=overwrite)

    done = set() if overwrite else store.committed_video_ids(out)
    mine = [t for t in found.tasks if shard_of(t.video_id, num_shards) == shard_index]
    todo = [t for t in mine if t.video_id not in done]
    discovery_errors = [e for e in found.errors
                        if shard_of(e["video_id"], num_shards) == shard_index and e["video_id"] not in done]

    writer = store.RunWriter(out, run, shard_index, part_rows=part_rows, commit_interval_s=commit_interval_s)
    runner = _ModelRunner(net, batch_size, keep_policy, dev, int(cfg.num_frames), int(cfg.image_size))
    if progress is None:
        progress = sys.stderr.isatty()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo) + len(discovery_errors), unit="video", file=sys.stderr, dynamic_ncols=True,
                   desc=f"extract {shard_index}/{num_shards}" if num_shards > 1 else "extract")
    state = _Extraction(runner, writer, bar)
    for error in discovery_errors:
        state.writer.add_error(**error)
        state.failed += 1
        state.progress()
    threads = torch.get_num_threads()
    if plan.model_threads and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(plan.model_threads)
    wait_s = 0.0
    try:
        pool_options = {"timeout_s": timeout_s, "backend": decode_backend,
                        "max_pending_clips": max(2 * batch_size, 4 * max(plan.max_workers, 1)), **plan.pool_options}
        if decode_device != "cpu":
            pool_options["decode"] = functools.partial(decode_clips, device=decode_device)
        pool_options.update(decode_options or {})
        if workers > 0:  # frames stay in the pool's shared slots until the runner has gathered them
            pool_options.setdefault("zero_copy", True)
            pool_options.setdefault("slots", pool_options["max_pending_clips"] + batch_size)
        with DecodePool(workers, sampling, int(cfg.image_size), **pool_options) as pool:
            runner.release = pool.release
            # the ring bounds the decoded clips in memory; the queue only hands events over (+ non-clip events)
            prefetch = _Prefetch(pool, todo, max_events=pool.slots + 16 if workers else pool.max_pending_clips)
            events = iter(prefetch)
            try:
                while True:
                    t0 = time.perf_counter()
                    event = next(events, None)
                    wait_s += time.perf_counter() - t0
                    if event is None:
                        break
                    if isinstance(event, DoneEvent):
                        state.on_done(event.task, event.num_clips, event.decode_s, event.decode_cpu_s)
                    elif isinstance(event, ErrorEvent):
                        state.on_error(event.task, event.stage, event.error, event.attempts)
                    elif isinstance(event, ResetEvent):
                        state.on_reset(event.task)
                    else:
                        state.on_clips(event.task, event.clips)
                        plan.update(pool, runner.count, wait_s, runner.compute_s)
                    writer.maybe_flush()
            finally:
                prefetch.stop(timeout_s=timeout_s + 5)  # a hung decoder is killed after timeout_s at the latest
        state.finish()
    except BaseException:
        # keep what is complete: those videos need not be redone after Ctrl-C or a decoder crash; the original
        # error matters more than one raised by this flush
        with contextlib.suppress(Exception):
            writer.flush()
        raise
    finally:
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
        "videos": len(mine) + len(discovery_errors),
        "videos_ok": state.ok,
        "videos_failed": state.failed,
        "videos_skipped": len(mine) - len(todo),
        "videos_other_shards": len(found.tasks) - len(mine),
        "clips": state.clips,
        "video_seconds": state.video_seconds,
        "wall_s": wall,
        "compute_s": runner.compute_s,
        "gather_s": runner.gather_s,
        "batches": runner.count,
        "padded_rows": runner.padded_rows,
        "wait_s": wait_s,
        "write_s": writer.write_s,
        "decode_s": state.decode_s,
        "decode_cpu_s": state.decode_cpu_s if workers else None,
        "clips_per_s": state.clips / wall if wall > 0 else 0.0,
        "parts_written": writer.clips.files_written + writer.errors.files_written,
    }


def format_summary(summary: dict) -> str:
    """A few human lines: counts, throughput, and where the wall time went (is the model starved?)."""
    s = summary
    lines = [
        f"vmae-fast extract: {s['videos']} videos in shard {s['shard']}: {s['videos_ok']} ok, "
        f"{s['videos_failed']} errors, {s['videos_skipped']} already done"
        + (f" ({s['videos_other_shards']} in other shards)" if s["videos_other_shards"] else "")
        + f"; {s['clips']} clips -> {s['out']}",
        (f"time {s['wall_s']:.1f} s: model {s['compute_s']:.1f} s"
         + (f" on {s['model_threads']} threads" if s.get("model_threads") else "")
         + f", waiting for decoded clips {s['wait_s']:.1f} s, writing {s['write_s']:.1f} s; decoding took "
         + (f"{s['decode_cpu_s']:.1f} s of worker CPU ({s['decode_s']:.1f} s in the decoder, "
            if s.get("decode_cpu_s") is not None else f"{s['decode_s']:.1f} s of worker time (")
         + f"{s['workers']} workers)"),
        (f"throughput {s['clips_per_s']:.1f} clips/s, {s['video_seconds'] / max(s['wall_s'], 1e-9):.1f} "
         f"video-seconds/s on {s['device']} ({s['dtype']}, batch {s['batch_size']}"
         + (f", {s['padded_rows']} padding rows in {s['batches']} batches" if s.get("padded_rows") else "")
         + f", keep {s['keep']})"),
    ]
    busy = s["compute_s"] + s["wait_s"]
    if s["clips"] and busy > 0:
        if s["wait_s"] > 0.25 * busy:
            lines.append(f"decode-bound: the model waited for clips {100 * s['wait_s'] / busy:.0f}% of the time; "
                         "more --workers (or a lower resolution source) would help")
        else:
            lines.append(f"model-bound: the model was busy {100 * s['compute_s'] / busy:.0f}% of the time")
    if str(s.get("model", "")).startswith("random:"):
        lines.append("note: the model has random weights (--model random:...); pass a checkpoint for real embeddings")
    return "\n".join(lines)


# --- single clip for retrieval --------------------------------------------------------------------------------------
_MODEL_CACHE: dict = {}


def embed_video_at(out: str | os.PathLike, path: str | os.PathLike, at_s: float, device: str | None = None):
    """Embed the clip of `path` covering time `at_s` exactly as the run in `out` did; returns (np.float32 (D,), Clip).

    The clip grid is the run's sampling, so the result matches the stored row of that clip (up to the device's
    numerics when `device` differs from the run's). When at_s falls between clips, the nearest clip is taken.
    """
    from .checkpoint import resolve_dtype
    from .video import Sampling, VideoTask, decode_clips

    if at_s is None or at_s < 0:
        raise ValueError(f"at_s must be a time >= 0 in seconds, got {at_s!r}")
    run = store.load_run(out)
    config = run["config"]
    dev = resolve_device(device if device is not None else ("cuda" if config["device_type"] == "cuda"
                                                            and torch.cuda.is_available() else "cpu"))
    dtype = resolve_dtype(config["dtype"] if dev.type == config["device_type"] else None, dev)
    source = run["model"].get("source")
    key = (source, str(dev), dtype)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()  # one model at a time: they can be large
        # random weights may have been built with config overrides (e.g. a smaller image_size): rebuild the same
        overrides = config["model"]["config"] if str(source).startswith("random:") else None
        _MODEL_CACHE[key] = _load_model(source, dev, dtype, "auto", overrides)
    net = _MODEL_CACHE[key]
    expected = config["model"].get("weights_sha256")
    if expected and net.describe().get("weights_sha256") != expected:
        raise ValueError(f"the weights at {source} changed since {out} was written (checksum differs)")
    sampling = Sampling(**config["sampling"])
    task = VideoTask(path=os.path.abspath(path), video_id=str(path))
    clips = list(decode_clips(task, sampling, int(config["image_size"]), at_s=float(at_s)))
    if not clips:
        raise ValueError(f"{path}: no clips could be sampled")
    clip = clips[0]
    keep_policy, _ = _keep_policy(config["keep"])
    frames = torch.from_numpy(np.ascontiguousarray(clip.frames))[None].to(dev)
    with torch.inference_mode():
        embedding = net(frames, keep=keep_policy).embeddings[0].float().cpu().numpy()
    if config["embedding_dtype"] == "float16":  # match the stored row
        embedding = embedding.astype(np.float16).astype(np.float32)
    return embedding, clip



class _CallableModule(types.ModuleType):
    """Importing vmae_fast.extract (the module) rebinds the package attribute `vmae_fast.extract` from the function to
    the module; calling the module keeps the documented `vmae_fast.extract(inputs, out, ...)` working either way."""

    def __call__(self, *args, **kwargs):
        return extract(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
