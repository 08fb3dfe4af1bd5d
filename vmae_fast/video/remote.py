"""Videos behind URLs: http(s):// (our own client) and fsspec URLs (s3://, gs://, az://, ... when the fsspec
backend is installed), read as seekable streams that the decoder opens like files.

RemoteVideo(url) fetches byte ranges on demand (Range requests; fsspec's cat_file for the rest) in blocks of
BLOCK bytes, at most READ_AHEAD blocks per request, and keeps what it fetched in a sparse temporary file: the
decoder's two passes over a video (the packet index, then the frames) and its seeks read the network once. What
the decoder has not asked for is never fetched; memory holds one request at a time.

Faults (faults.py): a URL that answers 404/403/410/401 (fsspec: FileNotFoundError/PermissionError) is the video's
fault, VideoError("open"); a timeout, a dropped connection, HTTP 5xx/429 are retried (ATTEMPTS times, with
backoff), resuming from the last byte received; when they persist, EnvironmentFault: the run stops and a rerun
resumes, the video is not recorded as bad.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import threading
import time
from typing import Self
from urllib.parse import urljoin, urlsplit

from ..faults import EnvironmentFault, VideoError
from .progress import tick

BLOCK = 1 << 20  # bytes per cache block
READ_AHEAD = 4  # blocks fetched at most per request (bounded read-ahead: 4 MiB in memory at a time)
TIMEOUT_S = 30.0  # connect / between-bytes timeout of one request
ATTEMPTS = 5  # tries of a request that fails for a transient reason
BACKOFF_S = 0.5  # first pause between tries, doubled each time (0.5, 1, 2, 4 s)
_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def url_scheme(text: str) -> str | None:
    """The scheme of a URL ("http", "s3", ...), None for a local path (a Windows drive "C:\\" is not a URL)."""
    m = _URL_RE.match(text)
    return m.group(1).lower() if m and len(m.group(1)) > 1 else None


def is_url(text: str) -> bool:
    return url_scheme(text) not in (None, "file")


def url_video_id(url: str) -> str:
    """video_id of a URL the list does not name: its path without the leading "/" (query and fragment dropped,
    so a re-signed URL keeps its id); fsspec URLs keep their bucket ("s3://b/k.mp4" -> "b/k.mp4")."""
    parts = urlsplit(url)
    path = parts.path.lstrip("/")
    if url_scheme(url) not in ("http", "https"):
        path = f"{parts.netloc}/{path}" if parts.netloc else path
    return path or url


def _video_error(message: str):
    return VideoError("open", message)


# --- byte sources ---------------------------------------------------------------------------------------------
class _HTTPSource:
    """Byte ranges of an http(s) URL with http.client: one connection, reopened after a failure."""

    def __init__(self, url: str, timeout_s: float):
        self.url, self.timeout_s = url, timeout_s
        parts = urlsplit(url)
        self._https = parts.scheme.lower() == "https"
        self._host = parts.netloc
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._conn = None
        self.ranges = True  # the server honours Range (False: it sent the whole body to a range request)

    def _connection(self):
        import http.client

        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, timeout=self.timeout_s)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _get(self, headers: dict):
        """GET with headers, following up to 5 redirects (a CDN or a presigned URL often answers with one)."""
        for _ in range(6):
            conn = self._connection()
            try:
                conn.request("GET", self._target, headers={"User-Agent": "vmae-fast", **headers})
                response = conn.getresponse()
            except BaseException:
                self.close()
                raise
            location = response.getheader("Location")
            if response.status not in (301, 302, 303, 307, 308) or not location:
                return response
            response.read()
            self.close()
            parts = urlsplit(urljoin(f"{'https' if self._https else 'http'}://{self._host}{self._target}", location))
            if parts.scheme.lower() not in ("http", "https"):
                raise _video_error(f"{self.url} redirects to {location!r}, not an http(s) URL")
            self._https, self._host = parts.scheme.lower() == "https", parts.netloc
            self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        raise _video_error(f"{self.url}: more than 5 redirects")

    def _check(self, response) -> None:
        """VideoError for a status that says the URL names no readable video, ConnectionError (retried) for the
        server's trouble (5xx, 429)."""
        if response.status in (200, 206):
            return
        response.read()
        message = f"HTTP {response.status} {response.reason} for {self.url}"
        if response.status >= 500 or response.status == 429:
            self.close()
            raise ConnectionError(message)
        raise _video_error(message)  # 401/403/404/410 and the other 4xx: this URL's fault

    def size(self) -> int:
        response = self._get({"Range": "bytes=0-0"})
        self._check(response)
        if response.status == 206:
            response.read()
            total = (response.getheader("Content-Range") or "").rpartition("/")[2]
            if total.isdigit():
                return int(total)
            raise _video_error(f"{self.url}: the server gave no total size (Content-Range "
                               f"{response.getheader('Content-Range')!r})")
        self.close()  # a 200: the server ignores Range; the body is not wanted now
        length = response.getheader("Content-Length")
        if length and length.isdigit():
            self.ranges = False
            return int(length)
        raise _video_error(f"{self.url}: the server ignores Range requests and gives no Content-Length")

    def read_into(self, start: int, end: int, sink) -> None:
        """Write bytes [start, end) to sink(offset, data) as they arrive (a failure keeps what came)."""
        response = self._get({"Range": f"bytes={start}-{end - 1}"} if self.ranges else {})
        self._check(response)
        skip = 0
        if response.status == 200:  # the whole body: skip to start
            self.ranges, skip = False, start
        else:
            first = (response.getheader("Content-Range") or "").removeprefix("bytes ").partition("-")[0]
            if first != str(start):
                self.close()
                raise ConnectionError(f"{self.url}: asked for bytes from {start}, got Content-Range "
                                      f"{response.getheader('Content-Range')!r}")
        offset = start
        try:
            while offset < end:
                data = response.read(min(1 << 16, end - offset + skip))
                if not data:
                    raise ConnectionError(f"{self.url}: connection closed at byte {offset} of a read to {end}")
                if skip:
                    cut = min(skip, len(data))
                    data, skip = data[cut:], skip - cut
                    if not data:
                        continue
                sink(offset, data)
                offset += len(data)
        except BaseException:
            self.close()
            raise
        if response.status == 200 or response.length:  # rest of the body unread: the connection cannot be reused
            self.close()


