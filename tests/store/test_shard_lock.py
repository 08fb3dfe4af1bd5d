"""One writer per shard: the lock file OUT/_locks/shard-<i>.lock, real processes racing for it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmae_fast import store

REPO = Path(__file__).resolve().parents[2]



# --- 3. one writer per shard -------------------------------------------------------------------------------------
HOLD = """
import sys, time
from vmae_fast.store import ShardLock
from vmae_fast.faults import ShardLocked
out, go, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])
while go != "-" and not __import__("os").path.exists(go):
    time.sleep(0.001)
try:
    lock = ShardLock(out, 0).acquire()
except ShardLocked as e:
    print("refused:", e, flush=True)
    sys.exit(0)
print("held", flush=True)
time.sleep(hold)
lock.release()
"""


def hold_lock(out: Path, go: str = "-", hold_s: float = 3600.0):

    return subprocess.Popen([sys.executable, "-c", HOLD, str(out), go, str(hold_s)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def dead_pid() -> int:

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_writer_of_a_shard_is_refused_and_a_dead_writers_lock_is_taken_over(tmp_path, ckpt, videos):

    out = tmp_path / "out"
    holder = hold_lock(out)
    assert holder.stdout.readline().strip() == "held"
    cmd = [sys.executable, "-m", "vmae_fast.cli", "extract", str(videos), "-o", str(out), "--model", str(ckpt),
           "--workers", "0", "--no-progress"]
    second = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    err = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(err) == 1, (second.returncode, second.stderr[-3000:])
    assert f"being written by pid {holder.pid} on this host" in err[0]
    assert not (out / "clips").exists() or store.list_parts(out / "clips") == []

    os.kill(holder.pid, signal.SIGKILL)  # the first writer dies holding the lock (a killed job)
    holder.wait()
    assert (out / "_locks" / "shard-00000.lock").exists()
    third = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert len(store.read_clips(out)) == 4
    assert not (out / "_locks" / "shard-00000.lock").exists()  # released at the end


def test_a_stale_lock_is_taken_over_by_exactly_one_of_four_racing_processes(tmp_path):

    from vmae_fast.store import lock as shard_lock

    out = tmp_path / "out"
    lock_file = out / "_locks" / "shard-00000.lock"
    lock_file.parent.mkdir(parents=True)
    lock_file.write_text(json.dumps({"host": socket.gethostname(), "boot_id": shard_lock.boot_id(),
                                     "pid": dead_pid(), "pid_start": None, "started_utc": "2026-01-01T00:00:00Z",
                                     "token": "stale", "command": "a job killed long ago"}))
    go = tmp_path / "go"
    racers = [hold_lock(out, str(go), hold_s=3.0) for _ in range(4)]

    time.sleep(1.5)  # every racer started and waits for the go file
    go.write_text("")
    results = [p.communicate(timeout=60)[0].strip() for p in racers]
    assert sorted(r.split(":")[0] for r in results) == ["held", "refused", "refused", "refused"], results
    assert all("being written by pid" in r for r in results if r.startswith("refused")), results


def test_a_lock_from_another_host_is_refused_unless_broken(tmp_path):

    from vmae_fast.faults import ShardLocked
    from vmae_fast.store import lock as shard_lock

    out = tmp_path / "out"
    lock_file = out / "_locks" / "shard-00003.lock"
    lock_file.parent.mkdir(parents=True)
    other = {
        "host": "gpu-node-17",
        "boot_id": "x",
        "pid": 4242,
        "pid_start": "1",
        "started_utc": "2026-12-01T09:00:00Z",
        "token": "theirs",
        "command": "vmae-fast extract ...",
    }
    lock_file.write_text(json.dumps(other))
    with pytest.raises(ShardLocked, match=r"pid 4242 on host gpu-node-17 since 2026-12-01T09:00:00Z.*--break-lock"):
        shard_lock.ShardLock(out, 3).acquire()
    assert json.loads(lock_file.read_text())["token"] == "theirs"  # untouched
    with shard_lock.ShardLock(out, 3, break_lock=True):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert not lock_file.exists()
    # the same host after a reboot: every lock of the old boot is stale
    lock_file.write_text(json.dumps({**other, "host": socket.gethostname(), "boot_id": "old-boot"}))
    with shard_lock.ShardLock(out, 3):
        pass
