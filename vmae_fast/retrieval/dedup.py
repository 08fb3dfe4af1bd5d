"""Near-duplicate groups of an extract output (`vmae-fast dedup`): videos (or clips) whose embeddings are closer than a
threshold, linked into groups as connected components, one representative kept per group.

    result = find_groups("out", level="video")            # threshold chosen from the output itself
    result = find_groups("out", level="video", threshold=0.97)
    write_groups(result)                                   # OUT/dedup/video.parquet + video.json
    write_keep_list(result, "keep.txt")                    # one video per group, and every video in none

How:
1. Neighbours: each row's k nearest rows by cosine similarity, from the level's FAISS index when `vmae-fast index`
   built one (its tuned setting; query vectors streamed from the Parquet rows in the index's row order), else by an
   exact search in memory (outputs up to EXACT_MAX_ROWS rows). A row whose k-th neighbour is still above the
   threshold is searched again with 4x k (up to MAX_NEIGHBOURS), so a group is all the rows above the threshold.
2. The threshold, unless given: the similarities of THRESHOLD_RANKS nearest neighbours of up to THRESHOLD_SAMPLE rows,
   as log10(1 - similarity) (near-duplicates differ from each other by orders of magnitude less than distinct videos
   do), smoothed (a Gaussian kernel density, Silverman's bandwidth kept within 0.1-0.25 decades). Distinct videos
   make the mode that holds the median of the rows' 4th nearest neighbours (another video unless the row has 4
   copies or more, which takes half the rows to move the median; in an output of fewer than 8 rows, where the 4th
   is among a row's least similar, the farthest of its nearer half); those less similar (scenes unlike all others)
   are never taken for near-duplicates. Near-duplicates form a separate mode above it: the nearest mode above it
   with a deep valley between (at most VALLEY_RATIO of the lower peak), and the threshold is the middle of the widest
   gap between samples from that mode's peak to the distinct one's. No such valley (one mode, or only shallow dips):
   no threshold, no groups, and the summary says so.
   The rule looks at the output only: it knows no model, so it means the same for random and real weights.
3. Groups: union-find over the edges above the threshold, streamed batch by batch. Memory beyond the index: per row
   8 bytes (the union-find parent), 4 (its best similarity) and 4 (its number of clips), and the index's row map, so
   10^7 videos take ~160 MB; never the vectors of more than one batch (stream_rows: the video level too).
4. Per group: the representative is the member with the most clips (the longest: an original beside its trims), then
   the first in the output's order; `similarity` is a member's highest cosine similarity to another member.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..extraction.inputs import LIST_EXTENSIONS
from ..faults import InvalidOption, UnusableOutput
from ..store.layout import dedup_files, write_atomic
from ..store.storage import out_path
from .index import LEVELS, Index, data_fingerprint, stream_rows
from .plan import faiss_search

NEIGHBOURS = 16  # k of the neighbour search
MAX_NEIGHBOURS = 4096  # a row with more neighbours above the threshold keeps its 4096 nearest (the summary counts them)
EXACT_MAX_ROWS = 50_000  # without an index: exact search in memory up to here (50k x 50k x 768 ~ 2e12 flops)
THRESHOLD_SAMPLE = 100_000  # rows whose neighbour similarities choose the threshold
THRESHOLD_RANKS = 4  # their 1st..4th nearest neighbours: the 4th is another video even for a video with 3 copies
KEEP_LIST_EXTENSIONS = LIST_EXTENSIONS  # the keep list's formats: those of the lists `vmae-fast extract` reads
VALLEY_RATIO = 0.5  # a valley counts when it is at most this fraction of the lower of the two modes around it
GRID = 1024  # points of the density estimate
MIN_BANDWIDTH = 0.1  # decades of 1 - similarity: modes closer than a few of these are not "far apart"
MAX_BANDWIDTH = 0.25  # Silverman's rule over-smooths several modes (their spread counts as the width of one)
MIN_DISTANCE = 1e-7  # 1 - similarity below this counts as this (identical vectors)
BATCH = 16_384


@dataclass
class DedupResult:
    """What find_groups found. Arrays are per row of the level, in the output's (index) row order."""

    out: Path
    level: str
    threshold: float | None
    threshold_info: dict[str, Any]
    search: str  # how neighbours were found: "exact" or the index's description
    metadata: pa.Table  # video_id (+ path, clip_index, start_s, end_s, num_clips as the level has them)
    root: np.ndarray  # int64: the group's first row (a row alone is its own root)
    similarity: np.ndarray  # float32: highest similarity to another member (NaN for a row alone)
    representative: np.ndarray  # bool
    group_id: np.ndarray  # int64: 0..groups-1 in order of first row, -1 for a row alone
    group_size: np.ndarray  # int32
    capped: int = 0  # rows with more than MAX_NEIGHBOURS neighbours above the threshold
    histogram: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    fingerprint: str | None = None

    @property
    def rows(self) -> int:
        return len(self.root)

    @property
    def groups(self) -> int:
        return int(self.group_id.max()) + 1 if len(self.group_id) and self.group_id.max() >= 0 else 0

    @property
    def members(self) -> int:
        return int((self.group_id >= 0).sum())

    def keep(self) -> np.ndarray:
        """bool per row: one per group (its representative) and every row in no group."""
        return (self.group_id < 0) | self.representative


