"""Video-level results (vmae_fast/store/videos.py): --views parsing, the aggregation of a video's views, the video
table and its reader, `vmae-fast labels`; and every view (clip x crop) through the model against transformers applied to
that view decoded and cropped independently (tests/helpers/videos.py: independent_views).

Tables are built directly here (no extractor): an OUT folder with _run.json, clips parts and the videos parts that
views.py's aggregation gives, as extract commits them.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.helpers.videos import independent_views, make_video
from vmae_fast.extraction.spec import parse_views
from vmae_fast.store import VideoAccumulator, aggregate_video, read_videos, video_schema
from vmae_fast.store.schemas import TOP

D, C = 8, 10  # embedding width, classes


def np_softmax(logits: np.ndarray) -> np.ndarray:
    """numpy's softmax, written here: float64, max subtracted."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


# --- --views ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,views", [("5x3", (5, 3)), ("2x3", (2, 3)), ("1x1", (1, 1)), (" 10 X 3 ", (10, 3)),
                                        ("4x1", (4, 1))])
def test_parse_views(spec, views):
    assert parse_views(spec) == views


@pytest.mark.parametrize("spec,match", [("5", "CLIPSxCROPS"), ("5x2", "crops must be 1 or 3"), ("0x3", ">= 1"),
                                        ("x3", "CLIPSxCROPS"), ("5x3x1", "CLIPSxCROPS"), ("-1x3", "CLIPSxCROPS"),
                                        ("fivex3", "CLIPSxCROPS")])
def test_parse_views_rejects_with_the_value(spec, match):
    with pytest.raises(ValueError, match=match) as e:
        parse_views(spec)
    assert spec.strip() in str(e.value)


# --- the aggregation ------------------------------------------------------------------------------------------------
def clip_rows(rng, videos: int = 6, clips: int = 5, crops: int = 3) -> dict:
    """Clip rows of `videos` videos x clips x crops with embeddings of different norms and large logits (softmax
    overflows without the max subtracted), in crop-major order per video as extract writes them."""
    rows = {"video_id": [], "path": [], "clip_index": [], "crop_index": [], "start_s": [], "end_s": []}
    for v in range(videos):
        n_clips = 1 + (v + clips - 1) % clips  # 5, 1, 2, 3, 4, 5: one-clip videos too
        for k in range(n_clips):
            for c in ((1,) if crops == 1 else (0, 1, 2)):
                rows["video_id"].append(f"v{v}.mp4")
                rows["path"].append(f"/data/v{v}.mp4")
                rows["clip_index"].append(k)
                rows["crop_index"].append(c)
                rows["start_s"].append(2.0 * k + 0.5)
                rows["end_s"].append(2.0 * k + 2.5)
    n = len(rows["video_id"])
    rows["embedding"] = (rng.standard_normal((n, D)) * rng.uniform(0.2, 5.0, (n, 1))).astype(np.float32)
    rows["logits"] = (40 * rng.standard_normal((n, C))).astype(np.float32)
    return rows


