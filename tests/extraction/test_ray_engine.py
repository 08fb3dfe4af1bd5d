"""`extract --engine ray` on a real local Ray cluster (CPU actors), against the local engine.

One module-scoped cluster (`ray.init(num_cpus=2)`): two actors of one CPU each, groups of a few videos, the tiny
random checkpoint of test_extract. The local engine's run is the reference: the same keys and columns, embeddings
and logits within ATOL (the actors run their model on one thread, the local engine on every core, and batches
differ: see test_extract.ATOL), the same error rows, the same _run.json configuration and part schema.
Faults: an actor SIGKILLed mid-group (its group's committed videos are kept, the rest redone, no row twice) and a
driver SIGKILLed mid-run (the rerun completes exactly).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.helpers.hf_checkpoints import make_checkpoint
from tests.helpers.pool_faults import decode_with_faults
from tests.helpers.ray_faults import decode_environment_fault, decode_kill_actor, decode_slow
from tests.helpers.videos import make_bad_files, make_small_videos, make_video_zoo
from vmae_fast import cli, store
from vmae_fast.extraction import extract, ray_engine  # imports ray only when a Ray run starts
from vmae_fast.extraction.spec import RunSpec

ray = pytest.importorskip("ray", reason="the Ray engine's tests need ray[data] (the test extra installs it)")

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")  # Ray Data's own DataContext fields
ATOL = 1e-5  # as tests/extraction/test_extract.py: the same clip in batches of other shapes / thread counts
LOCAL = {"workers": 1, "batch_size": 3, "part_rows": 1, "commit_interval_s": 1e-3, "progress": False}
RAY = {**LOCAL, "engine": "ray", "ray_options": {"actors": 2, "cpus_per_actor": 1, "group_videos": 3}}
KEY = ("video_id", "clip_index", "crop_index")


@pytest.fixture(scope="module")
def cluster():
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0"  # tests/conftest.py: loopback only
    # address="local": a cluster of the tests' own, even where another one runs on the machine (ray.init would join
    # the one started last, and refuse num_cpus)
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
             logging_level="WARNING", _node_ip_address="127.0.0.1")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", kind="classification", seed=3)


@pytest.fixture(scope="module")
def small_videos(tmp_path_factory) -> Path:
    return make_small_videos(tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_videos, ckpt) -> Path:
    out = tmp_path_factory.mktemp("ref") / "out"
    assert extract([small_videos], out, model=ckpt, **LOCAL)["videos_ok"] == 8
    return out


def rows_of(out) -> list[dict]:
    rows = store.read_clips(out).to_pylist()
    return sorted(rows, key=lambda r: tuple(r.get(k, 1) for k in KEY))


def errors_of(out) -> list[dict]:
    return sorted(store.read_errors(out).to_pylist(), key=lambda r: r["video_id"])


def assert_same_rows(got: list[dict], expected: list[dict]) -> None:
    """Same keys in the same order, every column equal, embeddings and logits within ATOL."""
    assert [tuple(r.get(k) for k in KEY) for r in got] == [tuple(r.get(k) for k in KEY) for r in expected]
    numeric = ("embedding", "logits")
    for row, ref in zip(got, expected, strict=True):
        assert {k: v for k, v in row.items() if k not in numeric} == {k: v for k, v in ref.items() if k not in numeric}
        for column in numeric:
            np.testing.assert_allclose(row[column], ref[column], atol=ATOL, rtol=0, err_msg=str(row["video_id"]))


def no_temp_files(out: Path) -> list[str]:
    return [str(p) for p in Path(out).rglob("*") if p.name.endswith(".tmp")]


def group_parts(out: Path) -> dict[int, list[int]]:
    """Clips parts by their number (the group): the seqs of each."""
    parts: dict[int, list[int]] = {}
    for _, shard, seq in store.list_parts(out / "clips"):
        parts.setdefault(shard, []).append(seq)
    return parts


# --- the same output ---------------------------------------------------------------------------------------------
def test_rows_errors_run_file_and_schema_equal_the_local_engine(tmp_path, cluster, ckpt):
    root = tmp_path / "videos"
    zoo = make_video_zoo(root)
    make_bad_files(root / "bad")
    shutil.copy(zoo["h264_bframes"][0], root / "retry_vmae-test-segfault-once.mp4")  # crashes on its first attempt
    shutil.copy(zoo["short"][0], root / "crash_vmae-test-abort.mp4")  # crashes on every attempt: one error row
    faults = {"decode_options": {"decode": decode_with_faults}}
    local = extract([root], tmp_path / "local", model=ckpt, **LOCAL, **faults)
    (root / "retry_vmae-test-segfault-once.mp4.attempted").unlink()  # the Ray run's first attempt crashes too
    summary = extract([root], tmp_path / "ray", model=ckpt, **RAY, **faults)
    print(cli.format_summary(summary))
    print(cli.format_actors(summary))

    for key in ("videos", "videos_ok", "videos_failed", "clips"):
        assert summary[key] == local[key], key
    assert local["videos_failed"] >= 7 and local["videos_ok"] >= 10
    assert_same_rows(rows_of(tmp_path / "ray"), rows_of(tmp_path / "local"))
    assert errors_of(tmp_path / "ray") == errors_of(tmp_path / "local")  # stage, message, attempts, path
    assert not (root / "retry_vmae-test-segfault-once.mp4.attempted").exists() or \
        any(r["video_id"] == "retry_vmae-test-segfault-once.mp4" for r in rows_of(tmp_path / "ray"))

    run_local, run_ray = store.load_run(tmp_path / "local"), store.load_run(tmp_path / "ray")
    assert run_ray["config_hash"] == run_local["config_hash"] and run_ray["config"] == run_local["config"]
    assert {k: v for k, v in run_ray.items() if k != "created_utc"} == \
        {k: v for k, v in run_local.items() if k != "created_utc"}
    for folder in ("clips", "errors"):
        local_part = store.list_parts(tmp_path / "local" / folder)[0][0]
        ray_part = store.list_parts(tmp_path / "ray" / folder)[0][0]
        assert pq.read_schema(tmp_path / "ray" / folder / ray_part) == \
            pq.read_schema(tmp_path / "local" / folder / local_part)  # with the metadata
    if (tmp_path / "local" / "videos").is_dir():  # the video table (issue 12): one row per video, the same
        from vmae_fast.store import read_videos

        def videos(out):
            return sorted(read_videos(out).to_pylist(), key=lambda r: r["video_id"])

        got, want = videos(tmp_path / "ray"), videos(tmp_path / "local")
        assert [r["video_id"] for r in got] == [r["video_id"] for r in want]
        np.testing.assert_allclose([r["embedding"] for r in got], [r["embedding"] for r in want], atol=ATOL, rtol=0)
    # a group's parts are numbered from 0 under the group's number
    assert all(seqs == list(range(len(seqs))) for seqs in group_parts(tmp_path / "ray").values())
    assert all(p.group for d in ("clips", "videos", "errors") for p in store.list_parts(tmp_path / "ray" / d))
    assert no_temp_files(tmp_path / "ray") == []
    assert json.loads((tmp_path / "ray" / ray_engine.RUN_TOKEN).read_text())["finished"] is True

    # rerun: everything is committed, with either engine; a different configuration is refused
    again = extract([root], tmp_path / "ray", model=ckpt, **RAY, **faults)
    assert (again["videos_skipped"], again["clips"], again["groups"]) == (summary["videos"], 0, 0)
    assert extract([root], tmp_path / "ray", model=ckpt, **LOCAL, **faults)["videos_skipped"] == summary["videos"]
    with pytest.raises(ValueError, match="different configuration.*frame_step"):
        extract([root], tmp_path / "ray", model=ckpt, frame_step=1, **RAY)
    assert store.read_clips(tmp_path / "ray").num_rows == local["clips"]

    # --retry-errors: every error row is retired and its video redone (the bad files fail again, the same way)
    retry = extract([root], tmp_path / "ray", model=ckpt, **RAY, **faults, retry_errors=True)
    assert retry["errors_retried"] == local["videos_failed"] == retry["videos_failed"]
    assert retry["videos_skipped"] == local["videos_ok"]
    assert errors_of(tmp_path / "ray") == errors_of(tmp_path / "local")
    assert_same_rows(rows_of(tmp_path / "ray"), rows_of(tmp_path / "local"))


# --- faults -----------------------------------------------------------------------------------------------------------
def test_an_actor_killed_mid_group_loses_nothing_and_duplicates_nothing(tmp_path, cluster, ckpt, small_videos,
                                                                          reference):
    root = tmp_path / "videos"
    shutil.copytree(small_videos, root)
    # the last video of the last group (ids sort: clip1 clip2 clip4 clip5 clip7 sub/clip0 sub/clip3 sub/clip6 zz...):
    # its decoder waits until sub/clip6 (same group) is committed, then SIGKILLs the actor
    killer = root / "zz_vmae-test-killactor.mp4"
    shutil.copy(small_videos / "clip5.mp4", killer)
    out = tmp_path / "out"
    Path(str(killer) + ".after").write_text(json.dumps({"clips_dir": str(out / "clips"), "video_id": "sub/clip6.mp4"}))
    expected = extract([root], tmp_path / "local", model=ckpt, **LOCAL)
    summary = extract([root], out, model=ckpt, **{**RAY, "batch_size": 1},
                      decode_options={"decode": decode_kill_actor})
    print(cli.format_actors(summary))
    killed = json.loads(Path(str(killer) + ".killed").read_text())  # the actor was SIGKILLed mid-group,
    assert killed["after_committed"]  # after its attempt had committed sub/clip6 (so the retry must skip it)
    assert summary["videos_ok"] == expected["videos_ok"] == 9 and summary["clips"] == expected["clips"]
    got = rows_of(out)
    assert len({tuple(r[k] for k in KEY) for r in got}) == len(got)  # no row twice
    assert_same_rows(got, rows_of(tmp_path / "local"))
    # the retry of the killed group kept what the dead attempt committed (sub/clip6 at least: once, above) and
    # wrote on after it. (Its reports may not all reach the driver: Ray drops a retried task's outputs at the
    # indices its dead attempt had already produced; the summary's counts come from the parts.)
    parts = group_parts(out)
    killed_group = {shard for name, shard, _ in store.list_parts(out / "clips")
                    if "zz_vmae-test-killactor.mp4"
                    in pq.read_table(out / "clips" / name).column("video_id").to_pylist()}
    (group,) = killed_group
    assert len(parts[group]) >= 2 and parts[group] == list(range(len(parts[group])))
    assert no_temp_files(out) == []


def test_a_ray_driver_runs_the_whole_job_without_importing_torch(tmp_path, cluster, ckpt, small_videos, reference):
    """The driver checks the options, starts the job, follows it and writes the summary without torch or the model's
    modules (only the actors load the model; importing them cost the driver ~2.9 s of CPU before the job on a
    2-core node: docs/ray.md); its output equals the local engine's. Its stderr is a pipe, as in `ray job logs`:
    the progress comes as plain lines (every 60 s in a run, here at every poll)."""
    out = tmp_path / "out"
    args = ["extract", str(small_videos), "-o", str(out), "--model", str(ckpt), "--workers", "1", "--batch-size", "3",
            "--engine", "ray", "--ray-address", cluster, "--ray-actors", "1", "--ray-cpus-per-actor", "1"]
    code = ("import sys\nfrom vmae_fast.extraction import progress\nprogress.LOG_EVERY_S = 0.0\n"
            f"from vmae_fast import cli\nstatus = cli.main({args!r})\n"
            "heavy = ('torch', 'vmae_fast.model', 'vmae_fast.kernels')\n"
            "print('loaded:', sorted(m for m in heavy if m in sys.modules))\n"
            "sys.exit(status)")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "8 videos in shard ray: 8 ok" in done.stdout, done.stdout
    assert done.stdout.strip().splitlines()[-1] == "loaded: []", done.stdout
    # the options the engine gives Ray Data are current ones: no "``concurrency`` is deprecated" on every job
    assert "is deprecated" not in done.stderr, done.stderr[-3000:]
    # nor Ray Data's advice to turn its progress bars on (the driver has its own)
    assert "Progress bars disabled" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("extract (ray): ")]
    assert lines and lines[-1].startswith("extract (ray): 8/8 videos (100%)") and "\r" not in done.stderr, lines[-3:]
    assert_same_rows(rows_of(out), rows_of(reference))


def test_driver_sigkilled_mid_run_then_rerun_completes_exactly(
    tmp_path, cluster, ckpt, small_videos, reference, monkeypatch, capsys
):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "vmae_fast.cli",
        "extract",
        str(small_videos),
        "-o",
        str(out),
        "--model",
        str(ckpt),
        "--workers",
        "1",
        "--batch-size",
        "3",
        "--part-rows",
        "1",
        "--commit-interval-s",
        "0.001",
        "--no-progress",
        "--engine",
        "ray",
        "--ray-address",
        cluster,
        "--ray-actors",
        "2",
        "--ray-cpus-per-actor",
        "1",
        "--ray-group-videos",
        "2",
    ]
    proc = subprocess.Popen(
        cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not store.list_parts(out / "clips"):
        time.sleep(0.003)
    os.kill(proc.pid, signal.SIGKILL)  # the driver alone: Ray reaps its actors
    proc.wait()
    committed = store.committed_video_ids(out)
    print(f"driver killed with {len(committed)} of 8 videos committed")
    assert 0 < len(committed) < 8, proc.stderr.read().decode()[-2000:]
    assert json.loads((out / ray_engine.RUN_TOKEN).read_text())["finished"] is False

    monkeypatch.setattr(ray_engine, "ZOMBIE_GRACE_S", 2.0)
    capsys.readouterr()
    rerun = [a if a != "--no-progress" else "--progress" for a in cmd[3:]]  # the same command, in this process
    assert cli.main(rerun) == 0
    printed = capsys.readouterr()
    print(printed.out)
    # the dead driver's actors may finish a part write already under way after the kill (the rerun waits for it,
    # ZOMBIE_GRACE_S): at least what was committed at the kill is done, the rest is redone, and nothing twice
    done = store.committed_video_ids(out)
    match = re.search(r"8 videos in shard ray: (\d+) ok, 0 errors, (\d+) already done", printed.out)
    assert match, printed.out
    ok, skipped = int(match[1]), int(match[2])
    assert ok + skipped == 8 and len(done) == 8 and skipped >= len(committed), (ok, skipped, len(committed))
    # which of the pool's 2 actors get the rerun's groups is Ray's choice (on a loaded machine one may take all):
    # the line counts the actors that ran groups, one per-actor line each (the time split)
    line = re.search(r"ray: (\d+) groups run by (\d+) actors? of a pool of 2 \(1 CPU, 0 GPU each\)", printed.out)
    assert line, printed.out
    ran = int(line[2])
    assert printed.out.count("  actor ") == ran and (ran >= 1 and "model busy" in printed.out if ok else ran == 0)
    assert ran <= min(2, int(line[1]))
    assert f"{ok}/{ok}" in printed.err  # the tqdm bar reached the end
    got = rows_of(out)
    assert len({tuple(r[k] for k in KEY) for r in got}) == len(got)
    assert_same_rows(got, rows_of(reference))
    assert no_temp_files(out) == []


def test_reports_reach_the_driver_while_a_group_runs(tmp_path, cluster, ckpt, small_videos):
    """Progress is not held back to the end of a group (Ray Data gathers a task's small outputs into one block
    unless told otherwise): the first group ends with a video that takes 6 s; its earlier videos' reports reach the
    driver before that video is done (a report travels when the actor makes the next one, see _run_groups)."""
    root = tmp_path / "videos"
    shutil.copytree(small_videos, root)
    shutil.copy(small_videos / "clip1.mp4", root / "clip3_vmae-test-slow.mp4")  # sorts after clip1, clip2
    options = {**RAY, "ray_options": {**RAY["ray_options"], "report_every_s": 0.0}}
    summary = extract([root], tmp_path / "out", model=ckpt, **options, decode_options={"decode": decode_slow})
    timing = summary["ray"]
    print(timing)
    assert summary["videos_ok"] == 9 and timing["reports"] > summary["groups"]
    assert timing["report_lead_max_s"] > 4.0  # held to the group's end it would be ~0


def test_an_environment_fault_stops_the_run_and_is_no_error_row(tmp_path, cluster, ckpt, small_videos):
    root = tmp_path / "videos"
    shutil.copytree(small_videos, root)
    shutil.copy(small_videos / "clip1.mp4", root / "clip3_vmae-test-envfault.mp4")  # in the first group
    from vmae_fast.faults import EnvironmentFault

    with pytest.raises(EnvironmentFault, match="shared disk went away") as failed:
        extract([root], tmp_path / "out", model=ckpt, **RAY, decode_options={"decode": decode_environment_fault})
    assert "clip3_vmae-test-envfault.mp4" not in store.committed_video_ids(tmp_path / "out")
    assert store.read_errors(tmp_path / "out").num_rows == 0
    # the failed run gave back the cluster's CPUs while its exception is still held (its traceback reaches Ray
    # Data's actor pool: before _stop_actors, the actors held both CPUs until the garbage collector freed the
    # exception, and the next run on this cluster waited forever for an actor)
    assert _cpus_free_within(2.0, 30.0) and failed.value is not None


def test_a_users_mistake_is_one_line_not_rays_tracebacks(tmp_path, cluster, ckpt, small_videos):
    """An OUT written with another configuration, met by the first actor once its model has loaded: the driver says
    so in one line (exit 2) and Ray's tracebacks of the failed actor start, its retries and the job's failure stay
    out of the terminal (there were ~360 lines of them around the one that matters); the actors are stopped and the
    cluster's CPUs given back; the output is untouched and a run with the right options resumes it."""
    out = tmp_path / "out"
    first = extract([small_videos], out, model=ckpt, workers=0, progress=False)
    assert first["videos_ok"] == 8
    before = sorted(p.name for p in (out / "clips").iterdir())
    args = ["extract", str(small_videos), "-o", str(out), "--model", str(ckpt), "--workers", "1", "--no-progress",
            "--engine", "ray", "--ray-address", cluster, "--ray-actors", "1", "--ray-cpus-per-actor", "1"]
    done = subprocess.run([sys.executable, "-m", "vmae_fast.cli", *args, "--keep", "tube:0.5"],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    err = [line for line in done.stderr.splitlines() if line.strip()]
    assert err[-1].startswith("vmae-fast extract: error: ") and 'keep: "all" -> "tube:0.5"' in err[-1], err[-5:]
    noise = [line for line in done.stderr.splitlines() + done.stdout.splitlines()
             if "Traceback" in line or "Exception raised in creation task" in line or "(raylet)" in line]
    assert not noise, (noise[:5], len(done.stderr.splitlines()), done.stdout[-2000:])
    assert _cpus_free_within(2.0, 30.0)
    assert sorted(p.name for p in (out / "clips").iterdir()) == before
    done = subprocess.run([sys.executable, "-m", "vmae_fast.cli", *args], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "8 already done" in done.stdout, done.stderr[-3000:]


@pytest.fixture(scope="module")
def long_list(tmp_path_factory) -> Path:
    """16 entries of one 8 s video (320x240) under their own ids: a job of ~6 s on one actor with one CPU."""
    import pyarrow as pa

    from tests.helpers.videos import make_video

    d = tmp_path_factory.mktemp("long")
    video = d / "long.mp4"
    make_video(video, width=320, height=240, frames=240)
    pq.write_table(pa.table({"path": [str(video)] * 16, "video_id": [f"e{i:02d}" for i in range(16)]}),
                   d / "list.parquet")
    return d / "list.parquet"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_driver_in_one_line_and_the_rerun_completes_exactly(tmp_path, cluster, ckpt, long_list,
                                                                               signum):
    """SIGTERM (`ray job stop`, a preemption, Kubernetes) or Ctrl-C to a driver on a running cluster, once parts are
    committed: the driver stops the job and exits 143 / 130 saying so in one line, with no traceback and without
    connecting to Ray again (Ray Data's job, left running, had reconnected this process to the last cluster started
    on the machine after the driver disconnected; SIGTERM exited 15, ray.init's handler); the CPUs are given back,
    the lock released, and the same command finishes the run: the rows equal an uninterrupted local run's."""
    out = tmp_path / "out"
    args = ["extract", str(long_list), "-o", str(out), "--model", str(ckpt), "--workers", "1", "--no-progress",
            "--engine", "ray", "--ray-address", cluster, "--ray-actors", "1", "--ray-cpus-per-actor", "1",
            "--ray-group-videos", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen([sys.executable, "-m", "vmae_fast.cli", *args], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while len(store.list_parts(out / "clips")) < 2 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    driver.send_signal(signum)
    t0 = time.monotonic()
    stdout, stderr = driver.communicate(timeout=120)
    stopped_s, committed = time.monotonic() - t0, store.committed_video_ids(out)
    assert driver.returncode == {signal.SIGTERM: 143, signal.SIGINT: 130}[signum], stderr[-3000:]
    err = [line for line in stderr.splitlines() if line.strip()]
    assert err[-1] == f"vmae-fast extract: {'terminated' if signum == signal.SIGTERM else 'interrupted'}", err[-5:]
    # (Ray's "(raylet) Task ... will be retried" notices of the killed actors' tasks may still arrive before the
    # driver disconnects: seen under `ray job stop`, not asserted either way)
    noise = [line for line in stderr.splitlines() + stdout.splitlines()
             if any(s in line for s in ("Traceback", "Connecting to existing Ray cluster", "SIGTERM"))]
    assert not noise, noise[:5]
    assert stopped_s < 30 and 2 <= len(committed) < 16, (stopped_s, len(committed))
    assert _cpus_free_within(2.0, 30.0)
    done = subprocess.run([sys.executable, "-m", "vmae_fast.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and f"{len(committed)} already done" in done.stdout, done.stderr[-3000:]
    reference = tmp_path / "local"
    assert extract([long_list], reference, model=ckpt, **LOCAL)["videos_ok"] == 16
    assert_same_rows(rows_of(out), rows_of(reference))


def test_a_driver_whose_lease_cannot_be_renewed_stops_its_job(tmp_path, cluster, ckpt, small_videos, monkeypatch):
    """The driver's lock of OUT cannot be renewed (its store unreachable from the driver, a stalled driver): before
    its lease may run out and another host take OUT over, the driver stops Ray Data's job and its actors and raises
    the lease's ShardLocked (before, the job ran on: the lock's fence is called by the local engine's writer only);
    the CPUs are back and the lock, still this run's, is released."""
    from vmae_fast.faults import ShardLocked
    from vmae_fast.store import lock as lock_module

    monkeypatch.setattr(lock_module, "RENEW_S", 3600.0)  # no renewal runs
    monkeypatch.setattr(lock_module, "LEASE_S", lock_module.MARGIN_S + 2.0)  # refused 2 s after the lock is taken
    out = tmp_path / "out"
    t0 = time.monotonic()
    with pytest.raises(ShardLocked, match=r"could not be renewed for \d+ s \(no renewal ran\); this run stops"):
        extract([small_videos], out, model=ckpt, **RAY)
    assert time.monotonic() - t0 < 30
    assert _cpus_free_within(2.0, 30.0)
    assert len(store.committed_video_ids(out)) < 8 and not list((out / "_locks").glob("*.lock"))


def _cpus_free_within(cpus: float, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while ray.available_resources().get("CPU", 0.0) < cpus:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_a_stale_actor_cannot_write_after_a_new_driver_took_over(tmp_path, ckpt, reference, monkeypatch):
    """The run token fence, without a cluster: a writer holding an old token refuses to write a part."""
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    monkeypatch.setattr(ray_engine, "ZOMBIE_GRACE_S", 0.0)
    token = "a" * 32
    ray_engine._take_over(out, token)
    fence = ray_engine._Fence(out, token)
    writer = store.RunWriter.for_group(out, store.load_run(out), 99, before_commit=fence)
    assert writer.committed == set()
    writer.add_error("/x.mp4", "x.mp4", "open", "test", 1)
    ray_engine._take_over(out, "b" * 32)  # a new driver
    with pytest.raises(RuntimeError, match="belongs to another run"):
        writer.flush()
    assert not (out / "errors" / "part-g000099-000000.parquet").exists()
    assert store.list_parts(out / "errors") == store.list_parts(reference / "errors")


# --- arguments -----------------------------------------------------------------------------------------------------
def test_arguments_the_ray_engine_refuses_before_it_asks_a_cluster(tmp_path, small_videos, ckpt, capsys):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="shard= splits"):
        extract([small_videos], out, model=ckpt, engine="ray", shard="0/2")
    with pytest.raises(TypeError, match="loads the model on every actor"):
        from vmae_fast.checkpoint import load_model

        extract([small_videos], out, model=load_model(ckpt), engine="ray")
    with pytest.raises(ValueError, match="engine= must be local or ray"):
        extract([small_videos], out, model=ckpt, engine="spark")
    with pytest.raises(ValueError, match="for engine='ray'"):
        extract([small_videos], out, model=ckpt, ray_address="auto")
    with pytest.raises(ValueError, match="unknown ray_options"):
        extract([small_videos], out, model=ckpt, engine="ray", ray_options={"actor": 2})
    with pytest.raises(ValueError, match="does not support frobnicate"):
        from vmae_fast.extraction.ray_engine import extract_ray

        extract_ray([small_videos], out, model=ckpt, frobnicate=True)
    with pytest.raises(ValueError, match="frame_step= or fps="):
        extract([small_videos], out, model=ckpt, engine="ray", frame_step=2, fps=4.0)
    code = cli.main(["extract", str(small_videos), "-o", str(out), "--engine", "ray", "--shard", "0/2"])
    assert code == 2 and "error: --shard splits the work" in capsys.readouterr().err
    assert not out.exists()


# --- outputs of 16c2a40 -----------------------------------------------------------------------------------------------
def test_an_old_ray_output_resumes_with_group_names_beside_its_old_parts(tmp_path, cluster):
    """tests/store/old_outputs/ray (16c2a40's Ray engine: groups 1-3 under shard names, broken.mp4 not committed):
    this driver redoes broken.mp4 alone, as its first group, under a group name."""
    from tests.helpers.old_outputs import COMMITTED, OLD_OUTPUTS, RESUME, make_inputs

    inputs = make_inputs(tmp_path / "videos")
    out = tmp_path / "out"
    shutil.copytree(OLD_OUTPUTS / "ray", out)
    before = rows_of(out)
    summary = extract([inputs], out, engine="ray", ray_options={"actors": 1, "cpus_per_actor": 1, "group_videos": 3},
                      **RESUME)
    assert (summary["videos_skipped"], summary["videos_ok"], summary["videos_failed"]) == (8, 0, 1)
    # no batch size given: the summary gives the actor's own (the local engine's default on a CPU), not None
    assert summary["batch_size"] == 8 and summary["actors"][0]["batch_size"] == 8
    assert "(fp32, batch 8, keep all)" in cli.format_summary(summary)
    assert "(0 workers), batch 8;" in cli.format_actors(summary)
    # group 0: no old part has a group name, so this driver numbers its groups from 0
    assert [p.name for p in store.list_parts(out / "errors")] == ["part-g000000-000000.parquet"]
    assert rows_of(out) == before and store.committed_video_ids(out) == COMMITTED | {"broken.mp4"}


# --- the streaming driver ------------------------------------------------------------------------------------------
def test_list_files_stream_through_rays_readers_with_the_local_engines_rules(tmp_path, cluster, ckpt, small_videos,
                                                                             reference):
    """The same 8 videos named by a .parquet list (video_id given), a .csv (relative paths, start_s/end_s empty)
    and a .txt (comments, blank lines, absolute paths) read by Ray's readers: the same rows as the local engine
    reading the folder; then a list naming a video twice stops the run with the id and both places named (list and
    line or row, as the local engine names them)."""
    import pyarrow as pa

    paths = sorted(p for p in small_videos.rglob("*.mp4"))
    ids = [p.relative_to(small_videos).as_posix() for p in paths]
    lists = tmp_path / "lists"
    lists.mkdir()
    pq.write_table(pa.table({"path": [str(p) for p in paths[:3]], "video_id": ids[:3]}), lists / "a.parquet")
    rel = [os.path.relpath(p, lists) for p in paths[3:6]]
    (lists / "b.csv").write_text("path,video_id,start_s,end_s\n" +
                                 "".join(f"{r},{i},,\n" for r, i in zip(rel, ids[3:6], strict=True)))
    (lists / "c.txt").write_text("# the rest\n\n" + "".join(f"{p}\n" for p in paths[6:]))
    c_ids = [str(p) for p in paths[6:]]  # a .txt list's video_id is the path as written
    summary = extract([lists / "a.parquet", lists / "b.csv", lists / "c.txt"], tmp_path / "out", model=ckpt, **RAY)
    assert (summary["videos"], summary["videos_ok"], summary["videos_skipped"]) == (8, 8, 0)
    renamed = {c: i for c, i in zip(c_ids, ids[6:], strict=True)}
    got = [{**r, "video_id": renamed.get(r["video_id"], r["video_id"])} for r in rows_of(tmp_path / "out")]
    got = sorted(got, key=lambda r: tuple(r.get(k, 1) for k in KEY))
    want = rows_of(reference)
    assert [r["video_id"] for r in got] == [r["video_id"] for r in want]
    for row, ref in zip(got, want, strict=True):
        np.testing.assert_allclose(row["embedding"], ref["embedding"], atol=ATOL, rtol=0)
        assert Path(row["path"]).resolve() == Path(ref["path"]).resolve()
    # resume: every entry of every list is committed; a list naming one of them twice is refused by the coordinator
    again = extract([lists / "a.parquet", lists / "b.csv", lists / "c.txt"], tmp_path / "out", model=ckpt, **RAY)
    assert (again["videos_skipped"], again["groups"]) == (8, 0)
    # the places of both entries, as the local engine names them: the list and the line (.csv) or row (.parquet)
    pq.write_table(pa.table({"path": [str(paths[1]), str(paths[0])], "video_id": [ids[1], ids[4]]}),
                   lists / "d.parquet")
    b, d = re.escape(str(lists / "b.csv")), re.escape(str(lists / "d.parquet"))
    with pytest.raises(ValueError, match=rf"video_id '{ids[4]}' appears twice \(({b}:3 and {d} row 1|"
                                         rf"{d} row 1 and {b}:3)\); give distinct video_id values"):
        extract([lists / "b.csv", lists / "d.parquet"], tmp_path / "out2", model=ckpt, **RAY)


def _error_part(out, group: int, video_id: str) -> None:
    """An errors part of group `group` holding `video_id` (a dead driver's actor might commit one during the
    take-over's grace)."""
    writer = store.RunWriter.for_group(out, store.load_run(out), group)
    writer.add_error(f"/{video_id}", video_id, "open", "test", 1)
    writer.flush()


def _same_ids(keyset, ids: set[str]) -> bool:
    return len(keyset) == len(ids) and all(i in keyset for i in ids)


@pytest.mark.parametrize("case", ["part committed after the early read", "retry errors", "a part read early is gone"])
def test_the_resume_set_is_read_while_the_actors_start_and_completed_at_prepare(tmp_path, cluster, ckpt, reference,
                                                                               monkeypatch, case):
    """_Coordinator reads OUT's resume set as soon as it starts (beside the actors' start), by RESUME_TASKS Ray
    tasks (an output of RESUME_PARTS_PER_TASK parts and more a task); prepare() adds the parts committed after that
    read, or reads OUT again when a part it read is gone; --retry-errors reads clips only. Each time the set equals
    the ids OUT holds once prepared."""
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    _error_part(out, 400, "broken.mp4")  # OUT holds an error row before the run
    monkeypatch.setattr(ray_engine, "ZOMBIE_GRACE_S", 0.0)
    monkeypatch.setattr(ray_engine, "RESUME_PARTS_PER_TASK", 2)  # tasks even for this small output (64 parts each)
    spec = RunSpec.from_keywords([str(tmp_path)], out, ckpt, engine="ray",
                                            retry_errors=case == "retry errors")
    coordinator = ray_engine._Coordinator(spec, "t" * 32, group_videos=2)
    coordinator.early_thread.join(60)
    early = coordinator.early["done"]
    assert coordinator.early["tasks"] == ray_engine.RESUME_TASKS < len(store.committed_parts(out))
    before = store.committed_video_ids(out)
    clips_only = set(store.read_clips(out).column("video_id").to_pylist())
    assert _same_ids(early, clips_only if case == "retry errors" else before)
    if case == "a part read early is gone":
        gone = store.list_parts(out / "clips")[0].name
        lost = set(pq.read_table(out / "clips" / gone, columns=["video_id"]).column("video_id").to_pylist())
        (out / "clips" / gone).unlink()
    else:
        _error_part(out, 500, "late.mp4")
    coordinator.prepare(store.load_run(reference))
    after = store.committed_video_ids(out)  # --retry-errors has retired every errors part by now
    assert _same_ids(coordinator.done, after)
    if case == "part committed after the early read":
        assert after == before | {"late.mp4"} and coordinator.done is early  # the early read, completed
    elif case == "retry errors":
        assert after == clips_only and "late.mp4" not in coordinator.done
    else:
        assert lost and not lost & after and coordinator.done is not early  # read again


def test_a_small_outputs_resume_set_is_read_by_the_coordinator_itself(tmp_path, cluster, reference):
    """Fewer than RESUME_PARTS_PER_TASK committed parts: no Ray task (each is a new worker process, ~1 s of CPU:
    four of them took ~4 s from the actors' start on 2 cores, for 40 small parts); the set is the same."""
    spec = RunSpec.from_keywords([str(tmp_path)], reference, "random:small", engine="ray")
    parts = store.committed_parts(reference)
    assert ray.is_initialized() and ray_engine.RESUME_TASKS < len(parts) < ray_engine.RESUME_PARTS_PER_TASK
    coordinator = ray_engine._Coordinator(spec, "t" * 32, group_videos=2)
    coordinator.early_thread.join(60)
    assert coordinator.early["tasks"] == 0
    assert _same_ids(coordinator.early["done"], store.committed_video_ids(reference))


def test_the_coordinator_answers_a_rerun_batch_alike_and_refuses_a_repeated_id(tmp_path, ckpt, reference,
                                                                                monkeypatch):
    """_Coordinator without a cluster: OUT prepared from the first run handed to it (its committed ids skipped),
    groups numbered from next_group, a batch asked again under the same task key gets the same groups (a task Ray
    re-runs after a node loss), an id met twice is answered with where it was met first."""
    from vmae_fast.ids import id_keys

    out = tmp_path / "out"
    shutil.copytree(reference, out)
    monkeypatch.setattr(ray_engine, "ZOMBIE_GRACE_S", 0.0)
    spec = RunSpec.from_keywords([str(tmp_path)], out, ckpt, engine="ray")
    coordinator = ray_engine._Coordinator(spec, "t" * 32, group_videos=2)
    run = store.load_run(reference)
    assert coordinator.prepare(run) == run and coordinator.base == store.layout.next_group(out)
    done = sorted(store.committed_video_ids(reference))
    ids = [done[0], "new/a.mp4", "new/b.mp4", done[1], "new/c.mp4"]
    keys, sources = id_keys(ids), np.zeros(len(ids), np.int32)
    first = coordinator.admit(("task1", 0), "d1", keys, sources)
    assert first[0] == "ok" and first[1] == coordinator.base
    assert first[2].tolist() == [False, True, True, False, True]  # 3 to do: groups base, base + 1
    assert coordinator.next == coordinator.base + 2
    again = coordinator.admit(("task1", 0), "d1", keys, sources)  # the same task, re-run
    assert again[1] == first[1] and again[2].tolist() == first[2].tolist() and coordinator.next == first[1] + 2
    repeat = coordinator.admit(("task2", 0), "d2", id_keys(["x.mp4", "new/b.mp4"]), np.array([1, 1], np.int32))
    assert repeat == ("repeat", 1, 0)  # entry 1 was met first in input 0
    counts = coordinator.take()["counts"]
    assert (counts["entries"], counts["skipped"], counts["admitted"], counts["groups"]) == (5, 2, 3, 2)
    other = {**run, "config_hash": "0" * 16, "config": {**run["config"], "keep": "tube:0.5"}}
    from vmae_fast.faults import UserError

    with pytest.raises(UserError, match="another configuration.*keep"):
        coordinator.prepare(other)
