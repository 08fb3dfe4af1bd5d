"""Multi-view extraction end to end (issue 12): `extract --views CxK` / `--crops 3` through the real extractor and
its decode workers, the clip column crop_index, the video table committed with the clips, resume after SIGKILL,
`labels` and `index --level video` on a real output, and the one-line errors for bad view arguments.

Model: the tiny random classification checkpoint of tests/helpers/hf_checkpoints.py (32 px, 4 frames, 5 labels named
class_<i>). The per-view reference is our model applied to each view decoded and cropped independently by the test
(tests/helpers/videos.py: independent_views, written without vmae_fast); transformers on those same views is
tests/store/test_video_table.py's parity test (rel 1e-4), so here the comparison is with our model in the test process.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tests.helpers.hf_checkpoints import make_checkpoint
from tests.helpers.videos import independent_views, make_video
from vmae_fast import cli, store
from vmae_fast.checkpoint import load_model
from vmae_fast.extraction import extract
from vmae_fast.store import read_videos
from vmae_fast.store.schemas import TOP

REPO = Path(__file__).resolve().parents[2]
# fp32 on CPU: a view's numbers depend on the shape of the batch it ran in (BLAS kernels by matrix shape), and a
# killed subprocess ran its batches with its own thread count; test_extract.py measured <= 7e-7 for this model
ATOL = 1e-5
VIEWS = "2x3"
OPTIONS = {"workers": 1, "batch_size": 4, "part_rows": 1, "commit_interval_s": 1e-3, "progress": False}
CLI_OPTIONS = ["--workers", "1", "--batch-size", "4", "--part-rows", "1", "--commit-interval-s", "0.001",
               "--no-progress"]
# name -> (width, height, display rotation): landscape, portrait, and a phone's portrait coded landscape
SHAPES = {"landscape": (64, 40, 0), "portrait": (40, 64, 0), "rotated": (64, 40, 90)}


class Run(NamedTuple):
    videos: Path
    expected: dict  # video_id -> tests.videos.Expected
    out: Path
    summary: dict


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", kind="classification", seed=11)


@pytest.fixture(scope="module")
def model(ckpt):
    return load_model(ckpt, device="cpu", backend="torch")


@pytest.fixture(scope="module")
def run(tmp_path_factory, ckpt) -> Run:
    """A 2 clips x 3 crops run (one decode worker, so every view crosses the pool) over six videos with marker bands
    at the ends of the long side: landscape, portrait and rotated, two lengths each: 44 frames (two clips) and 7,
    shorter than one clip (one clip padded with its last frame, which ends before the video does: duration_s must
    come from the decoder, not from the clips' span)."""
    d = tmp_path_factory.mktemp("videos")
    expected = {}
    for name, (w, h, rot) in SHAPES.items():
        for frames in (7, 44):
            path = d / f"{name}{frames}.mp4"
            expected[path.name] = make_video(path, "h264", width=w, height=h, frames=frames, rotation=rot,
                                             markers=True)
    out = tmp_path_factory.mktemp("out") / "out"
    summary = extract([d], out, model=ckpt, views=VIEWS, **OPTIONS)
    assert (summary["videos_ok"], summary["videos_failed"]) == (6, 0)
    return Run(d, expected, out, summary)


def num_clips(video_id: str) -> int:
    return 1 if "7." in video_id else 2


def clip_rows(out) -> list[dict]:
    return sorted(store.read_clips(out).to_pylist(), key=lambda r: (r["video_id"], r["clip_index"], r["crop_index"]))


def video_rows(out) -> dict[str, dict]:
    rows = read_videos(out).to_pylist()
    table = {r["video_id"]: r for r in rows}
    assert len(table) == len(rows), "a video has two rows"
    return table


def np_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


# --- every view ----------------------------------------------------------------------------------------------------
def views_of(rows: list[dict], run: Run, cfg) -> np.ndarray:
    """uint8 (n, T, S, S, 3): the frames of each clips row's view, cut by independent_views from the test's own
    decode (frame indices from start_frame/end_frame: a fixed step, padding repeats the last sampled frame)."""
    frames, by_video = [], {}
    for r in rows:
        if r["video_id"] not in by_video:
            by_video[r["video_id"]] = independent_views(run.expected[r["video_id"]], cfg.image_size, 3)
        real = cfg.num_frames - r["padded_frames"]
        step = (r["end_frame"] - 1 - r["start_frame"]) // max(real - 1, 1)
        idx = r["start_frame"] + step * np.minimum(np.arange(cfg.num_frames), real - 1)
        frames.append(np.stack([by_video[r["video_id"]][i][r["crop_index"]] for i in idx]))
    return np.stack(frames)


def test_every_view_of_a_three_crop_run_is_the_model_on_that_view_decoded_independently(run, model):
    """Each clips row (video_id, clip_index, crop_index) holds what our model gives for that view cut by the test
    from its own decode (start/center/end of the long side after the short-side resize): logits and embedding
    within ATOL. Before the pool carried crop_index, every view arrived as crop 1 and overwrote the others."""
    rows = clip_rows(run.out)
    keys = [(r["video_id"], r["clip_index"], r["crop_index"]) for r in rows]
    assert keys == sorted({(v, k, c) for v in run.expected for k in range(num_clips(v)) for c in (0, 1, 2)})
    assert len(rows) == 3 * (1 + 2) * 3
    with torch.no_grad():
        want = model(torch.from_numpy(views_of(rows, run, model.config)))
    got_emb = np.array([r["embedding"] for r in rows], np.float32)
    got_logits = np.array([r["logits"] for r in rows], np.float32)
    np.testing.assert_allclose(got_emb, want.embeddings.numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(got_logits, want.logits.numpy(), atol=ATOL, rtol=0)
    # the views of a clip are different pictures (a crop in the wrong place could not pass for another one)
    per_clip = got_emb.reshape(-1, 3, got_emb.shape[1])
    assert np.abs(per_clip[:, 0] - per_clip[:, 2]).max(axis=1).min() > 1e-3
    assert pq.read_schema(next((run.out / "clips").glob("part-*.parquet"))).field("crop_index").type == "int8"


def test_every_view_of_a_three_crop_run_equals_transformers_on_that_view(run, model, ckpt):
    """The stored logits and embedding of every view against transformers' VideoMAEForVideoClassification (read
    from the same checkpoint) on the test's own decode + crop of that view: rel 1e-4 (fp32; the summation-order
    difference of test_reference.py, measured ~1e-6)."""
    from tests.helpers.hf_checkpoints import load_hf_model
    from tests.helpers.reference_videomae import frames_to_pixel_values

    hf = load_hf_model(ckpt)
    rows = clip_rows(run.out)
    cfg = model.config
    with torch.no_grad():
        pixel_values = frames_to_pixel_values(torch.from_numpy(views_of(rows, run, cfg)), cfg.image_mean,
                                              cfg.image_std)
        logits = hf(pixel_values).logits
        embedding = hf.fc_norm(hf.videomae(pixel_values).last_hidden_state.mean(1))
    for name, want in (("logits", logits), ("embedding", embedding)):
        got = torch.tensor([r[name] for r in rows])
        err = ((got - want).abs().max() / want.abs().max()).item()
        assert err <= 1e-4, f"{name}: rel max err {err:.2e}"


def test_each_video_row_is_numpys_mean_of_softmax_over_its_clip_rows(run):
    """The video table: one row per video, probs = numpy's mean of softmax(logits) of its six clip rows, embedding
    their mean (not renormalized), top 5 labels by id2label, num_views 6 (2 clips x 3 crops), duration_s the
    decoder's (the whole video, first frame to the end of the last), every videos part next to its clips part.
    Before DoneEvent carried the decoder's duration, a padded clip's video got the span of its views."""
    rows = clip_rows(run.out)
    videos = video_rows(run.out)
    assert set(videos) == set(run.expected)
    for vid, row in videos.items():
        mine = [r for r in rows if r["video_id"] == vid]
        probs = np_softmax(np.array([r["logits"] for r in mine])).mean(0)
        np.testing.assert_allclose(row["probs"], probs, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(row["embedding"], np.array([r["embedding"] for r in mine], np.float64).mean(0),
                                   rtol=1e-6, atol=1e-7)
        best = np.argsort(-probs, kind="stable")[:TOP]
        assert row["top_labels"] == [f"class_{i}" for i in best]
        np.testing.assert_allclose(row["top_probs"], probs[best], rtol=1e-6)
        assert (row["num_views"], row["num_clips"], row["num_crops"]) == (3 * num_clips(vid), num_clips(vid), 3)
        assert row["duration_s"] == pytest.approx(run.expected[vid].duration, abs=1e-6)
        assert row["path"] == str(run.videos / vid)
    short = videos["landscape7.mp4"]
    assert short["end_s"] - short["start_s"] < short["duration_s"] - 0.05  # the span of the views is not the duration
    clips = [n for n, _, _ in store.list_parts(run.out / "clips")]
    assert [n for n, _, _ in store.list_parts(run.out / "videos")] == clips
    note = pq.read_schema(run.out / "videos" / clips[0]).field("embedding").metadata[b"description"]
    assert b"not renormalized" in note


# --- crash safety ---------------------------------------------------------------------------------------------------
def assert_consistent(out) -> tuple[list[dict], dict]:
    """The invariant a reader relies on at any moment: every video with committed clips has exactly one video row
    and every video row has its clips; no view twice."""
    rows = clip_rows(out)
    keys = [(r["video_id"], r["clip_index"], r["crop_index"]) for r in rows]
    assert len(keys) == len(set(keys)), "a view was written twice"
    videos = video_rows(out)
    assert set(videos) == {r["video_id"] for r in rows}
    for vid, row in videos.items():
        assert row["num_views"] == sum(r["video_id"] == vid for r in rows)
    return rows, videos


def test_resume_after_sigkill_of_a_multiview_extract_keeps_clips_and_videos_consistent(tmp_path, run, ckpt):
    """`vmae-fast extract --views 2x3` killed with SIGKILL (process group: CLI and decode worker) at a random
    moment mid-run; at the kill and after the rerun, clips and video rows agree (assert_consistent); after the
    rerun both equal the uninterrupted run: non-numeric columns exactly, numbers within ATOL (views that ran in
    batches of another shape or thread count), top labels exactly wherever the probabilities are not within ATOL
    of a tie."""
    rng = random.Random(12)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ref_rows, ref_videos = clip_rows(run.out), video_rows(run.out)
    landed = []
    for trial in range(2):
        out = tmp_path / f"out{trial}"
        target = rng.randint(1, 4)
        cmd = [sys.executable, "-m", "vmae_fast.cli", "extract", str(run.videos), "-o", str(out), "--model",
               str(ckpt), "--views", VIEWS, *CLI_OPTIONS]
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if len(store.list_parts(out / "clips")) >= target:
                break
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.02))
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        committed = store.committed_video_ids(out)
        at_kill, _ = assert_consistent(out)
        summary = extract([run.videos], out, model=ckpt, views=VIEWS, **OPTIONS)
        assert summary["videos_skipped"] == len(committed)
        assert summary["videos_skipped"] + summary["videos_ok"] == 6
        assert [str(p) for p in out.rglob("*") if p.name.endswith(".tmp")] == []
        assert [n for n, _, _ in store.list_parts(out / "videos")] == [n for n, _, _ in store.list_parts(out / "clips")]
        rows, videos = assert_consistent(out)
        assert [(r["video_id"], r["clip_index"], r["crop_index"]) for r in rows] == \
            [(r["video_id"], r["clip_index"], r["crop_index"]) for r in ref_rows]
        numeric = {"embedding", "logits", "probs", "top_labels", "top_probs"}
        for got, want in zip(rows, ref_rows, strict=True):
            assert {k: v for k, v in got.items() if k not in numeric} == \
                {k: v for k, v in want.items() if k not in numeric}
            for k in ("embedding", "logits"):
                np.testing.assert_allclose(got[k], want[k], atol=ATOL, rtol=0)
        assert set(videos) == set(ref_videos)
        for vid, got in videos.items():
            want = ref_videos[vid]
            assert {k: v for k, v in got.items() if k not in numeric} == \
                {k: v for k, v in want.items() if k not in numeric}
            for k in ("embedding", "probs", "top_probs"):
                np.testing.assert_allclose(got[k], want[k], atol=ATOL, rtol=0)
            p = np.sort(want["probs"])[::-1][:TOP + 1]
            if np.all(np.diff(-p) > 2 * ATOL):
                assert got["top_labels"] == want["top_labels"]
        landed.append((target, len(committed), len({r["video_id"] for r in at_kill})))
    print("multiview kills (target parts, committed at kill, videos with rows at kill):", landed)
    assert any(0 < c < 6 for _, c, _ in landed), landed  # at least one kill landed mid-run


# --- readers on a real output -----------------------------------------------------------------------------------------
def test_labels_on_a_real_output(run, capsys):
    videos = read_videos(run.out).to_pylist()
    assert cli.main(["labels", str(run.out), "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 * 4
    first = videos[0]
    n = num_clips(first["video_id"])
    assert lines[0] == f"{first['video_id']}  {3 * n} views ({n} clips x 3 crops), {first['duration_s']:.1f} s"
    for line, label, prob in zip(lines[1:4], first["top_labels"][:3], first["top_probs"][:3], strict=True):
        assert line == f"  {100 * prob:6.2f}%  {label}"
        assert label.startswith("class_")


def test_index_video_level_of_a_real_output_is_the_video_table(run, tmp_path):
    """`index --level video` on an extract output: one vector per video, the video table's embedding normalized
    (shown by swapping that table's vectors in a copy: the index follows the table, not the clips); the clip
    level holds each clip once (its center view)."""
    import shutil

    import pyarrow as pa

    from vmae_fast.retrieval import Index

    out = tmp_path / "copy"
    shutil.copytree(run.out, out)
    videos = read_videos(out)
    index = Index.build(out, level="video", kind="flat", save=False)
    emb = np.stack(videos.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float64)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    np.testing.assert_allclose(index.faiss_index.reconstruct_n(0, len(index)), unit, atol=1e-6)
    assert index.metadata.column("video_id").to_pylist() == videos.column("video_id").to_pylist()
    expected = [num_clips(v) for v in videos.column("video_id").to_pylist()]
    assert index.metadata.column("num_clips").to_pylist() == expected
    rng = np.random.default_rng(0)
    swapped = []
    for part in store.list_parts(out / "videos"):
        path = out / "videos" / part[0]
        table = pq.read_table(path)
        new = rng.standard_normal((table.num_rows, emb.shape[1])).astype(np.float32)
        swapped.append(new)
        field = table.schema.field("embedding")
        table = table.set_column(
            table.schema.get_field_index("embedding"),
            field,
            pa.FixedSizeListArray.from_arrays(pa.array(new.ravel()), type=field.type),
        )
        pq.write_table(table, path)
    index = Index.build(out, level="video", kind="flat", save=False)
    new = np.concatenate(swapped)
    np.testing.assert_allclose(
        index.faiss_index.reconstruct_n(0, len(index)), new / np.linalg.norm(new, axis=1, keepdims=True), atol=1e-6
    )
    clips = Index.build(out, level="clip", kind="flat", save=False)
    assert len(clips) == 9 and set(clips.metadata.column("crop_index").to_pylist()) == {1}


# --- bad view arguments -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args,words",
    [
        (["--crops", "2"], "--crops must be 1 (the center crop) or 3"),
        (["--views", "5x2"], "crops must be 1 or 3"),
        (["--views", "5"], "CLIPSxCROPS"),
        (["--views", "0x3"], ">= 1"),
        (["--views", "2x3", "--clips-per-video", "2"], "give --views or --clips-per-video, not both"),
        (["--views", "2x3", "--crops", "3"], "give --views or --crops, not both"),
        (["--views", "2x3", "--clip-stride-s", "1"], "give --views or --clip-stride-s, not both"),
    ],
)
def test_bad_view_arguments_are_one_line_errors_and_write_nothing(tmp_path, run, ckpt, capsys, args, words):
    out = tmp_path / "out"
    code = cli.main(["extract", str(run.videos), "-o", str(out), "--model", str(ckpt), "--no-progress", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], (args, err)
    assert not out.exists()
