"""The page of `vmae-fast serve` in a real headless Chromium (Debian's, driven by Playwright): it shows the index's
measured recall, completes video ids as they are typed, searches, shows k cards whose videos play exactly their
segment (fetched from /media with Range requests), follows "more like this", and searches by a dropped video file at
a time. The server is the CLI's, in its own process (tests/retrieval/conftest.py)."""

from __future__ import annotations

import pytest
from playwright.sync_api import sync_playwright

from tests.helpers.browser import CHROMIUM_FLAGS, chromium
from vmae_fast.demo import sample_dir

# In the page: wait for a card's video metadata, note where it seeked to, play it, and note where it stopped.
PLAY = """async (card) => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const video = card.querySelector('video');
  const t0 = Date.now();
  while (video.readyState < 1 && !video.error && Date.now() - t0 < 20000) await sleep(50);
  if (video.error) return {error: video.error.code};
  const seeked = video.currentTime;
  await video.play();
  let first = null;
  while (!video.paused && Date.now() - t0 < 30000) {
    if (first === null && video.currentTime > seeked) first = video.currentTime;
    await sleep(20);
  }
  return {start: parseFloat(card.dataset.start), end: parseFloat(card.dataset.end), seeked, first,
          stopped: video.currentTime, src: video.currentSrc, error: null};
}"""


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS, headless=True,
                                    downloads_path=str(profile))
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        tab = context.new_page()
        tab.console_errors = []
        tab.on("console", lambda m: m.type == "error" and tab.console_errors.append(m.text))
        tab.media_responses = []
        tab.on("response", lambda r: "/media/" in r.url and tab.media_responses.append(
            (r.status, r.request.headers.get("range"))))
        tab.failed = []
        tab.on("response", lambda r: r.status >= 400 and tab.failed.append((r.status, r.url)))
        tab.goto(server.url + "/")
        yield tab
        tab.screenshot(path=str(profile / "last.png"), full_page=True)  # for a look after a failure
        context.close()
        browser.close()


def cards(page) -> list[dict]:
    return page.eval_on_selector_all("article.card", """cs => cs.map(c => ({
        video_id: c.dataset.videoId, clip_index: c.dataset.clipIndex === undefined ? null : +c.dataset.clipIndex,
        rank: c.querySelector('.rank').textContent, score: +c.querySelector('.score').textContent,
        self: c.classList.contains('self')}))""")


def wait_for_query(page, text: str) -> None:
    # locators, not wait_for_function: the page's Content-Security-Policy forbids the eval() that one needs
    page.locator("#query", has_text=text).wait_for(timeout=60_000)


