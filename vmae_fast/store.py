"""Output of `vmae-fast extract`: a Parquet dataset of per-clip embeddings, written atomically, read back in order.

Layout (DESIGN.md, "Extraction and output"):

    OUT/_run.json                          run configuration + its hash, library version
    OUT/clips/part-<shard>-<seq>.parquet   one row per view (clip x crop); a video's views never straddle two files
    OUT/videos/part-<shard>-<seq>.parquet  one row per video of the clips part of the same name (views.py)
    OUT/errors/part-<shard>-<seq>.parquet  one row per failed video

The part files are the commit record: a part is written under a hidden temporary name in the same folder, fsynced
and renamed, so after a crash a video is either entirely in one visible part or in none. Temporary names start with
"." and end in ".tmp", which pyarrow, DuckDB and polars globs (`*.parquet`) all skip.

A video's clips and its video row are one commit: the videos part is written and renamed first, then the clips
part of the same <shard>-<seq>; the clips part's rename is the commit point. A videos part without its clips part
(a crash between the two renames) is an orphan: readers ignore it (views.video_parts), committed ids come from the
clips, and the next run of that shard removes it (prepare_output) before writing that <seq> again.

Format 2 (this one) added the clip column crop_index and OUT/videos; outputs of format 1 stay readable (read_clips
fills crop_index with 1, the center crop they all hold; read_videos aggregates their clips) but are not resumed
into: a run refuses them unless --overwrite.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import views

FORMAT = "vmae_fast.extract/2"
RUN_FILE = "_run.json"
CLIPS_DIR = "clips"
ERRORS_DIR = "errors"
RETIRED_DIR = "_retried"  # under ERRORS_DIR: error rows replaced by --retry-errors (retire_errors)
VIDEOS_DIR = views.VIDEOS_DIR
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

    - OUT/_run.json with the same config_hash: resume (nothing is removed except this shard's stray temp files and
      its orphan videos parts, see the module docstring).
    - An output of another FORMAT, a different configuration, or parts without a _run.json: refused with
      ValueError, nothing touched, unless
      `overwrite`, which removes this shard's parts (shard 0 also the parts of shards >= num_shards), the index
      files and the old _run.json. Shards of one run each clear only their own parts, so `--overwrite` under
      torchrun/SLURM never deletes what a sibling has just written.
    - The new _run.json is written atomically before any part.
    """
    out = Path(out)
    run_path = out / RUN_FILE
    clips, errors, videos = out / CLIPS_DIR, out / ERRORS_DIR, out / VIDEOS_DIR
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output {out} exists and is not a directory")
    existing = None
    if run_path.is_file():
        try:
            existing = json.loads(run_path.read_text())
        except (OSError, ValueError) as e:
            if not overwrite:
                raise ValueError(f"{run_path} is unreadable ({e}); use --overwrite to start over") from None
    has_parts = any(list_parts(d) for d in (clips, errors, videos))
    if not overwrite:
        if existing is None and has_parts:
            raise ValueError(f"{out} holds part files but no {RUN_FILE}; use --overwrite or another output directory")
        if existing is not None and existing.get("format") != run["format"]:
            raise ValueError(f"{out} was written by another vmae-fast version (format {existing.get('format')}, this "
                             f"one writes {run['format']}: clips with crop_index and a video table); its rows stay "
                             "readable, but a run cannot add to it: use --overwrite or another output directory")
        if existing is not None and existing.get("config_hash") != run["config_hash"]:
            changes = diff_configs(existing.get("config", {}), run["config"])
            detail = "; ".join(changes[:3]) + (f" (+{len(changes) - 3} more)" if len(changes) > 3 else "")
            raise ValueError(f"{out} was written with a different configuration ({detail or 'format changed'}); "
                             "use --overwrite to replace it or choose another output directory")
    for d in (clips, errors, videos):
        d.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for d in (videos, clips, errors):
            for name, part_shard, _ in list_parts(d):
                if part_shard == shard or (shard == 0 and part_shard >= num_shards):
                    (d / name).unlink(missing_ok=True)
        _remove_index_files(out)
    clean_temp_files(out, shard)
    remove_orphan_video_parts(out, shard)
    if overwrite or existing is None:
        write_atomic(run_path, (json.dumps(run, indent=2, sort_keys=True, default=str) + "\n").encode(),
                     f".{RUN_FILE}.{shard}.tmp")
    return out


