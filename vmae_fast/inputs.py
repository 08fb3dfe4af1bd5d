"""Where the videos come from: INPUT arguments -> VideoTasks (folders, list files, single files), and the shard a
video belongs to (--shard, torchrun RANK/WORLD_SIZE, SLURM)."""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

LIST_EXTENSIONS = (".txt", ".csv", ".parquet")


# --- inputs -----------------------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    """What the INPUT arguments name: video tasks in a stable order, plus entries that failed at discovery."""

    tasks: list  # list[video.VideoTask]
    errors: list[dict] = field(default_factory=list)  # {path, video_id, stage, error, attempts}


def _video_id(path: str) -> str:
    return Path(path).as_posix().removeprefix("./")


def _walk(root: Path, extensions: set[str], inputs: Inputs) -> list[tuple[str, str]]:
    """(path, video_id) of the videos under `root`, recursively; unreadable folders become error rows."""
    found: list[tuple[str, str]] = []
    seen_dirs: set[tuple[int, int]] = set()

    def onerror(e: OSError) -> None:
        rel = os.path.relpath(e.filename, root) if e.filename else "."
        inputs.errors.append({"path": os.path.abspath(e.filename or root), "video_id": _video_id(rel), "stage": "discover",
                                  "error": f"{type(e).__name__}: {e.strerror or e}", "attempts": 1})

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=True):
        try:  # a symlinked folder can lead back up the tree: visit every real folder once
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in seen_dirs:
                dirnames[:] = []
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
        except OSError:
            pass
        # a folder named like a video (x.mp4/) is an entry the user expects to see: it becomes an error row
        named_like_videos = [d for d in dirnames if os.path.splitext(d)[1].lower() in extensions]
        dirnames[:] = sorted(d for d in dirnames if d not in named_like_videos)
        for name in sorted(filenames + named_like_videos):
            if os.path.splitext(name)[1].lower() in extensions:
                path = os.path.join(dirpath, name)
                found.append((path, _video_id(os.path.relpath(path, root))))
    return sorted(found, key=lambda item: item[1])


def _optional_float(value: Any, where: str, column: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {column} must be a number of seconds, got {value!r}") from None


def _read_list_file(path: Path) -> list[dict]:
    """Rows {path, video_id?, start_s?, end_s?} of a .txt / .csv / .parquet list file, with their line numbers."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                rows.append({"path": line, "_where": f"{path}:{number}"})
        return rows
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            records = list(reader)
        first_line = 2  # line 1 is the header
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        columns = table.column_names
        records = table.to_pylist()
        first_line = 0
    if "path" not in columns:
        raise ValueError(f"list file {path} needs a 'path' column, found columns {list(columns)}")
    rows = []  # columns other than these four (labels, notes) are allowed and ignored
    for number, record in enumerate(records, first_line):
        where = f"{path}:{number}" if suffix == ".csv" else f"{path} row {number}"
        row = {"path": record["path"], "_where": where}
        if row["path"] is None or not str(row["path"]).strip():
            raise ValueError(f"{where}: empty path")
        if record.get("video_id") not in (None, ""):
            row["video_id"] = str(record["video_id"])
        for column in ("start_s", "end_s"):
            row[column] = _optional_float(record.get(column), where, column)
        start, end = row["start_s"], row["end_s"]
        if start is not None and start < 0:
            raise ValueError(f"{where}: start_s must be >= 0, got {start}")
        if start is not None and end is not None and end <= start:
            raise ValueError(f"{where}: end_s must be greater than start_s, got start_s={start} end_s={end}")
        rows.append(row)
    return rows


def discover_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> Inputs:
    """Turn INPUT arguments into VideoTasks.

    - a directory: every file (or entry) with a video extension in any case, recursively; video_id = path relative
      to that directory (POSIX separators).
    - a list file (.txt one path a line, .csv/.parquet with `path` and optional `video_id`, `start_s`, `end_s`);
      relative paths are relative to the list file's folder; video_id defaults to the path as written.
    - any other file: one video; video_id = its file name.
    A missing INPUT is fatal (FileNotFoundError); a video_id named twice is fatal (ValueError naming it); entries that
    cannot be read (a bad file, a dangling link, a folder named .mp4) become error rows when they are decoded.
    """
    from .video import VIDEO_EXTENSIONS, VideoTask

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    extensions = {e.lower() if e.startswith(".") else "." + e.lower() for e in VIDEO_EXTENSIONS}
    result = Inputs(tasks=[])
    origin: dict[str, str] = {}  # video_id -> where it came from, for the duplicate message

    def add(path: str, video_id: str, where: str, start_s: float | None = None, end_s: float | None = None) -> None:
        if video_id in origin:
            raise ValueError(f"video_id {video_id!r} appears twice ({origin[video_id]} and {where}); "
                             "give distinct video_id values in a list file or pass each folder once")
        origin[video_id] = where
        result.tasks.append(VideoTask(path=os.path.abspath(path), video_id=video_id, start_s=start_s, end_s=end_s))

    if not inputs:
        raise ValueError("no INPUT given: pass video files, folders or list files")
    for raw in inputs:
        path = Path(raw)
        if not os.path.lexists(path):
            raise FileNotFoundError(f"input {str(raw)!r} does not exist")
        if path.is_dir():
            for video_path, video_id in _walk(path, extensions, result):
                add(video_path, video_id, f"{raw}/{video_id}")
        elif path.suffix.lower() in LIST_EXTENSIONS:
            for row in _read_list_file(path):
                entry = Path(os.path.expanduser(str(row["path"]).strip()))
                video_path = entry if entry.is_absolute() else path.parent / entry
                video_id = row.get("video_id") or _video_id(str(entry))
                add(str(video_path), video_id, row["_where"], row.get("start_s"), row.get("end_s"))
        else:
            add(str(path), path.name, str(raw))
    return result


# --- shards -------------------------------------------------------------------------------------------
def shard_of(video_id: str, num_shards: int) -> int:
    """Stable shard of a video: blake2b of its id (Python's hash() changes between processes)."""
    digest = hashlib.blake2b(video_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_shards


def resolve_shard(shard: str | tuple[int, int] | None, environ: dict | None = None) -> tuple[int, int, str]:
    """(index, count, where it came from): --shard i/n, else torchrun RANK/WORLD_SIZE, else SLURM, else 0/1."""
    env = os.environ if environ is None else environ
    if shard is not None:
        if isinstance(shard, str):
            try:
                index, count = (int(x) for x in shard.split("/"))
            except ValueError:
                raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {shard!r}") from None
        else:
            index, count = shard
        source = "--shard"
    elif "WORLD_SIZE" in env and "RANK" in env:
        index, count, source = int(env["RANK"]), int(env["WORLD_SIZE"]), "torchrun RANK/WORLD_SIZE"
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        index, count, source = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), "SLURM_PROCID/SLURM_NTASKS"
    else:
        return 0, 1, "single"
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard index must be in [0, {count}) with at least one shard, got {index}/{count}")
    return index, count, source