# --- the threshold ----------------------------------------------------------------------------------------------------
def _distance_log(similarities: np.ndarray) -> np.ndarray:
    return np.log10(np.clip(1.0 - np.asarray(similarities, np.float64), MIN_DISTANCE, 2.0))


def choose_threshold(similarities: np.ndarray, others: np.ndarray) -> dict[str, Any]:
    """The near-duplicate threshold from neighbour similarities (see the module docstring, step 2): `similarities`
    of each sampled row's 1st..THRESHOLD_RANKS-th nearest neighbours, `others` one of them per row that is another
    video unless the row has THRESHOLD_RANKS copies (its THRESHOLD_RANKS-th; _threshold_sample).

    Returns {"value": threshold or None, "how": "valley" | "none", "reason", "samples", "bandwidth" (decades of
    1 - s), "modes": [similarity of the near-duplicate mode, of the distinct mode], "valley_ratio"}."""
    s = np.asarray(similarities, np.float64)
    s = s[np.isfinite(s)]
    info: dict[str, Any] = {"value": None, "how": "none", "samples": int(len(s)), "modes": None, "valley_ratio": None}
    f = np.asarray(others, np.float64)
    f = f[np.isfinite(f)]
    if len(s) < 4 or not len(f):
        return {**info, "reason": f"too few neighbour similarities ({len(s)}) to see two modes"}
    x = _distance_log(s)
    spread = min(float(np.std(x)), float(np.subtract(*np.percentile(x, [75, 25]))) / 1.34)
    if spread <= 0:
        spread = float(np.std(x))
    if spread <= 0:
        return {**info, "reason": "every neighbour is exactly as similar: one mode"}
    # Silverman's rule, within [MIN_BANDWIDTH, MAX_BANDWIDTH]: a small mode of near-duplicates is one bump, not a
    # spike per sample, and modes a decade apart stay apart
    bandwidth = min(max(0.9 * spread * len(x) ** -0.2, MIN_BANDWIDTH), MAX_BANDWIDTH)
    lo, hi = x.min() - 3 * bandwidth, x.max() + 3 * bandwidth
    grid = np.linspace(lo, hi, GRID)
    counts, _ = np.histogram(x, bins=GRID, range=(lo - (hi - lo) / (2 * (GRID - 1)), hi + (hi - lo) / (2 * (GRID - 1))))
    step = grid[1] - grid[0]
    half = int(np.ceil(4 * bandwidth / step))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * step / bandwidth) ** 2)
    density = np.convolve(counts, kernel, mode="same")
    info["bandwidth"] = round(bandwidth, 4)
    peaks = [i for i in range(1, GRID - 1) if density[i] > density[i - 1] and density[i] >= density[i + 1]]
    if len(peaks) < 2:
        return {**info, "reason": "the neighbour similarities form one mode: no separate mode of near-duplicates"}
    # The distinct videos' mode is the one that holds the median of `others` (another video for any row with fewer
    # than THRESHOLD_RANKS copies); modes of distinct videos less similar than it (scenes unlike all others) are not
    # near-duplicates of anything. The near-duplicates are what a deep valley separates from it on the similar side:
    # of the modes there, the nearest one with a deep valley between (further ones, e.g. exact copies beside
    # re-encodes, are more of the same).
    distinct = _uphill(density, int(np.searchsorted(grid, np.median(_distance_log(f)))))
    best = deepest = None  # (ratio, near-duplicate peak, valley, distinct peak)
    for p in sorted((p for p in peaks if p < distinct), reverse=True):
        valley = p + int(np.argmin(density[p:distinct + 1]))
        ratio = density[valley] / min(density[p], density[distinct])
        if deepest is None or ratio < deepest[0]:
            deepest = (ratio, p, valley, distinct)
        if ratio <= VALLEY_RATIO:
            best = (ratio, p, valley, distinct)
            break
    if deepest is None:
        return {**info, "reason": "no mode of neighbour similarity above the distinct videos' mode: no separate "
                                  "mode of near-duplicates"}
    ratio, left, valley, right = best or deepest
    # the cut: the middle of the widest gap between samples from one mode's peak to the other's (where the valley
    # is empty, its middle; a stray sample inside it does not pull the cut onto itself)
    inside = np.sort(x[(x > grid[left]) & (x < grid[right])])
    bounds = np.concatenate([[grid[left]], inside, [grid[right]]])
    widest = int(np.argmax(np.diff(bounds)))
    cut = (bounds[widest] + bounds[widest + 1]) / 2
    similar, other = grid < cut, grid > cut  # the modes reported: the highest density on each side of the cut
    info.update(modes=[round(1 - 10 ** grid[similar][np.argmax(density[similar])], 6),
                       round(1 - 10 ** grid[other][np.argmax(density[other])], 6)],
                valley_ratio=round(float(ratio), 4))
    if (x < cut).sum() < 2:  # a near-duplicate pair gives two samples, one of each member
        return {**info, "reason": "a single neighbour similarity stands apart: no mode of near-duplicates"}
    if ratio > VALLEY_RATIO:
        return {**info, "reason": f"no separate mode of near-duplicates: the deepest dip between two modes of "
                                  f"neighbour similarity is {ratio:.0%} of the lower mode (a separate mode dips "
                                  f"below {VALLEY_RATIO:.0%})"}
    value = float(1 - 10 ** cut)
    return {**info, "value": round(value, 6), "how": "valley",
            "reason": f"the valley between the mode of near-duplicates (similarity ~{info['modes'][0]:.4g}) and the "
                      f"mode of distinct videos (~{info['modes'][1]:.4g})"}