def _remove_index_files(out: Path) -> None:
    """The retrieval index is built from the rows; after --overwrite it would describe rows that no longer exist."""
    for entry in out.iterdir():
        if entry.name in (RUN_FILE, CLIPS_DIR, ERRORS_DIR, VIDEOS_DIR):
            continue
        if entry.name.startswith(("index", "_index")) or entry.suffix in (".faiss", ".index"):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)


def clean_temp_files(out: Path, shard: int) -> list[Path]:
    """Remove this shard's temporary files left by a killed run; returns what was removed."""
    removed = []
    patterns = [(out / d, f".part-{shard:05d}-*.tmp") for d in (CLIPS_DIR, VIDEOS_DIR, ERRORS_DIR)]
    patterns.append((out, f".{RUN_FILE}.{shard}.tmp"))
    for directory, pattern in patterns:
        if directory.is_dir():
            for path in directory.glob(pattern):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def remove_orphan_video_parts(out: Path, shard: int) -> list[Path]:
    """Remove this shard's videos parts whose clips part does not exist (a crash between the two renames of a
    commit, see the module docstring); returns what was removed. Readers ignore such parts anyway."""
    clips = {name for name, _, _ in list_parts(out / CLIPS_DIR)}
    removed = []
    for name, part_shard, _ in list_parts(out / VIDEOS_DIR):
        if part_shard == shard and name not in clips:
            (out / VIDEOS_DIR / name).unlink(missing_ok=True)
            removed.append(out / VIDEOS_DIR / name)
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


