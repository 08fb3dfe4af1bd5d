"""`vmae-fast search --html` opened in a real headless Chromium (Debian's `chromium`), driven over the DevTools
protocol: the cards render with their embedded thumbnails, and a match's <video> seeks to its start time through the
`#t=start,end` media fragment and stops at its end."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.helpers.browser import CHROMIUM_FLAGS, chromium
from vmae_fast import cli
from vmae_fast.demo import sample_dir, write_random_checkpoint

TINY = {"image_size": 32, "num_frames": 4, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 128}
# Debian's chromium, off the network (tests/helpers/browser.py), answering on a DevTools port of its choosing
DEVTOOLS_FLAGS = ["--headless", *CHROMIUM_FLAGS, "--remote-debugging-port=0"]


class DevTools:
    """A headless Chromium showing `url`, and Runtime.evaluate over its page's DevTools websocket."""

    def __init__(self, url: str, profile: Path):
        import websocket

        profile.mkdir(parents=True, exist_ok=True)
        self.log = profile / "chromium.log"  # a file, not a pipe: chromium's chatter can never fill it and block it
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([chromium(), *DEVTOOLS_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                         stdout=subprocess.DEVNULL, stderr=log)
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:  # "DevTools listening on ws://127.0.0.1:PORT/..."
            if m := re.search(r"DevTools listening on ws://[^:]+:(\d+)/", self.log.read_text(errors="replace")):
                port = int(m.group(1))
            elif self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            else:
                time.sleep(0.05)
        assert port, f"chromium did not start its DevTools server within 60 s: {self.log.read_text()[-2000:]}"
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.next_id = 0
        self.call("Page.navigate", url=url)
        while self.evaluate("document.readyState === 'complete' && location.href") != url:
            assert time.monotonic() < deadline, f"chromium did not load {url}"
            time.sleep(0.1)

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply["error"]
                return reply["result"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]["exception"].get("description")
        return result["result"].get("value")

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


# Waits (in the page) for the document, its images and the first match's video metadata, then reports what rendered.
PROBE = """(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const t0 = Date.now();
  while (document.readyState !== 'complete' && Date.now() - t0 < 20000) await sleep(50);
  const cards = [...document.querySelectorAll('article.card')];
  const imgs = [...document.querySelectorAll('article.card img')];
  const card = document.querySelector('article.card:not(.query)');
  const video = card.querySelector('video');
  const start = parseFloat(card.dataset.start), end = parseFloat(card.dataset.end);
  while (video.readyState < 1 && !video.error && Date.now() - t0 < 20000) await sleep(50);
  const seeked = video.currentTime;
  let stopped = null;
  if (!video.error) {
    await video.play();
    while (!video.paused && Date.now() - t0 < 30000) await sleep(50);  // the fragment's end pauses playback
    stopped = video.currentTime;
  }
  return {cards: cards.length, shown: cards.filter(c => c.getBoundingClientRect().height > 100).length,
          images: imgs.length, decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
          start, end, seeked, stopped, error: video.error && video.error.code, src: video.currentSrc,
          rank: card.querySelector('.rank').textContent, score: card.querySelector('.score').textContent};
})()"""


def test_results_page_plays_each_match_from_its_start(tmp_path, capsys):
    from vmae_fast.extraction import extract

    model = write_random_checkpoint(tmp_path / "model", **TINY)
    out = tmp_path / "out"
    videos = [str(sample_dir() / v) for v in ("orbit_red.mp4", "bars_scroll.mp4")]
    assert extract(videos, out, model=str(model), workers=0, progress=False)["videos_ok"] == 2
    assert cli.main(["index", str(out)]) == 0
    page = tmp_path / "results.html"
    # clip 3 of orbit_red starts ~1.6 s in: its best match is itself, so the first card must seek away from 0
    assert cli.main(["search", str(out), "--clip", "orbit_red.mp4:3", "-k", "4", "--html", str(page)]) == 0
    capsys.readouterr()
    html = page.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html  # self-contained: only the videos are outside
    browser = DevTools(page.as_uri(), tmp_path / "profile")
    try:
        seen = browser.evaluate(PROBE)
    finally:
        browser.close()
    print(seen)
    assert seen["cards"] == 5 and seen["shown"] == 5, seen  # query + 4 matches, laid out
    assert seen["images"] == 5 * 3 and seen["decoded"] == seen["images"], seen  # data: URI thumbnails decode
    assert seen["rank"] == "#1" and seen["score"] == "1.000" and seen["src"].endswith(
        f"orbit_red.mp4#t={seen['start']:.3f},{seen['end']:.3f}"), seen
    assert seen["error"] is None, f"chromium cannot play the video (MediaError {seen['error']}): {seen['src']}"
    assert seen["start"] > 1.0 and abs(seen["seeked"] - seen["start"]) < 0.05, seen
    # it plays, and stops at the fragment's end: Chromium checks the end on its ~250 ms timeupdate tick
    assert seen["stopped"] is not None and seen["end"] - 0.05 <= seen["stopped"] < seen["end"] + 0.3, seen


def test_media_root_links_and_escaping(tmp_path):
    from vmae_fast.retrieval.results_page import media_url

    assert media_url("/data/a b.mp4", "clips/a b.mp4", "https://cdn.example/videos/") == \
        "https://cdn.example/videos/clips/a%20b.mp4"
    assert media_url("/data/é.mp4", "é.mp4", None) == "file:///data/%C3%A9.mp4"
    assert media_url(None, None, None) is None