def _uphill(density: np.ndarray, i: int) -> int:
    """The peak of `density` that climbing from grid point i (clipped to the grid) reaches."""
    i = min(max(i, 0), len(density) - 1)
    while True:
        j = i
        if i > 0 and density[i - 1] > density[j]:
            j = i - 1
        if i + 1 < len(density) and density[i + 1] > density[j]:
            j = i + 1
        if j == i:
            return i
        i = j


def similarity_histogram(similarities: np.ndarray, threshold: float | None, edges: tuple = (
        0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0000001)) -> dict[str, Any]:
    """Counts of similarities per bin (edges in similarity, finer towards 1), for the summary. The outer bins stretch
    to hold every value: identical vectors can score a rounding above 1 (float32 1.0000001 > 1.0000001 in float64)."""
    s = np.asarray(similarities, np.float64)
    lo = min(float(s.min()), edges[0]) if len(s) else edges[0]
    hi = max(float(s.max()), edges[-1]) if len(s) else edges[-1]
    bins = [lo, *edges[1:-1], hi]
    counts, _ = np.histogram(s, bins=bins)
    return {"edges": [round(b, 7) for b in bins], "counts": counts.tolist(), "threshold": threshold}


# --- neighbours -------------------------------------------------------------------------------------------------------
class _Searcher:
    """k nearest rows of query vectors: through a built index (its tuned setting) or exactly, in memory."""

    def __init__(self, out: Path, level: str, exact: bool | None, batch_size: int, log: Callable[[str], None]):
        has_index = Index.paths(out, level)["manifest"].is_file()
        if exact is False and not has_index:
            Index.load(out, level)  # raises, naming the command that builds it
        self.index = None
        if has_index and not exact:
            self.index = Index.load(out, level)
            self.n = len(self.index)
            self.part_order = self.index.manifest["part_order"]
            self.metadata = self.index.metadata
            stats = self.index.stats
            exact = self.index.kind == "flat" and not stats.get("queries")
            self.description = f"{level}-level {self.index.kind} index" + (
                "" if exact else f", recall@10 {stats['recall_at_10']:.3f} measured")
            return
        unit = "clips" if level == "clip" else "videos"
        vectors, tables = [], []
        count = 0
        for _, x, meta in stream_rows(out, level, batch_size=batch_size):
            count += len(x)
            if count > EXACT_MAX_ROWS:
                raise UnusableOutput(f"{out} has more than {EXACT_MAX_ROWS} {unit}: too many for an exact search in "
                                 f"memory; build an index first: `vmae-fast index {out} --level {level}`")
            vectors.append(x)
            tables.append(meta)
        if not vectors:
            raise UnusableOutput(f"{out} has no {unit} to compare")
        self.vectors = np.concatenate(vectors)
        self.n = len(self.vectors)
        self.part_order = None
        self.metadata = pa.concat_tables(tables)
        self.flat = faiss.IndexFlatIP(self.vectors.shape[1])
        self.flat.add(self.vectors)
        self.description = f"exact search over {self.n} {unit}"
        log(f"exact search over {self.n} {unit} (no {level}-level index)")

    def batches(self, out: Path, level: str, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, unit query vectors) of every row, in row order."""
        if self.index is None:
            for s in range(0, self.n, batch_size):
                yield s, self.vectors[s:s + batch_size]
            return
        ids = self.metadata.column("video_id")
        for first, x, meta in stream_rows(out, level, self.part_order, batch_size):
            if not meta.column("video_id").equals(ids.slice(first, len(x))):
                raise UnusableOutput(f"the {level}-level index of {out} does not match its rows at row {first}; "
                                 f"rebuild it: `vmae-fast index {out} --level {level} --rebuild`")
            yield first, x

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.n)
        if self.index is None:
            return self.flat.search(x, k)
        return faiss_search(self.index.faiss_index, x, k, self.index.setting)


def _neighbours(searcher: _Searcher, rows: np.ndarray, x: np.ndarray, k: int, threshold: float | None):
    """(query row, neighbour row, similarity, rows capped) of the queries x, whose own row numbers are `rows` (self
    is excluded): the k nearest, and with a threshold every neighbour above it (rows whose k-th neighbour is above
    it are searched again with 4x k, up to MAX_NEIGHBOURS)."""
    sims, ids = searcher.search(x, k + 1)
    found = [(np.repeat(rows, ids.shape[1]), ids.ravel(), sims.ravel())]
    capped = 0
    if threshold is not None:
        kk = k
        full = sims[:, -1] >= threshold  # maybe more above the threshold than the k found
        while full.any() and ids.shape[1] < searcher.n:
            if kk >= MAX_NEIGHBOURS:
                capped = int(full.sum())
                break
            kk = min(kk * 4, MAX_NEIGHBOURS)
            sub = np.nonzero(full)[0]
            sims, ids = searcher.search(x[sub], kk + 1)
            found.append((np.repeat(rows[sub], ids.shape[1]), ids.ravel(), sims.ravel()))
            full_sub = sims[:, -1] >= threshold
            full = np.zeros(len(x), bool)
            full[sub[full_sub]] = True
    a = np.concatenate([f[0] for f in found])
    b = np.concatenate([f[1] for f in found])
    s = np.concatenate([f[2] for f in found])
    keep = (b >= 0) & (b != a)
    return a[keep], b[keep], s[keep], capped


# --- union-find ------------------------------------------------------------------------------------------------------
def _find(parent: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Roots of x (vectorized), compressing the paths walked. parent[i] <= i always, so this ends."""
    r = parent[x]
    while True:
        up = parent[r]
        if np.array_equal(up, r):
            break
        r = up
    parent[x] = r
    return r


