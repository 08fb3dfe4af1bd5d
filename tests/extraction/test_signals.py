"""Ctrl-C and SIGTERM lose or duplicate nothing: a signal at any moment, then a resume, equals an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.rows import ATOL, clip_rows
from tests.helpers.videos import make_video
from vmae_fast import store

REPO = Path(__file__).resolve().parents[2]



# --- 4. Ctrl-C and SIGTERM lose or duplicate nothing ---------------------------------------------------------------
CLI_RUN = ["--workers", "1", "--batch-size", "2", "--part-rows", "1", "--commit-interval-s", "0.001",
           "--no-progress"]


def keys_of(rows: list[dict]) -> list[tuple]:
    return [(r["video_id"], r["clip_index"], r["crop_index"]) for r in rows]


def assert_equal_to(got: list[dict], ref: list[dict]) -> None:
    """The same rows (no duplicate, none missing), embeddings within ATOL (batch shapes may differ)."""
    assert keys_of(got) == keys_of(ref) and len(set(keys_of(got))) == len(got)
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(a["embedding"], b["embedding"], atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def six_videos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("six")
    for i in range(6):
        make_video(d / f"s{i}.mp4", frames=14 + 9 * i)
    return d


@pytest.fixture(scope="module")
def six_reference(tmp_path_factory, six_videos, ckpt) -> list[dict]:
    from vmae_fast import cli

    out = tmp_path_factory.mktemp("six_ref") / "out"
    assert cli.main(["extract", str(six_videos), "-o", str(out), "--model", str(ckpt), *CLI_RUN]) == 0
    return clip_rows(out)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_landing_right_after_a_parts_rename_neither_loses_nor_duplicates(tmp_path, monkeypatch, ckpt,
                                                                                 six_videos, six_reference, signum):
    from vmae_fast import cli

    real_write = store.PartWriter.write_table
    parts = []

    def write_then_signal(self, table, seq=None):
        path = real_write(self, table, seq)
        if self.directory.name == "clips":
            parts.append(path)
            if len(parts) == 2:  # raised as this call returns: the part is committed, the writer still holds it
                os.kill(os.getpid(), signum)
        return path

    out = tmp_path / "out"
    args = ["extract", str(six_videos), "-o", str(out), "--model", str(ckpt), *CLI_RUN]
    monkeypatch.setattr(store.PartWriter, "write_table", write_then_signal)
    t0 = time.monotonic()
    code = cli.main(args)
    stop_s = time.monotonic() - t0
    monkeypatch.setattr(store.PartWriter, "write_table", real_write)
    assert code == (130 if signum == signal.SIGINT else 143)
    at_stop = clip_rows(out)
    assert 0 < len(at_stop) < len(six_reference) and len(set(keys_of(at_stop))) == len(at_stop), keys_of(at_stop)
    assert stop_s < 30  # stopping does not wait for the decoders' timeout (--timeout-s 120)
    assert cli.main(args) == 0
    assert_equal_to(clip_rows(out), six_reference)


def test_sigint_and_sigterm_at_random_moments_then_resume_equal_an_uninterrupted_run(tmp_path, ckpt, six_videos,
                                                                                      six_reference):
    import random

    rng = random.Random(10)
    trials = []
    for trial in range(4):
        signum = (signal.SIGINT, signal.SIGTERM)[trial % 2]
        out = tmp_path / f"out{trial}"
        cmd = [sys.executable, "-m", "vmae_fast.cli", "extract", str(six_videos), "-o", str(out), "--model",
               str(ckpt), *CLI_RUN]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        target, delay, twice = rng.randint(0, 3), rng.uniform(0.0, 0.03), rng.random() < 0.5
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if (out / "_run.json").exists() and len(store.list_parts(out / "clips")) >= target:
                break
            time.sleep(0.002)
        time.sleep(delay)
        for _ in range(2 if twice else 1):  # a second signal while the first one's exit path writes
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)
            time.sleep(0.005)
        _, err = proc.communicate(timeout=120)
        # -signum: the second signal came after the run had ended and the CLI had put the default handler back
        assert proc.returncode in (0, 130, 143) or (twice and proc.returncode == -signum), err[-2000:]
        at_stop = clip_rows(out) if (out / "_run.json").exists() else []
        assert len(set(keys_of(at_stop))) == len(at_stop)  # never a duplicate, even at the stop
        from vmae_fast import cli

        assert cli.main(["extract", str(six_videos), "-o", str(out), "--model", str(ckpt), *CLI_RUN]) == 0
        assert_equal_to(clip_rows(out), six_reference)
        trials.append((signum.name, target, round(delay, 3), twice, proc.returncode, len(at_stop)))
    print("signal trials (signal, parts before, delay, twice, exit, rows at stop):", trials)
