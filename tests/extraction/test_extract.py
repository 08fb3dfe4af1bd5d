"""End to end: real encoded videos -> `extract` -> Parquet, with a tiny random HF checkpoint (32 px, 4 frames).

Covers the mixed good/bad folder, resume after SIGKILL of the whole process group, shards, refused configuration
changes, --overwrite, list files, schema/metadata, embed_video_at and the CLI's one-line errors.

Rows of two runs are compared with assert_same_rows: bit-identical for clips that ran in batches of the same shape
in both runs, within ATOL otherwise (a short batch runs with fewer rows, see runner.batch_rows).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import vmae_fast.extraction.core as core_module
import vmae_fast.extraction.runner as runner_module
from tests.helpers.hf_checkpoints import make_checkpoint
from tests.helpers.pool_faults import decode_with_faults
from tests.helpers.videos import make_bad_files, make_small_videos, make_video_zoo
from vmae_fast import cli, store
from vmae_fast.checkpoint import load_model
from vmae_fast.cli import format_summary
from vmae_fast.extraction import extract
from vmae_fast.retrieval import embed_video_at
from vmae_fast.video import Sampling, VideoTask, decode_clips, plan_clips

REPO = Path(__file__).resolve().parents[2]
# fp32 on CPU, the same clip in batches of different shapes (rows): BLAS picks its kernel by matrix shape, so partial
# sums are added in another order; measured <= 7e-7 for this model (|embedding| <= 2), 0 for ViT-S at 224 px.
# Clips in batches of the same shape are bit-identical, whatever the other rows hold.
ATOL = 1e-5


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    path = make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", kind="classification", seed=3)
    return path


@pytest.fixture(scope="module")
def model(ckpt):
    return load_model(ckpt, device="cpu")


@pytest.fixture(scope="module")
def small_videos(tmp_path_factory) -> Path:
    return make_small_videos(tmp_path_factory.mktemp("small"))


def sorted_rows(out) -> list[dict]:
    rows = store.read_clips(out).to_pylist()
    return sorted(rows, key=lambda r: (r["video_id"], r["clip_index"]))


def no_temp_files(out: Path) -> list[str]:
    return [str(p) for p in Path(out).rglob("*") if p.name.endswith(".tmp")]


RUN_OPTIONS = {"workers": 1, "batch_size": 3, "part_rows": 1, "commit_interval_s": 1e-3, "progress": False}
CLI_OPTIONS = ["--workers", "1", "--batch-size", "3", "--part-rows", "1", "--commit-interval-s", "0.001",
               "--no-progress"]


@contextlib.contextmanager
def batch_shapes():
    """Record the rows of the batch every clip ran in: yields {(video_id, clip_index): rows} (later runs win)."""
    shapes: dict = {}
    real = runner_module.ModelRunner.submit

    def submit(self, entries):
        rows = runner_module.batch_rows(len(entries), self.batch_size)
        shapes.update({(video_id, clip.clip_index): rows for video_id, _, clip in entries})
        return real(self, entries)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner_module.ModelRunner, "submit", submit)
        yield shapes


def assert_same_rows(got: list[dict], ref: Reference, shapes: dict) -> dict:
    """got equals the reference row for row: every column bit-identical where the clip's batch had the same shape
    (rows) in both runs, embeddings and logits within ATOL otherwise. shapes: batch rows of the runs that made got;
    a clip missing there ran in a killed subprocess, whose batches (one worker: same order) were the reference's.
    Returns how many rows fell in each case."""
    assert [(r["video_id"], r["clip_index"]) for r in got] == [(r["video_id"], r["clip_index"]) for r in ref.rows]
    counts = {"same shape": 0, "other shape": 0}
    for row, expected in zip(got, ref.rows, strict=True):
        key = (row["video_id"], row["clip_index"])
        if shapes.get(key, ref.shapes[key]) == ref.shapes[key]:
            assert row == expected, key  # every column, embeddings bitwise
            counts["same shape"] += 1
            continue
        counts["other shape"] += 1
        numeric = ("embedding", "logits")
        assert {k: v for k, v in row.items() if k not in numeric} == \
            {k: v for k, v in expected.items() if k not in numeric}, key
        for column in numeric:
            np.testing.assert_allclose(row[column], expected[column], atol=ATOL, rtol=0, err_msg=str(key))
    return counts


class Reference(NamedTuple):
    out: Path
    rows: list[dict]
    shapes: dict  # (video_id, clip_index) -> rows of the batch it ran in


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_videos, ckpt) -> Reference:
    """An uninterrupted run over small_videos (what every resumed or sharded run must equal)."""
    out = tmp_path_factory.mktemp("ref") / "out"
    with batch_shapes() as shapes:
        summary = extract([small_videos], out, model=ckpt, **RUN_OPTIONS)
    assert summary["videos_ok"] == 8 and summary["videos_failed"] == 0
    return Reference(out, sorted_rows(out), shapes)


# --- the folder a new user points at ---------------------------------------------------------------------------------
def test_mixed_folder_good_rows_one_error_per_bad_file(tmp_path, model, capsys):
    root = tmp_path / "videos"
    zoo = make_video_zoo(root)
    bad = make_bad_files(root / "bad")
    # decoder crash on the first attempt after one clip was sent: the retry's rows replace the lost attempt's
    shutil.copy(zoo["h264_bframes"][0], root / "retry_vmae-test-segfault-once.mp4")
    shutil.copy(zoo["short"][0], root / "crash_vmae-test-abort.mp4")  # crashes on every attempt: one error row
    summary = extract([root], tmp_path / "out", model=model, workers=2, batch_size=4, progress=False,
                      decode_options={"decode": decode_with_faults})
    print(format_summary(summary))
    out = tmp_path / "out"
    clips = store.read_clips(out)
    errors = store.read_errors(out)
    by_video: dict[str, list[dict]] = {}
    for row in clips.to_pylist():
        by_video.setdefault(row["video_id"], []).append(row)
    error_ids = errors.column("video_id").to_pylist()
    print(f"mixed folder: {len(by_video)} videos with rows ({clips.num_rows} clips), {len(error_ids)} error rows: "
          + ", ".join(f"{r['video_id']} [{r['stage']}]" for r in errors.to_pylist()))

    # every input ends in exactly one place
    assert len(error_ids) == len(set(error_ids)) and not set(error_ids) & set(by_video)
    total = len(zoo) + len(bad) + 3  # + the two hook copies + the damaged files' source under bad/_source/
    assert summary["videos"] == total == len(by_video) + len(error_ids)
    assert summary["videos_ok"] == len(by_video) and summary["videos_failed"] == len(error_ids)
    assert summary["clips"] == clips.num_rows

    # bad files: one error row each (garbage in the middle may be concealed by the decoder, then it has rows)
    for name, path in bad.items():
        video_id = path.relative_to(root).as_posix()
        if name == "garbage_mid":
            assert (video_id in by_video) != (video_id in error_ids)
        else:
            assert video_id in error_ids, name
    crash = errors.filter(pa.compute.equal(errors.column("video_id"), "crash_vmae-test-abort.mp4")).to_pylist()
    assert crash and crash[0]["attempts"] == 2 and crash[0]["stage"] in ("open", "decode")

    # good videos: rows 0..n-1 with the sampling plan's frames and times
    sampling = Sampling(num_frames=model.config.num_frames)
    for name, (path, expected) in zoo.items():
        rows = by_video[path.relative_to(root).as_posix()]
        plans = plan_clips(np.array(expected.timestamps), sampling)
        assert [r["clip_index"] for r in rows] == list(range(len(plans))), name
        for row, plan in zip(rows, plans, strict=True):
            assert (row["start_frame"], row["end_frame"], row["padded_frames"]) == \
                (plan.start_frame, plan.end_frame, plan.padded_frames), name
            # containers store times in ticks (1 ms in mkv/webm): allow 2 ms; a file's last frame duration comes
            # from the container, not from our generator's nominal rate
            assert row["start_s"] == pytest.approx(plan.start_s, abs=2e-3), name
            tail = plan.end_frame == expected.num_frames
            assert row["end_s"] == pytest.approx(plan.end_s, abs=0.1 if tail else 2e-3), name
            assert row["num_tokens"] == model.config.num_tokens
    assert by_video["short.mp4"][0]["padded_frames"] > 0  # 10 frames < one clip's span

    # the retried video has exactly the rows of its original, once
    retried = by_video["retry_vmae-test-segfault-once.mp4"]
    original = by_video["h264_bframes.mp4"]
    assert [(r["clip_index"], r["start_s"], r["end_s"]) for r in retried] == \
        [(r["clip_index"], r["start_s"], r["end_s"]) for r in original]

    # every row's embedding and logits are its own clip's, although batches mixed clips of many videos
    for name in ("h264_bframes", "vfr", "short", "portrait", "non_ascii"):
        path = zoo[name][0]
        rows = by_video[path.relative_to(root).as_posix()]
        frames = torch.from_numpy(np.stack([c.frames for c in decode_clips(VideoTask(path), sampling, 32)]))
        with torch.inference_mode():
            expected_out = model(frames)
        np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), expected_out.embeddings.numpy(),
                                   atol=ATOL, rtol=0, err_msg=name)
        np.testing.assert_allclose(np.array([r["logits"] for r in rows]), expected_out.logits.numpy(),
                                   atol=ATOL, rtol=0, err_msg=name)

    # a second run finds everything committed
    again = extract([root], out, model=model, workers=1, progress=False, decode_options={"decode": decode_with_faults})
    assert again["videos_skipped"] == total and again["clips"] == 0
    assert store.read_clips(out).num_rows == clips.num_rows and store.read_errors(out).num_rows == len(error_ids)


# --- batching ---------------------------------------------------------------------------------------------------------
def test_a_short_batch_costs_about_its_own_size(tmp_path, small_videos, ckpt, reference):
    rows = runner_module.batch_rows
    assert [rows(n, 32) for n in (1, 2, 3, 5, 8, 9, 17, 31, 32, 40)] == [1, 2, 4, 8, 8, 16, 24, 32, 32, 32]
    assert [rows(n, 3) for n in (1, 2, 3)] == [1, 2, 3] and rows(7, 6) == 6
    with batch_shapes() as shapes:
        summary = extract([small_videos], tmp_path / "out", model=ckpt, **{**RUN_OPTIONS, "batch_size": 32})
    # the 21 clips run as one batch of 24 rows (it was 32: padding to --batch-size)
    assert (summary["clips"], summary["batches"], summary["padded_rows"]) == (21, 1, 3)
    assert set(shapes.values()) == {24} and set(reference.shapes.values()) == {3}
    assert assert_same_rows(sorted_rows(tmp_path / "out"), reference, shapes) == {"same shape": 0,
                                                                                  "other shape": 21}


def test_cpu_plan_gives_the_model_every_core_and_adds_decoders_while_it_waits(tmp_path, small_videos, ckpt,
                                                                            reference):
    plan = core_module.CorePlan("cpu", 4, None, None)
    assert (plan.workers, plan.max_workers, plan.batch_size, plan.model_threads) == (1, 4, 8, 4)
    assert plan.pool_options == {"threads": 1, "nice": 10}
    gpu = core_module.CorePlan("cuda", 8, None, None)
    assert (gpu.workers, gpu.batch_size, gpu.model_threads, gpu.pool_options, gpu.grow) == (7, 32, None, {}, False)
    assert not core_module.CorePlan("cpu", 4, 2, 16).grow  # an explicit --workers is kept

    pool = type("Pool", (), {"workers": 1})()
    plan.update(pool, 1, wait_s=5.0, compute_s=1.0)  # the first batch waited for the pipeline to fill: not counted
    plan.update(pool, 2, wait_s=5.1, compute_s=2.0)  # half a window
    plan.update(pool, 3, wait_s=5.2, compute_s=3.0)  # 0.2 s waiting in 2.2 s: model-bound, keep one worker
    assert pool.workers == 1
    plan.update(pool, 5, wait_s=6.2, compute_s=4.0)  # 1 s waiting in 2 s: decode-bound, add one
    plan.update(pool, 7, wait_s=7.2, compute_s=5.0)
    plan.update(pool, 9, wait_s=8.2, compute_s=6.0)
    plan.update(pool, 11, wait_s=9.2, compute_s=7.0)
    assert pool.workers == 4 and plan.added == [5, 7, 9]  # never beyond the cores

    with batch_shapes() as shapes:
        summary = extract([small_videos], tmp_path / "out", model=ckpt, **{**RUN_OPTIONS, "workers": None})
    assert summary["model_threads"] == os.cpu_count() and 1 <= summary["workers"] <= os.cpu_count()
    assert_same_rows(sorted_rows(tmp_path / "out"), reference, shapes)


# --- crash safety ---------------------------------------------------------------------------------------------------
def test_resume_after_sigkill_of_the_process_group_equals_an_uninterrupted_run(tmp_path, small_videos, ckpt,
                                                                                reference):
    rng = random.Random(1234)
    # the CLI's model gets the threads an in-process run gives it (every core): bits depend on the thread count too
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    trials = []
    for trial in range(3):
        out = tmp_path / f"out{trial}"
        # kill once this many videos are committed (a part each), plus a random fraction of the ~10 ms one takes
        target_parts = rng.randint(1, 6)
        extra_s = rng.uniform(0.0, 0.01)
        cmd = [sys.executable, "-m", "vmae_fast.cli", "extract", str(small_videos), "-o", str(out), "--model",
               str(ckpt), *CLI_OPTIONS]
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if len(store.list_parts(out / "clips")) >= target_parts and (out / "_run.json").exists():
                break
            time.sleep(0.003)
        time.sleep(extra_s)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its decoding workers, mid-whatever
        except ProcessLookupError:
            pass
        proc.wait()
        assert [n for n in os.listdir("/dev/shm") if "vmae" in n] == []  # the clip ring has no name to leak
        committed = len(store.committed_video_ids(out)) if (out / "_run.json").exists() else 0
        with batch_shapes() as shapes:
            summary = extract([small_videos], out, model=ckpt, **RUN_OPTIONS)
        assert summary["videos_skipped"] == committed
        assert summary["videos_skipped"] + summary["videos_ok"] == 8
        assert no_temp_files(out) == []
        counts = assert_same_rows(sorted_rows(out), reference, shapes)
        trials.append((target_parts, round(extra_s, 2), committed, summary["videos_skipped"], summary["videos_ok"],
                       counts))
    print("resume trials (target parts, extra s, committed at kill, skipped on rerun, redone, rows):", trials)
    assert any(0 < t[2] < 8 for t in trials)  # at least one kill landed mid-run


def test_crash_while_writing_a_part_leaves_a_temp_file_that_the_rerun_removes(tmp_path, small_videos, ckpt,
                                                                               reference, monkeypatch):
    real_replace = os.replace
    calls = {"n": 0}

    def crash_from_third_clips_rename(src, dst):
        calls["n"] += Path(dst).parent.name == "clips"
        if calls["n"] >= 3:  # clips parts 0 and 1, then the crash: clips part 2 stays under its temp name (its
            raise OSError("simulated power loss")  # videos part, renamed just before, is an orphan the rerun removes)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_from_third_clips_rename)
    with batch_shapes() as shapes:
        with pytest.raises(OSError, match="simulated"):
            extract([small_videos], tmp_path / "out", model=ckpt, **RUN_OPTIONS)
        monkeypatch.setattr(os, "replace", real_replace)
        temps = no_temp_files(tmp_path / "out")  # + the videos temp of extract's last-chance flush, also failed
        assert str(tmp_path / "out" / "clips" / ".part-00000-000002.parquet.tmp") in temps, temps
        assert len(store.list_parts(tmp_path / "out" / "videos")) == 3  # parts 0, 1 and the orphan 2
        summary = extract([small_videos], tmp_path / "out", model=ckpt, **RUN_OPTIONS)
    assert summary["videos_skipped"] == 2
    assert no_temp_files(tmp_path / "out") == []
    assert store.list_parts(tmp_path / "out" / "videos") == store.list_parts(tmp_path / "out" / "clips")
    assert_same_rows(sorted_rows(tmp_path / "out"), reference, shapes)


# --- scale-out --------------------------------------------------------------------------------------------------------
def test_two_shards_equal_one_unsharded_run(tmp_path, small_videos, model, ckpt, reference, monkeypatch):
    out = tmp_path / "out"
    with batch_shapes() as shapes:
        first = extract([small_videos], out, model=ckpt, shard="0/2", **RUN_OPTIONS)
        monkeypatch.setenv("RANK", "1")  # the second shard as torchrun would start it
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_RANK", "1")
        second = extract([small_videos], out, model=ckpt, **RUN_OPTIONS)
    assert (first["shard"], second["shard"]) == ("0/2", "1/2")
    assert second["shard_source"] == "torchrun RANK/WORLD_SIZE"
    assert first["videos_ok"] + second["videos_ok"] == 8 and first["videos_ok"] > 0 and second["videos_ok"] > 0
    assert first["videos_other_shards"] == second["videos_ok"]
    assert {p[1] for p in store.list_parts(out / "clips")} == {0, 1}
    assert_same_rows(sorted_rows(out), reference, shapes)


def test_slurm_variables_pick_the_shard(monkeypatch):
    from vmae_fast.extraction import resolve_shard

    assert resolve_shard(None, {"SLURM_PROCID": "3", "SLURM_NTASKS": "8"})[:2] == (3, 8)
    assert resolve_shard(None, {"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "3", "SLURM_NTASKS": "8"})[:2] == (1, 2)
    assert resolve_shard("2/5", {"RANK": "1", "WORLD_SIZE": "2"})[:2] == (2, 5)
    assert resolve_shard(None, {})[:2] == (0, 1)
    with pytest.raises(ValueError, match="shard index must be in"):
        resolve_shard("4/4")


# --- configuration changes ------------------------------------------------------------------------------------------
def snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_changed_configuration_is_refused_and_overwrite_replaces(tmp_path, small_videos, ckpt, reference, capsys):
    ref_out, expected = reference.out, reference.rows
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    before = snapshot(out)
    for change in (["--frame-step", "2"], ["--embedding-dtype", "float16"], ["--keep", "tube:0.5"],
                   ["--model", "random:small"]):
        code = cli.main(["extract", str(small_videos), "-o", str(out), "--model", str(ckpt), *CLI_OPTIONS, *change])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, change
        assert len(err) == 1 and ("different configuration" in err[0]), (change, err)
        assert snapshot(out) == before, change

    code = cli.main(["extract", str(small_videos), "-o", str(out), "--model", str(ckpt), *CLI_OPTIONS,
                     "--frame-step", "2", "--overwrite"])
    assert code == 0
    assert "8 ok" in capsys.readouterr().out
    rows = sorted_rows(out)
    assert store.load_run(out)["config"]["sampling"]["frame_step"] == 2
    # frame step 2 spans 7 frames per 4-frame clip instead of 13: more clips than before, none of the old rows
    assert len(rows) > len(expected)
    assert all(r["end_frame"] - r["start_frame"] <= 7 for r in rows)


# --- list files ---------------------------------------------------------------------------------------------------
def test_list_files_txt_csv_parquet_with_time_ranges(tmp_path, small_videos, model, capsys):
    lists = tmp_path / "lists"
    lists.mkdir()
    rel = os.path.relpath(small_videos, lists)
    (lists / "videos.txt").write_text(f"# two videos\n{rel}/clip1.mp4\n\n{small_videos}/clip2.mp4\n")
    (lists / "segments.csv").write_text(
        "path,video_id,start_s,end_s,label\n"
        f"{rel}/clip7.mp4,seg-a,0.0,1.0,x\n"
        f"{rel}/clip7.mp4,seg-b,1.0,,y\n"
        f"{rel}/missing.mp4,,,,z\n")
    pq.write_table(pa.table({"path": [str(small_videos / "clip4.mp4")], "video_id": ["from-parquet"],
                             "start_s": [0.5], "end_s": [None]}, schema=pa.schema(
        [("path", pa.string()), ("video_id", pa.string()), ("start_s", pa.float64()), ("end_s", pa.float64())])),
        lists / "more.parquet")
    out = tmp_path / "out"
    summary = extract([lists / "videos.txt", lists / "segments.csv", lists / "more.parquet"], out, model=model,
                      workers=1, progress=True)
    assert "extract" in capsys.readouterr().err  # the tqdm bar went to stderr
    assert (summary["videos_ok"], summary["videos_failed"]) == (5, 1)
    rows = store.read_clips(out).to_pylist()
    ids = {r["video_id"] for r in rows}
    assert ids == {f"{rel}/clip1.mp4", str(small_videos / "clip2.mp4"), "seg-a", "seg-b", "from-parquet"}
    assert store.read_errors(out).column("video_id").to_pylist() == [f"{rel}/missing.mp4"]
    frame_s = 1 / 30
    for r in rows:
        if r["video_id"] == "seg-a":
            assert r["start_s"] >= 0 and r["end_s"] <= 1.0 + frame_s + 1e-6
        if r["video_id"] == "seg-b":
            assert r["start_s"] >= 1.0 - 1e-6
        if r["video_id"] == "from-parquet":
            assert r["start_s"] >= 0.5 - 1e-6
    assert min(r["start_s"] for r in rows if r["video_id"] == "seg-b") == pytest.approx(1.0, abs=2e-3)


def test_input_errors_are_fatal_one_liners(tmp_path, small_videos, ckpt, capsys):
    dup = tmp_path / "dup.csv"
    dup.write_text(f"path,video_id\n{small_videos}/clip1.mp4,same\n{small_videos}/clip2.mp4,same\n")
    bad_time = tmp_path / "bad_time.csv"
    bad_time.write_text(f"path,start_s,end_s\n{small_videos}/clip1.mp4,2,1\n")
    no_path = tmp_path / "no_path.csv"
    no_path.write_text("file\nx.mp4\n")
    cases = [
        ([str(tmp_path / "nope")], "does not exist"),
        ([str(dup)], "video_id 'same' appears twice"),
        ([str(small_videos), str(small_videos / "clip1.mp4")], "appears twice"),
        ([str(bad_time)], "end_s must be greater than start_s"),
        ([str(no_path)], "needs a 'path' column"),
        ([str(small_videos), "--batch-size", "0"], "--batch-size must be a positive integer"),
        ([str(small_videos), "--shard", "2/2"], "shard index must be in [0, 2)"),
        ([str(small_videos), "--shard", "x"], "--shard must look like i/n"),
        ([str(small_videos), "--keep", "bogus"], "keep"),
        ([str(small_videos), "--model", str(tmp_path / "no_model")], "cannot load model"),
        ([str(small_videos), "--clip-frames", "8"], "--clip-frames 8 does not match"),
        ([str(small_videos), "--device", "cuda:0"] if not torch.cuda.is_available() else
         [str(small_videos), "--device", "tpu"], "--device"),
    ]
    for args, message in cases:
        out = tmp_path / "out"
        code = cli.main(["extract", "--model", str(ckpt), *args, "-o", str(out), "--no-progress", "--workers", "0"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, args
        assert len(err) == 1 and message in err[0], (args, err)
        assert not (out / "clips").exists(), args  # nothing written before the arguments were all checked
    with pytest.raises(SystemExit) as exc:  # argparse's own checks: usage + one error line, exit 2
        cli.main(["extract", str(small_videos), "-o", str(tmp_path / "o"), "--frame-step", "2", "--fps", "5"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# --- schema, metadata, API ----------------------------------------------------------------------------------------
def test_schema_metadata_and_read_embeddings_order(tmp_path, small_videos, ckpt, reference):
    ref_out = reference.out
    table = store.read_clips(ref_out)
    assert [(f.name, str(f.type)) for f in table.schema] == [
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
        ("embedding", "fixed_size_list<element: float not null>[64]"),
        ("logits", "fixed_size_list<element: float not null>[5]"),
    ]
    kv = {
        k.decode(): json.loads(v)
        for k, v in pq.read_schema(next((ref_out / "clips").glob("*.parquet"))).metadata.items()
        if not k.startswith(b"ARROW")
    }
    run = store.load_run(ref_out)
    assert kv["model_source"] == str(ckpt.resolve())
    assert kv["architecture"] == "videomae" and kv["embedding"] == "fc_norm(mean of the last block's tokens)"
    assert kv["weights_sha256"] == run["config"]["model"]["weights_sha256"] and len(kv["weights_sha256"]) == 64
    assert kv["model_config"]["hidden_size"] == 64 and kv["preprocessing"]["image_size"] == 32
    assert kv["sampling"] == {
        "num_frames": 4,
        "frame_step": None,
        "fps": None,
        "clip_stride_s": None,
        "clips_per_video": None,
        "crops": 1,
    }
    assert (kv["keep"], kv["dtype"], kv["device"]) == ("all", "fp32", "cpu")
    assert kv["id2label"] == {str(i): f"class_{i}" for i in range(5)}
    assert kv["library_version"] == run["library_version"]
    assert run["config_hash"] == store.config_hash(run["config"])

    meta, emb = store.read_embeddings(ref_out)
    assert meta.column_names == [n for n in table.column_names if n != "embedding"]
    assert meta.column("video_id").to_pylist() == table.column("video_id").to_pylist()
    np.testing.assert_array_equal(emb, np.array(table.column("embedding").to_pylist(), dtype=np.float32))

    # a base model (no head) with float16 storage: no logits column, halffloat embeddings
    base = make_checkpoint(tmp_path / "base", kind="base", seed=4)
    out = tmp_path / "out16"
    extract(
        [small_videos / "clip1.mp4", small_videos / "clip5.mp4"],
        out,
        model=base,
        embedding_dtype="float16",
        workers=0,
        progress=False,
    )
    table16 = store.read_clips(out)
    assert "logits" not in table16.column_names
    assert str(table16.schema.field("embedding").type) == "fixed_size_list<element: halffloat not null>[64]"
    assert table16.column("video_id").to_pylist()[0] == "clip1.mp4"  # a file INPUT's id is its name
    _, emb16 = store.read_embeddings(out)
    assert emb16.dtype == np.float32 and np.isfinite(emb16).all()


def test_embed_video_at_matches_the_stored_row(reference, small_videos):
    ref_out, expected = reference.out, reference.rows
    rows = [r for r in expected if r["video_id"] == "clip7.mp4"]
    target = rows[2]
    at_s = (target["start_s"] + target["end_s"]) / 2
    embedding, clip = embed_video_at(ref_out, small_videos / "clip7.mp4", at_s)
    assert clip.clip_index == 2 and clip.start_s == pytest.approx(target["start_s"])
    assert embedding.dtype == np.float32 and embedding.shape == (64,)
    np.testing.assert_allclose(embedding, np.array(target["embedding"]), atol=ATOL, rtol=0)


def test_package_level_extract_is_the_function_after_importing_every_module():
    import vmae_fast
    import vmae_fast.extraction.inputs
    import vmae_fast.extraction.local_engine
    import vmae_fast.extraction.runner
    import vmae_fast.retrieval.search  # no submodule is named extract: nothing rebinds vmae_fast.extract to a module

    assert vmae_fast.extract is vmae_fast.extraction.extract
    with pytest.raises(ValueError, match="batch_size= must be a positive integer"):  # named as given in Python
        vmae_fast.extract(["x"], "y", batch_size=0)


def test_interrupt_keeps_finished_videos_and_stops_the_decoder_thread(
    tmp_path, small_videos, ckpt, reference, monkeypatch
):
    import threading

    real_submit = runner_module.ModelRunner.submit
    calls = {"n": 0}

    def submit_then_interrupt(self, entries):
        calls["n"] += 1
        if calls["n"] == 4:  # Ctrl-C while the model runs the fourth batch
            raise KeyboardInterrupt
        return real_submit(self, entries)

    monkeypatch.setattr(runner_module.ModelRunner, "submit", submit_then_interrupt)
    with batch_shapes() as shapes:
        with pytest.raises(KeyboardInterrupt):
            extract([small_videos], tmp_path / "out", model=ckpt, **{**RUN_OPTIONS, "commit_interval_s": 1e9})
        assert not [t for t in threading.enumerate() if t.name == "vmae-fast-decode"]
        committed = store.committed_video_ids(tmp_path / "out")
        assert 0 < len(committed) < 8  # finished videos were written on the way out, the rest was not
        monkeypatch.setattr(runner_module.ModelRunner, "submit", real_submit)
        summary = extract([small_videos], tmp_path / "out", model=ckpt, **RUN_OPTIONS)
    assert summary["videos_skipped"] == len(committed)
    assert_same_rows(sorted_rows(tmp_path / "out"), reference, shapes)
