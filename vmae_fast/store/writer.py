"""Writing an extract output: parts written whole (layout.atomic_file), a video's clips and its video row committed
together, and SIGINT/SIGTERM held back while a commit is under way.

    PartWriter   numbered parts of one folder, each written whole
    RunWriter    one shard's (or one Ray group's) writer: buffers whole videos, writes clips (+ videos) and errors
                 parts; an engine may hook each commit (before_commit) to refuse it
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .layout import (
    CLIPS_DIR,
    ERRORS_DIR,
    VIDEOS_DIR,
    atomic_file,
    group_attempt,
    list_parts,
    part_name,
    temp_name,
)
from .schemas import schemas_for_run, video_schema_for_run
from .storage import out_path, read_table
from .videos import columns_table, video_columns


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
    """Writes numbered parts of one folder, each whole or not at all (layout.atomic_file): `part-<shard>-<seq>`, or
    with group=True `part-g<group>-<seq>` (layout.part_name); numbering goes on after the writer's committed parts."""

    def __init__(self, directory: str | os.PathLike, shard: int, schema, *, group: bool = False):
        self.directory = out_path(directory)  # pathlib.Path, or storage.ObjectPath on an object store
        self.shard, self.group = shard, group
        self.schema = schema
        if group:  # a group's parts are found by name: no listing of a folder that holds a whole cluster's parts
            self.next_seq = len(group_attempt(self.directory, shard))
        else:
            self.next_seq = max((p.seq for p in list_parts(self.directory) if p.of_shard(shard)), default=-1) + 1
        self.files_written = 0

    def name(self, seq: int) -> str:
        """The file name of this writer's part `seq`."""
        return part_name(self.shard, seq, group=self.group)

    def table(self, columns: dict[str, Any]):
        """A pyarrow Table with this writer's schema from column arrays (the schema's names; extra keys ignored)."""
        return pa.Table.from_pydict({name: columns[name] for name in self.schema.names}, schema=self.schema)

    def write(self, columns: dict[str, Any]):
        """Write one part from column arrays (names and order of the schema); returns the committed path."""
        return self.write_table(self.table(columns))

    def write_table(self, table, seq: int | None = None):
        """Write one part holding `table` (with this writer's schema), as part <seq> (default: the next); returns
        the committed path. A given seq is how a videos part takes the number of the clips part it belongs to."""
        seq = self.next_seq if seq is None else seq
        path = self.directory / self.name(seq)
        with atomic_file(path) as f:
            # row groups of 16k rows: readers (ours, DuckDB, polars) decode a whole group at once, and one group of
            # 100k x 768 floats would cost ~1.3 GB; dictionary encoding only where values repeat (ids, paths)
            pq.write_table(table, f, compression="zstd", row_group_size=16384, use_dictionary=["video_id", "path"])
        self.next_seq = max(self.next_seq, seq + 1)
        self.files_written += 1
        return path


def fixed_size_list(matrix: np.ndarray, dtype: str):
    """(n, D) numpy -> pyarrow fixed_size_list<dtype>[D] array."""

    matrix = np.ascontiguousarray(matrix, dtype=np.dtype(dtype))
    values = pa.array(matrix.reshape(-1), type=getattr(pa, dtype)())
    return pa.FixedSizeListArray.from_arrays(values, matrix.shape[1])


