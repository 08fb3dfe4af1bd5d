"""The resume set: which videos of a shard OUT already holds (a clips part, or an errors part), as a compact
ids.KeySet, read a row group at a time.

committed_ids(out, shard, num_shards) gives the ids of one shard committed in a clips part, or an errors part
unless include_errors=False (`--retry-errors` redoes those). A part's name gives the shard that wrote it, but not
under which shard count (a rerun may use another), so a part's first ids are checked before it is skipped or
taken whole; parts that mix shards are read whole and hashed (ids from the dictionary pages, once per row group).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..ids import KeySet, id_keys, shards_of
from .layout import CLIPS_DIR, ERRORS_DIR, list_parts

SAMPLE = 64  # ids of a part checked to tell whether it holds one shard's ids (committed_ids)


def _row_group_ids(path: Path) -> Iterator[list[str]]:
    """Distinct video_ids of each row group of a part (from its dictionary when the column is dictionary-encoded),
    one row group at a time: memory holds one group's ids (a video's clips may span two groups: repeats are
    dropped later)."""
    f = pq.ParquetFile(path, read_dictionary=["video_id"])
    for g in range(f.metadata.num_row_groups):
        column = f.read_row_group(g, columns=["video_id"]).column("video_id")
        pieces = [chunk.dictionary if pa.types.is_dictionary(chunk.type) else chunk for chunk in column.chunks]
        if pieces:
            yield pc.unique(pa.concat_arrays([p.cast(pa.string()) for p in pieces])).to_pylist()


def _holds_one_shard(path: Path, part_shard: int, num_shards: int) -> bool:
    """True when the first SAMPLE distinct ids of a part all belong to the shard its name gives: it was written by
    that shard of this shard count (a part written under another count mixes shards, and SAMPLE of its ids land in
    one shard with probability <= 2^-64; a part of shard s of k*n holds ids of shard s % n only, and its name
    says s >= n unless s % n == s). False: the part is read whole and filtered."""
    if part_shard >= num_shards:
        return False
    f = pq.ParquetFile(path, read_dictionary=["video_id"])
    if f.metadata.num_row_groups == 0:
        return False
    column = f.read_row_group(0, columns=["video_id"]).column("video_id")
    chunk = column.chunk(0) if column.num_chunks else None
    if chunk is None:
        return False
    values = chunk.dictionary if pa.types.is_dictionary(chunk.type) else pc.unique(chunk)
    ids = values.slice(0, SAMPLE).cast(pa.string()).to_pylist()
    return len(ids) == SAMPLE and bool((shards_of(ids, num_shards) == part_shard).all())


def committed_ids(out: str | os.PathLike, shard: int = 0, num_shards: int = 1, *,
                  include_errors: bool = True) -> KeySet:
    """The video_ids of shard `shard` of `num_shards` committed in OUT: in a clips part, or in an errors part unless
    include_errors=False. A KeySet: `video_id in s`, s.lookup(id_keys(batch)), len(s).

    A part whose sampled ids show it holds one other shard's ids is skipped after reading its first row group; a
    part of this shard is taken whole; any other part (another shard count, the Ray engine's group parts) is read
    whole and its ids hashed to keep this shard's: resuming costs about this shard's share of OUT."""
    out = Path(out)
    folders = [out / CLIPS_DIR] + ([out / ERRORS_DIR] if include_errors else [])
    keys = []
    for folder in folders:
        for name, part_shard, _ in list_parts(folder):
            one_shard = num_shards > 1 and _holds_one_shard(folder / name, part_shard, num_shards)
            if one_shard and part_shard != shard:
                continue
            for ids in _row_group_ids(folder / name):
                if num_shards > 1 and not one_shard:
                    ids = [ids[i] for i in np.flatnonzero(shards_of(ids, num_shards) == shard)]
                keys.append(id_keys(ids))
    return KeySet(np.concatenate(keys) if keys else None)  # one sort; repeats (row-group boundaries) dropped


def committed_video_ids(out: str | os.PathLike) -> set[str]:
    """video_ids present in any committed clips or errors part, of any shard (a video is never in two parts)."""
    out = Path(out)
    done: set[str] = set()
    for d in (out / CLIPS_DIR, out / ERRORS_DIR):
        for name, _, _ in list_parts(d):
            column = pq.read_table(d / name, columns=["video_id"]).column("video_id")
            done.update(column.unique().to_pylist())
    return done
