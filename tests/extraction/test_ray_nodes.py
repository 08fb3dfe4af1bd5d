"""`extract --engine ray` on a multi-node cluster simulated on this machine (ray.cluster_utils.Cluster: a head and
worker nodes, each its own raylet and object store, every one on 127.0.0.1: tests/conftest.py): a worker node lost
mid-run (its raylet killed), the same while its actor uploads a part to a bucket (OUT on the session's SeaweedFS
S3 server, tests/helpers/object_store.py), nodes added mid-run, the driver killed mid-run. The local engine's run is
the reference (rows within ATOL, as in test_ray_engine.py).

The head node has no CPU (the coordinator, the readers and the admission ask for none) and each worker node one:
one actor of one CPU a worker node, so an actor never runs on the head. Every test is bounded: a hold or a kill
waits at most two minutes, and the cluster is shut down after the module.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.extraction import test_ray_engine as engine_tests
from tests.extraction.test_ray_engine import ATOL, KEY, LOCAL, REPO, assert_same_rows, no_temp_files, rows_of
from tests.helpers import object_store
from tests.helpers.ray_faults import _ancestors, decode_gated, decode_hold_for_node_loss
from vmae_fast import cli, store
from vmae_fast.extraction import extract, ray_engine
from vmae_fast.store.storage import read_table

ray = pytest.importorskip("ray", reason="the Ray engine's tests need ray[data] (the test extra installs it)")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")
NODE = {"num_cpus": 1, "object_store_memory": 96 << 20, "include_dashboard": False}


@pytest.fixture(scope="module")
def nodes():
    """A head (1 CPU) and two worker nodes (1 CPU each), connected; yields the Cluster."""
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0"  # tests/conftest.py: loopback only
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "num_cpus": 0, "node_ip_address": "127.0.0.1"})
    for _ in range(2):
        cluster.add_node(**NODE, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}}, logging_level="WARNING")
    yield cluster
    ray.shutdown()
    cluster.shutdown()


# test_ray_engine's module fixtures (the tiny checkpoint, the 8 small videos, the local engine's run of them),
# made again for this module's scope
ckpt, small_videos, reference = engine_tests.ckpt, engine_tests.small_videos, engine_tests.reference


def _ray(actors, group_videos: int = 2) -> dict:
    return {**LOCAL, "engine": "ray", "ray_options": {"actors": actors, "cpus_per_actor": 1,
                                                       "group_videos": group_videos}}


def _raylet_pid(node) -> int:
    return node.all_processes["raylet"][0].process.pid


def _exactly_once(out) -> None:
    """No row twice, no video in two clips parts (OUT: a folder or an s3:// URL)."""
    rows = rows_of(out)
    assert len({tuple(r[k] for k in KEY) for r in rows}) == len(rows)  # no row twice
    seen = []
    clips = store.out_path(out) / "clips"
    for part in store.list_parts(clips):
        seen += read_table(clips / part.name, columns=["video_id"]).column("video_id").unique().to_pylist()
    assert len(seen) == len(set(seen))  # no video in two parts


@contextlib.contextmanager
def _job_env(env: dict[str, str]):
    """This driver connected again to the same cluster with `env` in its job's runtime_env (the actors' and the
    coordinator's environment: how a bucket's endpoint and credentials reach them), then back to the plain one."""
    address = ray.get_runtime_context().gcs_address
    ray.shutdown()
    ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": str(REPO), **env}}, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()
        ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}}, logging_level="WARNING")


def test_a_worker_node_lost_mid_run_loses_nothing_and_doubles_nothing(tmp_path, nodes, ckpt, small_videos):
    """A video of the first groups holds its actor until the test removes that actor's node (raylet killed, with
    the actor, its decoders and the objects it held): Ray Data restarts the actor elsewhere and retries the group,
    whose committed parts are kept; every video ends in exactly one part, the rows equal the local engine's."""
    root = tmp_path / "videos"
    shutil.copytree(small_videos, root)
    holder = root / "clip2_vmae-test-nodeloss.mp4"  # sorts among the first videos
    shutil.copy(small_videos / "clip1.mp4", holder)
    expected = extract([root], tmp_path / "local", model=ckpt, **LOCAL)
    removed: dict = {}
    result: dict = {}

    def driver():
        try:
            result["summary"] = extract([root], tmp_path / "out", model=ckpt, **_ray(2),
                                        decode_options={"decode": decode_hold_for_node_loss})
        except BaseException as e:  # noqa: BLE001 - raised below
            result["error"] = e

    # the driver in a thread, the cluster changed from this one (Ray's Node sets a SIGTERM handler: main thread only)
    runner = threading.Thread(target=driver, daemon=True)
    runner.start()
    deadline = time.monotonic() + 120
    marker = Path(str(holder) + ".holding")
    while runner.is_alive() and not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if marker.exists():
        ancestors = json.loads(marker.read_text())["ancestors"]
        removed["not_found"] = ancestors
        for node in list(nodes.worker_nodes):
            if _raylet_pid(node) in ancestors:
                removed = {"node_id": node.node_id}
                nodes.remove_node(node, allow_graceful=False)  # SIGKILL: the raylet and its workers
                nodes.add_node(**NODE, node_ip_address="127.0.0.1")  # its replacement (as an autoscaler would)
                break
    runner.join(300)
    assert not runner.is_alive() and "error" not in result, result
    summary = result["summary"]
    print(cli.format_actors(summary))
    assert "node_id" in removed, removed  # the holding video's actor ran on a worker node, which was removed
    assert expected["videos_ok"] == 9
    assert (summary["videos_ok"], summary["clips"]) == (expected["videos_ok"], expected["clips"])
    _exactly_once(tmp_path / "out")
    assert_same_rows(rows_of(tmp_path / "out"), rows_of(tmp_path / "local"))
    assert no_temp_files(tmp_path / "out") == []


