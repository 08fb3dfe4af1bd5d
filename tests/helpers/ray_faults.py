"""A decode function that SIGKILLs the Ray actor it decodes for, for tests/extraction/test_ray_engine.py (DecodePool
workers import it by name, so it lives in a module).

A task whose file name contains "vmae-test-killactor" waits, on its first attempt only (a `<file>.attempted`
marker beside the video remembers it), until the video named in `<file>.after` is committed to the clips folder
named there (so the group's earlier videos are in a part of the dying attempt), then kills the actor process: the
worker's parent is the pool's forkserver, whose parent is the actor. Every other task decodes like decode_clips.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from tests.helpers.pool_faults import _first_attempt
from vmae_fast.video import decode_clips


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state letter


def _committed(clips_dir: Path, video_id: str) -> bool:
    import pyarrow.parquet as pq

    for part in clips_dir.glob("part-*.parquet"):
        if video_id in pq.read_table(part, columns=["video_id"]).column("video_id").to_pylist():
            return True
    return False


def decode_kill_actor(task, sampling, image_size, backend="auto", **options):
    if "vmae-test-killactor" in Path(task.path).name and _first_attempt(task.path):
        after = json.loads(Path(task.path + ".after").read_text())
        deadline = time.monotonic() + 60
        while not (waited := _committed(Path(after["clips_dir"]), after["video_id"])) and time.monotonic() < deadline:
            time.sleep(0.05)
        actor = _parent_of(os.getppid())  # the forkserver's parent
        Path(task.path + ".killed").write_text(json.dumps({"actor": actor, "after_committed": waited}))
        os.kill(actor, signal.SIGKILL)
        time.sleep(60)  # dies with the forkserver (PR_SET_PDEATHSIG)
    yield from decode_clips(task, sampling, image_size, backend, **options)


def decode_environment_fault(task, sampling, image_size, backend="auto", **options):
    """A task whose file name contains "vmae-test-envfault" fails with the environment's fault (faults.py) on every
    attempt: the run must stop (never an error row for that video); every other task decodes like decode_clips."""
    if "vmae-test-envfault" in Path(task.path).name:
        from vmae_fast.faults import EnvironmentFault

        raise EnvironmentFault("test: the shared disk went away")
    yield from decode_clips(task, sampling, image_size, backend, **options)


def decode_slow(task, sampling, image_size, backend="auto", **options):
    """A task whose file name contains "vmae-test-slow" waits 6 s before decoding (a long video, as it were)."""
    if "vmae-test-slow" in Path(task.path).name:
        time.sleep(6)
    yield from decode_clips(task, sampling, image_size, backend, **options)


def decode_hold_for_node_loss(task, sampling, image_size, backend="auto", **options):
    """A task whose file name contains "vmae-test-nodeloss", on its first attempt only: writes `<file>.holding`
    (the pids above this decode worker: its forkserver, the actor, the actor's raylet...) and waits for the test to
    remove the node it runs on (its raylet killed: this worker dies with it). Later attempts, and every other task,
    decode like decode_clips."""
    if "vmae-test-nodeloss" in Path(task.path).name and _first_attempt(task.path):
        Path(task.path + ".holding").write_text(json.dumps({"ancestors": _ancestors(os.getpid())}))
        time.sleep(120)  # the node is removed meanwhile
    yield from decode_clips(task, sampling, image_size, backend, **options)


def _ancestors(pid: int, depth: int = 8) -> list[int]:
    chain = []
    for _ in range(depth):
        pid = _parent_of(pid)
        if pid <= 1:
            break
        chain.append(pid)
    return chain


def decode_gated(task, sampling, image_size, backend="auto", **options):
    """Every task writes `<file>.chain` (the pids above its decode worker: forkserver, actor, the actor's raylet...)
    and waits 0.5 s; a task whose path has a folder `gated` among its parents then waits (at most 150 s) until the
    file `gate` beside that folder exists: the run cannot end before the test opens the gate, which it does once an
    actor on a node it added has started a group (its raylet's pid in a chain). Then every task decodes like
    decode_clips."""
    Path(task.path + ".chain").write_text(json.dumps(_ancestors(os.getpid())))
    time.sleep(0.5)
    gated = [p for p in Path(task.path).parents if p.name == "gated"]
    if gated:
        deadline = time.monotonic() + 150
        while not (gated[0].parent / "gate").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    yield from decode_clips(task, sampling, image_size, backend, **options)
