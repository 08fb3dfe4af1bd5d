"""One writer per shard: an exclusive lock file OUT/_locks/shard-<i>.lock, taken before a run touches OUT.

Two processes writing the same shard (a requeued SLURM job beside a rerun) would compute the same next part number
and replace each other's parts: lost and duplicated rows. The lock file is created only if absent
(layout.create_file: O_CREAT | O_EXCL on a local folder, atomic on local file systems and NFSv3+; a conditional
create on an object store, S3 If-None-Match: *, GCS ifGenerationMatch=0, Azure If-None-Match: *) and holds who took
it: host, boot id, pid, the pid's start time, when, the command, a random token, and a lease: `lease_s` and the
holder's last renewal (`renewed_unix`, UTC wall-clock seconds, and `renewed_utc`). A process that finds the file:

- same host, and its holder is dead (no such pid, the pid now belongs to a younger process, or the host has been
  rebooted since): the lock is stale and taken over. The file is removed only if it still holds the stale content
  (local: under a short flock(2) guard, so of several processes racing for a stale lock exactly one wins; object
  store: checked then deleted, see fence), then created again only if absent.
- same host, holder alive: ShardLocked (one line, exit 2), naming the pid and the command. The lease plays no part.
- another host, whose liveness cannot be checked from here: its lease says. Not renewed for more than its
  `lease_s` (the holder died, or lost the store): stale, taken over as above, after SETTLE_S (below). Renewed
  within it: ShardLocked naming the host, pid, the last renewal and the time from which a rerun takes the lock
  over on its own; `--break-lock` (break_lock=True) takes it at once when that job is known to be gone. A lock
  without a lease (written by a vmae_fast before leases) is refused until `--break-lock`, as before.

The lease. From acquire until release the holder rewrites its lock every RENEW_S (a daemon thread: read the lock,
and only if it still holds this holder's token write it again with a new `renewed_unix`; local: the atomic write,
temporary file + os.replace in _locks, under the guard above, so a reader never sees a partial file and a removal
by a taker is never undone; object store: one overwriting PUT). A renewal that fails is tried again at the next
tick; once the lock holds another token (or none) the thread stops. The holder fences itself: fence() refuses
(ShardLocked) once its last successful renewal is older than LEASE_S - MARGIN_S, and the thread then stops
renewing for good, so from MARGIN_S before anyone may take the lock over this holder commits nothing new.
A taker that finds an expired lease waits SETTLE_S, then removes the lock if it is unchanged and creates its own:
a commit whose fence passed just before the old holder's lease grew too old (a part upload in flight) has landed
by then, before the new holder lists what is committed. The wait comes before the removal, so that a third process
that finds no lock file at all (and waits for nothing) also comes after that upload.

What the lease assumes: the holder's and the taker's wall clocks agree within a few seconds (NTP), far less than
MARGIN_S; a commit (its part uploads, from the fence to the last byte) takes less than MARGIN_S + SETTLE_S; and a
holder is not frozen (SIGSTOP, a paused VM) for longer than that between its fence and its upload. A clock off by
more than MARGIN_S, or a longer stall, can let the old holder's last commit land after the new holder has listed
what is committed: the video is then written twice (its rows duplicated), never lost.

The token is the fencing token: the writer checks before each commit that the lock file still holds it (fence, the
store writer's before_commit hook), so a process whose lock was taken over (--break-lock of a job that was not
gone, or the check-then-delete race of an object store) stops before writing instead of writing beside the new
holder.

"_locks" starts with "_", so Parquet readers (pyarrow datasets, Spark) skip it, and `*.parquet` globs never see it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

from ..faults import EnvironmentFault, OutputNotADirectory, ShardLocked
from .layout import create_file, lock_path
from .storage import backend, out_path

# A lock not renewed for LEASE_S is taken over from any host: a Kubernetes head pod or a requeued SLURM job is
# usually back within a minute or two, and a store outage shorter than LEASE_S - MARGIN_S does not stop the run.
LEASE_S = 120.0
RENEW_S = 15.0  # the holder renews every RENEW_S: six tries before its fence refuses (one small write each)
# the holder's fence refuses MARGIN_S before its lease runs out: room for clock skew between hosts (NTP: well
# under a second) and for the time from a commit's fence to its upload
MARGIN_S = 30.0
# a taker of an expired lease waits this long before it removes the lock: an upload the old holder's fence let
# through has landed (a commit of up to MARGIN_S + SETTLE_S = 60 s); tests make it small
SETTLE_S = 30.0
_JOIN_S = 30.0  # release() waits this long at most for a renewal under way (one read, one small write)
_EMPTY_GRACE_S = 5.0  # an empty or unreadable lock file older than this: its creator died before writing it
_held: set[str] = set()  # lock files this process holds now (a leaked one of an earlier call is stale)


def boot_id() -> str:
    """This boot of this host (Linux), '' elsewhere: a lock from an earlier boot is stale."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), to tell a reused pid; None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of stat; fields before it follow the command name


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _utc(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def _lease(holder: dict) -> tuple[float, float] | None:
    """(its last renewal, UTC seconds; its lease_s) of a lock's content, None for a lock without a lease."""
    try:
        renewed, lease_s = float(holder["renewed_unix"]), float(holder["lease_s"])
    except (KeyError, TypeError, ValueError):
        return None
    return (renewed, lease_s) if math.isfinite(renewed) and lease_s > 0 else None


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())[:300]


