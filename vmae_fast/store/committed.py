"""The resume set: which videos of a shard OUT already holds (a clips part, or an errors part), as a compact
ids.KeySet, read a row group at a time; and what a Ray run's groups committed.

committed_ids(out, shard, num_shards) gives the ids of one shard committed in a clips part, or an errors part
unless include_errors=False (`--retry-errors` redoes those). A part's name says who wrote it (store/layout.py): a
Ray group's part mixes shards and is read whole and hashed (ids from the dictionary pages, once per row group). A
shard's part holds one shard's ids, but its name does not say under which shard count (a rerun may use another),
so its first ids are checked before it is skipped or taken whole; that check also finds the Ray groups of outputs
written before group names existed (16c2a40 and earlier: groups under shard names), which mix shards.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Collection, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..ids import KeySet, id_keys, shards_of
from .layout import CLIPS_DIR, ERRORS_DIR, Part, list_parts
from .storage import out_path, parquet_file, read_table

SAMPLE = 64  # ids of a part checked to tell whether it holds one shard's ids (committed_ids)


def _row_group_ids(path) -> Iterator[list[str]]:
    """Distinct video_ids of each row group of a part (from its dictionary when the column is dictionary-encoded),
    one row group at a time: memory holds one group's ids (a video's clips may span two groups: repeats are
    dropped later)."""
    with parquet_file(path, read_dictionary=["video_id"]) as f:
        for g in range(f.metadata.num_row_groups):
            column = f.read_row_group(g, columns=["video_id"]).column("video_id")
            pieces = [chunk.dictionary if pa.types.is_dictionary(chunk.type) else chunk for chunk in column.chunks]
            if pieces:
                yield pc.unique(pa.concat_arrays([p.cast(pa.string()) for p in pieces])).to_pylist()


def _holds_one_shard(path, part: Part, num_shards: int) -> bool:
    """True when `part` is a shard's part whose first SAMPLE distinct ids all belong to the shard its name gives:
    it was written by that shard of this shard count (a part written under another count, or an old output's Ray
    group under a shard name, mixes shards, and SAMPLE of its ids land in one shard with probability <= 2^-64; a
    part of shard s of k*n holds ids of shard s % n only, and its name says s >= n unless s % n == s). False: the
    part is read whole and filtered. A Ray group's part (by its name) is never one shard's."""
    if part.group or part.number >= num_shards:
        return False
    with parquet_file(path, read_dictionary=["video_id"]) as f:
        if f.metadata.num_row_groups == 0:
            return False
        column = f.read_row_group(0, columns=["video_id"]).column("video_id")
    chunk = column.chunk(0) if column.num_chunks else None
    if chunk is None:
        return False
    values = chunk.dictionary if pa.types.is_dictionary(chunk.type) else pc.unique(chunk)
    ids = values.slice(0, SAMPLE).cast(pa.string()).to_pylist()
    return len(ids) == SAMPLE and bool((shards_of(ids, num_shards) == part.number).all())


def committed_parts(out: str | os.PathLike, *, include_errors: bool = True) -> list[tuple[str, Part]]:
    """The committed parts committed_ids reads: (CLIPS_DIR, part)s, then (ERRORS_DIR, part)s unless
    include_errors=False. A part, once committed, never changes: ids read from some stay true as others appear."""
    out = out_path(out)
    folders = [CLIPS_DIR] + ([ERRORS_DIR] if include_errors else [])
    return [(folder, part) for folder in folders for part in list_parts(out / folder)]


def committed_ids(out: str | os.PathLike, shard: int = 0, num_shards: int = 1, *,
                  include_errors: bool = True, parts: Collection[tuple[str, Part]] | None = None) -> KeySet:
    """The video_ids of shard `shard` of `num_shards` committed in OUT: in a clips part, or in an errors part unless
    include_errors=False; or in `parts` only (as committed_parts gives them). A KeySet: `video_id in s`,
    s.lookup(id_keys(batch)), len(s).

    A part whose sampled ids show it holds one other shard's ids is skipped after reading its first row group; a
    part of this shard is taken whole; any other part (a Ray group's, one of another shard count) is read whole and
    its ids hashed to keep this shard's: resuming costs about this shard's share of OUT."""
    return KeySet(committed_keys(out, shard, num_shards, include_errors=include_errors, parts=parts))


def committed_keys(out: str | os.PathLike, shard: int = 0, num_shards: int = 1, *,
                   include_errors: bool = True, parts: Collection[tuple[str, Part]] | None = None) -> np.ndarray:
    """committed_ids' keys before they become a set: (n, 2) uint64 (ids.id_keys), repeats possible (a video's
    clips across two row groups), for KeySet.add(keys, unique=False)."""
    out = out_path(out)
    if parts is None:
        parts = committed_parts(out, include_errors=include_errors)
    keys = [np.zeros((0, 2), np.uint64)]
    for folder, part in parts:
        path = out / folder / part.name
        one_shard = num_shards > 1 and _holds_one_shard(path, part, num_shards)
        if one_shard and part.number != shard:
            continue
        for ids in _row_group_ids(path):
            if num_shards > 1 and not one_shard:
                ids = [ids[i] for i in np.flatnonzero(shards_of(ids, num_shards) == shard)]
            keys.append(id_keys(ids))
    return np.concatenate(keys)


def committed_video_ids(out: str | os.PathLike) -> set[str]:
    """video_ids present in any committed clips or errors part, of any shard (a video is never in two parts)."""
    out = out_path(out)
    done: set[str] = set()
    for d in (out / CLIPS_DIR, out / ERRORS_DIR):
        for part in list_parts(d):
            column = read_table(d / part.name, columns=["video_id"]).column("video_id")
            done.update(column.unique().to_pylist())
    return done


def group_outcomes(out: str | os.PathLike, first_group: int) -> tuple[Counter, int, set[str]]:
    """What the Ray groups numbered >= first_group (one driver's run) committed: (parts per video_id over the clips
    and errors parts, clip rows, video_ids with an error row). A correct run has every video of its groups in one
    part exactly."""
    out = out_path(out)
    parts: Counter = Counter()
    rows = 0
    failed: set[str] = set()
    for d in (CLIPS_DIR, ERRORS_DIR):
        for part in list_parts(out / d):
            if not part.group or part.number < first_group:
                continue
            ids = read_table(out / d / part.name, columns=["video_id"]).column("video_id")
            parts.update(ids.unique().to_pylist())
            if d == CLIPS_DIR:
                rows += len(ids)
            else:
                failed.update(ids.to_pylist())
    return parts, rows, failed