def test_video_row_is_numpys_mean_of_the_views_softmax_and_embeddings():
    """Rows fed in shuffled batches: each video's probs equal numpy's mean of its rows' softmax, its embedding the
    plain mean (not renormalized), its top labels the 5 largest probs by id2label, best first."""
    rng = np.random.default_rng(0)
    rows = clip_rows(rng)
    n = len(rows["video_id"])
    order = rng.permutation(n)
    acc = VideoAccumulator(D, C)
    for chunk in np.array_split(order, 3):
        acc.add([rows["video_id"][i] for i in chunk], rows["embedding"][chunk], rows["logits"][chunk],
                **{k: [rows[k][i] for i in chunk] for k in ("path", "clip_index", "crop_index", "start_s", "end_s")})
    id2label = {str(i): f"label {i}" for i in range(C)}
    table = acc.table(id2label)
    assert table.schema == video_schema(D, C)
    ids = np.array(rows["video_id"])
    for row in table.to_pylist():
        mine = ids == row["video_id"]
        probs = np_softmax(rows["logits"][mine]).mean(0)
        np.testing.assert_allclose(row["probs"], probs, rtol=1e-6, atol=1e-9)  # float32 of the float64 mean
        np.testing.assert_allclose(row["embedding"], rows["embedding"][mine].astype(np.float64).mean(0), rtol=1e-6,
                                   atol=1e-7)
        best = np.argsort(-probs, kind="stable")[:TOP]
        assert row["top_labels"] == [f"label {i}" for i in best]
        np.testing.assert_allclose(row["top_probs"], probs[best], rtol=1e-6)
        clips = len(set(np.array(rows["clip_index"])[mine]))
        assert (row["num_views"], row["num_clips"], row["num_crops"]) == (int(mine.sum()), clips, 3)
        assert (row["start_s"], row["end_s"], row["duration_s"]) == (0.5, 2.0 * clips + 0.5, 2.0 * clips)
        assert row["path"] == "/data/" + row["video_id"]
    assert [r["video_id"] for r in table.to_pylist()] == list(dict.fromkeys(rows["video_id"][i] for i in order))
    field = table.schema.field("embedding")
    assert b"not renormalized" in field.metadata[b"description"]


def test_top_labels_with_ties_missing_names_and_fewer_classes_than_top():
    logits = np.array([[1.0, 3.0, 3.0], [1.0, 3.0, 3.0]], np.float32)  # classes 1 and 2 tie
    out = aggregate_video(np.ones((2, 4), np.float32), logits, {"0": "zero", "2": "two"})
    assert out["num_views"] == 2 and out["top_labels"] == ["LABEL_1", "two", "zero"]  # HF's default name
    assert out["top_probs"][0] == out["top_probs"][1] and sum(out["top_probs"]) == pytest.approx(1.0)
    no_head = aggregate_video(np.ones((2, 4), np.float32))
    assert set(no_head) == {"num_views", "embedding"} and no_head["embedding"].dtype == np.float32
    assert video_schema(4, 0).names == ["video_id", "path", "num_views", "num_clips", "num_crops", "start_s", "end_s",
                                        "duration_s", "embedding"]