class RunWriter:
    """Buffers committed videos of one shard (or, made by for_group, one Ray group) and writes them as clips
    (+ videos) / errors parts.

    A part is written when the buffered rows reach `part_rows` or about `part_bytes`, when `commit_interval_s` has
    passed since the last write (bounding the work a crash can lose), and on `flush()`. Whole videos only. Each
    video's row of the video table is computed when the video is added (videos.video_columns) and committed with its
    clips: videos part first, then the clips part of the same name, which is the commit point.
    before_commit: called before each commit (a clips part with its videos part, or an errors part); if it raises,
    nothing is written, the rows stay buffered and the exception reaches the caller (the Ray engine's fence: an
    actor of a driver that was replaced stops at its next commit).
    """

    def __init__(self, out, run: dict, shard: int, *, group: bool = False, part_rows: int = 100_000,
                 part_bytes: int = 256 << 20, commit_interval_s: float = 60.0,
                 before_commit: Callable[[], None] | None = None):
        clip_schema_, error_schema_ = schemas_for_run(run)
        out = out_path(out)
        self.clips = PartWriter(out / CLIPS_DIR, shard, clip_schema_, group=group)
        self.videos = PartWriter(out / VIDEOS_DIR, shard, video_schema_for_run(run), group=group)
        self.errors = PartWriter(out / ERRORS_DIR, shard, error_schema_, group=group)
        self.embedding_dtype = run["config"]["embedding_dtype"]
        self.has_logits = bool(run["config"]["num_labels"])
        self.embedding_dim, self.num_labels = int(run["config"]["embedding_dim"]), int(run["config"]["num_labels"] or 0)
        self.id2label = run.get("model", {}).get("id2label")
        self.part_rows, self.part_bytes, self.commit_interval_s = part_rows, part_bytes, commit_interval_s
        self.before_commit = before_commit
        self.committed: set[str] = set()  # for_group: the videos an earlier attempt of the group committed
        self._clip_videos: list[dict] = []  # one dict of column arrays per video
        self._video_rows: list[dict] = []  # its video-table row (videos.video_columns), same order
        self._clip_rows = 0
        self._clip_bytes = 0
        self._error_rows: list[dict] = []
        self._last_write = time.monotonic()
        self.write_s = 0.0

    @classmethod
    def for_group(cls, out, run: dict, group: int, **options) -> RunWriter:
        """The writer of Ray group `group` (options as RunWriter's). A retried group (its actor was lost) writes on
        after the parts its earlier attempts committed, whose video_ids are in `writer.committed` for the retry to
        skip; the orphan videos part of a commit that died half-way, and the temporary files at the next numbers,
        are removed. Two attempts of one group never run at once (Ray retries a group after its actor died)."""
        writer = cls(out, run, group, group=True, **options)
        for part in (writer.clips, writer.errors):
            for path in group_attempt(part.directory, group):
                writer.committed.update(read_table(path, columns=["video_id"]).column("video_id").unique()
                                        .to_pylist())
            (part.directory / temp_name(part.name(part.next_seq))).unlink(missing_ok=True)
        videos, seq = writer.videos, writer.clips.next_seq  # the video table's part shares the clips part's number
        for name in (videos.name(seq), temp_name(videos.name(seq))):
            (videos.directory / name).unlink(missing_ok=True)
        videos.next_seq = seq
        return writer

    def add_video(self, rows: dict[str, Any], duration_s: float | None = None) -> None:
        """rows: per-column lists/arrays of one video's views (clips x crops) in (clip_index, crop_index) order;
        `embedding` (n, D) and `logits` (n, C) float32; crop_index may be absent (one center crop: 1).
        duration_s: seconds of video the clips were sampled from (the decoder's; None: the span of the views)."""
        n = len(rows["clip_index"])
        if "crop_index" not in rows:
            rows = {**rows, "crop_index": [1] * n}
        video = video_columns(rows, self.embedding_dim, self.num_labels, self.id2label, duration_s)
        self._clip_videos.append(rows)
        self._video_rows.append(video)
        self._clip_rows += n
        self._clip_bytes += rows["embedding"].nbytes + (rows["logits"].nbytes if self.has_logits else 0) + 64 * n
        self._clip_bytes += video["embedding"].nbytes + (video["probs"].nbytes if self.num_labels else 0) + 256
        if self._clip_rows >= self.part_rows or self._clip_bytes >= self.part_bytes:
            self._write_clips()

    def add_error(self, path: str, video_id: str, stage: str, error: str, attempts: int) -> None:
        self._error_rows.append({"path": path, "video_id": video_id, "stage": stage, "error": error,
                                 "attempts": attempts})
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
        videos_table, clips_table = columns_table(self._video_rows, self.videos.schema), self.clips.table(columns)
        if self.before_commit is not None:  # the engine's last word: raising keeps the rows buffered, unwritten
            self.before_commit()
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
        if self.before_commit is not None:
            self.before_commit()
        with deferred_signals():
            self.errors.write({name: [row[name] for row in rows] for name in self.errors.schema.names})
            self._error_rows = []
        self._last_write = time.monotonic()
        self.write_s += time.perf_counter() - t0
