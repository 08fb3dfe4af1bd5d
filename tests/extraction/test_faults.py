"""The environment's faults are not the video's: retried, then the run stops (exit 75) with nothing recorded for
the video; our bugs stop it at once; --retry-errors redoes the videos with error rows.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.rows import fails_with
from vmae_fast import extract, store

REPO = Path(__file__).resolve().parents[2]



# --- 2. the environment's faults are not the video's ---------------------------------------------------------------
ENVIRONMENT_FAULTS = {"importerror": "ImportError: No module named 'av'", "memoryerror": "MemoryError",
                      "estale": "Stale file handle", "sigkill": "killed by SIGKILL"}


@pytest.mark.parametrize("workers", [1, 0])
def test_environment_faults_are_retried_then_stop_the_run_and_bugs_stop_it_at_once(tmp_path, videos, workers):
    import shutil

    from tests.helpers.pool_faults import decode_with_faults
    from vmae_fast.faults import EnvironmentFault, WorkerBug
    from vmae_fast.video import DecodePool, DoneEvent, ErrorEvent, ResetEvent, Sampling, VideoTask

    sampling = Sampling(num_frames=4)
    faults = [f for f in ENVIRONMENT_FAULTS if workers or f != "sigkill"]  # in-process, SIGKILL would kill pytest
    for fault in faults:  # a passing fault: the retry decodes the video
        path = tmp_path / f"{fault}_vmae-test-{fault}-once.mp4"
        shutil.copy(videos / "v2.mp4", path)
        with DecodePool(workers, sampling, 32, timeout_s=30, max_attempts=2, decode=decode_with_faults) as pool:
            events = list(pool.run([VideoTask(path)]))
        kinds = [type(e).__name__ for e in events]
        assert kinds[-1] == "DoneEvent" and "ResetEvent" in kinds and "ErrorEvent" not in kinds, (fault, kinds)
        assert events[-1].num_clips == 2
    for fault in faults:  # a lasting one: the run stops, no error row for the video
        path = tmp_path / f"{fault}_vmae-test-{fault}.mp4"
        shutil.copy(videos / "v2.mp4", path)
        with DecodePool(workers, sampling, 32, timeout_s=30, max_attempts=2, decode=decode_with_faults) as pool:
            seen = []
            with pytest.raises(EnvironmentFault) as e:
                seen.extend(pool.run([VideoTask(path)]))
        assert ENVIRONMENT_FAULTS[fault] in str(e.value) and path.name in str(e.value), (fault, str(e.value))
        assert "attempt 2 of 2" in str(e.value)
        assert not any(isinstance(x, (ErrorEvent, DoneEvent)) for x in seen)
    path = tmp_path / "bug_vmae-test-typeerror.mp4"  # our bug: no retry, the worker's traceback comes along
    shutil.copy(videos / "v2.mp4", path)
    with DecodePool(workers, sampling, 32, timeout_s=30, max_attempts=2, decode=decode_with_faults) as pool:
        seen = []
        with pytest.raises(WorkerBug) as e:
            seen.extend(pool.run([VideoTask(path)]))
    assert "Traceback" in str(e.value) and "in _misbehave" in str(e.value) and "TypeError: unsupported" in str(e.value)
    assert not any(isinstance(x, ResetEvent) for x in seen)


def test_an_environment_fault_stops_extract_without_an_error_row_and_the_rerun_does_the_video(tmp_path, model,
                                                                                           videos):
    import shutil

    from tests.helpers.pool_faults import decode_with_faults
    from vmae_fast.faults import EnvironmentFault

    root = tmp_path / "videos"
    shutil.copytree(videos, root)
    shutil.copy(videos / "v1.mp4", root / "w_vmae-test-estale.mp4")  # sorted after v0-v2: one worker meets it last
    out = tmp_path / "out"
    options = {"workers": 1, "batch_size": 2, "part_rows": 1, "commit_interval_s": 1e-3, "progress": False}
    with pytest.raises(EnvironmentFault, match="Stale file handle"):
        extract([root], out, model=model, decode_options={"decode": decode_with_faults}, **options)
    assert len(store.read_errors(out)) == 0  # not the video's fault: nothing recorded for it
    assert "w_vmae-test-estale.mp4" not in store.committed_video_ids(out)
    assert store.committed_video_ids(out) <= {"v0.mp4", "v1.mp4", "v2.mp4"}
    summary = extract([root], out, model=model, **options)  # the mount is back
    assert summary["videos_ok"] + summary["videos_skipped"] == 4 and summary["videos_failed"] == 0
    assert store.committed_video_ids(out) == {"v0.mp4", "v1.mp4", "v2.mp4", "w_vmae-test-estale.mp4"}


def _folder_failing_with(monkeypatch, folder: Path, error_number: int) -> None:
    """os.scandir of `folder` raises OSError(error_number); every other folder lists as usual."""
    import errno
    import os

    real = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(folder):
            raise OSError(error_number, os.strerror(error_number), os.fspath(path))
        return real(path)

    assert error_number in (errno.EIO, errno.ESTALE, errno.EACCES, errno.ENOENT)
    monkeypatch.setattr(os, "scandir", scandir)


@pytest.mark.parametrize("error_name", ["EIO", "ESTALE"])
def test_a_folder_that_fails_to_list_for_a_moment_stops_the_run_with_exit_75_and_no_error_row(
        tmp_path, model, ckpt, videos, monkeypatch, capsys, error_name):
    """Listing a folder with an error that may pass (faults.classify's environment errnos) is the environment's
    fault: the run stops (exit 75, one line), nothing is recorded for the folder, and the rerun lists it."""
    import errno
    import shutil

    from vmae_fast import cli
    from vmae_fast.faults import EnvironmentFault

    root = tmp_path / "videos"
    shutil.copytree(videos, root / "a")
    shutil.copytree(videos, root / "b")
    out = tmp_path / "out"
    options = {"workers": 0, "progress": False}
    with monkeypatch.context() as m:
        _folder_failing_with(m, root / "b", getattr(errno, error_name))
        with pytest.raises(EnvironmentFault, match=f"cannot list {root / 'b'}: OSError: "):
            extract([root], out, model=model, **options)
        assert not (out / "errors").exists() or store.read_errors(out).num_rows == 0  # no discover row for b
        code = cli.main(["extract", str(root), "-o", str(out), "--model", str(ckpt), "--workers", "0",
                         "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 75 and len(err) == 1 and "rerun the same command to resume" in err[0], err
    assert not (out / "errors").exists() and not (out / "_run.json").exists()  # stopped before OUT was prepared
    summary = extract([root], out, model=ckpt, **options)  # the file system is back: b is listed and done
    assert (summary["videos_ok"], summary["videos_failed"]) == (6, 0)
    assert store.committed_video_ids(out) == {f"{d}/v{i}.mp4" for d in "ab" for i in range(3)}


@pytest.mark.parametrize("error_name", ["EACCES", "ENOENT"])
def test_a_folder_that_cannot_be_listed_for_good_is_a_discover_error_row(tmp_path, model, videos, monkeypatch,
                                                                       error_name):
    import errno
    import shutil

    root = tmp_path / "videos"
    shutil.copytree(videos, root / "a")
    shutil.copytree(videos, root / "b")
    _folder_failing_with(monkeypatch, root / "b", getattr(errno, error_name))
    summary = extract([root], tmp_path / "out", model=model, workers=0, progress=False)
    assert (summary["videos_ok"], summary["videos_failed"]) == (3, 1)
    (row,) = store.read_errors(tmp_path / "out").to_pylist()
    assert (row["video_id"], row["path"], row["stage"], row["attempts"]) == ("b", str(root / "b"), "discover", 1)
    assert row["error"].startswith("PermissionError" if error_name == "EACCES" else "FileNotFoundError")


def test_decoders_tell_a_failing_file_system_from_a_bad_file(tmp_path, videos, monkeypatch):
    import errno

    import av

    from vmae_fast.faults import EnvironmentFault
    from vmae_fast.video import Sampling, VideoError, VideoTask, decode_clips
    from vmae_fast.video.pyav_reader import PyAVReader

    sampling = Sampling(num_frames=4)

    def decode(path):
        return list(decode_clips(VideoTask(path), sampling, 32))

    with pytest.raises(EnvironmentFault, match="gone with its folder"):  # the mount the folder was on dropped
        decode(tmp_path / "mnt" / "x.mp4")
    with pytest.raises(VideoError, match="file not found"):  # the folder is there, the file is not: the video's
        decode(tmp_path / "x.mp4")
    with monkeypatch.context() as m:  # an NFS soft mount that times out
        m.setattr(av, "open", fails_with(OSError(errno.ETIMEDOUT, "Connection timed out")))
        with pytest.raises(EnvironmentFault, match="cannot open .*Connection timed out"):
            decode(videos / "v2.mp4")
    with monkeypatch.context() as m:  # a read that fails mid-way with EIO: the run's problem, not a 'decode' error
        m.setattr(PyAVReader, "frames", fails_with(OSError(errno.EIO, "Input/output error")))
        with pytest.raises(OSError, match="Input/output error"):
            decode(videos / "v2.mp4")
    with monkeypatch.context() as m:  # a bug of ours in the decode path is not the video's either
        m.setattr(PyAVReader, "frames", fails_with(TypeError("'NoneType' object is not subscriptable")))
        with pytest.raises(TypeError):
            decode(videos / "v2.mp4")
    with pytest.raises(VideoError, match="open"):  # and a file that is not a video stays the video's error
        (tmp_path / "junk.mp4").write_bytes(b"\x00junk" * 100)
        decode(tmp_path / "junk.mp4")


def test_retry_errors_redoes_failed_videos_and_the_error_rows_they_replace_no_longer_count(tmp_path, model, ckpt,
                                                                                         videos):
    import shutil

    import pyarrow.dataset as ds

    from tests.helpers.pool_faults import decode_with_faults
    from vmae_fast import cli

    root = tmp_path / "videos"
    shutil.copytree(videos, root)
    (root / "junk.mp4").write_bytes(b"\x00not a video" * 64)  # the video's own fault, for good
    shutil.copy(videos / "v2.mp4", root / "flaky_vmae-test-abort.mp4")  # its decoder crashes (this run only)
    out = tmp_path / "out"
    options = {"workers": 1, "batch_size": 2, "progress": False}
    first = extract([root], out, model=model, decode_options={"decode": decode_with_faults}, **options)
    assert (first["videos_ok"], first["videos_failed"]) == (3, 2)
    again = extract([root], out, model=model, **options)  # a plain rerun: error rows count as done
    assert (again["videos_skipped"], again["videos_ok"]) == (5, 0)

    retry = extract([root], out, model=model, retry_errors=True, **options)
    assert (retry["errors_retried"], retry["videos_ok"], retry["videos_failed"], retry["videos_skipped"]) == \
        (2, 1, 1, 3)
    errors = store.read_errors(out).to_pylist()
    assert [e["video_id"] for e in errors] == ["junk.mp4"]  # the newest outcome only: flaky's old row is gone
    assert "flaky_vmae-test-abort.mp4" in {r["video_id"] for r in store.read_clips(out).to_pylist()}
    # what Parquet readers see: a dataset of OUT/errors (and an errors/*.parquet glob) has the newest rows only;
    # the replaced rows are kept, out of the way, under errors/_retried/
    assert ds.dataset(out / "errors", format="parquet").to_table().column("video_id").to_pylist() == ["junk.mp4"]
    retired = sorted((out / "errors" / "_retried").rglob("*.parquet"))
    assert sum(len(ds.dataset(p, format="parquet").to_table()) for p in retired) == 2
    assert len(store.committed_video_ids(out)) == 5

    code = cli.main(["extract", str(root), "-o", str(out), "--model", str(ckpt), "--workers", "0", "--no-progress",
                     "--retry-errors"])  # the CLI flag: junk is tried once more and fails once more
    assert code == 0 and [e["video_id"] for e in store.read_errors(out).to_pylist()] == ["junk.mp4"]
