"""What a run did: RunSummary (every engine), RaySummary (a Ray run's extras). The CLI formats them for people
(cli.format_summary, cli.format_actors).

A summary reads as attributes (summary.videos_ok) and, as the dict that earlier versions returned, as a read-only
mapping: summary["videos_ok"], summary.get("engine"), dict(summary) (what json.dumps needs).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class RunSummary(Mapping):
    """Counts and the split of wall time of one run (one shard of the local engine, or a whole Ray job).

    videos: inputs this run owned (this shard's, with its discovery errors); videos_ok / videos_failed: committed
    now as clips / as an error row; videos_skipped: already committed before (resume); errors_retried: error rows
    --retry-errors moved out; videos_other_shards: inputs of other shards. clips: rows (views) written;
    video_seconds: video time they cover. wall_s: the whole call; compute_s: the model (gather_s of it: copying
    clips into its batch); wait_s: the model waiting for decoded clips; write_s: writing parts; decode_s: seconds
    in the decoder, decode_cpu_s: CPU seconds of the decode workers (None when decoding ran in this process).
    discovery_s: reading the inputs (while the run went on); first_clip_s: from the start to the first decoded
    clip; oom_halvings: [rows that ran out of CUDA memory, batch size after], in order.
    """

    out: str
    shard: str
    shard_source: str
    model: str | None
    device: str
    dtype: str
    keep: str
    workers: int
    model_threads: int | None
    batch_size: int | None
    videos: int
    videos_ok: int
    videos_failed: int
    videos_skipped: int
    errors_retried: int
    videos_other_shards: int
    clips: int
    video_seconds: float
    wall_s: float
    compute_s: float
    gather_s: float
    batches: int
    padded_rows: int
    wait_s: float
    write_s: float
    decode_s: float
    decode_cpu_s: float | None
    clips_per_s: float
    parts_written: int | None
    discovery_s: float | None = None
    first_clip_s: float | None = None
    oom_halvings: list = field(default_factory=list)
    engine: str = "local"

    # the mapping of earlier versions (read-only)
    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def _names(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self))

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON-ready)."""
        return asdict(self)


@dataclass
class RaySummary(RunSummary):
    """A Ray run's summary: groups cut by the driver; actors (one dict per actor: actor, node, groups and the time
    split of its groups, from its reports); ray (concurrency, cpus_per_actor, gpus_per_actor, probe_s,
    first_report_s, job_s, reports, report_lag_max_s, report_lead_max_s)."""

    groups: int = 0
    actors: list[dict] = field(default_factory=list)
    ray: dict = field(default_factory=dict)
    engine: str = "ray"
