"""DecodePool on real encoded files: all files through workers, crashed/hung/killed workers replaced, bounded
memory, the shared-memory slots (zero-copy views, released and reclaimed), early exit and Ctrl-C leave no
processes and no shared memory. Faults come from decode functions in tests/helpers/pool_faults.py."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.pool_faults import decode_own_arrays, decode_with_faults, decode_wrong_shape
from tests.helpers.videos import BAD_STAGES, check_clips
from vmae_fast.video import ClipsEvent, DecodePool, DoneEvent, ErrorEvent, ResetEvent, Sampling, VideoTask
from vmae_fast.video.shm import NAME as RING_NAME

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
        assert (ev.decode_cpu_s is None) if workers == 0 else (0 < ev.decode_cpu_s)
        check_clips(clips[str(exp.path)], exp, SAMPLING)
    for name, path in bad.items():
        ev = final[str(path)]
        assert isinstance(ev, ErrorEvent) and ev.stage == BAD_STAGES[name] and ev.attempts == 1


def ours_in_dev_shm() -> list[str]:
    return [n for n in os.listdir("/dev/shm") if "vmae" in n] if os.path.isdir("/dev/shm") else []


def mapped(pid: int, needle: str) -> list[str]:
    """Lines of /proc/<pid>/maps that mention needle ([] when the process is gone)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return [line.strip() for line in f if needle in line]
    except (FileNotFoundError, ProcessLookupError):
        return []


@pytest.fixture()
def hook_videos(zoo, tmp_path):
    """Copies of a good video whose names make decode_with_faults misbehave (after the first clip is sent)."""
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
    with DecodePool(2, SAMPLING, S, timeout_s=2.0, max_attempts=2, decode=decode_with_faults) as pool:
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
    with DecodePool(1, SAMPLING, S, timeout_s=0.5, max_attempts=1, decode=decode_with_faults) as pool:
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
        pending, owners = pool.pending_clips(), pool.slot_owners()
        rest = list(events)
        replaced = pool.replaced
    # 2 slots: clip 0 was received (copied out, its slot free again, granted when the consumer asks next) and
    # clip 1 waits in the pipe; the worker waits for a slot
    assert pending == 1 and owners == {"free": 1, "workers": 1, "consumer": 0}
    assert replaced == 0
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
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from tests.helpers.pool_faults import decode_with_faults
        from vmae_fast.video import DecodePool, Sampling, VideoTask
        if __name__ == "__main__":
            with DecodePool(2, Sampling(num_frames=4), 32, timeout_s=600, decode=decode_with_faults) as pool:
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
    assert ours_in_dev_shm() == []



def _run_script(path: Path, body: str) -> subprocess.CompletedProcess:
    path.write_text(textwrap.dedent(body))
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120, check=False)


