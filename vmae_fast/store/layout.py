"""The one owner of an extract output's layout (OUT): folder and part names, listing, `_run.json`, the Ray run token,
the shard locks' and the index's places, temporary names, the atomic write, and what `--overwrite` and
`--retry-errors` remove or move. Every other module asks this one; none spells a name of OUT itself.

    OUT/_run.json                              run configuration + its hash, library version
    OUT/clips/part-<shard>-<seq>.parquet       one row per view (clip x crop); a video's views never straddle files
    OUT/videos/part-<shard>-<seq>.parquet      one row per video of the clips part of the same name (store/videos.py)
    OUT/errors/part-<shard>-<seq>.parquet      one row per failed video
    OUT/{clips,videos,errors}/part-g<group>-<seq>.parquet   the same, written by group <group> of a Ray run
    OUT/_locks/shard-<shard>.lock              the shard's writer (store/lock.py)
    OUT/_ray_run.json                          the Ray driver's run token (extraction/ray_engine.py)
    OUT/index/                                 the retrieval index (retrieval/index.py)
    OUT/dedup/<level>.parquet, <level>.json    near-duplicate groups of `vmae-fast dedup` (retrieval/dedup.py)

Who wrote a part is in its name. `part-00003-000007` is part 7 of static shard 3 (the local engine: --shard,
torchrun, SLURM): it holds only ids that hash to shard 3 of the shard count it was written under. `part-g000012-
000000` is part 0 of group 12 of a Ray run: a group is a list of videos the driver cut, ids of any shard. Numbers
are zero-padded (shards to 5 digits, groups and seqs to 6) so that names sort like the numbers; parts read in the
order shard parts by (shard, seq), then group parts by (group, seq) (list_parts). Outputs written before group
names existed (vmae_fast 16c2a40 and earlier) hold Ray groups under shard names (numbers above every shard of
the output): they read and resume alike; only the resume set looks inside them to tell (store/committed.py).

The part files are the commit record: a part is written whole or not at all (atomic_file), so after a crash a video
is either entirely in one visible part or in none. OUT is a local folder or an object store (store/storage.py: a
pathlib.Path or an ObjectPath; every function here takes either, or a URL such as s3://bucket/prefix). In a local
folder a part is written under a hidden temporary name in the same folder, fsynced and renamed; temporary names
start with "." and end in ".tmp", which pyarrow, DuckDB and polars globs (`*.parquet`) all skip. On an object store
a part is one object written whole by one upload (no temporary name, no rename: an interrupted upload leaves no
object), _run.json and the shard lock are created conditionally (create_file: S3 If-None-Match: *, GCS
ifGenerationMatch=0, Azure If-None-Match: *), `--retry-errors` copies then deletes, and resume lists the objects.
docs/object-storage.md says what each store guarantees.

A video's clips and its video row are one commit: the videos part is written first, then the clips part of the
same <shard>-<seq>; the clips part is the commit point. A videos part without its clips part (a crash between the
two) is an orphan: readers ignore it (video_parts), committed ids come from the clips, and the next run of that
shard (or the next attempt of that group) removes it before writing that <seq> again.

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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

from ..faults import MissingFile, OutputNotADirectory, UnusableOutput
from .storage import ObjectPath, backend, out_path, read_metadata

OutPath = Path | ObjectPath  # a location in OUT: pathlib.Path for a local folder, ObjectPath on an object store

FORMAT = "vmae_fast.extract/2"
RUN_FILE = "_run.json"
RAY_RUN_FILE = "_ray_run.json"  # the Ray driver's run token: which driver's actors may still commit
CLIPS_DIR = "clips"
ERRORS_DIR = "errors"
VIDEOS_DIR = "videos"
PART_DIRS = (CLIPS_DIR, VIDEOS_DIR, ERRORS_DIR)
LOCK_DIR = "_locks"  # shard locks (store/lock.py); "_": Parquet readers skip it
INDEX_DIR = "index"  # the retrieval index (retrieval/index.py)
DEDUP_DIR = "dedup"  # near-duplicate groups (retrieval/dedup.py)
RETIRED_DIR = "_retried"  # under ERRORS_DIR: error rows replaced by --retry-errors (retire_errors)
_PART_RE = re.compile(r"^part-(g?)(\d+)-(\d+)\.parquet$")


class Part(NamedTuple):
    """A committed part file of one folder: its name, the number of the shard (or group) that wrote it, its seq."""

    name: str
    number: int
    seq: int

    @property
    def group(self) -> bool:
        """True for a Ray group's part (`part-g<group>-<seq>`), False for a static shard's (`part-<shard>-<seq>`)."""
        return self.name.startswith("part-g")

    def of_shard(self, shard: int) -> bool:
        """Written by static shard `shard` (never true of a group's part)."""
        return not self.group and self.number == shard


def part_name(number: int, seq: int, *, group: bool = False) -> str:
    """The name of part `seq` of shard `number` (of Ray group `number` with group=True), in every part folder."""
    if group:
        return f"part-g{number:06d}-{seq:06d}.parquet"
    return f"part-{number:05d}-{seq:06d}.parquet"


def temp_name(name: str) -> str:
    """The hidden temporary name a file is written under before its rename (globs of *.parquet skip it)."""
    return f".{name}.tmp"


def lock_path(out: str | os.PathLike, shard: int) -> OutPath:
    """The lock file of shard `shard`'s writer (store/lock.py)."""
    return out_path(out) / LOCK_DIR / f"shard-{shard:05d}.lock"


def index_dir(out: str | os.PathLike) -> OutPath:
    """The folder of the retrieval index built from OUT (retrieval/index.py)."""
    return out_path(out) / INDEX_DIR


def dedup_files(out: str | os.PathLike, level: str) -> dict[str, OutPath]:
    """Where `vmae-fast dedup` writes a level's groups: OUT/dedup/<level>.parquet and its summary <level>.json."""
    base = out_path(out) / DEDUP_DIR
    return {"groups": base / f"{level}.parquet", "summary": base / f"{level}.json"}


# --- run configuration ------------------------------------------------------------------------------------------------
def config_hash(config: dict) -> str:
    """sha256 (hex, 16 chars) of the canonical JSON of the row-affecting configuration."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def run_path(out: str | os.PathLike) -> OutPath:
    """OUT/_run.json."""
    return out_path(out) / RUN_FILE


def load_run(out: str | os.PathLike) -> dict:
    """The content of OUT/_run.json: {"format", "config_hash", "config", "model", "library_version", ...}."""
    path = run_path(out)
    if not path.is_file():
        raise MissingFile(f"{path} not found: {out} is not an output of `vmae-fast extract`")
    try:
        return json.loads(path.read_text())
    except ValueError as e:  # not JSON: a run file that someone (or a full disk) truncated
        raise UnusableOutput(f"{path} is unreadable ({e})") from None


def read_run_token(out: str | os.PathLike) -> dict | None:
    """The Ray driver's run token (OUT/_ray_run.json: token, finished, started_utc), None when absent or unreadable."""
    try:
        token = json.loads((out_path(out) / RAY_RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return token if isinstance(token, dict) else None


def write_run_token(out: str | os.PathLike, token: dict) -> None:
    """Replace OUT/_ray_run.json, atomically."""
    path = out_path(out) / RAY_RUN_FILE
    write_atomic(path, (json.dumps(token) + "\n").encode())


# --- the atomic write -----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, tmp_name: str | None = None) -> Iterator[IO[bytes]]:
    """Write the file `path` whole or not at all: yields a binary file to write it into. On a clean exit of the
    block the file is made visible under `path` at once; if the block raises, `path` is untouched.

    A local folder (storage.PosixBackend): written under `tmp_name` (by default temp_name(path's name)) in the same
    folder, fsynced, renamed, the folder fsynced; a temporary file left by a crash is removed by the writer's next
    run (clean_temp_files). An object store (storage.ObjectBackend): one object written whole by one upload at the
    end of the block, no temporary name and no rename; an interrupted upload leaves no object."""
    path = out_path(path)
    with backend(path).write(path, tmp_name or temp_name(path.name)) as f:
        yield f


def write_atomic(path: str | os.PathLike, data: bytes, tmp_name: str | None = None) -> None:
    """Write `data` to `path` whole or not at all (atomic_file)."""
    with atomic_file(path, tmp_name) as f:
        f.write(data)


def create_file(path: str | os.PathLike, data: bytes) -> bool:
    """Create the file `path` holding `data` only if none has that name; False if one has. Local: O_CREAT | O_EXCL
    (the content follows the create); object store: a conditional create (S3 If-None-Match: *, GCS
    ifGenerationMatch=0, Azure If-None-Match: *), the object appears whole. The shard lock is taken with it."""
    path = out_path(path)
    return backend(path).create(path, data)


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


def prepare_output(out: str | os.PathLike, run: dict, *, shard: int, num_shards: int, overwrite: bool) -> OutPath:
    """Make OUT ready for shard `shard` of `num_shards`; returns OUT as a Path.

    - OUT/_run.json with the same config_hash: resume (nothing is removed except this shard's stray temp files and
      its orphan videos parts, see the module docstring).
    - An output of another FORMAT, a different configuration, or parts without a _run.json: refused with
      UnusableOutput (a ValueError), nothing touched, unless
      `overwrite`, which removes this shard's parts (shard 0 also the parts of shards >= num_shards and every
      Ray group's), the index files and the old _run.json. Shards of one run each clear only their own parts, so
      `--overwrite` under torchrun/SLURM never deletes what a sibling has just written.
    - The new _run.json is written atomically before any part; on an object store it is created only if absent
      (a sibling shard that created it first must have written the same configuration, else refused).
    """
    out = out_path(out)
    run_file = run_path(out)
    if out.exists() and not out.is_dir():
        raise OutputNotADirectory(f"output {out} exists and is not a directory")
    existing = None
    if run_file.is_file():
        try:
            existing = json.loads(run_file.read_text())
        except (OSError, ValueError) as e:
            if not overwrite:
                raise UnusableOutput(f"{run_file} is unreadable ({e}); use --overwrite to start over") from None
    has_parts = any(list_parts(out / d) for d in PART_DIRS)
    if not overwrite:
        if existing is None and has_parts:
            raise UnusableOutput(f"{out} holds part files but no {RUN_FILE}; use --overwrite or another output "
                                 "directory")
        if existing is not None:
            _check_same_run(out, existing, run)
    for d in PART_DIRS:
        (out / d).mkdir(parents=True, exist_ok=True)
    if overwrite:
        for d in (VIDEOS_DIR, CLIPS_DIR, ERRORS_DIR):
            for part in list_parts(out / d):
                if part.of_shard(shard) or (shard == 0 and (part.group or part.number >= num_shards)):
                    (out / d / part.name).unlink(missing_ok=True)
        _remove_index_files(out)
    clean_temp_files(out, shard)
    remove_orphan_video_parts(out, shard)
    if overwrite or existing is None:
        data = (json.dumps(run, indent=2, sort_keys=True, default=str) + "\n").encode()
        if overwrite or not isinstance(out, ObjectPath):  # a local folder: temp + rename, as before object stores
            write_atomic(run_file, data, f".{RUN_FILE}.{shard}.tmp")
        elif not create_file(run_file, data):  # a sibling shard created it first: it must describe this same run
            try:
                _check_same_run(out, json.loads(run_file.read_text()), run)
            except ValueError as e:
                raise UnusableOutput(f"{e} (another process created {run_file} just before this one)") from None
    return out


def _check_same_run(out: OutPath, existing: dict, run: dict) -> None:
    """Refuse (UnusableOutput, a ValueError) an output whose _run.json is of another FORMAT or another configuration
    than `run`."""
    if existing.get("format") != run["format"]:
        raise UnusableOutput(f"{out} was written by another vmae-fast version (format {existing.get('format')}, "
                             f"this one writes {run['format']}: clips with crop_index and a video table); its rows "
                             "stay readable, but a run cannot add to it: use --overwrite or another output directory")
    if existing.get("config_hash") != run["config_hash"]:
        changes = diff_configs(existing.get("config", {}), run["config"])
        detail = "; ".join(changes[:3]) + (f" (+{len(changes) - 3} more)" if len(changes) > 3 else "")
        raise UnusableOutput(f"{out} was written with a different configuration ({detail or 'format changed'}); "
                             "use --overwrite to replace it or choose another output directory")


def _remove_index_files(out: Path) -> None:
    """The retrieval index and the dedup groups are built from the rows; after --overwrite they would describe rows
    that no longer exist. OUT/index, OUT/dedup, and the names earlier versions used for the index (index*, _index*,
    *.faiss, *.index at the top)."""
    for entry in out.iterdir():
        if entry.name in (RUN_FILE, CLIPS_DIR, ERRORS_DIR, VIDEOS_DIR):
            continue
        if entry.name.startswith((INDEX_DIR, "_index")) or entry.name == DEDUP_DIR \
                or entry.suffix in (".faiss", ".index"):
            backend(entry).remove_tree(entry)


def clean_temp_files(out: Path, shard: int | None, *, groups: bool = False) -> list[OutPath]:
    """Remove the temporary files a killed writer left: those of shard `shard` (None: no shard's), and with
    groups=True those of every Ray group (only while no actor of the output runs); returns what was removed."""
    out = out_path(out)
    if not backend(out).temp_files:  # an object store: nothing is ever written under a temporary name
        return []
    patterns = []
    if shard is not None:
        patterns += [(out / d, temp_name(f"part-{shard:05d}-*")) for d in PART_DIRS]
        patterns.append((out, f".{RUN_FILE}.{shard}.tmp"))
    if groups:
        patterns += [(out / d, temp_name("part-g*")) for d in PART_DIRS]
    removed = []
    for directory, pattern in patterns:
        if directory.is_dir():
            for path in directory.glob(pattern):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def remove_orphan_video_parts(out: Path, shard: int) -> list[OutPath]:
    """Remove this shard's videos parts whose clips part does not exist (a crash between the two writes of a
    commit, see the module docstring); returns what was removed. Readers ignore such parts anyway."""
    clips = {part.name for part in list_parts(out / CLIPS_DIR)}
    removed = []
    for part in list_parts(out / VIDEOS_DIR):
        if part.of_shard(shard) and part.name not in clips:
            (out / VIDEOS_DIR / part.name).unlink(missing_ok=True)
            removed.append(out / VIDEOS_DIR / part.name)
    return removed


# --- listing ----------------------------------------------------------------------------------------------------------
def list_parts(directory: str | os.PathLike) -> list[Part]:
    """Committed part files of a folder as Part(name, number, seq): static shards' parts by (shard, seq), then Ray
    groups' parts by (group, seq) (Part.group tells which); temp files and other names are ignored."""
    directory = out_path(directory)
    parts = []
    for name in backend(directory).names(directory):
        m = _PART_RE.match(name)
        if m:
            parts.append((bool(m.group(1)), Part(name, int(m.group(2)), int(m.group(3)))))
    return [part for _, part in sorted(parts, key=lambda p: (p[0], p[1].number, p[1].seq))]


def clip_parts(out: str | os.PathLike) -> list[OutPath]:
    """The committed clips parts of OUT, in reading order (list_parts)."""
    folder = out_path(out) / CLIPS_DIR
    return [folder / part.name for part in list_parts(folder)]


def video_parts(out: str | os.PathLike) -> list[OutPath]:
    """Committed OUT/videos parts in reading order: those whose clips part (same name) exists."""
    out = out_path(out)
    clips = {part.name for part in list_parts(out / CLIPS_DIR)}
    return [out / VIDEOS_DIR / part.name for part in list_parts(out / VIDEOS_DIR) if part.name in clips]


def video_part_of(clips_part: str | os.PathLike) -> OutPath:
    """The videos part committed with the clips part at `clips_part` (same name, OUT/videos); it may not exist
    (outputs from before the video table)."""
    clips_part = out_path(clips_part)
    return clips_part.parent.parent / VIDEOS_DIR / clips_part.name


def has_video_table(out: str | os.PathLike) -> bool:
    """True when OUT was written with the video table (OUT/videos exists, or, on an object store where a folder
    exists only once a part is in it, OUT/_run.json is of this FORMAT), even before any part."""
    out = out_path(out)
    if (out / VIDEOS_DIR).is_dir():
        return True
    with contextlib.suppress(OSError, ValueError):
        return isinstance(out, ObjectPath) and json.loads(run_path(out).read_text()).get("format") == FORMAT
    return False


def group_attempt(directory: str | os.PathLike, group: int) -> list[OutPath]:
    """The parts an earlier attempt of Ray group `group` committed in one folder: part-g<group>-000000, -000001, ...
    up to the first missing one (an attempt commits them in that order). Found by name, one existence check per
    part, without listing the folder (which may hold a whole cluster's parts)."""
    directory = out_path(directory)
    found = []
    while (directory / part_name(group, len(found), group=True)).is_file():
        found.append(directory / part_name(group, len(found), group=True))
    return found


def next_group(out: str | os.PathLike) -> int:
    """1 + the largest Ray group number of any part in OUT (0 for an output without group parts): a new driver
    numbers its groups from here, so that its parts never take the name of an earlier run's."""
    numbers = [part.number for d in PART_DIRS for part in list_parts(out_path(out) / d) if part.group]
    return max(numbers, default=-1) + 1


def retire_errors(out: str | os.PathLike, shard: int | None) -> int:
    """`--retry-errors`: move the error parts shard `shard` wrote (None: every error part, of every shard and group:
    the Ray engine, which acts for the whole output) out of the dataset, into
    OUT/errors/_retried/<UTC time>-<pid>-<shard>/, so that their videos count as not done and are redone; returns
    the rows moved. A video's newest outcome is then the only one readers see: its new clips, or a new error row.
    Renames only (no part is rewritten; an object store copies, then deletes), one part at a time under the shard
    lock: after a crash half-way, a moved part's videos are simply not done yet (or, between an object's copy and
    its delete, still done: the next --retry-errors moves it again). Readers skip the moved rows: list_parts and
    `errors/*.parquet` globs do not descend, pyarrow datasets ignore "_" folders; a recursive glob
    (errors/**/*.parquet) would see them."""
    errors = out_path(out) / ERRORS_DIR
    names = [part.name for part in list_parts(errors) if shard is None or part.of_shard(shard)]
    if not names:
        return 0
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = errors / RETIRED_DIR / f"{stamp}-{os.getpid()}-{'all' if shard is None else f'shard{shard:05d}'}"
    dest.mkdir(parents=True, exist_ok=True)
    store = backend(errors)
    rows = 0
    for name in names:
        rows += read_metadata(errors / name).num_rows
        store.move(errors / name, dest / name)  # object store: copy, then delete (the part is whole in both)
    store.sync_dir(errors)
    store.sync_dir(dest)
    return rows
