"""Nearest-neighbour search over clip embeddings: a FAISS index built by streaming the Parquet dataset in OUT.

Vectors are L2-normalized, so the inner product the index ranks by is the cosine similarity. An index built from
OUT is saved in OUT/index/ next to a map from index row to clip (video_id, clip_index, start_s, end_s, path) and a
fingerprint of the part files it was built from; loading refuses an index whose data has changed since.

    from vmae_fast.index import Index
    index = Index.build("out")                        # or Index.load("out") once built
    matches = index.search(query_vectors, k=10)       # one list of Match per query

faiss and pyarrow are imported inside the functions that need them, so `import vmae_fast` works without them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("flat", "ivfpq", "hnsw")
# ivfpq re-ranking codes, bytes per dimension: 1 (sq8), 2 (fp16), 4 (flat), or no re-ranking (none)
REFINE = ("sq8", "fp16", "flat", "none")
LEVELS = ("clip", "video")
INDEX_DIR = "index"
# Columns of the row -> clip map; any the dataset lacks are left out (and reported as None).
META_COLUMNS = ("video_id", "clip_index", "start_s", "end_s", "path")
FORMAT_VERSION = 1


class StaleIndexError(ValueError):
    """The index in OUT/index was built from other data than OUT/clips holds now."""


@dataclass
class Match:
    """One search result. `row` is the index row; the other fields are None when the index has no metadata.

    At level "video", clip_index is None, start_s/end_s span the video's clips and num_clips counts them.
    """

    row: int
    score: float  # cosine similarity in [-1, 1]
    video_id: str | None = None
    clip_index: int | None = None
    start_s: float | None = None
    end_s: float | None = None
    path: str | None = None
    num_clips: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None or k in ("video_id", "start_s", "end_s")}


def _faiss():
    """The faiss module, or an ImportError saying how to get it (it is imported only when an index is used)."""
    try:
        import faiss
    except ImportError:
        raise ImportError("vector search needs FAISS: pip install faiss-cpu") from None
    return faiss


# --- data fingerprint ------------------------------------------------------------------------------------------------
def clip_files(out: str | os.PathLike) -> list[Path]:
    """The committed part files of OUT (OUT/clips/part-*.parquet), sorted; ValueError when there are none."""
    out = Path(out)
    if not out.is_dir():
        raise ValueError(f"output folder {str(out)!r} does not exist")
    files = sorted((out / "clips").glob("part-*.parquet"))
    if not files:
        raise ValueError(
            f"{str(out)!r} has no clips (expected {out / 'clips' / 'part-*.parquet'}); run `vmae-fast extract` into it first"
        )
    return files


def data_fingerprint(out: str | os.PathLike) -> dict[str, Any]:
    """What an index built from OUT depends on: every part file's name, size and row count, and the run config.

    Cheap to compute (Parquet footers only), so every load checks it. A part rewritten with the same name, size and
    row count under the same run configuration would go unnoticed; extract never does that (parts are immutable and a
    new configuration changes _run.json).
    """
    import pyarrow.parquet as pq

    out = Path(out)
    parts = []
    for f in clip_files(out):
        parts.append([f.name, f.stat().st_size, pq.ParquetFile(f).metadata.num_rows])
    run_file = out / "_run.json"
    run_sha = None
    if run_file.is_file():  # the row-affecting configuration; _run.json's timestamps may change on a resume
        run = json.loads(run_file.read_text())
        run_sha = run.get("config_hash") or hashlib.sha256(run_file.read_bytes()).hexdigest()
    digest = hashlib.sha256(json.dumps([parts, run_sha]).encode()).hexdigest()
    return {"sha256": digest, "run_config": run_sha, "parts": parts}


def _describe_change(old: dict, new: dict) -> str:
    """A short phrase saying how the data differs from what the index was built from."""
    old_parts = {p[0]: p[1:] for p in old.get("parts", [])}
    new_parts = {p[0]: p[1:] for p in new["parts"]}
    added = sorted(set(new_parts) - set(old_parts))
    removed = sorted(set(old_parts) - set(new_parts))
    changed = sorted(n for n in set(old_parts) & set(new_parts) if old_parts[n] != new_parts[n])
    bits = []
    for what, names in (("added", added), ("removed", removed), ("changed", changed)):
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
    import pyarrow as pa

    if "embedding" not in schema.names:
        raise ValueError(f"clips have no 'embedding' column (columns: {', '.join(schema.names)})")
    t = schema.field("embedding").type
    if not pa.types.is_fixed_size_list(t):
        raise ValueError(f"'embedding' must be fixed_size_list<float>[D], got {t}")
    return t.list_size


def _batch_vectors(column, dim: int) -> np.ndarray:
    """fixed_size_list<float16|float32>[D] Arrow column -> float32 (n, D) numpy (one copy)."""
    if column.null_count:
        raise ValueError(f"'embedding' has {column.null_count} null rows")
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(-1, dim).astype(np.float32, copy=False)


def _scan(files: list[Path], columns: list[str], batch_size: int) -> Iterator:
    """Record batches of at most batch_size rows over the part files, in order.

    ParquetFile.iter_batches on a buffered stream decodes batch_size rows at a time, even inside a large row group;
    the pyarrow.dataset scanner decodes whole row groups (extract may write 100k-row ones: ~1 GB at 768-d).
    """
    import pyarrow.parquet as pq

    for f in files:
        with pq.ParquetFile(f, pre_buffer=False, buffer_size=1 << 20) as parquet:
            for batch in parquet.iter_batches(batch_size=batch_size, columns=columns, use_threads=False):
                if batch.num_rows:
                    yield batch


# --- FAISS index construction ----------------------------------------------------------------------------------------
def _resolve_params(kind: str, dim: int, n: int, params: dict) -> dict:
    """Fill in defaults that depend on the data size: nlist ~ sqrt(n) (a power of two), nprobe = nlist / 16, PQ with
    16 dims per code byte (768-d: 48 bytes a vector; 8 dims per byte trains ~10x slower in FAISS and still leaves
    near-ties misordered), re-ranking k * k_factor PQ candidates with 8-bit scalar-quantized vectors (refine="sq8").
    Why re-rank: clips of similar scenes sit at nearly equal distances, which PQ alone orders badly (recall@10 ~0.73
    on the clustered test data, 0.95+ with the re-ranking; see tests/test_index.py)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    unknown = set(params) - {"nlist", "m", "nbits", "nprobe", "train_size", "refine", "k_factor", "hnsw_m",
                             "ef_construction", "ef_search"}
    if unknown:
        raise TypeError(f"unknown index parameter(s): {', '.join(sorted(unknown))}")
    p = {k: v for k, v in params.items() if v is not None}
    if kind == "ivfpq":
        # FAISS wants >= 39 training points per centroid; keep nlist small enough for the data we have.
        nlist = p.get("nlist") or 2 ** max(2, min(16, round(math.log2(max(1.0, math.sqrt(n))))))
        p["nlist"] = int(max(1, min(nlist, n // 39 or 1)))
        if "m" not in p:  # largest divisor of dim giving sub-vectors of >= 16 dims
            p["m"] = max(d for d in range(1, max(1, dim // 16) + 1) if dim % d == 0)
        if dim % p["m"]:
            raise ValueError(f"ivfpq m={p['m']} must divide the vector dimension {dim}")
        p.setdefault("nbits", 8)
        p.setdefault("nprobe", max(1, p["nlist"] // 16))
        p.setdefault("refine", "sq8")
        p.setdefault("k_factor", 8)
        if p["refine"] not in REFINE:
            raise ValueError(f"refine must be one of {', '.join(REFINE)}, got {p['refine']!r}")
        # a training sample big enough for both the coarse k-means and the 2**nbits PQ centroids
        p.setdefault("train_size", min(n, max(39 * p["nlist"], 39 * 2 ** p["nbits"], 10_000)))
        if n < 2 ** p["nbits"]:
            raise ValueError(f"ivfpq needs at least {2 ** p['nbits']} vectors to train, got {n}; use the flat kind (--kind flat)")
    elif kind == "hnsw":
        p.setdefault("hnsw_m", 32)
        p.setdefault("ef_construction", 80)
        p.setdefault("ef_search", 64)
    return p


def _new_faiss_index(kind: str, dim: int, p: dict):
    faiss = _faiss()

    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, p["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = p["ef_construction"]
        return index
    ivfpq = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, p["nlist"], p["m"], p["nbits"], faiss.METRIC_INNER_PRODUCT)
    ivfpq.nprobe = p["nprobe"]
    if p["refine"] == "none":
        return ivfpq
    if p["refine"] == "flat":
        refine = faiss.IndexFlatIP(dim)
    else:
        qtype = faiss.ScalarQuantizer.QT_8bit if p["refine"] == "sq8" else faiss.ScalarQuantizer.QT_fp16
        refine = faiss.IndexScalarQuantizer(dim, qtype, faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexRefine(ivfpq, refine)  # trains and adds to both; searches ivfpq, re-ranks with refine
    index.k_factor = p["k_factor"]
    return index


def _table_from_metadata(metadata, n: int):
    """Metadata given by a user (pyarrow Table, or a mapping of equal-length columns) -> pyarrow Table of n rows."""
    import pyarrow as pa

    if metadata is None:
        return None
    table = metadata if isinstance(metadata, pa.Table) else pa.table(dict(metadata))
    if table.num_rows != n:
        raise ValueError(f"metadata has {table.num_rows} rows, vectors have {n}")
    return table


class Index:
    """A FAISS inner-product index over unit vectors plus the row -> clip map. Build with `build` (from OUT),
    `from_vectors` (from an array) or `load` (saved by `build`)."""

    def __init__(self, faiss_index, metadata=None, *, kind: str, level: str = "clip", params: dict | None = None,
                 manifest: dict | None = None):
        self.faiss_index = faiss_index
        self.metadata = metadata  # pyarrow.Table, one row per index row, or None
        self.kind = kind
        self.level = level
        self.params = dict(params or {})
        self.manifest = manifest  # what was saved with it (None when not built from OUT)

    @property
    def dim(self) -> int:
        return int(self.faiss_index.d)

    def __len__(self) -> int:
        return int(self.faiss_index.ntotal)

    def __repr__(self) -> str:
        return f"Index(kind={self.kind!r}, level={self.level!r}, rows={len(self)}, dim={self.dim})"

    # --- construction --------------------------------------------------------------------------------------------
    @classmethod
    def from_vectors(cls, vectors: np.ndarray, kind: str = "flat", metadata=None, **params) -> Index:
        """Index an (n, D) float array (normalized here). metadata: optional pyarrow Table or {column: values} with
        n rows; its video_id/clip_index/start_s/end_s/path columns fill the matches. params: nlist, m, nbits, nprobe,
        train_size, refine, k_factor (ivfpq), hnsw_m, ef_construction, ef_search (hnsw)."""
        x = np.asarray(vectors)
        if x.ndim != 2 or x.shape[0] == 0 or not np.issubdtype(x.dtype, np.number):
            raise ValueError(f"vectors must be a non-empty numeric (n, D) array, got shape {x.shape} {x.dtype}")
        x = normalize(x)
        p = _resolve_params(kind, x.shape[1], x.shape[0], params)
        index = _new_faiss_index(kind, x.shape[1], p)
        if kind == "ivfpq":
            step = max(1, x.shape[0] // p["train_size"])
            index.train(x[::step][: p["train_size"]])
        index.add(x)
        return cls(index, _table_from_metadata(metadata, x.shape[0]), kind=kind, params=p)

    @classmethod
    def build(cls, out: str | os.PathLike, level: str = "clip", kind: str = "flat", *, batch_size: int = 65_536,
              save: bool = True, progress: bool = False, **params) -> Index:
        """Build an index over OUT/clips, reading at most batch_size rows at a time, and save it in OUT/index/.

        level "clip" indexes every clip; level "video" one vector per video: the mean of its (normalized) clip
        embeddings, renormalized. For ivfpq a strided sample of train_size vectors (spread over all parts) trains
        the quantizers first, then vectors are added batch by batch. Memory beyond the index: one batch (and for
        ivfpq the training sample; for level "video" one running sum per video, the size of the index itself).
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        if level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        t0 = time.perf_counter()
        out = Path(out)
        fingerprint = data_fingerprint(out)
        files = [out / "clips" / name for name, _, _ in fingerprint["parts"]]
        num_rows = sum(rows for _, _, rows in fingerprint["parts"])
        schema = pq.read_schema(files[0])
        dim = _embedding_dim(schema)
        meta_cols = [c for c in META_COLUMNS if c in schema.names]
        if num_rows == 0:
            raise ValueError(f"{str(out)!r} has part files but no clips; nothing to index")

        if level == "video":
            vectors, metadata = _video_vectors(files, dim, meta_cols, batch_size)
            index = cls.from_vectors(vectors, kind=kind, metadata=metadata, **params)  # one row per video
            index.level = "video"
        else:
            p = _resolve_params(kind, dim, num_rows, params)
            faiss_index = _new_faiss_index(kind, dim, p)
            if kind == "ivfpq":
                faiss_index.train(_strided_sample(files, dim, num_rows, p["train_size"], batch_size))
            meta_batches = []
            bar = _progress(num_rows, "index", progress)
            for batch in _scan(files, ["embedding", *meta_cols], batch_size):
                faiss_index.add(normalize(_batch_vectors(batch.column("embedding"), dim)))
                meta_batches.append(batch.select(meta_cols))  # small columns only; the embedding is dropped
                bar.update(batch.num_rows)
            bar.close()
            metadata = pa.Table.from_batches(meta_batches, schema=pa.schema([schema.field(c) for c in meta_cols]))
            index = cls(faiss_index, metadata, kind=kind, level="clip", params=p)
        if len(index) != (num_rows if level == "clip" else index.metadata.num_rows):
            raise RuntimeError(f"indexed {len(index)} rows, expected {num_rows}")
        index.manifest = {
            "format": FORMAT_VERSION, "level": level, "kind": kind, "dim": dim, "rows": len(index),
            "params": index.params, "fingerprint": fingerprint, "build_s": round(time.perf_counter() - t0, 3),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if save:
            index._save(out)
        return index

    # --- persistence ---------------------------------------------------------------------------------------------
    @staticmethod
    def paths(out: str | os.PathLike, level: str = "clip") -> dict[str, Path]:
        """Where the index of a level lives: OUT/index/<level>.faiss, <level>.ids.parquet, <level>.json."""
        base = Path(out) / INDEX_DIR
        return {"faiss": base / f"{level}.faiss", "ids": base / f"{level}.ids.parquet", "manifest": base / f"{level}.json"}

    def _save(self, out: Path) -> None:
        faiss = _faiss()
        import pyarrow.parquet as pq

        paths = self.paths(out, self.level)
        paths["faiss"].parent.mkdir(parents=True, exist_ok=True)
        paths["manifest"].unlink(missing_ok=True)  # the manifest is written last: no manifest = no usable index
        faiss.write_index(self.faiss_index, str(paths["faiss"]) + ".tmp")
        os.replace(str(paths["faiss"]) + ".tmp", paths["faiss"])
        pq.write_table(self.metadata, str(paths["ids"]) + ".tmp")
        os.replace(str(paths["ids"]) + ".tmp", paths["ids"])
        tmp = paths["manifest"].with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.manifest, indent=1))
        os.replace(tmp, paths["manifest"])

    @classmethod
    def load(cls, out: str | os.PathLike, level: str = "clip", *, check: bool = True) -> Index:
        """Load the index `build` saved in OUT/index/. With check, refuse (StaleIndexError) when OUT/clips changed."""
        faiss = _faiss()
        import pyarrow.parquet as pq

        if level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
        paths = cls.paths(out, level)
        level_opt = "" if level == "clip" else f" --level {level}"
        if not paths["manifest"].is_file():
            clip_files(out)  # a folder without clips gets that message first
            raise ValueError(f"no {level}-level index in {str(out)!r}; build it with `vmae-fast index {out}{level_opt}`")
        manifest = json.loads(paths["manifest"].read_text())
        if check:
            now = data_fingerprint(out)
            if now["sha256"] != manifest["fingerprint"]["sha256"]:
                raise StaleIndexError(
                    f"the {level}-level index in {str(out)!r} was built from other data "
                    f"({_describe_change(manifest['fingerprint'], now)}); rebuild with `vmae-fast index {out}{level_opt}`"
                )
        faiss_index = faiss.read_index(str(paths["faiss"]))
        metadata = pq.read_table(paths["ids"])
        if faiss_index.ntotal != manifest["rows"] or metadata.num_rows != manifest["rows"]:
            raise StaleIndexError(f"index files in {paths['faiss'].parent} are inconsistent; rebuild with "
                                  f"`vmae-fast index {out}{level_opt}`")
        return cls(faiss_index, metadata, kind=manifest["kind"], level=level, params=manifest["params"],
                   manifest=manifest)

    # --- search --------------------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int = 10, *, nprobe: int | None = None,
               ef_search: int | None = None) -> list[list[Match]]:
        """Top-k matches of each query by cosine similarity, best first.

        queries: (D,) or (n, D) float array (normalized here). Returns n lists of at most k Match (fewer when the
        index has fewer rows). nprobe (ivfpq) and ef_search (hnsw) override the saved search parameters.
        """
        faiss = _faiss()

        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or not np.issubdtype(q.dtype, np.number):
            raise ValueError(f"queries must be a numeric (D,) or (n, D) array, got shape {q.shape} {q.dtype}")
        if q.shape[1] != self.dim:
            raise ValueError(f"query vectors have dimension {q.shape[1]}, the index has {self.dim}")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if not np.isfinite(q).all():
            raise ValueError("query vectors contain NaN or infinity")
        k_eff = min(int(k), len(self))
        if k_eff == 0:
            return [[] for _ in range(q.shape[0])]
        search_params = None
        if self.kind == "ivfpq":
            search_params = faiss.SearchParametersIVF(nprobe=int(nprobe or self.params["nprobe"]))
            if self.params.get("refine", "none") != "none":
                search_params = faiss.IndexRefineSearchParameters(k_factor=float(self.params["k_factor"]),
                                                                  base_index_params=search_params)
        elif self.kind == "hnsw":
            search_params = faiss.SearchParametersHNSW(efSearch=max(int(ef_search or self.params["ef_search"]), k_eff))
        scores, rows = self.faiss_index.search(normalize(q), k_eff, params=search_params)
        return self._matches(scores, rows)

    def _matches(self, scores: np.ndarray, rows: np.ndarray) -> list[list[Match]]:
        meta: dict[int, dict] = {}
        if self.metadata is not None:
            wanted = np.unique(rows[rows >= 0])
            fields = set(Match.__dataclass_fields__) - {"row", "score"}
            cols = [c for c in self.metadata.column_names if c in fields]
            for r, values in zip(wanted.tolist(), self.metadata.select(cols).take(wanted).to_pylist()):
                meta[r] = values
        return [
            [Match(row=int(r), score=float(s), **meta.get(int(r), {})) for s, r in zip(srow, rrow) if r >= 0]
            for srow, rrow in zip(scores, rows)
        ]


# --- streaming helpers -----------------------------------------------------------------------------------------------
def _strided_sample(files: list[Path], dim: int, num_rows: int, size: int, batch_size: int) -> np.ndarray:
    """Every (num_rows // size)-th vector, normalized: a deterministic training sample spread over all parts."""
    step = max(1, num_rows // size)
    picked, seen = [], 0
    for batch in _scan(files, ["embedding"], batch_size):
        first = (-seen) % step  # offset of the first multiple of step in this batch
        rows = np.arange(first, batch.num_rows, step)
        if rows.size:
            picked.append(normalize(_batch_vectors(batch.column("embedding").take(rows), dim)))
        seen += batch.num_rows
    return np.concatenate(picked)[:size]


def _video_vectors(files: list[Path], dim: int, meta_cols: list[str], batch_size: int):
    """One vector per video: mean of its clips' unit embeddings (renormalized later), with metadata
    video_id, path, start_s (first clip start), end_s (last clip end), num_clips. Videos in first-seen order."""
    import pyarrow as pa

    if "video_id" not in meta_cols:
        raise ValueError("clips have no 'video_id' column; cannot build a video-level index")
    order: dict[str, int] = {}
    sums = np.zeros((0, dim), np.float64)
    counts, starts, ends, paths = [], [], [], []
    for batch in _scan(files, ["embedding", *meta_cols], batch_size):
        x = normalize(_batch_vectors(batch.column("embedding"), dim))
        ids = batch.column("video_id").to_pylist()
        new = [v for v in dict.fromkeys(ids) if v not in order]
        if new:
            if len(order) + len(new) > len(sums):  # grow by doubling: amortized O(1) copies per video
                grown = np.zeros((max(2 * len(sums), len(order) + len(new)), dim), np.float64)
                grown[: len(order)] = sums[: len(order)]
                sums = grown
            for v in new:
                order[v] = len(order)
            counts += [0] * len(new)
            starts += [math.inf] * len(new)
            ends += [-math.inf] * len(new)
            paths += [None] * len(new)
        slots = np.fromiter((order[v] for v in ids), np.int64, len(ids))
        np.add.at(sums, slots, x)
        col = {c: batch.column(c).to_pylist() for c in ("start_s", "end_s", "path") if c in meta_cols}
        for i, s in enumerate(slots.tolist()):
            counts[s] += 1
            if "start_s" in col and col["start_s"][i] is not None:
                starts[s] = min(starts[s], col["start_s"][i])
            if "end_s" in col and col["end_s"][i] is not None:
                ends[s] = max(ends[s], col["end_s"][i])
            if "path" in col and paths[s] is None:
                paths[s] = col["path"][i]
    meta = {"video_id": list(order), "num_clips": pa.array(counts, pa.int32())}
    if "start_s" in meta_cols:
        meta["start_s"] = [s if math.isfinite(s) else None for s in starts]
    if "end_s" in meta_cols:
        meta["end_s"] = [e if math.isfinite(e) else None for e in ends]
    if "path" in meta_cols:
        meta["path"] = paths
    sums = sums[: len(order)]
    return (sums / np.maximum(np.array(counts, np.float64)[:, None], 1)).astype(np.float32), pa.table(meta)


def clip_vector(out: str | os.PathLike, video_id: str, clip_index: int) -> tuple[np.ndarray, dict]:
    """The stored embedding (float32 (D,)) and metadata of one clip of OUT; ValueError naming what is missing."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    files = clip_files(out)
    dataset = ds.dataset([str(f) for f in files], format="parquet")
    dim = _embedding_dim(dataset.schema)
    cols = [c for c in META_COLUMNS if c in dataset.schema.names]
    if "video_id" not in cols or "clip_index" not in cols:
        raise ValueError("clips have no video_id/clip_index columns; cannot look up a clip")
    table = dataset.to_table(columns=["embedding", *cols], filter=pc.field("video_id") == video_id)
    if table.num_rows == 0:
        raise ValueError(f"no video {video_id!r} in {str(out)!r}")
    hit = table.filter(pc.equal(table.column("clip_index"), clip_index))
    if hit.num_rows == 0:
        have = sorted(table.column("clip_index").to_pylist())
        raise ValueError(f"video {video_id!r} has no clip {clip_index} (it has clips {have[0]}..{have[-1]})")
    meta = hit.select(cols).slice(0, 1).to_pylist()[0]
    return _batch_vectors(hit.column("embedding").combine_chunks(), dim)[0], meta


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="clip")
