"""Output of `vmae-fast extract`: a Parquet dataset of per-clip embeddings, written atomically, read back in order.

Layout (DESIGN.md, "Extraction and output"):

    OUT/_run.json                          run configuration + its hash, library version
    OUT/clips/part-<shard>-<seq>.parquet   one row per clip; a video's clips never straddle two files
    OUT/errors/part-<shard>-<seq>.parquet  one row per failed video

The part files are the commit record: a part is written under a hidden temporary name in the same folder, fsynced
and renamed, so after a crash a video is either entirely in one visible part or in none. Temporary names start with
"." and end in ".tmp", which pyarrow, DuckDB and polars globs (`*.parquet`) all skip.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "vmae_fast.extract/1"
RUN_FILE = "_run.json"
CLIPS_DIR = "clips"
ERRORS_DIR = "errors"
EMBEDDING_DTYPES = ("float32", "float16")
_PART_RE = re.compile(r"^part-(\d+)-(\d+)\.parquet$")


# --- run configuration ------------------------------------------------------------------------------------------------
def config_hash(config: dict) -> str:
    """sha256 (hex, 16 chars) of the canonical JSON of the row-affecting configuration."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def load_run(out: str | os.PathLike) -> dict:
    """The content of OUT/_run.json: {"format", "config_hash", "config", "model", "library_version", ...}."""
    path = Path(out) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {out} is not an output of `vmae-fast extract`")
    return json.loads(path.read_text())


