"""A hostile upload costs one request, never the server: the upload worker (vmae_fast/retrieval/upload.py) is made
to segfault, abort, hang and raise (tests/helpers/upload_faults.py) under a real uvicorn server (in a thread of this
process, so that the worker's function can be swapped) and a real HTTP client. Each is a 4xx (our bug: a 500) with a
message, the server answers other requests meanwhile, and the next upload is embedded by a fresh worker."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn

from tests.helpers.upload_faults import embed_with_faults
from vmae_fast.demo import sample_dir
from vmae_fast.retrieval.service import bind, create_app

TIMEOUT_S = 8.0  # an embedding by the tiny model takes ~0.1 s once the worker is up


@pytest.fixture(scope="module")
def faulty(served_out):
    app = create_app(served_out, upload_timeout_s=TIMEOUT_S, embed=embed_with_faults)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    with httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=300) as client:
        yield client, app.state.embedder
    server.should_exit = True
    thread.join(30)
    sock.close()
    assert app.state.embedder.pid() is None, "the upload worker outlived the server's shutdown"


def upload(client, content: bytes, at_s: float = 1.7) -> httpx.Response:
    return client.post("/api/search/upload", params={"at_s": at_s, "k": 2}, content=content)


VIDEO = (sample_dir() / "orbit_red.mp4").read_bytes()


def good(client) -> None:
    response = upload(client, VIDEO)
    assert response.status_code == 200, response.text
    top = response.json()["matches"][0]
    assert top["video_id"] == "orbit_red.mp4" and top["score"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(("marker", "status", "words"), [
    (b"vmae-test-segfault", 422, ["decoder crashed", "SIGSEGV", "replaced"]),
    (b"vmae-test-abort", 422, ["decoder crashed", "SIGABRT"]),
    (b"vmae-test-hang", 422, ["longer than 8 s", "stopped"]),
    (b"vmae-test-bug", 500, ["internal error", "RuntimeError"]),
])
def test_a_worker_that_dies_hangs_or_fails_costs_one_request(faulty, marker, status, words):
    client, embedder = faulty
    good(client)  # a worker is up (the model loaded): the hang's time limit is TIMEOUT_S, not the startup grace
    before, pid = embedder.replaced, embedder.pid()
    with ThreadPoolExecutor(1) as pool:
        hostile = pool.submit(upload, client, marker + VIDEO)
        time.sleep(0.3)
        t0 = time.perf_counter()
        stats = client.get("/api/stats")  # the server answers while the worker is busy or dying
        assert stats.status_code == 200 and time.perf_counter() - t0 < 5
        response = hostile.result(timeout=120)
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for word in words:
        assert word in message, message
    if status == 422:
        assert embedder.replaced == before + 1 and embedder.pid() is None
    else:  # our bug in the worker: the worker itself is fine and stays
        assert embedder.replaced == before and embedder.pid() == pid
    good(client)  # the next upload works (a fresh worker where the old one was lost)