def _union(parent: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Link the groups of a[i] and b[i] for every i: the larger root points to the smaller (vectorized; writes that
    collide on one root lose, and are linked again on the next turn)."""
    while len(a):
        ra, rb = _find(parent, a), _find(parent, b)
        apart = ra != rb
        if not apart.any():
            return
        ra, rb, a, b = ra[apart], rb[apart], a[apart], b[apart]
        parent[np.maximum(ra, rb)] = np.minimum(ra, rb)


# --- finding the groups -----------------------------------------------------------------------------------------------
def find_groups(out: str | os.PathLike, level: str = "video", threshold: float | None = None, *,
                exact: bool | None = None, k: int = NEIGHBOURS, batch_size: int = BATCH,
                log: Callable[[str], None] | None = None) -> DedupResult:
    """Near-duplicate groups of OUT's videos (level "video") or clips (level "clip"); see the module docstring.

    threshold: cosine similarity at or above which two rows are near-duplicates (default: chosen from the output).
    exact: True searches exactly in memory (at most EXACT_MAX_ROWS rows), False requires the level's index, None
    uses the index when built, else exact."""
    t0 = time.perf_counter()
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise ValueError(f"the threshold is a cosine similarity in [-1, 1], got {threshold}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    log = log or (lambda message: None)
    out = out_path(out)
    searcher = _Searcher(out, level, exact, batch_size, log)
    n = searcher.n

    sample = None  # neighbour similarities for the threshold
    nearest = np.full(n, np.nan, np.float32)  # each row's nearest-neighbour similarity, for the histogram
    cached = None  # the sample's edges when the sample is every row (searched once)
    if threshold is None:
        sample, others, cached, sampled_nearest = _threshold_sample(searcher, out, level, k, batch_size)
        nearest[sampled_nearest[0]] = sampled_nearest[1]
        info = choose_threshold(sample, others)
        threshold = info["value"]
        log(f"threshold {threshold}: {info['reason']}" if threshold is not None else info["reason"])
    else:
        info = {"value": threshold, "how": "given", "reason": "given (--threshold)"}

    parent = np.arange(n, dtype=np.int64)
    similarity = np.full(n, -np.inf, np.float32)
    capped = 0
    if threshold is not None:
        if cached is not None and not _saturated(*cached, threshold, n):
            edge_batches: Iterator = iter([cached[:4]])  # no row may have more neighbours above the threshold
        else:
            edge_batches = (_neighbours(searcher, np.arange(first, first + len(x)), x, k, threshold)
                            for first, x in searcher.batches(out, level, batch_size))
        for a, b, s, lost in edge_batches:
            capped += lost
            np.fmax.at(nearest, a, s)
            near = s >= threshold
            a, b, s = a[near], b[near], s[near]
            _union(parent, a, b)
            np.maximum.at(similarity, a, s)
            np.maximum.at(similarity, b, s)
    root = _find(parent, np.arange(n, dtype=np.int64))
    size = np.bincount(root, minlength=n).astype(np.int32)
    group_size = size[root]
    grouped = group_size >= 2
    # groups numbered in order of their first row (a root is its group's first row)
    first_rows = np.nonzero((root == np.arange(n)) & grouped)[0]
    number = np.full(n, -1, np.int64)
    number[first_rows] = np.arange(len(first_rows))
    group_id = np.where(grouped, number[root], -1)
    representative = np.zeros(n, bool)
    if len(first_rows):
        members = np.nonzero(grouped)[0]
        weight = _clips_per_row(searcher.metadata)
        order = np.lexsort((members, -weight[members], root[members]))  # by group, most clips, first row
        ordered = members[order]
        starts = np.r_[True, root[ordered][1:] != root[ordered][:-1]]
        representative[ordered[starts]] = True
    similarity[~grouped] = np.nan
    result = DedupResult(
        out=out, level=level, threshold=threshold, threshold_info=info, search=searcher.description,
        metadata=searcher.metadata, root=root, similarity=similarity, representative=representative,
        group_id=group_id, group_size=group_size, capped=capped,
        histogram=similarity_histogram(nearest[np.isfinite(nearest)], threshold),
        fingerprint=data_fingerprint(out)["sha256"])
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


def _threshold_sample(searcher: _Searcher, out: Path, level: str, k: int, batch_size: int):
    """(similarities of the 1st..THRESHOLD_RANKS-th neighbours of up to THRESHOLD_SAMPLE rows spread over the
    output; per row, the one choose_threshold anchors the distinct videos' mode on; when those rows are all of
    them, their edges (rows, neighbours, similarities, 0, k searched) to reuse, else None; (sampled rows, their
    nearest neighbour's similarity))."""
    n = searcher.n
    every = n <= THRESHOLD_SAMPLE
    wanted = np.unique((np.arange(min(n, THRESHOLD_SAMPLE)) * (n / min(n, THRESHOLD_SAMPLE))).astype(np.int64))
    k = max(k, THRESHOLD_RANKS)
    sims, others, edges, firsts = [], [], [], []
    for first, x in searcher.batches(out, level, batch_size):
        lo, hi = np.searchsorted(wanted, [first, first + len(x)])
        if hi == lo:
            continue
        rows = wanted[lo:hi]
        a, b, s, _ = _neighbours(searcher, rows, x[rows - first], k, None)
        rank = _rank_in_row(a)
        sims.append(s[rank < THRESHOLD_RANKS])
        starts = np.flatnonzero(np.r_[True, a[1:] != a[:-1]]) if len(a) else np.zeros(0, np.int64)
        found = np.diff(np.r_[starts, len(a)])  # neighbours found per row
        # the THRESHOLD_RANKS-th nearest, or in an output of fewer than 2 * THRESHOLD_RANKS rows the farthest of the
        # nearer half of the others (there the THRESHOLD_RANKS-th is among a row's least similar: of 5 rows, the
        # least, biased to the scenes unlike all others)
        others.append(s[starts + np.minimum(found, min(THRESHOLD_RANKS, n // 2)) - 1])
        firsts.append((a[rank == 0], s[rank == 0]))
        if every:
            edges.append((a, b, s))
    sample = np.concatenate(sims) if sims else np.zeros(0, np.float32)
    other = np.concatenate(others) if others else np.zeros(0, np.float32)
    nearest = tuple(np.concatenate([f[i] for f in firsts]) if firsts else np.zeros(0) for i in range(2))
    if not every:
        return sample, other, None, nearest
    return sample, other, (*(np.concatenate([e[i] for e in edges]) for i in range(3)), 0, k), nearest


def _saturated(a: np.ndarray, b: np.ndarray, s: np.ndarray, lost: int, k: int, threshold: float, n: int) -> bool:
    """Whether some row found k neighbours all above the threshold (it may have more: search again)."""
    count = np.bincount(a, minlength=n)
    lowest = np.full(n, np.inf, np.float32)
    np.minimum.at(lowest, a, s)
    return bool(((count >= k) & (lowest >= threshold)).any())


def _rank_in_row(rows: np.ndarray) -> np.ndarray:
    """Each entry's rank among the entries of its row (entries come grouped by row, best first)."""
    if not len(rows):
        return np.zeros(0, np.int64)
    starts = np.r_[True, rows[1:] != rows[:-1]]
    return np.arange(len(rows)) - np.maximum.accumulate(np.where(starts, np.arange(len(rows)), 0))


def _clips_per_row(metadata: pa.Table) -> np.ndarray:
    if "num_clips" in metadata.column_names:
        return metadata.column("num_clips").to_numpy(zero_copy_only=False).astype(np.int64)
    return np.zeros(metadata.num_rows, np.int64)


# --- writing ----------------------------------------------------------------------------------------------------------
def groups_table(result: DedupResult) -> pa.Table:
    """The members of every group, by group, representative first: video_id (+ clip_index, start_s, end_s at clip
    level), group_id int64, representative bool, similarity float32 (highest to another member), group_size int32."""
    members = np.nonzero(result.group_id >= 0)[0]
    order = members[np.lexsort((members, ~result.representative[members], result.group_id[members]))]
    meta = result.metadata
    columns = {"video_id": meta.column("video_id").take(pa.array(order))}
    if result.level == "clip":
        for name in ("clip_index", "start_s", "end_s"):
            if name in meta.column_names:
                columns[name] = meta.column(name).take(pa.array(order))
    columns.update({
        "group_id": pa.array(result.group_id[order], pa.int64()),
        "representative": pa.array(result.representative[order], pa.bool_()),
        "similarity": pa.array(result.similarity[order], pa.float32()),
        "group_size": pa.array(result.group_size[order], pa.int32()),
    })
    return pa.table(columns)


def summary(result: DedupResult) -> dict[str, Any]:
    """What the summary JSON holds: counts, the threshold and how it was chosen, the search, the largest groups."""
    sizes = np.bincount(result.group_id[result.group_id >= 0]) if result.groups else np.zeros(0, np.int64)
    largest = np.argsort(-sizes, kind="stable")[:5]
    ids = result.metadata.column("video_id")
    top = []
    for g in largest.tolist():
        rows = np.nonzero(result.group_id == g)[0]
        rows = rows[np.argsort(~result.representative[rows], kind="stable")]
        entry = {"group_id": g, "size": int(sizes[g]), "members": ids.take(pa.array(rows[:8])).to_pylist()}
        if result.level == "clip" and "clip_index" in result.metadata.column_names:
            entry["clips"] = result.metadata.column("clip_index").take(pa.array(rows[:8])).to_pylist()
        top.append(entry)
    return {"level": result.level, "rows": result.rows, "groups": result.groups, "members": result.members,
            "kept": int(result.keep().sum()), "dropped": result.members - result.groups,
            "threshold": result.threshold, "threshold_rule": result.threshold_info, "search": result.search,
            "capped_rows": result.capped, "histogram": result.histogram, "largest_groups": top,
            "seconds": result.seconds, "fingerprint": result.fingerprint,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_groups(result: DedupResult) -> dict[str, Path]:
    """OUT/dedup/<level>.parquet (groups_table) and <level>.json (summary), each written whole (temp + rename)."""
    paths = dedup_files(result.out, result.level)
    paths["groups"].parent.mkdir(exist_ok=True)
    buffer = pa.BufferOutputStream()
    pq.write_table(groups_table(result), buffer, compression="zstd")
    write_atomic(paths["groups"], buffer.getvalue().to_pybytes(), f".{paths['groups'].name}.tmp")
    write_atomic(paths["summary"], (json.dumps(summary(result), indent=1) + "\n").encode(),
                 f".{paths['summary'].name}.tmp")
    return paths


def keep_list_problem(path: str | os.PathLike) -> str | None:
    """Why no keep list can be written at `path` by its name (None: it can): its extension names the format, and a
    file of another extension would be read by `vmae-fast extract` as a video, not as a list."""
    suffix = Path(path).suffix.lower()
    if suffix in KEEP_LIST_EXTENSIONS:
        return None
    named = f"the extension {suffix!r} names" if suffix else "a name without an extension names"
    return f"{named} no keep-list format: name a .txt, .csv or .parquet file (the lists `vmae-fast extract` reads)"


def write_keep_list(result: DedupResult, path: str | os.PathLike) -> int:
    """The rows to keep (one per group and every row in none), in the output's order; returns how many. By the
    file's extension: .csv or .parquet with path and video_id columns, a list `vmae-fast extract` reads (at clip
    level also clip_index, start_s, end_s, and video_id VIDEO_ID:CLIP_INDEX: extract takes each kept clip as a time
    range of its own, and refuses a video_id given twice), .txt one video_id a line (clip level:
    VIDEO_ID:CLIP_INDEX, as `search --clip` takes it); any other extension is refused (InvalidOption, see
    keep_list_problem)."""
    problem = keep_list_problem(path)
    if problem is not None:
        raise InvalidOption(f"keep list {path}: {problem}")
    path = Path(path)
    kept = result.metadata.filter(pa.array(result.keep()))
    clip_ids = (pc.binary_join_element_wise(kept.column("video_id"), pc.cast(kept.column("clip_index"), pa.string()),
                                            ":") if result.level == "clip" else None)  # VIDEO_ID:CLIP_INDEX
    if path.suffix.lower() in (".csv", ".parquet"):
        names = [c for c in ("path", "video_id", "clip_index", "start_s", "end_s") if c in kept.column_names
                 and (result.level == "clip" or c in ("path", "video_id"))]
        table = kept.select(names)
        if clip_ids is not None:  # one row per clip: the video's own id would repeat, which extract refuses
            table = table.set_column(names.index("video_id"), "video_id", clip_ids)
        if path.suffix.lower() == ".csv":
            buffer = io.BytesIO()
            pacsv.write_csv(table, buffer)
            data = buffer.getvalue()
        else:
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            data = sink.getvalue().to_pybytes()
    else:
        ids = kept.column("video_id") if clip_ids is None else clip_ids
        data = ("\n".join(ids.to_pylist()) + "\n").encode() if kept.num_rows else b""
    write_atomic(path, data, f".{path.name}.tmp")
    return kept.num_rows


def format_summary(result: DedupResult, paths: dict[str, Path] | None = None, keep_list: str | None = None) -> str:
    """One screen: counts, the threshold and why, the similarity histogram with the threshold marked, the largest
    groups, where it was written."""
    s = summary(result)
    unit = "videos" if result.level == "video" else "clips"
    lines = [f"vmae-fast dedup: {s['rows']} {unit} ({result.search}): {s['groups']} near-duplicate groups holding "
             f"{s['members']} {unit}; keeping one per group leaves {s['kept']} (drops {s['dropped']})"]
    rule = result.threshold_info
    if result.threshold is None:
        lines.append(f"no threshold: {rule['reason']}; pass --threshold T to group at a similarity of your choice")
    elif rule.get("how") == "given":
        lines.append(f"threshold {result.threshold:.6g} (given)")
    else:
        lines.append(f"threshold {result.threshold:.6g}, chosen from this output: {rule['reason']} (--threshold "
                     "overrides)")
    h = result.histogram
    if h.get("counts"):
        lines.append(f"nearest-neighbour similarity of {sum(h['counts'])} {unit}:")
        peak = max(h["counts"]) or 1
        for lo, hi, count in zip(h["edges"][:-1], h["edges"][1:], h["counts"], strict=True):
            mark = "  <- threshold" if result.threshold is not None and lo <= result.threshold < hi else ""
            label = f"{lo:.4f}-{min(hi, 1.0):.4f}"
            lines.append(f"  {label:>15} {count:>9}  {'#' * round(40 * count / peak)}{mark}")
    for g in s["largest_groups"][:3]:
        more = f", ... (+{g['size'] - len(g['members'])})" if g["size"] > len(g["members"]) else ""
        if result.level == "clip":
            g = {**g, "members": [f"{v}:{c}" for v, c in zip(g["members"], g["clips"], strict=True)]}
        lines.append(f"group {g['group_id']} ({g['size']} {unit}): {g['members'][0]} (kept), "
                     + ", ".join(g["members"][1:]) + more)
    if result.capped:
        lines.append(f"note: {result.capped} rows have more than {MAX_NEIGHBOURS} neighbours above the threshold; "
                     "each was linked to its nearest ones only")
    if paths:
        lines.append(f"-> {paths['groups']}, {paths['summary'].name}" + (f"; keep list {keep_list}" if keep_list
                                                                          else ""))
    return "\n".join(lines)