def _fsync_dir(directory: Path) -> None:
    """Persist a rename: the directory entry must reach the disk too, not only the file's data."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems (and Windows) cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, tmp_name: str) -> None:
    """Write `data` to `path` through `tmp_name` in the same folder: fsync, os.replace, fsync the folder."""
    tmp = path.parent / tmp_name
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def diff_configs(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two JSON-like values, e.g. ['sampling.frame_step: 4 -> 2']."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{name}: (absent) -> {_short(new[key])}")
            elif key not in new:
                out.append(f"{name}: {_short(old[key])} -> (absent)")
            else:
                out.extend(diff_configs(old[key], new[key], name))
        return out
    return [] if old == new else [f"{prefix}: {_short(old)} -> {_short(new)}"]


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def prepare_output(out: str | os.PathLike, run: dict, *, shard: int, num_shards: int, overwrite: bool) -> Path:
    """Make OUT ready for shard `shard` of `num_shards`; returns OUT as a Path.

    - OUT/_run.json with the same config_hash: resume (nothing is removed except this shard's stray temp files).
    - A different configuration, or parts without a _run.json: refused with ValueError, nothing touched, unless
      `overwrite`, which removes this shard's parts (shard 0 also the parts of shards >= num_shards), the index
      files and the old _run.json. Shards of one run each clear only their own parts, so `--overwrite` under
      torchrun/SLURM never deletes what a sibling has just written.
    - The new _run.json is written atomically before any part.
    """
    out = Path(out)
    run_path = out / RUN_FILE
    clips, errors = out / CLIPS_DIR, out / ERRORS_DIR
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output {out} exists and is not a directory")
    existing = None
    if run_path.is_file():
        try:
            existing = json.loads(run_path.read_text())
        except (OSError, ValueError) as e:
            if not overwrite:
                raise ValueError(f"{run_path} is unreadable ({e}); use --overwrite to start over") from None
    has_parts = any(list_parts(d) for d in (clips, errors))
    if not overwrite:
        if existing is None and has_parts:
            raise ValueError(f"{out} holds part files but no {RUN_FILE}; use --overwrite or another output directory")
        if existing is not None and existing.get("config_hash") != run["config_hash"]:
            changes = diff_configs(existing.get("config", {}), run["config"])
            detail = "; ".join(changes[:3]) + (f" (+{len(changes) - 3} more)" if len(changes) > 3 else "")
            raise ValueError(f"{out} was written with a different configuration ({detail or 'format changed'}); "
                             "use --overwrite to replace it or choose another output directory")
    for d in (clips, errors):
        d.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for d in (clips, errors):
            for name, part_shard, _ in list_parts(d):
                if part_shard == shard or (shard == 0 and part_shard >= num_shards):
                    (d / name).unlink(missing_ok=True)
        _remove_index_files(out)
    clean_temp_files(out, shard)
    if overwrite or existing is None:
        write_atomic(run_path, (json.dumps(run, indent=2, sort_keys=True, default=str) + "\n").encode(),
                     f".{RUN_FILE}.{shard}.tmp")
    return out


def _remove_index_files(out: Path) -> None:
    """The retrieval index is built from the rows; after --overwrite it would describe rows that no longer exist."""
    for entry in out.iterdir():
        if entry.name in (RUN_FILE, CLIPS_DIR, ERRORS_DIR):
            continue
        if entry.name.startswith(("index", "_index")) or entry.suffix in (".faiss", ".index"):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)


def clean_temp_files(out: Path, shard: int) -> list[Path]:
    """Remove this shard's temporary files left by a killed run; returns what was removed."""
    removed = []
    patterns = [(out / CLIPS_DIR, f".part-{shard:05d}-*.tmp"), (out / ERRORS_DIR, f".part-{shard:05d}-*.tmp"),
                (out, f".{RUN_FILE}.{shard}.tmp")]
    for directory, pattern in patterns:
        if directory.is_dir():
            for path in directory.glob(pattern):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def list_parts(directory: str | os.PathLike) -> list[tuple[str, int, int]]:
    """Committed part files of a folder as (name, shard, seq), sorted by (shard, seq); temp files are ignored."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    parts = []
    for name in os.listdir(directory):
        m = _PART_RE.match(name)
        if m:
            parts.append((name, int(m.group(1)), int(m.group(2))))
    return sorted(parts, key=lambda p: (p[1], p[2]))


def committed_video_ids(out: str | os.PathLike) -> set[str]:
    """video_ids present in any committed clips or errors part, of any shard (a video is never in two parts)."""
    import pyarrow.parquet as pq

    out = Path(out)
    done: set[str] = set()
    for d in (out / CLIPS_DIR, out / ERRORS_DIR):
        for name, _, _ in list_parts(d):
            column = pq.read_table(d / name, columns=["video_id"]).column("video_id")
            done.update(column.unique().to_pylist())
    return done


# --- schemas --------------------------------------------------------------------------------------------------------
def clip_schema(embedding_dim: int, num_labels: int | None, embedding_dtype: str = "float32",
                metadata: dict[str, str] | None = None):
    """Arrow schema of clips parts: the DESIGN.md columns; `logits` only when the model has a head."""
    import pyarrow as pa

    if embedding_dtype not in EMBEDDING_DTYPES:
        raise ValueError(f"embedding_dtype must be one of {EMBEDDING_DTYPES}, got {embedding_dtype!r}")
    fields = [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("clip_index", pa.int32(), nullable=False),
        pa.field("start_frame", pa.int64(), nullable=False),
        pa.field("end_frame", pa.int64(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("padded_frames", pa.int16(), nullable=False),
        pa.field("num_tokens", pa.int32(), nullable=False),
        pa.field("embedding", pa.list_(pa.field("element", getattr(pa, embedding_dtype)(), nullable=False),
                                       embedding_dim), nullable=False),
    ]
    if num_labels:
        fields.append(pa.field("logits", pa.list_(pa.field("element", pa.float32(), nullable=False), num_labels),
                               nullable=False))
    return pa.schema(fields, metadata=metadata)


def error_schema(metadata: dict[str, str] | None = None):
    import pyarrow as pa

    return pa.schema([
        pa.field("path", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("error", pa.string(), nullable=False),
        pa.field("attempts", pa.int32(), nullable=False),
    ], metadata=metadata)


def file_metadata(run: dict) -> dict[str, str]:
    """Parquet key-value metadata of every part: each value a JSON string."""
    model = run["model"]
    config = run["config"]
    values = {
        "model_source": model.get("source"),
        "model_config": model.get("config"),
        "weights_sha256": model.get("weights_sha256"),
        "preprocessing": model.get("preprocessing"),
        "sampling": config["sampling"],
        "keep": config["keep"],
        "dtype": config["dtype"],
        "device": run.get("device"),
        "id2label": model.get("id2label"),
        "embedding_dtype": config["embedding_dtype"],
        "config_hash": run["config_hash"],
        "library_version": run["library_version"],
    }
    return {key: json.dumps(value, sort_keys=True, default=str) for key, value in values.items()}


def schemas_for_run(run: dict):
    """(clip schema, error schema) of the parts of a run, metadata included."""
    config = run["config"]
    metadata = file_metadata(run)
    return (clip_schema(config["embedding_dim"], config["num_labels"], config["embedding_dtype"], metadata),
            error_schema(metadata))


# --- writing --------------------------------------------------------------------------------------------------------
class PartWriter:
    """Writes numbered parts `part-<shard>-<seq>.parquet` of one folder, each atomically (temp + fsync + rename)."""

    def __init__(self, directory: str | os.PathLike, shard: int, schema):
        self.directory = Path(directory)
        self.shard = shard
        self.schema = schema
        seqs = [seq for _, s, seq in list_parts(self.directory) if s == shard]
        self.next_seq = max(seqs, default=-1) + 1
        self.files_written = 0

    def write(self, columns: dict[str, Any]) -> Path:
        """Write one part from column arrays (names and order of the schema); returns the committed path."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pydict({name: columns[name] for name in self.schema.names}, schema=self.schema)
        name = f"part-{self.shard:05d}-{self.next_seq:06d}.parquet"
        tmp = self.directory / f".{name}.tmp"
        with open(tmp, "wb") as f:
            # row groups of 16k rows: readers (ours, DuckDB, polars) decode a whole group at once, and one group of
            # 100k x 768 floats would cost ~1.3 GB; dictionary encoding only where values repeat (ids, paths)
            pq.write_table(table, f, compression="zstd", row_group_size=16384, use_dictionary=["video_id", "path"])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.directory / name)
        _fsync_dir(self.directory)
        self.next_seq += 1
        self.files_written += 1
        return self.directory / name


