"""Nearest-neighbour search over clip embeddings: a FAISS index built by streaming the Parquet dataset in OUT, with its
recall measured on the data and its search parameters tuned to a target.

Vectors are L2-normalized, so the inner product the index ranks by is the cosine similarity. An index built from
OUT is saved in OUT/index/ next to a map from index row to clip (video_id, clip_index, crop_index, start_s, end_s,
path) and a fingerprint of the part files it was built from; loading refuses an index whose data has changed since, and
building again after new parts were extracted only adds their rows.

    from vmae_fast.retrieval import Index
    index = Index.build("out")                        # or Index.load("out") once built
    index.stats                                       # measured recall@10, its sample size, latency, memory
    matches = index.search(query_vectors, k=10)       # one list of Match per query

How an index is chosen and tuned (`plan.plan_index`, `Index.build`, `plan.tune`):
1. the family from the row count, the dimension and a memory budget (`max_memory`, default half the machine's RAM):
   exact `Flat` up to FLAT_MAX_ROWS rows; else `IVF<nlist>,Flat` (uncompressed vectors in inverted lists) when it
   fits; else `IVF<nlist>,PQ<m>x8,Refine(SQ8)` (PQ scan, 8-bit re-ranking); else `OPQ<m>,IVF<nlist>,PQ<m>x8` with
   the most code bytes that fit. nlist = the power of two nearest 4*sqrt(rows) (FAISS: 4..16 sqrt(n)), with an HNSW
   coarse quantizer from 4096 lists on (FAISS's advice from 1M vectors on).
2. after adding the vectors: TUNE_QUERIES held-out rows (never in the training sample) are searched, their exact
   top-10 computed by a flat scan streamed over every row, and the cheapest (nprobe, k_factor) or ef_search meeting
   target_recall is kept with the measured recall@10 and latency. No setting meeting it: the best one is kept,
   `stats["met"]` is False and `stats["suggestion"]` names the next index to try.
3. `build` again after new parts: their rows are added to the trained index (IVF centroids and codebooks kept) and
   recall measured again, until the rows outgrow RETRAIN_GROWTH (2x) the rows it was trained for: then a rebuild.

Levels: "clip" holds one row per clip (its center view, crop_index 1, when extract wrote three crops per clip);
"video" one row per video, its video-table embedding (the mean of all its views, store/videos.py) normalized.

"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..extraction.progress import progress_display
from ..faults import InvalidInput, InvalidOption, OutputNotADirectory, UnusableOutput
from ..store import CLIPS_DIR, VideoAccumulator
from ..store.layout import atomic_file, clip_parts, index_dir, run_path, video_part_of, write_atomic
from ..store.storage import dataset, out_path, parquet_file, read_metadata, read_schema, read_table
from .plan import (
    KINDS,
    RECALL_K,
    SEARCH_PARAMS,
    TARGET_RECALL,
    TUNE_QUERIES,
    default_memory,
    estimate_bytes,
    exact_top_k,
    faiss_search,
    human_bytes,
    latency,
    new_faiss_index,
    parse_memory,
    plan_index,
    tune,
)

LEVELS = ("clip", "video")
# Columns of the row -> clip map; any the dataset lacks are left out (and reported as None).
META_COLUMNS = ("video_id", "clip_index", "crop_index", "start_s", "end_s", "path")
FORMAT_VERSION = 2
RETRAIN_GROWTH = 2.0  # `build` adds new rows to a trained index until the data outgrows its training size 2x


class StaleIndexError(UnusableOutput):
    """The index in OUT/index was built from other data than OUT/clips holds now."""


@dataclass
class Match:
    """One search result. `row` is the index row; the other fields are None when the index has no metadata.

    At level "video", clip_index and crop_index are None, start_s/end_s span the video's clips and num_clips counts
    them. crop_index: the clip's spatial view (0 start, 1 center, 2 end of the long side; None for outputs written
    before crops existed).
    """

    row: int
    score: float  # cosine similarity in [-1, 1]
    video_id: str | None = None
    clip_index: int | None = None
    crop_index: int | None = None
    start_s: float | None = None
    end_s: float | None = None
    path: str | None = None
    num_clips: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None or k in ("video_id", "start_s", "end_s")}


# --- data fingerprint ------------------------------------------------------------------------------------------------
def clip_files(out: str | os.PathLike) -> list[Path]:
    """The committed clips parts of OUT in reading order (store.layout.clip_parts); ValueError when there are none."""
    out = out_path(out)
    if not out.is_dir():
        if out.exists():
            raise OutputNotADirectory(f"{str(out)!r} is a file, not an output folder of `vmae-fast extract`")
        raise UnusableOutput(f"output folder {str(out)!r} does not exist")
    files = clip_parts(out)
    if not files:
        raise UnusableOutput(
            f"{str(out)!r} has no clips (expected {out / CLIPS_DIR / 'part-*.parquet'}); "
            "run `vmae-fast extract` into it first"
        )
    return files


def data_fingerprint(out: str | os.PathLike) -> dict[str, Any]:
    """What an index built from OUT depends on: every part file's name, size and row count, and the run config.

    Cheap to compute (Parquet footers only), so every load checks it. A part rewritten with the same name, size and
    row count under the same run configuration would go unnoticed; extract never does that (parts are immutable and a
    new configuration changes _run.json).
    """
    out = out_path(out)
    parts = []
    for f in clip_files(out):
        parts.append([f.name, f.stat().st_size, read_metadata(f).num_rows])
    run_file = run_path(out)
    run_sha = None
    if run_file.is_file():  # the row-affecting configuration; _run.json's timestamps may change on a resume
        run = json.loads(run_file.read_text())
        run_sha = run.get("config_hash") or hashlib.sha256(run_file.read_bytes()).hexdigest()
    digest = hashlib.sha256(json.dumps([parts, run_sha]).encode()).hexdigest()
    return {"sha256": digest, "run_config": run_sha, "parts": parts}


def _part_changes(old: dict, new: dict) -> dict[str, list[str]]:
    old_parts = {p[0]: p[1:] for p in old.get("parts", [])}
    new_parts = {p[0]: p[1:] for p in new["parts"]}
    return {"added": sorted(set(new_parts) - set(old_parts)), "removed": sorted(set(old_parts) - set(new_parts)),
            "changed": sorted(n for n in set(old_parts) & set(new_parts) if old_parts[n] != new_parts[n])}


def _describe_change(old: dict, new: dict) -> str:
    """A short phrase saying how the data differs from what the index was built from."""
    bits = []
    for what, names in _part_changes(old, new).items():
        if names:
            bits.append(f"{len(names)} part file(s) {what} ({names[0]}{', ...' if len(names) > 1 else ''})")
    if old.get("run_config") != new["run_config"]:
        bits.append("the run configuration in _run.json changed")
    return "; ".join(bits) or "fingerprint differs"


# --- vectors ---------------------------------------------------------------------------------------------------------
def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as C-contiguous float32 (n, D); all-zero rows stay zero."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


def _embedding_dim(schema) -> int:
    if "embedding" not in schema.names:
        raise UnusableOutput(f"clips have no 'embedding' column (columns: {', '.join(schema.names)})")
    t = schema.field("embedding").type
    if not pa.types.is_fixed_size_list(t):
        raise UnusableOutput(f"'embedding' must be fixed_size_list<float>[D], got {t}")
    return t.list_size


def _batch_vectors(column, dim: int) -> np.ndarray:
    """fixed_size_list<float16|float32>[D] Arrow column -> float32 (n, D) numpy (one copy)."""
    if column.null_count:
        raise UnusableOutput(f"'embedding' has {column.null_count} null rows")
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(-1, dim).astype(np.float32, copy=False)


def _scan(files: list[Path], columns: list[str], batch_size: int) -> Iterator:
    """Record batches of at most batch_size rows over the part files, in order.

    ParquetFile.iter_batches on a buffered stream decodes batch_size rows at a time, even inside a large row group;
    the pyarrow.dataset scanner decodes whole row groups (extract may write 100k-row ones: ~1 GB at 768-d).
    """
    for f in files:
        with parquet_file(f, pre_buffer=False, buffer_size=1 << 20) as parquet:
            for batch in parquet.iter_batches(batch_size=batch_size, columns=columns, use_threads=False):
                if batch.num_rows:
                    yield batch


class _Rows:
    """The vectors of an index in row order, read as (first row, unit vectors float32 (b, D), metadata Table | None)
    batches: streamed from clip part files (clip level), from video parts or one clips part's aggregation at a time
    (video level), or sliced from an array held in memory (from_vectors)."""

    def __init__(self, n: int, dim: int, batches: Callable[[bool], Iterator]):
        self.n, self.dim, self._batches = n, dim, batches

    def batches(self, with_metadata: bool = False) -> Iterator[tuple[int, np.ndarray, Any]]:
        return self._batches(with_metadata)

    def pick(self, rows: np.ndarray) -> np.ndarray:
        """The unit vectors of the given sorted, distinct row numbers (all < n), float32 (len(rows), D), in one pass,
        filled into one array (no list of pieces to concatenate: the pick is held once)."""
        picked = np.empty((len(rows), self.dim), np.float32)
        filled = 0
        for first, x, _ in self.batches():
            lo, hi = np.searchsorted(rows, [first, first + len(x)])
            if hi > lo:
                picked[lo:hi] = x[rows[lo:hi] - first]
                filled += hi - lo
        if filled != len(rows):
            raise RuntimeError(f"picked {filled} of {len(rows)} rows: the data has fewer rows than {self.n} counted")
        return picked

    @classmethod
    def from_array(cls, x: np.ndarray, metadata=None, batch_size: int = 65_536) -> _Rows:
        def batches(with_metadata):
            for s in range(0, len(x), batch_size):
                meta = metadata.slice(s, batch_size) if with_metadata and metadata is not None else None
                yield s, x[s:s + batch_size], meta

        return cls(len(x), x.shape[1], batches)

    @classmethod
    def from_parts(cls, files: list[Path], n: int, dim: int, meta_cols: list[str], batch_size: int,
                   center_only: bool = False) -> _Rows:
        """center_only: only the rows with crop_index 1 (n counts those)."""
        def batches(with_metadata):
            first = 0
            columns = ["embedding", *meta_cols] if with_metadata else ["embedding"]
            if center_only and "crop_index" not in columns:
                columns.append("crop_index")
            for batch in _scan(files, columns, batch_size):
                if center_only:
                    batch = batch.filter(pc.equal(batch.column("crop_index"), 1))
                    if not batch.num_rows:
                        continue
                meta = pa.Table.from_batches([batch.select(meta_cols)]) if with_metadata else None
                yield first, normalize(_batch_vectors(batch.column("embedding"), dim)), meta
                first += batch.num_rows

        return cls(n, dim, batches)


def _sample_rows(n: int, train_size: int, queries: int, train_rule: dict | None = None):
    """(training rows, held-out query rows, rule), rows sorted and strided over all rows so that every part is
    represented. Query rows are never training rows. train_rule (the rule of an earlier build) gives the training
    rows of an index trained then: incremental adds keep its training sample and draw queries outside it."""
    nq = int(min(queries, max(1, n // 5)))
    qstep = max(1, n // max(nq, 1))
    qrows = np.arange(qstep // 2, n, qstep, dtype=np.int64)[:nq]
    if train_rule is None:
        step = max(1, n // max(train_size, 1))
        train = np.setdiff1d(np.arange(0, n, step, dtype=np.int64)[:train_size], qrows)
        return train, qrows, {"rows": n, "step": step, "size": train_size, "query_step": qstep, "queries": nq}
    r = train_rule
    old_q = np.arange(r["query_step"] // 2, r["rows"], r["query_step"], dtype=np.int64)[: r["queries"]]
    train = np.setdiff1d(np.arange(0, r["rows"], r["step"], dtype=np.int64)[: r["size"]], old_q)
    return train, np.setdiff1d(qrows, train), r


# --- the index -------------------------------------------------------------------------------------------------------
def _table_from_metadata(metadata, n: int):
    """Metadata given by a user (pyarrow Table, or a mapping of equal-length columns) -> pyarrow Table of n rows."""
    if metadata is None:
        return None
    table = metadata if isinstance(metadata, pa.Table) else pa.table(dict(metadata))
    if table.num_rows != n:
        raise ValueError(f"metadata has {table.num_rows} rows, vectors have {n}")
    return table


class Index:
    """A FAISS inner-product index over unit vectors plus the row -> clip map and its measured quality. Build with
    `build` (from OUT), `from_vectors` (from an array) or `load` (saved by `build`)."""

    def __init__(self, faiss_index, metadata=None, *, kind: str, level: str = "clip", params: dict | None = None,
                 manifest: dict | None = None, setting: dict | None = None, quality: dict | None = None):
        self.faiss_index = faiss_index
        self.metadata = metadata  # pyarrow.Table, one row per index row, or None
        self.kind = kind
        self.level = level
        self.params = dict(params or {})  # the plan: factory string, nlist, m, ...
        self.setting = dict(setting or {})  # search parameters: nprobe, k_factor, ef_search
        self.quality = quality  # what tune() measured
        self.manifest = manifest  # what was saved with it (None when not built from OUT)
        self._unchanged = False  # build found it up to date: nothing to save

    @property
    def dim(self) -> int:
        return int(self.faiss_index.d)

    def __len__(self) -> int:
        return int(self.faiss_index.ntotal)

    def __repr__(self) -> str:
        return f"Index(kind={self.kind!r}, level={self.level!r}, rows={len(self)}, dim={self.dim})"

    @property
    def stats(self) -> dict[str, Any]:
        """What this index is and how well it searches: kind, factory, rows, dim, bytes, recall_at_10 (measured on
        `queries` held-out rows against exact search; 1.0 for flat), target, met, setting, latency_ms_p50/p99,
        suggestion (when the target was not met), build_s."""
        q = self.quality or {}
        out = {"kind": self.kind, "level": self.level, "factory": self.params.get("factory"), "rows": len(self),
               "dim": self.dim, "bytes": self.params.get("bytes"), "setting": self.setting}
        out.update({k: v for k, v in q.items() if k not in ("tried", "setting")})
        if self.manifest:
            out["build_s"] = self.manifest.get("build_s")
            out["added"] = self.manifest.get("added", [])
        return out

    def describe(self) -> str:
        """One line for people: kind, size, measured recall and latency."""
        s = self.stats
        unit = "clips" if self.level == "clip" else "videos"
        line = f"{s['kind']} index ({s['factory']}), {s['rows']} {unit}"
        if s.get("recall_at_10") is not None:
            exact = self.kind == "flat" and not s.get("queries")
            low = s.get("recall_at_10_low95")
            bound = f">= {low:.3f} at 95 % confidence, " if low is not None and s["queries"] > 1 else ""
            recall = "exact" if exact else (f"recall@10 {s['recall_at_10']:.3f} on {s['queries']} held-out queries "
                                            f"({bound}target {s['target']}{'' if s['met'] else ', NOT met'})")
            line += f"; {recall}, {s['latency_ms_p50']:.2f} ms a query (p50), {s['latency_ms_p99']:.2f} ms p99"
        if self.setting:
            line += " [" + ", ".join(f"{k} {v}" for k, v in self.setting.items()) + "]"
        return line

    # --- construction --------------------------------------------------------------------------------------------
    @classmethod
    def from_vectors(cls, vectors: np.ndarray, kind: str = "auto", metadata=None, *,
                     target_recall: float = TARGET_RECALL, max_memory: int | str | None = None,
                     tune_queries: int = TUNE_QUERIES, **params) -> Index:
        """Index an (n, D) float array (normalized here) and tune it to target_recall (see the module docstring).
        metadata: optional pyarrow Table or {column: values} with n rows; its video_id/clip_index/start_s/end_s/path
        columns fill the matches. params: nlist, m, nbits, hnsw_m, ef_construction, train_size, factory (plan);
        nprobe, k_factor, ef_search (fixed instead of tuned)."""
        x = np.asarray(vectors)
        if x.ndim != 2 or x.shape[0] == 0 or not np.issubdtype(x.dtype, np.number):
            raise ValueError(f"vectors must be a non-empty numeric (n, D) array, got shape {x.shape} {x.dtype}")
        x = normalize(x)
        table = _table_from_metadata(metadata, x.shape[0])
        plan = plan_index(x.shape[0], x.shape[1], kind, max_memory, **params)
        index, _, quality = _build_faiss(_Rows.from_array(x), plan, target_recall, tune_queries,
                                         _fixed_setting(params))
        return cls(index, table, kind=plan["kind"], params=plan, setting=quality["setting"], quality=quality)

    @classmethod
    def build(cls, out: str | os.PathLike, level: str = "clip", kind: str = "auto", *, batch_size: int = 65_536,
              save: bool = True, progress: bool | None = False, target_recall: float = TARGET_RECALL,
              max_memory: int | str | None = None, rebuild: bool = False, tune_queries: int = TUNE_QUERIES,
              log: Callable[[str], None] | None = None, **params) -> Index:
        """Build an index over OUT/clips, reading at most batch_size rows at a time, tune it and save it in OUT/index/.

        level "clip" indexes every clip; level "video" one vector per video (`_video_rows`). When OUT/index already
        holds an index of this level built with the same kind and parameters, and OUT only gained part files since,
        only their rows are added (trained IVF quantizers kept) and recall is measured again; it is rebuilt instead
        when a part was removed or rewritten, the run configuration changed, the data grew past RETRAIN_GROWTH times
        the rows it was trained on, or rebuild=True. Memory beyond the index: the row map (the metadata of every row,
        as Arrow columns), one batch, the training sample (held once), the held-out queries; at level "video" of an
        output without a video table also one clips part's running sums. Never every row's vector.
        progress: False (the default) nothing; True tqdm's bar for each phase that counts rows (adding, the exact
        top-10 of the held-out queries); None the bar on a terminal, else a plain line a minute (a log).
        """
        if level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 < target_recall <= 1:
            raise ValueError(f"target recall must be in (0, 1], got {target_recall}")
        log = log or (lambda message: None)
        t0 = time.perf_counter()
        out = out_path(out)
        fingerprint = data_fingerprint(out)
        schema = read_schema(out / CLIPS_DIR / fingerprint["parts"][0][0])
        dim = _embedding_dim(schema)
        meta_cols = [c for c in META_COLUMNS if c in schema.names]
        if sum(rows for _, _, rows in fingerprint["parts"]) == 0:
            raise UnusableOutput(f"{str(out)!r} has part files but no clips; nothing to index")

        previous = None if rebuild else _previous_manifest(out, level)
        if previous is not None:
            index = cls._add_new_parts(out, level, previous, fingerprint, kind, params, target_recall, tune_queries,
                                       max_memory, batch_size, meta_cols, dim, progress, log)
            if index is not None and index._unchanged:
                return index  # nothing to write
            if index is not None:
                index.manifest["build_s"] = round(time.perf_counter() - t0, 3)
                if save:
                    index._save(out)
                return index
        part_order = [name for name, _, _ in fingerprint["parts"]]
        rows = _level_rows(out, level, part_order, dim, meta_cols, batch_size)
        plan = plan_index(rows.n, dim, kind, max_memory, **params)
        log(f"{plan['kind']} ({plan['factory']}) for {rows.n} {level}s of {dim} dims: {plan['why']}")
        faiss_index, metadata, quality = _build_faiss(rows, plan, target_recall, tune_queries, _fixed_setting(params),
                                                      progress=progress, with_metadata=True)
        index = cls(faiss_index, metadata, kind=plan["kind"], level=level, params=plan, setting=quality["setting"],
                    quality=quality)
        if len(index) != rows.n or metadata.num_rows != rows.n:
            raise RuntimeError(f"indexed {len(index)} rows with {metadata.num_rows} metadata rows, expected {rows.n}")
        index.manifest = {
            "format": FORMAT_VERSION, "level": level, "kind": plan["kind"], "requested_kind": kind, "dim": dim,
            "rows": len(index), "params": plan, "requested_params": params, "setting": quality["setting"],
            "quality": quality, "fingerprint": fingerprint, "part_order": part_order,
            "train": quality.pop("train_rule"), "build_s": round(time.perf_counter() - t0, 3),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "added": [],
        }
        if save:
            index._save(out)
        return index

    @classmethod
    def _add_new_parts(cls, out: Path, level: str, previous: dict, fingerprint: dict, kind: str, params: dict,
                       target_recall: float, tune_queries: int, max_memory, batch_size: int, meta_cols: list[str],
                       dim: int, progress: bool | None, log) -> Index | None:
        """Incremental build: add the rows of part files that appeared since `previous` was built, re-measure recall.
        None when a full rebuild is needed (the reason goes to log)."""
        changes = _part_changes(previous["fingerprint"], fingerprint)
        config_changed = previous["fingerprint"]["run_config"] != fingerprint["run_config"]
        if changes["removed"] or changes["changed"] or config_changed:
            log(f"rebuilding: {_describe_change(previous['fingerprint'], fingerprint)}")
            return None
        # plain `vmae-fast index OUT` (kind auto, no parameters) keeps whatever index is there
        if kind not in ("auto", previous["kind"]) or (params and params != previous["requested_params"]) \
                or previous["dim"] != dim:
            log("rebuilding: other kind or parameters than the existing index")
            return None
        train_rows = previous["train"]["rows"]
        part_order = previous["part_order"] + changes["added"]
        rows = _level_rows(out, level, part_order, dim, meta_cols, batch_size)
        if rows.n > RETRAIN_GROWTH * train_rows:
            log(f"rebuilding: {rows.n} rows outgrew the {train_rows} the index was planned and trained for "
                f"(> {RETRAIN_GROWTH:g}x)")
            return None
        budget = parse_memory(max_memory) or default_memory()
        if previous["kind"] != "factory" and estimate_bytes(previous["kind"], rows.n, dim, previous["params"]) > budget:
            log(f"rebuilding: {rows.n} rows of {previous['kind']} exceed --max-memory {human_bytes(budget)}")
            return None
        old = cls.load(out, level, check=False)
        if not changes["added"] and previous["quality"].get("target") == target_recall:
            log("index is up to date")
            old._unchanged = True
            return old
        log(f"adding {len(changes['added'])} new part file(s) to the {previous['kind']} index of {len(old)} rows")
        old_n = len(old)
        _, qrows, _ = _sample_rows(rows.n, 0, tune_queries, previous["train"])
        queries, added_meta = [], []
        bar = _progress(rows.n - old_n, "add", progress)
        old_ids = old.metadata.column("video_id") if level == "video" else None
        for first, x, meta in rows.batches(with_metadata=True):
            lo, hi = np.searchsorted(qrows, [first, first + len(x)])
            if hi > lo:
                queries.append(x[qrows[lo:hi] - first])
            if old_ids is not None and first < old_n:  # the indexed videos must be the rows they were
                seen = min(len(x), old_n - first)
                if not meta.column("video_id").slice(0, seen).equals(old_ids.slice(first, seen)):
                    bar.close()
                    log("rebuilding: new parts add clips to videos already in the index")
                    return None
            if first + len(x) > old_n:
                skip = max(0, old_n - first)
                old.faiss_index.add(x[skip:])
                added_meta.append(meta.slice(skip))
                bar.update(len(x) - skip)
        bar.close()
        metadata = pa.concat_tables([old.metadata, *added_meta]) if added_meta else old.metadata
        queries = np.concatenate(queries) if queries else np.zeros((0, dim), np.float32)
        quality = _measure(old.faiss_index, rows, old.params, queries, target_recall, _fixed_setting(params), progress)
        if len(old) != rows.n or metadata.num_rows != rows.n:
            raise RuntimeError(f"indexed {len(old)} rows with {metadata.num_rows} metadata rows, expected {rows.n}")
        manifest = {**previous, "rows": rows.n, "setting": quality["setting"], "quality": quality,
                    "fingerprint": fingerprint, "part_order": part_order,
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "added": previous.get("added", []) + [{"parts": changes["added"], "rows": rows.n - old_n}]}
        return cls(old.faiss_index, metadata, kind=previous["kind"], level=level, params=old.params,
                   setting=quality["setting"], quality=quality, manifest=manifest)

    # --- persistence ---------------------------------------------------------------------------------------------
    @staticmethod
    def paths(out: str | os.PathLike, level: str = "clip") -> dict[str, Path]:
        """Where the index of a level lives: OUT/index/<level>.faiss, <level>.ids.parquet, <level>.json."""
        base = index_dir(out)
        return {"faiss": base / f"{level}.faiss", "ids": base / f"{level}.ids.parquet",
                "manifest": base / f"{level}.json"}

    def _save(self, out) -> None:

        paths = self.paths(out, self.level)
        paths["faiss"].parent.mkdir(parents=True, exist_ok=True)
        paths["manifest"].unlink(missing_ok=True)  # the manifest is written last: no manifest = no usable index
        # each file whole (store.layout.atomic_file: temp + rename locally, one object on an object store)
        with atomic_file(paths["faiss"], f"{paths['faiss'].name}.tmp") as f:
            faiss.write_index(self.faiss_index, faiss.PyCallbackIOWriter(f.write))
        with atomic_file(paths["ids"], f"{paths['ids'].name}.tmp") as f:
            pq.write_table(self.metadata, f)
        write_atomic(paths["manifest"], json.dumps(self.manifest, indent=1).encode(), f"{self.level}.json.tmp")

    @classmethod
    def load(cls, out: str | os.PathLike, level: str = "clip", *, check: bool = True) -> Index:
        """Load the index `build` saved in OUT/index/. With check, refuse (StaleIndexError) when OUT/clips changed."""

        if level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
        paths = cls.paths(out, level)
        level_opt = "" if level == "clip" else f" --level {level}"
        if not paths["manifest"].is_file():
            clip_files(out)  # a folder without clips gets that message first
            raise UnusableOutput(f"no {level}-level index in {str(out)!r}; "
                                 f"build it with `vmae-fast index {out}{level_opt}`")
        manifest = json.loads(paths["manifest"].read_text())
        if manifest.get("format") != FORMAT_VERSION:
            raise StaleIndexError(f"the {level}-level index in {str(out)!r} was built by an older vmae_fast (format "
                                  f"{manifest.get('format')}); rebuild with `vmae-fast index {out}{level_opt}`")
        if check:
            now = data_fingerprint(out)
            if now["sha256"] != manifest["fingerprint"]["sha256"]:
                added_only = not any(v for k, v in _part_changes(manifest["fingerprint"], now).items() if k != "added")
                how = "add the new parts" if added_only else "rebuild"
                raise StaleIndexError(
                    f"the {level}-level index in {str(out)!r} was built from other data "
                    f"({_describe_change(manifest['fingerprint'], now)}); {how} with `vmae-fast index {out}{level_opt}`"
                )
        with paths["faiss"].open("rb") as f:  # through the store (a local file or an object)
            faiss_index = faiss.read_index(faiss.PyCallbackIOReader(f.read))
        metadata = read_table(paths["ids"])
        if faiss_index.ntotal != manifest["rows"] or metadata.num_rows != manifest["rows"]:
            raise StaleIndexError(f"index files in {paths['faiss'].parent} are inconsistent; rebuild with "
                                  f"`vmae-fast index {out}{level_opt} --rebuild`")
        return cls(faiss_index, metadata, kind=manifest["kind"], level=level, params=manifest["params"],
                   manifest=manifest, setting=manifest["setting"], quality=manifest["quality"])

    # --- search --------------------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int = 10, *, nprobe: int | None = None, ef_search: int | None = None,
               k_factor: int | None = None) -> list[list[Match]]:
        """Top-k matches of each query by cosine similarity, best first.

        queries: (D,) or (n, D) float array (normalized here). Returns n lists of at most k Match (fewer when the
        index has fewer rows). nprobe, k_factor (IVF) and ef_search (HNSW) override the tuned setting.
        """
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or not np.issubdtype(q.dtype, np.number):
            raise ValueError(f"queries must be a numeric (D,) or (n, D) array, got shape {q.shape} {q.dtype}")
        if q.shape[1] != self.dim:
            raise InvalidInput(f"query vectors have dimension {q.shape[1]}, the index has {self.dim}")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if not np.isfinite(q).all():
            raise InvalidInput("query vectors contain NaN or infinity")
        k_eff = min(int(k), len(self))
        if k_eff == 0:
            return [[] for _ in range(q.shape[0])]
        overrides = {"nprobe": nprobe, "ef_search": ef_search, "k_factor": k_factor}
        setting = {**self.setting, **{key: v for key, v in overrides.items() if v is not None}}
        scores, rows = faiss_search(self.faiss_index, normalize(q), k_eff, setting)
        return self._matches(scores, rows)

    def _matches(self, scores: np.ndarray, rows: np.ndarray) -> list[list[Match]]:
        meta: dict[int, dict] = {}
        if self.metadata is not None:
            wanted = np.unique(rows[rows >= 0])
            fields = set(Match.__dataclass_fields__) - {"row", "score"}
            cols = [c for c in self.metadata.column_names if c in fields]
            for r, values in zip(wanted.tolist(), self.metadata.select(cols).take(wanted).to_pylist(), strict=True):
                meta[r] = values
        return [
            [Match(row=int(r), score=float(s), **meta.get(int(r), {}))
             for s, r in zip(srow, rrow, strict=True) if r >= 0]
            for srow, rrow in zip(scores, rows, strict=True)
        ]


# --- build steps -----------------------------------------------------------------------------------------------------
def _fixed_setting(params: dict) -> dict:
    return {k: int(v) for k, v in params.items() if k in SEARCH_PARAMS and v is not None}


def _build_faiss(rows: _Rows, plan: dict, target: float, tune_queries: int, fixed: dict, *,
                 progress: bool | None = False, with_metadata: bool = False):
    """Train (on a strided sample that leaves the held-out queries out), add every row, measure and tune.
    Returns (faiss index, metadata Table collected while adding or None, quality dict incl. "train_rule")."""
    index = new_faiss_index(rows.dim, plan)
    exact_kind = plan["kind"] == "flat"
    train_size = 0 if index.is_trained else int(plan.get("train_size") or min(rows.n, 100_000))
    train, qrows, rule = _sample_rows(rows.n, train_size, 0 if exact_kind else tune_queries)
    queries = np.zeros((0, rows.dim), np.float32)
    if len(train) or len(qrows):
        union = np.union1d(train, qrows)
        picked = rows.pick(union)
        queries = picked[np.searchsorted(union, qrows)]
        if not index.is_trained:  # the training rows moved to the front in place: the sample is held once
            _train(index, _take_rows(picked, np.searchsorted(union, train)), plan, rows.n)
        del picked
    meta, probes = [], []
    bar = _progress(rows.n, "index", progress)
    for _, x, m in rows.batches(with_metadata=with_metadata):
        index.add(x)
        if m is not None:
            meta.append(m)
        if exact_kind:  # latency probes of an exact index: ~100 rows spread over the data
            probes.append(x[:: max(1, rows.n // 100)].copy())  # a copy: a view would keep the batch alive
        bar.update(len(x))
    bar.close()
    metadata = pa.concat_tables(meta) if meta else None
    if exact_kind:
        queries = np.concatenate(probes)
    quality = _measure(index, rows, plan, queries, target, fixed, progress)
    quality["train_rule"] = rule
    return index, metadata, quality


def _train(index, x: np.ndarray, plan: dict, n: int) -> None:
    """index.train(x); FAISS's refusal of too few training vectors for the lists or centroids asked for (--nlist, a
    --factory string) is the user's to fix: InvalidOption naming it, not a traceback."""
    try:
        index.train(x)
    except RuntimeError as e:
        detail = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        detail = detail.split(" failed: ", 1)[-1]  # FAISS's own words, without its source location
        raise InvalidOption(f"FAISS cannot train {plan['factory']!r} on {len(x)} vectors ({n} rows less the "
                            f"held-out queries): {detail}; ask for fewer lists or centroids (--nlist, the --factory "
                            "string), or use --kind flat") from None


