"""Extraction: videos -> clips -> batched model -> Parquet, resumable, crash-safe and shardable.

    spec.py          RunSpec: every option of a run, checked once; what it loads (model, sampling, keep, _run.json)
    summary.py       RunSummary / RaySummary: what a run did
    inputs.py        INPUT arguments -> this shard's VideoTasks, streamed
    core.py          the per-shard loop every engine runs (CorePlan, Extraction, feed)
    runner.py        ModelRunner: batches of clips through the model
    devices.py       the CUDA device of this rank
    local_engine.py  this process + decode workers, static shards (torchrun, SLURM, --shard)
    ray_engine.py    a Ray Data job: actors pull groups of videos

`vmae_fast.extract(...)` makes the RunSpec and picks the engine; `run(spec)` runs a spec made otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .inputs import Discovery, discover_inputs, iter_tasks, resolve_shard, split_list
from .summary import RaySummary, RunSummary

if TYPE_CHECKING:
    from .spec import RunSpec

__all__ = ["Discovery", "RaySummary", "RunSpec", "RunSummary", "discover_inputs", "extract", "iter_tasks",
           "resolve_shard", "run", "split_list"]


def run(spec: RunSpec) -> RunSummary:
    """Run `spec` on its engine (spec.engine): "local" (local_engine.run_local) or "ray" (ray_engine.run_ray)."""
    if spec.engine == "ray":
        from .ray_engine import run_ray  # Ray is an optional dependency

        return run_ray(spec)
    from .local_engine import run_local

    return run_local(spec)


def extract(inputs, out, model: Any = "random:small", **options) -> RunSummary | RaySummary:
    """Embed every clip of `inputs` into the Parquet dataset `out`; returns the run summary (RunSummary: counts and
    the split of wall time; it reads like a dict too: summary["videos_ok"]). Rerunning the same call resumes.

    inputs: video files or URLs, folders (recursive) or list files (.txt/.csv/.parquet). model: a source for
    load_model (HF folder, .pth, hub id, "random:<preset>") or an already loaded VideoMAE.
    Options (every one checked before anything is read or written; a bad one is InvalidOption, a ValueError,
    naming it as `name=`):
    clip_frames (must equal the model's frames), frame_step | fps, clip_stride_s | clips_per_video; crops: 1 (the
    center crop, default) or 3 (start, center, end of the long side: the papers' multi-view test); views:
    "CLIPSxCROPS", e.g. "5x3", shorthand for clips_per_video=5, crops=3 (not with either, nor with clip_stride_s).
    Every view is a clips row (key video_id, clip_index, crop_index); each video also gets one row of OUT/videos
    (store/videos.py: mean embedding, mean softmax, top labels), committed with its clips.
    keep ("all", "tube:0.5", "motion:0.5" or a policy); batch_size / workers: None follows the bottleneck (see
    core.CorePlan: 8 clips and one growing, niced worker on CPU; 32 clips and cores - 1 workers with CUDA); device,
    dtype ("bf16", "fp16", "fp32"), backend (model kernels), shard ("i/n" or (i, n); default from torchrun /
    SLURM variables), overwrite (a different configuration into the same `out` is refused unless True),
    embedding_dtype ("float32", "float16"), timeout_s (a decode worker with no progress for this long is
    replaced), progress (True a tqdm bar, False none; None: the bar on a terminal, else a line a minute),
    decode_backend, decode_device ("cpu", or "cuda"/"cuda:N" to decode with NVDEC through torchcodec in this
    process), part_rows, commit_interval_s,
    decode_options (extra DecodePool arguments: max_attempts, threads, max_pending_clips, decode, nice),
    retry_errors (redo the videos with error rows: store.retire_errors moves those rows out first),
    break_lock (take the shard's lock even when another host holds it and its lease still runs; a lock of another
    host not renewed for store.lock.LEASE_S is taken over without it; a live holder on this host is never
    overridden).
    engine: "local" (this process and its decode workers) or "ray" (a Ray Data job on the cluster at
    ray_address, actors per ray_options: see ray_engine.run_ray; same output).
    Faults (faults.py): a video's own fault is its error row; an environment fault (EnvironmentFault) or our bug
    stops the run, finished videos committed first and nothing recorded for the video at fault.
    """
    from .spec import RunSpec

    return run(RunSpec.from_keywords(inputs, out, model, **options))


def __getattr__(name: str):
    """RunSpec on first use: the Ray engine's coordinator and admission processes import this package for
    ray_engine.py and need none of spec.py (its checks no longer import torch, but local_engine.py, which imports it
    here too, does: ~1.5 s of CPU a process beside the actors' own start, docs/ray.md)."""
    if name == "RunSpec":
        from .spec import RunSpec

        return RunSpec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
