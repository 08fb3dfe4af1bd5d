"""One writer per shard: an exclusive lock file OUT/_locks/shard-<i>.lock, taken before a run touches OUT.

Two processes writing the same shard (a requeued SLURM job beside a rerun) would compute the same next part number
and replace each other's parts: lost and duplicated rows. The lock file is created only if absent
(layout.create_file: O_CREAT | O_EXCL on a local folder, atomic on local file systems and NFSv3+; a conditional
create on an object store, S3 If-None-Match: *, GCS ifGenerationMatch=0, Azure If-None-Match: *) and holds who took
it: host, boot id, pid, the pid's start time, when, the command, a random token. A process that finds the file:

- same host, and its holder is dead (no such pid, the pid now belongs to a younger process, or the host has been
  rebooted since): the lock is stale and taken over. The file is removed only if it still holds the stale content
  (local: under a short flock(2) guard, so of several processes racing for a stale lock exactly one wins; object
  store: checked then deleted, see fence), then created again only if absent.
- same host, holder alive: ShardLocked (one line, exit 2), naming the pid and the command.
- another host: its liveness cannot be checked from here; ShardLocked names the host, pid and time and says
  `--break-lock` (break_lock=True) takes it over when that job is known to be gone.

The token is the fencing token: the writer checks before each commit that the lock file still holds it (fence, the
store writer's before_commit hook), so a process whose lock was taken over (--break-lock of a job that was not
gone, or the check-then-delete race of an object store) stops before writing instead of writing beside the new
holder.

"_locks" starts with "_", so Parquet readers (pyarrow datasets, Spark) skip it, and `*.parquet` globs never see it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path

from ..faults import EnvironmentFault, OutputNotADirectory, ShardLocked
from .layout import create_file, lock_path
from .storage import backend, out_path

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


class ShardLock:
    """with ShardLock(out, shard): ... holds OUT/_locks/shard-<shard>.lock; acquire() raises ShardLocked."""

    def __init__(self, out: str | os.PathLike, shard: int, *, break_lock: bool = False):
        self.out, self.shard, self.break_lock = out_path(out), int(shard), break_lock
        self.path = lock_path(self.out, self.shard)
        self.token: str | None = None

    def __enter__(self) -> ShardLock:  # noqa: PYI034
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> ShardLock:
        if self.out.exists() and not self.out.is_dir():  # before the mkdir below, whose ENOTDIR names OUT/_locks
            raise OutputNotADirectory(f"output {self.out} exists and is not a directory")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(200):
            if self._create():
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
            self._remove_if_unchanged(holder)
        raise ShardLocked(f"could not take {self.path}: other processes keep taking it")

    def release(self) -> None:
        """Remove the lock file if it is still this object's (idempotent). A store that does not answer leaves the
        file (the release runs on the way out of a run that failed, often for that very reason): the next run on
        this host finds its holder dead and takes it over; elsewhere, --break-lock."""
        if self.token is None:
            return
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

    # internals
    def _create(self) -> bool:
        token = uuid.uuid4().hex
        info = {"host": socket.gethostname(), "boot_id": boot_id(), "pid": os.getpid(),
                "pid_start": _pid_start(os.getpid()), "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "token": token, "command": " ".join(sys.argv)[:500]}
        if not create_file(self.path, json.dumps(info).encode()):
            holder = self._read()  # an object store's create retried after a lost answer finds its own object
            if holder is None or holder.get("token") != token:
                return False
        self.token = token
        _held.add(str(self.path))
        return True

    def fence(self) -> None:
        """Raise ShardLocked unless the lock file still holds this object's token: called before every commit (the
        writer's before_commit), so a writer whose lock was taken over writes nothing more."""
        holder = self._read()
        if self.token is None or holder is None or holder.get("token") != self.token:
            who = "removed" if holder is None else (f"taken over by pid {holder.get('pid')} on host "
                                                    f"{holder.get('host')} since {holder.get('started_utc', '?')}")
            raise ShardLocked(f"the lock of shard {self.shard} of {self.out} ({self.path}) was {who}; this run stops "
                              "without writing more: another process writes this shard now")

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

    def _stale(self, holder: dict) -> str | None:
        """Why the holder is gone (the lock may be taken over), or None while it may be writing."""
        if holder.get("host") != socket.gethostname():
            return "--break-lock" if self.break_lock else None
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
            return (f"{where} is locked by pid {holder['pid']} on host {holder.get('host')} since {since} "
                    f"({self.path}); if that job is gone (its node died), rerun with --break-lock")
        return (f"{where} is being written by pid {holder['pid']} on this host since {since} "
                f"({holder.get('command') or 'unknown command'}); wait for it or stop it: two writers of one shard "
                f"overwrite each other's parts")

    def _remove_if_unchanged(self, holder: dict | None) -> None:
        """Remove the stale lock file, unless another process replaced it meanwhile (then the loop looks again)."""
        backend(self.path).remove_if(self.path, lambda: self._read() == holder)
