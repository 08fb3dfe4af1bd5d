"""The one owner of an extract output's layout (OUT): folder and part names, listing, `_run.json`, temporary names,
the atomic write, and what `--overwrite` and `--retry-errors` remove or move. Every other module asks this one.

    OUT/_run.json                          run configuration + its hash, library version
    OUT/clips/part-<shard>-<seq>.parquet   one row per view (clip x crop); a video's views never straddle two files
    OUT/videos/part-<shard>-<seq>.parquet  one row per video of the clips part of the same name (store/videos.py)
    OUT/errors/part-<shard>-<seq>.parquet  one row per failed video
    OUT/_locks/shard-<shard>.lock          the shard's writer (store/lock.py)

The part files are the commit record: a part is written under a hidden temporary name in the same folder, fsynced
and renamed, so after a crash a video is either entirely in one visible part or in none. Temporary names start with
"." and end in ".tmp", which pyarrow, DuckDB and polars globs (`*.parquet`) all skip.

A video's clips and its video row are one commit: the videos part is written and renamed first, then the clips
part of the same <shard>-<seq>; the clips part's rename is the commit point. A videos part without its clips part
(a crash between the two renames) is an orphan: readers ignore it (video_parts), committed ids come from the
clips, and the next run of that shard removes it (prepare_output) before writing that <seq> again.

Format 2 (this one) added the clip column crop_index and OUT/videos; outputs of format 1 stay readable (read_clips
fills crop_index with 1, the center crop they all hold; read_videos aggregates their clips) but are not resumed
into: a run refuses them unless --overwrite.
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

import pyarrow.parquet as pq

FORMAT = "vmae_fast.extract/2"
RUN_FILE = "_run.json"
CLIPS_DIR = "clips"
ERRORS_DIR = "errors"
VIDEOS_DIR = "videos"
LOCK_DIR = "_locks"  # shard locks (store/lock.py); "_": Parquet readers skip it
RETIRED_DIR = "_retried"  # under ERRORS_DIR: error rows replaced by --retry-errors (retire_errors)
_PART_RE = re.compile(r"^part-(\d+)-(\d+)\.parquet$")


def part_name(shard: int, seq: int) -> str:
    """The name of part `seq` of writer `shard`: every clips, videos and errors part is named so."""
    return f"part-{shard:05d}-{seq:06d}.parquet"


def temp_name(name: str) -> str:
    """The hidden temporary name a file is written under before its rename (globs of *.parquet skip it)."""
    return f".{name}.tmp"


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


def video_parts(out: str | os.PathLike) -> list[Path]:
    """Committed OUT/videos parts in (shard, seq) order: those whose clips part (same name) exists."""
    out = Path(out)
    clips = {name for name, _, _ in list_parts(out / CLIPS_DIR)}
    return [out / VIDEOS_DIR / name for name, _, _ in list_parts(out / VIDEOS_DIR) if name in clips]


def has_video_table(out: str | os.PathLike) -> bool:
    """True when OUT was written with the video table (OUT/videos exists), even before any part."""
    return (Path(out) / VIDEOS_DIR).is_dir()


def retire_errors(out: str | os.PathLike, shard: int) -> int:
    """`--retry-errors`: move the error parts this shard wrote out of the dataset, into
    OUT/errors/_retried/<UTC time>-<pid>-<shard>/, so that their videos count as not done and are redone; returns
    the rows moved. A video's newest outcome is then the only one readers see: its new clips, or a new error row.
    Renames only (no part is rewritten), one part at a time under the shard lock: after a crash half-way, a moved
    part's videos are simply not done yet. Readers skip the moved rows: list_parts and `errors/*.parquet` globs do
    not descend, pyarrow datasets ignore "_" folders; a recursive glob (errors/**/*.parquet) would see them."""
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


