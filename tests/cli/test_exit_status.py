"""The CLI's error contract: the user's problems and the environment's in one line, our bugs with their traceback,
and the exit status of each (every subcommand's --help lists them).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from tests.helpers.rows import fails_with
from vmae_fast import cli, faults, store
from vmae_fast.extraction import local_engine
from vmae_fast.video import DecodePool, DoneEvent

REPO = Path(__file__).resolve().parents[2]



# --- 6. errors: the user's in one line, our bugs with a traceback -----------------------------------------------------

@pytest.mark.parametrize("error", [TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'"),
                                   KeyError("embedding"), RuntimeError("shapes (3,) and (4,) mismatch"),
                                   AttributeError("'NoneType' object has no attribute 'clips'")])
def test_cli_an_unexpected_error_is_a_bug_report_with_its_traceback(tmp_path, monkeypatch, capsys, videos, error):
    from vmae_fast import cli

    monkeypatch.setattr(local_engine, "resolve_shard", fails_with(error))
    code = cli.main(["extract", str(videos), "-o", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback (most recent call last)" in err and f"{type(error).__name__}: " in err
    assert "in fails_with" not in err and "in fail" in err  # the frame that raised is shown
    assert err.strip().splitlines()[-1].startswith("vmae-fast extract: this is a bug in vmae-fast")
    assert "please report it" in err


def test_cli_the_users_problems_and_the_environments_are_one_line(tmp_path, monkeypatch, capsys, videos, ckpt):
    from vmae_fast import cli, faults

    (tmp_path / "file").write_text("x")
    cases = [  # (arguments, injected error or None, exit status, text of the one line)
        (["-o", str(tmp_path / "file" / "out")], None, 2, "file"),  # unwritable output: under a plain file
        (["-o", str(tmp_path / "file")], None, 2, f"output {tmp_path / 'file'} exists and is not a directory"),
        (["-o", str(tmp_path / "o1")], faults.GPUOutOfMemory("cuda:0 ran out of memory with one clip per batch"), 2,
         "one clip per batch"),
        (["-o", str(tmp_path / "o2")], faults.ShardLocked("shard 0 of o2 is being written by pid 7"), 2, "pid 7"),
        (["-o", str(tmp_path / "o3")], faults.EnvironmentFault("decode worker killed by SIGKILL on v1.mp4"), 75,
         "SIGKILL on v1.mp4; videos finished before it are committed: rerun the same command to resume"),
        (["-o", str(tmp_path / "o4")], faults.MissingDependency("decoder backend 'decord' needs decord"), 2,
         "needs decord"),
        (["-o", str(tmp_path / "o5")], PermissionError(13, "Permission denied", "/data/out"), 2, "Permission denied"),
    ]
    for args, error, status, text in cases:
        with monkeypatch.context() as m:
            if error is not None:
                m.setattr(local_engine, "resolve_shard", fails_with(error))
            code = cli.main(["extract", str(videos), "--model", str(ckpt), "--workers", "0", "--no-progress", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == status and len(err) == 1 and text in err[0], (args, error, code, err)


def test_cli_break_lock_takes_another_hosts_lock(tmp_path, capsys, ckpt, videos, monkeypatch):
    """A lock of another host without a lease needs --break-lock; one whose lease ran out is taken over by a plain
    rerun."""
    import time

    from vmae_fast import cli
    from vmae_fast.store import lock as shard_lock

    out = tmp_path / "out"
    (out / "_locks").mkdir(parents=True)
    (out / "_locks" / "shard-00000.lock").write_text(json.dumps(
        {"host": "gpu-node-3", "boot_id": "b", "pid": 77, "pid_start": "5", "started_utc": "2026-12-01T08:00:00Z",
         "token": "t", "command": "vmae-fast extract ..."}))
    args = ["extract", str(videos), "-o", str(out), "--model", str(ckpt), "--workers", "0", "--no-progress"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gpu-node-3" in err[0] and "--break-lock" in err[0]
    assert cli.main([*args, "--break-lock"]) == 0
    assert len(store.read_clips(out)) == 4 and not (out / "_locks" / "shard-00000.lock").exists()
    monkeypatch.setattr(shard_lock, "SETTLE_S", 0.05)
    (out / "_locks" / "shard-00000.lock").write_text(json.dumps(
        {"host": "gpu-node-3", "pid": 77, "started_utc": "2026-12-01T08:00:00Z", "token": "t", "lease_s": 120.0,
         "renewed_unix": time.time() - 121}))
    assert cli.main(args) == 0, capsys.readouterr().err
    assert len(store.read_clips(out)) == 4 and not (out / "_locks" / "shard-00000.lock").exists()


def test_inputs_without_a_video_are_said_to_be_so(tmp_path, capsys, ckpt):
    """A folder with no video in it (a typo'd path that exists, files of other kinds) is nothing to do, exit 0, and
    the summary says so in words; a run that found videos, even all done already, does not."""
    from vmae_fast import cli

    empty = tmp_path / "docs"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a video")
    args = ["extract", str(empty), "-o", str(tmp_path / "out"), "--model", str(ckpt), "--workers", "0",
            "--no-progress"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "0 videos in shard" in printed and "note: the inputs hold no video" in printed, printed
    assert store.read_errors(tmp_path / "out").num_rows == 0 and store.read_clips(tmp_path / "out").num_rows == 0
    with pytest.raises(faults.MissingFile, match="is not an output of `vmae-fast extract`"):
        store.read_errors(empty)  # not an output: as the other readers say, not 'no errors'


def test_extract_into_a_pipe_whose_reader_left_exits_0(tmp_path, ckpt, videos):
    """`vmae-fast extract ... | head -1`: the summary cannot be written, but the run is done and committed; that is
    neither an environment fault (75, 'rerun the same command') nor our bug."""
    out = tmp_path / "out"
    read, write = os.pipe()
    os.close(read)  # the reader has left before the summary: writing it fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", "vmae_fast.cli", "extract", str(videos), "-o", str(out), "--model",
                               str(ckpt), "--workers", "0", "--no-progress"], stdout=write, stderr=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, text=True, timeout=300)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert len(store.read_clips(out)) == 4 and len(store.read_videos(out)) == 3


def assert_bug_report(err: str, error_type: str, text: str) -> None:
    """err is our bug's report: the traceback ending in `error_type: text`, then the one line asking for a report."""
    assert "Traceback (most recent call last)" in err and f"{error_type}: {text}" in err, err
    assert err.strip().splitlines()[-1].startswith("vmae-fast extract: this is a bug in vmae-fast"), err


# --- whose fault: a plain ValueError, OSError or ImportError says nothing of the user's mistake -----------------------
@pytest.mark.parametrize("error", [ValueError("operands could not be broadcast together with shapes (3,) (4,)"),
                                   OSError(errno.EBADF, "Bad file descriptor"),
                                   ImportError("cannot import name 'plan_clip' from 'vmae_fast.video'")],
                         ids=["ValueError", "OSError-EBADF", "ImportError"])
def test_a_plain_value_os_or_import_error_is_our_bug_with_its_traceback(tmp_path, monkeypatch, capsys, videos, error):
    monkeypatch.setattr(local_engine, "resolve_shard", fails_with(error))
    code = cli.main(["extract", str(videos), "-o", str(tmp_path / "out"), "--no-progress"])
    assert code == 1
    assert_bug_report(capsys.readouterr().err, type(error).__name__, str(error))


def test_a_bug_while_loading_a_checkpoint_keeps_its_traceback(tmp_path, monkeypatch, capsys, videos, ckpt):
    """load_model used to turn any exception into 'cannot load model ...' (exit 2, no traceback)."""
    from vmae_fast.checkpoint import load

    bug = ValueError("shape '[2, 64]' is invalid for input of size 96")
    monkeypatch.setattr(load, "_assemble", fails_with(bug))
    code = cli.main(["extract", str(videos), "-o", str(tmp_path / "out"), "--model", str(ckpt), "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert_bug_report(err, "ValueError", str(bug))
    assert "in load_model" in err and "cannot load model" not in err
    assert not (tmp_path / "out").exists()


def test_the_users_model_mistakes_are_one_line_naming_what(tmp_path, capsys, videos, ckpt):
    """Where load_model knows the user's mistake (a missing file, missing or mis-shaped keys, a config.json or a
    weights file that cannot be read), the CLI prints one line naming it, from `extract` and from `info`."""
    weights = load_file(ckpt / "model.safetensors")
    broken = {}
    key = "videomae.encoder.layer.1.output.dense.bias"
    for name, change in (("missing", lambda w: {k: v for k, v in w.items() if k != key}),
                         ("misshaped", lambda w: {k: (v[:3] if k == key else v) for k, v in w.items()})):
        shutil.copytree(ckpt, tmp_path / name)
        save_file(change(weights), tmp_path / name / "model.safetensors")
        broken[name] = tmp_path / name
    shutil.copytree(ckpt, tmp_path / "config")
    (tmp_path / "config" / "config.json").write_text('{"model_type": "videomae", ')
    shutil.copytree(ckpt, tmp_path / "truncated")
    (tmp_path / "truncated" / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes()[:100])
    cases = [(tmp_path / "nothing", "is not a file, a directory"), (broken["missing"], "missing keys: "),
             (broken["misshaped"], "mis-shaped keys: "), (tmp_path / "config", "config.json is not valid JSON"),
             (tmp_path / "truncated", "as safetensors")]
    for model, words in cases:
        for args in (["extract", str(videos), "-o", str(tmp_path / "out"), "--model", str(model), "--no-progress"],
                     ["info", str(model)]):
            code = cli.main(args)
            err = capsys.readouterr().err.strip().splitlines()
            assert code == 2 and len(err) == 1 and words in err[0], (args, code, err)
            assert args[0] != "extract" or f"cannot load model {str(model)!r}" in err[0]
    assert not (tmp_path / "out").exists()


# --- an inconsistency of ours stops the run with its traceback and records nothing for the video ----------------------
class MiscountingPool(DecodePool):
    """A pool whose DoneEvent of v1.mp4 counts one clip more than it sent (a bug of the pool, as it were)."""

    def run(self, tasks):
        for event in super().run(tasks):
            if isinstance(event, DoneEvent) and event.task.video_id == "v1.mp4":
                event = dataclasses.replace(event, num_clips=event.num_clips + 1)
            yield event


def test_a_decoder_inconsistency_exits_1_with_its_traceback_and_no_error_row(tmp_path, monkeypatch, capsys, videos,
                                                                           ckpt):
    out = tmp_path / "out"
    args = ["extract", str(videos), "-o", str(out), "--model", str(ckpt), "--workers", "0", "--batch-size", "1",
            "--no-progress"]
    with monkeypatch.context() as m:
        m.setattr(local_engine, "DecodePool", MiscountingPool)
        assert cli.main(args) == 1
    assert_bug_report(capsys.readouterr().err, "InternalError", "the decoder reported 2 clips (views) of 'v1.mp4'")
    assert store.read_errors(out).num_rows == 0  # never the video's error row (was: stage "sample")
    assert store.committed_video_ids(out) == {"v0.mp4"}  # finished before it: committed on the way out
    assert cli.main(args) == 0  # the rerun does the rest
    assert store.committed_video_ids(out) == {"v0.mp4", "v1.mp4", "v2.mp4"} and store.read_errors(out).num_rows == 0


# --- exit statuses in every subcommand's --help -----------------------------------------------------------------------
def test_every_subcommands_help_lists_its_exit_statuses(capsys):
    commands = cli.build_parser()._subparsers._group_actions[0].choices
    assert {"info", "extract", "labels", "index", "search", "serve", "dedup", "demo"} <= set(commands)
    for command in commands:
        with pytest.raises(SystemExit) as e:
            cli.main([command, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        statuses = text[text.index("exit status:"):]
        codes = [int(line.split()[0]) for line in statuses.splitlines()[1:] if line[:2] == "  " and line[2] != " "]
        want = {"extract": [0, 1, 2, 75, 130, 143], "index": [0, 1, 2, 3, 75, 130], "serve": [0, 1, 2, 75, 130, 143]}
        assert codes == want.get(command, [0, 1, 2, 75, 130]), (command, statuses)
    assert "recall is below --target-recall" in cli._exit_help("index")
    assert "finished videos are committed" in cli._exit_help("extract")
