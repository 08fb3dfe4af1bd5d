"""Where OUT's files live, behind store/layout.py: a POSIX folder or an fsspec object store (s3://, gs://, az://, ...).

A location in OUT is a `pathlib.Path` for a local folder and an `ObjectPath` for an object store: both do the path
arithmetic (`out / "clips" / name`, `.name`, `.parent`, `str()`) and the reading (`exists`, `is_file`, `is_dir`,
`read_bytes`, `read_text`, `stat`, `iterdir`, `unlink`), so readers treat them alike. What differs, how a file is
made visible and how one is created only if absent, is a backend's (`backend(path)`):

    operation                    POSIX folder (PosixBackend)                 object store (ObjectBackend)
    write(path) (a part, ...)    temporary name, fsync, rename, fsync dir   one object written whole: one PUT (or a
                                 (today's atomic write, unchanged)          multipart upload, completed at the end)
    create(path, data)           O_CREAT | O_EXCL, then the content         conditional create: S3 If-None-Match: *,
                                                                            GCS ifGenerationMatch=0, Azure
                                                                            If-None-Match: * (fsspec mode="create")
    remove_if / replace_if       under a flock(2) guard in the folder:       check, then delete / one PUT (not
    (path, still) (the lock)     check, then unlink / write                 atomic: see ShardLock)
    move(src, dst)               rename                                     copy, then delete (no rename exists)
    names(folder)                os.listdir                                 one listing, never cached

An object store never holds a temporary name (nothing is renamed), so a part that is not complete is not there: a
killed upload leaves no object (S3: a PUT whose body did not all arrive creates nothing; a multipart upload is
invisible until completed). Parquet is read and written through pyarrow with the store's fsspec filesystem
(`read_table`, `parquet_file`, `read_schema`, `read_metadata` below take either kind of path).

Errors of an object store that may pass (HTTP 5xx, 429, a connection refused or reset, a timeout) become
faults.EnvironmentFault: a run stops (exit 75) and its rerun resumes; nothing is recorded as a video's fault. A
refusal only the user can change (no credentials, another HTTP 4xx: a bad bucket name, a bucket in another region;
404 and 403 stay FileNotFoundError and PermissionError) is faults.UnusableOutput (exit 2, one line).

The store's options come from fsspec's configuration (`FSSPEC_S3_ENDPOINT_URL`, `FSSPEC_S3_KEY`, ... or
`fsspec.config.conf`) and the backend's own (AWS_* variables, ~/.aws, GOOGLE_APPLICATION_CREDENTIALS, ...).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

import pyarrow.parquet as pq

from ..faults import TRANSIENT_ERRNOS, EnvironmentFault, MissingDependency, UnusableOutput

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
SPOOL_BYTES = 64 << 20  # an object up to this size is assembled in memory before its upload, a larger one on disk
# 409: S3's ConditionalRequestConflict / OperationAborted, a conditional write racing another in flight ("retry the
# request"; s3fs also reads it as EIO); never the user's to fix, unlike the other 4xx (_refused)
_TRANSIENT_STATUS = (409, 429, 500, 502, 503, 504)


def is_url(location: Any) -> bool:
    """True for an fsspec URL other than file:// (s3://bucket/key, gs://..., memory://...)."""
    if isinstance(location, ObjectPath):
        return True
    if not isinstance(location, str):
        return False
    m = _URL.match(location)
    return m is not None and m.group(1).lower() != "file"


def out_path(out: str | os.PathLike | ObjectPath) -> Path | ObjectPath:
    """OUT (or any location in it) as its backend's path: an ObjectPath for an fsspec URL, else a pathlib.Path
    (file:// URLs included)."""
    if isinstance(out, (Path, ObjectPath)):
        return out
    text = os.fspath(out)
    if is_url(text):
        return ObjectPath.from_url(text)
    if text.lower().startswith("file://"):
        text = text[len("file://"):]
    return Path(text)


