"""Where the videos come from: INPUT arguments -> this shard's VideoTasks, as a stream; the shard a video belongs
to (--shard, torchrun RANK/WORLD_SIZE, SLURM).

Discovery reads its inputs in batches and keeps only its own shard's entries: list files (.txt in chunks of lines,
.csv with pyarrow's streaming reader, .parquet by record batches of the needed columns) and folder walks
(os.scandir, one folder at a time) are hashed a batch at a time (shards_of), so a process holds one batch plus its
own tasks, and its first video can be decoded while the rest of a 100M-entry list is still being read. Entries of
other shards are never turned into tasks, their paths never made absolute or checked.

Duplicates: a video_id hashes to one shard, so the process that owns an id sees every entry that names it; each
process checks its own ids (16-byte keys in sorted runs, committed.KeySet: 24 bytes an entry) and none of the
others'. Together the shards check every id; one process alone (--shard i/n) checks 1/n of them. A duplicate is
met where it is read: the run stops there with a ValueError naming the id and both places (videos committed before
it stay committed).
"""

from __future__ import annotations

import csv
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import csv as pacsv

from ..faults import ENVIRONMENT, EnvironmentFault, InvalidInput, InvalidOption, MissingFile, classify
from ..ids import KeySet, id_keys, shard_of, shards_of
from ..video import VIDEO_EXTENSIONS, VideoTask
from ..video.remote import is_url, url_video_id

LIST_EXTENSIONS = (".txt", ".csv", ".parquet")
# a list entry that is a plain path (_ListFile._task_paths): matches PLAIN_PATH and not NOT_PLAIN: components of one
# or more characters, none '.' or '..', after an optional '/' a printable ASCII character but '/', '~' or a space,
# no '://', a printable ASCII character last
PLAIN_PATH = r"^/?[!-.0-}][^/]*(/[^/]+)*$"
NOT_PLAIN = r"(^|/)\.\.?(/|$)|://|[^!-~]$"
BATCH_ROWS = 65536  # list entries read (and hashed) at a time
WALK_BATCH = 4096  # folder entries hashed at a time
PROGRESS_EVERY_S = 1.0
PRIME_ENTRIES = 1 << 18  # entries read before extract() writes anything: their errors cost no partial run
_COLUMNS = ("path", "video_id", "start_s", "end_s")  # other columns of a list (labels, notes) are ignored
# a path written like this is not its own video_id: Path() would rewrite it (or it is a URL); others are
_REWRITTEN = r"^\s|\s$|^~|//|(^|/)\.(/|$)|/$|^\.$"
_ROW_BITS = 40  # entry codes: source index << 40 | row (for the duplicate message)


# --- inputs -----------------------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    """What the INPUT arguments name: video tasks in a stable order, plus entries that failed at discovery."""

    tasks: list  # list[video.VideoTask]
    errors: list[dict] = field(default_factory=list)  # {path, video_id, stage, error, attempts}


def _video_id(path: str) -> str:
    return Path(path).as_posix().removeprefix("./")


def _derived_id(raw: str) -> str:
    """video_id of a list entry without one: the path as written (normalized), or a URL's path."""
    raw = raw.strip()
    if is_url(raw):
        return url_video_id(raw)
    return _video_id(str(Path(os.path.expanduser(raw))))


