"""One writer per shard: the lock file OUT/_locks/shard-<i>.lock, real processes racing for it.
"""

from __future__ import annotations

import json
import os
import re
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


# --- the lease: a lock of another host is taken over once its holder stopped renewing it ---------------------------
def lock_of_another_host(path: Path, renewed_ago_s: float | None, lease_s: float = 120.0) -> dict:
    """Write `path` as the lock of a holder on host other-host, renewed `renewed_ago_s` ago (None: a lock of a
    vmae_fast before leases, without lease fields); returns its content."""
    info = {"host": "other-host", "boot_id": "b", "pid": 4242, "pid_start": "1", "started_utc": "2026-12-01T09:00:00Z",
            "token": "theirs", "command": "vmae-fast extract ..."}
    if renewed_ago_s is not None:
        renewed = time.time() - renewed_ago_s
        info.update(lease_s=lease_s, renewed_unix=renewed,
                    renewed_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(renewed)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info))
    return info


def wait_for(condition, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_another_hosts_lock_with_a_running_lease_is_refused_naming_when_it_can_be_taken_over(tmp_path):

    from vmae_fast.faults import ShardLocked
    from vmae_fast.store import lock as shard_lock

    out = tmp_path / "out"
    lock_file = shard_lock.lock_path(out, 0)
    info = lock_of_another_host(lock_file, renewed_ago_s=30.0)
    with pytest.raises(ShardLocked) as refused:
        shard_lock.ShardLock(out, 0).acquire()
    message = str(refused.value)
    free_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(info["renewed_unix"] + 120))
    assert "\n" not in message and "pid 4242 on host other-host" in message, message
    assert f"last renewed {info['renewed_utc']}" in message, message
    assert re.search(rf"takes the shard over on its own from {free_at} \(in (89|90) s\).*--break-lock", message), \
        message
    assert json.loads(lock_file.read_text()) == info  # untouched
    # a lock of a vmae_fast before leases (no lease fields), however old: --break-lock only, as before
    lock_of_another_host(lock_file, renewed_ago_s=None)
    with pytest.raises(ShardLocked, match=r"on host other-host .*no lease.*--break-lock"):
        shard_lock.ShardLock(out, 0).acquire()
    with shard_lock.ShardLock(out, 0, break_lock=True) as taken:
        assert json.loads(lock_file.read_text())["token"] == taken.token


def test_another_hosts_lock_whose_lease_ran_out_is_taken_over_after_settling(tmp_path, monkeypatch):
    """The taker waits SETTLE_S with the old lock still in place (so that a process finding no lock comes after
    the old holder's last upload too), then takes it over as a dead holder's."""
    from vmae_fast.store import lock as shard_lock

    monkeypatch.setattr(shard_lock, "SETTLE_S", 0.3)
    out = tmp_path / "out"
    lock_file = shard_lock.lock_path(out, 0)
    lock_of_another_host(lock_file, renewed_ago_s=200.0)
    settled, real_sleep = [], time.sleep

    def sleep(seconds: float) -> None:  # what the lock file holds while the taker settles
        if seconds == 0.3:
            settled.append(json.loads(lock_file.read_text())["token"])
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    t0 = time.monotonic()
    with shard_lock.ShardLock(out, 0) as lock:
        assert time.monotonic() - t0 >= 0.3
        assert settled == ["theirs"]  # the old lock stayed until the wait was over
        assert lock.took_over == "its lease ran out: not renewed for 200 s"
        held = json.loads(lock_file.read_text())
        assert held["token"] == lock.token and held["host"] == socket.gethostname() and held["lease_s"] == 120.0
    assert not lock_file.exists()


