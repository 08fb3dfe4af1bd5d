"""The local engine: this process runs the model, its DecodePool workers decode, and static shards (--shard,
torchrun, SLURM) split the inputs between processes with no coordination. `vmae_fast.extract(engine="local")`.

Input discovery and shards are in inputs.py, the device in devices.py, the fault rules in faults.py, the shard lock
in store/lock.py, the per-shard loop in core.py, the summary's human lines in cli.py.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from typing import Any

import torch
from tqdm import tqdm

from .. import store
from ..checkpoint import resolve_dtype
from ..store import ShardLock, committed_ids
from ..video import DecodePool, Sampling
from ..video import decode as decoding
from ..video.crop import check_crops
from .core import CorePlan, Extraction, decode_pool_options, feed
from .devices import resolve_device, use_device
from .inputs import Discovery, resolve_shard
from .runner import ModelRunner
from .spec import _DTYPE_NAMES, build_run, load_run_model, parse_keep_spec, parse_views


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


def extract_local(inputs, out, model: Any = "random:small", *, clip_frames: int | None = None,
                  frame_step: int | None = None, fps: float | None = None, clip_stride_s: float | None = None,
                  clips_per_video: int | None = None, crops: int | None = None, views: str | None = None,
                  keep: str | None = "all", batch_size: int | None = None,
                  workers: int | None = None, device: str | None = None, dtype: str | None = None,
                  shard: str | tuple[int, int] | None = None, overwrite: bool = False, embedding_dtype: str = "float32",
                  timeout_s: float = 120.0, progress: bool | None = None, backend: str = "auto",
                  decode_backend: str = "auto", decode_device: str = "cpu", part_rows: int = 100_000,
                  commit_interval_s: float = 60.0,
                  decode_options: dict | None = None, retry_errors: bool = False, break_lock: bool = False) -> dict:
    """Embed every clip of `inputs` into the Parquet dataset `out`; returns the run summary (see format_summary).

    inputs: video files, folders (recursive) or list files (.txt/.csv/.parquet). model: a source for load_model
    (HF folder, .pth, hub id, "random:<preset>") or an already loaded VideoMAE. Rerunning the same call resumes;
    a different configuration into the same `out` raises ValueError unless overwrite=True.
    crops: 1 (default, the center crop) or 3 (start, center, end of the long side: the papers' multi-view test);
    views: "CLIPSxCROPS", e.g. "5x3", shorthand for clips_per_video=5, crops=3 (not with either, nor with
    clip_stride_s). Every view is a clips row (key video_id, clip_index, crop_index); each video also gets one row
    of OUT/videos (store/videos.py: mean embedding, mean softmax, top labels), committed with its clips.
    decode_device: "cpu", or "cuda"/"cuda:N" to decode with NVDEC through torchcodec in this process (workers=0;
    frames stay on the GPU, then go through the model's host buffer: the GPU-resident batch is owed a GPU run).
    batch_size / workers: None follows the bottleneck (see CorePlan: 8 clips and one growing, niced worker on
    CPU; 32 clips and cores - 1 workers with CUDA).
    decode_options: extra DecodePool arguments (max_attempts, threads, max_pending_clips, decode, nice); by
    default the pool may hold two model batches of decoded clips, so decoders keep working while the model
    computes.
    retry_errors: redo the videos with error rows this shard wrote (store.retire_errors moves those rows out of
    the dataset first; the new outcome replaces them). break_lock: take the shard's lock even when another host
    holds it (store/lock.py; a live holder on this host is never overridden).
    Faults (faults.py): a video's own fault is its error row; an environment fault (EnvironmentFault: a worker
    killed by the OOM killer, a file system that fails for a moment) or our bug stops the run, finished videos
    committed first and nothing recorded for the video at fault, so the rerun does it.
    """
    t_start = time.perf_counter()
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"--batch-size must be a positive integer, got {batch_size!r}")
    if embedding_dtype not in store.EMBEDDING_DTYPES:
        raise ValueError(f"--embedding-dtype must be one of {store.EMBEDDING_DTYPES}, got {embedding_dtype!r}")
    if frame_step is not None and fps is not None:
        raise ValueError("give --frame-step or --fps, not both")
    if views is not None:
        given = [name for name, value in (("--clips-per-video", clips_per_video), ("--crops", crops),
                                          ("--clip-stride-s", clip_stride_s)) if value is not None]
        if given:
            raise ValueError(f"--views {views} sets --clips-per-video and --crops: give --views or "
                             f"{' and '.join(given)}, not both")
        clips_per_video, crops = parse_views(views)
    if crops is not None:
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
    decoding.require_backend(decode_backend)  # a missing decoder library: one line, never an error row per video
    decoding.check_device(decode_device, decode_backend)  # NVDEC: torchcodec and the GPU must be there
    shard_index, num_shards, shard_source = resolve_shard(shard)
    discovery = Discovery(inputs, (shard_index, num_shards))  # read while the run goes: see inputs.py
    discovery.prime()  # errors among the first entries (all of a short list) stop the run before it writes

    if isinstance(model, torch.nn.Module):
        dev = next(model.parameters()).device
        torch_dtype = next(model.parameters()).dtype
    else:
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
    use_device(dev)  # once, before any CUDA work: kernels, streams, events and graphs of this rank's GPU
    if decode_device == "cuda" and dev.type == "cuda":
        decode_device = str(dev)  # NVDEC on this rank's GPU too
    plan = CorePlan(dev.type, os.cpu_count() or 2, workers, batch_size)
    workers, batch_size = plan.workers, plan.batch_size
    if decode_device != "cpu":  # NVDEC: frames stay on the GPU, so this process decodes (nothing to ship)
        workers = 0
    keep_policy, keep_spec = parse_keep_spec(keep)
    net = load_run_model(model, dev, torch_dtype, backend)
    cfg = net.config
    if clip_frames is not None and clip_frames != cfg.num_frames:
        try:  # V-JEPA 2 takes any count (rotary positions); VideoMAE's position table fixes it
            net = net.with_num_frames(clip_frames)
        except ValueError:
            raise ValueError(f"--clip-frames {clip_frames} does not match the model, which takes {cfg.num_frames} "
                             f"frames") from None
        cfg = net.config
    sampling = Sampling(num_frames=int(cfg.num_frames), frame_step=frame_step, fps=fps, clip_stride_s=clip_stride_s,
                        clips_per_video=clips_per_video, crops=1 if crops is None else int(crops),
                        resize=cfg.resize_size if cfg.resize_size != cfg.image_size else None)
    run = build_run(net, sampling, keep_spec, torch_dtype, dev, embedding_dtype, (shard_index, num_shards))
    lock = ShardLock(out, shard_index, break_lock=break_lock).acquire()  # one writer per shard, before OUT is touched
    try:  # from here on the lock is released whatever happens (the run's finally below, or this except)
        out = store.prepare_output(out, run, shard=shard_index, num_shards=num_shards, overwrite=overwrite)
        retried = store.retire_errors(out, shard_index) if retry_errors and not overwrite else 0

        if not overwrite:  # this shard's committed ids (clips or errors), compact: store/committed.py
            discovery.skip = committed_ids(out, shard_index, num_shards)

        writer = store.RunWriter(out, run, shard_index, part_rows=part_rows, commit_interval_s=commit_interval_s)
        runner = ModelRunner(net, batch_size, keep_policy, dev, int(cfg.num_frames), int(cfg.image_size))
        if progress is None:
            progress = sys.stderr.isatty()
        bar = None
        if progress:
            desc = f"extract {shard_index}/{num_shards}" if num_shards > 1 else "extract"
            bar = tqdm(total=None, unit="video", file=sys.stderr, dynamic_ncols=True, desc=desc)
            discovery.progress = functools.partial(_discovery_progress, bar, desc)  # the total is known at its end
        state = Extraction(runner, writer, bar)

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
        decode = functools.partial(decoding.decode_clips, device=decode_device) if decode_device != "cpu" else None
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