def test_search_play_and_more_like_this(page):
    # the index's measured quality is on the page
    page.wait_for_selector("#stats .level[data-level=clip]")
    stats = page.inner_text("#stats")
    assert "clip index: flat, 40 clips, exact search" in stats and "video index: flat, 5 videos" in stats, stats
    # autocomplete: typing part of an id offers the matching ids
    page.fill("#video-id", "orbit")
    page.locator("#video-ids option:nth-child(2)").wait_for(state="attached")
    assert page.eval_on_selector_all("#video-ids option", "os => os.map(o => o.value)") == \
        ["orbit_red.mp4", "orbit_red_copy.mp4"]
    # pick a video and a clip, ask for 6 matches
    page.fill("#video-id", "orbit_red.mp4")
    page.dispatch_event("#video-id", "change")
    page.wait_for_selector("#clip option[value='3']", state="attached")
    page.select_option("#clip", "3")
    page.fill("#k", "6")
    page.click("#search")
    wait_for_query(page, "clip 3 of orbit_red.mp4")
    shown = cards(page)
    assert len(shown) == 6, shown
    assert shown[0] == {"video_id": "orbit_red.mp4", "clip_index": 3, "rank": "#1", "score": 1.0, "self": True}
    assert [c["rank"] for c in shown] == [f"#{i}" for i in range(1, 7)]
    assert all(a["score"] >= b["score"] for a, b in zip(shown, shown[1:], strict=False))

    # the first card's video starts at its clip's start (1.6 s, not 0) and stops at its end
    played = page.locator("article.card").first.evaluate(PLAY)
    assert played["error"] is None, f"chromium cannot play {played}"
    assert played["src"].endswith(f"/media/orbit_red.mp4#t={played['start']:.3f},{played['end']:.3f}"), played
    assert played["start"] > 1.0 and abs(played["seeked"] - played["start"]) < 0.05, played
    assert played["first"] is not None and played["first"] < played["start"] + 0.3, played  # played from there
    # Chromium checks a fragment's end on its ~250 ms timeupdate tick
    assert played["end"] - 0.05 <= played["stopped"] < played["end"] + 0.3, played
    assert any(status == 206 and rng for status, rng in page.media_responses), page.media_responses  # ranges

    # "more like this" on the third card: its clip becomes the query and ranks first
    third = shown[2]
    page.locator("article.card").nth(2).locator("button.more").click()
    wait_for_query(page, f"clip {third['clip_index']} of {third['video_id']}")
    again = cards(page)
    assert len(again) == 6 and again[0]["video_id"] == third["video_id"], again
    assert again[0]["clip_index"] == third["clip_index"] and again[0]["score"] == 1.0, again
    assert page.input_value("#video-id") == third["video_id"]
    # clicking a card itself (not its video's controls) does the same
    fifth = again[4]
    page.locator("article.card").nth(4).locator(".video-id").click()
    wait_for_query(page, f"clip {fifth['clip_index']} of {fifth['video_id']}")
    assert cards(page)[0]["clip_index"] == fifth["clip_index"]

    # the whole video at the video level: one card per video, the copy of orbit_red next to it
    page.fill("#video-id", "orbit_red.mp4")
    page.dispatch_event("#video-id", "change")
    page.locator("#clip option[value='video']").wait_for(state="attached")
    page.select_option("#clip", "video")
    page.select_option("#level", "video")
    page.fill("#k", "5")
    page.click("#search")
    wait_for_query(page, "videos like video orbit_red.mp4")
    videos = cards(page)
    assert [c["video_id"] for c in videos[:2]] == ["orbit_red.mp4", "orbit_red_copy.mp4"], videos
    assert len(videos) == 5 and all(c["clip_index"] is None for c in videos)
    # bounce_blue.mp4 is a symlink to a file that is no video (conftest): the server refuses it, the card says so
    page.locator("article.card[data-video-id='bounce_blue.mp4'] .missing").wait_for()
    assert {url.rsplit("/", 1)[-1] for _, url in page.failed} == {"bounce_blue.mp4"}, page.failed
    assert all(e.startswith("Failed to load resource") for e in page.console_errors), page.console_errors
    page.select_option("#level", "clip")


def test_search_by_a_dropped_video_at_a_time(page):
    page.set_input_files("#file", str(sample_dir() / "bars_scroll.mp4"))
    page.wait_for_selector("#preview:not([hidden])")
    page.locator("#upload-search:enabled").wait_for()
    page.fill("#at", "2.2")
    page.fill("#k", "4")
    page.click("#upload-search")
    wait_for_query(page, "the uploaded video at 2.2 s")
    shown = cards(page)
    assert len(shown) == 4 and shown[0]["video_id"] == "bars_scroll.mp4" and shown[0]["score"] == 1.0, shown
    query = page.inner_text("#query")
    assert f"its clip {shown[0]['clip_index']}" in query, query
    # a file that is no video: the page says why, the server stays
    page.set_input_files("#file", {"name": "notes.mp4", "mimeType": "video/mp4", "buffer": b"\x00" * 5000})
    page.click("#upload-search")
    page.wait_for_selector("#status.error")
    assert "cannot read video the upload" in page.inner_text("#status")
    assert len(cards(page)) == 4  # the last results stay
