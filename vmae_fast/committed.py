"""Compact sets of video_ids: what a shard has committed (resume), and what it has already seen (duplicates).

A video_id is held as its 16-byte key (blake2b-128 of the UTF-8 id) in sorted numpy runs, 16 bytes an id instead
of the ~100 a Python set of strings costs, and looked up a batch at a time with searchsorted. Two distinct ids
share a key with probability ~n^2 / 2^129 (1e-23 for 100M ids): the keys stand for the ids.

committed_ids(out, shard, num_shards) reads the `video_id` column of every committed part (clips, and errors
unless include_errors=False: `--retry-errors` redoes those) and keeps the ids of one shard. Parts are not trusted
to hold one shard's ids only (a rerun with another shard count writes ids of many shards under one part number),
so every part is read; each part's ids are taken from its dictionary pages (unique per row group) and hashed once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

KEY = np.dtype("S16")
_EMPTY = np.zeros(0, KEY)


def id_keys(ids: Sequence[str]) -> np.ndarray:
    """The 16-byte keys (numpy S16) of `ids`, in order."""
    if not ids:
        return _EMPTY
    blake2b = hashlib.blake2b
    return np.frombuffer(b"".join([blake2b(v.encode("utf-8"), digest_size=16, person=b"vmae-id").digest()
                                   for v in ids]), KEY)


class KeySet:
    """A set of id keys as a few sorted runs (sizes roughly halving), each with an int64 code per key (where the id
    was seen, for messages). add() appends a run and merges the last runs while they are of similar size, so a
    key costs O(log n) merges over its life; lookup() is one searchsorted per run."""

    def __init__(self, keys: np.ndarray | None = None, codes: np.ndarray | None = None):
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []
        if keys is not None and len(keys):
            self.add(keys, codes, unique=False)

    def __len__(self) -> int:
        return sum(len(k) for k, _ in self._runs)

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + c.nbytes for k, c in self._runs)

    def __contains__(self, video_id: str) -> bool:
        return bool(self.lookup(id_keys([video_id]))[0][0])

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(bool mask: key present, int64 code of the present ones, -1 elsewhere)."""
        found = np.zeros(len(keys), bool)
        codes = np.full(len(keys), -1, np.int64)
        for run, run_codes in self._runs:
            pos = np.searchsorted(run, keys)
            pos_ok = np.minimum(pos, len(run) - 1)
            hit = (pos < len(run)) & (run[pos_ok] == keys) & ~found
            found |= hit
            codes[hit] = run_codes[pos_ok[hit]]
        return found, codes

    def add(self, keys: np.ndarray, codes: np.ndarray | None = None, *, unique: bool = True) -> None:
        """Add keys (with their codes; default -1). unique=True: the caller checked that none is present and that
        they are distinct (see first_repeat); unique=False: repeats are dropped (the first code is kept)."""
        keys = np.asarray(keys, KEY)
        codes = np.full(len(keys), -1, np.int64) if codes is None else np.asarray(codes, np.int64)
        if not len(keys):
            return
        if not unique:
            present, _ = self.lookup(keys)
            keys, codes = keys[~present], codes[~present]
            keys, first = np.unique(keys, return_index=True)
            codes = codes[first]
        else:
            order = np.argsort(keys, kind="stable")
            keys, codes = keys[order], codes[order]
        self._runs.append((keys, codes))
        while len(self._runs) > 1 and len(self._runs[-2][0]) <= 2 * len(self._runs[-1][0]):
            (k1, c1), (k2, c2) = self._runs.pop(), self._runs.pop()
            k, c = np.concatenate([k2, k1]), np.concatenate([c2, c1])
            order = np.argsort(k, kind="stable")  # two sorted runs: the stable sort merges them
            self._runs.append((k[order], c[order]))

    def first_repeat(self, keys: np.ndarray) -> tuple[int, int | None, int | None] | None:
        """(i, code, None) for the first position i whose key is already in the set (code: the one stored with it),
        or (i, None, j) when it repeats the key at an earlier position j of `keys`, whichever comes first; None when
        every key is new."""
        present, codes = self.lookup(keys)
        i_set = int(np.argmax(present)) if present.any() else len(keys)
        _, first_pos, inverse = np.unique(keys, return_index=True, return_inverse=True)
        firsts = first_pos[inverse.reshape(-1)]  # position of each key's first occurrence in the batch
        repeats = np.flatnonzero(firsts != np.arange(len(keys)))
        i_batch = int(repeats[0]) if len(repeats) else len(keys)
        if i_set == i_batch == len(keys):
            return None
        if i_set <= i_batch:
            return i_set, int(codes[i_set]), None
        return i_batch, None, int(firsts[i_batch])


def _part_ids(path: Path) -> list[str]:
    """Distinct video_ids of one part, from the dictionaries of its row groups when it is dictionary-encoded."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    column = pq.read_table(path, columns=["video_id"], read_dictionary=["video_id"]).column("video_id")
    pieces = [chunk.dictionary if pa.types.is_dictionary(chunk.type) else chunk for chunk in column.chunks]
    if not pieces:
        return []
    return pc.unique(pa.concat_arrays([p.cast(pa.string()) for p in pieces])).to_pylist()


def committed_ids(out: str | os.PathLike, shard: int = 0, num_shards: int = 1, *,
                  include_errors: bool = True) -> KeySet:
    """The video_ids of shard `shard` of `num_shards` committed in OUT: in a clips part, or in an errors part unless
    include_errors=False. A KeySet: `video_id in s`, s.lookup(id_keys(batch)), len(s)."""
    from .inputs import shards_of
    from .store import CLIPS_DIR, ERRORS_DIR, list_parts

    out = Path(out)
    folders = [out / CLIPS_DIR] + ([out / ERRORS_DIR] if include_errors else [])
    found = KeySet()
    for folder in folders:
        for name, _, _ in list_parts(folder):
            ids = _part_ids(folder / name)
            if num_shards > 1:
                ids = [ids[i] for i in np.flatnonzero(shards_of(ids, num_shards) == shard)]
            found.add(id_keys(ids), unique=False)
    return found

