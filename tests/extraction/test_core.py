"""The engine-independent core (extraction/core.py) with a stand-in runner and writer: a video is handed to the
writer whole, once all its views are embedded; the progress callback hears of every finished video; a decoder
that contradicts itself is our bug (InternalError), never a video's error row."""

from __future__ import annotations

import numpy as np
import pytest

from vmae_fast.extraction.core import Extraction
from vmae_fast.faults import InternalError
from vmae_fast.video import Clip, VideoTask

DIM = 4


class Runner:
    """Embeds a batch at once: clip i of a batch gets embedding [clip_index, crop_index, 0, 0]."""

    def __init__(self, batch_size: int = 2):
        self.batch_size, self.count, self.compute_s = batch_size, 0, 0.0
        self.released: list = []
        self.pending: list = []

    def submit(self, entries: list) -> list:
        self.count += 1
        embeddings = np.array([[clip.clip_index, clip.crop_index, 0, 0] for _, _, clip in entries], np.float32)
        self.pending.append((entries, embeddings, None, np.full(len(entries), 8, np.int32)))
        return self.collect()

    def collect(self) -> list:
        done, self.pending = self.pending, []
        return done

    def release(self, clips) -> None:
        self.released.extend(clips)


class Writer:
    def __init__(self):
        self.videos: list[dict] = []
        self.errors: list[tuple] = []
        self.flushed = 0

    def add_video(self, rows: dict, duration_s=None) -> None:
        self.videos.append(rows)

    def add_error(self, *row) -> None:
        self.errors.append(row)

    def flush(self) -> None:
        self.flushed += 1


def clip(index: int, crop: int = 1) -> Clip:
    return Clip(clip_index=index, start_frame=4 * index, end_frame=4 * index + 4, start_s=0.5 * index,
                end_s=0.5 * index + 0.5, padded_frames=0, frames=np.zeros((2, 8, 8, 3), np.uint8), crop_index=crop)


def task(name: str) -> VideoTask:
    return VideoTask(path=f"/v/{name}.mp4", video_id=f"{name}.mp4")


def test_a_video_is_committed_whole_and_each_finished_video_is_reported():
    heard = []
    runner, writer = Runner(batch_size=2), Writer()
    state = Extraction(runner, writer, lambda s: heard.append((s.ok, s.failed, s.clips)))
    a, b = task("a"), task("b")
    state.on_clips(a, [clip(0), clip(1)])  # a batch of two: embedded, but a's end is not known yet
    state.on_clips(b, [clip(0)])
    assert writer.videos == [] and heard == []
    state.on_done(a, 2, decode_s=0.1)
    assert [v["video_id"] for v in writer.videos] == [["a.mp4", "a.mp4"]] and heard == [(1, 0, 2)]
    state.on_error(task("c"), "open", "not a video", 1)
    state.on_done(b, 1, decode_s=0.1)  # b's clip waits in the batch being filled: finish() runs it
    assert heard == [(1, 0, 2), (1, 1, 2)]
    state.finish()
    assert heard == [(1, 0, 2), (1, 1, 2), (2, 1, 3)] and writer.flushed == 1
    assert writer.errors == [("/v/c.mp4", "c.mp4", "open", "not a video", 1)]
    np.testing.assert_array_equal(writer.videos[0]["embedding"], [[0, 1, 0, 0], [1, 1, 0, 0]])
    state.add_error("/v/d", "d", "discover", "PermissionError: no", 1)  # an error met outside the decoder
    assert heard[-1] == (2, 2, 3) and writer.errors[-1][2] == "discover"


# --- an inconsistency of ours is a bug, never the video's error row ---------------------------------------------------
def test_a_decoder_that_reports_other_clips_than_it_sent_is_our_bug_and_records_nothing():
    heard = []
    runner, writer = Runner(batch_size=1), Writer()
    state = Extraction(runner, writer, lambda s: heard.append(s.ok + s.failed))
    a = task("a")
    state.on_clips(a, [clip(0)])
    with pytest.raises(InternalError, match=r"reported 2 clips \(views\) of 'a.mp4' but sent 1"):
        state.on_done(a, 2, decode_s=0.1)
    assert (writer.videos, writer.errors, heard, state.failed) == ([], [], [], 0)


def test_a_video_the_decoder_never_finished_is_our_bug_and_records_nothing():
    runner, writer = Runner(batch_size=4), Writer()
    state = Extraction(runner, writer)
    b, c = task("b"), task("c")
    state.on_clips(b, [clip(0)])
    state.on_done(b, 1, decode_s=0.1)
    state.on_clips(c, [clip(0), clip(1)])  # ... and no DoneEvent for c
    with pytest.raises(InternalError, match=r"ended without finishing 1 video\(s\) \('c.mp4'\)"):
        state.finish()
    assert [v["video_id"][0] for v in writer.videos] == ["b.mp4"]  # b is complete: the engine's flush commits it
    assert writer.errors == [] and state.failed == 0