def retire_errors(out: str | os.PathLike, shard: int) -> int:
    """`--retry-errors`: move the error parts this shard wrote out of the dataset, into
    OUT/errors/_retried/<UTC time>-<pid>-<shard>/, so that their videos count as not done and are redone; returns
    the rows moved. A video's newest outcome is then the only one readers see: its new clips, or a new error row.
    Renames only (no part is rewritten), one part at a time under the shard lock: after a crash half-way, a moved
    part's videos are simply not done yet. Readers skip the moved rows: list_parts and `errors/*.parquet` globs do
    not descend, pyarrow datasets ignore "_" folders; a recursive glob (errors/**/*.parquet) would see them."""
    import pyarrow.parquet as pq

    errors = Path(out) / ERRORS_DIR
    names = [name for name, part_shard, _ in list_parts(errors) if part_shard == shard]
    if not names:
        return 0
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = errors / RETIRED_DIR / f"{stamp}-{os.getpid()}-shard{shard:05d}"
    dest.mkdir(parents=True, exist_ok=True)
    rows = 0
    for name in names:
        rows += pq.read_metadata(errors / name).num_rows
        os.replace(errors / name, dest / name)
    _fsync_dir(errors)
    _fsync_dir(dest)
    return rows


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
    """Arrow schema of clips parts: the DESIGN.md columns, one row per view (video_id, clip_index, crop_index);
    `logits` only when the model has a head."""
    import pyarrow as pa

    if embedding_dtype not in EMBEDDING_DTYPES:
        raise ValueError(f"embedding_dtype must be one of {EMBEDDING_DTYPES}, got {embedding_dtype!r}")
    fields = [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("clip_index", pa.int32(), nullable=False),
        pa.field("crop_index", pa.int8(), nullable=False),  # 0 start, 1 center, 2 end of the long side
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


def video_schema_for_run(run: dict):
    """Schema of the run's videos parts (views.video_schema), metadata included."""
    config = run["config"]
    return views.video_schema(int(config["embedding_dim"]), int(config["num_labels"] or 0),
                              metadata=file_metadata(run))


# --- writing --------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def deferred_signals(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)):
    """Run the block with SIGINT/SIGTERM held back: a signal that arrives meanwhile runs its handler (raising
    KeyboardInterrupt, say) when the block ends. A part's commit (rename, then forgetting its rows) is then never
    split: split, the flush on the way out would write the same videos again. Python runs signal handlers in the
    main thread only, so elsewhere (a Ray actor's thread) there is nothing to defer."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {s: signal.getsignal(s) for s in signums}
    held = [s for s, handler in previous.items() if callable(handler)]  # SIG_IGN stays ignored; SIG_DFL kills
    for s in held:
        signal.signal(s, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for s in held:
            signal.signal(s, previous[s])
        for s in dict.fromkeys(pending):  # once per signal, in arrival order, with the handlers back in place
            previous[s](s, None)


class PartWriter:
    """Writes numbered parts `part-<shard>-<seq>.parquet` of one folder, each atomically (temp + fsync + rename)."""

    def __init__(self, directory: str | os.PathLike, shard: int, schema):
        self.directory = Path(directory)
        self.shard = shard
        self.schema = schema
        seqs = [seq for _, s, seq in list_parts(self.directory) if s == shard]
        self.next_seq = max(seqs, default=-1) + 1
        self.files_written = 0

    def table(self, columns: dict[str, Any]):
        """A pyarrow Table with this writer's schema from column arrays (the schema's names; extra keys ignored)."""
        import pyarrow as pa

        return pa.Table.from_pydict({name: columns[name] for name in self.schema.names}, schema=self.schema)

    def write(self, columns: dict[str, Any]) -> Path:
        """Write one part from column arrays (names and order of the schema); returns the committed path."""
        return self.write_table(self.table(columns))

    def write_table(self, table, seq: int | None = None) -> Path:
        """Write one part holding `table` (with this writer's schema), as part <seq> (default: the next); returns
        the committed path. A given seq is how a videos part takes the number of the clips part it belongs to."""
        import pyarrow.parquet as pq

        seq = self.next_seq if seq is None else seq
        name = f"part-{self.shard:05d}-{seq:06d}.parquet"
        tmp = self.directory / f".{name}.tmp"
        with open(tmp, "wb") as f:
            # row groups of 16k rows: readers (ours, DuckDB, polars) decode a whole group at once, and one group of
            # 100k x 768 floats would cost ~1.3 GB; dictionary encoding only where values repeat (ids, paths)
            pq.write_table(table, f, compression="zstd", row_group_size=16384, use_dictionary=["video_id", "path"])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.directory / name)
        _fsync_dir(self.directory)
        self.next_seq = max(self.next_seq, seq + 1)
        self.files_written += 1
        return self.directory / name


def fixed_size_list(matrix: np.ndarray, dtype: str):
    """(n, D) numpy -> pyarrow fixed_size_list<dtype>[D] array."""
    import pyarrow as pa

    matrix = np.ascontiguousarray(matrix, dtype=np.dtype(dtype))
    values = pa.array(matrix.reshape(-1), type=getattr(pa, dtype)())
    return pa.FixedSizeListArray.from_arrays(values, matrix.shape[1])


class RunWriter:
    """Buffers committed videos of one shard and writes them as clips (+ videos) / errors parts.

    A part is written when the buffered rows reach `part_rows` or about `part_bytes`, when `commit_interval_s` has
    passed since the last write (bounding the work a crash can lose), and on `flush()`. Whole videos only. Each
    video's row of the video table is computed when the video is added (views.video_columns) and committed with its
    clips: videos part first, then the clips part of the same name, whose rename is the commit point.
    """

    def __init__(self, out: Path, run: dict, shard: int, *, part_rows: int = 100_000, part_bytes: int = 256 << 20,
                 commit_interval_s: float = 60.0):
        clip_schema_, error_schema_ = schemas_for_run(run)
        self.clips = PartWriter(out / CLIPS_DIR, shard, clip_schema_)
        self.videos = PartWriter(out / VIDEOS_DIR, shard, video_schema_for_run(run))
        self.errors = PartWriter(out / ERRORS_DIR, shard, error_schema_)
        self.embedding_dtype = run["config"]["embedding_dtype"]
        self.has_logits = bool(run["config"]["num_labels"])
        self.embedding_dim, self.num_labels = int(run["config"]["embedding_dim"]), int(run["config"]["num_labels"] or 0)
        self.id2label = run.get("model", {}).get("id2label")
        self.part_rows, self.part_bytes, self.commit_interval_s = part_rows, part_bytes, commit_interval_s
        self._clip_videos: list[dict] = []  # one dict of column arrays per video
        self._video_rows: list[dict] = []  # its video-table row (views.video_columns), same order
        self._clip_rows = 0
        self._clip_bytes = 0
        self._error_rows: list[dict] = []
        self._last_write = time.monotonic()
        self.write_s = 0.0

    def add_video(self, rows: dict[str, Any], duration_s: float | None = None) -> None:
        """rows: per-column lists/arrays of one video's views (clips x crops) in (clip_index, crop_index) order;
        `embedding` (n, D) and `logits` (n, C) float32; crop_index may be absent (one center crop: 1).
        duration_s: seconds of video the clips were sampled from (the decoder's; None: the span of the views)."""
        n = len(rows["clip_index"])
        if "crop_index" not in rows:
            rows = {**rows, "crop_index": [1] * n}
        video = views.video_columns(rows, self.embedding_dim, self.num_labels, self.id2label, duration_s)
        self._clip_videos.append(rows)
        self._video_rows.append(video)
        self._clip_rows += n
        self._clip_bytes += rows["embedding"].nbytes + (rows["logits"].nbytes if self.has_logits else 0) + 64 * n
        self._clip_bytes += video["embedding"].nbytes + (video["probs"].nbytes if self.num_labels else 0) + 256
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
        for name in ("video_id", "path", "clip_index", "crop_index", "start_frame", "end_frame", "start_s", "end_s",
                     "padded_frames", "num_tokens"):
            columns[name] = [value for video in videos for value in video[name]]
        columns["embedding"] = fixed_size_list(np.concatenate([v["embedding"] for v in videos]), self.embedding_dtype)
        if self.has_logits:
            columns["logits"] = fixed_size_list(np.concatenate([v["logits"] for v in videos]), "float32")
        # one commit: the videos part under the clips part's number, then the clips part (the commit point);
        # the rename and forgetting the rows are one step for Ctrl-C / SIGTERM (deferred_signals)
        videos_table, clips_table = views.columns_table(self._video_rows, self.videos.schema), self.clips.table(columns)
        with deferred_signals():
            seq = self.clips.next_seq  # an orphan videos part of this number (a crash) is simply replaced
            self.videos.write_table(videos_table, seq)
            self.clips.write_table(clips_table, seq)
            self._clip_videos, self._video_rows, self._clip_rows, self._clip_bytes = [], [], 0, 0
        self._last_write = time.monotonic()
        self.write_s += time.perf_counter() - t0

    def _write_errors(self) -> None:
        if not self._error_rows:
            return
        t0 = time.perf_counter()
        rows = self._error_rows
        with deferred_signals():
            self.errors.write({name: [row[name] for row in rows] for name in self.errors.schema.names})
            self._error_rows = []
        self._last_write = time.monotonic()
        self.write_s += time.perf_counter() - t0


# --- reading --------------------------------------------------------------------------------------------------------
def _read_parts(directory: Path, columns: list[str] | None = None):
    import pyarrow.parquet as pq

    return [pq.read_table(directory / name, columns=columns) for name, _, _ in list_parts(directory)]


def read_clip_part(path: str | os.PathLike, columns: list[str] | None = None):
    """One clips part as a pyarrow Table; a part of format 1 (no crop_index: every row is the center crop) gets
    crop_index = 1 after clip_index, so old and new outputs read alike."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    if "crop_index" in names:
        return pq.read_table(path, columns=columns)
    wanted = None if columns is None else [c for c in columns if c != "crop_index"]
    table = pq.read_table(path, columns=wanted)
    if columns is not None and "crop_index" not in columns:
        return table
    ones = pa.array(np.ones(table.num_rows, np.int8), pa.int8())
    field = pa.field("crop_index", pa.int8(), nullable=False)
    if columns is not None:
        at = columns.index("crop_index")
    else:
        at = table.column_names.index("clip_index") + 1 if "clip_index" in table.column_names else 0
    return table.add_column(at, field, ones)


def _read_clip_parts(out: Path, columns: list[str] | None = None):
    return [read_clip_part(out / CLIPS_DIR / name, columns) for name, _, _ in list_parts(out / CLIPS_DIR)]


def _empty(schema, columns: list[str] | None = None):
    import pyarrow as pa

    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
    return schema.empty_table()


def read_clips(out: str | os.PathLike, columns: list[str] | None = None):
    """All committed clip rows of OUT as one pyarrow Table, parts in (shard, seq) order; temp files ignored.

    With no parts yet, an empty table with the run's schema. `columns` selects a subset. Rows are views: key
    (video_id, clip_index, crop_index); parts of format 1 (before crops) read with crop_index 1.
    """
    import pyarrow as pa

    tables = _read_clip_parts(Path(out), columns)
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
    names = [name for name, _, _ in list_parts(out / CLIPS_DIR)]
    tables = [read_clip_part(out / CLIPS_DIR / name) for name in names]
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
