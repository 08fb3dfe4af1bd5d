"""DecodePool on real encoded files: all files through workers, crashed/hung/killed workers replaced, bounded
queues, early exit and Ctrl-C leave no processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.videos import BAD_STAGES, check_clips
from vmae_fast.video import ClipsEvent, DecodePool, DoneEvent, ErrorEvent, ResetEvent, Sampling, VideoTask

T, S = 4, 32  # small clips keep the suite fast; the logic does not depend on the size
SAMPLING = Sampling(num_frames=T)


# --- DecodePool ------------------------------------------------------------------------------------------------------
def collect(events):
    """Per-task clips (after the last reset), terminal events, and the order check: one terminal event per task."""
    clips, final, resets = {}, {}, {}
    for ev in events:
        key = ev.task.path
        assert key not in final, f"event after the terminal event of {key}: {ev}"
        if isinstance(ev, ClipsEvent):
            clips.setdefault(key, []).extend(ev.clips)
        elif isinstance(ev, ResetEvent):
            clips[key] = []
            resets[key] = resets.get(key, 0) + 1
        else:
            final[key] = ev
    return clips, final, resets


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids, timeout=5.0):
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


@pytest.mark.parametrize("workers", [0, 2])
def test_pool_all_files(zoo, bad, workers):
    tasks = [VideoTask(p) for p, _ in zoo.values()] + [VideoTask(p) for p in bad.values()]
    with DecodePool(workers, SAMPLING, S, timeout_s=30) as pool:
        clips, final, resets = collect(pool.run(tasks))
    assert set(final) == {t.path for t in tasks} and not resets
    for _, exp in zoo.values():
        ev = final[str(exp.path)]
        assert isinstance(ev, DoneEvent) and ev.num_clips == len(clips[str(exp.path)]) and ev.decode_s > 0
        check_clips(clips[str(exp.path)], exp, SAMPLING)
    for name, path in bad.items():
        ev = final[str(path)]
        assert isinstance(ev, ErrorEvent) and ev.stage == BAD_STAGES[name] and ev.attempts == 1


@pytest.fixture()
def hook_videos(zoo, tmp_path):
    """Copies of a good video whose names trigger DecodePool test hooks (after the first clip is sent)."""
    src = zoo["h264_bframes"][0]
    names = ["vmae-test-segfault-once", "vmae-test-abort", "vmae-test-hang-once", "vmae-test-exit-once"]
    out = {}
    for n in names:
        out[n] = tmp_path / f"{n}.mp4"
        shutil.copy(src, out[n])
    return out


def test_pool_replaces_crashed_and_hung_workers(zoo, hook_videos):
    exp = zoo["h264_bframes"][1]
    good = [VideoTask(p) for p, _ in list(zoo.values())[:4]]
    tasks = [VideoTask(p) for p in hook_videos.values()] + good
    t0 = time.monotonic()
    with DecodePool(2, SAMPLING, S, timeout_s=2.0, max_attempts=2, test_hooks=True) as pool:
        clips, final, resets = collect(pool.run(tasks))
        replaced, pids = pool.replaced, pool.worker_pids()
    assert time.monotonic() - t0 < 30
    for name, path in hook_videos.items():
        key = str(path)
        assert resets[key] == 1, name
        if name.endswith("-once"):  # second attempt (PyAV) succeeds with the full, correct clip list
            assert isinstance(final[key], DoneEvent) and final[key].backend == "pyav", final[key]
            check_clips(clips[key], exp, SAMPLING)
        else:
            assert isinstance(final[key], ErrorEvent) and final[key].attempts == 2
            assert "SIGABRT" in final[key].error and final[key].stage == "decode"
    assert replaced >= 5  # segfault, abort twice, hang, exit (a loaded machine may add a slow good video)
    assert all(isinstance(final[t.path], DoneEvent) for t in good)
    assert wait_gone(pids) == []


def test_pool_hang_without_retry_is_an_error(hook_videos):
    task = VideoTask(hook_videos["vmae-test-hang-once"])
    with DecodePool(1, SAMPLING, S, timeout_s=0.5, max_attempts=1, test_hooks=True) as pool:
        _, final, resets = collect(pool.run([task]))
    ev = final[task.path]
    assert isinstance(ev, ErrorEvent) and "no progress" in ev.error and ev.attempts == 1 and not resets


def test_pool_bounded_queue(zoo):
    path, exp = zoo["h264_bframes"]
    sampling = Sampling(num_frames=2)  # 80 frames, step 4 -> 10 clips
    with DecodePool(1, sampling, S, max_pending_clips=2, timeout_s=1.0) as pool:
        events = pool.run([VideoTask(path)])
        first = next(events)
        time.sleep(2.0)  # a consumer slower than the decoder; longer than timeout_s: a full queue is not a hang
        pending = pool.pending_clips()
        rest = list(events)
    assert 1 <= pending <= 2
    clips, final, resets = collect([first, *rest])
    assert isinstance(final[str(path)], DoneEvent) and not resets
    check_clips(clips[str(path)], exp, sampling)


def test_pool_early_exit_and_interrupt_leave_no_processes(zoo):
    tasks = [VideoTask(p) for p, _ in zoo.values()] * 3
    pool = DecodePool(2, SAMPLING, S)
    events = pool.run(tasks)
    next(events)
    pids = pool.worker_pids()
    events.close()  # the consumer stops early: busy workers are killed
    pool.close()
    assert wait_gone(pids) == []
    with pytest.raises(KeyboardInterrupt), DecodePool(2, SAMPLING, S) as pool:
        for _ in pool.run(tasks):
            pids = pool.worker_pids()
            raise KeyboardInterrupt
    assert wait_gone(pids) == []


def test_pool_ctrl_c_in_subprocess(hook_videos, tmp_path):
    """SIGINT to the whole process group (what Ctrl-C does) while a worker hangs: the run ends, workers are gone."""
    script = tmp_path / "run_pool.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from vmae_fast.video import DecodePool, Sampling, VideoTask
        if __name__ == "__main__":
            with DecodePool(2, Sampling(num_frames=4), 32, timeout_s=600, test_hooks=True) as pool:
                for ev in pool.run([VideoTask({str(hook_videos["vmae-test-hang-once"])!r})]):
                    print("PIDS", *pool.worker_pids(), flush=True)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    line = proc.stdout.readline()
    assert line.startswith("PIDS"), proc.stderr.read()
    pids = [int(x) for x in line.split()[1:]]
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert wait_gone(pids) == []



def test_pool_replaces_a_worker_killed_while_idle(zoo):
    tasks = [VideoTask(p) for p, _ in list(zoo.values())[:3]]
    with DecodePool(2, SAMPLING, S) as pool:
        _, final, _ = collect(pool.run(tasks))
        assert all(isinstance(e, DoneEvent) for e in final.values())
        victim = pool.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)  # e.g. the OOM killer, between two runs
        assert wait_gone([victim]) == []
        _, final, resets = collect(pool.run(tasks))
        assert all(isinstance(e, DoneEvent) for e in final.values()) and not resets
        assert pool.replaced == 1 and victim not in pool.worker_pids()