class ShardLock:
    """with ShardLock(out, shard): ... holds OUT/_locks/shard-<shard>.lock and renews its lease until release;
    acquire() raises ShardLocked. took_over: why the lock file found was stale (None: there was none)."""

    def __init__(self, out: str | os.PathLike, shard: int, *, break_lock: bool = False):
        self.out, self.shard, self.break_lock = out_path(out), int(shard), break_lock
        self.path = lock_path(self.out, self.shard)
        self.token: str | None = None
        self.took_over: str | None = None
        self._info: dict = {}  # the lock's content as this holder wrote it
        self._renewed = 0.0  # this holder's last successful renewal (time.time(), as written in renewed_unix)
        self._renew_error: str | None = None  # why the renewals since then failed
        self._lost = False  # the renewal found the lock holding another token, or none
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> ShardLock:  # noqa: PYI034
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> ShardLock:
        """Take the lock (see the module docstring) and start renewing its lease. A lock of another host whose
        lease ran out is taken over after SETTLE_S, so that a commit of its old holder still uploading lands before
        this holder lists what is committed."""
        if self.out.exists() and not self.out.is_dir():  # before the mkdir below, whose ENOTDIR names OUT/_locks
            raise OutputNotADirectory(f"output {self.out} exists and is not a directory")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(200):
            if self._create():
                self._start_renewal()
                return self
            holder = self._read()
            if holder is None:  # being written this instant, or its creator died before writing it
                if self._age() < _EMPTY_GRACE_S:
                    time.sleep(0.01)
                    continue
            else:
                why_stale = self._stale(holder)
                if why_stale is None:
                    raise ShardLocked(self._refusal(holder))
                if self._expired(holder):
                    time.sleep(SETTLE_S)  # before the removal: see the module docstring
                self.took_over = why_stale
            self._remove_if_unchanged(holder)
        raise ShardLocked(f"could not take {self.path}: other processes keep taking it")

    def release(self) -> None:
        """Stop renewing, then remove the lock file if it is still this object's (idempotent). A store that does
        not answer leaves the file (the release runs on the way out of a run that failed, often for that very
        reason): the next run on this host finds its holder dead and takes it over; elsewhere, once its lease has
        run out."""
        if self.token is None:
            return
        self._stop.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join(_JOIN_S)  # a renewal under way must not write the file again after its removal
        try:
            holder = self._read()
            if holder is not None and holder.get("token") == self.token:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
        except EnvironmentFault:
            pass
        finally:
            _held.discard(str(self.path))
            self.token = None

    def fence(self) -> None:
        """Raise ShardLocked unless this holder may still commit: called before every commit (the writer's
        before_commit). Refused when its lease could not be renewed for LEASE_S - MARGIN_S (another host may take
        the lock over soon), or when the lock file no longer holds this object's token (taken over)."""
        refusal = None if self._lost else self._lease_refusal()
        if refusal is not None:
            raise ShardLocked(refusal)
        holder = self._read()
        if self.token is None or holder is None or holder.get("token") != self.token:
            who = "removed" if holder is None else (f"taken over by pid {holder.get('pid')} on host "
                                                    f"{holder.get('host')} since {holder.get('started_utc', '?')}")
            raise ShardLocked(f"the lock of shard {self.shard} of {self.out} ({self.path}) was {who}; this run stops "
                              "without writing more: another process writes this shard now")

    def check_lease(self) -> None:
        """fence() without reading the lock: raise ShardLocked when this holder's lease could not be renewed for
        LEASE_S - MARGIN_S, or a renewal found the lock taken over or removed. No I/O: a Ray driver calls it at
        every poll and stops its job (its actors' commits are fenced by the run token, not by this lock)."""
        if self.token is None:
            return
        if self._lost:
            raise ShardLocked(f"the lock of shard {self.shard} of {self.out} ({self.path}) was taken over or removed "
                              "(found by its lease's renewal); this run stops without writing more")
        refusal = self._lease_refusal()
        if refusal is not None:
            raise ShardLocked(refusal)

    def _lease_refusal(self) -> str | None:
        age, lease_s = time.time() - self._renewed, float(self._info.get("lease_s", LEASE_S))
        if self.token is None or age <= lease_s - MARGIN_S:
            return None
        return (f"the lease of the lock of shard {self.shard} of {self.out} ({self.path}) could not be renewed for "
                f"{age:.0f} s ({self._renew_error or 'no renewal ran'}); this run stops before another host may take "
                f"the shard over (once the lease of {lease_s:.0f} s has run out): rerun to resume")

    # internals
    def _create(self) -> bool:
        token, now = uuid.uuid4().hex, time.time()
        info = {"host": socket.gethostname(), "boot_id": boot_id(), "pid": os.getpid(),
                "pid_start": _pid_start(os.getpid()), "started_utc": _utc(now),
                "token": token, "command": " ".join(sys.argv)[:500],
                "lease_s": LEASE_S, "renewed_unix": now, "renewed_utc": _utc(now)}
        if not create_file(self.path, json.dumps(info).encode()):
            holder = self._read()  # an object store's create retried after a lost answer finds its own object
            if holder is None or holder.get("token") != token:
                return False
        self.token, self._info, self._renewed = token, info, now
        _held.add(str(self.path))
        return True

    def _start_renewal(self) -> None:
        self._stop = threading.Event()
        self._renew_error, self._lost = None, False
        self._renewer = threading.Thread(target=self._renew_loop, args=(self.token, self._stop), daemon=True,
                                         name=f"vmae-fast-lease-{self.shard}")
        self._renewer.start()

    def _renew_loop(self, token: str, stop: threading.Event) -> None:
        while not stop.wait(RENEW_S):
            try:
                if not self._renew(token, stop):
                    return
            except Exception as e:  # noqa: BLE001 - tried again at the next tick; fence() refuses once too late
                self._renew_error = _one_line(e)

    def _renew(self, token: str, stop: threading.Event) -> bool:
        """Write the lease again if the lock still holds `token`; False when renewing must stop: released, the
        lock is another's (or gone), or this holder's lease is too old to be renewed safely (fence refuses)."""
        if self._lease_refusal() is not None:
            return False  # never again: another host may be taking the lock over, writing now could undo that
        now = time.time()
        data = json.dumps({**self._info, "renewed_unix": now, "renewed_utc": _utc(now)}).encode()

        def still_ours() -> bool:
            if stop.is_set():
                return False
            if not self._holds(token):
                self._lost = True
                return False
            return True

        if not backend(self.path).replace_if(self.path, data, still_ours):
            return False
        self._renewed, self._renew_error = now, None
        return True

    def _holds(self, token: str) -> bool:
        """True while the lock file holds `token`; False once it is gone or holds another; a failed read raises."""
        try:
            info = json.loads(self.path.read_text())
        except FileNotFoundError:
            return False
        except ValueError:  # not this holder's content (its own is written whole)
            return False
        return isinstance(info, dict) and info.get("token") == token

    def _read(self) -> dict | None:
        try:
            info = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) and "pid" in info else None

    def _age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except OSError:
            return 0.0

    def _expired(self, holder: dict) -> float | None:
        """Seconds since the last renewal of another host's lock whose lease ran out; None otherwise."""
        lease = _lease(holder)
        if holder.get("host") == socket.gethostname() or lease is None:
            return None
        age = time.time() - lease[0]
        return age if age > lease[1] else None

    def _stale(self, holder: dict) -> str | None:
        """Why the holder is gone (the lock may be taken over), or None while it may be writing."""
        if holder.get("host") != socket.gethostname():
            if self.break_lock:
                return "--break-lock"
            expired = self._expired(holder)
            return None if expired is None else f"its lease ran out: not renewed for {expired:.0f} s"
        if holder.get("boot_id") and holder.get("boot_id") != boot_id():
            return "the host was rebooted since"
        pid = int(holder["pid"])
        if not _alive(pid):
            return f"pid {pid} is gone"
        start = _pid_start(pid)
        if holder.get("pid_start") and start and holder["pid_start"] != start:
            return f"pid {pid} is another process now"
        if pid == os.getpid() and str(self.path) not in _held:
            return "left by an earlier call in this process"
        return None

    def _refusal(self, holder: dict) -> str:
        where = f"shard {self.shard} of {self.out}"
        since = holder.get("started_utc", "?")
        if holder.get("host") != socket.gethostname():
            locked = (f"{where} is locked by pid {holder['pid']} on host {holder.get('host')} since {since} "
                      f"({self.path})")
            lease = _lease(holder)
            if lease is None:  # written by a vmae_fast before leases
                return (f"{locked} with no lease (an older vmae-fast); if that job is gone (its node died), rerun "
                        "with --break-lock")
            renewed, lease_s = lease
            free_at = renewed + lease_s
            return (f"{locked}, its lease last renewed {_utc(renewed)}: if that job has stopped, a rerun takes the "
                    f"shard over on its own from {_utc(free_at)} (in {max(0, math.ceil(free_at - time.time()))} s); "
                    "if it is known to be gone, --break-lock takes it now")
        return (f"{where} is being written by pid {holder['pid']} on this host since {since} "
                f"({holder.get('command') or 'unknown command'}); wait for it or stop it: two writers of one shard "
                f"overwrite each other's parts")

    def _remove_if_unchanged(self, holder: dict | None) -> None:
        """Remove the stale lock file, unless another process replaced it meanwhile (then the loop looks again)."""
        backend(self.path).remove_if(self.path, lambda: self._read() == holder)