class Stat(NamedTuple):
    """What ObjectPath.stat() gives of os.stat_result: the size in bytes and the modification time (epoch s)."""

    st_size: int
    st_mtime: float


class ObjectPath:
    """A file or folder of an object store (the key `key` of `backend`), used like the pathlib.Path of a local OUT:
    `/`, name, parent, suffix, str() (the URL), and the reading side of I/O. Folders are key prefixes: a folder
    exists while an object lies under it, and mkdir does nothing. Writing goes through layout.atomic_file /
    backend(path).create: an object store has no partial files, so there is no open(mode="w") here."""

    __slots__ = ("backend", "key")

    def __init__(self, backend: ObjectBackend, key: str):
        self.backend = backend
        self.key = key.strip("/")

    @classmethod
    def from_url(cls, url: str) -> ObjectPath:
        backend, key = ObjectBackend.for_url(url)
        return cls(backend, key)

    # -- path arithmetic ------------------------------------------------------------------------------------------
    def __truediv__(self, name: str | os.PathLike) -> ObjectPath:
        name = os.fspath(name).strip("/")
        return ObjectPath(self.backend, f"{self.key}/{name}" if self.key else name)

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.backend, self.key.rsplit("/", 1)[0] if "/" in self.key else "")

    @property
    def suffix(self) -> str:
        name = self.name
        i = name.rfind(".")
        return name[i:] if 0 < i < len(name) - 1 else ""

    def __str__(self) -> str:
        return self.backend.url(self.key)

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and (self.backend.protocol, self.key) == (other.backend.protocol,
                                                                                         other.key)

    def __hash__(self) -> int:
        return hash((self.backend.protocol, self.key))

    def __reduce__(self):  # pickles as its URL (a Ray actor, a decode worker): the filesystem is made again there
        return (out_path, (str(self),))

    # -- reading ----------------------------------------------------------------------------------------------------
    def is_file(self) -> bool:
        return self.backend.info(self.key) is not None

    def is_dir(self) -> bool:
        return self.backend.is_dir(self.key)

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def stat(self) -> Stat:
        info = self.backend.info(self.key)
        if info is None:
            raise FileNotFoundError(errno.ENOENT, "no such object", str(self))
        return Stat(int(info.get("size") or 0), _mtime(info))

    def read_bytes(self) -> bytes:
        return self.backend.cat(self.key)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def open(self, mode: str = "rb"):
        if mode not in ("r", "rb"):
            raise ValueError(f"ObjectPath.open reads only (mode 'rb'), got {mode!r}: write through layout.atomic_file")
        return self.backend.open(self.key)

    def iterdir(self) -> Iterator[ObjectPath]:
        for name in self.backend.names(self.key, files_only=False):
            yield self / name

    def glob(self, pattern: str) -> Iterator[ObjectPath]:
        """Children whose name matches the fnmatch `pattern` (one level, as pathlib's glob without "/" or "**")."""
        import fnmatch

        for name in self.backend.names(self.key, files_only=False):
            if fnmatch.fnmatchcase(name, pattern):
                yield self / name

    def unlink(self, missing_ok: bool = False) -> None:
        if not self.backend.delete(self.key) and not missing_ok:
            raise FileNotFoundError(errno.ENOENT, "no such object", str(self))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: an object store's folders are the prefixes of its keys."""


def _mtime(info: dict) -> float:
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        if isinstance(value, (int, float)):
            return float(value)
        with contextlib.suppress(ValueError):
            from datetime import datetime

            return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    return 0.0


