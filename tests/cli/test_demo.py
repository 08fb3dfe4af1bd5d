"""`vmae-fast demo` with default arguments, as the README's first command runs it on a fresh machine."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from vmae_fast import cli
from vmae_fast.demo import QUERY_SOURCE, QUERY_VIDEO, sample_videos


def test_samples_are_small_real_videos():
    from vmae_fast.retrieval.search import video_duration

    videos = sample_videos()
    assert len(videos) == 7 and QUERY_VIDEO in {v.name for v in videos}
    assert sum(v.stat().st_size for v in videos) < 3_000_000  # "a few MB" at most in the wheel
    assert all(abs(video_duration(v) - 4.5) < 0.05 for v in videos)


def test_demo_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))  # no cached checkpoint: random weights
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo"]) == 0
    stdout = capsys.readouterr().out
    out = tmp_path / "vmae-fast-demo"
    assert "NOTE: random weights" in stdout
    assert "extract: 24 clips of 6 videos" in stdout  # 6 indexed videos x 4 clips (8 frames, step 4 at 30 fps)
    # the query is a shifted, resized, re-encoded copy of orbit_red.mp4: even random weights find the source
    assert f"-> the best match is {QUERY_SOURCE}, the video it was copied from." in stdout
    assert "contact sheet (query frames, then each match's frames with its score): vmae-fast-demo/results.png" in stdout
    table = pq.read_table(out / "clips")
    assert table.num_rows == 24 and QUERY_VIDEO not in set(table.column("video_id").to_pylist())
    assert (out / "results.png").stat().st_size > 10_000
    assert json.loads((out / "index" / "clip.json").read_text())["rows"] == 24
    # the model the demo wrote is an ordinary checkpoint that later searches reload by path
    assert cli.main(["search", "vmae-fast-demo", "--video", str(sample_videos()[0]), "--at", "2", "-k", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[3].split()[1] == "1.000"


def test_demo_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert cli.main(["demo", "--out", str(tmp_path / "mine")]) == 2
    assert "was not made by `vmae-fast demo`" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