def _take_rows(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """x[idx] for increasing row numbers idx, moved to the front of x in place (x is overwritten); returns that
    view, C-contiguous. In place because the training sample is the largest thing a build holds besides the index
    (655,360 rows of 768 floats = 2 GB for IVF16384 at 10^7 rows). Safe: every chunk's rows are copied (the right
    side of the assignment) before they are written, and idx[j] >= j, so no row is overwritten before it is read."""
    for s in range(0, len(idx), 8192):
        chunk = idx[s:s + 8192]
        x[s:s + len(chunk)] = x[chunk]
    return x[: len(idx)]


def _measure(index, rows: _Rows, plan: dict, queries: np.ndarray, target: float, fixed: dict, progress) -> dict:
    """Quality of a filled index: exact (flat: recall 1 by construction, latency measured) or tuned on `queries`."""
    if plan["kind"] == "flat":
        return {"recall_at_10": 1.0, "queries": 0, "target": target, "met": True, "setting": {},
                "exact": "flat index: exact by construction", "tried": [],
                **latency(index, queries, {}, min(RECALL_K, rows.n)), "suggestion": None}
    bar = _progress(rows.n, "exact top-10 of held-out queries", progress)
    exact = exact_top_k(rows, queries, min(RECALL_K, rows.n), bar)
    bar.close()
    return tune(index, queries, exact, target, rows.n, fixed)


def _previous_manifest(out: Path, level: str) -> dict | None:
    path = Index.paths(out, level)["manifest"]
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("format") == FORMAT_VERSION and "train" in manifest else None


def _level_rows(out: Path, level: str, part_order: list[str], dim: int, meta_cols: list[str],
                batch_size: int) -> _Rows:
    """The rows of a level over the named part files, in that order, streamed (their metadata is collected while
    adding). Clip level: one row per clip, its center view (crop_index 1) when the clips have several crops
    (extract --crops 3; the side views count in the video level); video level: one row per video (`_video_rows`)."""
    files = [out / CLIPS_DIR / name for name in part_order]
    if level == "video":
        return _video_rows(files, dim, meta_cols, batch_size)
    if "crop_index" in meta_cols:
        n = sum(_center_rows(f) for f in files)
        return _Rows.from_parts(files, n, dim, meta_cols, batch_size, center_only=True)
    fingerprint_rows = {name: rows for name, _, rows in data_fingerprint(out)["parts"]}
    n = sum(fingerprint_rows[name] for name in part_order)
    return _Rows.from_parts(files, n, dim, meta_cols, batch_size)


def _center_rows(path: Path) -> int:
    """Rows of a clips part with crop_index 1 (reads that one int8 column)."""
    return int(pc.sum(pc.equal(read_table(path, columns=["crop_index"]).column("crop_index"), 1)).as_py() or 0)


# --- video level -----------------------------------------------------------------------------------------------------
_VIDEO_META = ("video_id", "path", "start_s", "end_s", "num_clips")


def _video_rows(files: list[Path], dim: int, meta_cols: list[str], batch_size: int, count: bool = True) -> _Rows:
    """Video level: one unit vector per video, its video embedding (the mean of its views' embeddings, views.py)
    normalized, with metadata video_id, path, start_s (first view start), end_s (last view end), num_clips; videos in
    part order, streamed: a clips part's videos come from the video table (OUT/videos/<same name>) when it exists,
    batch_size rows at a time, else they are aggregated from the part's clips with the same arithmetic (outputs
    written before the video table; one part's running sums held at a time). count: count the videos first (footers
    of the video table, else the distinct video ids of each clips part) for n; stream_rows does not need n."""
    if "video_id" not in meta_cols:
        raise UnusableOutput("clips have no 'video_id' column; cannot build a video-level index")
    keep = [c for c in _VIDEO_META if c in ("video_id", "num_clips") or c in meta_cols]

    def batches(with_metadata):
        first = 0
        for f in files:
            for x, meta in _video_part(f, dim, meta_cols, keep, batch_size, with_metadata):
                yield first, normalize(x), meta
                first += len(x)

    return _Rows(sum(_video_count(f) for f in files) if count else 0, dim, batches)


def _video_count(clips_part: Path) -> int:
    """Videos of a clips part: its video table's row count (a footer), else its distinct video ids."""
    table_part = video_part_of(clips_part)
    if table_part.is_file():
        return read_metadata(table_part).num_rows
    ids = read_table(clips_part, columns=["video_id"]).column("video_id")
    return int(pc.count_distinct(ids).as_py())


def _video_part(clips_part: Path, dim: int, meta_cols: list[str], keep: list[str], batch_size: int,
                with_metadata: bool) -> Iterator[tuple[np.ndarray, Any]]:
    """(video embeddings float32 (b, D), not normalized; metadata Table of the `keep` columns or None) batches of the
    videos of one clips part, in the part's order."""
    table_part = video_part_of(clips_part)
    if table_part.is_file():
        for batch in _scan([table_part], ["embedding", *keep] if with_metadata else ["embedding"], batch_size):
            meta = pa.Table.from_batches([batch.select(keep)]) if with_metadata else None
            yield _batch_vectors(batch.column("embedding"), dim), meta
        return
    acc = VideoAccumulator(dim)
    for batch in _scan([clips_part], ["embedding", *meta_cols], batch_size):
        cols = {c: batch.column(c).to_pylist() for c in ("path", "clip_index", "start_s", "end_s") if c in meta_cols}
        acc.add(batch.column("video_id").to_pylist(), _batch_vectors(batch.column("embedding"), dim), **cols)
    table = acc.table()
    vectors = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, dim)
    meta = table.select(keep) if with_metadata else None
    del table, acc
    for s in range(0, len(vectors), batch_size):
        yield vectors[s:s + batch_size], meta.slice(s, batch_size) if with_metadata else None


