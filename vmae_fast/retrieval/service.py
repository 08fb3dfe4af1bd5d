"""`vmae-fast serve OUT`: the indexes of an extract output behind a JSON API and a web page (FastAPI + uvicorn).

    GET  /                       the search page (vmae_fast/retrieval/web/)
    GET  /api/stats              per index level: kind, rows, measured recall@10, latency
    GET  /api/videos?q=&limit=   video ids containing q (autocomplete)
    GET  /api/clips?video_id=    the clips of a video (clip_index, start_s, end_s)
    POST /api/search/clip        {"video_id", "clip_index", "crop_index"?, "k", "level"}: by a stored clip
    POST /api/search/video       {"video_id", "k", "level"}: by a video's embedding (video-level index)
    POST /api/search/vector      {"vector": [D floats], "k", "level"}
    POST /api/search/upload?at_s=&k=&level=   the request body is a video file: by its clip at at_s
    POST /api/metadata           {"rows": [...], "level"}: what the index holds for those rows
    GET  /media/{video_id}       the video file a row names, with Range requests (so <video> seeks); HEAD too
    GET  /openapi.json           the OpenAPI description of all of the above

Safe by default: bound to 127.0.0.1 (and answering only requests addressed to a loopback name, against DNS
rebinding) unless told otherwise; /media serves only the files the output's rows name (catalog.py); request bodies
are bounded (JSON: JSON_BODY_MAX, uploads: --max-upload-mb) and an upload is decoded and embedded in a worker
process (upload.py): a hostile file is a 4xx, never a dead server. Errors are JSON {"error": "..."} with a 4xx status:
400 malformed JSON or Range, 404 unknown video/clip/row/level, 413 too large, 416 a Range past the file's end, 422
invalid values (wrong vector dimension, k out of range, a file that is no video), 503 the upload worker is busy.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ..faults import InvalidOption
from .catalog import MAX_K, Catalog, NotFound
from .upload import Busy, UploadEmbedder, UploadRejected, UploadTooLarge

WEB = Path(__file__).resolve().parent / "web"
JSON_BODY_MAX = 4 * 2 ** 20  # a 65536-d vector as JSON text fits
DRAIN_MAX = 64 * 2 ** 20  # of a refused body, read and dropped before the 413 (see _Guard)
MAX_DIM = 65_536
DEFAULT_MAX_UPLOAD_MB = 512
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
# the page fetches nothing from elsewhere; media may also be a dropped file shown from a blob: URL
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
                                 b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]

Level = Literal["clip", "video"]


# --- request bodies (their JSON Schemas are the OpenAPI description) -------------------------------------------------
class ClipQuery(BaseModel):
    video_id: str = Field(description="a video of OUT, as in its rows (e.g. 'clips/a.mp4')")
    clip_index: int = Field(ge=0, description="the clip of that video")
    crop_index: int | None = Field(None, ge=0, le=2, description="its spatial view (default: the center, 1)")
    k: int = Field(10, ge=1, le=MAX_K, description="matches to return")
    level: Level = Field("clip", description="search the clip index, or the video index")


class VideoQuery(BaseModel):
    video_id: str
    k: int = Field(10, ge=1, le=MAX_K)
    level: Level = Field("video", description="search the video index (default), or the clip index")


class VectorQuery(BaseModel):
    vector: list[float] = Field(min_length=1, max_length=MAX_DIM, description="D floats (normalized here)")
    k: int = Field(10, ge=1, le=MAX_K)
    level: Level = "clip"


class RowsQuery(BaseModel):
    rows: list[int] = Field(max_length=10_000, description="index rows (Match.row)")
    level: Level = "clip"


class Match(BaseModel):
    row: int
    score: float = Field(description="cosine similarity")
    video_id: str | None
    clip_index: int | None = None
    crop_index: int | None = None
    start_s: float | None
    end_s: float | None
    num_clips: int | None = Field(None, description="video level: clips the video's embedding averages")
    media: str | None = Field(description="URL of the video on this server (plays the segment with #t=start,end)")


class SearchResult(BaseModel):
    query: dict
    level: Level
    matches: list[Match]
    took_ms: float


class Error(BaseModel):
    error: str


ERRORS = {status: {"model": Error} for status in (400, 404, 413, 422, 503)}


# --- pure ASGI middleware (cheap: no per-request task as BaseHTTPMiddleware would start) ---------------------------
class BodyTooLarge(Exception):
    pass


class _Guard:
    """Bounds every request body (Content-Length and the bytes actually received) and adds SECURITY_HEADERS.

    A body refused as too large is read on and dropped, up to DRAIN_MAX bytes, before the 413 goes out: a server that
    answers and closes while the client is still sending makes the client's TCP stack see a reset, and the client
    may never read the answer."""

    def __init__(self, app, json_max: int, upload_max: int):
        self.app, self.json_max, self.upload_max = app, json_max, upload_max

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.upload_max if scope["path"] == "/api/search/upload" else self.json_max
        length = dict(scope["headers"]).get(b"content-length")
        more = [True]  # the client has more body to send

        async def drain():
            dropped = 0
            while more[0] and dropped < DRAIN_MAX:
                message = await receive()
                if message["type"] != "http.request":
                    break
                dropped += len(message.get("body", b""))
                more[0] = message.get("more_body", False)

        if length is not None and length.isdigit() and int(length) > limit:
            await drain()
            return await _json_send(send, 413, f"request body of {int(length)} bytes is larger than the "
                                                f"{limit} bytes this server accepts here")
        received = 0
        refused = [False]

        async def bounded_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                more[0] = message.get("more_body", False)
                if received > limit:
                    refused[0] = True
                    raise BodyTooLarge(f"request body is larger than the {limit} bytes this server accepts here")
            return message

        async def secured_send(message):
            if message["type"] == "http.response.start":
                if refused[0]:
                    await drain()
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        return await self.app(scope, bounded_receive, secured_send)


async def _json_send(send, status: int, error: str) -> None:
    body = JSONResponse({"error": error}).body
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": body})


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _MediaFile(FileResponse):
    """A FileResponse whose Range errors are the API's JSON errors: Starlette answers a malformed Range (400) and an
    unsatisfiable one (416, with Content-Range: bytes */SIZE) in text/plain, from inside the response; those two
    statuses come from nowhere else in it, so they are recognised as they are sent and answered again as JSON."""

    async def __call__(self, scope, receive, send) -> None:
        refused: dict = {}

        async def json_errors(message) -> None:
            if message["type"] == "http.response.start" and message["status"] in (400, 416):
                refused.update(status=message["status"], headers=dict(message.get("headers", [])), body=b"")
            elif not refused:
                await send(message)
            elif message["type"] == "http.response.body":
                refused["body"] += message.get("body", b"")
                if not message.get("more_body", False):
                    await _range_error(scope, refused)(scope, receive, send)

        await super().__call__(scope, receive, json_errors)


def _range_error(scope, refused: dict) -> JSONResponse:
    asked = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"range"), "")[:200]
    if refused["status"] == 416:
        content_range = refused["headers"].get(b"content-range", b"").decode("latin-1")  # bytes */SIZE
        return JSONResponse({"error": f"Range {asked!r} is not satisfiable: the file has "
                                      f"{content_range.rpartition('/')[2]} bytes"},
                            status_code=416, headers={"content-range": content_range})
    why = refused["body"].decode("utf-8", "replace").strip().rstrip(".") or "malformed"
    return _error(400, f"Range {asked!r} is malformed ({why}); ask for bytes=START-END, bytes=START- or bytes=-LENGTH")


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        e = next(e for e in errors if e.get("type") == "json_invalid")
        return 400, f"the request body is not valid JSON: {e.get('ctx', {}).get('error', e.get('msg'))}"
    parts = []
    for e in errors[:3]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg')}")
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return 422, "; ".join(parts) + more


# --- the app ---------------------------------------------------------------------------------------------------------
def create_app(out: str | os.PathLike, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 2 ** 20,
               upload_timeout_s: float = 60.0, allowed_hosts: list[str] | None = None, device: str | None = None,
               embed=None, catalog: Catalog | None = None) -> FastAPI:
    """The service for OUT (see the module docstring). allowed_hosts: Host header names answered (default the
    loopback names; ["*"] answers any). embed: the upload worker's function (UploadEmbedder)."""
    catalog = catalog or Catalog(out)
    upload_dir = Path(tempfile.mkdtemp(prefix="vmae-fast-serve-"))
    embedder = UploadEmbedder(out, timeout_s=upload_timeout_s, device=device, embed=embed)

    @asynccontextmanager
    async def lifespan(app):
        yield
        embedder.close()
        shutil.rmtree(upload_dir, ignore_errors=True)

    app = FastAPI(title="vmae-fast search", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Nearest-neighbour search over the VideoMAE embeddings of one extract output: by "
                              "stored clip, by video, by vector or by an uploaded video; metadata by rows; the "
                              "videos themselves (Range requests).")
    app.state.catalog, app.state.embedder = catalog, embedder

    @app.exception_handler(NotFound)
    async def _not_found(request, exc):
        return _error(404, str(exc))

    @app.exception_handler(UploadTooLarge)
    async def _too_large(request, exc):
        return _error(413, str(exc))

    @app.exception_handler(BodyTooLarge)
    async def _body_too_large(request, exc):
        return _error(413, str(exc))

    @app.exception_handler(Busy)
    async def _busy(request, exc):
        return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(ValueError)
    async def _invalid(request, exc):  # UploadRejected included
        return _error(422, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)

    @app.exception_handler(Exception)
    async def _bug(request, exc):  # the traceback goes to the server's log (uvicorn's error logger)
        return _error(500, f"internal error ({type(exc).__name__}): a bug in vmae-fast {_version()}; please report "
                           "it with the server's log")

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc):
        status, message = _validation_message(exc)
        return _error(status, message)

    def timed(run, *args) -> JSONResponse:
        t0 = time.perf_counter()
        result = run(*args)
        result["took_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
        return JSONResponse(result)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(WEB / "index.html", headers={"cache-control": "no-cache"})

    app.mount("/static", StaticFiles(directory=WEB), name="static")

    @app.get("/api/stats", summary="the indexes: kind, rows, measured recall@10, latency")
    def stats():
        s = catalog.stats()
        s["upload"] = {"max_bytes": max_upload_bytes, "timeout_s": upload_timeout_s, "embedded": embedder.embedded,
                       "workers_replaced": embedder.replaced}
        return s

    @app.get("/api/videos", summary="video ids containing q (prefix matches first)", response_model=list[str])
    def videos(q: str = Query("", max_length=1000), limit: int = Query(20, ge=1, le=MAX_K)):
        return JSONResponse(catalog.videos(q, limit))

    @app.get("/api/clips", summary="the clips of a video", responses=ERRORS)
    def clips(video_id: str):
        return JSONResponse(catalog.clips(video_id))

    @app.post("/api/search/clip", response_model=SearchResult, responses=ERRORS, summary="search by a stored clip")
    def search_clip(q: ClipQuery):
        return timed(catalog.search_clip, q.video_id, q.clip_index, q.crop_index, q.k, q.level)

    @app.post("/api/search/video", response_model=SearchResult, responses=ERRORS,
              summary="search by a video's embedding (the mean of its views)")
    def search_video(q: VideoQuery):
        return timed(catalog.search_video, q.video_id, q.k, q.level)

    @app.post("/api/search/vector", response_model=SearchResult, responses=ERRORS, summary="search by a vector")
    def search_vector(q: VectorQuery):
        return timed(catalog.search_vector, np.asarray(q.vector, np.float32), q.k, q.level)

    @app.post("/api/search/upload", response_model=SearchResult, responses=ERRORS,
              summary="search by the clip of an uploaded video at a time",
              openapi_extra={"requestBody": {"required": True, "description": "the video file's bytes",
                                             "content": {"application/octet-stream": {"schema": {
                                                 "type": "string", "format": "binary"}}}}})
    async def search_upload(request: Request, at_s: float = Query(0.0, ge=0, description="seconds into the video"),
                            k: int = Query(10, ge=1, le=MAX_K), level: Level = "clip"):
        catalog.level(level)  # a missing level fails before the upload is read
        t0 = time.perf_counter()
        path = await _receive(request, upload_dir, max_upload_bytes)
        try:
            vector, clip = await run_in_threadpool(embedder.embed, path, at_s)
        finally:
            path.unlink(missing_ok=True)
        result = catalog.search_vector(vector, k, level)
        result["query"] = {"type": "upload", "bytes": request.state.upload_bytes, **clip}
        result["took_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
        return JSONResponse(result)

    @app.post("/api/metadata", responses=ERRORS, summary="the metadata of index rows")
    def metadata(q: RowsQuery):
        return JSONResponse(catalog.metadata(q.rows, q.level))

    # GET and HEAD as two routes: one route of both methods gives both operations one operationId (invalid OpenAPI,
    # and FastAPI warns "Duplicate Operation ID" on every /openapi.json)
    media_errors = {400: {"model": Error}, 404: {"model": Error}, 416: {"model": Error}}

    @app.head("/media/{video_id:path}", responses=media_errors, operation_id="media_head",
              summary="the status and headers GET /media would answer, without the body")
    @app.get("/media/{video_id:path}", responses=media_errors, operation_id="media",
             summary="the video file a row names (Range requests: 206 Partial Content)")
    def media(video_id: str):
        path = catalog.media_path(video_id)  # HEAD included: the same checks, the same headers, no body
        return _MediaFile(path, headers={"cache-control": "no-cache"})

    app.add_middleware(_Guard, json_max=JSON_BODY_MAX, upload_max=max_upload_bytes)
    hosts = LOOPBACK_HOSTS if allowed_hosts is None else allowed_hosts
    if "*" not in hosts:  # outermost: a request for another Host (DNS rebinding) gets 400 before anything runs
        app.add_middleware(_TrustedHost, allowed_hosts=hosts)
    return app


class _TrustedHost:
    """The Host check against DNS rebinding: Starlette's TrustedHostMiddleware decides (its parsing of the header,
    its patterns), but its refusal is a text/plain 'Invalid host header'; this one answers JSON as every other
    error does, naming the names answered and the option that adds one."""

    def __init__(self, app, allowed_hosts: list[str]):
        self.app, self.allowed_hosts = app, list(allowed_hosts)
        self.check = TrustedHostMiddleware(self._accepted, allowed_hosts=allowed_hosts, www_redirect=False)
        self.websocket = TrustedHostMiddleware(app, allowed_hosts=allowed_hosts, www_redirect=False)  # none served

    @staticmethod
    async def _accepted(scope, receive, send):
        scope["vmae_fast.host_ok"][0] = True

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await (self.websocket if scope["type"] == "websocket" else self.app)(scope, receive, send)
        ok = [False]

        async def dropped(message):  # the check's own text/plain refusal
            pass

        await self.check({**scope, "vmae_fast.host_ok": ok}, receive, dropped)
        if ok[0]:
            return await self.app(scope, receive, send)
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        await _json_send(send, 400, f"this server answers requests addressed to {', '.join(self.allowed_hosts)}, "
                                    f"not {host!r} (vmae-fast serve --allowed-host NAME adds a name)")


async def _receive(request: Request, directory: Path, limit: int) -> Path:
    """Stream the request body to a new file in `directory`, at most `limit` bytes (else UploadTooLarge)."""
    fd, name = tempfile.mkstemp(dir=directory, suffix=".upload")
    size = 0
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise UploadTooLarge(f"the upload is larger than the {limit} bytes this server accepts "
                                         "(--max-upload-mb)")
                f.write(chunk)
    except BaseException:
        os.unlink(name)
        raise
    if size == 0:
        os.unlink(name)
        raise UploadRejected("the request body is empty: send the video file's bytes as the body")
    request.state.upload_bytes = size
    return Path(name)


def _version() -> str:
    from .. import __version__

    return __version__


# --- running it ------------------------------------------------------------------------------------------------------
def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port), IPv6 when host is an IPv6 address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: without it, a response's headers and body (two writes) wait on the client's
    # delayed ACK, ~40 ms a request on a kept-alive connection (measured: 44 ms vs 0.15 ms for a bare ASGI app)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except socket.gaierror as e:  # a name that does not resolve: the --host the user typed
        sock.close()
        raise InvalidOption(f"cannot listen on {host}:{port}: {e.strerror} (--host)") from None
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(2048)
    return sock


def serve(out: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "warning",
          allowed_hosts: list[str] | None = None, **options) -> None:
    """Load OUT's indexes, listen on host:port and answer until SIGINT/SIGTERM. Prints the URL once listening."""
    import uvicorn

    loopback = host.strip("[]") in ("127.0.0.1", "localhost", "::1")
    if allowed_hosts is None and not loopback:
        allowed_hosts = ["*"]  # reachable by other names on purpose (--host 0.0.0.0): any Host header
    sock = bind(host, port)  # first: a port in use fails before the indexes load, and leaves no upload folder
    try:
        app = create_app(out, allowed_hosts=allowed_hosts, **options)
    except BaseException:
        sock.close()
        raise
    bound = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    catalog = app.state.catalog
    for lv in catalog.levels.values():
        print(f"vmae-fast serve: {lv.level} level: {lv.index.describe()}", file=sys.stderr)
    print(f"vmae-fast serve: http://{shown}:{bound}/ (API: /openapi.json); Ctrl-C stops", flush=True)
    if not loopback:
        print(f"vmae-fast serve: warning: listening on {host}, reachable from other machines: anyone who reaches it "
              "can search, upload videos and play the output's videos", file=sys.stderr)
    config = uvicorn.Config(app, log_level=log_level, lifespan="on", access_log=False,
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