def test_a_worker_node_lost_while_its_actor_uploads_to_a_bucket(tmp_path, nodes, ckpt, small_videos, reference, s3):
    """OUT on S3 (SeaweedFS on loopback, the actors reaching it through a proxy): the proxy holds the upload of
    group 0's second clips part half-sent (its videos part is already there, its first part committed); the test
    finds the uploading process and removes its node (raylet SIGKILLed, the actor with it), then lets the upload
    break. Ray restarts the actor and retries the group: the retry keeps part 0, replaces the orphan videos part 1
    and commits the rest; every video ends in exactly one part, the rows and the video table equal the local
    engine's."""
    out = f"s3://{s3.bucket()}/nodeloss"
    proxy = object_store.S3Proxy(s3.port)
    proxy.stall("/clips/part-g000000-000001.parquet", after_bytes=512)
    found: dict = {}
    result: dict = {}

    def driver():
        try:
            result["summary"] = extract([small_videos], out, model=ckpt, **_ray(2))
        except BaseException as e:  # noqa: BLE001 - raised below
            result["error"] = e

    try:
        with _job_env(object_store.env(proxy.endpoint)):
            runner = threading.Thread(target=driver, daemon=True)
            runner.start()
            deadline = time.monotonic() + 120
            while runner.is_alive() and not proxy.stalled.is_set() and time.monotonic() < deadline:
                time.sleep(0.05)
            if proxy.stalled.is_set():
                pid = found["uploader"] = object_store.client_pid(proxy.stalled_from[1])
                ancestors = _ancestors(pid) if pid else []
                found["parts_then"] = [p.name for p in store.list_parts(store.out_path(out) / "videos")]
                for node in list(nodes.worker_nodes):
                    if _raylet_pid(node) in ancestors:
                        found["node_id"] = node.node_id
                        nodes.remove_node(node, allow_graceful=False)  # SIGKILL: the raylet and its workers
                        nodes.add_node(**NODE, node_ip_address="127.0.0.1")  # its replacement
                        break
                deadline = time.monotonic() + 30
                while pid and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
                found["uploader_gone"] = not (pid and Path(f"/proc/{pid}").exists())
            proxy.release()  # the held upload breaks (the server sees it cut short); later uploads pass
            runner.join(300)
    finally:
        proxy.release()
        proxy.close()
    assert not runner.is_alive() and "error" not in result, (result, found)
    summary = result["summary"]
    print(cli.format_actors(summary), found)
    assert "node_id" in found, found  # the uploading actor ran on a worker node, which was removed
    assert found["uploader_gone"], found  # and died with it
    # when the node went: part 0 of group 0 committed, videos part 1 uploaded, clips part 1 held half-sent
    assert {"part-g000000-000000.parquet", "part-g000000-000001.parquet"} <= set(found["parts_then"]), found
    assert (summary["videos_ok"], summary["clips"]) == (8, len(rows_of(reference)))
    _exactly_once(out)
    assert_same_rows(rows_of(out), rows_of(reference))
    videos = [p.name for p in store.list_parts(store.out_path(out) / "videos")]
    assert videos == [p.name for p in store.list_parts(store.out_path(out) / "clips")]  # no orphan left
    assert sorted(store.read_videos(out).column("video_id").to_pylist()) == \
        sorted(store.read_videos(reference).column("video_id").to_pylist())