def stream_rows(out: str | os.PathLike, level: str = "clip", part_order: list[str] | None = None,
                batch_size: int = 65_536) -> Iterator[tuple[int, np.ndarray, pa.Table]]:
    """The rows of a level as an index of OUT holds them, streamed: (first row, unit vectors float32 (b, D), metadata
    Table of b rows) batches in index row order, over the clips parts named by part_order (an index's
    manifest["part_order"]; default every committed part, sorted). Clip level: one row per clip (its center view);
    video level: one row per video (`_video_rows`); at most batch_size rows a batch."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    out = out_path(out)
    if part_order is None:
        part_order = [f.name for f in clip_files(out)]
    if not part_order:
        return
    schema = read_schema(out / CLIPS_DIR / part_order[0])
    dim = _embedding_dim(schema)
    meta_cols = [c for c in META_COLUMNS if c in schema.names]
    files = [out / CLIPS_DIR / name for name in part_order]
    if level == "clip":
        rows = _Rows.from_parts(files, 0, dim, meta_cols, batch_size, center_only="crop_index" in meta_cols)
    else:
        rows = _video_rows(files, dim, meta_cols, batch_size, count=False)
    yield from rows.batches(with_metadata=True)


def clip_vector(out: str | os.PathLike, video_id: str, clip_index: int,
                crop_index: int | None = None) -> tuple[np.ndarray, dict]:
    """The stored embedding (float32 (D,)) and metadata of one clip of OUT; ValueError naming what is missing.
    With several crops per clip (extract --crops 3), crop_index picks the view (default: 1, the center)."""
    files = clip_files(out)
    parts = dataset(files, format="parquet")
    dim = _embedding_dim(parts.schema)
    cols = [c for c in META_COLUMNS if c in parts.schema.names]
    if "video_id" not in cols or "clip_index" not in cols:
        raise UnusableOutput("clips have no video_id/clip_index columns; cannot look up a clip")
    table = parts.to_table(columns=["embedding", *cols], filter=pc.field("video_id") == video_id)
    if table.num_rows == 0:
        raise InvalidInput(f"no video {video_id!r} in {str(out)!r}")
    hit = table.filter(pc.equal(table.column("clip_index"), clip_index))
    if hit.num_rows == 0:
        have = sorted(table.column("clip_index").to_pylist())
        raise InvalidInput(f"video {video_id!r} has no clip {clip_index} (it has clips {have[0]}..{have[-1]})")
    if "crop_index" in cols and (hit.num_rows > 1 or crop_index is not None):
        views = hit
        hit = views.filter(pc.equal(views.column("crop_index"), 1 if crop_index is None else crop_index))
        if hit.num_rows == 0:
            raise InvalidInput(f"clip {clip_index} of video {video_id!r} has no crop {crop_index} (it has crops "
                             f"{sorted(views.column('crop_index').to_pylist())})")
    meta = hit.select(cols).slice(0, 1).to_pylist()[0]
    return _batch_vectors(hit.column("embedding").combine_chunks(), dim)[0], meta


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, progress: bool | None):
    """progress True: tqdm's bar; None: the bar on a terminal, in a log (stderr a file or a pipe: a SLURM output file,
    `nohup`) a plain line a minute for each phase that counts rows (extraction/progress.py); False: nothing."""
    return progress_display(desc, progress, total, unit="clip") or _NoBar()
