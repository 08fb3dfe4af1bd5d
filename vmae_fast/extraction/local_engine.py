"""The local engine: this process runs the model, its DecodePool workers decode, and static shards (--shard,
torchrun, SLURM) split the inputs between processes with no coordination. `vmae_fast.extract(engine="local")`.

The options are a RunSpec (spec.py), input discovery and shards are in inputs.py, the device in devices.py, the
fault rules in faults.py, the shard lock in store/lock.py, the per-shard loop in core.py, the summary's human lines
in cli.py.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from typing import Any

import torch

from .. import store
from ..store import ShardLock, committed_ids
from ..video import DecodePool
from ..video import decode as decoding
from .core import CorePlan, Extraction, decode_pool_options, feed
from .devices import use_device
from .inputs import Discovery, resolve_shard
from .progress import progress_display
from .runner import ModelRunner
from .spec import RunSpec
from .summary import RunSummary


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


def _bar_progress(bar, state: Extraction) -> None:
    """A finished video on the bar (Extraction's progress callback): one more, with clips, clips/s and errors."""
    elapsed = max(time.perf_counter() - state.started, 1e-9)
    bar.update(1)
    bar.set_postfix(clips=state.clips, clips_s=f"{state.clips / elapsed:.1f}", errors=state.failed, refresh=False)


def run_local(spec: RunSpec) -> RunSummary:
    """Run `spec` in this process (one static shard); returns its summary. See vmae_fast.extract for the options.

    Faults (faults.py): a video's own fault is its error row; an environment fault (EnvironmentFault: a worker
    killed by the OOM killer, a file system that fails for a moment) or our bug stops the run, finished videos
    committed first and nothing recorded for the video at fault, so the rerun does it.
    """
    t_start = time.perf_counter()
    decoding.require_backend(spec.decode_backend)  # a missing decoder library: one line, never an error row per video
    decode_device = spec.decode_device
    decoding.check_device(decode_device, spec.decode_backend)  # NVDEC: torchcodec and the GPU must be there
    shard_index, num_shards, shard_source = resolve_shard(spec.shard)
    discovery = Discovery(spec.inputs, (shard_index, num_shards))  # read while the run goes: see inputs.py
    discovery.prime()  # errors among the first entries (all of a short list) stop the run before it writes

    dev = use_device(spec.resolve_device())  # once, before any CUDA work: kernels, streams, events and graphs
    if decode_device == "cuda" and dev.type == "cuda":
        decode_device = str(dev)  # NVDEC on this rank's GPU too
    plan = CorePlan(dev.type, os.cpu_count() or 2, spec.workers, spec.batch_size)
    workers, batch_size = plan.workers, plan.batch_size
    if decode_device != "cpu":  # NVDEC: frames stay on the GPU, so this process decodes (nothing to ship)
        workers = 0
    loaded = spec.load(dev)
    net, sampling = loaded.model, loaded.sampling
    cfg = net.config
    run = loaded.run(num_shards)
    out = spec.out
    lock = ShardLock(out, shard_index, break_lock=spec.break_lock).acquire()  # one writer per shard, before OUT
    try:  # from here on the lock is released whatever happens (the run's finally below, or this except)
        out = store.prepare_output(out, run, shard=shard_index, num_shards=num_shards, overwrite=spec.overwrite)
        retried = store.retire_errors(out, shard_index) if spec.retry_errors and not spec.overwrite else 0

        if not spec.overwrite:  # this shard's committed ids (clips or errors), compact: store/committed.py
            discovery.skip = committed_ids(out, shard_index, num_shards)

        # lock.fence before each commit: a writer whose lock was taken over (--break-lock) writes nothing more
        writer = store.RunWriter(out, run, shard_index, part_rows=spec.part_rows,
                                 commit_interval_s=spec.commit_interval_s, before_commit=lock.fence)
        runner = ModelRunner(net, batch_size, loaded.keep_policy, dev, int(cfg.num_frames), int(cfg.image_size))
        desc = f"extract {shard_index}/{num_shards}" if num_shards > 1 else "extract"
        bar = progress_display(desc, spec.progress)  # a bar on a terminal, a line a minute in a log
        if bar is not None:
            discovery.progress = functools.partial(_discovery_progress, bar, desc)  # the total is known at its end
        state = Extraction(runner, writer, functools.partial(_bar_progress, bar) if bar is not None else None)

        def record_discovery_errors() -> None:  # unreadable folders of this shard, met during the walk
            for error in discovery.take_errors():
                state.add_error(**error)

        threads = torch.get_num_threads()
        if plan.model_threads and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(plan.model_threads)
    except BaseException:
        lock.release()
        raise
    try:
        decode = functools.partial(decoding.decode_clips, device=decode_device) if decode_device != "cpu" else None
        pool_options = decode_pool_options(plan, workers, timeout_s=spec.timeout_s, backend=spec.decode_backend,
                                           decode_options=dict(spec.decode_options or {}), decode=decode)
        with DecodePool(workers, sampling, int(cfg.image_size), **pool_options) as pool:
            runner.release = pool.release
            # the ring bounds the decoded clips in memory; the queue only hands events over (+ non-clip events)
            for _ in feed(state, pool, discovery, timeout_s=spec.timeout_s, plan=plan):
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
    return RunSummary(
        out=str(out),
        shard=f"{shard_index}/{num_shards}",
        shard_source=shard_source,
        model=run["model"].get("source"),
        device=str(dev),
        dtype=loaded.dtype_name,
        keep=spec.keep,
        workers=pool.workers if workers else 0,
        model_threads=torch.get_num_threads() if dev.type == "cpu" else None,
        batch_size=batch_size,
        videos=discovery.mine + discovery.error_count,
        videos_ok=state.ok,
        videos_failed=state.failed,
        videos_skipped=discovery.skipped,
        errors_retried=retried,  # error rows moved out by --retry-errors (their videos were redone)
        videos_other_shards=discovery.entries - discovery.mine,
        discovery_s=discovery.seconds,  # reading the inputs, hashing and checking (while the run went on)
        first_clip_s=None if state.first_clip_at is None else state.first_clip_at - t_start,  # from the start
        clips=state.clips,
        video_seconds=state.video_seconds,
        wall_s=wall,
        compute_s=runner.compute_s,
        gather_s=runner.gather_s,
        batches=runner.count,
        padded_rows=runner.padded_rows,
        oom_halvings=[list(h) for h in runner.oom_halvings],  # CUDA out of memory: [rows, batch size after]
        wait_s=state.wait_s,
        write_s=writer.write_s,
        decode_s=state.decode_s,
        decode_cpu_s=state.decode_cpu_s if workers else None,
        clips_per_s=state.clips / wall if wall > 0 else 0.0,
        parts_written=writer.clips.files_written + writer.errors.files_written,
    )


def extract_local(inputs, out, model: Any = "random:small", **options) -> RunSummary:
    """`vmae_fast.extract(inputs, out, model, **options)` on the local engine: run_local(RunSpec.from_keywords(...))."""
    return run_local(RunSpec.from_keywords(inputs, out, model, **options))
