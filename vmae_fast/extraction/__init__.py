"""Extraction: videos -> clips -> batched model -> Parquet, resumable, crash-safe and shardable.

    spec.py          what a run is: model, sampling, keep policy, the content of _run.json
    inputs.py        INPUT arguments -> this shard's VideoTasks, streamed
    core.py          the per-shard loop every engine runs (CorePlan, Extraction, feed)
    runner.py        ModelRunner: batches of clips through the model
    devices.py       the CUDA device of this rank
    local_engine.py  this process + decode workers, static shards (torchrun, SLURM, --shard)
    ray_engine.py    a Ray Data job: actors pull groups of videos

`vmae_fast.extract(...)` picks the engine.
"""

from __future__ import annotations

from typing import Any

from .inputs import Discovery, discover_inputs, iter_tasks, resolve_shard, split_list
from .local_engine import extract_local

__all__ = ["Discovery", "discover_inputs", "extract", "iter_tasks", "resolve_shard", "split_list"]


def extract(inputs, out, model: Any = "random:small", *, engine: str = "local", ray_address: str | None = None,
            ray_options: dict | None = None, **options) -> dict:
    """Embed every clip of `inputs` into the Parquet dataset `out`; returns the run summary.

    engine: "local" (this process and its decode workers; see local_engine.extract_local for every option) or
    "ray" (ray_engine.extract_ray: a Ray Data job on the cluster at ray_address, actors per ray_options; same
    output). Rerunning the same call resumes.
    """
    if engine != "local" or ray_address is not None or ray_options is not None:
        from .ray_engine import extract_ray  # Ray is an optional dependency

        return extract_ray(inputs, out, model, engine=engine, ray_address=ray_address, ray_options=ray_options,
                           **options)
    return extract_local(inputs, out, model, **options)