class _FsspecSource:
    """Byte ranges of an fsspec URL (s3://, gs://, ...) through its filesystem's cat_file."""

    ranges = True

    def __init__(self, url: str, timeout_s: float):
        try:
            import fsspec
        except ImportError as e:
            raise EnvironmentFault(f"reading {url} needs fsspec (pip install fsspec and its {url_scheme(url)} "
                                     f"backend): {e}") from None
        self.url = url
        try:
            self.fs, self.path = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as e:  # no backend for the protocol: the environment lacks a package
            raise EnvironmentFault(f"cannot read {url}: {e}") from None

    def close(self) -> None:
        pass

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
            raise _video_error(f"cannot open {self.url}: {type(e).__name__}: {e}") from None

    def size(self) -> int:
        return int(self._call(self.fs.size, self.path))

    def read_into(self, start: int, end: int, sink) -> None:
        sink(start, self._call(self.fs.cat_file, self.path, start, end))


# --- the cached stream -------------------------------------------------------------------------------------------
class RemoteVideo:
    """One URL as a lazily filled local cache; open() gives independent read-only file objects over it.

    Blocks are fetched when a reader reaches them (at most READ_AHEAD blocks per request, never past the end),
    written to a sparse temporary file and never fetched again; close() deletes the file. Transient failures are
    retried from the last byte received; see the module doc for what counts as whose fault.
    """

    def __init__(self, url: str, *, timeout_s: float | None = None, attempts: int | None = None,
                 backoff_s: float | None = None, tmp_dir: str | None = None):
        timeout_s = TIMEOUT_S if timeout_s is None else timeout_s  # the module's values at call time
        self.url = url
        self.attempts = ATTEMPTS if attempts is None else attempts
        self.backoff_s = BACKOFF_S if backoff_s is None else backoff_s
        scheme = url_scheme(url)
        self._source = _HTTPSource(url, timeout_s) if scheme in ("http", "https") else _FsspecSource(url, timeout_s)
        self._lock = threading.Lock()
        self.fetched_bytes = 0  # bytes received from the network (a re-read of the cache adds nothing)
        self.requests = 0
        self.retries = 0
        self.size = self._retry("size", self._source.size)
        fd, self.cache_path = tempfile.mkstemp(prefix="vmae-url-", suffix=".part", dir=tmp_dir)
        self._cache = os.fdopen(fd, "r+b")
        self._cache.truncate(self.size)  # sparse: only fetched blocks take disk space
        self._have = bytearray((self.size + BLOCK - 1) // BLOCK)  # 1: block fully cached
        self._partial: dict[int, int] = {}  # block -> bytes already cached from its start (an interrupted fetch)
        self.on_bytes = tick  # called with every chunk's size: a decode worker's heartbeat (video/progress.py)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._source.close()
        if self._cache is not None:
            self._cache.close()
            self._cache = None
            try:
                os.unlink(self.cache_path)
            except FileNotFoundError:
                pass

    def open(self) -> _Reader:
        """A new read-only, seekable file object at offset 0 (what av.open takes)."""
        return _Reader(self)

    def _retry(self, what: str, fn, *args):
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                self.requests += 1
                return fn(*args)
            except VideoError:
                raise
            except (OSError, TimeoutError) as e:  # socket errors, timeouts, dropped connections, HTTP 5xx
                if attempt == self.attempts:
                    raise EnvironmentFault(f"{what} of {self.url} failed {attempt} times, last: "
                                             f"{type(e).__name__}: {e}") from None
                self.retries += 1
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _fill(self, first: int, last: int) -> None:
        """Make blocks first..last (inclusive) local, fetching runs of missing blocks READ_AHEAD at a time."""
        if not self._source.ranges:  # the server sends whole bodies: take the rest of this one, not 4 MiB a body
            last = len(self._have) - 1
        ahead = READ_AHEAD if self._source.ranges else len(self._have)
        b = first
        while b <= last:
            if self._have[b]:
                b += 1
                continue
            stop = b
            while stop + 1 <= last and stop + 1 - b < ahead and not self._have[stop + 1]:
                stop += 1
            self._fetch(b, stop)
            b = stop + 1

    def _fetch(self, first: int, last: int) -> None:
        """Fetch blocks first..last in one request, retried from the last byte received."""
        end = min((last + 1) * BLOCK, self.size)

        def sink(offset: int, data: bytes) -> None:
            self._cache.seek(offset)
            self._cache.write(data)
            self.fetched_bytes += len(data)
            done_to = offset + len(data)
            k = offset // BLOCK
            while k * BLOCK < done_to:  # fetches run from a block's start (or its cached part): contiguous
                if min((k + 1) * BLOCK, self.size) <= done_to:
                    self._have[k] = 1
                    self._partial.pop(k, None)
                else:
                    self._partial[k] = done_to - k * BLOCK
                k += 1
            if self.on_bytes is not None:
                self.on_bytes(len(data))

        def once() -> None:
            b = first
            while b <= last and self._have[b]:  # blocks an interrupted try completed
                b += 1
            if b <= last:
                self._source.read_into(b * BLOCK + self._partial.get(b, 0), end, sink)

        self._retry(f"bytes {first * BLOCK}-{end - 1}", once)
        self._cache.flush()

    def local_path(self) -> str:
        """Fetch whatever is not cached yet and return the cache file's path (for decoders that take a path
        only: decord, torchcodec); valid until close()."""
        with self._lock:
            if self.size:
                self._fill(0, (self.size - 1) // BLOCK)
            self._cache.flush()
        return self.cache_path

    def read_at(self, offset: int, n: int) -> bytes:
        with self._lock:
            if self._cache is None:
                raise ValueError(f"{self.url}: read after close")
            if offset >= self.size or n <= 0:
                return b""
            end = min(offset + n, self.size)
            self._fill(offset // BLOCK, (end - 1) // BLOCK)
            self._cache.seek(offset)
            return self._cache.read(end - offset)


class _Reader(io.RawIOBase):
    """A read-only seekable view of a RemoteVideo with its own position."""

    def __init__(self, video: RemoteVideo):
        super().__init__()
        self._video, self._pos = video, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._video.size + offset
        else:
            raise ValueError(f"seek: whence must be 0, 1 or 2, got {whence}")
        if pos < 0:
            raise ValueError(f"seek to a negative offset {pos}")
        self._pos = pos
        return pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = max(0, self._video.size - self._pos)
        data = self._video.read_at(self._pos, n)
        self._pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