def fixed_size_list(matrix: np.ndarray, dtype: str):
    """(n, D) numpy -> pyarrow fixed_size_list<dtype>[D] array."""
    import pyarrow as pa

    matrix = np.ascontiguousarray(matrix, dtype=np.dtype(dtype))
    values = pa.array(matrix.reshape(-1), type=getattr(pa, dtype)())
    return pa.FixedSizeListArray.from_arrays(values, matrix.shape[1])


class RunWriter:
    """Buffers committed videos of one shard and writes them as clips/errors parts.

    A part is written when the buffered rows reach `part_rows` or about `part_bytes`, when `commit_interval_s` has
    passed since the last write (bounding the work a crash can lose), and on `flush()`. Whole videos only.
    """

    def __init__(self, out: Path, run: dict, shard: int, *, part_rows: int = 100_000, part_bytes: int = 256 << 20,
                 commit_interval_s: float = 60.0):
        clip_schema_, error_schema_ = schemas_for_run(run)
        self.clips = PartWriter(out / CLIPS_DIR, shard, clip_schema_)
        self.errors = PartWriter(out / ERRORS_DIR, shard, error_schema_)
        self.embedding_dtype = run["config"]["embedding_dtype"]
        self.has_logits = bool(run["config"]["num_labels"])
        self.part_rows, self.part_bytes, self.commit_interval_s = part_rows, part_bytes, commit_interval_s
        self._clip_videos: list[dict] = []  # one dict of column arrays per video
        self._clip_rows = 0
        self._clip_bytes = 0
        self._error_rows: list[dict] = []
        self._last_write = time.monotonic()
        self.write_s = 0.0

    def add_video(self, rows: dict[str, Any]) -> None:
        """rows: per-column lists/arrays of one video's clips; `embedding` (n, D) and `logits` (n, C) float32."""
        n = len(rows["clip_index"])
        self._clip_videos.append(rows)
        self._clip_rows += n
        self._clip_bytes += rows["embedding"].nbytes + (rows["logits"].nbytes if self.has_logits else 0) + 64 * n
        if self._clip_rows >= self.part_rows or self._clip_bytes >= self.part_bytes:
            self._write_clips()

    def add_error(self, path: str, video_id: str, stage: str, error: str, attempts: int) -> None:
        self._error_rows.append({"path": path, "video_id": video_id, "stage": stage, "error": error, "attempts": attempts})
        if len(self._error_rows) >= self.part_rows:
            self._write_errors()

    def maybe_flush(self) -> None:
        """Write what is buffered if commit_interval_s has passed since the last write."""
        if time.monotonic() - self._last_write >= self.commit_interval_s:
            self.flush()

    def flush(self) -> None:
        self._write_clips()
        self._write_errors()
        self._last_write = time.monotonic()

    def _write_clips(self) -> None:
        if not self._clip_videos:
            return
        t0 = time.perf_counter()
        videos = self._clip_videos
        columns: dict[str, Any] = {}
        for name in ("video_id", "path", "clip_index", "start_frame", "end_frame", "start_s", "end_s",
                     "padded_frames", "num_tokens"):
            columns[name] = [value for video in videos for value in video[name]]
        columns["embedding"] = fixed_size_list(np.concatenate([v["embedding"] for v in videos]), self.embedding_dtype)
        if self.has_logits:
            columns["logits"] = fixed_size_list(np.concatenate([v["logits"] for v in videos]), "float32")
        self.clips.write(columns)
        self._clip_videos, self._clip_rows, self._clip_bytes = [], 0, 0
        self._last_write = time.monotonic()
        self.write_s += time.perf_counter() - t0

    def _write_errors(self) -> None:
        if not self._error_rows:
            return
        t0 = time.perf_counter()
        rows = self._error_rows
        self.errors.write({name: [row[name] for row in rows] for name in self.errors.schema.names})
        self._error_rows = []
        self._last_write = time.monotonic()
        self.write_s += time.perf_counter() - t0