# --- the backends ----------------------------------------------------------------------------------------------------
class PosixBackend:
    """A local (or NFS/Lustre/CephFS) folder: the behaviour of vmae_fast before object stores, unchanged."""

    name = "posix"
    temp_files = True  # writes go through a temporary name (clean_temp_files removes a crashed writer's)

    @contextlib.contextmanager
    def write(self, path: Path, tmp_name: str | None = None) -> Iterator[IO[bytes]]:
        """Write `path` whole or not at all: under `tmp_name` (default `.<name>.tmp`) in the same folder, fsynced,
        renamed, the folder fsynced. If the block raises, `path` is untouched and the temporary file stays (the
        writer's next run removes it)."""
        tmp = path.parent / (tmp_name or f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)

    def create(self, path: Path, data: bytes) -> bool:
        """Create `path` holding `data` if no file has that name (O_CREAT | O_EXCL); False if one has. A reader
        may see the file empty for an instant (store/lock.py waits for its content)."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True

    def move(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def remove_if(self, path: Path, still: Callable[[], bool]) -> None:
        """Remove `path` if still() is true, under a short flock(2) on `.guard` beside it: of several processes
        removing the same stale file, one removes it, and a file created meanwhile is not removed."""
        with _guarded(path):
            if still():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def replace_if(self, path: Path, data: bytes, still: Callable[[], bool]) -> bool:
        """Replace `path` by `data` with the atomic write (a reader sees the old content or the new, whole) if
        still() is true, under remove_if's guard: a file that remove_if removes meanwhile is not written again.
        True: written. (The shard lock's lease renewal, store/lock.py.)"""
        with _guarded(path):
            if not still():
                return False
            with self.write(path) as f:
                f.write(data)
        return True

    def names(self, folder: Path, files_only: bool = True) -> list[str]:
        """The names in `folder` ([] when it is not a folder)."""
        if not folder.is_dir():
            return []
        return os.listdir(folder)

    def remove_tree(self, path: Path) -> None:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def sync_dir(self, folder: Path) -> None:
        fsync_dir(folder)


@contextlib.contextmanager
def _guarded(path: Path) -> Iterator[None]:
    """Hold an exclusive flock(2) on `.guard` in `path`'s folder for the block (PosixBackend.remove_if, replace_if)."""
    import fcntl

    guard = os.open(path.parent / ".guard", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        yield
    finally:
        os.close(guard)  # closing releases the flock


def fsync_dir(directory: Path) -> None:
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


POSIX = PosixBackend()


class ObjectBackend:
    """An fsspec filesystem whose single-object writes are atomic (S3, GCS, Azure Blob, ...): one instance per
    protocol and options. Listings are never cached (a resume must see every part committed so far)."""

    name = "object"
    temp_files = False  # nothing is written under a temporary name
    # fsspec backends whose pipe_file(mode="create") is one conditional request (fsspec's generic pipe_file checks
    # exists() and then writes: two writers can both pass the check)
    CONDITIONAL_CREATE = {"S3FileSystem": "S3 If-None-Match: *", "GCSFileSystem": "GCS ifGenerationMatch=0",
                          "AzureBlobFileSystem": "Azure If-None-Match: *", "MemoryFileSystem": "in-process"}
    _lock = threading.Lock()
    _instances: dict[tuple, ObjectBackend] = {}

    def __init__(self, fs, protocol: str):
        self.fs, self.protocol = fs, protocol
        self._arrow = None

    @classmethod
    def for_url(cls, url: str) -> tuple[ObjectBackend, str]:
        """(the backend of `url`'s store, the key `url` names)."""
        try:
            import fsspec.core
        except ImportError:
            raise MissingDependency(f"an output at {url} needs fsspec and the store's fsspec backend: pip install "
                                    "\"vmae-fast[s3]\" (s3fs), or fsspec with gcsfs / adlfs") from None
        protocol = _URL.match(url).group(1).lower()
        try:
            fs, key = fsspec.core.url_to_fs(url, use_listings_cache=False)
        except ImportError as e:
            raise MissingDependency(f"an output at {url} needs the fsspec backend of {protocol}:// ({e}); for S3: "
                                    "pip install \"vmae-fast[s3]\"") from None
        except ValueError as e:
            if "Protocol not known" in str(e):
                raise MissingDependency(f"{url}: fsspec knows no {protocol}:// filesystem ({e})") from None
            raise
        token = (protocol, getattr(fs, "_fs_token", id(fs)))
        with cls._lock:
            backend = cls._instances.get(token)
            if backend is None:
                backend = cls._instances[token] = cls(fs, protocol)
        return backend, key

    def url(self, key: str) -> str:
        return f"{self.protocol}://{key}"

    @property
    def arrow(self):
        """This store as a pyarrow filesystem (for Parquet reads and datasets)."""
        if self._arrow is None:
            from pyarrow.fs import FSSpecHandler, PyFileSystem

            self._arrow = PyFileSystem(FSSpecHandler(self.fs))
        return self._arrow

    # -- reading ----------------------------------------------------------------------------------------------------
    def info(self, key: str) -> dict | None:
        """The object's info (size, modification time), None when no object has that key (a prefix is no object)."""
        try:
            info = _faults(self, "stat", key, self.fs.info, key)
        except FileNotFoundError:
            return None
        return info if info.get("type", "file") == "file" else None

    def is_dir(self, key: str) -> bool:
        return bool(self.names(key, files_only=False)) or _faults(self, "list", key, self.fs.isdir, key)

    def names(self, folder, files_only: bool = True) -> list[str]:
        """The names directly under the folder (ObjectPath or key): objects, and with files_only=False also the
        sub-folders (prefixes); [] for a folder with nothing under it."""
        key = folder.key if isinstance(folder, ObjectPath) else folder
        self.fs.invalidate_cache(key)
        try:
            entries = _faults(self, "list", key, self.fs.ls, key, detail=True)
        except FileNotFoundError:
            return []
        prefix = key.rstrip("/") + "/"
        names = []
        for entry in entries:
            name = entry["name"].rstrip("/")
            if name.startswith(prefix):
                name = name[len(prefix):]
            elif name == key.rstrip("/"):  # ls of a file's key lists the file itself
                continue
            if name and "/" not in name and (not files_only or entry.get("type", "file") == "file"):
                names.append(name)
        return names

    def cat(self, key: str) -> bytes:
        return _faults(self, "read", key, self.fs.cat_file, key)

    def open(self, key: str):
        return _faults(self, "open", key, self.fs.open, key, "rb")

    # -- writing ----------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def write(self, path: ObjectPath, tmp_name: str | None = None) -> Iterator[IO[bytes]]:
        """Write the object `path` whole or not at all: the block writes into a spooled buffer (memory up to
        SPOOL_BYTES, then a local temporary file); on its clean exit the object is uploaded in one PUT (or one
        multipart upload, completed last), so readers see the old object (or none) until the new one is there
        whole. If the block raises, nothing is uploaded. tmp_name is ignored: nothing is renamed."""
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as buffer:
            yield buffer
            buffer.flush()
            size = buffer.tell()
            buffer.seek(0)
            if size <= SPOOL_BYTES:
                data = buffer.read()
                _faults(self, "write", path.key, self.fs.pipe_file, path.key, data)
            else:  # a large part: from a local file (s3fs: a multipart upload, the object appears at its end)
                with tempfile.NamedTemporaryFile(prefix="vmae-fast-upload-") as local:
                    shutil.copyfileobj(buffer, local)
                    local.flush()
                    _faults(self, "write", path.key, self.fs.put_file, local.name, path.key)

    def create(self, path: ObjectPath, data: bytes) -> bool:
        """Create the object `path` holding `data` only if no object has that key: one conditional PUT
        (fsspec pipe_file(mode="create"): S3 If-None-Match: *, GCS ifGenerationMatch=0, Azure If-None-Match: *).
        True: created; False: an object was there (or a retried request of this call had created it: callers
        that must know write a token into `data` and read it back). A store whose fsspec backend cannot create
        conditionally is refused (MissingDependency; docs/object-storage.md: what such a store would need)."""
        kind = type(self.fs).__name__
        if kind not in self.CONDITIONAL_CREATE:
            raise MissingDependency(
                f"{self.protocol}:// ({kind}) offers no conditional create (create an object only if absent), which "
                "the shard lock and _run.json of an output need; write the output to a store whose fsspec backend "
                f"has one ({', '.join(sorted(self.CONDITIONAL_CREATE))}), see docs/object-storage.md")
        try:
            _faults(self, "create", path.key, self.fs.pipe_file, path.key, data, mode="create")
        except FileExistsError:
            return False
        except OSError as e:
            if _precondition_failed(e):  # 412 without the If-None-Match condition named (some S3 servers)
                return False
            raise
        return True

    def delete(self, key: str) -> bool:
        """Delete the object `key`; False if there was none."""
        try:
            _faults(self, "delete", key, self.fs.rm_file, key)
        except FileNotFoundError:
            return False
        return True

    def move(self, src: ObjectPath, dst: ObjectPath) -> None:
        """Copy `src` to `dst`, then delete `src` (an object store has no rename). After a crash between the two,
        the object is in both places."""
        _faults(self, "copy", src.key, self.fs.copy, src.key, dst.key)
        self.delete(src.key)

    def remove_if(self, path: ObjectPath, still: Callable[[], bool]) -> None:
        """Delete `path` if still() is true. Not atomic (the store has no delete-if-unchanged through fsspec): a
        file created between the check and the delete can be deleted; the shard lock's holder finds out at its
        next commit (ShardLock.fence) and stops."""
        if still():
            self.delete(path.key)

    def replace_if(self, path: ObjectPath, data: bytes, still: Callable[[], bool]) -> bool:
        """Overwrite the object `path` with `data` (one PUT, write) if still() is true; True: written. Not atomic, as
        remove_if: an object replaced between the check and the PUT is written over; the shard lock's lease renewal
        stops writing before another process may take the lock over (store/lock.py), and the fencing token settles
        the rest."""
        if not still():
            return False
        with self.write(path) as f:
            f.write(data)
        return True

    def remove_tree(self, path: ObjectPath) -> None:
        """Delete the object `path`, or every object under the prefix `path`."""
        if self.info(path.key) is not None:
            self.delete(path.key)
            return
        with contextlib.suppress(FileNotFoundError):
            _faults(self, "delete", path.key, self.fs.rm, path.key, recursive=True)

    def sync_dir(self, folder: ObjectPath) -> None:
        """Nothing to do: an object is durable when its PUT returns."""


def backend(path: Path | ObjectPath) -> PosixBackend | ObjectBackend:
    """The backend that writes `path` (a location of layout: pathlib.Path or ObjectPath)."""
    return path.backend if isinstance(path, ObjectPath) else POSIX


# --- faults ----------------------------------------------------------------------------------------------------------
def transient(exc: BaseException) -> bool:
    """True for an object store's error that may pass: an HTTP 5xx or 429 answer (from any exception in the chain
    that carries one), a refused/reset/closed connection, a timeout, a transient errno."""
    seen = 0
    while exc is not None and seen < 16:
        seen += 1
        if isinstance(exc, (TimeoutError, ConnectionError)):
            return True
        if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
            return True
        status = _status(exc)
        if status is not None:
            return status in _TRANSIENT_STATUS or status >= 500
        name = type(exc).__name__
        module = type(exc).__module__ or ""
        if module.startswith(("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "google", "azure",
                              "fsspec")) and any(word in name for word in ("Connection", "Timeout", "Endpoint",
                                                                           "Disconnect", "Payload", "ReadError")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _precondition_failed(exc: BaseException) -> bool:
    """True when the exception (or one in its chain) is an HTTP 412 / PreconditionFailed answer."""
    for _ in range(16):
        if exc is None:
            return False
        response = getattr(exc, "response", None)
        code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
        if _status(exc) == 412 or code == "PreconditionFailed":
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _refused(exc: BaseException) -> bool:
    """True when the store refused the request for a reason only the user can change: an HTTP 4xx answer other than
    412 (a bad bucket name, a bucket in another region, a malformed authorization; 409 and 429 are transient()'s,
    checked first), or no credentials to sign with."""
    for _ in range(16):
        if exc is None:
            return False
        status = _status(exc)
        if status is not None:
            return 400 <= status < 500 and status != 412
        module = type(exc).__module__ or ""
        if module.startswith(("botocore", "aiobotocore", "google", "azure")) and "Credential" in type(exc).__name__:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _status(exc: BaseException) -> int | None:
    """The HTTP status an exception carries (botocore ClientError, aiohttp, google, azure), if any."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int):
            return status
    for attr in ("status", "status_code", "code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    return None


def _faults(backend: ObjectBackend, what: str, key: str, call: Callable, *args, **kwargs):
    """Run one store operation: a transient failure becomes EnvironmentFault naming the object."""
    try:
        return call(*args, **kwargs)
    except FileExistsError:
        raise
    except (FileNotFoundError, PermissionError) as e:  # the user's (exit 2): an errno says so (faults.USER_ERRNOS)
        if e.errno is not None:
            raise
        code = errno.ENOENT if isinstance(e, FileNotFoundError) else errno.EACCES
        raise type(e)(code, f"object store: {what} refused ({str(e).strip()[:200] or type(e).__name__})",
                      backend.url(key)) from e
    except Exception as e:
        if transient(e):
            raise EnvironmentFault(f"object store {backend.url(key)}: {what} failed ({type(e).__name__}: "
                                   f"{str(e).strip()[:200]}): the store did not answer properly") from e
        if _refused(e) and not _precondition_failed(e):  # the user's configuration (exit 2), not our bug
            raise UnusableOutput(f"object store {backend.url(key)}: {what} refused ({type(e).__name__}: "
                                 f"{str(e).strip()[:200]}): check the bucket name, the credentials and the endpoint "
                                 "(docs/object-storage.md)") from e
        raise


# --- Parquet through either backend ----------------------------------------------------------------------------------
def _arrow(path) -> tuple[Any, dict]:
    """(source, keyword arguments) for pyarrow.parquet: a local path as it is, an object by key and filesystem."""
    if isinstance(path, ObjectPath):
        return path.key, {"filesystem": path.backend.arrow}
    if isinstance(path, str) and is_url(path):
        return _arrow(out_path(path))
    return path, {}


def _read(what: str, path, call: Callable, **kwargs):
    source, extra = _arrow(path)
    if not extra:
        return call(source, **kwargs)
    obj = out_path(path) if not isinstance(path, ObjectPath) else path
    return _faults(obj.backend, what, obj.key, call, source, **extra, **kwargs)


def read_table(path, columns: list[str] | None = None, **kwargs):
    """pyarrow.parquet.read_table of a part at a local path or an ObjectPath."""
    return _read("read", path, pq.read_table, columns=columns, **kwargs)


def parquet_file(path, **kwargs) -> pq.ParquetFile:
    """pyarrow.parquet.ParquetFile of a part at a local path or an ObjectPath (use it as a context manager)."""
    return _read("open", path, pq.ParquetFile, **kwargs)


def read_schema(path):
    return _read("read", path, pq.read_schema)


def read_metadata(path):
    return _read("read", path, pq.read_metadata)


def dataset(paths: list, **kwargs):
    """pyarrow.dataset.dataset over part files of one OUT (local paths or ObjectPaths)."""
    import pyarrow.dataset as ds

    if paths and isinstance(paths[0], ObjectPath):
        return ds.dataset([p.key for p in paths], filesystem=paths[0].backend.arrow, **kwargs)
    return ds.dataset([str(p) for p in paths], **kwargs)

