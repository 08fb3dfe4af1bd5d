"""A run's progress: a bar on a terminal, plain lines in a log (extraction/progress.py), for both engines."""

from __future__ import annotations

import io

from tqdm import tqdm

from vmae_fast.extraction import extract, progress
from vmae_fast.extraction.progress import LogLines, progress_display


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_display_follows_where_stderr_goes_unless_asked():
    log = io.StringIO()
    assert progress_display("extract", False, stream=_Terminal()) is None  # --no-progress
    assert isinstance(progress_display("extract", None, stream=_Terminal()), tqdm)  # a terminal: the bar
    assert isinstance(progress_display("extract", None, stream=log), LogLines)  # a log: lines
    assert isinstance(progress_display("extract", True, stream=log), tqdm)  # --progress: the bar, wherever it goes


def test_log_lines_say_how_far_how_fast_and_how_long_is_left_at_most_every_interval():
    log = io.StringIO()
    lines = LogLines("extract", None, log, every=3600.0)
    for _ in range(5):
        lines.update(1)
    assert log.getvalue() == ""  # within the interval: nothing (a short run prints only its summary)

    lines.every = 0.0
    lines.started -= 10.0  # 10 s ago: 1 video/s at the next update
    lines.set_postfix(clips=42, errors=1, refresh=False)
    lines.refresh()
    assert log.getvalue() == "extract: 5 videos, 0:00:10 elapsed, 0.50 videos/s; clips=42, errors=1\n"
    lines.total = 20  # the total once the inputs are read: a share and what is left
    lines.update(5)
    last = log.getvalue().splitlines()[-1]
    assert last.startswith("extract: 10/20 videos (50%), 0:00:10 elapsed, 1.00 videos/s, about 0:00:10 left"), last
    lines.close()
    assert "\r" not in log.getvalue()


def test_a_run_whose_stderr_is_a_log_prints_progress_lines(tmp_path, videos, ckpt, capsys, monkeypatch):
    """stderr not a terminal (a SLURM output file, a pod's log; here pytest's capture) and no --progress either way:
    plain lines, the videos done of the total once the inputs are read (before, nothing until the summary)."""
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)  # a line at every report (60 s in a real run)
    summary = extract([videos], tmp_path / "out", model=ckpt, workers=1, batch_size=3)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("extract:")]
    assert summary["videos_ok"] == 3 and "\r" not in err
    assert lines[-1].startswith("extract: 3/3 videos (100%), ") and "errors=0" in lines[-1], lines[-3:]
