"""The inputs of a Ray run as a Ray Dataset, read on the cluster (ray_engine.py consumes it; the driver never holds
the entries).

Each INPUT argument becomes a dataset of raw entries, read in parallel by Ray's own readers where it can:

    list.parquet     ray.data.read_parquet (the columns path, video_id, start_s, end_s only)
    list.csv         ray.data.read_csv (those columns as strings, as the local engine reads them)
    list.txt         ray.data.read_text (one path a line; blank lines and # comments dropped)
    a folder         one read task walking it as the local engine does (inputs._Folder: one folder listing at a
                     time, sorted, symlink loops cut): a streaming listing, its unreadable folders as error entries
    a video or URL   one entry

and every batch of raw entries is turned, in the task that read it, into ENTRY columns by the local engine's rules
(inputs.py: video_id from the path when the list has none, paths relative to the list's folder, start_s / end_s
checked) with the 16-byte key of each id (ids.id_keys) already computed: what the resume filter and the duplicate
check (ray_engine._Coordinator) look up. A list may sit on any filesystem Ray's readers reach (a bucket URL); its
relative paths are then relative to the list's URL.

Entry rows differ from the local engine's in one way: Ray's readers do not say which line or record an entry came
from, so messages name the list file and the video_id instead of a line number. A video_id met twice is the
exception (repeat_places): once the run has stopped, the driver reads the two inputs again, up to the entries that
name it, and names their lines as the local engine does.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..faults import InvalidInput, InvalidOption
from ..ids import id_keys
from ..video import VIDEO_EXTENSIONS
from ..video.remote import is_url, url_video_id
from .inputs import _COLUMNS, BATCH_ROWS, LIST_EXTENSIONS, _Folder, _ListFile, _Source, repeat_message

READ_TASKS = 4  # read tasks at a time per input: the actors take the CPUs, so readers ask for none (see below)
# Readers and the admission run with num_cpus=0: an actor pool that holds every CPU of the cluster (one actor a GPU
# with all its node's cores, or a CPU-only cluster's actors) must not starve the stage that feeds it (it would wait
# forever); READ_TASKS bounds them instead. Their work is small beside decoding and the model (task_options).


def task_options() -> dict:
    """map_batches options of the stages beside the readers (normalize, the admission): no CPU, READ_TASKS at a time
    (`compute`: Ray 2.51+ logs a deprecation warning on every job for map_batches' `concurrency`)."""
    import ray.data

    return {"num_cpus": 0, "compute": ray.data.TaskPoolStrategy(size=READ_TASKS)}


# the columns of an entry after normalize(): one row per video (or per input that failed at discovery: stage/error)
ENTRY_SCHEMA = pa.schema([("path", pa.string()), ("video_id", pa.string()), ("start_s", pa.float64()),
                          ("end_s", pa.float64()), ("stage", pa.string()), ("error", pa.string()),
                          ("source", pa.int32()), ("key0", pa.uint64()), ("key1", pa.uint64())])


class _ListEntries(_ListFile):
    """A list file's rules (inputs._ListFile: ids, relative paths, start_s / end_s checks) for the entries Ray read,
    without opening the file again: made on the driver from the header, used in the read tasks."""

    def __init__(self, raw: str, columns: list[str]):
        _Source.__init__(self, raw)
        self.url = is_url(raw)
        self.path = Path(raw) if not self.url else Path(raw.split("://", 1)[1])
        self.suffix = Path(raw).suffix.lower()
        self.columns = list(columns)

    def where(self, row: int, video_id: str) -> str:
        return f"{self.raw}" + (f" (entry {video_id!r})" if video_id else "")

    def _task_path(self, written: str) -> str:
        written = written.strip()
        if self.url and not is_url(written) and not written.startswith("/"):
            return posixpath.join(self.raw.rsplit("/", 1)[0], written)  # relative to the list's URL
        return super()._task_path(written)

    def _relative_base(self) -> str | None:
        return None if self.url else super()._relative_base()


class RepeatedVideoId(InvalidInput):
    """A video_id the coordinator met twice (attributes: video_id, and inputs: the numbers of the INPUT arguments,
    as given, where it was met first and again); its message names the two inputs (see repeat_places)."""


def repeated_id(inputs, video_id: str, first: int, second: int) -> RepeatedVideoId:
    error = RepeatedVideoId(repeat_message(video_id, os.fspath(inputs[first]), os.fspath(inputs[second])))
    error.video_id, error.inputs = video_id, (first, second)  # kept through pickling (BaseException.__reduce__)
    return error


def located(error: RepeatedVideoId, inputs) -> RepeatedVideoId:
    """`error` naming the two entries' places (repeat_places) instead of their inputs, where they are found again."""
    places = repeat_places(inputs, error.video_id, *error.inputs)
    return error if places is None else RepeatedVideoId(repeat_message(error.video_id, *places))


def repeat_places(inputs, video_id: str, first: int, second: int) -> tuple[str, str] | None:
    """Where `video_id` is written in inputs[first] and again in inputs[second] (the same input: its first two entries
    naming it), as the local engine names them (list and line or row, a folder's file, a single input): the lists
    are read again with the local engine's rules, a batch at a time, up to the entries sought, holding nothing per
    entry. The driver calls it once a run has stopped on the repeat. None if a place is not found again: a list on
    a URL (not read again), or one that changed or cannot be read now."""
    wanted = {first: 1}
    wanted[second] = wanted.get(second, 0) + 1
    found = {s: _places(os.fspath(inputs[s]), video_id, n) for s, n in wanted.items()}
    if any(places is None or len(places) < wanted[s] for s, places in found.items()):
        return None
    return (found[first][0], found[first][1]) if first == second else (found[first][0], found[second][0])


def _places(raw: str, video_id: str, n: int) -> list[str] | None:
    """The first n places of `video_id` in the INPUT `raw` (see repeat_places)."""
    suffix = Path(raw).suffix.lower()
    if is_url(raw):
        return None if suffix in LIST_EXTENSIONS else [raw] * n
    if os.path.isdir(raw):
        return [_Folder(raw, set()).where(0, video_id)] * n
    if suffix not in LIST_EXTENSIONS:
        return [raw] * n
    places: list[str] = []
    try:
        source = _ListFile(raw)
        for batch in source.batches():
            for k in (k for k, entry in enumerate(batch.ids) if entry == video_id):
                places.append(source.where(int(batch.rows[k]), video_id))
                if len(places) == n:
                    return places
    except (OSError, InvalidInput):
        return None
    return places


def list_header(raw: str) -> list[str]:
    """The columns of a .csv / .parquet list (local path or URL); [] for .txt. A list without `path` is refused."""
    suffix = Path(raw).suffix.lower()
    if not is_url(raw):
        return _ListFile(raw).columns  # reads the header, refuses a list without a path column
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    filesystem, path = pafs.FileSystem.from_uri(raw)
    if suffix == ".parquet":
        columns = list(pq.read_schema(path, filesystem=filesystem).names)
    elif suffix == ".csv":
        with filesystem.open_input_stream(path) as f:
            columns = f.read(1 << 16).decode("utf-8").splitlines()[0].split(",")
        columns = [c.strip().strip('"') for c in columns]
    else:
        return []
    if "path" not in columns:
        raise InvalidInput(f"list file {raw} needs a 'path' column, found columns {columns}")
    return columns


def _empty() -> pa.Table:
    return ENTRY_SCHEMA.empty_table()


def _entries(source: int, ids: list[str], paths: list[str], starts=None, ends=None, stages=None,
             errors=None) -> pa.Table:
    n = len(ids)
    keys = id_keys(ids) if n else np.zeros((0, 2), np.uint64)
    none = [None] * n
    return pa.table({"path": pa.array(paths, pa.string()), "video_id": pa.array(ids, pa.string()),
                     "start_s": pa.array(none if starts is None else starts, pa.float64()),
                     "end_s": pa.array(none if ends is None else ends, pa.float64()),
                     "stage": pa.array(none if stages is None else stages, pa.string()),
                     "error": pa.array(none if errors is None else errors, pa.string()),
                     "source": pa.array(np.full(n, source, np.int32)),
                     "key0": pa.array(keys[:, 0]), "key1": pa.array(keys[:, 1])}, schema=ENTRY_SCHEMA)


def normalize(table: pa.Table, *, source: int, kind: str, rules: _ListEntries | None = None) -> pa.Table:
    """Raw entries as read (a batch of a list file, a folder walk's rows, a single input) -> ENTRY_SCHEMA rows.
    Runs in Ray's read tasks; raises InvalidInput (inputs.py's rules) naming the list and the entry for an empty
    path or a bad start_s / end_s (the run stops, as the local engine's does)."""
    if table.num_rows == 0:
        return _empty()
    if kind in ("folder", "single"):
        stage = table.column("stage").to_pylist() if "stage" in table.column_names else None
        error = table.column("error").to_pylist() if "error" in table.column_names else None
        return _entries(source, table.column("video_id").to_pylist(), table.column("path").to_pylist(),
                        stages=stage, errors=error)
    assert rules is not None
    if kind == "txt":
        lines = pc.utf8_trim_whitespace(table.column("text").combine_chunks())
        keep = pc.and_(pc.not_equal(lines, ""), pc.invert(pc.starts_with(lines, "#")))
        lines = lines.filter(pc.fill_null(keep, False))
        if not len(lines):
            return _empty()
        batch = rules._entries(lines, None, np.full(len(lines), -1, np.int64))
    else:
        record = table.combine_chunks().to_batches()[0]
        batch = rules._batch(record, np.full(record.num_rows, -1, np.int64))
    own = np.arange(len(batch.ids))
    paths, starts, ends = rules.fields(batch, own)
    return _entries(source, batch.ids, paths, starts, ends)


def _folder_datasource(raw: str):
    """A folder walked by one Ray read task, streamed: blocks of inputs._Folder's batches (WALK_BATCH entries),
    its unreadable folders as entries with stage 'discover' and their error. (A function: ray is optional.)"""
    from ray.data import Datasource
    from ray.data.block import BlockMetadata
    from ray.data.datasource import ReadTask

    class FolderDatasource(Datasource):
        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
            def walk():
                extensions = {e.lower() if e.startswith(".") else "." + e.lower() for e in VIDEO_EXTENSIONS}
                folder = _Folder(raw, extensions)
                for batch in folder.batches():
                    yield pa.table({"path": pa.array(batch.paths, pa.string()),
                                    "video_id": pa.array(batch.ids, pa.string()),
                                    "stage": pa.nulls(len(batch.ids), pa.string()),
                                    "error": pa.nulls(len(batch.ids), pa.string())})
                    yield from _errors(folder)
                yield from _errors(folder)

            metadata = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
            return [ReadTask(walk, metadata)]

    return FolderDatasource()


def _errors(folder: _Folder):
    if folder.errors:
        errors, folder.errors = folder.errors, []
        yield pa.table({"path": [e["path"] for e in errors], "video_id": [e["video_id"] for e in errors],
                        "stage": [e["stage"] for e in errors], "error": [e["error"] for e in errors]})


def input_dataset(inputs: tuple[str, ...] | list[str]) -> Any:
    """The entries of `inputs` (INPUT arguments: files, URLs, folders, list files) as one Ray Dataset of
    ENTRY_SCHEMA rows, read and normalized on the cluster as it streams. Checked here, on the driver, before
    anything is read: no INPUT, a missing INPUT (FileNotFoundError), a list without a `path` column."""
    import ray.data

    if not inputs:
        raise InvalidOption("no INPUT given: pass video files, folders or list files")
    datasets = []
    for source, raw in enumerate(os.fspath(i) for i in inputs):
        suffix = Path(raw).suffix.lower()
        options = {"batch_format": "pyarrow", "batch_size": BATCH_ROWS, "zero_copy_batch": True, **task_options()}
        read = {"num_cpus": 0, "concurrency": READ_TASKS}
        if (is_url(raw) and suffix in LIST_EXTENSIONS) or (not is_url(raw) and os.path.isfile(raw)
                                                         and suffix in LIST_EXTENSIONS):
            columns = list_header(raw)
            rules = _ListEntries(raw, columns)
            present = [c for c in _COLUMNS if c in columns]
            if suffix == ".parquet":
                # Ray 2.60's DataSourceV2 parquet path lists files in an operator of its own that asks for a CPU
                # (ListFiles), which an actor pool holding every CPU starves; V1 reads with the read tasks' own
                # resources (num_cpus=0). The dataset keeps a copy of the context it was made with.
                context = ray.data.DataContext.get_current()
                saved, context.use_datasource_v2 = context.use_datasource_v2, False
                try:
                    ds = ray.data.read_parquet(raw, columns=present, **read)
                finally:
                    context.use_datasource_v2 = saved
            elif suffix == ".csv":
                from pyarrow import csv as pacsv

                ds = ray.data.read_csv(raw, convert_options=pacsv.ConvertOptions(
                    include_columns=present, column_types={c: pa.string() for c in present},
                    strings_can_be_null=False, quoted_strings_can_be_null=False), **read)
            else:
                ds = ray.data.read_text(raw, drop_empty_lines=True, **read)
            kind = suffix[1:]
            datasets.append(ds.map_batches(normalize, fn_kwargs={"source": source, "kind": kind, "rules": rules},
                                           **options))
            continue
        if is_url(raw):
            row = {"path": raw, "video_id": url_video_id(raw)}
        elif not os.path.lexists(raw):
            raise FileNotFoundError(f"input {raw!r} does not exist")
        elif os.path.isdir(raw):
            ds = ray.data.read_datasource(_folder_datasource(raw), override_num_blocks=1, **read)
            datasets.append(ds.map_batches(normalize, fn_kwargs={"source": source, "kind": "folder"}, **options))
            continue
        else:
            row = {"path": os.path.abspath(raw), "video_id": Path(raw).name}
        ds = ray.data.from_arrow(pa.table({"path": [row["path"]], "video_id": [row["video_id"]]}))
        datasets.append(ds.map_batches(normalize, fn_kwargs={"source": source, "kind": "single"}, **options))
    return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]
