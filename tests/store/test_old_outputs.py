"""Outputs written by vmae_fast 16c2a40, the commit before the house move (tests/store/old_outputs, made by its
make.py with that commit's CLI), read and resume with this code: two static shards, and a Ray run whose groups sit
in the shard field of the part names (before group part names). Each was left as a run killed before its last
commit: broken.mp4's error row is missing, every other video is committed; a resume must redo that one video and
nothing else, with either shard count."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers.old_outputs import COMMITTED as VIDEOS
from tests.helpers.old_outputs import OLD_OUTPUTS as OLD
from tests.helpers.old_outputs import RESUME, make_inputs
from vmae_fast import store
from vmae_fast.extraction import extract


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The videos the old outputs were made from, with the same names."""
    return make_inputs(tmp_path_factory.mktemp("old-inputs") / "videos")


@pytest.mark.parametrize("name,numbers", [("local", {0, 1}), ("ray", {1, 2, 3})])
def test_an_old_output_reads(name, numbers):
    out = OLD / name
    parts = store.list_parts(out / "clips")
    assert {p.number for p in parts} == numbers and not any(p.group for p in parts)  # shard names, groups or not
    clips = store.read_clips(out)
    assert set(clips.column("video_id").to_pylist()) == VIDEOS and clips.num_rows == len(parts)  # a clip each
    assert set(clips.column("crop_index").to_pylist()) == {1}
    videos = store.read_videos(out)
    assert sorted(videos.column("video_id").to_pylist()) == sorted(VIDEOS)
    meta, embeddings = store.read_embeddings(out)
    assert embeddings.shape == (len(parts), 384) and meta.column("video_id").to_pylist() == \
        clips.column("video_id").to_pylist()
    assert store.read_errors(out).num_rows == 0
    assert store.committed_video_ids(out) == VIDEOS
    for num_shards in (1, 2, 3):  # the resume sets of any shard count: together every video, each in one shard
        sets = [store.committed_ids(out, s, num_shards) for s in range(num_shards)]
        assert all(any(v in ids for ids in sets) for v in VIDEOS) and sum(len(ids) for ids in sets) == 8


@pytest.mark.parametrize("name,shards", [("local", ["0/2", "1/2"]), ("local", [None]), ("ray", [None]),
                                         ("ray", ["1/2", "0/2"])])
def test_an_old_output_resumes_doing_only_what_it_lacks(tmp_path, inputs, name, shards):
    out = tmp_path / name
    shutil.copytree(OLD / name, out)
    before = store.read_clips(out).to_pylist()
    summaries = [extract([inputs], out, shard=shard, **RESUME) for shard in shards]
    assert sum(s["videos_skipped"] for s in summaries) == 8
    assert (sum(s["videos_ok"] for s in summaries), sum(s["videos_failed"] for s in summaries)) == (0, 1)
    errors = store.read_errors(out).to_pylist()
    assert [(e["video_id"], e["stage"]) for e in errors] == [("broken.mp4", "open")]
    assert store.read_clips(out).to_pylist() == before  # nothing redone, nothing written twice
    assert store.committed_video_ids(out) == VIDEOS | {"broken.mp4"}
    again = extract([inputs], out, **RESUME)
    assert (again["videos_skipped"], again["videos_ok"], again["videos_failed"]) == (9, 0, 0)
