"""`vmae-fast serve`'s JSON API through a real HTTP client (httpx) against the CLI's server in its own process, on
the five-video output of tests/retrieval/conftest.py: every query kind answers what `vmae-fast search` and the stored
rows say; bad requests are 4xx with a message; /media serves only the files the rows name, in ranges; the server
outlives every hostile request (the `server` fixture checks it is still alive at the end)."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from tests.retrieval.conftest import SECRET
from vmae_fast.demo import sample_dir
from vmae_fast.store import read_clips, read_embeddings


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=180) as c:
        yield c


def ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, (response.status_code, response.text)
    return response.json()


def error(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    message = response.json()["error"]
    for word in words:
        assert word in message, message
    return message


def raw_get(url: str, target: str, host: str | None = None) -> tuple[int, bytes]:
    """GET with the request target sent byte for byte (httpx and browsers would normalize '..' away first)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest("GET", target, skip_host=host is not None)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --- what the index is ----------------------------------------------------------------------------------------------
def test_stats_name_both_indexes_and_their_measured_quality(client):
    stats = ok(client.get("/api/stats"))
    clip, video = stats["levels"]["clip"], stats["levels"]["video"]
    assert (clip["kind"], clip["rows"], clip["dim"], clip["videos"]) == ("flat", 40, 64, 5)
    assert (video["kind"], video["rows"]) == ("flat", 5)
    assert clip["recall_at_10"] == 1.0 and clip["latency_ms_p50"] > 0 and clip["describe"].startswith("flat index")
    assert clip["query_vectors"] == "stored in the index"
    assert stats["upload"]["max_bytes"] == 2 ** 20