def test_nodes_added_mid_run_get_actors_when_the_pool_may_grow(tmp_path, nodes, ckpt, small_videos, reference):
    """--ray-actors 1-3 on a cluster where one worker node is busy with something else at the start (a CPU-taking
    placeholder): one actor starts on the other; two nodes added (from this thread, the driver running in another)
    once the first part is committed get actors of their own while groups wait (24 videos, one a group). The last
    8 videos wait at a gate that this thread opens once an actor on an added node has started a group, so the run
    cannot end before the pool has grown, however slowly the added nodes start on a loaded machine; the rows are
    the same: three copies of the reference's."""
    root = tmp_path / "videos"
    for copy in ("a", "b", "gated/c"):
        shutil.copytree(small_videos, root / copy)
    before = {n["NodeID"][:8] for n in ray.nodes() if n["Alive"]}
    blocker = ray.remote(num_cpus=1)(lambda: time.sleep(600))
    hold = blocker.options(scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
        list(nodes.worker_nodes)[0].node_id, soft=False)).remote()
    result: dict = {}

    def driver():
        try:
            result["summary"] = extract([root], tmp_path / "out", model=ckpt, **_ray("1-3", group_videos=1),
                                        decode_options={"decode": decode_gated})
        except BaseException as e:  # noqa: BLE001 - raised below
            result["error"] = e

    def added_node_started_a_group() -> bool:
        raylets = {_raylet_pid(node) for node in added}
        for chain in root.rglob("*.chain"):
            try:
                if raylets & set(json.loads(chain.read_text())):
                    return True
            except ValueError:  # being written
                continue
        return False

    runner = threading.Thread(target=driver, daemon=True)
    runner.start()
    added = []
    try:
        deadline = time.monotonic() + 180
        while runner.is_alive() and not store.list_parts(tmp_path / "out" / "clips") and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(2):
            added.append(nodes.add_node(**NODE, node_ip_address="127.0.0.1"))
        deadline = time.monotonic() + 150
        while runner.is_alive() and not added_node_started_a_group() and time.monotonic() < deadline:
            time.sleep(0.1)
        opened_after_s = 150 - (deadline - time.monotonic())
        (root / "gate").touch()
        runner.join(300)
    finally:
        (root / "gate").touch()
        ray.cancel(hold, force=True)
    assert not runner.is_alive() and "error" not in result, result
    summary = result["summary"]
    print(cli.format_actors(summary), f"\ngate opened {opened_after_s:.1f} s after the nodes were added")
    for node in added:
        nodes.remove_node(node)
    new_nodes = {node.node_id[:8] for node in added}
    actor_nodes = {a["actor"].split("/")[0] for a in summary["actors"]}
    assert before & actor_nodes  # the first actor: on a node there at the start
    assert actor_nodes & new_nodes, (actor_nodes, new_nodes)  # and at least one on a node added mid-run
    assert summary["videos_ok"] == 24
    _exactly_once(tmp_path / "out")
    want = rows_of(reference)
    for copy in ("a/", "b/", "gated/c/"):
        got = [{**r, "video_id": r["video_id"][len(copy):], "path": r["path"].replace(f"/videos/{copy}", "/")}
               for r in rows_of(tmp_path / "out") if r["video_id"].startswith(copy)]
        assert [r["video_id"] for r in got] == [r["video_id"] for r in want]
        for row, ref in zip(got, want, strict=True):
            np.testing.assert_allclose(row["embedding"], ref["embedding"], atol=ATOL, rtol=0)


def test_driver_killed_mid_run_on_a_cluster_then_rerun_resumes_exactly(tmp_path, nodes, ckpt, small_videos,
                                                                       reference, monkeypatch):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "vmae_fast.cli", "extract", str(small_videos), "-o", str(out), "--model", str(ckpt),
           "--workers", "1", "--batch-size", "3", "--part-rows", "1", "--commit-interval-s", "0.001",
           "--no-progress", "--engine", "ray", "--ray-address", nodes.address, "--ray-actors", "2",
           "--ray-cpus-per-actor", "1", "--ray-group-videos", "2"]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not store.list_parts(out / "clips"):
        time.sleep(0.003)
    os.kill(proc.pid, signal.SIGKILL)  # the driver alone: the cluster lives on, Ray reaps the job's actors
    proc.wait()
    committed = store.committed_video_ids(out)
    assert 0 < len(committed) < 8, proc.stderr.read().decode()[-2000:]
    monkeypatch.setattr(ray_engine, "ZOMBIE_GRACE_S", 2.0)
    summary = extract([small_videos], out, model=ckpt, **_ray(2))
    assert summary["videos_ok"] + summary["videos_skipped"] == 8 and summary["videos_skipped"] >= len(committed)
    assert store.committed_video_ids(out) == store.committed_video_ids(reference)
    _exactly_once(out)
    assert_same_rows(rows_of(out), rows_of(reference))
    assert no_temp_files(out) == []