def _optional_float(value: Any, where: str, column: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{where}: {column} must be a number of seconds, got {value!r}") from None
    if np.isnan(seconds):
        raise InvalidInput(_nan_message(where, column))
    return seconds


def _nan_message(where: str, column: str) -> str:
    empty = "start at the beginning" if column == "start_s" else "read to the end"
    return f"{where}: {column} must be a number of seconds, got nan (leave it empty to {empty})"


@dataclass
class _Batch:
    """Entries read together: their ids, their rows (line / record numbers, for messages) and the columns the
    tasks are made of (a list or a pyarrow array: only this shard's entries are ever read out of them)."""

    ids: list[str]
    rows: np.ndarray  # int64
    paths: Any  # the path as written (lists) or absolute (folders)
    starts: Any = None  # start_s / end_s column of a list, None when it has none
    ends: Any = None


class _Source:
    """One INPUT argument; batches() yields _Batch; where(row, video_id) says where an entry came from."""

    errors: list[dict]

    def __init__(self, raw: str):
        self.raw = raw
        self.errors = []

    def batches(self) -> Iterator[_Batch]:
        raise NotImplementedError

    def where(self, row: int, video_id: str) -> str:
        return self.raw

    def fields(self, batch: _Batch, own: np.ndarray) -> tuple[list[str], list, list]:
        """(task paths, start_s, end_s) of the entries `own` of a batch, checked."""
        return [batch.paths[i] for i in own], [None] * len(own), [None] * len(own)


class _Single(_Source):
    """A video file, or a URL, named on the command line: video_id = its file name (a URL: its path)."""

    def batches(self) -> Iterator[_Batch]:
        url = is_url(self.raw)
        video_id = url_video_id(self.raw) if url else Path(self.raw).name
        yield _Batch([video_id], np.zeros(1, np.int64), [self.raw if url else os.path.abspath(self.raw)])


class _Folder(_Source):
    """Every entry with a video extension under a folder, recursively (symlinked folders followed, each real
    folder once), one folder listing at a time, names in sorted order; video_id = path relative to the folder."""

    def __init__(self, raw: str, extensions: set[str]):
        super().__init__(raw)
        self.extensions = extensions

    def where(self, row: int, video_id: str) -> str:
        return f"{self.raw}/{video_id}"

    def _listing(self, directory: str, rel: str, seen: set) -> list[tuple[str, bool]] | None:
        """The sorted (name, is a folder) entries of a folder; None for a folder seen before (a symlink loop) or
        one that cannot be listed for good (permission denied, gone): its discover error row. A listing that may
        succeed a moment later (EIO, ESTALE: faults.classify's environment errnos) is the environment's fault: the
        run stops with EnvironmentFault and records nothing for the folder, so the rerun lists it."""
        try:
            st = os.stat(directory)
            if (st.st_dev, st.st_ino) in seen:  # a symlink leading back up the tree
                return None
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(directory) as it:
                return sorted((e.name, e.is_dir()) for e in it)
        except OSError as e:
            if classify(e) == ENVIRONMENT:
                raise EnvironmentFault(f"cannot list {os.path.abspath(e.filename or directory)}: "
                                       f"{type(e).__name__}: {e.strerror or e}") from e
            self.errors.append({"path": os.path.abspath(e.filename or directory), "video_id": _video_id(rel or "."),
                                "stage": "discover", "error": f"{type(e).__name__}: {e.strerror or e}",
                                "attempts": 1})
            return None

    def batches(self) -> Iterator[_Batch]:
        root = os.path.abspath(self.raw)
        seen: set[tuple[int, int]] = set()
        ids: list[str] = []
        paths: list[str] = []
        first = self._listing(root, "", seen)
        stack = [(root, "", iter(first or []))]
        while stack:
            directory, rel, entries = stack[-1]
            item = next(entries, None)
            if item is None:
                stack.pop()
                continue
            name, is_dir = item
            entry_rel = f"{rel}/{name}" if rel else name
            # a folder named like a video (x.mp4/) is an entry the user expects to see: it becomes an error row
            if os.path.splitext(name)[1].lower() in self.extensions:
                ids.append(entry_rel)
                paths.append(os.path.join(directory, name))
                if len(ids) >= WALK_BATCH:
                    yield _Batch(ids, np.zeros(len(ids), np.int64), paths)
                    ids, paths = [], []
            elif is_dir:
                listing = self._listing(os.path.join(directory, name), entry_rel, seen)
                if listing:
                    stack.append((os.path.join(directory, name), entry_rel, iter(listing)))
        if ids:
            yield _Batch(ids, np.zeros(len(ids), np.int64), paths)


class _ListFile(_Source):
    """A .txt (one path a line, # comments), .csv or .parquet (columns path and optional video_id, start_s, end_s)
    list; relative paths are relative to the list's folder, video_id defaults to the path as written (a URL: its
    path). The header is read when the source is made (a missing `path` column is an error before any work)."""

    def __init__(self, raw: str):
        super().__init__(raw)
        self.path = Path(raw)
        self.suffix = self.path.suffix.lower()
        self.columns: list[str] = []
        try:
            if self.suffix == ".csv":
                with open(self.path, newline="", encoding="utf-8") as f:
                    self.columns = next(csv.reader(f), [])
            elif self.suffix == ".parquet":
                self.columns = list(pq.ParquetFile(self.path).schema_arrow.names)
        except (UnicodeDecodeError, csv.Error, pa.ArrowInvalid) as e:  # not a list file of its kind
            raise InvalidInput(f"list file {self.path} cannot be read as {self.suffix[1:]}: {e}") from None
        if self.suffix != ".txt" and "path" not in self.columns:
            raise InvalidInput(f"list file {self.path} needs a 'path' column, found columns {self.columns}")

    def where(self, row: int, video_id: str) -> str:
        return f"{self.path} row {row}" if self.suffix == ".parquet" else f"{self.path}:{row}"

    def _task_path(self, written: str) -> str:
        written = written.strip()
        if is_url(written):
            return written
        entry = Path(os.path.expanduser(written))
        return os.path.abspath(entry if entry.is_absolute() else self.path.parent / entry)

    def _relative_base(self) -> str | None:
        """The folder a plain relative entry is joined to (_task_paths' shortcut); None: every relative entry
        through _task_path."""
        return os.path.abspath(self.path.parent)

    def _task_paths(self, written: pa.Array) -> list[str]:
        """[_task_path(p) for p in written] (no null), ~0.5 s a million entries instead of 7-10 s here: an entry
        that is a plain path already (PLAIN_PATH: no empty, '.' or '..' component, no '~' or '://', a printable
        ASCII character at both ends, so nothing for strip() or normalization to do) is its own task path when
        absolute, the list's folder + '/' + it when relative; the others go through _task_path."""
        written = written.cast(pa.string())
        plain = pc.and_(pc.match_substring_regex(written, PLAIN_PATH),
                        pc.invert(pc.match_substring_regex(written, NOT_PLAIN)))
        base = self._relative_base()
        if base is not None:
            joined = pc.binary_join_element_wise(pa.scalar(base.rstrip("/")), written, "/")
            fast = pc.if_else(pc.starts_with(written, "/"), written, joined)
        else:
            plain = pc.and_(plain, pc.starts_with(written, "/"))
            fast = written
        paths = pc.if_else(plain, fast, pa.nulls(len(written), pa.string())).to_pylist()
        for i in np.flatnonzero(~plain.to_numpy(zero_copy_only=False)):
            paths[i] = self._task_path(written[int(i)].as_py())
        return paths

    def fields(self, batch: _Batch, own: np.ndarray) -> tuple[list[str], list, list]:
        """Only this shard's entries are checked here: an empty path or a bad start_s/end_s of another shard's
        entry is reported by the process that owns its video_id."""
        take = pa.array(own, pa.int64())
        rows = batch.rows[own]
        written = batch.paths.take(take)

        def at(i: int) -> str:  # where own[i] is written (a Ray read task knows no lines: the list and the id)
            return self.where(int(rows[i]), batch.ids[int(own[i])])

        for i, path in enumerate(written.to_pylist()):
            if path is None or not str(path).strip():
                raise InvalidInput(f"{at(i)}: empty path")
        starts = self._seconds(batch.starts.take(take), "start_s", at) if batch.starts is not None else None
        ends = self._seconds(batch.ends.take(take), "end_s", at) if batch.ends is not None else None
        # a range that selects no time is the list's mistake, named here, not an error row of its video later
        for i in range(len(own) if starts is not None or ends is not None else 0):
            start = None if starts is None or np.isnan(starts[i]) else float(starts[i])
            end = None if ends is None or np.isnan(ends[i]) else float(ends[i])
            if start is not None and start < 0:
                raise InvalidInput(f"{at(i)}: start_s must be >= 0, got {start}")
            if start is not None and not np.isfinite(start):
                raise InvalidInput(f"{at(i)}: start_s must be a finite number of seconds >= 0, got {start} (leave "
                                   "it empty to start at the beginning)")
            if start is not None and end is not None and end <= start:
                raise InvalidInput(f"{at(i)}: end_s must be greater than start_s, got start_s={start} end_s={end}")
            if start is None and end is not None and end <= 0:
                raise InvalidInput(f"{at(i)}: end_s must be greater than 0 (the start, when start_s is empty), got "
                                   f"{end}")
        none = [None] * len(own)
        return (self._task_paths(written),
                none if starts is None else [None if np.isnan(v) else float(v) for v in starts],
                none if ends is None else [None if np.isnan(v) else float(v) for v in ends])

    def batches(self) -> Iterator[_Batch]:
        if self.suffix == ".txt":
            yield from self._txt()
            return

        present = [c for c in _COLUMNS if c in self.columns]
        if self.suffix == ".csv":
            reader = pacsv.open_csv(self.path, read_options=pacsv.ReadOptions(block_size=8 << 20),
                                    convert_options=pacsv.ConvertOptions(
                                        include_columns=present, column_types={c: pa.string() for c in present},
                                        strings_can_be_null=False, quoted_strings_can_be_null=False))
            first = 2  # line 1 is the header
        else:
            reader = pq.ParquetFile(self.path, pre_buffer=False).iter_batches(batch_size=BATCH_ROWS, columns=present)
            first = 0
        row = first
        try:
            for record_batch in reader:
                n = record_batch.num_rows
                if n:
                    yield self._batch(record_batch, np.arange(row, row + n, dtype=np.int64))
                row += n
        except pa.ArrowInvalid as e:
            raise InvalidInput(f"list file {self.path} cannot be read near entry {row}: {e}") from None

    def _txt(self) -> Iterator[_Batch]:
        lines: list[str] = []
        rows: list[int] = []
        number = 0
        with open(self.path, encoding="utf-8") as f:
            try:
                for number, line in enumerate(f, 1):
                    line = line.strip()
                    if line and not line.startswith("#"):
                        lines.append(line)
                        rows.append(number)
                        if len(lines) >= BATCH_ROWS:
                            yield self._entries(pa.array(lines, pa.string()), None, np.asarray(rows, np.int64))
                            lines, rows = [], []
            except UnicodeDecodeError as e:
                raise InvalidInput(f"list file {self.path} is not UTF-8 text after line {number}: {e}") from None
        if lines:
            yield self._entries(pa.array(lines, pa.string()), None, np.asarray(rows, np.int64))

    def _batch(self, record_batch, rows: np.ndarray) -> _Batch:
        names = record_batch.schema.names
        paths = record_batch.column(names.index("path")).cast(pa.string())
        given = record_batch.column(names.index("video_id")).cast(pa.string()) if "video_id" in names else None
        batch = self._entries(paths, given, rows)
        if "start_s" in names:
            batch.starts = record_batch.column(names.index("start_s"))
        if "end_s" in names:
            batch.ends = record_batch.column(names.index("end_s"))
        return batch

    def _entries(self, paths, given, rows: np.ndarray) -> _Batch:
        """ids of a batch: the video_id column where it has a value, else the path as written (the few paths
        that Path() would rewrite, and URLs, are derived one by one)."""
        if given is not None and given.null_count == 0 and pc.min(pc.utf8_length(given)).as_py() > 0:
            return _Batch(given.to_pylist(), rows, paths)  # every entry names its video_id
        derive = pc.or_(pc.match_substring_regex(paths, _REWRITTEN), pc.match_substring(paths, "://"))
        if given is not None:
            has_id = pc.fill_null(pc.not_equal(given, ""), False)
            ids = pc.if_else(has_id, given, paths).to_pylist()
            derive = pc.and_(derive, pc.invert(has_id))
        else:
            ids = paths.to_pylist()
        derive = pc.fill_null(derive, False).to_numpy(zero_copy_only=False)
        for i in np.flatnonzero(derive):
            ids[i] = _derived_id(ids[i] if given is None else paths[int(i)].as_py())
        for i in np.flatnonzero(pc.is_null(paths).to_numpy(zero_copy_only=False)):
            if ids[i] is None:  # no path and no id: its own shard cannot be known
                raise InvalidInput(f"{self.where(int(rows[i]), '')}: empty path")
        return _Batch(ids, rows, paths)

    def _seconds(self, column, name: str, at: Callable[[int], str]) -> np.ndarray:
        """float64 seconds of a start_s/end_s column, NaN where empty; a value that is not a number, NaN written
        out included, is an error naming its line (at(i): where entry i is written)."""
        values = column
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            trimmed = pc.utf8_trim_whitespace(column)
            values = pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)
        try:
            values = values.cast(pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            out = np.empty(len(column))
            for i, value in enumerate(column.to_pylist()):  # the slow way, to name the bad line
                seconds = _optional_float(value, at(i), name)
                out[i] = np.nan if seconds is None else seconds
            return out
        out = values.to_numpy(zero_copy_only=False)  # NaN where empty (null) and where NaN was written
        written_nan = np.isnan(out) & ~pc.is_null(values).to_numpy(zero_copy_only=False)
        if written_nan.any():
            i = int(np.flatnonzero(written_nan)[0])
            raise InvalidInput(_nan_message(at(i), name))
        return out


def _check_repeats(seen, sources: list[_Source], s: int, batch: _Batch, own: np.ndarray, keys: np.ndarray) -> None:
    """ValueError naming the first id of batch[own] (from sources[s]) already in `seen` or repeated in the batch,
    with both places."""
    repeat = seen.first_repeat(keys)
    if repeat is None:
        return
    j, code, earlier = repeat
    video_id = batch.ids[int(own[j])]
    if code is not None:
        first = sources[code >> _ROW_BITS].where(code & ((1 << _ROW_BITS) - 1), video_id)
    else:
        first = sources[s].where(int(batch.rows[own[earlier]]), video_id)
    raise InvalidInput(repeat_message(video_id, first, sources[s].where(int(batch.rows[own[j]]), video_id)))


def repeat_message(video_id: str, first: str, second: str) -> str:
    """The message of a video_id met twice (both engines): the id and where it is written each time."""
    return (f"video_id {video_id!r} appears twice ({first} and {second}); give distinct video_id values in a list "
            "file or pass each folder once")


class Discovery:
    """The VideoTasks of one shard of `inputs`, produced while the inputs are read (iterate it once).

    inputs: video files or URLs, folders (recursive) and list files (.txt/.csv/.parquet); see _Folder, _ListFile.
    shard: (index, count). skip: a committed.KeySet of ids already done (counted in `skipped`, not yielded).
    progress: called as progress(discovery) about once a second while reading, and at the end.
    Made eagerly: a missing INPUT (FileNotFoundError), no INPUT, a list without a `path` column (ValueError) raise
    here. While iterating: a video_id named twice in this shard, an empty path or a bad start_s/end_s raise
    ValueError naming the entry (prime() meets those of the first entries before the run writes anything).
    Counters: entries (read, every shard), mine (this shard's), skipped, finished (inputs all read), seconds;
    take_errors(): this shard's discovery error rows (unreadable folders), for whoever writes them.
    """

    def __init__(self, inputs: str | os.PathLike | Sequence[str | os.PathLike], shard: tuple[int, int] = (0, 1), *,
                 skip=None, progress: Callable[[Discovery], None] | None = None):
        if isinstance(inputs, (str, os.PathLike)):
            inputs = [inputs]
        if not inputs:
            raise InvalidOption("no INPUT given: pass video files, folders or list files")
        self.index, self.num_shards = shard
        self.skip, self.progress = skip, progress
        extensions = {e.lower() if e.startswith(".") else "." + e.lower() for e in VIDEO_EXTENSIONS}
        self._sources: list[_Source] = []
        for raw in inputs:
            raw = os.fspath(raw)
            if is_url(raw):
                self._sources.append(_Single(raw))
                continue
            if not os.path.lexists(raw):
                raise MissingFile(f"input {raw!r} does not exist")
            if os.path.isdir(raw):
                self._sources.append(_Folder(raw, extensions))
            elif Path(raw).suffix.lower() in LIST_EXTENSIONS:
                self._sources.append(_ListFile(raw))
            else:
                self._sources.append(_Single(raw))
        self.entries = self.mine = self.skipped = 0
        self.finished = False
        self.error_count = 0  # error rows handed out by take_errors()
        self.seconds = 0.0  # spent reading, hashing and checking (not waiting for the consumer)
        self._errors: deque[dict] = deque()
        self._buffer: deque = deque()  # batches read by prime(), not yet iterated
        self._gen = None
        self._seen = None
        self._iterated = False

    def prime(self, entries: int = PRIME_ENTRIES) -> None:
        """Read ahead until `entries` entries are read or the inputs end, holding this shard's tasks among them:
        an input whose errors (duplicates, bad rows) all lie in its first `entries` entries raises here, before the
        caller writes anything. extract() primes before it prepares the output."""
        while not self.finished and self.entries < entries:
            item = next(self._reader(), None)
            if item is None:
                break
            self._buffer.append(item)

    def __iter__(self) -> Iterator:
        if self._iterated:
            raise RuntimeError("a Discovery is iterated once")
        self._iterated = True
        reader = self._reader()
        while True:
            item = self._buffer.popleft() if self._buffer else next(reader, None)
            if item is None:
                break
            tasks, keys = item
            if self.skip is not None and len(tasks):
                done = self.skip.lookup(keys)[0]
                self.skipped += int(done.sum())
                tasks = [task for task, d in zip(tasks, done, strict=True) if not d]
            yield from tasks
        if self.progress is not None:
            self.progress(self)

    def take_errors(self) -> list[dict]:
        """This shard's discovery error rows met so far (unreadable folders), minus the committed ones; each once."""
        taken = []
        while self._errors:
            error = self._errors.popleft()
            if self.skip is not None and self.skip.lookup(id_keys([error["video_id"]]))[0][0]:
                continue
            taken.append(error)
        self.error_count += len(taken)
        return taken

    def _reader(self) -> Iterator[tuple[list, np.ndarray]]:
        """The one generator that reads the inputs: (this shard's tasks, their id keys) per batch."""
        if self._gen is None:
            self._gen = self._read()
        return self._gen

    def _read(self) -> Iterator[tuple[list, np.ndarray]]:
        self._seen = KeySet()
        last_report = time.monotonic()
        for s, source in enumerate(self._sources):
            t0 = time.perf_counter()
            for batch in source.batches():
                self._take_errors(source)
                own = self._own(batch.ids)
                self.entries += len(batch.ids)
                tasks, keys = [], None
                if len(own):
                    keys = id_keys([batch.ids[i] for i in own])
                    _check_repeats(self._seen, self._sources, s, batch, own, keys)
                    self._seen.add(keys, (s << _ROW_BITS) | batch.rows[own])
                    self.mine += len(own)
                    paths, starts, ends = source.fields(batch, own)
                    tasks = [VideoTask(path=path, video_id=batch.ids[int(i)], start_s=start, end_s=end)
                             for i, path, start, end in zip(own, paths, starts, ends, strict=True)]
                self.seconds += time.perf_counter() - t0
                yield tasks, keys  # every batch, own entries or not: prime() stops where it should
                t0 = time.perf_counter()
                if self.progress is not None and time.monotonic() - last_report >= PROGRESS_EVERY_S:
                    self.progress(self)
                    last_report = time.monotonic()
            self._take_errors(source)
            self.seconds += time.perf_counter() - t0
        self.finished = True

    def _own(self, ids: list[str]) -> np.ndarray:
        if self.num_shards == 1:
            return np.arange(len(ids))
        return np.flatnonzero(shards_of(ids, self.num_shards) == self.index)

    def _take_errors(self, source: _Source) -> None:
        while source.errors:
            error = source.errors.pop(0)
            if self.num_shards == 1 or shard_of(error["video_id"], self.num_shards) == self.index:
                self._errors.append(error)


def iter_tasks(inputs: str | os.PathLike | Sequence[str | os.PathLike], shard: tuple[int, int] = (0, 1),
               **options) -> Iterator:
    """The VideoTasks of one shard, streamed: iter(Discovery(inputs, shard, **options))."""
    return iter(Discovery(inputs, shard, **options))


def discover_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> Inputs:
    """Every VideoTask of `inputs` in one list (no shard), plus the discovery error rows; see Discovery.

    - a directory: every file (or entry) with a video extension in any case, recursively; video_id = path relative
      to that directory (POSIX separators).
    - a list file (.txt one path a line, .csv/.parquet with `path` and optional `video_id`, `start_s`, `end_s`);
      relative paths are relative to the list file's folder; video_id defaults to the path as written (a URL: its
      path).
    - an http(s):// or fsspec URL, or any other file: one video; video_id = its file name (a URL: its path).
    A missing INPUT is fatal (FileNotFoundError); a video_id named twice is fatal (ValueError naming it); entries that
    cannot be read (a bad file, a dangling link, a folder named .mp4) become error rows when they are decoded.
    """
    discovery = Discovery(inputs)
    tasks = list(discovery)
    return Inputs(tasks=tasks, errors=discovery.take_errors())


# --- shards -------------------------------------------------------------------------------------------
def parse_shard(shard, option: str = "--shard") -> tuple[int, int] | None:
    """'i/n' or (i, n) -> (i, n) with 0 <= i < n; None stays None. InvalidOption naming `option` otherwise."""
    if shard is None:
        return None
    if isinstance(shard, str):
        try:
            index, count = (int(x) for x in shard.split("/"))
        except ValueError:
            raise InvalidOption(f"{option} must look like i/n (e.g. 0/4), got {shard!r}") from None
    else:
        try:
            index, count = (int(x) for x in shard)
        except (TypeError, ValueError):
            raise InvalidOption(f"{option} must be 'i/n' or a pair (i, n), got {shard!r}") from None
    _check_shard(index, count, f" ({option})")
    return index, count


def _check_shard(index: int, count: int, where: str) -> None:
    if count < 1 or not 0 <= index < count:
        raise InvalidOption(f"shard index must be in [0, {count}) with at least one shard, got {index}/{count}{where}")


def resolve_shard(shard: str | tuple[int, int] | None, environ: dict | None = None) -> tuple[int, int, str]:
    """(index, count, where it came from): --shard i/n (parse_shard), else torchrun RANK/WORLD_SIZE, else SLURM,
    else 0/1."""
    env = os.environ if environ is None else environ
    if shard is not None:
        index, count = parse_shard(shard)
        return index, count, "--shard"
    if "WORLD_SIZE" in env and "RANK" in env:
        index, count, source = int(env["RANK"]), int(env["WORLD_SIZE"]), "torchrun RANK/WORLD_SIZE"
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        index, count, source = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), "SLURM_PROCID/SLURM_NTASKS"
    else:
        return 0, 1, "single"
    _check_shard(index, count, f" (from {source})")
    return index, count, source


