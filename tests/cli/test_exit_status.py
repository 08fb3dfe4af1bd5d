"""The CLI's error contract: the user's problems and the environment's in one line, our bugs with their traceback,
and the exit status of each.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.rows import fails_with
from vmae_fast import store
from vmae_fast.extraction import local_engine

REPO = Path(__file__).resolve().parents[2]



# --- 6. errors: the user's in one line, our bugs with a traceback ---------------------------------------------------

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


def test_cli_break_lock_takes_another_hosts_lock(tmp_path, capsys, ckpt, videos):
    from vmae_fast import cli

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