def test_openapi_describes_every_route(client):
    spec = ok(client.get("/openapi.json"))
    paths = set(spec["paths"])
    assert {"/api/stats", "/api/videos", "/api/clips", "/api/search/clip", "/api/search/video", "/api/search/vector",
            "/api/search/upload", "/api/metadata", "/media/{video_id}"} <= paths, paths
    upload = spec["paths"]["/api/search/upload"]["post"]
    assert "application/octet-stream" in upload["requestBody"]["content"]
    assert {"video_id", "clip_index", "k", "level"} <= set(spec["components"]["schemas"]["ClipQuery"]["properties"])
    assert client.get("/docs").status_code == 404  # Swagger UI would load its scripts from a CDN
    # operationIds are unique (OpenAPI requires it): GET and HEAD /media once shared one, and FastAPI warned
    # "Duplicate Operation ID" on every /openapi.json
    ids = [op["operationId"] for path in spec["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids)), sorted(ids)
    assert {"get", "head"} <= set(spec["paths"]["/media/{video_id}"]), spec["paths"]["/media/{video_id}"]


# --- queries --------------------------------------------------------------------------------------------------------
def test_clip_query_ranks_the_clip_itself_first_with_its_segment(client, served_out):
    result = ok(client.post("/api/search/clip", json={"video_id": "orbit_red.mp4", "clip_index": 3, "k": 5}))
    assert result["level"] == "clip" and len(result["matches"]) == 5 and result["took_ms"] > 0
    q, top = result["query"], result["matches"][0]
    assert (q["type"], q["video_id"], q["clip_index"]) == ("clip", "orbit_red.mp4", 3)
    assert (top["video_id"], top["clip_index"], top["crop_index"]) == ("orbit_red.mp4", 3, 1)
    assert top["score"] == pytest.approx(1.0, abs=1e-5)  # the stored vector against itself
    rows = read_clips(served_out, ["video_id", "clip_index", "start_s", "end_s"]).to_pylist()
    stored = next(r for r in rows if (r["video_id"], r["clip_index"]) == ("orbit_red.mp4", 3))
    assert (top["start_s"], top["end_s"]) == (stored["start_s"], stored["end_s"])
    assert top["media"] == "/media/orbit_red.mp4"
    assert all("path" not in m for m in result["matches"])  # no file path of the server in any answer
    scores = [m["score"] for m in result["matches"]]
    assert scores == sorted(scores, reverse=True)


def test_clip_query_equals_the_cli_search(client, served_out, capsys):
    from vmae_fast import cli

    assert cli.main(["search", str(served_out), "--clip", "bars_scroll.mp4:2", "-k", "6", "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)["results"][0]["matches"]
    got = ok(client.post("/api/search/clip", json={"video_id": "bars_scroll.mp4", "clip_index": 2, "k": 6}))
    assert [(m["video_id"], m["clip_index"]) for m in got["matches"]] == \
        [(m["video_id"], m["clip_index"]) for m in expected]
    np.testing.assert_allclose([m["score"] for m in got["matches"]], [m["score"] for m in expected], atol=1e-5)


def test_vector_query_equals_the_stored_rows(client, served_out):
    table, embeddings = read_embeddings(served_out)
    row = table.column("video_id").to_pylist().index("checker_spin.mp4") + 4
    result = ok(client.post("/api/search/vector", json={"vector": embeddings[row].tolist(), "k": 3}))
    top = result["matches"][0]
    assert (top["video_id"], top["clip_index"]) == ("checker_spin.mp4", table.column("clip_index")[row].as_py())
    assert top["score"] == pytest.approx(1.0, abs=1e-5)
    # exact search: every score is the cosine with that row's stored embedding
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    keys = list(zip(table.column("video_id").to_pylist(), table.column("clip_index").to_pylist(), strict=True))
    for m in result["matches"]:
        assert m["score"] == pytest.approx(float(unit[keys.index((m["video_id"], m["clip_index"]))] @ unit[row]),
                                           abs=1e-5)


def test_video_query_at_both_levels(client):
    videos = ok(client.post("/api/search/video", json={"video_id": "orbit_red.mp4", "k": 5}))
    assert videos["level"] == "video" and len(videos["matches"]) == 5
    top = videos["matches"][0]
    assert top["video_id"] == "orbit_red.mp4" and top["score"] == pytest.approx(1.0, abs=1e-5)
    assert top["num_clips"] == 8 and top["clip_index"] is None and top["start_s"] == 0.0
    # the near-duplicate copy is the nearest other video
    assert videos["matches"][1]["video_id"] == "orbit_red_copy.mp4", videos["matches"]
    clips = ok(client.post("/api/search/video", json={"video_id": "orbit_red.mp4", "k": 4, "level": "clip"}))
    assert clips["level"] == "clip" and all(m["clip_index"] is not None for m in clips["matches"])
    by_clip_in_videos = ok(client.post("/api/search/clip", json={"video_id": "orbit_red.mp4", "clip_index": 0,
                                                                 "k": 2, "level": "video"}))
    assert by_clip_in_videos["level"] == "video" and by_clip_in_videos["matches"][0]["num_clips"] == 8


def test_metadata_autocomplete_and_clips(client):
    found = ok(client.post("/api/search/clip", json={"video_id": "orbit_red.mp4", "clip_index": 5, "k": 3}))
    rows = [m["row"] for m in found["matches"]]
    meta = ok(client.post("/api/metadata", json={"rows": rows}))
    assert [m["row"] for m in meta] == rows
    for m, match in zip(meta, found["matches"], strict=True):
        assert {k: m[k] for k in ("video_id", "clip_index", "start_s", "end_s")} == \
            {k: match[k] for k in ("video_id", "clip_index", "start_s", "end_s")}
    assert ok(client.post("/api/metadata", json={"rows": [], "level": "video"})) == []
    assert ok(client.get("/api/videos", params={"q": "ORBIT"})) == ["orbit_red.mp4", "orbit_red_copy.mp4"]
    assert ok(client.get("/api/videos", params={"q": "_s"})) == ["bars_scroll.mp4", "checker_spin.mp4"]
    assert ok(client.get("/api/videos", params={"q": "", "limit": 2})) == ["bars_scroll.mp4", "bounce_blue.mp4"]
    clips = ok(client.get("/api/clips", params={"video_id": "checker_spin.mp4"}))
    assert [c["clip_index"] for c in clips] == list(range(8))
    assert all(c["start_s"] < c["end_s"] for c in clips) and clips[0]["start_s"] == 0.0


def test_upload_finds_the_clip_it_was_cut_from(client, served_out):
    body = (sample_dir() / "orbit_red.mp4").read_bytes()
    result = ok(client.post("/api/search/upload", params={"at_s": 1.7, "k": 3}, content=body,
                            headers={"content-type": "application/octet-stream"}))
    q, top = result["query"], result["matches"][0]
    assert q["type"] == "upload" and q["bytes"] == len(body) and q["start_s"] <= 1.7 < q["end_s"]
    assert q["duration_s"] == pytest.approx(4.5, abs=0.1)
    assert (top["video_id"], top["clip_index"]) == ("orbit_red.mp4", q["clip_index"])
    # the same frames through the same model as the stored row: cosine 1 up to fp32 noise (batch of 1 vs 8)
    assert top["score"] == pytest.approx(1.0, abs=1e-4)
    assert ok(client.get("/api/stats"))["upload"]["embedded"] >= 1


# --- what is refused, and how -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("route", "body", "status", "words"), [
    ("clip", '{"video_id": "orbit_red.mp4", "clip_index": ', 400, ["not valid JSON"]),
    ("clip", "[1, 2]", 422, ["Input should be a valid dictionary"]),
    ("clip", '{"video_id": "orbit_red.mp4"}', 422, ["clip_index", "Field required"]),
    ("clip", '{"video_id": "nope.mp4", "clip_index": 0}', 404, ["no video 'nope.mp4'"]),
    ("clip", '{"video_id": "orbit_red.mp4", "clip_index": 99}', 404, ["has no clip 99", "0..7"]),
    ("clip", '{"video_id": "orbit_red.mp4", "clip_index": -1}', 422, ["clip_index"]),
    ("clip", '{"video_id": "orbit_red.mp4", "clip_index": 0, "k": 0}', 422, ["k"]),
    ("clip", '{"video_id": "orbit_red.mp4", "clip_index": 0, "k": 1001}', 422, ["k"]),
    ("clip", '{"video_id": "orbit_red.mp4", "clip_index": 0, "level": "frame"}', 422, ["level"]),
    ("clip", '{"video_id": "orbit_red.mp4", "clip_index": 0, "crop_index": 2}', 404, ["no crop 2"]),
    ("video", '{"video_id": "../../etc/passwd"}', 404, ["no video"]),
    ("vector", '{"vector": [1, 2, 3]}', 422, ["3 dimensions", "64"]),
    ("vector", '{"vector": []}', 422, ["vector"]),
    ("vector", '{"vector": "abc"}', 422, ["vector"]),
    ("vector", '{"vector": [NaN' + ", 0" * 63 + "]}", 422, ["NaN"]),
    ("vector", '{"vector": [' + ", ".join(["0"] * 64) + "]}", 422, ["all zeros"]),
])
def test_bad_queries_are_4xx_with_a_message(client, route, body, status, words):
    response = client.post(f"/api/search/{route}", content=body, headers={"content-type": "application/json"})
    error(response, status, *words)


def test_bad_metadata_and_clip_requests(client):
    error(client.post("/api/metadata", json={"rows": [0, 40]}), 404, "no row 40", "0..39")
    error(client.post("/api/metadata", json={"rows": [-1]}), 404, "no row -1")
    error(client.post("/api/metadata", json={"rows": [5], "level": "video"}), 404, "no row 5", "0..4")
    error(client.get("/api/clips", params={"video_id": "nope"}), 404, "no video 'nope'")
    error(client.get("/api/clips"), 422, "video_id")
    error(client.get("/api/videos", params={"limit": 0}), 422, "limit")


def test_request_bodies_are_bounded(client, server):
    huge = b'{"vector": [' + b"0.5, " * 1_000_000 + b"0.5]}"  # 5 MB of JSON: over JSON_BODY_MAX
    error(client.post("/api/search/vector", content=huge, headers={"content-type": "application/json"}), 413,
          "larger than")
    big = bytes(2 ** 20 + 1)  # --max-upload-mb 1
    error(client.post("/api/search/upload", content=big), 413, "larger than")

    def chunks():  # no Content-Length: the server counts what it receives
        for _ in range(5):
            yield bytes(300_000)

    error(client.post("/api/search/upload", content=chunks()), 413, "larger than")
    assert server.alive()


@pytest.mark.parametrize(("name", "content", "params", "words"), [
    ("empty", b"", {"at_s": 0}, ["empty"]),
    ("junk", bytes(range(256)) * 40, {"at_s": 0}, ["cannot read video the upload"]),
    ("truncated", None, {"at_s": 0.5}, []),
    ("beyond its end", "video", {"at_s": 60}, ["beyond the end", "4.50 s"]),
    ("negative time", "video", {"at_s": -1}, ["at_s"]),
])
def test_hostile_uploads_are_4xx_and_the_server_stays_up(client, server, name, content, params, words):
    video = (sample_dir() / "orbit_red.mp4").read_bytes()
    if content is None:
        content = video[: len(video) // 3]  # the moov atom of this file is at its end: nothing to index
    elif content == "video":
        content = video
    response = client.post("/api/search/upload", params=params, content=content)
    assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
    message = response.json()["error"]
    assert "/tmp" not in message and ".upload" not in message, message  # the server's own file name stays its own
    for word in words:
        assert word in message, message
    assert server.alive() and ok(client.get("/api/stats"))


# --- media ----------------------------------------------------------------------------------------------------------
def test_media_serves_the_named_video_with_ranges(client):
    whole = (sample_dir() / "orbit_red.mp4").read_bytes()
    response = client.get("/media/orbit_red.mp4")
    assert response.status_code == 200 and response.content == whole
    assert response.headers["content-type"] == "video/mp4" and response.headers["accept-ranges"] == "bytes"
    part = client.get("/media/orbit_red.mp4", headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.content == whole[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{len(whole)}"
    tail = client.get("/media/orbit_red.mp4", headers={"Range": "bytes=-500"})
    assert tail.status_code == 206 and tail.content == whole[-500:]
    assert client.get("/media/orbit_red.mp4", headers={"Range": f"bytes={len(whole) + 10}-"}).status_code == 416
    assert client.get("/media/orbit_red%2Emp4").content == whole  # an encoded character of the id itself: same id


def test_media_head_answers_like_get_without_a_body(client):
    size = (sample_dir() / "orbit_red.mp4").stat().st_size
    get, head = client.get("/media/orbit_red.mp4"), client.head("/media/orbit_red.mp4")
    assert head.status_code == 200 and head.content == b"", (head.status_code, head.content[:200])
    assert head.headers["content-length"] == str(size)
    for name in ("content-type", "accept-ranges", "etag", "last-modified", "cache-control", "x-content-type-options"):
        assert head.headers[name] == get.headers[name], name
    part = client.head("/media/orbit_red.mp4", headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.content == b"" and part.headers["content-range"] == f"bytes 100-1099/{size}"
    for target in ("/media/bounce_blue.mp4", "/media/escape/etc/passwd", "/media/unlisted.mp4", "/media/nothing.mp4"):
        response = client.head(target)  # the same checks as GET: a symlink out, an unnamed file, an unknown id
        assert response.status_code == 404 and response.content == b"", (target, response.status_code)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_media_range_errors_are_json_like_the_api(client, method):
    size = (sample_dir() / "orbit_red.mp4").stat().st_size
    past = client.request(method, "/media/orbit_red.mp4", headers={"Range": f"bytes={size + 10}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}", past.headers
    assert past.headers["content-type"] == "application/json"
    malformed = client.request(method, "/media/orbit_red.mp4", headers={"Range": "pages=1-2"})
    assert malformed.status_code == 400 and malformed.headers["content-type"] == "application/json"
    if method == "GET":
        error(past, 416, f"bytes={size + 10}-", f"{size} bytes")
        error(malformed, 400, "pages=1-2")


@pytest.mark.parametrize("target", [
    "/media/../../../../etc/passwd",
    "/media/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/media/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
    "/media/%252E%252E%252Fetc%252Fpasswd",
    "/media//etc/passwd",
    "/media/%2Fetc%2Fpasswd",
    "/media/orbit_red.mp4/../../outside/secret.txt",
    "/media/orbit_red.mp4%00.txt",
    "/media/escape/etc/passwd",  # videos/escape is a symlink to /
    "/media/unlisted.mp4",  # a video in the folder that no row names
    "/media/bounce_blue.mp4",  # named by the rows, but now a symlink to a file that is no video
    "/static/../../../../etc/passwd",
    "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
])
def test_media_serves_no_file_outside_the_rows(server, target):
    status, body = raw_get(server.url, target)
    assert status in (400, 404), (target, status, body[:200])
    assert b"root:" not in body and SECRET not in body


def test_requests_for_another_host_are_refused(server):
    status, body = raw_get(server.url, "/api/stats", host="evil.example")  # DNS rebinding: a page of another site
    assert status == 400, body
    # JSON like every other error (it was Starlette's text/plain "Invalid host header"), naming the way out
    message = json.loads(body)["error"]
    assert "'evil.example'" in message and "--allowed-host" in message and "localhost" in message, message
    status, body = raw_get(server.url, "/media/orbit_red.mp4", host="evil.example")
    assert status == 400 and "error" in json.loads(body), body
    status, _ = raw_get(server.url, "/api/stats", host=f"localhost:{urlsplit(server.url).port}")
    assert status == 200


def test_security_headers(client):
    page = client.get("/")
    assert page.status_code == 200 and "<title>vmae-fast search</title>" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert client.get("/static/app.js").headers["x-content-type-options"] == "nosniff"
    assert "access-control-allow-origin" not in client.get("/api/stats").headers  # no cross-origin reads


def test_cli_refuses_what_it_cannot_serve(served_out, tmp_path, capsys):
    from vmae_fast import cli
    from vmae_fast.retrieval.service import bind

    assert cli.main(["serve", str(served_out), "--port", "70000"]) == 2
    assert "--port must be in 0..65535" in capsys.readouterr().err
    assert cli.main(["serve", str(served_out), "--max-upload-mb", "0"]) == 2
    assert "--max-upload-mb must be positive" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["serve", str(tmp_path / "empty")]) == 2
    assert "has no clips" in capsys.readouterr().err
    taken = bind("127.0.0.1", 0)
    try:
        assert cli.main(["serve", str(served_out), "--port", str(taken.getsockname()[1])]) == 2
        assert "cannot listen on 127.0.0.1:" in capsys.readouterr().err
    finally:
        taken.close()
    # a host name that does not resolve is the user's typo (socket.gaierror), not a bug of ours with a traceback
    assert cli.main(["serve", str(served_out), "--host", "no-such-host.invalid", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "error: cannot listen on no-such-host.invalid:0: " in err and "Traceback" not in err, err


def test_a_server_that_cannot_listen_leaves_no_upload_folder(served_out, tmp_path, monkeypatch, capsys):
    """The upload folder is made once the socket listens: a server that never started leaves no
    vmae-fast-serve-* folder behind in the temporary directory."""
    import tempfile

    from vmae_fast import cli
    from vmae_fast.retrieval.service import bind

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    taken = bind("127.0.0.1", 0)
    try:
        assert cli.main(["serve", str(served_out), "--port", str(taken.getsockname()[1])]) == 2
    finally:
        taken.close()
    assert "Address already in use" in capsys.readouterr().err
    assert not list(tmp_path.glob("vmae-fast-serve-*")), list(tmp_path.iterdir())


def test_accepted_connections_send_without_delay():
    """The listening socket carries TCP_NODELAY, which accepted connections inherit: without it a kept-alive client
    waited ~40 ms a request for its own delayed ACK (tools/bench_serve.py measured 44 ms vs 0.15 ms)."""
    import socket

    from vmae_fast.retrieval.service import bind

    listener = bind("127.0.0.1", 0)
    try:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        accepted.close()
        client.close()
    finally:
        listener.close()
