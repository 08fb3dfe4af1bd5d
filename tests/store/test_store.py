"""vmae_fast.store without a model: schemas, atomic parts, reading order, run configuration checks, shard-safe
cleanup."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers.rows import make_run, video_rows
from vmae_fast import store


def test_clip_schema_is_exactly_the_design():
    schema = store.clip_schema(768, 400)
    assert [(f.name, str(f.type)) for f in schema] == [
        ("video_id", "string"),
        ("path", "string"),
        ("clip_index", "int32"),
        ("crop_index", "int8"),
        ("start_frame", "int64"),
        ("end_frame", "int64"),
        ("start_s", "double"),
        ("end_s", "double"),
        ("padded_frames", "int16"),
        ("num_tokens", "int32"),
        ("embedding", "fixed_size_list<element: float not null>[768]"),
        ("logits", "fixed_size_list<element: float not null>[400]"),
    ]
    assert "logits" not in store.clip_schema(768, 0).names
    assert (
        str(store.clip_schema(8, 0, "float16").field("embedding").type)
        == "fixed_size_list<element: halffloat not null>[8]"
    )
    with pytest.raises(ValueError, match="embedding_dtype must be one of"):
        store.clip_schema(8, 0, "bfloat16")
    assert [(f.name, str(f.type)) for f in store.error_schema()] == [
        ("path", "string"),
        ("video_id", "string"),
        ("stage", "string"),
        ("error", "string"),
        ("attempts", "int32"),
    ]


def test_writer_parts_reading_order_and_metadata(tmp_path):
    run = make_run()
    out = store.prepare_output(tmp_path / "out", run, shard=0, num_shards=1, overwrite=False)
    writer = store.RunWriter(out, run, 0, part_rows=5, commit_interval_s=1e9)
    videos = [video_rows(f"v{i}", n, seed=i) for i, n in enumerate([3, 4, 2, 7, 1])]
    for rows in videos:
        writer.add_video(rows)  # 3 -> 7 rows: part 0 written (v0+v1), then v2+v3 (9 rows), then v4 on flush
    writer.add_error("/v/bad.mp4", "bad.mp4", "open", "empty file", 1)
    writer.flush()
    assert [name for name, _, _ in store.list_parts(out / "clips")] == [
        "part-00000-000000.parquet",
        "part-00000-000001.parquet",
        "part-00000-000002.parquet",
    ]
    # a stray temp file and a foreign file are never read
    (out / "clips" / ".part-00000-000003.parquet.tmp").write_bytes(b"garbage")
    (out / "clips" / "notes.txt").write_text("hello")

    table = store.read_clips(out)
    assert table.column("video_id").to_pylist() == [v for rows in videos for v in rows["video_id"]]
    meta, emb = store.read_embeddings(out)
    assert emb.dtype == np.float32 and emb.shape == (17, 6)
    np.testing.assert_array_equal(emb, np.concatenate([rows["embedding"] for rows in videos]))
    assert meta.column_names == [n for n in table.column_names if n != "embedding"]
    assert meta.column("clip_index").to_pylist() == table.column("clip_index").to_pylist()
    # every part carries the run's metadata as JSON values
    kv = pq.read_schema(out / "clips" / "part-00000-000000.parquet").metadata
    assert json.loads(kv[b"id2label"]) == {"0": "a", "1": "b", "2": "c"}
    assert json.loads(kv[b"config_hash"]) == run["config_hash"]
    for key in (
        b"architecture",
        b"embedding",
        b"model_source",
        b"model_config",
        b"weights_sha256",
        b"preprocessing",
        b"sampling",
        b"keep",
        b"dtype",
        b"device",
        b"library_version",
    ):
        assert key in kv, key
    errors = store.read_errors(out)
    assert errors.to_pylist() == [
        {"path": "/v/bad.mp4", "video_id": "bad.mp4", "stage": "open", "error": "empty file", "attempts": 1}
    ]
    assert store.committed_video_ids(out) == {"v0", "v1", "v2", "v3", "v4", "bad.mp4"}


def test_float16_embeddings_read_back_as_float32(tmp_path):
    run = make_run(embedding_dtype="float16", num_labels=0)
    out = store.prepare_output(tmp_path / "out", run, shard=0, num_shards=1, overwrite=False)
    writer = store.RunWriter(out, run, 0)
    rows = video_rows("v", 3, num_labels=0)
    writer.add_video(rows)
    writer.flush()
    meta, emb = store.read_embeddings(out)
    assert "logits" not in meta.column_names
    np.testing.assert_array_equal(emb, rows["embedding"].astype(np.float16).astype(np.float32))


def test_empty_output_reads_as_empty_tables(tmp_path):
    out = store.prepare_output(tmp_path / "out", make_run(), shard=0, num_shards=1, overwrite=False)
    assert store.read_clips(out).num_rows == 0
    meta, emb = store.read_embeddings(out)
    assert meta.num_rows == 0 and emb.shape == (0, 6)
    with pytest.raises(FileNotFoundError, match="not an output"):
        store.read_clips(tmp_path / "nothing")


def snapshot(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_changed_configuration_is_refused_untouched_and_overwrite_is_shard_safe(tmp_path):
    run = make_run()
    out = store.prepare_output(tmp_path / "out", run, shard=0, num_shards=2, overwrite=False)
    for shard in (0, 1):
        writer = store.RunWriter(out, run, shard)
        writer.add_video(video_rows(f"s{shard}", 2))
        writer.flush()
    (out / "index").mkdir()
    (out / "index" / "clip.faiss").write_bytes(b"x")
    before = snapshot(out)

    # same configuration: a resume leaves everything in place
    store.prepare_output(out, run, shard=1, num_shards=2, overwrite=False)
    assert snapshot(out) == before
    # a different configuration: refused with the difference named, nothing touched
    other = make_run(frame_step=2)
    with pytest.raises(ValueError, match=r"different configuration \(sampling.frame_step: 4 -> 2\).*--overwrite"):
        store.prepare_output(out, other, shard=0, num_shards=2, overwrite=False)
    assert snapshot(out) == before
    # --overwrite in shard 1 removes shard 1's parts only (shard 0 may be writing its new parts right now)
    store.prepare_output(out, other, shard=1, num_shards=2, overwrite=True)
    assert [p[1] for p in store.list_parts(out / "clips")] == [0]
    assert not (out / "index").exists()
    assert store.load_run(out)["config_hash"] == other["config_hash"]
    # shard 0 with one shard now: its own parts and those of shards >= 1 go
    writer = store.RunWriter(out, other, 1)
    writer.add_error("/v/x", "x", "open", "e", 1)
    writer.flush()
    assert [p[1] for p in store.list_parts(out / "errors")] == [1]
    store.prepare_output(out, other, shard=0, num_shards=1, overwrite=True)
    assert store.list_parts(out / "clips") == [] and store.list_parts(out / "errors") == []


def test_parts_without_run_file_are_refused(tmp_path):
    out = tmp_path / "out"
    (out / "clips").mkdir(parents=True)
    (out / "clips" / "part-00000-000000.parquet").write_bytes(b"x")
    with pytest.raises(ValueError, match="no _run.json"):
        store.prepare_output(out, make_run(), shard=0, num_shards=1, overwrite=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        store.prepare_output(tmp_path / "file", make_run(), shard=0, num_shards=1, overwrite=False)


def test_temp_files_are_cleaned_per_shard(tmp_path):
    out = store.prepare_output(tmp_path / "out", make_run(), shard=0, num_shards=2, overwrite=False)
    own = out / "clips" / ".part-00000-000004.parquet.tmp"
    sibling = out / "errors" / ".part-00001-000000.parquet.tmp"
    own.write_bytes(b"half a file")
    sibling.write_bytes(b"being written by shard 1")
    store.prepare_output(out, make_run(), shard=0, num_shards=2, overwrite=False)
    assert not own.exists() and sibling.exists()


def test_part_writer_continues_numbering_and_leaves_no_temp(tmp_path):
    schema = store.error_schema()
    d = tmp_path / "errors"
    d.mkdir()
    (d / "part-00003-000007.parquet").write_bytes(b"")
    writer = store.PartWriter(d, 3, schema)
    path = writer.write({"path": ["p"], "video_id": ["v"], "stage": ["open"], "error": ["e"], "attempts": [2]})
    assert path.name == "part-00003-000008.parquet"
    assert sorted(os.listdir(d)) == ["part-00003-000007.parquet", "part-00003-000008.parquet"]
    assert pq.read_table(path).schema.field("attempts").type == pa.int32()


def test_diff_configs_names_nested_changes():
    assert store.diff_configs({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3, "d": 4}}) == [
        "a.c: 2 -> 3",
        "a.d: (absent) -> 4",
    ]


# --- the video table: one commit with the clips -------------------------------------------------------------------
def test_each_clips_part_has_its_videos_part_of_the_same_name_with_the_views_aggregation(tmp_path):
    """Every clips part gets OUT/videos/<same name> holding one row per video of it, in the same order, computed by
    store.videos.video_columns from the rows added (crop_index absent: every view is the center crop); duration_s the
    one given, else the span of the views."""
    run = make_run()
    out = store.prepare_output(tmp_path / "out", run, shard=0, num_shards=1, overwrite=False)
    writer = store.RunWriter(out, run, 0, part_rows=5, commit_interval_s=1e9)
    videos = [video_rows(f"v{i}", n, seed=i) for i, n in enumerate([3, 4, 2, 7, 1])]
    for i, rows in enumerate(videos):
        writer.add_video(rows, duration_s=None if i == 2 else 10.0 + i)
    writer.flush()
    names = [name for name, _, _ in store.list_parts(out / "clips")]
    assert [name for name, _, _ in store.list_parts(out / "videos")] == names
    got = store.read_videos(out)
    assert got.column("video_id").to_pylist() == [f"v{i}" for i in range(5)]
    for i, (rows, row) in enumerate(zip(videos, got.to_pylist(), strict=True)):
        z = rows["logits"].astype(np.float64)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        np.testing.assert_allclose(row["probs"], p.mean(0), rtol=1e-6)
        np.testing.assert_allclose(row["embedding"], rows["embedding"].astype(np.float64).mean(0), rtol=1e-6, atol=1e-7)
        assert row["top_labels"] == [["a", "b", "c"][j] for j in np.argsort(-p.mean(0), kind="stable")]
        n = len(rows["clip_index"])
        assert (row["num_views"], row["num_clips"], row["num_crops"]) == (n, n, 1)
        assert row["duration_s"] == (0.25 * n if i == 2 else 10.0 + i)
    for name in names:  # a part's videos are exactly the videos of its clips
        clips = pq.read_table(out / "clips" / name, columns=["video_id"]).column("video_id").unique().to_pylist()
        assert pq.read_table(out / "videos" / name).column("video_id").to_pylist() == clips
    assert store.read_clips(out).column("crop_index").to_pylist() == [1] * 17


def test_the_clips_rename_is_the_commit_point_and_a_resume_removes_the_orphan(tmp_path, monkeypatch):
    """A crash between the videos rename and the clips rename leaves a videos part without clips: no reader counts
    it, the video is not committed, and the next run of that shard removes it and writes that number again."""
    run = make_run()
    out = store.prepare_output(tmp_path / "out", run, shard=0, num_shards=2, overwrite=False)
    writer = store.RunWriter(out, run, 0)
    writer.add_video(video_rows("v0", 2))
    writer.flush()
    real = os.replace

    def crash_on_clips(src, dst):
        if "/clips/" in str(dst):
            raise KeyboardInterrupt  # killed between the two renames
        return real(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_clips)
    writer.add_video(video_rows("v1", 3))
    with pytest.raises(KeyboardInterrupt):
        writer.flush()
    monkeypatch.setattr(os, "replace", real)
    assert [n for n, _, _ in store.list_parts(out / "videos")] == [
        "part-00000-000000.parquet",
        "part-00000-000001.parquet",
    ]
    sibling = out / "videos" / "part-00001-000003.parquet"  # shard 1's, between its own two renames right now
    sibling.write_bytes(b"shard 1 is writing")
    assert store.read_videos(out).column("video_id").to_pylist() == ["v0"]
    assert store.committed_video_ids(out) == {"v0"}
    store.prepare_output(out, run, shard=0, num_shards=2, overwrite=False)  # the resume
    assert [n for n, _, _ in store.list_parts(out / "videos")] == [
        "part-00000-000000.parquet",
        "part-00001-000003.parquet",
    ]
    assert list((out / "clips").glob(".*.tmp")) == []
    writer = store.RunWriter(out, run, 0)
    writer.add_video(video_rows("v1", 3))
    writer.flush()
    assert store.read_videos(out).column("video_id").to_pylist() == ["v0", "v1"]
    assert store.read_clips(out).column("video_id").to_pylist() == ["v0"] * 2 + ["v1"] * 3


def test_an_output_of_format_1_reads_but_is_not_resumed_into(tmp_path):
    """Before crop_index and the video table (format vmae_fast.extract/1): read_clips gives crop_index 1 (the
    center crop every row is), read_videos aggregates the clips, and a run refuses to add to it in one line."""
    old_run = {**make_run(), "format": "vmae_fast.extract/1"}
    out = tmp_path / "old"
    (out / "clips").mkdir(parents=True)
    (out / "_run.json").write_text(json.dumps(old_run))
    rows = video_rows("v0", 3)
    schema = pa.schema([f for f in store.schemas_for_run(old_run)[0] if f.name != "crop_index"])
    cols = {k: rows[k] for k in schema.names if k not in ("embedding", "logits")}
    cols["embedding"] = store.fixed_size_list(rows["embedding"], "float32")
    cols["logits"] = store.fixed_size_list(rows["logits"], "float32")
    pq.write_table(pa.Table.from_pydict(cols, schema=schema), out / "clips" / "part-00000-000000.parquet")
    table = store.read_clips(out)
    assert table.column_names[:4] == ["video_id", "path", "clip_index", "crop_index"]
    assert table.column("crop_index").to_pylist() == [1, 1, 1] and table.schema.field("crop_index").type == pa.int8()
    assert store.read_clips(out, ["crop_index", "video_id"]).column_names == ["crop_index", "video_id"]
    assert store.read_clips(out, ["video_id"]).column_names == ["video_id"]
    meta, emb = store.read_embeddings(out)
    assert "crop_index" in meta.column_names and emb.shape == (3, 6)
    assert store.read_videos(out).column("num_views").to_pylist() == [3]
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"format vmae_fast.extract/1.*--overwrite") as e:
        store.prepare_output(out, make_run(), shard=0, num_shards=1, overwrite=False)
    assert "\n" not in str(e.value) and snapshot(out) == before
    store.prepare_output(out, make_run(), shard=0, num_shards=1, overwrite=True)
    assert store.list_parts(out / "clips") == [] and store.load_run(out)["format"] == store.FORMAT