# --- reading --------------------------------------------------------------------------------------------------------
def _read_parts(directory: Path, columns: list[str] | None = None):
    import pyarrow.parquet as pq

    return [pq.read_table(directory / name, columns=columns) for name, _, _ in list_parts(directory)]


def _empty(schema, columns: list[str] | None = None):
    import pyarrow as pa

    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
    return schema.empty_table()


def read_clips(out: str | os.PathLike, columns: list[str] | None = None):
    """All committed clip rows of OUT as one pyarrow Table, parts in (shard, seq) order; temp files ignored.

    With no parts yet, an empty table with the run's schema. `columns` selects a subset.
    """
    import pyarrow as pa

    tables = _read_parts(Path(out) / CLIPS_DIR, columns)
    if not tables:
        return _empty(schemas_for_run(load_run(out))[0], columns)
    return pa.concat_tables(tables)


def read_errors(out: str | os.PathLike):
    """All error rows of OUT (path, video_id, stage, error, attempts) as one pyarrow Table."""
    import pyarrow as pa

    tables = _read_parts(Path(out) / ERRORS_DIR)
    if not tables:
        return _empty(error_schema())
    return pa.concat_tables(tables)


def read_embeddings(out: str | os.PathLike):
    """(metadata Table without `embedding`, float32 numpy (n, D)) with rows in the same order as read_clips(out)."""
    import pyarrow as pa

    out = Path(out)
    import pyarrow.parquet as pq

    names = [name for name, _, _ in list_parts(out / CLIPS_DIR)]
    tables = [pq.read_table(out / CLIPS_DIR / name) for name in names]
    if not tables:
        schema = schemas_for_run(load_run(out))[0]
        meta = _empty(schema, [n for n in schema.names if n != "embedding"])
        return meta, np.zeros((0, schema.field("embedding").type.list_size), np.float32)
    matrices = []
    for name, table in zip(names, tables):
        column = table.column("embedding")
        dim = column.type.list_size
        flat = pa.concat_arrays([chunk.flatten() for chunk in column.chunks]) if column.num_chunks else None
        if flat is None or len(flat) != table.num_rows * dim:
            raise ValueError(f"{name}: embedding column has {0 if flat is None else len(flat)} values, "
                             f"expected {table.num_rows} x {dim}")
        matrices.append(flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim))
    meta = pa.concat_tables([t.drop_columns(["embedding"]) for t in tables])
    return meta, np.concatenate(matrices) if len(matrices) > 1 else matrices[0]
