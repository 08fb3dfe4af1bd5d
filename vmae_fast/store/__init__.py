"""The extract output (OUT): its layout, schemas, writers, readers, the resume set and the shard lock.

For people reading results: read_clips, read_embeddings, read_errors, read_videos, load_run.
For engines writing them: prepare_output, RunWriter (RunWriter.for_group for a Ray group), ShardLock, committed_ids,
retire_errors; for the Ray engine also layout.next_group, committed.group_outcomes and the run token (layout.py
owns every name and path of OUT; nothing else spells them).

    layout.py     OUT's names (shard and Ray group parts), listing, _run.json, the Ray run token, temporary names,
                  the atomic write, --overwrite / --retry-errors
    schemas.py    Arrow schemas of the clips, videos and errors parts, and their key-value metadata
    videos.py     the per-video aggregation maths (mean embedding, mean softmax, top labels)
    writer.py     PartWriter, RunWriter: whole videos, parts written atomically, signals held during a commit
    reader.py     read_clips, read_embeddings, read_errors, read_videos
    committed.py  the resume set: the ids of a shard OUT holds, compact
    lock.py       ShardLock: one writer per shard
    storage.py    where OUT lives: a local folder (pathlib.Path) or an object store (ObjectPath: s3://, gs://, az://,
                  ...); how each makes a file visible whole and creates one only if absent; Parquet through either

Every function here that takes OUT takes a local path or an fsspec URL (`s3://bucket/prefix`): out_path(out) gives
the path type of its backend.
"""

from .committed import committed_ids, committed_parts, committed_video_ids
from .layout import (
    CLIPS_DIR,
    ERRORS_DIR,
    FORMAT,
    RUN_FILE,
    VIDEOS_DIR,
    config_hash,
    diff_configs,
    list_parts,
    load_run,
    prepare_output,
    retire_errors,
    write_atomic,
)
from .lock import ShardLock
from .reader import read_clip_part, read_clips, read_embeddings, read_errors, read_videos
from .schemas import EMBEDDING_DTYPES, clip_schema, error_schema, file_metadata, schemas_for_run, video_schema
from .storage import ObjectPath, is_url, out_path
from .videos import VideoAccumulator, aggregate_video, video_labels
from .writer import PartWriter, RunWriter, deferred_signals, fixed_size_list

__all__ = [
    "CLIPS_DIR", "EMBEDDING_DTYPES", "ERRORS_DIR", "FORMAT", "RUN_FILE", "VIDEOS_DIR", "ObjectPath", "PartWriter",
    "RunWriter", "ShardLock", "VideoAccumulator", "aggregate_video", "clip_schema", "committed_ids", "committed_parts",
    "committed_video_ids", "config_hash", "deferred_signals", "diff_configs", "error_schema", "file_metadata",
    "fixed_size_list", "is_url", "list_parts", "load_run", "out_path", "prepare_output", "read_clip_part",
    "read_clips", "read_embeddings", "read_errors", "read_videos", "retire_errors", "schemas_for_run", "video_labels",
    "video_schema", "write_atomic",
]
