"""Videos behind URLs (vmae_fast/remote.py) against a real HTTP server on loopback (http.server in a thread, with
Range support and switchable faults): the same rows as the files given as local paths, each byte fetched once, a
404/403 as one error row, a connection dropped mid-file resumed, a stalled server timed out and retried, a server
that stays down an EnvironmentFault (not the video's error), a server without Range support, redirects.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.hf_checkpoints import make_checkpoint
from tests.helpers.videos import make_video
from vmae_fast import store
from vmae_fast.extraction import extract
from vmae_fast.faults import EnvironmentFault, VideoError
from vmae_fast.video import Sampling, VideoTask, decode_clips, remote
from vmae_fast.video.remote import RemoteVideo, url_video_id

ATOL = 1e-5


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET with Range over server.root; server.faults[path] (a dict) changes the answer for one path:
    status: always answer it; fail_first: [status, ...] answered to the first requests; drop_after: bytes sent before
    the connection is cut (first `drops` requests); stall_s: seconds of silence before answering (first `stalls`);
    no_range: ignore Range; redirect: Location to send (302)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        server = self.server
        name = self.path.split("?")[0]
        fault = server.faults.get(name, {})
        with server.lock:
            server.requests[name] = server.requests.get(name, 0) + 1
            nth = server.requests[name]
        if fault.get("redirect"):
            self.send_response(302)
            self.send_header("Location", fault["redirect"])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status = fault.get("status") or (
            fault["fail_first"][nth - 1] if nth <= len(fault.get("fail_first", [])) else None
        )
        if status:
            body = f"status {status}".encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if nth <= fault.get("stalls", 0):
            time.sleep(fault["stall_s"])
        path = server.root / name.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start, end = 0, len(data)
        rng = self.headers.get("Range")
        partial = bool(rng) and not fault.get("no_range")
        if partial:
            first, _, last = rng.removeprefix("bytes=").partition("-")
            start, end = int(first), min(int(last) + 1 if last else len(data), len(data))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "none" if fault.get("no_range") else "bytes")
        self.end_headers()
        body = data[start:end]
        if nth <= fault.get("drops", 0) and len(body) > fault["drop_after"]:
            self.wfile.write(body[: fault["drop_after"]])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)  # cut mid-body
            return
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            return
        with server.lock:
            server.sent[name] = server.sent.get(name, 0) + len(body)


@contextlib.contextmanager
def serve(root: Path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.root, server.faults, server.requests, server.sent = root, {}, {}, {}
    server.lock = threading.Lock()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("served")
    for i in range(4):
        make_video(d / "v" / f"clip{i}.mp4", frames=20 + 12 * i, audio=i == 2)
    return d


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", kind="classification", seed=5)


@pytest.fixture
def quick(monkeypatch):
    """Short timeouts and pauses, small blocks (several requests per file)."""
    monkeypatch.setattr(remote, "BLOCK", 4096)
    monkeypatch.setattr(remote, "TIMEOUT_S", 0.5)
    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)


def rows_without_path(out) -> list[dict]:
    rows = store.read_clips(out).to_pylist()
    return sorted(
        ({k: v for k, v in r.items() if k != "path"} for r in rows), key=lambda r: (r["video_id"], r["clip_index"])
    )


def assert_rows_equal(got: list[dict], want: list[dict]) -> None:
    assert [(r["video_id"], r["clip_index"]) for r in got] == [(r["video_id"], r["clip_index"]) for r in want]
    for a, b in zip(got, want, strict=True):
        numeric = ("embedding", "logits")
        assert {k: v for k, v in a.items() if k not in numeric} == {k: v for k, v in b.items() if k not in numeric}
        for column in numeric:
            np.testing.assert_allclose(a[column], b[column], atol=ATOL, rtol=0)


def test_url_video_id_is_the_url_path():
    assert url_video_id("https://cdn.example.com/a/b.mp4?X-Sig=1#t=3") == "a/b.mp4"
    assert url_video_id("s3://bucket/key/c.mp4") == "bucket/key/c.mp4"
    assert remote.is_url("gs://b/x.mp4") and remote.is_url("http://h/x.mp4")
    assert not remote.is_url("C:\\videos\\x.mp4") and not remote.is_url("videos/x.mp4")


def test_urls_give_the_rows_of_the_same_files_as_local_paths_each_byte_fetched_once(tmp_path, videos, ckpt, quick):
    files = sorted((videos / "v").glob("*.mp4"))
    local_list = tmp_path / "local.csv"
    local_list.write_text("path,video_id\n" + "".join(f"{p},v/{p.name}\n" for p in files))
    local = extract([local_list], tmp_path / "local", model=ckpt, workers=1, batch_size=3, progress=False)
    with serve(videos) as (server, base):
        url_list = tmp_path / "urls.txt"  # no video_id column: the id is the URL's path
        url_list.write_text("".join(f"{base}/v/{p.name}?token=abc\n" for p in files))
        got = extract([url_list], tmp_path / "remote", model=ckpt, workers=1, batch_size=3, progress=False)
        sent = dict(server.sent)
    assert (local["videos_ok"], got["videos_ok"], got["videos_failed"]) == (4, 4, 0)
    assert_rows_equal(rows_without_path(tmp_path / "remote"), rows_without_path(tmp_path / "local"))
    paths = set(store.read_clips(tmp_path / "remote").column("path").to_pylist())
    assert paths == {f"{base}/v/{p.name}?token=abc" for p in files}  # the URL as given, never made a local path
    for p in files:  # the decoder's two passes and its reopen read the cache: every byte crossed the network once
        assert sent[f"/v/{p.name}"] <= p.stat().st_size + 1, p.name  # (+1: the size probe's bytes=0-0)


def test_404_and_403_are_one_error_row_each_and_the_run_goes_on(tmp_path, videos, ckpt, quick):
    with serve(videos) as (server, base):
        server.faults["/v/clip1.mp4"] = {"status": 403}
        urls = [f"{base}/v/clip0.mp4", f"{base}/v/missing.mp4", f"{base}/v/clip1.mp4"]
        summary = extract(urls, tmp_path / "out", model=ckpt, workers=1, progress=False)
    assert (summary["videos_ok"], summary["videos_failed"]) == (1, 2)
    errors = {r["video_id"]: r for r in store.read_errors(tmp_path / "out").to_pylist()}
    assert set(errors) == {"v/missing.mp4", "v/clip1.mp4"}
    assert errors["v/missing.mp4"]["stage"] == "open" and "HTTP 404" in errors["v/missing.mp4"]["error"]
    assert errors["v/clip1.mp4"]["stage"] == "open" and "HTTP 403" in errors["v/clip1.mp4"]["error"]
    assert errors["v/clip1.mp4"]["attempts"] == 1  # the video's fault: final at once


def _clips(task) -> list:
    return list(decode_clips(task, Sampling(num_frames=4), 32))


def test_a_connection_dropped_mid_file_is_resumed_and_decodes_the_same(videos, quick):
    path = videos / "v" / "clip3.mp4"
    want = _clips(VideoTask(str(path), "x"))
    with serve(videos) as (server, base):
        server.faults["/v/clip3.mp4"] = {"drop_after": 1500, "drops": 3}
        got = _clips(VideoTask(f"{base}/v/clip3.mp4", "x"))
        requests = server.requests["/v/clip3.mp4"]
    assert len(got) == len(want) > 0
    for a, b in zip(got, want, strict=True):
        assert (a.clip_index, a.start_frame, a.end_frame, a.start_s) == (
            b.clip_index,
            b.start_frame,
            b.end_frame,
            b.start_s,
        )
        np.testing.assert_array_equal(a.frames, b.frames)
    assert requests >= 4  # the three cut requests were retried


def test_a_stalled_server_times_out_and_the_retry_succeeds(videos, quick, monkeypatch):
    monkeypatch.setattr(remote, "TIMEOUT_S", 0.3)
    data = (videos / "v" / "clip0.mp4").read_bytes()
    with serve(videos) as (server, base):
        server.faults["/v/clip0.mp4"] = {"stall_s": 1.5, "stalls": 2}  # the size probe and its first retry
        t0 = time.perf_counter()
        with RemoteVideo(f"{base}/v/clip0.mp4", timeout_s=0.3) as video:
            assert video.open().read() == data
            retries = video.retries
        elapsed = time.perf_counter() - t0
    assert retries == 2
    assert 0.6 <= elapsed < 1.5  # two timeouts of 0.3 s, not two stalls of 1.5 s


def test_a_server_that_stays_down_is_an_environment_fault_not_the_videos_error(videos, quick):
    with serve(videos) as (server, base):
        server.faults["/v/clip0.mp4"] = {"status": 503}
        with pytest.raises(EnvironmentFault, match=r"failed 3 times.*HTTP 503"):
            RemoteVideo(f"{base}/v/clip0.mp4", attempts=3)
        assert server.requests["/v/clip0.mp4"] == 3
        with pytest.raises(EnvironmentFault):  # through the decoder: not turned into a VideoError
            _clips(VideoTask(f"{base}/v/clip0.mp4", "x"))
        server.faults["/v/clip1.mp4"] = {"fail_first": [500, 502]}  # the server's moment passes: retried
        assert len(_clips(VideoTask(f"{base}/v/clip1.mp4", "x"))) > 0
        with pytest.raises(VideoError, match="HTTP 404"):
            RemoteVideo(f"{base}/v/nothing.mp4")


def test_no_range_support_and_redirects(videos, quick, monkeypatch):
    monkeypatch.setattr(remote, "BLOCK", 512)  # a file of many requests' worth (READ_AHEAD blocks each)
    want = _clips(VideoTask(str(videos / "v" / "clip2.mp4"), "x"))
    with serve(videos) as (server, base):
        server.faults["/v/clip2.mp4"] = {"no_range": True}
        server.faults["/moved/clip2.mp4"] = {"redirect": "/v/clip2.mp4"}
        for url in (f"{base}/v/clip2.mp4", f"{base}/moved/clip2.mp4"):
            got = _clips(VideoTask(url, "x"))
            assert [c.start_frame for c in got] == [c.start_frame for c in want]
            for a, b in zip(got, want, strict=True):
                np.testing.assert_array_equal(a.frames, b.frames)
        assert server.requests["/v/clip2.mp4"] <= 2 + 2  # size probe + one whole body, per URL: not a body a block


def test_the_cache_file_is_removed_and_reads_are_bounded(videos, quick):
    size = (videos / "v" / "clip3.mp4").stat().st_size
    with serve(videos) as (_, base):
        video = RemoteVideo(f"{base}/v/clip3.mp4")
        reader = video.open()
        reader.seek(size - 10)
        assert len(reader.read(100)) == 10
        assert video.fetched_bytes <= remote.READ_AHEAD * remote.BLOCK + 1  # only the tail's block was fetched
        assert Path(video.cache_path).exists()
        video.close()
        assert not Path(video.cache_path).exists()


def test_extract_stops_on_a_server_that_stays_down_and_the_rerun_does_the_video(tmp_path, videos, ckpt, quick):
    """The network's fault is the environment's: no error row, the run stops (EnvironmentFault), and the same
    command after the server is back does the video. (Workers re-import remote.py: they retry 5 times, 0.5-4 s.)"""
    with serve(videos) as (server, base):
        server.faults["/v/clip1.mp4"] = {"status": 503}
        urls = [f"{base}/v/clip1.mp4"]
        with pytest.raises(EnvironmentFault, match="HTTP 503"):
            extract(urls, tmp_path / "out", model=ckpt, workers=0, progress=False, decode_options={"max_attempts": 1})
        assert store.read_errors(tmp_path / "out").num_rows == 0  # not the video's error
        del server.faults["/v/clip1.mp4"]
        summary = extract(urls, tmp_path / "out", model=ckpt, workers=0, progress=False)
    assert (summary["videos_ok"], summary["videos_failed"]) == (1, 0)


def test_fsspec_urls_read_through_their_filesystem(videos):
    fsspec = pytest.importorskip("fsspec")  # in the test extra
    path = videos / "v" / "clip2.mp4"
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/v/clip2.mp4", path.read_bytes())
    want = _clips(VideoTask(str(path), "x"))
    got = _clips(VideoTask("memory://bucket/v/clip2.mp4", "x"))
    assert [c.start_frame for c in got] == [c.start_frame for c in want]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a.frames, b.frames)
    assert url_video_id("memory://bucket/v/clip2.mp4") == "bucket/v/clip2.mp4"
    with pytest.raises(VideoError, match="FileNotFoundError"):
        RemoteVideo("memory://bucket/none.mp4")
    with pytest.raises(EnvironmentFault, match="nosuchproto"):  # no backend for the protocol: the machine lacks it
        RemoteVideo("nosuchproto://bucket/x.mp4")


def test_cli_takes_a_url_argument(tmp_path, videos, ckpt, quick, capsys):
    from vmae_fast import cli

    with serve(videos) as (_, base):
        code = cli.main(
            [
                "extract",
                f"{base}/v/clip0.mp4",
                "-o",
                str(tmp_path / "out"),
                "--model",
                str(ckpt),
                "--workers",
                "0",
                "--no-progress",
            ]
        )
    assert code == 0, capsys.readouterr().err
    assert set(store.read_clips(tmp_path / "out").column("video_id").to_pylist()) == {"v/clip0.mp4"}