def test_pool_workers_do_not_run_an_unguarded_main_script(zoo, tmp_path):
    """A script without `if __name__ == "__main__":` (the README's example saved as a file): workers start without
    running it again (forkserver/spawn children otherwise import the parent's main module, and an unguarded one
    starts the pool again inside each worker, which dies). The script runs once; every video is decoded."""
    videos = [str(p) for p, _ in list(zoo.values())[:2]]
    result = _run_script(tmp_path / "unguarded.py", f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        print("MAIN RAN", flush=True)
        from vmae_fast.video import DecodePool, DoneEvent, Sampling, VideoTask
        with DecodePool(2, Sampling(num_frames=4), 32) as pool:
            done = [ev for ev in pool.run([VideoTask(p) for p in {videos!r}]) if isinstance(ev, DoneEvent)]
        print("DONE", len(done), sum(ev.num_clips for ev in done) > 0, flush=True)
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("MAIN RAN") == 1, result.stdout
    assert "DONE 2 True" in result.stdout


def test_pool_workers_import_the_main_script_that_holds_the_decode_function(zoo, tmp_path):
    """A decode function defined in the (guarded) main script: the workers import that script to find it (the one
    case they still do), and run it."""
    videos = [str(p) for p, _ in list(zoo.values())[:2]]
    result = _run_script(tmp_path / "own_decode.py", f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from vmae_fast.video import DecodePool, DoneEvent, Sampling, VideoTask, decode_clips

        def my_decode(task, sampling, image_size, backend, **kwargs):
            for clip in decode_clips(task, sampling, image_size, backend, **kwargs):
                yield clip

        if __name__ == "__main__":
            with DecodePool(2, Sampling(num_frames=4), 32, decode=my_decode) as pool:
                done = [ev for ev in pool.run([VideoTask(p) for p in {videos!r}]) if isinstance(ev, DoneEvent)]
            print("DONE", len(done), sum(ev.num_clips for ev in done) > 0, flush=True)
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DONE 2 True" in result.stdout


def test_pool_workers_die_with_a_main_process_killed_by_sigkill(hook_videos, tmp_path):
    """kill -9 of the main process alone (not its group) while a worker hangs in its decoder: no worker outlives it."""
    script = tmp_path / "run_pool.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from tests.helpers.pool_faults import decode_with_faults
        from vmae_fast.video import DecodePool, Sampling, VideoTask
        if __name__ == "__main__":
            tasks = [VideoTask({str(hook_videos["vmae-test-hang-once"])!r}),
            VideoTask({str(hook_videos["vmae-test-abort"])!r})]
            with DecodePool(2, Sampling(num_frames=4), 32, timeout_s=600, decode=decode_with_faults) as pool:
                for ev in pool.run(tasks):
                    print("PIDS", *pool.worker_pids(), flush=True)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("PIDS"), proc.stderr.read()
        pids = [int(x) for x in line.split()[1:]]
        time.sleep(0.5)  # the hanging worker is inside its decoder now
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
    finally:
        proc.kill()
    assert wait_gone(pids, timeout=10) == []
    assert ours_in_dev_shm() == []


def test_pool_replaces_a_worker_killed_while_idle(zoo):
    tasks = [VideoTask(p) for p, _ in list(zoo.values())[:3]]
    with DecodePool(2, SAMPLING, S) as pool:
        _, final, _ = collect(pool.run(tasks))
        assert all(isinstance(e, DoneEvent) for e in final.values())
        victim = pool.worker_pids()[0]
        assert alive(victim), "an idle worker exited on its own"  # (what an earlier ProcessLookupError meant)
        os.kill(victim, signal.SIGKILL)  # e.g. the OOM killer, between two runs
        assert wait_gone([victim]) == []
        _, final, resets = collect(pool.run(tasks))
        assert all(isinstance(e, DoneEvent) for e in final.values()) and not resets
        assert pool.replaced == 1 and victim not in pool.worker_pids()


# --- shared-memory transport -------------------------------------------------------------------------------------
def frozen(clips):
    """Copies of zero-copy clips, to check after their slots went back."""
    return [dataclasses.replace(c, frames=c.frames.copy()) for c in clips]


def test_pool_zero_copy_clips_are_views_of_shared_slots(zoo):
    tasks = [VideoTask(p) for p, _ in zoo.values()]
    with DecodePool(2, SAMPLING, S, timeout_s=30, zero_copy=True) as pool:
        held: dict[str, list] = {}
        kept: dict[str, list] = {}
        for ev in pool.run(tasks):
            pids = pool.worker_pids()
            if isinstance(ev, ClipsEvent):
                for clip in ev.clips:
                    assert not clip.frames.flags.owndata and clip.frames.flags.writeable
                held.setdefault(ev.task.path, []).extend(ev.clips)
            elif isinstance(ev, DoneEvent):  # the consumer keeps a video's views until it is complete
                kept[ev.task.path] = frozen(held[ev.task.path])
                pool.release(held.pop(ev.task.path))
        assert pool.held_clips() == 0 and not held
        # frames were written once, in the workers, into one block every worker maps
        assert all(mapped(pid, f"memfd:{RING_NAME}") for pid in pids)
        # no named segment or semaphore (multiprocessing's RawValue arena is unlinked the moment it is made)
        assert [m for pid in pids for m in mapped(pid, "/dev/shm/") if not m.endswith("(deleted)")] == []
        clip = kept[tasks[0].path][0]
        with pytest.raises(ValueError, match="released twice"):
            pool.release([dataclasses.replace(clip, frames=pool._ring.slot(0))])
    for _, exp in zoo.values():
        check_clips(kept[str(exp.path)], exp, SAMPLING)
    assert mapped(os.getpid(), f"memfd:{RING_NAME}") == []  # close() unmapped the block
    assert ours_in_dev_shm() == []


def test_pool_waits_for_released_slots_without_calling_it_a_hang(zoo):
    """Iterated from a thread (as extract does) while the consumer holds every slot for longer than timeout_s."""
    path, exp = zoo["h264_bframes"]
    sampling = Sampling(num_frames=2)  # 10 clips
    events: queue.Queue = queue.Queue()
    with DecodePool(1, sampling, S, max_pending_clips=2, zero_copy=True, slots=4, timeout_s=0.5) as pool:
        thread = threading.Thread(
            target=lambda: [events.put(e) for e in pool.run([VideoTask(path)])] + [events.put(None)])
        thread.start()
        held, kept, final = [], [], []
        while len(held) < 4:
            ev = events.get(timeout=30)
            held.extend(ev.clips)
        kept.extend(frozen(held))
        time.sleep(1.5)  # the worker has no slot to decode into: it waits, it is not hung
        assert pool.slot_owners() == {"free": 0, "workers": 0, "consumer": 4} and pool.replaced == 0
        assert [c.frames.tobytes() for c in held] == [c.frames.tobytes() for c in kept]  # nobody wrote over them
        pool.release(held)
        while (ev := events.get(timeout=30)) is not None:
            if isinstance(ev, ClipsEvent):
                kept.extend(frozen(ev.clips))
                pool.release(ev.clips)
            else:
                final.append(ev)
        thread.join()
        assert pool.replaced == 0 and pool.slot_owners()["consumer"] == 0
    assert isinstance(final[0], DoneEvent)
    check_clips(kept, exp, sampling)


def test_pool_reclaims_the_slots_of_a_killed_worker(zoo, hook_videos):
    """A worker SIGKILLed while it holds granted (and filled, unsent) slots: they are free again, every retry and
    later video still gets slots, and every slot is accounted for at the end."""
    exp = zoo["h264_bframes"][1]
    hang = VideoTask(hook_videos["vmae-test-hang-once"])
    good = [VideoTask(p) for p, _ in list(zoo.values())[:3]]
    with DecodePool(
        1, SAMPLING, S, max_pending_clips=3, zero_copy=True, timeout_s=60, decode=decode_with_faults
    ) as pool:
        assert pool.slots == 6
        events = pool.run([hang, *good])
        first = next(events)  # the hanging worker sent one clip and holds its other granted slots
        assert isinstance(first, ClipsEvent) and pool.slot_owners()["workers"] >= 2
        os.kill(pool.worker_pids()[0], signal.SIGKILL)
        seen = [first]
        for ev in events:  # the consumer copies and releases as it goes (holding all would starve the workers)
            if isinstance(ev, ClipsEvent):
                seen.append(ClipsEvent(ev.task, frozen(ev.clips)))
                pool.release(ev.clips)
            else:
                seen.append(ev)
        assert pool.slot_owners()["consumer"] == 1  # the first attempt's clip, not released yet
        pool.release(first.clips)
        owners = pool.slot_owners()
        assert owners == {"free": 6 - owners["workers"], "workers": owners["workers"], "consumer": 0}
        assert owners["workers"] <= 3
    clips, final, resets = collect(seen)
    check_clips(clips[hang.path], exp, SAMPLING)  # the retry, decoded into reclaimed slots
    assert resets == {hang.path: 1} and final[hang.path].backend == "pyav"  # retried after the kill
    assert all(isinstance(final[t.path], DoneEvent) for t in [hang, *good])


def test_pool_copies_frames_of_decoders_that_ignore_the_slots_and_rejects_wrong_shapes(zoo):
    path, exp = zoo["h264_bframes"]
    with DecodePool(1, SAMPLING, S, decode=decode_own_arrays) as pool:
        clips, final, _ = collect(pool.run([VideoTask(path)]))
    assert isinstance(final[str(path)], DoneEvent)
    check_clips(clips[str(path)], exp, SAMPLING)
    tasks = [VideoTask(p) for p, _ in list(zoo.values())[:2]]
    with DecodePool(1, SAMPLING, S, decode=decode_wrong_shape) as pool:
        _, final, _ = collect(pool.run(tasks))
        assert pool.replaced == 0  # the worker lives on
    for t in tasks:
        ev = final[t.path]
        assert isinstance(ev, ErrorEvent) and ev.stage == "decode" and f"expected uint8(4, {S}, {S}, 3)" in ev.error


def test_pool_nice_workers(zoo):
    with DecodePool(1, SAMPLING, S, nice=10) as pool:
        _, final, _ = collect(pool.run([VideoTask(zoo["h264_bframes"][0])]))
        niceness = os.getpriority(os.PRIO_PROCESS, pool.worker_pids()[0]) - os.getpriority(os.PRIO_PROCESS, 0)
    assert niceness == min(10, 19 - os.getpriority(os.PRIO_PROCESS, 0)) and isinstance(*final.values(), DoneEvent)
    with pytest.raises(ValueError, match="nice must be"):
        DecodePool(1, SAMPLING, S, nice=20)


def test_pool_decode_must_be_importable_by_workers():
    with pytest.raises(TypeError, match="module-level function"):
        DecodePool(1, SAMPLING, S, decode=lambda *a, **k: iter(()))
    DecodePool(0, SAMPLING, S, decode=lambda *a, **k: iter(()))  # in-process: anything callable
    with pytest.raises(ValueError, match="slots must be"):
        DecodePool(1, SAMPLING, S, slots=0)
    assert DecodePool(2, SAMPLING, S, max_pending_clips=5).slots == 6  # 2 workers x ceil(5 / 2)


def test_bench_transport_smoke(tmp_path):
    """tools/bench_transport.py at a tiny size: runs, and every clip the consumer got was the one its worker wrote."""
    out = tmp_path / "transport.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve().parents[2] / "tools" / "bench_transport.py"),
            "--workers",
            "1,2",
            "--clips",
            "60",
            "--clips-per-task",
            "10",
            "--num-frames",
            "4",
            "--size",
            "32",
            "--batch-size",
            "8",
            "--rounds",
            "1",
            "--json",
            str(out),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    best = json.loads(out.read_text())["best"]
    assert {w: (r["clips"], r["wrong_clips"]) for w, r in best.items()} == {"1": (60, 0), "2": (60, 0)}
