"""Part names say who wrote a part (store/layout.py): a static shard (`part-<shard>-<seq>`) or a Ray group
(`part-g<group>-<seq>`); listing, the resume set, cleanup and a group's writer go by the name."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers.rows import make_run, video_rows
from vmae_fast import store
from vmae_fast.ids import shard_of
from vmae_fast.store import layout
from vmae_fast.store.committed import committed_ids, group_outcomes


def _ids_part(path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"video_id": pa.array(ids, pa.string()), "path": ids}), path,
                   use_dictionary=["video_id"])


def test_names_and_listing_order():
    assert layout.part_name(3, 7) == "part-00003-000007.parquet"
    assert layout.part_name(12, 0, group=True) == "part-g000012-000000.parquet"


def test_list_parts_gives_shards_then_groups_and_ignores_other_files(tmp_path):
    names = ["part-g000002-000000.parquet", "part-00001-000000.parquet", "part-g000001-000001.parquet",
             "part-00000-000010.parquet", "part-00000-000002.parquet", "part-g000001-000000.parquet",
             ".part-g000003-000000.parquet.tmp", ".part-00000-000011.parquet.tmp", "notes.txt", "part-x-1.parquet"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    parts = store.list_parts(tmp_path)
    assert [p.name for p in parts] == ["part-00000-000002.parquet", "part-00000-000010.parquet",
                                       "part-00001-000000.parquet", "part-g000001-000000.parquet",
                                       "part-g000001-000001.parquet", "part-g000002-000000.parquet"]
    assert [(p.number, p.seq, p.group) for p in parts] == [(0, 2, False), (0, 10, False), (1, 0, False),
                                                           (1, 0, True), (1, 1, True), (2, 0, True)]
    name, number, seq = parts[3]  # still a (name, number, seq) tuple
    assert (number, seq) == (1, 0) and parts[3].of_shard(1) is False and parts[2].of_shard(1) is True


def test_a_group_part_is_read_whole_whatever_its_first_ids_say(tmp_path):
    """A Ray group mixes shards. Its first 70 ids here all hash to shard 1 of 2, the rest to shard 0: a part named
    as shard 1's would pass the first-ids check of a shard part (committed.SAMPLE = 64) and be skipped by shard 0,
    which would then redo (and write twice) its 30 videos. A group's name says it mixes shards: it is read whole."""
    ones = [v for v in (f"v{i}.mp4" for i in range(400)) if shard_of(v, 2) == 1][:70]
    zeros = [v for v in (f"w{i}.mp4" for i in range(400)) if shard_of(v, 2) == 0][:30]
    _ids_part(tmp_path / "clips" / layout.part_name(1, 0, group=True), ones + zeros)
    got = committed_ids(tmp_path, 0, 2)
    assert len(got) == 30 and all(v in got for v in zeros)
    assert len(committed_ids(tmp_path, 1, 2)) == 70 and len(committed_ids(tmp_path)) == 100


def test_a_groups_writer_goes_on_after_its_earlier_attempts_parts(tmp_path):
    run = make_run()
    out = store.prepare_output(tmp_path / "out", run, shard=0, num_shards=1, overwrite=False)
    first = store.RunWriter.for_group(out, run, 4, part_rows=1)
    assert first.committed == set()
    for i in range(2):
        first.add_video(video_rows(f"a{i}", 2, seed=i))  # part_rows=1: a part each
    first.add_error("/v/bad", "bad", "open", "x", 1)
    first.flush()
    # the attempt died while committing its third video: an orphan videos part and temporary files are left
    (out / "videos" / layout.part_name(4, 2, group=True)).write_bytes(b"orphan")
    for folder in ("clips", "errors"):
        (out / folder / layout.temp_name(layout.part_name(4, 2 if folder == "clips" else 1, group=True))).write_bytes(
            b"half")
    retry = store.RunWriter.for_group(out, run, 4, part_rows=1)
    assert retry.committed == {"a0", "a1", "bad"}
    assert not (out / "videos" / layout.part_name(4, 2, group=True)).exists()
    assert [p.name for p in out.rglob("*.tmp")] == []
    retry.add_video(video_rows("a2", 1))
    retry.flush()
    assert [(p.number, p.seq, p.group) for p in store.list_parts(out / "clips")] == [(4, 0, True), (4, 1, True),
                                                                                    (4, 2, True)]
    assert store.list_parts(out / "videos") == store.list_parts(out / "clips")
    assert layout.next_group(out) == 5 and layout.next_group(tmp_path / "empty") == 0
    parts, rows, failed = group_outcomes(out, 4)
    assert dict(parts) == {"a0": 1, "a1": 1, "a2": 1, "bad": 1} and rows == 5 and failed == {"bad"}
    assert group_outcomes(out, 5)[1] == 0


def test_a_refused_commit_writes_nothing_and_keeps_the_rows(tmp_path):
    run = make_run()
    out = store.prepare_output(tmp_path / "out", run, shard=0, num_shards=1, overwrite=False)
    allowed = {"yes": False}

    def fence() -> None:
        if not allowed["yes"]:
            raise RuntimeError("not yours")

    writer = store.RunWriter.for_group(out, run, 0, before_commit=fence)
    writer.add_video(video_rows("a", 2))
    writer.add_error("/v/bad", "bad", "open", "x", 1)
    with pytest.raises(RuntimeError, match="not yours"):
        writer.flush()
    assert [list(store.list_parts(out / d)) for d in ("clips", "videos", "errors")] == [[], [], []]
    allowed["yes"] = True
    writer.flush()
    assert store.read_clips(out).num_rows == 2 and store.read_errors(out).num_rows == 1


def test_cleanup_overwrite_and_retry_errors_know_groups_from_shards(tmp_path):
    run = make_run()
    out = store.prepare_output(tmp_path / "out", run, shard=0, num_shards=2, overwrite=False)
    for shard in (0, 1):
        writer = store.RunWriter(out, run, shard)
        writer.add_video(video_rows(f"s{shard}", 1))
        writer.add_error(f"/v/e{shard}", f"e{shard}", "open", "x", 1)
        writer.flush()
    group = store.RunWriter.for_group(out, run, 0)
    group.add_video(video_rows("g", 1))
    group.add_error("/v/eg", "eg", "open", "x", 1)
    group.flush()
    temps = [out / "clips" / layout.temp_name(layout.part_name(n, 5, group=g)) for n, g in ((0, False), (1, False),
                                                                                          (0, True))]
    for path in temps:
        path.write_bytes(b"")
    assert layout.clean_temp_files(out, None, groups=True) == [temps[2]]  # a shard's temporary file stays
    assert layout.clean_temp_files(out, 1) == [temps[1]]
    assert store.retire_errors(out, 1) == 1 and store.read_errors(out).column("video_id").to_pylist() == ["e0", "eg"]
    assert store.retire_errors(out, None) == 2 and store.read_errors(out).num_rows == 0  # every shard's and group's
    # --overwrite by shard 1 of 2 keeps the group's parts; by shard 0 (it acts for the whole output) removes them
    store.prepare_output(out, run, shard=1, num_shards=2, overwrite=True)
    assert [p.name for p in store.list_parts(out / "clips")] == [layout.part_name(0, 0),
                                                                 layout.part_name(0, 0, group=True)]
    store.prepare_output(out, run, shard=0, num_shards=2, overwrite=True)
    assert store.list_parts(out / "clips") == [] and store.list_parts(out / "videos") == []