def test_the_holder_renews_its_lease_until_release(tmp_path, monkeypatch):

    from vmae_fast.store import lock as shard_lock

    monkeypatch.setattr(shard_lock, "RENEW_S", 0.01)
    out = tmp_path / "out"
    lock = shard_lock.ShardLock(out, 2).acquire()
    first = json.loads(lock.path.read_text())
    assert first["lease_s"] == 120.0 and first["renewed_utc"] == time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                              time.gmtime(first["renewed_unix"]))
    seen, deadline = [], time.monotonic() + 5
    while len({info["renewed_unix"] for info in seen}) < 5 and time.monotonic() < deadline:
        seen.append(json.loads(lock.path.read_text()))  # a reader only ever sees the whole lock, and ours
        assert seen[-1]["token"] == lock.token and time.time() - seen[-1]["renewed_unix"] < 5
    assert seen[-1]["renewed_unix"] > first["renewed_unix"]
    assert {k: v for k, v in seen[-1].items() if not k.startswith("renewed")} == \
        {k: v for k, v in first.items() if not k.startswith("renewed")}
    renewer = lock._renewer
    assert renewer.is_alive()
    lock.release()
    assert not renewer.is_alive() and not lock.path.exists()
    assert sorted(os.listdir(lock.path.parent)) == [".guard"]  # no temporary file left


def test_a_holder_whose_lock_was_taken_over_stops_renewing_and_its_fence_refuses(tmp_path, monkeypatch):

    from vmae_fast.faults import ShardLocked
    from vmae_fast.store import lock as shard_lock
    from vmae_fast.store import storage

    monkeypatch.setattr(shard_lock, "RENEW_S", 0.01)
    lock = shard_lock.ShardLock(tmp_path / "out", 0).acquire()
    storage.POSIX.remove_if(lock.path, lambda: True)  # --break-lock from another host: removed, then created
    theirs = lock_of_another_host(lock.path, renewed_ago_s=0.0)
    assert wait_for(lambda: not lock._renewer.is_alive())
    assert json.loads(lock.path.read_text()) == theirs  # never written over
    with pytest.raises(ShardLocked, match="was taken over by pid 4242 on host other-host"):
        lock.fence()
    with pytest.raises(ShardLocked, match="was taken over or removed .found by its lease's renewal."):
        lock.check_lease()  # what a Ray driver checks at every poll, without reading the lock
    lock.release()
    assert json.loads(lock.path.read_text()) == theirs


def test_the_fence_refuses_once_the_lease_could_not_be_renewed(tmp_path, monkeypatch):
    """A renewal that fails is tried again at the next tick; failing for LEASE_S - MARGIN_S, the holder stops
    committing (one line), and renews no more."""
    import errno

    from vmae_fast.faults import ShardLocked
    from vmae_fast.store import lock as shard_lock
    from vmae_fast.store import storage

    monkeypatch.setattr(shard_lock, "RENEW_S", 0.01)
    monkeypatch.setattr(shard_lock, "LEASE_S", 2.0)
    monkeypatch.setattr(shard_lock, "MARGIN_S", 1.0)
    replace_if, failures = storage.PosixBackend.replace_if, []

    def failing(self, path, data, still):
        if len(failures) < 3 or not replace_if_works:
            failures.append(path)
            raise OSError(errno.EIO, "Input/output error", str(path))
        return replace_if(self, path, data, still)

    replace_if_works = True
    monkeypatch.setattr(storage.PosixBackend, "replace_if", failing)
    lock = shard_lock.ShardLock(tmp_path / "out", 0).acquire()
    first = json.loads(lock.path.read_text())["renewed_unix"]
    assert wait_for(lambda: json.loads(lock.path.read_text())["renewed_unix"] > first)  # after 3 failed tries
    assert len(failures) == 3 and lock._renewer.is_alive()
    lock.fence()
    lock.check_lease()

    replace_if_works = False  # from here on every renewal fails
    assert wait_for(lambda: not lock._renewer.is_alive())  # given up once LEASE_S - MARGIN_S has passed
    assert time.time() - json.loads(lock.path.read_text())["renewed_unix"] > 1.0
    with pytest.raises(ShardLocked) as refused:
        lock.fence()
    message = str(refused.value)
    assert "\n" not in message, message
    assert re.search(r"lease of the lock of shard 0 .* could not be renewed for \d+ s \(OSError: \[Errno 5\] "
                     r"Input/output error.*\); this run stops before another host may take the shard over .*"
                     "rerun to resume$", message), message
    with pytest.raises(ShardLocked, match="could not be renewed") as checked:
        lock.check_lease()
    def without_age(text: str) -> str:
        return re.sub(r"for \d+ s", "for N s", text)

    assert without_age(str(checked.value)) == without_age(message)  # the same one line as the writer's fence
    lock.release()
    assert not lock.path.exists()