# --- the video table on disk ------------------------------------------------------------------------------------------
def write_output(out, rows: dict, parts: int = 2, *, video_table: bool = True, crop_column: bool = True,
                 num_labels: int = C, id2label: dict | None = None) -> None:
    """An extract-shaped OUT: _run.json, clips parts (a video's clips in one part), and OUT/videos parts of the same
    names holding views.py's aggregation of each clips part (what extract commits); video_table=False: an output
    from before the video table existed, crop_column=False: from before crops."""
    (out / "clips").mkdir(parents=True)
    id2label = {str(i): f"label {i}" for i in range(num_labels)} if id2label is None else id2label
    run = {"format": "vmae_fast.extract/2", "config_hash": "feed", "library_version": "test", "device": "cpu",
           "config": {"embedding_dim": D, "num_labels": num_labels, "sampling": {}, "keep": "all", "dtype": "fp32",
                      "embedding_dtype": "float32"},
           "model": {"source": "random:test", "config": {}, "weights_sha256": None, "preprocessing": {},
                     "id2label": id2label if num_labels else None}}
    (out / "_run.json").write_text(json.dumps(run))
    ids = np.array(rows["video_id"])
    videos = list(dict.fromkeys(rows["video_id"]))
    if video_table:
        (out / "videos").mkdir()
    for seq, chunk in enumerate(np.array_split(np.array(videos), parts)):
        mine = np.flatnonzero(np.isin(ids, chunk))
        cols = {k: pa.array([rows[k][i] for i in mine]) for k in ("video_id", "path", "start_s", "end_s")}
        cols["clip_index"] = pa.array([rows["clip_index"][i] for i in mine], pa.int32())
        if crop_column:
            cols["crop_index"] = pa.array([rows["crop_index"][i] for i in mine], pa.int8())
        cols["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(rows["embedding"][mine].ravel()), D)
        if num_labels:
            cols["logits"] = pa.FixedSizeListArray.from_arrays(pa.array(rows["logits"][mine].ravel()), num_labels)
        name = f"part-00000-{seq:06d}.parquet"
        pq.write_table(pa.table(cols), out / "clips" / name)
        if video_table:
            acc = VideoAccumulator(D, num_labels)
            acc.add([rows["video_id"][i] for i in mine], rows["embedding"][mine],
                    rows["logits"][mine] if num_labels else None,
                    **{k: [rows[k][i] for i in mine] for k in ("path", "clip_index", "crop_index", "start_s", "end_s")})
            pq.write_table(acc.table(id2label, durations={v: 60.0 for v in chunk}), out / "videos" / name)


def test_read_videos_reads_committed_parts_only_and_outputs_from_before_the_table(tmp_path):
    """read_videos (also vmae_fast.read_videos): the rows of every videos part whose clips part exists (an orphan
    left by a crash between the two renames is not a result); an output without OUT/videos or without crop_index
    is aggregated from its clips with the same numbers (duration: the span of the views)."""
    import vmae_fast

    rows = clip_rows(np.random.default_rng(1))
    out = tmp_path / "out"
    write_output(out, rows)
    table = vmae_fast.read_videos(out)
    assert table.num_rows == 6 and table.column("duration_s").to_pylist() == [60.0] * 6
    orphan = out / "videos" / "part-00000-000007.parquet"
    pq.write_table(pq.read_table(out / "videos" / "part-00000-000000.parquet"), orphan)
    assert read_videos(out).equals(table)
    assert read_videos(out, ["video_id", "probs"]).column_names == ["video_id", "probs"]

    old = tmp_path / "old"
    write_output(old, rows, video_table=False, crop_column=False)
    legacy = read_videos(old)
    assert legacy.column("video_id").equals(table.column("video_id"))
    for name in ("embedding", "probs"):
        a = np.stack(legacy.column(name).to_numpy(zero_copy_only=False))
        b = np.stack(table.column(name).to_numpy(zero_copy_only=False))
        np.testing.assert_array_equal(a, b)
    assert legacy.column("top_labels").equals(table.column("top_labels"))
    assert legacy.column("num_crops").to_pylist() == [1] * 6  # no crop_index: every view is the center crop
    pairs = list(zip(rows["video_id"], rows["clip_index"], strict=True))
    clips = [len({k for v, k in pairs if v == f"v{i}.mp4"}) for i in range(6)]
    assert legacy.column("duration_s").to_pylist() == [2.0 * n for n in clips]

    empty = tmp_path / "empty"
    write_output(empty, {k: v[:0] for k, v in rows.items()}, parts=1)
    for p in (empty / "clips").glob("*"):  # as after `extract` with every video an error
        p.unlink()
    for p in (empty / "videos").glob("*"):
        p.unlink()
    table = read_videos(empty)
    assert table.num_rows == 0 and table.schema.field("probs").type.list_size == C


# --- vmae-fast labels -------------------------------------------------------------------------------------------------
def test_labels_prints_each_videos_top_labels(tmp_path, capsys):
    from vmae_fast.cli import main

    rows = clip_rows(np.random.default_rng(2))
    out = tmp_path / "out"
    write_output(out, rows)
    table = read_videos(out).to_pylist()
    assert main(["labels", str(out)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert len(text) == 6 * (1 + TOP)
    first = table[0]
    assert text[0] == f"{first['video_id']}  {first['num_views']} views ({first['num_clips']} clips x 3 crops), 60.0 s"
    for line, label, prob in zip(text[1:TOP + 1], first["top_labels"], first["top_probs"], strict=True):
        assert line == f"  {100 * prob:6.2f}%  {label}"

    assert main(["labels", str(out), "--top", "7", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["video_id"] for r in lines] == [r["video_id"] for r in table]
    for got, row in zip(lines, table, strict=True):
        best = np.argsort(-np.array(row["probs"]), kind="stable")[:7]
        assert [x["label"] for x in got["labels"]] == [f"label {i}" for i in best]
        assert [x["prob"] for x in got["labels"]] == pytest.approx([row["probs"][i] for i in best])
        assert (got["num_views"], got["duration_s"], got["path"]) == (row["num_views"], 60.0, row["path"])


def test_labels_refuses_what_has_no_labels_in_one_line(tmp_path, capsys):
    """No head: exit 2 naming why; not an output: exit 2; --top 0: exit 2; an output from before the video table:
    aggregated, with a note; an output with no video yet: a note, exit 0."""
    from vmae_fast.cli import main

    rows = clip_rows(np.random.default_rng(3), videos=2)
    write_output(tmp_path / "nohead", rows, num_labels=0)
    write_output(tmp_path / "old", rows, video_table=False, crop_column=False)
    for argv, words in ((["labels", str(tmp_path / "nohead")], "no classification head"),
                        (["labels", str(tmp_path / "nothing")], "not an output"),
                        (["labels", str(tmp_path / "old"), "--top", "0"], "--top")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert main(["labels", str(tmp_path / "old")]) == 0
    captured = capsys.readouterr()
    assert "no video table" in captured.err and len(captured.out.splitlines()) == 2 * (1 + TOP)


# --- every view against transformers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,size,rotation", [("landscape", (96, 48), 0), ("portrait", (48, 96), 0),
                                                ("rotated90", (96, 48), 90)])
def test_every_view_through_the_model_equals_transformers_on_that_view_decoded_independently(tmp_path, name, size,
                                                                                          rotation):
    """decode_clips(crops=3) -> our model (fp32), vs transformers' VideoMAEForVideoClassification on the same views
    decoded, turned and cropped by the test itself (independent_views): logits and embeddings within rel 1e-4 (fp32;
    measured ~1e-6, the summation-order difference of test_reference.py)."""
    from tests.helpers.hf_checkpoints import make_hf_checkpoint
    from tests.helpers.reference_videomae import frames_to_pixel_values
    from vmae_fast.checkpoint import load_model
    from vmae_fast.video import Sampling, VideoTask, decode_clips

    exp = make_video(tmp_path / f"{name}.mp4", "h264_bframes", width=size[0], height=size[1], frames=40,
                     rotation=rotation, markers=True)
    path, hf = make_hf_checkpoint(tmp_path / "ckpt", kind="classification", seed=4)
    model = load_model(path, backend="torch")
    cfg = model.config
    clips = list(decode_clips(VideoTask(exp.path), Sampling(num_frames=cfg.num_frames, clips_per_video=2, crops=3),
                              cfg.image_size))
    assert [c.crop_index for c in clips] == [0, 1, 2, 0, 1, 2]
    ref = independent_views(exp, cfg.image_size, 3)
    theirs = torch.from_numpy(np.stack([np.stack([ref[i][c.crop_index] for i in c.frame_indices]) for c in clips]))
    with torch.no_grad():
        ours = model(torch.from_numpy(np.stack([c.frames for c in clips])))
        pixel_values = frames_to_pixel_values(theirs, cfg.image_mean, cfg.image_std)
        tokens = hf.videomae(pixel_values).last_hidden_state
        embedding, logits = hf.fc_norm(tokens.mean(1)), hf(pixel_values).logits
    for what, got, want in (("logits", ours.logits, logits), ("embedding", ours.embeddings, embedding)):
        err = ((got - want).abs().max() / want.abs().max()).item()
        assert err <= 1e-4, f"{name} {what}: rel max err {err:.2e}"
    # the three views of a clip are different pictures: a wrong crop would not pass for another
    assert (ours.embeddings[0] - ours.embeddings[2]).abs().max() > 1e-3