def split_list(source: str | os.PathLike, num_shards: int, out_dir: str | os.PathLike) -> list[Path]:
    """Split a list file (.txt/.csv/.parquet) into one Parquet list per shard, by the hash extract() shards with:
    out_dir/shard-<i>-of-<n>.parquet holds exactly the entries of shard i (columns path, absolute or the URL,
    video_id, start_s, end_s), read a batch at a time. Run `extract out_dir/shard-<i>-of-<n>.parquet --shard i/n`
    per shard: each process then reads only its own entries. Returns the paths written."""
    if num_shards < 1:
        raise InvalidOption(f"num_shards must be >= 1, got {num_shards}")
    lst = _ListFile(os.fspath(source))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("path", pa.string()), ("video_id", pa.string()), ("start_s", pa.float64()),
                        ("end_s", pa.float64())])
    paths = [out_dir / f"shard-{i:05d}-of-{num_shards:05d}.parquet" for i in range(num_shards)]
    writers = [pq.ParquetWriter(p, schema) for p in paths]

    seen = KeySet()
    try:
        for batch in lst.batches():
            shards = shards_of(batch.ids, num_shards)
            everything = np.arange(len(batch.ids))
            keys = id_keys(batch.ids)
            _check_repeats(seen, [lst], 0, batch, everything, keys)
            seen.add(keys, batch.rows)
            for i in np.unique(shards):
                own = np.flatnonzero(shards == i)
                written, starts, ends = lst.fields(batch, own)
                writers[int(i)].write_table(pa.table({"path": written, "video_id": [batch.ids[j] for j in own],
                                                      "start_s": starts, "end_s": ends}, schema=schema))
    finally:
        for w in writers:
            w.close()
    return paths

